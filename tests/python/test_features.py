"""Feature semantics: hand-checked cases and hypothesis tests of FeatureSet.backfill
against the pure-Python reference (tests/python/reference.py)."""

from __future__ import annotations

import datetime as dt
import math
import random

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from helpers import (
    Q_VALUES,
    n_examples,
    NS_PER_UNIT,
    check_backfill_against_reference,
    event_sets,
    events_table,
    feature_lists,
    make_feature_set,
    ns_to_datetime,
    same_exact,
    spine_table,
    spines,
)
from reference import Feat

import rtml  # noqa: E402  (a broken build must fail the suite, not skip it)

S = NS_PER_UNIT["s"]
BASE = 1_700_000_000 * S

# --------------------------------------------------------------------------
# names


def test_default_feature_names_follow_api_doc():
    fs = rtml.FeatureSet(
        entity="driver_id",
        timestamp="ts",
        features=[
            rtml.count(window="1h"),
            rtml.count("fare", window="1h"),
            rtml.sum("fare", window="1h"),
            rtml.mean("fare", window="1h"),
            rtml.min("fare", window="1h"),
            rtml.max("fare", window="1h"),
            rtml.var("fare", window="1h"),
            rtml.std("fare", window="1h"),
            rtml.first("fare", window="1h"),
            rtml.last("fare"),
            rtml.quantile("fare", 0.9, window="1h"),
            rtml.decayed_sum("fare", half_life="30m", window="1d"),
            rtml.time_since_last(),
        ],
    )
    assert fs.feature_names == [
        "count_1h",
        "fare_count_1h",
        "fare_sum_1h",
        "fare_mean_1h",
        "fare_min_1h",
        "fare_max_1h",
        "fare_var_1h",
        "fare_std_1h",
        "fare_first_1h",
        "fare_last",
        "fare_p90_1h",
        "fare_decayed_sum_hl30m_1d",
        "time_since_last",
    ]


def test_default_name_of_24h_window_follows_api_doc():
    # docs/api.md: rtml.distinct_count("rider_id", window="24h") -> rider_id_distinct_count_24h
    fs = rtml.FeatureSet(entity="k", timestamp="ts", features=[rtml.distinct_count("rider_id", window="24h")])
    assert fs.feature_names == ["rider_id_distinct_count_24h"]


def test_lifetime_names_have_no_window_suffix():
    fs = rtml.FeatureSet(
        entity="k",
        timestamp="ts",
        features=[rtml.count(), rtml.sum("v"), rtml.quantile("v", 0.5)],
    )
    assert fs.feature_names == ["count", "v_sum", "v_p50"]


def test_name_override():
    fs = rtml.FeatureSet(
        entity="k",
        timestamp="ts",
        features=[rtml.sum("v", window="1h", name="spend"), rtml.count(name="n_events")],
    )
    assert fs.feature_names == ["spend", "n_events"]


def test_json_roundtrip_preserves_names_and_results():
    feats = [
        Feat("sum", "x", window=10 * S, name="a"),
        Feat("quantile", "x", window=None, q=0.25, name="b"),
        Feat("decayed_sum", "x", window=20 * S, half_life=5 * S, name="c"),
        Feat("time_since_last", None, window=10 * S, name="d"),
        Feat("count", None, name="e"),
    ]
    fs = make_feature_set(feats, allowed_lateness="5s", ttl="7d")
    fs2 = rtml.FeatureSet.from_json(fs.to_json())
    assert fs2.feature_names == fs.feature_names == ["a", "b", "c", "d", "e"]
    assert fs2.to_json() == fs.to_json()
    events = HAND_EVENTS
    ev = events_table(events, "int", "ts", "ns")
    sp = spine_table(HAND_QUERIES, "int", "ts", "ns")
    r1 = fs.backfill(ev, sp)
    r2 = fs2.backfill(ev, sp)
    assert r1.equals(r2)


# --------------------------------------------------------------------------
# hand-checked window semantics
#
# key 1: ts 0 -> 1.0, ts 10 -> 2.0, ts 20 -> null, ts 30 -> 4.0 and -1.0 (tie)
# key 2: ts 5 -> 100.0        (seconds after BASE)

HAND_EVENTS = [
    {"key": 1, "ts": BASE + 30 * S, "x": 4.0},
    {"key": 2, "ts": BASE + 5 * S, "x": 100.0},
    {"key": 1, "ts": BASE + 10 * S, "x": 2.0},
    {"key": 1, "ts": BASE + 0 * S, "x": 1.0},
    {"key": 1, "ts": BASE + 30 * S, "x": -1.0},
    {"key": 1, "ts": BASE + 20 * S, "x": None},
]

W = 10 * S
HAND_FEATS = [
    Feat("count", None, W, name="cnt"),
    Feat("count", "x", W, name="xcnt"),
    Feat("sum", "x", W, name="sum"),
    Feat("mean", "x", W, name="mean"),
    Feat("min", "x", W, name="min"),
    Feat("max", "x", W, name="max"),
    Feat("var", "x", W, name="var"),
    Feat("std", "x", W, name="std"),
    Feat("first", "x", W, name="first"),
    Feat("last", "x", W, name="last"),
    Feat("distinct_count", "x", W, name="dist"),
    Feat("time_since_last", None, W, name="tsl"),
    Feat("count", None, None, name="cnt_all"),
    Feat("sum", "x", None, name="sum_all"),
    Feat("first", "x", None, name="first_all"),
    Feat("last", "x", None, name="last_all"),
    Feat("time_since_last", None, None, name="tsl_all"),
]

_EMPTY_W = dict(cnt=0, xcnt=0, sum=0.0, mean=None, min=None, max=None, var=None, std=None,
                first=None, last=None, dist=0, tsl=None)
_EMPTY_ALL = dict(cnt_all=0, sum_all=0.0, first_all=None, last_all=None, tsl_all=None)


def _one(v, **kw):
    d = dict(cnt=1, xcnt=1, sum=v, mean=v, min=v, max=v, var=None, std=None, first=v, last=v, dist=1, tsl=10.0)
    d.update(kw)
    return d


