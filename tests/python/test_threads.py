"""One OnlineEngine shared by many Python threads: 16 readers (get / get_many / vector)
while a writer ingests batches (pyarrow tables and lists of row dicts), and Transforms shared
by threads while they are refitted.

The property checked (through the public API only): every answer a reader gets for a key
equals the answer a reference engine gives for that key after SOME prefix of the batches,
and that prefix is consistent with the moment of the call: it includes every batch whose
ingest had returned before the call started and no batch whose ingest had not started
before the call returned. Per key and per reader the prefixes never go backwards. No call
raises, no thread hangs (joins have a timeout). Timing (readers not blocked by a long ingest)
is not asserted here: bench/bench_threads.py measures it."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

import rtml

S = 10**9
MIN = 60 * S
BASE = 1_700_000_000 * S
N_KEYS = 24
N_BATCHES = 36
N_READERS = 16
# Joins give up after this long: a deadlock fails the test instead of hanging CI.
JOIN_TIMEOUT = 120


def _feature_set():
    return rtml.FeatureSet(
        entity="k",
        timestamp="ts",
        timestamp_unit="ns",
        allowed_lateness="10m",
        features=[
            rtml.count(name="n"),  # lifetime: grows with every batch that has the key
            rtml.count(window="1h", name="n_1h"),
            rtml.sum("v", window="6h", name="v_sum_6h"),
            rtml.mean("v", name="v_mean"),
            rtml.last("v", name="v_last"),
            rtml.max("v", window="1h", hop="15m", name="v_max_tiled"),
            rtml.distinct_count("c", window="2h", name="c_distinct_2h"),
            rtml.quantile("v", 0.9, window="6h", name="v_p90_6h"),
            rtml.time_since_last(name="since"),
        ],
    )


def _transforms(train: pa.Table):
    tf = rtml.Transforms(
        [
            rtml.ratio("v_sum_6h", "n", name="avg"),
            rtml.standard_scale("v_mean"),
            rtml.impute("v_last", "median"),
            rtml.log1p("distance"),
        ]
    )
    return tf.fit(train)


def _batches(seed: int):
    """N_BATCHES batches over ~5 hours of event time, each with out-of-order events within
    the allowed lateness; keys from a skewed distribution; every other batch as row dicts."""
    rng = random.Random(seed)
    out = []
    for b in range(N_BATCHES):
        rows = []
        t0 = BASE + b * 8 * MIN
        for _ in range(rng.randint(20, 60)):
            k = min(int(rng.paretovariate(1.2)) - 1, N_KEYS - 1)
            # out of order by up to 9 minutes (batches overlap by one): never late
            ts = t0 + rng.randint(0, 9 * MIN)
            rows.append({"k": k, "ts": ts, "v": float(rng.randint(-50, 200)) / 4, "c": f"c{rng.randint(0, 9)}"})
        if b % 2 == 0:
            out.append(pa.table({c: [r[c] for r in rows] for c in ("k", "ts", "v", "c")}))
        else:
            out.append(rows)
    return out


def _answer_key(d: dict) -> tuple:
    return tuple((k, None if v is None else float(v)) for k, v in sorted(d.items()))


def _vec_key(v: np.ndarray) -> bytes:
    return np.asarray(v, dtype=np.float64).tobytes()


class Expected:
    """For each (key, instant): answer -> the prefixes (numbers of batches ingested) that give it."""

    def __init__(self, fs, batches, instants, tf):
        self.get: dict = {}
        self.vec: dict = {}
        self.fields = {"distance": 3.5}
        ref = fs.online()
        for p in range(len(batches) + 1):
            if p:
                ref.ingest(batches[p - 1])
            for t in instants:
                for k in range(N_KEYS + 2):  # two keys that never occur
                    a = _answer_key(ref.get(k, at=t))
                    self.get.setdefault((k, t), {}).setdefault(a, set()).add(p)
                    v = _vec_key(ref.vector(k, tf, self.fields, at=t))
                    self.vec.setdefault((k, t), {}).setdefault(v, set()).add(p)
        # The test only means something if most (key, instant) pairs change along the way.
        changing = sum(len(m) > 1 for m in self.get.values())
        assert changing >= len(self.get) // 2, (changing, len(self.get))


def test_many_readers_one_writer():
    fs = _feature_set()
    batches = _batches(7)
    wm_final = max(
        max(b["ts"].to_pylist()) if isinstance(b, pa.Table) else max(r["ts"] for r in b) for b in batches
    )
    # Instants every prefix can answer exactly (>= final watermark - allowed lateness).
    instants = [wm_final - 10 * MIN, wm_final + 1, wm_final + 45 * MIN]
    train = fs.backfill(
        batches[0],
        pa.table({"k": list(range(N_KEYS)), "ts": [BASE + 30 * MIN] * N_KEYS}),
        progress=False,
    ).append_column("distance", pa.array([1.0 + i for i in range(N_KEYS)]))
    tf = _transforms(train)
    exp = Expected(fs, batches, instants, tf)

    eng = fs.online()
    started = [0]  # batches whose ingest has started
    finished = [0]  # batches whose ingest has returned
    writer_done = threading.Event()
    errors: list = []
    checked = [0] * N_READERS

    def writer():
        try:
            for i, b in enumerate(batches):
                started[0] = i + 1
                eng.ingest(b)
                finished[0] = i + 1
                time.sleep(0.02)  # spread the run over a few seconds
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(("writer", repr(e)))
        finally:
            writer_done.set()

    def check(kind, k, t, ans, lo_bound, hi_bound, last_seen, table):
        prefixes = table[(k, t)].get(ans)
        if prefixes is None:
            raise AssertionError(f"{kind}({k}, {t}): answer matches no prefix of the batches: {ans!r}")
        ok = [p for p in prefixes if lo_bound <= p <= hi_bound and p >= last_seen.get((k, t), 0)]
        if not ok:
            raise AssertionError(
                f"{kind}({k}, {t}): answer of prefixes {sorted(prefixes)} outside "
                f"[{lo_bound}, {hi_bound}] or before {last_seen.get((k, t), 0)} seen earlier"
            )
        # the true prefix is at least min(ok): later answers may not go below it
        last_seen[(k, t)] = max(last_seen.get((k, t), 0), min(ok))

    def reader(r):
        rng = random.Random(r)
        seen_get: dict = {}
        seen_vec: dict = {}
        tail = None
        try:
            while True:
                if writer_done.is_set():
                    # a short tail after the last batch: answers must be the full prefix
                    tail = tail or time.monotonic() + 0.2
                    if time.monotonic() > tail:
                        break
                k = rng.randrange(N_KEYS + 2)
                t = rng.choice(instants)
                op = rng.random()
                lo = finished[0]
                if op < 0.45:
                    ans = _answer_key(eng.get(k, at=t))
                    hi = started[0]
                    check("get", k, t, ans, lo, hi, seen_get, exp.get)
                elif op < 0.75:
                    ks = [k] + [rng.randrange(N_KEYS + 2) for _ in range(rng.randint(0, 5))]
                    tab = eng.get_many(ks, at=t)
                    hi = started[0]
                    assert tab.column("k").to_pylist() == ks
                    for row in tab.to_pylist():
                        kk = row.pop("k")
                        check("get_many", kk, t, _answer_key(row), lo, hi, seen_get, exp.get)
                else:
                    ans = _vec_key(eng.vector(k, tf, exp.fields, at=t))
                    hi = started[0]
                    check("vector", k, t, ans, lo, hi, seen_vec, exp.vec)
                checked[r] += 1
        except BaseException as e:
            errors.append((f"reader {r}", repr(e)))

    threads = [threading.Thread(target=reader, args=(r,), daemon=True) for r in range(N_READERS)]
    threads.append(threading.Thread(target=writer, daemon=True))
    for th in threads:
        th.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    alive = [th.name for th in threads if th.is_alive()]
    assert not alive, f"threads still running after {JOIN_TIMEOUT}s (deadlock?): {alive}"
    assert not errors, errors[:5]
    assert finished[0] == N_BATCHES
    assert all(c > 0 for c in checked), checked
    # after the writer: every answer is the full prefix
    for k in range(N_KEYS + 2):
        for t in instants:
            assert len(batches) in exp.get[(k, t)][_answer_key(eng.get(k, at=t))]
    st = eng.stats()
    assert st["events_ingested"] == sum(len(b) if isinstance(b, list) else b.num_rows for b in batches)
    assert st["late_events_dropped"] == 0


def test_snapshot_and_stats_during_ingest(tmp_path):
    """snapshot() and stats() from other threads while batches are ingested: every snapshot
    restores to an engine equal to some prefix of the batches."""
    fs = _feature_set()
    batches = _batches(11)[:16]
    wm_final = max(
        max(b["ts"].to_pylist()) if isinstance(b, pa.Table) else max(r["ts"] for r in b) for b in batches
    )
    t = wm_final + 1
    ref = fs.online()
    by_prefix = [_answer_key_all(ref, t)]
    for b in batches:
        ref.ingest(b)
        by_prefix.append(_answer_key_all(ref, t))

    eng = fs.online()
    done = threading.Event()
    errors: list = []
    snaps: list = []

    def writer():
        try:
            for b in batches:
                eng.ingest(b)
                time.sleep(0.01)
        except BaseException as e:
            errors.append(repr(e))
        finally:
            done.set()

    def snapshotter(j):
        try:
            i = 0
            while not done.is_set():
                p = tmp_path / f"s{j}_{i}.snap"
                eng.snapshot(p)
                snaps.append(p)
                st = eng.stats()
                assert st["events_ingested"] >= 0 and st["state_bytes"] > 0
                i += 1
        except BaseException as e:
            errors.append(repr(e))

    ths = [threading.Thread(target=writer, daemon=True)] + [
        threading.Thread(target=snapshotter, args=(j,), daemon=True) for j in range(2)
    ]
    for th in ths:
        th.start()
    for th in ths:
        th.join(JOIN_TIMEOUT)
    assert not any(th.is_alive() for th in ths), "deadlock?"
    assert not errors, errors[:5]
    assert snaps
    for p in snaps:
        assert _answer_key_all(rtml.OnlineEngine.restore(p), t) in by_prefix, p


def _answer_key_all(eng, t):
    return tuple(_answer_key(eng.get(k, at=t)) for k in range(N_KEYS))


# --------------------------------------------------------------------------
# Transforms shared by threads


def _tf_tables():
    rng = np.random.default_rng(3)
    n = 40_000  # above 32768 rows: transform runs in parallel chunks

    def table(shift):
        return pa.table(
            {
                "a": rng.normal(shift, 2.0, n),
                "b": pa.array(rng.uniform(0, 10 + shift, n), mask=rng.random(n) < 0.05),
                "z": rng.choice(["x", "y", "w"], n),
            }
        )

    return table(0.0), table(5.0)


def _tf():
    return rtml.Transforms(
        [rtml.standard_scale("a"), rtml.impute("b", "median"), rtml.min_max_scale("b"), rtml.one_hot("z")]
    )


def test_transforms_shared_while_refitted():
    """16 threads call transform / transform_one / vector / engine.vector on one Transforms
    while another thread refits it alternately on two tables: every answer is entirely the
    answer of one of the two fits (no torn state), nothing raises, nothing hangs."""
    t1, t2 = _tf_tables()
    small = t1.slice(0, 50)
    big = t1.slice(0, 35_000)
    rows = small.to_pylist()[:8]
    fits = [_tf().fit(t1), _tf().fit(t2)]
    assert fits[0].transform(small) != fits[1].transform(small)

    def answers(tf):
        return {
            "transform": tf.transform(small),
            "big": _table_digest(tf.transform(big)),
            "one": [tuple(sorted(tf.transform_one(r).items())) for r in rows],
            "vec": [_vec_key(tf.vector(r)) for r in rows],
        }

    expected = [answers(f) for f in fits]
    shared = _tf().fit(t1)
    stop = threading.Event()
    errors: list = []
    counts = [0] * N_READERS

    def refitter():
        try:
            i = 0
            while not stop.is_set():
                shared.fit(t2 if i % 2 == 0 else t1)
                i += 1
        except BaseException as e:
            errors.append(("refit", repr(e)))

    def user(r):
        rng = random.Random(r)
        try:
            while not stop.is_set():
                what = rng.choice(["transform", "big", "one", "vec"])
                i = rng.randrange(len(rows))
                if what == "transform":
                    got, want = shared.transform(small), [e["transform"] for e in expected]
                elif what == "big":
                    got, want = _table_digest(shared.transform(big)), [e["big"] for e in expected]
                elif what == "one":
                    got = tuple(sorted(shared.transform_one(rows[i]).items()))
                    want = [e["one"][i] for e in expected]
                else:
                    got, want = _vec_key(shared.vector(rows[i])), [e["vec"][i] for e in expected]
                assert got in want, what
                counts[r] += 1
        except BaseException as e:
            errors.append((f"user {r}", repr(e)))

    ths = [threading.Thread(target=refitter, daemon=True)] + [
        threading.Thread(target=user, args=(r,), daemon=True) for r in range(N_READERS)
    ]
    for th in ths:
        th.start()
    time.sleep(3.0)
    stop.set()
    for th in ths:
        th.join(JOIN_TIMEOUT)
    assert not any(th.is_alive() for th in ths), "deadlock?"
    assert not errors, errors[:5]
    assert all(c > 0 for c in counts), counts


def _table_digest(t: pa.Table) -> tuple:
    return tuple((name, col.to_numpy(zero_copy_only=False).tobytes()) for name, col in zip(t.column_names, t.columns))
