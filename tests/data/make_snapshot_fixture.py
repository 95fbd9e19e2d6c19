"""Generate the snapshot compatibility fixture: tests/data/snapshot_v<N>.snap and
tests/data/snapshot_v<N>.json, N = the snapshot format version of the rtml that runs this.

    PYTHONPATH=python python tests/data/make_snapshot_fixture.py

The JSON holds everything the test needs to judge a restored engine by its answers alone
(no knowledge of the format): the feature-set document, the events that built the state,
query instants, the answers of the engine that wrote the file, its counters, and events to
ingest after the restore with the answers expected then (this exercises state that was not
settled yet when the snapshot was taken: events within allowed_lateness, tiles, pending
cells). Run once per format version and commit both files; never regenerate an old
version's fixture: it is what proves that old snapshots still load. An argument is a suffix
of the file names (`snapshot_v4b`: a second fixture of format 4, with a later feature set,
written by the last build of that format)."""

from __future__ import annotations

import json
import math
import os
import random
import sys

import pyarrow as pa

import rtml

S = 10**9
MIN = 60 * S
BASE = 1_700_000_000 * S
HERE = os.path.dirname(os.path.abspath(__file__))


def feature_set():
    return rtml.FeatureSet(
        entity="user",
        timestamp="ts",
        timestamp_unit="ns",
        allowed_lateness="10m",
        ttl="2d",
        features=[
            rtml.count(window="1h"),
            rtml.count("amount", window="1h"),
            rtml.sum("amount", window="1h"),
            rtml.mean("amount", window="24h"),
            rtml.min("amount", window="6h"),
            rtml.max("amount", window="6h"),
            rtml.var("amount", window="24h"),
            rtml.std("amount", window="24h"),
            rtml.first("amount", window="6h"),
            rtml.last("amount"),
            rtml.distinct_count("merchant", window="24h"),
            rtml.distinct_count("amount", window="6h"),
            rtml.quantile("amount", 0.9, window="24h"),
            rtml.decayed_sum("amount", half_life="30m", window="1d"),
            rtml.time_since_last(),
            rtml.sum("amount", window="2h", hop="15m"),
            rtml.count(window="2h", hop="15m"),
            rtml.quantile("amount", 0.5, window="2h", hop="15m"),
            rtml.distinct_count("merchant", window="2h", hop="15m"),
            rtml.last("amount", window="2h", hop="15m"),
            # format 4 on: strings (a key's state keeps the strings of its rows)
            rtml.last("merchant", window="6h"),
            rtml.min("merchant", window="24h"),
            rtml.first("merchant", window="1h"),
            # format 5 on: a sliding window's min / max deque is the longest window's of the
            # same column (nested windows: min over 1h and 6h, max over 6h and 24h)
            rtml.min("amount", window="1h"),
            rtml.max("amount", window="24h"),
        ],
        string_columns=["merchant"],
    )


def events(rng: random.Random, n: int, t0: int, t1: int, n_keys: int):
    rows = []
    for _ in range(n):
        rows.append(
            {
                "user": rng.randrange(n_keys),
                "ts": rng.randrange(t0, t1),
                "amount": None if rng.random() < 0.1 else round(rng.uniform(-20, 500), 2),
                "merchant": None if rng.random() < 0.05 else f"m{rng.randrange(12)}",
            }
        )
    return rows


def table(rows):
    return pa.table(
        {
            "user": pa.array([r["user"] for r in rows], pa.int64()),
            "ts": pa.array([r["ts"] for r in rows], pa.int64()),
            "amount": pa.array([r["amount"] for r in rows], pa.float64()),
            "merchant": pa.array([r["merchant"] for r in rows], pa.string()),
        }
    )


def clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def answers(eng, keys, instants):
    return [[clean(eng.get(k, at=t)) for t in instants] for k in keys]