# (key, seconds after BASE) -> expected row, checked by hand
HAND_EXPECTED = [
    ((1, 0), {**_EMPTY_W, **_EMPTY_ALL}),
    ((1, 10), {**_one(1.0), **dict(cnt_all=1, sum_all=1.0, first_all=1.0, last_all=1.0, tsl_all=10.0)}),
    # the event at t - W = 10 is in, the one at t = 20 is out
    ((1, 20), {**_one(2.0), **dict(cnt_all=2, sum_all=3.0, first_all=1.0, last_all=2.0, tsl_all=10.0)}),
    # only the null-valued event at 20: count() sees it, value aggregations do not
    ((1, 30), {**_EMPTY_W, "cnt": 1, "tsl": 10.0,
               **dict(cnt_all=3, sum_all=3.0, first_all=1.0, last_all=2.0, tsl_all=10.0)}),
    # the two tied events at 30: first = smallest, last = largest
    ((1, 31), dict(cnt=2, xcnt=2, sum=3.0, mean=1.5, min=-1.0, max=4.0, var=12.5, std=math.sqrt(12.5),
                   first=-1.0, last=4.0, dist=2, tsl=1.0,
                   cnt_all=5, sum_all=6.0, first_all=1.0, last_all=4.0, tsl_all=1.0)),
    ((1, 40), dict(cnt=2, xcnt=2, sum=3.0, mean=1.5, min=-1.0, max=4.0, var=12.5, std=math.sqrt(12.5),
                   first=-1.0, last=4.0, dist=2, tsl=10.0,
                   cnt_all=5, sum_all=6.0, first_all=1.0, last_all=4.0, tsl_all=10.0)),
    ((1, 41), {**_EMPTY_W, **dict(cnt_all=5, sum_all=6.0, first_all=1.0, last_all=4.0, tsl_all=11.0)}),
    ((2, 15), {**_one(100.0), **dict(cnt_all=1, sum_all=100.0, first_all=100.0, last_all=100.0, tsl_all=10.0)}),
    ((2, 5), {**_EMPTY_W, **_EMPTY_ALL}),
    ((3, 100), {**_EMPTY_W, **_EMPTY_ALL}),
]
# spine deliberately not sorted by time or key
_ORDER = [4, 0, 9, 2, 7, 1, 8, 6, 3, 5]
HAND_QUERIES = [(HAND_EXPECTED[i][0][0], BASE + HAND_EXPECTED[i][0][1] * S) for i in _ORDER]
HAND_ROWS = [HAND_EXPECTED[i][1] for i in _ORDER]


def test_reference_agrees_with_hand_expectations():
    got = ref.evaluate(HAND_FEATS, HAND_EVENTS, HAND_QUERIES)
    for q, g, w in zip(HAND_QUERIES, got, HAND_ROWS):
        for f in HAND_FEATS:
            assert ref.check_value(f, g[f.name], w[f.name]) is None, (q, f.name, g[f.name], w[f.name])


HAND_REPRS = [
    ("int", "s", None),
    ("int", "ns", None),
    ("ts", "ns", None),
    ("ts", "s", "UTC"),
    ("ts", "ms", "America/New_York"),
    ("ts", "us", "Asia/Kolkata"),
]


@pytest.mark.parametrize("mode,unit,tz", HAND_REPRS)
def test_hand_checked_windows(mode, unit, tz):
    kw = {"timestamp_unit": unit} if mode == "int" else {}
    fs = make_feature_set(HAND_FEATS, **kw)
    ev = events_table(HAND_EVENTS, "int", mode, unit, tz, columns=("x",))
    sp = spine_table(HAND_QUERIES, "int", mode, unit, tz)
    out = fs.backfill(ev, sp)
    errors = []
    for i, (q, w) in enumerate(zip(HAND_QUERIES, HAND_ROWS)):
        for f in HAND_FEATS:
            g = out.column(f.name)[i].as_py()
            msg = ref.check_value(f, g, w[f.name])
            if msg:
                errors.append(f"query {q[0]}@{(q[1] - BASE) // S}s {f.name}: {msg}")
    assert not errors, "\n".join(errors)
    check_backfill_against_reference(out, sp, HAND_FEATS, HAND_EVENTS, HAND_QUERIES)


def test_string_keys_hand_checked():
    events = [dict(e, key=f"k{e['key']}") for e in HAND_EVENTS]
    queries = [(f"k{k}", t) for k, t in HAND_QUERIES]
    fs = make_feature_set(HAND_FEATS)
    sp = spine_table(queries, "str", "ts", "ns")
    out = fs.backfill(events_table(events, "str", "ts", "ns", columns=("x",)), sp)
    check_backfill_against_reference(out, sp, HAND_FEATS, events, queries)
    # identical to the integer-key answer, bit for bit
    out_int = make_feature_set(HAND_FEATS).backfill(
        events_table(HAND_EVENTS, "int", "ts", "ns", columns=("x",)), spine_table(HAND_QUERIES, "int", "ts", "ns")
    )
    for f in HAND_FEATS:
        a, b = out.column(f.name).to_pylist(), out_int.column(f.name).to_pylist()
        assert all(same_exact(x, y) for x, y in zip(a, b)), f.name


def test_nanosecond_window_edges():
    # 1ns resolution: the event at t - W is in, t - W - 1ns is out, t - 1ns is in, t is out
    t = BASE + 1000
    events = [
        {"key": 7, "ts": t - 10, "x": 1.0},  # t - W
        {"key": 7, "ts": t - 11, "x": 10.0},  # just outside
        {"key": 7, "ts": t - 1, "x": 100.0},  # just inside
        {"key": 7, "ts": t, "x": 1000.0},  # the query instant: excluded
    ]
    feats = [
        Feat("sum", "x", 10, name="s10ns"),
        Feat("count", None, 10, name="c10ns"),
        Feat("time_since_last", None, 10, name="tsl"),
        Feat("last", "x", 10, name="last"),
        Feat("first", "x", 10, name="first"),
    ]
    fs = make_feature_set(feats)
    sp = spine_table([(7, t)], "int", "ts", "ns")
    out = fs.backfill(events_table(events, "int", "ts", "ns", columns=("x",)), sp)
    row = out.to_pylist()[0]
    assert row["s10ns"] == 101.0
    assert row["c10ns"] == 2
    assert row["tsl"] == pytest.approx(1e-9, rel=1e-12)
    assert row["last"] == 100.0
    assert row["first"] == 1.0
    check_backfill_against_reference(out, sp, feats, events, [(7, t)])


