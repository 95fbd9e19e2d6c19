"""Out-of-core backfill (rtml.outofcore, issue 17): the same bits as the in-memory backfill for
every partition count, input form and data shape; errors as the in-memory call raises them; the
spill directory removed on success, on error and on Ctrl-C; hot entities reported."""

from __future__ import annotations

import datetime as dt
import glob
import os
import random
import threading
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.dataset  # noqa: F401  (backfill loads it before measuring its base RSS)
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtml
from helpers import n_examples
from rtml import outofcore
from rtml.outofcore import _READER_RESERVE, _SLACK, _rss

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 3, 1, tzinfo=UTC)


def feature_set(entity: str = "k") -> rtml.FeatureSet:
    return rtml.FeatureSet(
        entity,
        "ts",
        [
            rtml.count(window="1h"),
            rtml.count("v", window="1h"),
            rtml.sum("v", window="1h"),
            rtml.mean("v", window="24h"),
            rtml.min("v", window="1h"),
            rtml.max("v", window="1h"),
            rtml.var("v", window="24h"),
            rtml.std("v", window="1h", hop="10m"),
            rtml.first("v", window="1h"),
            rtml.last("v"),
            rtml.distinct_count("cat", window="24h"),
            rtml.quantile("v", 0.9, window="24h"),
            rtml.decayed_sum("v", half_life="30m", window="1d"),
            rtml.time_since_last(),
        ],
    )


def assert_bits_equal(got: pa.Table, want: pa.Table) -> None:
    """Same column names, types, nulls and values; float64 compared as bit patterns."""
    assert got.column_names == want.column_names
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        g, w = got.column(name), want.column(name)
        if pa.types.is_timestamp(w.type) and w.type.unit == "s":
            # Parquet has no seconds unit: such a column is written (and read back) in ms
            w = w.cast(pa.timestamp("ms", w.type.tz))
        assert g.type == w.type, name
        assert g.is_null().to_pylist() == w.is_null().to_pylist(), name
        if pa.types.is_floating(w.type):
            gb = g.fill_null(0.0).to_numpy().view(np.uint64)
            wb = w.fill_null(0.0).to_numpy().view(np.uint64)
            assert np.array_equal(gb, wb), name
        else:
            assert g.to_pylist() == w.to_pylist(), name


def read_sorted(path: str, row_index: str = "spine_row") -> pa.Table:
    t = pq.read_table(path).sort_by(row_index)
    assert t.column(row_index).to_pylist() == list(range(t.num_rows))
    return t.drop_columns([row_index])


def in_memory(fs: rtml.FeatureSet, events, spine, **kw) -> pa.Table:
    t = fs.backfill(events, spine, output="arrow", progress=False, **kw)
    return t.replace_schema_metadata(None)


# ------------------------------------------------------------------ generated data


@st.composite
def cases(draw):
    string_keys = draw(st.booleans())
    n_keys = draw(st.integers(1, 12))
    if string_keys:
        pool = draw(
            st.lists(
                st.text(alphabet="ab\u00e9\u4e2dZ ", min_size=0, max_size=4),
                min_size=n_keys,
                max_size=n_keys,
                unique=True,
            )
        )
    else:
        pool = draw(
            st.lists(st.integers(-(2**40), 2**40), min_size=n_keys, max_size=n_keys, unique=True)
        )
    n_events = draw(st.integers(0, 120))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    hot = pool[0]
    keys = [hot if rnd.random() < 0.4 else rnd.choice(pool) for _ in range(n_events)]
    secs = [rnd.randrange(0, 6 * 3600, rnd.choice([1, 60, 600])) for _ in range(n_events)]
    vals = [
        None if rnd.random() < 0.1 else rnd.choice([-0.0, 0.0, 1.5, rnd.uniform(-1e3, 1e3)])
        for _ in range(n_events)
    ]
    cats = [None if rnd.random() < 0.1 else rnd.choice("xyz") for _ in range(n_events)]
    n_spine = draw(st.integers(1, 60))
    extra = pool[-1] + ("?" if string_keys else 1)  # a key with no events
    sp_keys = [rnd.choice([*pool, extra]) for _ in range(n_spine)]
    sp_secs = [
        rnd.choice([*secs, rnd.randrange(0, 8 * 3600)] if secs else [0]) for _ in range(n_spine)
    ]
    key_type = pa.string() if string_keys else pa.int64()
    ts = pa.timestamp("us", "UTC")
    t0 = int(T0.timestamp())
    events = pa.table(
        {
            "k": pa.array(keys, key_type),
            "ts": pa.array([(t0 + s) * 10**6 for s in secs], ts),
            "v": pa.array(vals, pa.float64()),
            "cat": pa.array(cats, pa.string()),
            "unused": pa.array(list(range(n_events)), pa.int64()),
        }
    )
    sp_key_type = (
        pa.large_string() if string_keys else draw(st.sampled_from([pa.int64(), pa.int32()]))
    )
    if not string_keys:
        sp_keys = [
            max(min(k, 2**31 - 1), -(2**31)) if sp_key_type == pa.int32() else k for k in sp_keys
        ]
    spine = pa.table(
        {
            "k": pa.array(sp_keys, sp_key_type),
            "ts": pa.array([(t0 + s) * 10**6 for s in sp_secs], ts),
            "label": pa.array([rnd.random() < 0.5 for _ in range(n_spine)]),
            "note": pa.array([None if rnd.random() < 0.2 else f"r{i}" for i in range(n_spine)]),
        }
    )
    return events, spine, draw(st.integers(1, 9)), draw(st.sampled_from(["table", "files", "hive"]))