def main() -> None:
    rng = random.Random(20240611)
    fs = feature_set()
    n_keys = 40
    DAY = 24 * 60 * MIN
    # Keys 0-29 active for three days, keys 30-39 only in the first 6 hours (so the ttl of 2 days
    # evicts them), then a busy last hour for keys 0-19.
    history = events(rng, 1200, BASE, BASE + 3 * DAY, 30)
    history += [dict(r, user=r["user"] + 30) for r in events(rng, 200, BASE, BASE + 6 * 60 * MIN, 10)]
    history += events(rng, 400, BASE + 3 * DAY, BASE + 3 * DAY + 60 * MIN, 20)
    # out of order within the allowed lateness: shuffle inside 5-minute buckets
    history.sort(key=lambda r: (r["ts"] // (5 * MIN), rng.random()))
    eng = fs.online()
    for i in range(0, len(history), 100):
        eng.ingest(table(history[i : i + 100]))
    wm = eng.watermark
    keys = list(range(n_keys)) + [10_000]  # one key never seen
    instants = [wm - 10 * MIN, wm - 3 * MIN, wm + 1, wm + 20 * MIN, wm + 26 * 60 * MIN]
    before = answers(eng, keys, instants)

    version = rtml._core.SNAPSHOT_VERSION
    name = f"snapshot_v{version}{sys.argv[1] if len(sys.argv) > 1 else ''}"
    snap = os.path.join(HERE, f"{name}.snap")
    eng.snapshot(snap)

    # events after the restore: late ones (dropped), ones inside the allowed lateness, new ones
    # (keys 0-34: five of the evicted keys come back, with fresh lifetime features)
    after_rows = events(rng, 150, wm - 15 * MIN, wm + 30 * MIN, 35)
    after_rows.sort(key=lambda r: (r["ts"] // (5 * MIN), rng.random()))
    for i in range(0, len(after_rows), 50):
        eng.ingest(table(after_rows[i : i + 50]))
    wm2 = eng.watermark
    instants_after = [wm2 - 10 * MIN, wm2 + 1, wm2 + 90 * MIN]
    after = answers(eng, keys, instants_after)
    stats = eng.stats()

    # Parity check of what we store: the same answers from a backfill of the same events
    # (the events the online engine accepted: all of history, the non-late events after).
    restored = rtml.OnlineEngine.restore(snap)
    assert answers(restored, keys, instants) == before
    spine = pa.table(
        {"user": [k for k in keys for _ in instants_after], "ts": [t for _ in keys for t in instants_after]}
    )
    accepted, w, late = [], wm, 0
    for r in after_rows:  # replay the lateness rule in arrival order
        if r["ts"] >= w - 10 * MIN:
            accepted.append(r)
            w = max(w, r["ts"])
        else:
            late += 1
    assert stats["late_events_dropped"] == late and late > 0, (stats, late)
    assert stats["keys_evicted"] > 0, stats  # the fixture exercises ttl
    all_events = history + accepted
    bf = fs.backfill(table(all_events), spine, progress=False).to_pylist()
    flat = [a for row in after for a in row]
    for row, a in zip(bf, flat):
        k = row["user"]
        row = clean({f: v for f, v in row.items() if f not in ("user", "ts")})
        diff = {f for f in row if row[f] != a[f]}
        # Only a key idle for longer than the ttl (evicted: its lifetime features restart,
        # see docs/semantics.md) may differ from the backfill, and only in lifetime features.
        if diff:
            assert 30 <= k < 40, (k, diff)
            assert diff <= {"amount_last", "time_since_last"}, (k, diff)

    doc = {
        "generated_by": "tests/data/make_snapshot_fixture.py",
        "rtml_version": rtml.__version__,
        "snapshot_version": version,
        "spec": fs.to_json(),
        "keys": keys,
        "instants": instants,
        "answers": before,
        "stats": _stats_before(snap),
        "events_after": after_rows,
        "instants_after": instants_after,
        "answers_after": after,
        "stats_after": {k: v for k, v in stats.items() if k not in DERIVED},
    }
    with open(os.path.join(HERE, f"{name}.json"), "w") as f:
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {snap} ({os.path.getsize(snap)} bytes) and its JSON", file=sys.stderr)


# stats that are not snapshot state: an estimate, the watermark again as text, a per-object count
DERIVED = ("state_bytes", "watermark_iso", "null_keys_skipped")


def _stats_before(snap):
    s = rtml.OnlineEngine.restore(snap).stats()
    return {k: v for k, v in s.items() if k not in DERIVED}


if __name__ == "__main__":
    main()