def test_timedelta_and_compound_windows_equal_strings():
    events = [{"key": 1, "ts": BASE + i * 60 * S, "x": float(i)} for i in range(200)]
    queries = [(1, BASE + i * 37 * S) for i in range(0, 330)]
    ev = events_table(events, "int", "ts", "s", columns=("x",))
    sp = spine_table(queries, "int", "ts", "s")
    fss = [
        rtml.FeatureSet(entity="key", timestamp="ts", features=[rtml.sum("x", window=w, name="v")])
        for w in ("90m", "1h30m", dt.timedelta(minutes=90), "5400s")
    ]
    outs = [fs.backfill(ev, sp).column("v").to_pylist() for fs in fss]
    for o in outs[1:]:
        assert o == outs[0]
    want = ref.evaluate([Feat("sum", "x", 90 * 60 * S, name="v")], events, queries)
    assert outs[0] == [r["v"] for r in want]


# --------------------------------------------------------------------------
# individual aggregations


def _backfill_rows(feats, events, queries, columns=("x",), key_kind="int", **fs_kw):
    fs = make_feature_set(feats, **fs_kw)
    sp = spine_table(queries, key_kind, "ts", "ns")
    out = fs.backfill(events_table(events, key_kind, "ts", "ns", columns=columns), sp)
    check_backfill_against_reference(out, sp, feats, events, queries)
    return out.to_pylist()


def test_quantile_nearest_rank():
    events = [{"key": 1, "ts": BASE + i * S, "x": float(v)} for i, v in enumerate([7, 3, 10, 1, 5, 9, 2, 8, 6, 4])]
    qs = {0.0: 1, 0.05: 1, 0.1: 1, 0.25: 3, 0.5: 5, 0.7: 7, 0.9: 9, 0.99: 10, 1.0: 10}
    feats = [Feat("quantile", "x", None, q=q, name=f"q{i}") for i, q in enumerate(qs)]
    row = _backfill_rows(feats, events, [(1, BASE + 100 * S)])[0]
    for i, (q, rank_value) in enumerate(qs.items()):
        got = row[f"q{i}"]
        assert got is not None and abs(got - rank_value) <= rank_value * 2**-8, (q, got, rank_value)


def test_quantile_zero_is_exact_and_negatives():
    events = [{"key": 1, "ts": BASE + i * S, "x": v} for i, v in enumerate([-3.0, 0.0, -0.0, 5.0, None])]
    feats = [Feat("quantile", "x", None, q=q, name=f"q{i}") for i, q in enumerate([0.25, 0.5, 0.75, 1.0])]
    row = _backfill_rows(feats, events, [(1, BASE + 100 * S)])[0]
    assert abs(row["q0"] - (-3.0)) <= 3.0 * 2**-8 and row["q0"] < 0
    assert row["q1"] == 0.0
    assert row["q2"] == 0.0
    assert abs(row["q3"] - 5.0) <= 5.0 * 2**-8


def test_quantile_relative_error_bound_on_awkward_values():
    vals = [1.0 + 2**-8, 1.0 + 2**-7 - 2**-40, 3.14159, 1e-8, 123456789.123, 1e12, -7.77e-5, 1.5]
    events = [{"key": 1, "ts": BASE + i * S, "x": v} for i, v in enumerate(vals)]
    queries = [(1, BASE + (i + 1) * S) for i in range(len(vals))]
    feats = [Feat("quantile", "x", 1 * S, q=1.0, name="q")]  # window of one event: q = that value
    _backfill_rows(feats, events, queries)


def test_decayed_sum_hand_checked():
    events = [{"key": 1, "ts": BASE, "x": 8.0}, {"key": 1, "ts": BASE + 10 * S, "x": 1.0}]
    feats = [
        Feat("decayed_sum", "x", None, half_life=10 * S, name="life"),
        Feat("decayed_sum", "x", 15 * S, half_life=10 * S, name="w15"),
    ]
    qs = [(1, BASE), (1, BASE + 5 * S), (1, BASE + 10 * S), (1, BASE + 15 * S), (1, BASE + 20 * S), (2, BASE + 20 * S)]
    rows = _backfill_rows(feats, events, qs)
    want_life = [0.0, 8 * 2**-0.5, 4.0, 8 * 2**-1.5 + 2**-0.5, 2.5, 0.0]
    want_w15 = [0.0, 8 * 2**-0.5, 4.0, 8 * 2**-1.5 + 2**-0.5, 0.5, 0.0]
    for r, a, b in zip(rows, want_life, want_w15):
        assert r["life"] == pytest.approx(a, rel=1e-12, abs=1e-300)
        assert r["w15"] == pytest.approx(b, rel=1e-12, abs=1e-300)


def test_decayed_sum_across_many_periods_and_negative_times():
    # P = 32 h: events spread over several cells, some before the epoch
    h = 1 * S
    events = [{"key": 1, "ts": -100 * S + i * 7 * S, "x": (-1.0) ** i * (i + 1)} for i in range(40)]
    feats = [
        Feat("decayed_sum", "x", None, half_life=h, name="life"),
        Feat("decayed_sum", "x", 64 * S, half_life=h, name="w"),
    ]
    qs = [(1, -100 * S + k * 5 * S) for k in range(0, 70)]
    _backfill_rows(feats, events, qs)


def test_min_max_total_order_and_distinct_signed_zero():
    events = [{"key": 1, "ts": BASE, "x": 0.0}, {"key": 1, "ts": BASE, "x": -0.0}]
    feats = [
        Feat("min", "x", None, name="mn"),
        Feat("max", "x", None, name="mx"),
        Feat("distinct_count", "x", None, name="d"),
        Feat("sum", "x", None, name="s"),
    ]
    row = _backfill_rows(feats, events, [(1, BASE + 1)])[0]
    assert math.copysign(1.0, row["mn"]) == -1.0 and row["mn"] == 0.0
    assert math.copysign(1.0, row["mx"]) == 1.0 and row["mx"] == 0.0
    assert row["d"] == 1
    assert row["s"] == 0.0