def _write_parts(table: pa.Table, root: str, parts: int, hive: bool) -> str:
    os.makedirs(root)
    if hive:
        # hive-partitioned by hour of the time column, as a date-partitioned lake would be
        hour = pa.compute.hour(table.column("ts")).cast(pa.int32())
        table = table.append_column("hr", hour)
        import pyarrow.dataset as ds

        ds.write_dataset(
            table,
            root,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("hr", pa.int32())]), flavor="hive"),
            max_rows_per_group=7,
            max_rows_per_file=20,
            min_rows_per_group=0,
        )
        return root
    n = table.num_rows
    step = max(1, -(-n // parts))
    for i in range(0, max(n, 1), step):
        pq.write_table(
            table.slice(i, step),
            os.path.join(root, f"part-{i // step:04d}.parquet"),
            row_group_size=5,
        )
    return root


@settings(max_examples=n_examples(40))
@given(case=cases())
def test_same_bits_as_in_memory(case, tmp_path_factory):
    events, spine, n_parts, form = case
    fs = feature_set()
    tmp = tmp_path_factory.mktemp("ooc")
    if form == "table":
        ev_in, sp_in = events, spine
    else:
        ev_in = _write_parts(events, str(tmp / "events"), n_parts, form == "hive")
        sp_in = _write_parts(spine, str(tmp / "spine"), 3, False)
    want = in_memory(fs, ev_in, sp_in)
    out = str(tmp / "out.parquet")
    res = outofcore.backfill(
        fs,
        ev_in,
        sp_in,
        out,
        memory_limit="8GB",
        partitions=n_parts,
        progress=False,
        workers=1 + n_parts % 3,  # 1-3 units at once: the same bits
    )
    assert res.rows == spine.num_rows and res.events == events.num_rows
    assert res.partitions == n_parts
    assert_bits_equal(read_sorted(out), want)
    # nothing left behind but the output
    assert sorted(os.listdir(tmp)) == sorted(
        ["out.parquet"] + ([] if form == "table" else ["events", "spine"])
    )


def test_small_memory_limit_forces_many_partitions_and_splits(tmp_path):
    """A limit just above what the process uses: many partitions, partitions split again, and
    still the in-memory bits (integer keys, late-ordered rows)."""
    rnd = np.random.default_rng(7)
    n = 200_000
    keys = rnd.integers(0, 20_000, n)
    secs = rnd.integers(0, 7 * 86400, n)
    order = rnd.permutation(n)  # not in time order
    events = pa.table(
        {
            "k": pa.array(keys[order]),
            "ts": pa.array((1_700_000_000 + secs[order]) * 10**6, pa.timestamp("us", "UTC")),
            "v": pa.array(np.round(rnd.lognormal(2, 1, n), 2)[order]),
            "cat": pa.array(rnd.choice(list("abcdefgh"), n)),
        }
    )
    sp_idx = rnd.integers(0, n, 20_000)
    spine = pa.table(
        {"k": events["k"].take(pa.array(sp_idx)), "ts": events["ts"].take(pa.array(sp_idx))}
    )
    fs = feature_set()
    want = in_memory(fs, events, spine)
    limit = int((_rss() + _READER_RESERVE + 6_000_000) / (1 - _SLACK))  # a budget of about 6 MB
    out = str(tmp_path / "out")
    res = outofcore.backfill(fs, events, spine, out, memory_limit=limit, progress=False)
    assert res.partitions >= 8, res
    assert res.units >= 4, res
    assert res.hot_keys == []
    assert len(glob.glob(os.path.join(out, "part-*.parquet"))) == res.units
    assert_bits_equal(read_sorted(out), want)
    assert os.listdir(tmp_path) == ["out"]


def test_hot_entity_is_reported_not_a_crash(tmp_path):
    rnd = np.random.default_rng(3)
    n_hot, n_cold = 120_000, 5_000
    keys = np.concatenate([np.full(n_hot, 424242), rnd.integers(0, 1000, n_cold)])
    secs = rnd.integers(0, 86400, n_hot + n_cold)
    events = pa.table(
        {
            "k": pa.array(keys),
            "ts": pa.array((1_700_000_000 + secs) * 10**6, pa.timestamp("us", "UTC")),
            "v": pa.array(rnd.normal(size=n_hot + n_cold)),
            "cat": pa.array(rnd.choice(list("ab"), n_hot + n_cold)),
        }
    )
    spine = events.select(["k", "ts"]).take(pa.array(rnd.integers(0, n_hot + n_cold, 3000)))
    fs = feature_set()
    want = in_memory(fs, events, spine)
    limit = int(
        (_rss() + _READER_RESERVE + 3_000_000) / (1 - _SLACK)
    )  # about 3 MB: the hot entity alone is larger
    out = str(tmp_path / "out.parquet")
    with pytest.warns(rtml.HotKeyWarning, match=r"entity 424242 of column 'k' has 120,000 events"):
        res = outofcore.backfill(fs, events, spine, out, memory_limit=limit, progress=False)
    assert res.hot_keys == [(424242, n_hot)]
    assert_bits_equal(read_sorted(out), want)


def test_hot_entity_unit_runs_alone_with_workers(tmp_path, monkeypatch):
    """A unit over the budget (a hot entity) never runs beside another unit, with 4 workers."""
    rnd = np.random.default_rng(4)
    n_hot, n_cold = 100_000, 60_000
    keys = np.concatenate([np.full(n_hot, 5), rnd.integers(100, 6000, n_cold)])
    order = rnd.permutation(n_hot + n_cold)
    secs = rnd.integers(0, 86400, n_hot + n_cold)
    events = pa.table(
        {
            "k": pa.array(keys[order]),
            "ts": pa.array((1_700_000_000 + secs) * 10**6, pa.timestamp("us", "UTC")),
            "v": pa.array(rnd.normal(size=n_hot + n_cold)),
            "cat": pa.array(rnd.choice(list("ab"), n_hot + n_cold)),
        }
    )
    spine = events.select(["k", "ts"]).take(pa.array(rnd.integers(0, n_hot + n_cold, 8000)))
    fs = feature_set()
    want = in_memory(fs, events, spine)
    limit = int((_rss() + _READER_RESERVE + 4_000_000) / (1 - _SLACK))
    rec = _Recorder(fs._spec, len(fs.feature_names), watch=5)
    monkeypatch.setattr(fs, "_spec", rec)
    out = str(tmp_path / "out.parquet")
    with pytest.warns(rtml.HotKeyWarning, match=r"entity 5 of column 'k' has 100,000 events"):
        res = outofcore.backfill(
            fs, events, spine, out, memory_limit=limit, workers=4, progress=False
        )
    assert res.hot_keys == [(5, n_hot)]
    assert res.units >= 3
    assert rec.calls == res.units
    assert len(rec.watched) == 1
    assert rec.overlapped[rec.watched[0]] is False
    assert sum(rec.overlapped.values()) >= 1  # the cold units did overlap
    assert_bits_equal(read_sorted(out), want)


class _Recorder:
    """Stands in for `fs._spec`: forwards everything, and watches the engine calls of the
    backfill pass (those with a progress function) as they run: how many at once, the sum of
    their costs under MEMORY_MODEL computed from the tables each call gets, and which calls had
    another one running beside them. The first `meet` calls wait for each other (a barrier), so
    a scheduler that never overlaps two units fails instead of passing by luck."""

    def __init__(self, spec, n_features: int, meet: int = 0, watch=None) -> None:
        self._spec = spec
        self._watch = watch  # a key: the calls whose spine holds it are listed in `watched`
        self.watched: list[int] = []
        self._n = n_features
        self._lock = threading.Lock()
        self._active: dict[int, float] = {}
        self._barrier = threading.Barrier(meet, timeout=120) if meet else None
        self._meet = meet
        self.calls = 0
        self.max_active = 0
        self.max_cost = 0.0
        self.overlapped: dict[int, bool] = {}

    def __getattr__(self, name):
        return getattr(self._spec, name)

    def backfill(self, ev, sp, key, time, progress):
        if progress is None:  # the schema probe on the first rows, before any spill
            return self._spec.backfill(ev, sp, key, time, progress)
        cost = outofcore._unit_cost(ev.nbytes, sp.nbytes, sp.num_rows, self._n)
        with self._lock:
            me = self.calls
            self.calls += 1
            self.overlapped[me] = bool(self._active)
            for other in self._active:
                self.overlapped[other] = True
            self._active[me] = cost
            if self._watch is not None and self._watch in sp.column(key[0]).to_pylist():
                self.watched.append(me)
            self.max_active = max(self.max_active, len(self._active))
            self.max_cost = max(self.max_cost, sum(self._active.values()))
        try:
            if self._barrier is not None and me < self._meet:
                self._barrier.wait()
            return self._spec.backfill(ev, sp, key, time, progress)
        finally:
            with self._lock:
                del self._active[me]


def _limit(budget: int) -> int:
    """A memory_limit leaving about `budget` bytes of budget to a call made now."""
    pa.default_memory_pool().release_unused()
    return int((_rss() + _READER_RESERVE + budget) / (1 - _SLACK))


def _units_data(n: int = 120_000, n_keys: int = 12_000, seed: int = 11):
    rnd = np.random.default_rng(seed)
    keys = rnd.integers(0, n_keys, n)
    secs = rnd.integers(0, 3 * 86400, n)
    order = rnd.permutation(n)
    events = pa.table(
        {
            "k": pa.array(keys[order]),
            "ts": pa.array((1_700_000_000 + secs[order]) * 10**6, pa.timestamp("us", "UTC")),
            "v": pa.array(np.round(rnd.lognormal(2, 1, n), 2)[order], mask=rnd.random(n) < 0.05),
            "cat": pa.array(rnd.choice(list("abcdefgh"), n)),
        }
    )
    idx = rnd.integers(0, n, n // 10)
    spine = pa.table(
        {
            "k": events["k"].take(pa.array(idx)),
            "ts": pa.array(
                events["ts"].take(pa.array(idx)).to_numpy().astype("int64") // 1000
                + rnd.integers(0, 1800, n // 10) * 10**6,
                pa.timestamp("us", "UTC"),
            ),
        }
    )
    return events, spine


def test_parallel_units_same_rows_in_the_same_order_within_the_budget(tmp_path, monkeypatch):
    """workers=3: units overlap (two at least: the barrier), the estimated costs of the units
    running at once never sum above the budget, and the output is the workers=1 output row for
    row (same order, for the same partitions), which sorted by spine_row is the in-memory
    result bit for bit."""
    events, spine = _units_data()
    fs = feature_set()
    want = in_memory(fs, events, spine)
    one = str(tmp_path / "one.parquet")
    r1 = outofcore.backfill(
        fs,
        events,
        spine,
        one,
        memory_limit=_limit(4_000_000),
        partitions=32,
        workers=1,
        progress=False,
    )
    rec = _Recorder(fs._spec, len(fs.feature_names), meet=2)
    monkeypatch.setattr(fs, "_spec", rec)
    seen = []
    many = str(tmp_path / "many.parquet")
    r3 = outofcore.backfill(
        fs,
        events,
        spine,
        many,
        memory_limit=_limit(4_000_000),
        partitions=32,
        workers=3,
        progress=lambda d, t: seen.append(d),
    )
    assert r3.units >= 4 and r1.units >= 3, (r1, r3)
    assert rec.calls == r3.units
    assert rec.max_active >= 2
    assert rec.max_cost <= r3.budget, (rec.max_cost, r3.budget)
    assert r3.hot_keys == [] and r1.hot_keys == []
    got_many, got_one = pq.read_table(many), pq.read_table(one)
    assert got_many.column("spine_row").to_pylist() == got_one.column("spine_row").to_pylist()
    assert_bits_equal(got_many, got_one)
    assert_bits_equal(read_sorted(many), want)
    # progress from the worker threads: monotone, ending at events + 2 x spine rows
    assert seen == sorted(seen) and seen[-1] == events.num_rows + 2 * spine.num_rows
    assert not [t for t in threading.enumerate() if t.name.startswith("rtml-backfill")]


def test_units_larger_than_a_workers_share_run_fewer_at_once(tmp_path, monkeypatch):
    """Six partitions of about 0.42 x the budget each (a fixed budget: the process's RSS is
    pinned for the call): with 3 workers only two fit the budget together, so at most two
    engine calls run at once (and two do: the barrier), their costs within the budget."""
    events, spine = _units_data()
    fs = feature_set()
    n_feat = len(fs.feature_names)
    # the whole input's cost under MEMORY_MODEL (the spine carries its int64 spine_row)
    total = outofcore._unit_cost(
        events.nbytes, spine.nbytes + 8 * spine.num_rows, spine.num_rows, n_feat
    )
    budget = total / 2.5
    base = 100_000_000
    monkeypatch.setattr(outofcore, "_rss", lambda: base)
    limit = int((base + _READER_RESERVE + budget) / (1 - _SLACK)) + 1
    rec = _Recorder(fs._spec, n_feat, meet=2)
    monkeypatch.setattr(fs, "_spec", rec)
    out = str(tmp_path / "out.parquet")
    res = outofcore.backfill(
        fs, events, spine, out, memory_limit=limit, partitions=6, workers=3, progress=False
    )
    assert abs(res.budget - budget) < 16, (res.budget, budget)
    assert res.units == 6 and rec.calls == 6
    assert rec.max_active == 2
    assert rec.max_cost <= res.budget, (rec.max_cost, res.budget)
    monkeypatch.undo()
    assert_bits_equal(read_sorted(out), in_memory(fs, events, spine))


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_directory_output_same_rows_whatever_the_workers(workers, tmp_path):
    """A directory output: one part per unit (more, smaller units with more workers), the
    parts read in name order give the same rows in the same order (the order is fixed by the
    partitions, given here: the default count depends on the budget, hence on the RSS)."""
    events, spine = _units_data(n=60_000, n_keys=6_000, seed=workers)
    fs = feature_set()
    ref = str(tmp_path / "ref.parquet")
    kw = dict(partitions=24, progress=False)
    outofcore.backfill(fs, events, spine, ref, memory_limit=_limit(3_000_000), workers=1, **kw)
    out = str(tmp_path / "dir")
    res = outofcore.backfill(
        fs, events, spine, out, memory_limit=_limit(3_000_000), workers=workers, **kw
    )
    assert res.units >= 3
    parts = sorted(glob.glob(os.path.join(out, "part-*.parquet")))
    assert len(parts) == res.units
    got = pa.concat_tables([pq.read_table(p) for p in parts])
    assert_bits_equal(got, pq.read_table(ref))
    assert_bits_equal(read_sorted(out), in_memory(fs, events, spine))


def test_fs_backfill_out_delegates_and_progress_covers_both_passes(tmp_path):
    events = pa.table(
        {
            "k": ["a", "b", "a", "c"],
            "ts": pa.array([1, 2, 3, 4], pa.timestamp("s", "UTC")),
            "v": [1.0, 2.0, 3.0, None],
            "cat": ["x", "y", "x", None],
        }
    )
    spine = pa.table({"k": ["a", "c", "zz"], "ts": pa.array([4, 5, 6], pa.timestamp("s", "UTC"))})
    fs = feature_set()
    seen = []
    out = str(tmp_path / "o.parquet")
    res = fs.backfill(
        events, spine, out=out, memory_limit="2GB", progress=lambda d, t: seen.append((d, t))
    )
    assert isinstance(res, outofcore.OutOfCoreResult)
    assert_bits_equal(read_sorted(out), in_memory(fs, events, spine))
    # events + spine read (pass 1), then spine rows backfilled (pass 2): 4 + 3 + 3
    assert seen[-1] == (10, 10)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert all(t == 10 for _, t in seen)
    with pytest.raises(ValueError, match="memory_limit= needs out="):
        fs.backfill(events, spine, memory_limit="1GB")


def test_glob_and_pandas_spine_and_no_row_index(tmp_path):
    import pandas as pd

    rnd = np.random.default_rng(1)
    n = 3000
    ev = pa.table(
        {
            "k": pa.array(rnd.integers(0, 50, n)),
            "ts": pa.array(rnd.integers(0, 10**6, n) * 10**9, pa.timestamp("ns")),
            "v": pa.array(rnd.normal(size=n)),
            "cat": pa.array(rnd.choice(list("ab"), n)),
        }
    )
    for i in range(3):
        pq.write_table(ev.slice(i * 1000, 1000), tmp_path / f"ev-{i}.parquet")
    spine = pd.DataFrame(
        {"k": rnd.integers(0, 60, 500), "ts": pd.to_datetime(rnd.integers(0, 10**6, 500), unit="s")}
    )
    fs = feature_set()
    want = in_memory(fs, ev, spine)
    out = str(tmp_path / "out.parquet")
    outofcore.backfill(fs, str(tmp_path / "ev-*.parquet"), spine, out, partitions=4, progress=False)
    assert_bits_equal(read_sorted(out), want)
    out2 = str(tmp_path / "out2.parquet")
    outofcore.backfill(fs, ev, spine, out2, partitions=1, row_index=None, progress=False)
    # one partition: spine order itself
    assert_bits_equal(pq.read_table(out2), want)


def _composite_data(n: int, n_spine: int, seed: int, hot: bool = False):
    """Events keyed by (d: string, z: int) whose parts collide when joined without a separator
    (("a", 12) and ("a1", 2)), a spine over known and unknown tuples, and the same keys as one
    joined column `dz` ("a|12") for the independent expectation."""
    rnd = np.random.default_rng(seed)
    drivers = np.array(["a", "a1", "b", "bc", "ü", ""], dtype=object)
    d = rnd.choice(drivers, n)
    z = rnd.choice([1, 2, 12, -3], n)
    if hot:
        d[: n * 3 // 4] = "hot"
        z[: n * 3 // 4] = 7
    secs = rnd.integers(0, 2 * 86400, n)
    order = rnd.permutation(n)  # not in time order
    events = pa.table(
        {
            "d": pa.array(d[order]),
            "z": pa.array(z[order], pa.int32()),  # an int32 part against int64 spine parts
            "ts": pa.array((1_700_000_000 + secs[order]) * 10**6, pa.timestamp("us", "UTC")),
            "v": pa.array(np.round(rnd.lognormal(2, 1, n), 2)),
            "cat": pa.array(rnd.choice(list("abcdefgh"), n)),
        }
    )
    pick = rnd.integers(0, n, n_spine)
    sd = events["d"].take(pa.array(pick)).to_pylist()
    sz = events["z"].take(pa.array(pick)).to_pylist()
    sd[:5] = ["zz"] * 5  # no events
    spine = pa.table(
        {
            "driver": pa.array(sd),
            "zone": pa.array(sz, pa.int64()),
            "ts": events["ts"].take(pa.array(pick)),
        }
    )
    joined = lambda ds, zs: pa.array([f"{a}|{b}" for a, b in zip(ds, zs)])  # noqa: E731
    ev_joined = events.append_column("dz", joined(events["d"].to_pylist(), events["z"].to_pylist()))
    sp_joined = pa.table({"dz": joined(sd, sz), "ts": spine["ts"]})
    return events, spine, ev_joined, sp_joined


def composite_feature_set(entity=("d", "z")) -> rtml.FeatureSet:
    base = feature_set()
    return rtml.FeatureSet(
        list(entity) if not isinstance(entity, str) else entity, "ts", base.features
    )


def test_composite_keys_same_bits_as_in_memory_and_as_a_joined_key(tmp_path):
    """A composite key (entity=["d", "z"], spine columns named otherwise): many partitions,
    partitions split again, and the in-memory bits; the features equal those of a single key
    column joining the parts, backfilled in memory (an independent grouping)."""
    events, spine, ev_joined, sp_joined = _composite_data(60_000, 8_000, seed=4)
    fs = composite_feature_set()
    key = ["driver", "zone"]
    want = in_memory(fs, events, spine, key=key)
    single = in_memory(composite_feature_set("dz"), ev_joined, sp_joined)
    for name in fs.feature_names:
        assert_bits_equal(want.select([name]), single.select([name]))
    limit = int((_rss() + _READER_RESERVE + 4_000_000) / (1 - _SLACK))  # a budget of about 4 MB
    out = str(tmp_path / "out")
    res = outofcore.backfill(fs, events, spine, out, memory_limit=limit, key=key, progress=False)
    assert res.partitions >= 4 and res.units >= 2, res
    assert res.hot_keys == []
    assert_bits_equal(read_sorted(out), want)
    # FeatureSet.backfill(out=...) takes the composite key too, and a forced partition count
    out2 = str(tmp_path / "out2.parquet")
    fs.backfill(events, spine, key=key, out=out2, memory_limit="2GB")
    assert_bits_equal(read_sorted(out2), want)
    # ... and passes workers= through (checked by outofcore.backfill itself)
    out2w = str(tmp_path / "out2w.parquet")
    fs.backfill(events, spine, key=key, out=out2w, memory_limit="2GB", workers=2, progress=False)
    assert_bits_equal(read_sorted(out2w), want)
    with pytest.raises(ValueError, match="workers"):
        fs.backfill(events, spine, key=key, out=str(tmp_path / "bad.parquet"), workers=0)
    with pytest.raises(ValueError, match="workers= needs out="):
        fs.backfill(events, spine, key=key, workers=2)
    out3 = str(tmp_path / "out3.parquet")
    outofcore.backfill(fs, events, spine, out3, key=key, partitions=7, progress=False)
    assert_bits_equal(read_sorted(out3), want)


def test_composite_rows_of_one_key_share_a_partition():
    """The partition of a row is a function of its tuple of parts (whatever the integer width),
    and equals the partition of the encoded key (what the engine holds) as a string column."""
    from rtml import _keyhash

    events, spine, _, _ = _composite_data(5_000, 2_000, seed=9)
    ev_keys = _keyhash.entity_keys(events, ["d", "z"])
    sp_keys = _keyhash.entity_keys(spine, ["driver", "zone"])
    p_ev = _keyhash.partition_of(ev_keys, 13)
    p_sp = _keyhash.partition_of(sp_keys, 13)
    where = {}
    for t, p in zip(zip(events["d"].to_pylist(), events["z"].to_pylist()), p_ev.tolist()):
        assert where.setdefault(t, p) == p
    for t, p in zip(zip(spine["driver"].to_pylist(), spine["zone"].to_pylist()), p_sp.tolist()):
        assert where.setdefault(t, p) == p
    # the encoded column is the engine's key text (src/key.rs), hashed as any string key
    want = [
        f"s{len(a.encode())}:{a}i{b};"
        for a, b in zip(events["d"].to_pylist(), events["z"].to_pylist())
    ]
    assert ev_keys.to_pylist() == want
    assert p_ev.tolist() == _keyhash.partition_of(pa.array(want), 13).tolist()


def test_composite_hot_key_named_as_a_tuple(tmp_path):
    events, spine, _, _ = _composite_data(160_000, 3_000, seed=2, hot=True)
    fs = composite_feature_set()
    key = ["driver", "zone"]
    want = in_memory(fs, events, spine, key=key)
    limit = int((_rss() + _READER_RESERVE + 3_000_000) / (1 - _SLACK))
    out = str(tmp_path / "out.parquet")
    with pytest.warns(
        rtml.HotKeyWarning, match=r"entity \('hot', 7\) of columns \('d', 'z'\) has 120,000 events"
    ):
        res = outofcore.backfill(
            fs, events, spine, out, memory_limit=limit, key=key, progress=False
        )
    assert res.hot_keys == [(("hot", 7), 120_000)]
    assert_bits_equal(read_sorted(out), want)


def test_composite_errors_match_in_memory(tmp_path):
    events, spine, _, _ = _composite_data(200, 50, seed=1)
    fs = composite_feature_set()
    key = ["driver", "zone"]
    cases = [
        (events.drop_columns(["z"]), spine, rtml.SchemaError, "'z'"),
        (events, spine.drop_columns(["zone"]), rtml.SchemaError, "'zone'"),
        (
            events,
            spine.set_column(1, "zone", pa.array([str(x) for x in spine["zone"].to_pylist()])),
            rtml.SchemaError,
            "spine",
        ),
        (
            events,
            spine.set_column(
                1, "zone", pa.array([None] + spine["zone"].to_pylist()[1:], pa.int64())
            ),
            rtml.SchemaError,
            "null key",
        ),
    ]
    for i, (ev, sp, exc, word) in enumerate(cases):
        with pytest.raises(exc, match=word):
            fs.backfill(ev, sp, key=key, output="arrow", progress=False)
        with pytest.raises(exc, match=word):
            outofcore.backfill(fs, ev, sp, str(tmp_path / f"o{i}.parquet"), key=key, progress=False)
        assert not os.path.exists(tmp_path / f"o{i}.parquet")
    with pytest.raises(rtml.SchemaError, match="key="):
        outofcore.backfill(fs, events, spine, str(tmp_path / "x.parquet"), key="driver")


# ------------------------------------------------------------------ errors and cleanup


def _small():
    events = pa.table(
        {
            "k": pa.array([1, 2, 1], pa.int64()),
            "ts": pa.array([1, 2, 3], pa.timestamp("s", "UTC")),
            "v": [1.0, 2.0, 3.0],
            "cat": ["a", "b", "c"],
        }
    )
    spine = pa.table(
        {"k": pa.array([1, 2], pa.int64()), "ts": pa.array([5, 6], pa.timestamp("s", "UTC"))}
    )
    return events, spine


def _same_error(fs, events, spine, tmp_path, exc=rtml.SchemaError):
    with pytest.raises(exc) as mem:
        fs.backfill(events, spine, progress=False)
    with pytest.raises(exc) as ooc:
        outofcore.backfill(
            fs, events, spine, str(tmp_path / "o.parquet"), partitions=3, progress=False
        )
    assert str(ooc.value) == str(mem.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "change",
    ["null_key", "null_ts", "nan", "late_null_key", "spine_null_ts"],
)
def test_value_errors_match_in_memory(change, tmp_path):
    events, spine = _small()
    big = pa.concat_tables([events] * 50_000)  # several pass-1 chunks
    fs = feature_set()
    if change == "null_key":
        events = events.set_column(0, "k", pa.array([1, None, 1], pa.int64()))
    elif change == "null_ts":
        events = events.set_column(1, "ts", pa.array([1, 2, None], pa.timestamp("s", "UTC")))
    elif change == "nan":
        events = events.set_column(2, "v", pa.array([1.0, float("nan"), 3.0]))
    elif change == "late_null_key":
        keys = big.column("k").to_pylist()
        keys[123_457] = None
        events = big.set_column(0, "k", pa.array(keys, pa.int64()))
    else:
        spine = spine.set_column(1, "ts", pa.array([5, None], pa.timestamp("s", "UTC")))
    _same_error(fs, events, spine, tmp_path)


@pytest.mark.parametrize(
    "change",
    [
        "missing_event_col",
        "missing_value_col",
        "key_kinds",
        "string_time",
        "float_key",
        "naive_spine",
    ],
)
def test_schema_errors_before_any_spill(change, tmp_path):
    events, spine = _small()
    fs = feature_set()
    if change == "missing_event_col":
        events = events.rename_columns(["kk", "ts", "v", "cat"])
    elif change == "missing_value_col":
        events = events.drop_columns(["v"])
    elif change == "key_kinds":
        spine = spine.set_column(0, "k", pa.array(["1", "2"]))
    elif change == "string_time":
        spine = spine.set_column(1, "ts", pa.array(["2024-01-01", "2024-01-02"]))
    elif change == "float_key":
        events = events.set_column(0, "k", pa.array([1.0, 2.0, 1.0]))
    else:
        spine = spine.set_column(1, "ts", pa.array([5, 6], pa.timestamp("s")))
    _same_error(fs, events, spine, tmp_path)


def test_bad_arguments(tmp_path):
    events, spine = _small()
    fs = feature_set()
    with pytest.raises(rtml.SpecError, match="memory_limit"):
        outofcore.backfill(
            fs, events, spine, str(tmp_path / "o.parquet"), memory_limit="4 lightyears"
        )
    with pytest.raises(rtml.SpecError, match="already uses"):
        outofcore.backfill(fs, events, spine, str(tmp_path / "o.parquet"), memory_limit="1MB")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(rtml.SpecError, match="workers: expected a positive int"):
            outofcore.backfill(fs, events, spine, str(tmp_path / "o.parquet"), workers=bad)
    (tmp_path / "exists.parquet").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        outofcore.backfill(fs, events, spine, str(tmp_path / "exists.parquet"))
    with pytest.raises(FileNotFoundError):
        outofcore.backfill(fs, str(tmp_path / "nope-*.parquet"), spine, str(tmp_path / "o.parquet"))
    (tmp_path / "e.csv").write_text("k,ts\n1,2\n")
    with pytest.raises(rtml.SchemaError, match="CSV"):
        outofcore.backfill(fs, str(tmp_path / "e.csv"), spine, str(tmp_path / "o.parquet"))
    with pytest.raises(rtml.SchemaError, match="spine_row"):
        outofcore.backfill(
            fs,
            events,
            spine.append_column("spine_row", pa.array([0, 1])),
            str(tmp_path / "o.parquet"),
        )
    assert sorted(os.listdir(tmp_path)) == ["e.csv", "exists.parquet"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("when", ["partition", "backfill"])
@pytest.mark.parametrize("workers", [1, 3])
def test_interrupt_removes_spill_and_partial_output(exc, when, workers, tmp_path):
    """Ctrl-C (KeyboardInterrupt, as Python delivers it) or an error from the progress callback
    during either pass: the spill directory is gone, nothing is at `out`, the exception
    propagates unchanged, and no worker thread is left running (with workers, the callback
    raises in a worker thread while other units run)."""
    events, spine = _small()
    events = pa.concat_tables([events] * 100_000)
    spine = pa.concat_tables([spine] * 20_000)
    fs = feature_set()
    n_read = events.num_rows + spine.num_rows

    def cb(done, total):
        if (when == "partition" and done > 1000) or (when == "backfill" and done > n_read):
            raise exc("stop")

    spill = tmp_path / "spill"
    spill.mkdir()
    with pytest.raises(exc, match="stop"):
        outofcore.backfill(
            fs,
            events,
            spine,
            str(tmp_path / "out"),
            partitions=4,
            progress=cb,
            spill_dir=spill,
            workers=workers,
        )
    assert os.listdir(spill) == []
    assert os.listdir(tmp_path) == ["spill"]
    assert not [t for t in threading.enumerate() if t.name.startswith("rtml-backfill")]


def test_reader_input_is_streamed(tmp_path):
    events, spine = _small()
    big = pa.concat_tables([events] * 1000)
    fs = feature_set()
    reader = pa.RecordBatchReader.from_batches(big.schema, big.to_batches(max_chunksize=100))
    out = str(tmp_path / "o.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = outofcore.backfill(fs, reader, spine, out, partitions=2, progress=False)
    assert res.events == big.num_rows
    assert_bits_equal(read_sorted(out), in_memory(fs, big, spine))