def test_ties_first_last_do_not_depend_on_row_order():
    base_events = [{"key": 1, "ts": BASE + (i // 4) * S, "x": float((i * 7) % 11) - 5.0} for i in range(16)]
    feats = [Feat("first", "x", None, name="f"), Feat("last", "x", None, name="l"),
             Feat("first", "x", 2 * S, name="f2"), Feat("last", "x", 2 * S, name="l2")]
    qs = [(1, BASE + k * S) for k in range(0, 6)]
    first = None
    rng = random.Random(1)
    for _ in range(5):
        evs = list(base_events)
        rng.shuffle(evs)
        rows = _backfill_rows(feats, evs, qs)
        if first is None:
            first = rows
        assert rows == first


def test_sum_is_correctly_rounded():
    # naive left-to-right summation gets these wrong
    vals = [1e12, 1e-8, -1e12, 1e-8, 3.0, 1e16, -1e16, 0.1, 0.2, 0.3]
    events = [{"key": 1, "ts": BASE + i, "x": v} for i, v in enumerate(vals)]
    feats = [Feat("sum", "x", None, name="s"), Feat("mean", "x", None, name="m"),
             Feat("var", "x", None, name="v"), Feat("std", "x", None, name="sd")]
    row = _backfill_rows(feats, events, [(1, BASE + 100)])[0]
    assert row["s"] == math.fsum(vals)


def test_var_of_equal_values_is_zero():
    for v in (0.1, 1e12 / 3, -7.3e-8, 123.456):
        events = [{"key": 1, "ts": BASE + i, "x": v} for i in range(5)]
        feats = [Feat("var", "x", None, name="v"), Feat("std", "x", None, name="sd"),
                 Feat("mean", "x", None, name="m")]
        row = _backfill_rows(feats, events, [(1, BASE + 100)])[0]
        assert row["v"] == 0.0 and row["sd"] == 0.0, (v, row)
        assert row["m"] == v


def test_var_below_two_values_is_null():
    events = [{"key": 1, "ts": BASE, "x": 5.0}, {"key": 1, "ts": BASE + S, "x": None}]
    feats = [Feat("var", "x", None, name="v"), Feat("std", "x", None, name="sd")]
    rows = _backfill_rows(feats, events, [(1, BASE + 2 * S), (1, BASE)])
    assert rows[0]["v"] is None and rows[0]["sd"] is None
    assert rows[1]["v"] is None and rows[1]["sd"] is None


def test_string_column_count_and_distinct():
    events = [{"key": 1, "ts": BASE + i * S, "s": v} for i, v in enumerate(["a", "b", "a", None, "", "é", "e"])]
    feats = [Feat("count", "s", None, name="c"), Feat("distinct_count", "s", None, name="d"),
             Feat("distinct_count", "s", 3 * S, name="d3"), Feat("count", None, None, name="n")]
    rows = _backfill_rows(feats, events, [(1, BASE + 10 * S), (1, BASE + 3 * S)], columns=("s",))
    assert rows[0]["c"] == 6 and rows[0]["d"] == 5 and rows[0]["n"] == 7
    assert rows[1]["d3"] == 2  # "a", "b", "a"


def test_numeric_columns_read_as_float64():
    big = 2**53 + 1
    ev = pa.table({
        "key": pa.array([1, 1, 1], pa.int64()),
        "ts": pa.array([BASE, BASE + S, BASE + 2 * S], pa.timestamp("ns")),
        "i32": pa.array([1, None, 2], pa.int32()),
        "u8": pa.array([200, 3, None], pa.uint8()),
        "b": pa.array([True, False, True], pa.bool_()),
        "big": pa.array([big, 1, None], pa.int64()),
        "f32": pa.array([0.1, 0.5, None], pa.float32()),
    })
    fs = rtml.FeatureSet(entity="key", timestamp="ts", features=[
        rtml.sum("i32", name="a"), rtml.mean("u8", name="b"), rtml.sum("b", name="c"),
        rtml.max("big", name="d"), rtml.sum("f32", name="e"), rtml.distinct_count("big", name="f"),
    ])
    sp = pa.table({"key": pa.array([1], pa.int64()), "ts": pa.array([BASE + 3 * S], pa.timestamp("ns"))})
    out = fs.backfill(ev, sp)
    row = out.to_pylist()[0]
    assert row["a"] == 3.0
    assert row["b"] == 101.5
    assert row["c"] == 2.0
    assert row["d"] == float(big) == 9007199254740992.0
    assert row["e"] == math.fsum([float(pa.scalar(0.1, pa.float32()).as_py()), 0.5])
    assert row["f"] == 2
    for n in "abcde":
        assert out.schema.field(n).type == pa.float64()
    assert out.schema.field("f").type == pa.int64()


def test_on_nonfinite_skip_treats_nan_inf_as_null():
    vals = [1.0, float("nan"), 2.0, float("inf"), float("-inf"), None, 4.0]
    events = [{"key": 1, "ts": BASE + i * S, "x": v} for i, v in enumerate(vals)]
    feats = [Feat("count", "x", None, name="c"), Feat("sum", "x", None, name="s"), Feat("max", "x", None, name="mx"),
             Feat("last", "x", None, name="l"), Feat("count", None, None, name="n"),
             Feat("mean", "x", 3 * S, name="m3")]
    fs = make_feature_set(feats, on_nonfinite="skip")
    qs = [(1, BASE + 10 * S), (1, BASE + 5 * S), (1, BASE + 6 * S)]
    sp = spine_table(qs, "int", "ts", "ns")
    out = fs.backfill(events_table(events, "int", "ts", "ns", columns=("x",)), sp)
    cleaned = [dict(e, x=ref.nonfinite_to_none(e["x"])) for e in events]
    check_backfill_against_reference(out, sp, feats, cleaned, qs)
    row = out.to_pylist()[0]
    assert row["c"] == 3 and row["s"] == 7.0 and row["mx"] == 4.0 and row["l"] == 4.0 and row["n"] == 7


# --------------------------------------------------------------------------
# spine handling and input forms


def test_spine_passthrough_order_and_custom_names():
    fs = make_feature_set(HAND_FEATS)
    ev = events_table(HAND_EVENTS, "int", "ts", "ns", columns=("x",))
    sp = pa.table({
        "label": pa.array([i % 2 == 0 for i in range(len(HAND_QUERIES))]),
        "at": pa.array([t for _, t in HAND_QUERIES], pa.timestamp("ns", tz="UTC")),
        "uid": pa.array([k for k, _ in HAND_QUERIES], pa.int64()),
        "note": pa.array([f"n{i}" for i in range(len(HAND_QUERIES))]),
    })
    out = fs.backfill(ev, sp, key="uid", time="at")
    assert out.column_names == ["label", "at", "uid", "note"] + [f.name for f in HAND_FEATS]
    assert out.select(sp.column_names).equals(sp)
    std = fs.backfill(ev, spine_table(HAND_QUERIES, "int", "ts", "ns", extra=False))
    for f in HAND_FEATS:
        assert out.column(f.name).equals(std.column(f.name)), f.name


def test_duplicate_spine_rows_give_duplicate_answers():
    qs = HAND_QUERIES + HAND_QUERIES[::-1]
    _backfill_rows(HAND_FEATS, HAND_EVENTS, qs)


def test_spine_time_unit_may_differ_from_events():
    fs = make_feature_set(HAND_FEATS)
    ev = events_table(HAND_EVENTS, "int", "ts", "ns", columns=("x",))
    a = fs.backfill(ev, spine_table(HAND_QUERIES, "int", "ts", "ns", extra=False))
    b = fs.backfill(ev, spine_table(HAND_QUERIES, "int", "ts", "s", "Europe/Paris", extra=False))
    for f in HAND_FEATS:
        assert a.column(f.name).equals(b.column(f.name)), f.name


def _feature_columns(t, feats):
    return {f.name: t.column(f.name).to_pylist() for f in feats}


def test_key_encodings_are_equivalent():
    events = [dict(e, key=f"k{e['key']}") for e in HAND_EVENTS]
    queries = [(f"k{k}", t) for k, t in HAND_QUERIES]
    fs = make_feature_set(HAND_FEATS)
    base_ev = events_table(events, "str", "ts", "ns", columns=("x",))
    sp = spine_table(queries, "str", "ts", "ns", extra=False)
    want = _feature_columns(fs.backfill(base_ev, sp), HAND_FEATS)
    keys = base_ev.column("key")
    variants = {
        "large_string": keys.cast(pa.large_string()),
        "dictionary": keys.dictionary_encode(),
        "string_view": keys.cast(pa.string_view()),
    }
    for name, arr in variants.items():
        ev = base_ev.set_column(0, "key", arr)
        assert _feature_columns(fs.backfill(ev, sp), HAND_FEATS) == want, name
        # the spine key may use another string encoding too
        sp2 = sp.set_column(0, "key", sp.column("key").cast(pa.large_string()))
        assert _feature_columns(fs.backfill(ev, sp2), HAND_FEATS) == want, name


def test_integer_key_widths_are_widened():
    fs = make_feature_set(HAND_FEATS)
    ev = events_table(HAND_EVENTS, "int", "ts", "ns", columns=("x",))
    sp = spine_table(HAND_QUERIES, "int", "ts", "ns", extra=False)
    want = _feature_columns(fs.backfill(ev, sp), HAND_FEATS)
    for t in (pa.int8(), pa.int16(), pa.int32(), pa.uint32(), pa.uint64()):
        ev2 = ev.set_column(0, "key", ev.column("key").cast(t))
        assert _feature_columns(fs.backfill(ev2, sp), HAND_FEATS) == want, t
    sp2 = sp.set_column(0, "key", sp.column("key").cast(pa.int16()))
    assert _feature_columns(fs.backfill(ev, sp2), HAND_FEATS) == want


def test_pandas_and_polars_inputs():
    import pandas as pd
    import polars as pl
    fs = make_feature_set(HAND_FEATS)
    ev = events_table(HAND_EVENTS, "int", "ts", "ns", tz=None, columns=("x",))
    sp = spine_table(HAND_QUERIES, "int", "ts", "ns", tz=None, extra=False)
    want = _feature_columns(fs.backfill(ev, sp), HAND_FEATS)

    # pandas, naive datetime64[ns] on both sides (taken as UTC); nullable Float64 keeps the
    # null a null
    to_pd = {"types_mapper": {pa.float64(): pd.Float64Dtype()}.get}
    out = fs.backfill(ev.to_pandas(**to_pd), sp.to_pandas(), output="arrow")
    assert isinstance(out, pa.Table)
    assert _feature_columns(out, HAND_FEATS) == want
    # pandas, tz-aware in another zone against a tz-aware spine: same instants
    pev = ev.to_pandas(**to_pd)
    pev["ts"] = pev["ts"].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo")
    psp = sp.to_pandas()
    psp["ts"] = psp["ts"].dt.tz_localize("UTC")
    assert _feature_columns(fs.backfill(pev, psp, output="arrow"), HAND_FEATS) == want
    # polars
    out = fs.backfill(pl.from_arrow(ev), pl.from_arrow(sp), output="arrow")
    assert _feature_columns(out, HAND_FEATS) == want
    # RecordBatch
    out = fs.backfill(ev.to_batches()[0], sp.to_batches()[0])
    assert _feature_columns(out, HAND_FEATS) == want


def test_naive_timestamps_are_utc_wall_time():
    """A pipeline of naive times throughout is read as UTC; naive against aware is refused
    (docs/api.md, "Times and time zones")."""
    fs = make_feature_set(HAND_FEATS)
    sp = spine_table(HAND_QUERIES, "int", "ts", "ns", extra=False)
    sp_naive = spine_table(HAND_QUERIES, "int", "ts", "ns", tz=None, extra=False)
    naive = fs.backfill(events_table(HAND_EVENTS, "int", "ts", "ns", None, columns=("x",)), sp_naive)
    aware = fs.backfill(events_table(HAND_EVENTS, "int", "ts", "ns", "UTC", columns=("x",)), sp)
    other = fs.backfill(events_table(HAND_EVENTS, "int", "ts", "ns", "Pacific/Chatham", columns=("x",)), sp)
    assert _feature_columns(naive, HAND_FEATS) == _feature_columns(aware, HAND_FEATS)
    assert _feature_columns(naive, HAND_FEATS) == _feature_columns(other, HAND_FEATS)
    with pytest.raises(rtml.SchemaError, match="column 'ts'.*naive"):
        fs.backfill(events_table(HAND_EVENTS, "int", "ts", "ns", None, columns=("x",)), sp)


def test_key_with_no_events_gets_empty_values():
    feats = [Feat(a, None if a in ("count", "time_since_last") else "x", 10 * S,
                  q=0.5 if a == "quantile" else None,
                  half_life=S if a == "decayed_sum" else None, name=a) for a in ref.ALL_AGGS]
    rows = _backfill_rows(feats, HAND_EVENTS, [(12345, BASE + 10 * S)])
    assert rows[0] == {
        "key": 12345, "ts": rows[0]["ts"], "row_id": 0, "label": None,
        "count": 0, "sum": 0.0, "mean": None, "min": None, "max": None, "var": None, "std": None,
        "first": None, "last": None, "distinct_count": 0, "quantile": None, "decayed_sum": 0.0,
        "time_since_last": None,
    }


# --------------------------------------------------------------------------
# hypothesis: backfill == reference


@st.composite
def backfill_cases(draw):
    key_kind, unit, step, base, keys, events = draw(event_sets())
    feats = draw(feature_lists(step))
    queries = draw(spines(keys, events, feats, base, step, key_kind))
    mode = draw(st.sampled_from(["ts", "int"]))
    if mode == "ts":
        arrow_unit = draw(st.sampled_from([unit, "ns"]))
        tz = draw(st.sampled_from([None, "UTC", "Asia/Kolkata"]))
    else:
        arrow_unit, tz = unit, None
    return key_kind, mode, arrow_unit, tz, keys, events, feats, queries


@settings(max_examples=n_examples(100))
@given(backfill_cases())
def test_backfill_matches_reference(case):
    key_kind, mode, unit, tz, keys, events, feats, queries = case
    kw = {"timestamp_unit": unit} if mode == "int" else {}
    fs = make_feature_set(feats, **kw)
    assert fs.feature_names == [f.name for f in feats]
    ev = events_table(events, key_kind, mode, unit, tz)
    sp = spine_table(queries, key_kind, mode, unit, tz)
    out = fs.backfill(ev, sp)
    check_backfill_against_reference(out, sp, feats, events, queries)


@settings(max_examples=n_examples(60))
@given(backfill_cases(), st.randoms(use_true_random=False))
def test_backfill_independent_of_event_order_and_spine_order(case, rnd):
    key_kind, mode, unit, tz, keys, events, feats, queries = case
    kw = {"timestamp_unit": unit} if mode == "int" else {}
    fs = make_feature_set(feats, **kw)
    sp = spine_table(queries, key_kind, mode, unit, tz)
    a = fs.backfill(events_table(events, key_kind, mode, unit, tz), sp)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    perm = list(range(len(queries)))
    rnd.shuffle(perm)
    sp2 = sp.take(pa.array(perm, pa.int64()))
    b = fs.backfill(events_table(shuffled, key_kind, mode, unit, tz), sp2)
    for f in feats:
        ca, cb = a.column(f.name).to_pylist(), b.column(f.name).to_pylist()
        for j, i in enumerate(perm):
            assert same_exact(ca[i], cb[j]), (f.name, queries[i], ca[i], cb[j])


@settings(max_examples=n_examples(60))
@given(event_sets(key_kind="int"), st.data())
def test_string_and_int_keys_give_identical_bits(es, data):
    """String keys, dense integer keys (direct key table) and far-apart integer keys (hash
    map) give the same bits."""
    key_kind, unit, step, base, keys, events = es
    feats = data.draw(feature_lists(step))
    queries = data.draw(spines(keys, events, feats, base, step, key_kind))
    fs = make_feature_set(feats)
    a = fs.backfill(events_table(events, "int", "ts", "ns"), spine_table(queries, "int", "ts", "ns"))
    sev = [dict(e, key=str(e["key"])) for e in events]
    sq = [(str(k), t) for k, t in queries]
    b = fs.backfill(events_table(sev, "str", "ts", "ns"), spine_table(sq, "str", "ts", "ns"))
    # integers spread far apart take the hash map instead of the dense key table
    def far(k):  # an odd multiplier mod 2^64 is a bijection of int64
        v = (k * 3_000_000_019) % 2**64
        return v - 2**64 if v >= 2**63 else v

    fev = [dict(e, key=far(e["key"])) for e in events]
    fq = [(far(k), t) for k, t in queries]
    c = fs.backfill(events_table(fev, "int", "ts", "ns"), spine_table(fq, "int", "ts", "ns"))
    for f in feats:
        ca, cb, cc = (t.column(f.name).to_pylist() for t in (a, b, c))
        assert all(same_exact(x, y) for x, y in zip(ca, cb)), f.name
        assert all(same_exact(x, y) for x, y in zip(ca, cc)), f.name


# --------------------------------------------------------------------------
# the whole float64 range and the whole int64-nanosecond time range


def _one_key_rows(feats, vals, spacing=1):
    events = [{"key": 1, "ts": BASE + i * spacing, "x": v} for i, v in enumerate(vals)]
    qs = [(1, BASE + len(vals) * spacing)]
    fs = make_feature_set(feats)
    sp = spine_table(qs, "int", "ts", "ns")
    out = fs.backfill(events_table(events, "int", "ts", "ns", columns=("x",)), sp)
    return out, sp, events, qs


_finite_wide = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)


@settings(max_examples=n_examples(100))
@given(st.lists(_finite_wide, min_size=1, max_size=12))
def test_sum_min_max_exact_over_whole_float_range(vals):
    """sum == math.fsum exactly, subnormals and 1e300 included; min/max bitwise."""
    feats = [Feat("sum", "x", None, name="s"), Feat("min", "x", None, name="mn"), Feat("max", "x", None, name="mx"),
             Feat("distinct_count", "x", None, name="d"), Feat("first", "x", None, name="f"),
             Feat("last", "x", None, name="l")]
    out, sp, events, qs = _one_key_rows(feats, vals)
    check_backfill_against_reference(out, sp, feats, events, qs)


_normal_wide = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-300, max_value=1e300).flatmap(lambda m: st.sampled_from([m, -m])),
)


@settings(max_examples=n_examples(100))
@given(st.lists(_normal_wide, min_size=1, max_size=12))
def test_mean_and_quantile_over_whole_normal_range(vals):
    feats = [Feat("mean", "x", None, name="m")] + [
        Feat("quantile", "x", None, q=q, name=f"q{i}") for i, q in enumerate((0.0, 0.25, 0.5, 0.9, 1.0))
    ]
    out, sp, events, qs = _one_key_rows(feats, vals)
    check_backfill_against_reference(out, sp, feats, events, qs)


@settings(max_examples=n_examples(100))
@given(st.lists(st.one_of(st.just(0.0), st.floats(min_value=1e-140, max_value=1e140).flatmap(
    lambda m: st.sampled_from([m, -m]))), min_size=1, max_size=12))
def test_var_std_over_wide_range(vals):
    """var / std within 1e-12 relative where squares neither overflow nor lose their error term."""
    feats = [Feat("var", "x", None, name="v"), Feat("std", "x", None, name="sd")]
    out, sp, events, qs = _one_key_rows(feats, vals)
    check_backfill_against_reference(out, sp, feats, events, qs)


@settings(max_examples=n_examples(60))
@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 2 ** 52)), min_size=2, max_size=10),
       st.floats(min_value=1e-3, max_value=1e12))
def test_var_of_nearly_equal_values(parts, scale):
    """Catastrophic cancellation: values c + k * ulp(c). The exact accumulators must still give var
    to 1e-12 relative (the naive formula gives garbage or 0 here)."""
    c = scale
    ulp = math.ulp(c)
    vals = [c + k * ulp for k, _ in parts]
    feats = [Feat("var", "x", None, name="v"), Feat("std", "x", None, name="sd"), Feat("mean", "x", None, name="m")]
    out, sp, events, qs = _one_key_rows(feats, vals)
    check_backfill_against_reference(out, sp, feats, events, qs)


@pytest.mark.parametrize("v", [5e-324, -1e-320, 1e-310, -2.2250738585072e-308])
def test_quantile_subnormals_have_an_absolute_bound(v):
    """semantics.md: the 2^-8 relative bound holds for normal floats; subnormal values
    (|x| < 2^-1022) sit in buckets of absolute width 2^-1029 (error <= 2^-1030)."""
    fs = rtml.FeatureSet(entity="k", timestamp="ts", timestamp_unit="ns",
                         features=[rtml.quantile("x", 0.5, name="q")])
    ev = pa.table({"k": [1], "ts": [0], "x": [v]})
    sp = pa.table({"k": [1], "ts": [1]})
    got = fs.backfill(ev, sp).column("q")[0].as_py()
    assert abs(got - v) <= 2.0**-1030
    assert math.copysign(1.0, got) == math.copysign(1.0, v)


@settings(max_examples=n_examples(100))
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=12),
       st.sampled_from(Q_VALUES))
def test_quantile_over_every_finite_float(vals, q):
    """Nearest-rank quantile over the whole float64 range, subnormals and +-max included."""
    feats = [Feat("quantile", "x", None, q=q, name="q")]
    out, sp, events, qs = _one_key_rows(feats, vals)
    check_backfill_against_reference(out, sp, feats, events, qs)


def test_quantile_largest_finite_values():
    big = 1.7976931348623157e308
    feats = [Feat("quantile", "x", None, q=q, name=f"q{i}") for i, q in enumerate((0.0, 1.0))]
    out, sp, events, qs = _one_key_rows(feats, [big, -big])
    check_backfill_against_reference(out, sp, feats, events, qs)
    row = out.to_pylist()[0]
    assert math.isfinite(row["q0"]) and math.isfinite(row["q1"])


I64_MIN, I64_MAX = -(2**63), 2**63 - 1


@pytest.mark.parametrize("events_at,queries_at", [
    ([I64_MIN + 5, I64_MIN + 10], [I64_MIN + 6, I64_MIN + 11, I64_MIN + 1]),
    ([I64_MAX - 10, I64_MAX - 5], [I64_MAX, I64_MAX - 1, I64_MAX - 6]),
    ([I64_MIN + 10], [I64_MAX - 1, I64_MAX]),  # t - ts does not fit in int64
])
def test_times_at_the_ends_of_the_int64_range(events_at, queries_at):
    feats = [Feat("count", None, 3600 * S, name="c1h"), Feat("sum", "x", 3600 * S, name="s1h"),
             Feat("time_since_last", None, None, name="tsl"),
             Feat("time_since_last", None, 7 * 86400 * S, name="tslw"),
             Feat("decayed_sum", "x", None, half_life=86400 * S, name="ds"),
             Feat("decayed_sum", "x", 2 * 86400 * S, half_life=3600 * S, name="dsw"),
             Feat("first", "x", 3600 * S, name="f"), Feat("count", None, None, name="n")]
    events = [{"key": 1, "ts": t, "x": float(i + 1)} for i, t in enumerate(events_at)]
    qs = [(1, t) for t in queries_at]
    fs = make_feature_set(feats, timestamp_unit="ns")
    sp = spine_table(qs, "int", "int", "ns")
    out = fs.backfill(events_table(events, "int", "int", "ns", columns=("x",)), sp)
    check_backfill_against_reference(out, sp, feats, events, qs)


def test_string_value_encodings_are_equivalent():
    events = [{"key": 1, "ts": BASE + i * S, "s": v} for i, v in enumerate(["a", "b", "a", None, "", "é", "e", "b"])]
    feats = [Feat("count", "s", None, name="c"), Feat("distinct_count", "s", None, name="d"),
             Feat("distinct_count", "s", 3 * S, name="d3")]
    qs = [(1, BASE + k * S) for k in range(10)]
    fs = make_feature_set(feats)
    ev = events_table(events, "int", "ts", "ns", columns=("s",))
    sp = spine_table(qs, "int", "ts", "ns")
    base = fs.backfill(ev, sp)
    check_backfill_against_reference(base, sp, feats, events, qs)
    col = ev.column("s")
    for arr in (col.cast(pa.large_string()), col.dictionary_encode(), col.cast(pa.string_view())):
        out = fs.backfill(ev.set_column(ev.schema.get_field_index("s"), "s", arr), sp)
        assert _feature_columns(out, feats) == _feature_columns(base, feats), arr.type


def test_float16_and_float32_columns():
    import numpy as np
    ev = pa.table({
        "key": pa.array([1, 1, 1], pa.int64()),
        "ts": pa.array([BASE, BASE + S, BASE + 2 * S], pa.timestamp("ns")),
        "h": pa.array(np.array([0.5, 1.25, -3.0], dtype=np.float16)),
        "f": pa.array([0.1, None, 1e30], pa.float32()),
    })
    fs = rtml.FeatureSet(entity="key", timestamp="ts", features=[
        rtml.sum("h", name="a"), rtml.max("f", name="b"), rtml.count("f", name="c")])
    sp = pa.table({"key": pa.array([1], pa.int64()), "ts": pa.array([BASE + 3 * S], pa.timestamp("ns"))})
    row = fs.backfill(ev, sp).to_pylist()[0]
    assert row["a"] == -1.25
    assert row["b"] == float(np.float32(1e30))
    assert row["c"] == 2


def _rechunk(t: pa.Table, sizes) -> pa.Table:
    """The same rows as ``t``, cut into chunks of the given sizes, each chunk a slice (non-zero
    Arrow offsets, shared null bitmaps) of a larger table."""
    if t.num_rows == 0:
        return t
    pad = pa.concat_tables([t, t])  # slices of this have offsets and bitmaps shared with other rows
    batches = []
    pos = 0
    i = 0
    while pos < t.num_rows:
        n = max(1, sizes[i % len(sizes)])
        i += 1
        n = min(n, t.num_rows - pos)
        part = pad.slice(pos + t.num_rows, n) if i % 2 else pad.slice(pos, n)
        batches.extend(part.to_batches())
        pos += n
    return pa.Table.from_batches(batches, schema=t.schema)


@settings(max_examples=n_examples(60))
@given(backfill_cases(), st.lists(st.integers(1, 7), min_size=1, max_size=5),
       st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_chunked_and_sliced_inputs(case, ev_sizes, sp_sizes):
    """Multi-chunk tables whose chunks are slices with non-zero offsets give the same bits."""
    key_kind, mode, unit, tz, keys, events, feats, queries = case
    kw = {"timestamp_unit": unit} if mode == "int" else {}
    fs = make_feature_set(feats, **kw)
    ev = events_table(events, key_kind, mode, unit, tz)
    sp = spine_table(queries, key_kind, mode, unit, tz)
    a = fs.backfill(ev, sp)
    ev2, sp2 = _rechunk(ev, ev_sizes), _rechunk(sp, sp_sizes)
    assert ev2.equals(ev) and sp2.equals(sp)
    b = fs.backfill(ev2, sp2)
    assert b.select(sp.column_names).equals(sp)
    for f in feats:
        ca, cb = a.column(f.name).to_pylist(), b.column(f.name).to_pylist()
        assert all(same_exact(x, y) for x, y in zip(ca, cb)), f.name
    # and online, ingesting the sliced chunks one record batch at a time
    srt = sorted(events, key=lambda e: e["ts"])
    eng = fs.online()
    for batch in _rechunk(events_table(srt, key_kind, mode, unit, tz), ev_sizes).to_batches():
        eng.ingest(batch)
    assert eng.stats()["events_ingested"] == len(events)
    import pandas as pd
    t_ns = max([e["ts"] for e in events], default=0) + NS_PER_UNIT[unit]
    want = fs.backfill(ev, spine_table([(k, t_ns) for k in keys], key_kind, mode, unit, tz)).to_pylist()
    # on the events' clock: naive and tz-aware times never mix (docs/api.md)
    at = t_ns // NS_PER_UNIT[unit] if mode == "int" else pd.Timestamp(t_ns, unit="ns", tz="UTC" if tz else None)
    for k, w in zip(keys, want):
        got = eng.get(k, at=at)
        for f in feats:
            assert same_exact(got[f.name], w[f.name]), (k, f.name, got[f.name], w[f.name])


def test_unused_columns_of_any_type_are_ignored():
    fs = make_feature_set([Feat("count", None, None, name="n"), Feat("sum", "x", None, name="s"),
                           Feat("distinct_count", "key", None, name="dk")])
    ev = pa.table({
        "key": pa.array([1, 1, 2], pa.int64()),
        "ts": pa.array([BASE, BASE + S, BASE], pa.timestamp("ns")),
        "x": pa.array([1.0, 2.0, 3.0]),
        "lst": pa.array([[1], [], None], pa.list_(pa.int64())),
        "st": pa.array([{"a": 1}, {"a": 2}, None]),
        "bin": pa.array([b"\x00", None, b"zz"]),
        "nan": pa.array([float("nan")] * 3),
    })
    sp = pa.table({"key": pa.array([1, 2], pa.int64()), "ts": pa.array([BASE + 2 * S] * 2, pa.timestamp("ns"))})
    rows = fs.backfill(ev, sp).to_pylist()
    assert [(r["n"], r["s"], r["dk"]) for r in rows] == [(2, 3.0, 1), (1, 3.0, 1)]
    eng = fs.online(history=ev)
    eng.ingest([{"key": 2, "ts": ns_to_datetime(BASE + S, tz=None), "x": 4.0, "extra": [1, 2], "obj": object()}])
    got = eng.get(2, at=ns_to_datetime(BASE + 2 * S, tz=None))
    assert (got["n"], got["s"], got["dk"]) == (2, 7.0, 1)


def test_uint64_values_beyond_int64_are_read_as_float64():
    """semantics.md: numeric columns of any integer type are read as float64 (integers beyond 2^53
    lose precision), identically on both paths. A uint64 value >= 2^63 is a valid number."""
    vals = [2**64 - 1, 2**63 + 5, 7]
    fs = rtml.FeatureSet(entity="k", timestamp="ts", features=[rtml.sum("v", name="s"), rtml.max("v", name="mx")])
    ev = pa.table({"k": pa.array([1] * 3, pa.int64()),
                   "ts": pa.array([BASE + i * S for i in range(3)], pa.timestamp("ns")),
                   "v": pa.array(vals, pa.uint64())})
    sp = pa.table({"k": pa.array([1], pa.int64()), "ts": pa.array([BASE + 10 * S], pa.timestamp("ns"))})
    want = {"s": math.fsum(float(v) for v in vals), "mx": float(2**64 - 1)}
    row = fs.backfill(ev, sp).to_pylist()[0]
    assert (row["s"], row["mx"]) == (want["s"], want["mx"])
    at = ns_to_datetime(BASE + 10 * S, tz=None)  # naive, as the events' timestamp[ns]
    got_table = fs.online(history=ev).get(1, at=at)
    eng = fs.online()
    eng.ingest([{"k": 1, "ts": ns_to_datetime(BASE + i * S, tz=None), "v": v} for i, v in enumerate(vals)])
    got_rows = eng.get(1, at=at)
    assert got_table == got_rows == want
