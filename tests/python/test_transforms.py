"""Feature transforms (docs/transforms.md): scikit-learn equivalence of the fitted steps,
plain-Python references for the stateless steps, table / row / vector / JSON parity
(hypothesis), and errors (the right rtml exception naming the column and step, never a
Rust panic).

Tolerances: where docs/transforms.md promises a value exactly (stateless arithmetic, indices,
one-hot bits, parity between transform / transform_one / vector / from_json) the tests compare
float bits. Where the value comes from a statistic (means, stds, quantiles, encodings), the doc
promises the statistic's *definition*, not a particular rounding sequence, and scikit-learn
computes it with ordinary float sums (error ~ n * eps), so those compare with rtol 1e-12
(thousands of ulps of slack for rounding, far below any real semantic difference) plus a small
atol for outputs near zero, where ``x - mean`` cancels.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import warnings
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from helpers import n_examples, raises
from transform_helpers import (
    DST_US,
    UTC,
    assert_close,
    assert_exact,
    assert_float64_table,
    bits,
    column_np,
    columns,
    date_part,
    exact_mean,
    fit_apply_tables,
    loads,
    quantile_bucket_exact,
    quantile_edges_exact,
    replace_floats,
    replace_ints,
    replace_strings,
    rows_table,
    same_bits,
    step_dicts,
    target_encoding_exact,
    us_to_datetime,
    vocabulary,
    xxh3_64_reference,
)

import rtml  # noqa: E402  (a broken build must fail the suite, not skip it)

RTOL = 1e-12  # statistic-based outputs vs scikit-learn / numpy (see module docstring)
ATOL = 1e-12


def _sk():
    import sklearn

    return sklearn


def _fit(steps, table):
    tf = rtml.Transforms(steps)
    res = tf.fit(table)
    assert res is tf, "fit returns self"
    return tf


def _col(vals, type_=pa.float64()):
    return pa.array(vals, type=type_)


def _table(**cols):
    out = {}
    for k, v in cols.items():
        out[k] = v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)
    return pa.table(out)


def _nan_to_none(a):
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in a]


# ==========================================================================
# pipeline model


def test_feature_names_follow_doc_example():
    t0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    zones = ["z1"] * 6 + ["z2"] * 5 + ["z3"] * 2 + ["z4"]
    n = len(zones)
    tbl = pa.table(
        {
            "fare": _col([float(i) if i % 4 else None for i in range(n)]),
            "fare_sum_1h": _col([float(3 * i) for i in range(n)]),
            "count_1h": _col([i % 4 for i in range(n)], pa.int64()),
            "zone": _col(zones, pa.string()),
            "ts": _col([t0 + dt.timedelta(hours=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
            "unused": _col([1.0] * n),
        }
    )
    tf = _fit(
        [
            rtml.fill_null("fare", 0.0),
            rtml.log1p("fare"),
            rtml.standard_scale("fare"),
            rtml.ratio("fare_sum_1h", "count_1h", name="avg_fare_1h"),
            rtml.one_hot("zone", min_frequency=5, max_categories=20),
            rtml.hour_of_day("ts", tz="America/New_York", cyclical=True),
            rtml.passthrough("count_1h"),
        ],
        tbl,
    )
    # every column written by a step, in order of first write; "unused" is not written
    assert tf.feature_names == [
        "fare",
        "avg_fare_1h",
        "zone=z1",
        "zone=z2",
        "zone=__other__",
        "ts_hour_sin",
        "ts_hour_cos",
        "count_1h",
    ]
    out = tf.transform(tbl)
    assert_float64_table(out, tf.feature_names, n)
    # passthrough: unchanged (as float64)
    assert_exact(out.column("count_1h").to_pylist(), [float(i % 4) for i in range(n)], "count_1h")
    # ratio with a zero count -> null (default on_zero)
    assert_exact(
        out.column("avg_fare_1h").to_pylist(),
        [None if i % 4 == 0 else float(3 * i) / float(i % 4) for i in range(n)],
        "avg_fare_1h",
    )
    # fill_null -> log1p -> standard_scale, fitted on the transformed column (Pipeline-like)
    sk = _sk()
    from sklearn.preprocessing import StandardScaler

    logged = np.log1p(np.array([float(i) if i % 4 else 0.0 for i in range(n)]))
    want = StandardScaler().fit_transform(logged[:, None])[:, 0]
    assert_close(out.column("fare").to_pylist(), list(want), RTOL, ATOL, "fare")
    del sk


def test_in_place_by_default_and_name_gives_new_column():
    tbl = pa.table({"x": _col([1.0, -2.0, None])})
    tf = _fit([rtml.abs("x", name="x_abs"), rtml.abs("x")], tbl)
    assert tf.feature_names == ["x_abs", "x"]
    cols = columns(tf.transform(tbl))
    assert_exact(cols["x_abs"], [1.0, 2.0, None])
    assert_exact(cols["x"], [1.0, 2.0, None])


def test_later_steps_read_earlier_outputs():
    tbl = pa.table({"a": _col([1.0, 2.0, None]), "b": _col([3.0, 4.0, 5.0])})
    tf = _fit([rtml.add("a", "b", name="s"), rtml.mul("s", "b", name="p"), rtml.clip("p", 0.0, 20.0)], tbl)
    assert tf.feature_names == ["s", "p"]
    cols = columns(tf.transform(tbl))
    assert_exact(cols["s"], [4.0, 6.0, None])
    assert_exact(cols["p"], [12.0, 20.0, None])


def test_fit_transform_equals_fit_then_transform_without_target_encoding():
    rng = np.random.default_rng(3)
    n = 60
    tbl = pa.table(
        {
            "x": _col([None if i % 7 == 0 else float(v) for i, v in enumerate(rng.normal(2, 5, n))]),
            "c": _col([f"c{int(v)}" for v in rng.integers(0, 6, n)], pa.string()),
        }
    )
    steps = lambda: [  # noqa: E731
        rtml.impute("x", "median", name="xi"),
        rtml.robust_scale("xi"),
        rtml.quantile_bucketize("x", 4, name="xq"),
        rtml.one_hot("c", min_frequency=3),
        rtml.ordinal("c", max_categories=3, name="c_ord"),
    ]
    a = rtml.Transforms(steps()).fit_transform(tbl)
    b = _fit(steps(), tbl).transform(tbl)
    assert a.column_names == b.column_names
    for name in a.column_names:
        assert_exact(a.column(name).to_pylist(), b.column(name).to_pylist(), name)


def test_transform_of_an_empty_table_has_the_schema():
    tbl = pa.table({"x": _col([1.0, 2.0, 3.0]), "c": _col(["a", "b", "a"], pa.string())})
    tf = _fit([rtml.standard_scale("x"), rtml.one_hot("c")], tbl)
    out = tf.transform(tbl.slice(0, 0))
    assert_float64_table(out, tf.feature_names, 0)


@pytest.mark.parametrize("form", ["pandas", "polars", "dict"])
def test_input_forms_give_identical_results(form):
    rng = np.random.default_rng(11)
    n = 40
    data = {
        "x": [float(v) for v in rng.normal(0, 10, n)],
        "n": [int(v) for v in rng.integers(-3, 9, n)],
        "c": [f"c{int(v)}" for v in rng.integers(0, 5, n)],
        "ts": [dt.datetime(2024, 3, 10, tzinfo=UTC) + dt.timedelta(minutes=37 * i) for i in range(n)],
    }
    tbl = pa.table(
        {
            "x": _col(data["x"]),
            "n": _col(data["n"], pa.int64()),
            "c": _col(data["c"], pa.string()),
            "ts": _col(data["ts"], pa.timestamp("us", tz="UTC")),
        }
    )
    if form == "pandas":
        import pandas as pd
        other = pd.DataFrame(data)
    elif form == "polars":
        import polars as pl
        other = pl.from_arrow(tbl)
    else:
        other = data

    def steps():
        return [
            rtml.standard_scale("x"),
            rtml.min_max_scale("n", name="n_mm"),
            rtml.one_hot("c", min_frequency=2),
            rtml.hour_of_day("ts", tz="America/New_York"),
        ]

    want = _fit(steps(), tbl).transform(tbl)
    tf = _fit(steps(), other)
    got = tf.transform(other, output="arrow")
    assert isinstance(got, pa.Table)
    assert got.column_names == want.column_names
    for name in want.column_names:
        assert_exact(got.column(name).to_pylist(), want.column(name).to_pylist(), name)
    assert loads(tf.to_json()) == loads(_fit(steps(), tbl).to_json())


# ==========================================================================
# stateless steps against plain Python


def test_ratio_zero_divisor_and_nulls():
    a = [6.0, 1.0, -3.0, None, 5.0, 0.0, 7.0, 1e308]
    b = [3.0, 0.0, -0.0, 2.0, None, 0.0, 3.0, 1e-308]
    tbl = pa.table({"a": _col(a), "b": _col(b)})
    tf = _fit(
        [rtml.ratio("a", "b", name="r"), rtml.ratio("a", "b", on_zero=-1.0, name="r0")],
        tbl,
    )
    cols = columns(tf.transform(tbl))

    def ref(x, y, on_zero):
        if x is None or y is None:
            return None
        if y == 0.0:  # also -0.0
            return on_zero
        return x / y  # Python float division is IEEE division (1e308 / 1e-308 -> inf is not raised)

    want_r, want_r0 = [], []
    for x, y in zip(a, b):
        try:
            want_r.append(ref(x, y, None))
            want_r0.append(ref(x, y, -1.0))
        except (OverflowError, ZeroDivisionError):  # pragma: no cover - never for these inputs
            raise
    # 1e308 / 1e-308 overflows to inf in IEEE; Python raises nothing for float division
    assert_exact(cols["r"], want_r, "ratio")
    assert_exact(cols["r0"], want_r0, "ratio on_zero")


def test_power_negative_base_and_integer_exponents():
    xs = [-8.0, -2.0, 0.0, 2.0, 4.0, None, -0.5, 3.0, 1e-3]
    tbl = pa.table({"x": _col(xs)})
    ps = [0.5, 3, 2.0, 1.0 / 3.0, 1.5, 0.0]
    steps = [rtml.power("x", p, name=f"p{i}") for i, p in enumerate(ps)]
    tf = _fit(steps, tbl)
    cols = columns(tf.transform(tbl))
    for i, p in enumerate(ps):
        want = []
        for x in xs:
            if x is None:
                want.append(None)
            elif x < 0 and float(p) != math.floor(p):
                want.append(None)  # doc: negative base, non-integer exponent -> null
            else:
                want.append(math.pow(x, p))
        # pow may be computed by powi for integer exponents (a different rounding sequence): 1e-15
        assert_close(cols[f"p{i}"], want, 1e-15, 0.0, f"power p={p}")
    # and exactly where the result is exactly representable
    assert_exact(cols["p1"][:5], [-512.0, -8.0, 0.0, 8.0, 64.0])
    assert_exact(cols["p2"][:5], [64.0, 4.0, 0.0, 4.0, 16.0])


def test_abs_clip_log1p_add_sub_mul():
    xs = [-5.0, 0.0, 5.0, 10.0, 15.0, None, -0.0, 1e308, -1e-300, 0.25]
    ys = [1.0, None, -2.0, 0.5, 3.0, 1.0, 2.0, 1e308, 4.0, -0.25]
    tbl = pa.table({"x": _col(xs), "y": _col(ys), "bb": _col([i % 2 == 0 for i in range(len(xs))], pa.bool_())})
    tf = _fit(
        [
            rtml.abs("x", name="abs"),
            rtml.clip("x", 0.0, 10.0, name="clip"),
            rtml.log1p("abs", name="log1p"),
            rtml.add("x", "y", name="add"),
            rtml.sub("x", "y", name="sub"),
            rtml.mul("x", "y", name="mul"),
            rtml.mul("y", "bb", name="mul_bool"),
        ],
        tbl,
    )
    cols = columns(tf.transform(tbl))

    def lift(f, *a):
        return None if any(v is None for v in a) else f(*a)

    assert_exact(cols["abs"], [lift(abs, x) for x in xs], "abs")  # abs(-0.0) == +0.0
    want_clip = [lift(lambda v: min(max(v, 0.0), 10.0), x) for x in xs]
    got_clip = cols["clip"]
    # clip(-0.0) may be -0.0 or +0.0: compare that row by value
    assert got_clip[6] == 0.0
    assert_exact(got_clip[:6] + got_clip[7:], want_clip[:6] + want_clip[7:], "clip")
    # log1p: the accurate log(1 + x) (math.log1p); an ulp of libm slack
    assert_close(cols["log1p"], [lift(lambda v: math.log1p(abs(v)), x) for x in xs], 2.5e-16, 0.0, "log1p")
    assert_exact(cols["add"], [lift(lambda a, b: a + b, x, y) for x, y in zip(xs, ys)], "add")
    assert_exact(cols["sub"], [lift(lambda a, b: a - b, x, y) for x, y in zip(xs, ys)], "sub")
    assert_exact(cols["mul"], [lift(lambda a, b: a * b, x, y) for x, y in zip(xs, ys)], "mul")
    assert_exact(
        cols["mul_bool"], [lift(lambda a, b: a * float(b), y, i % 2 == 0) for i, y in enumerate(ys)], "mul bool"
    )


def test_log1p_accuracy_for_tiny_values():
    xs = [1e-10, 1e-17, 5e-324, 1e-5]
    tbl = pa.table({"x": _col(xs)})
    out = columns(_fit([rtml.log1p("x")], tbl).transform(tbl))
    # log(1 + 1e-17) computed naively is 0.0; the step is log1p
    assert_close(out["x"], [math.log1p(x) for x in xs], 2.5e-16, 0.0, "log1p tiny")


@pytest.mark.parametrize("bad", [-1.0, -2.0, -1e300])
def test_log1p_outside_its_domain_is_null(bad):
    # docs/transforms.md: "null for x <= -1 (outside its domain)"
    tbl = pa.table({"x": _col([0.0, bad, -0.5])})
    tf = _fit([rtml.log1p("x")], tbl)
    assert_exact(tf.transform(tbl).column("x").to_pylist(), [0.0, None, math.log1p(-0.5)])
    assert tf.transform_one({"x": bad}) == {"x": None}
    assert np.isnan(tf.vector({"x": bad})).all()


def test_is_null_and_fill_null():
    xs = [1.5, None, -0.0, None, 7.0]
    ss = ["a", None, "", None, "b"]
    tbl = pa.table({"x": _col(xs), "s": _col(ss, pa.string())})
    tf = _fit([rtml.is_null("x"), rtml.is_null("s"), rtml.fill_null("x", -1.25)], tbl)
    assert tf.feature_names == ["x_is_null", "s_is_null", "x"]
    cols = columns(tf.transform(tbl))
    assert_exact(cols["x_is_null"], [0.0, 1.0, 0.0, 1.0, 0.0])
    assert_exact(cols["s_is_null"], [0.0, 1.0, 0.0, 1.0, 0.0])
    assert_exact(cols["x"], [1.5, -1.25, -0.0, -1.25, 7.0])
    assert tf.transform_one({"x": None, "s": None}) == {"x_is_null": 1.0, "s_is_null": 1.0, "x": -1.25}


def test_bucketize_matches_numpy_digitize():
    b = [-1.0, 0.0, 2.5, 100.0]
    xs = [-5.0, -1.0, -0.5, 0.0, -0.0, 1.0, 2.5, 99.999, 100.0, 1e300, None]
    tbl = pa.table({"x": _col(xs)})
    tf = _fit([rtml.bucketize("x", b)], tbl)
    want = [None if x is None else float(np.digitize(x, b)) for x in xs]
    assert_exact(tf.transform(tbl).column("x").to_pylist(), want, "bucketize")


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 2**31 - 1])
def test_hash_bucket_values_and_stability(n):
    strs = ["a", "", "é", "7", "zone 12", "x" * 300, None]
    ints = [7, -1, 0, 2**62, -(2**63), 2**63 - 1, None]
    tbl = pa.table({"s": _col(strs, pa.string()), "k": _col(ints, pa.int64())})
    tf = _fit([rtml.hash_bucket("s", n), rtml.hash_bucket("k", n)], tbl)
    assert tf.feature_names == [f"s_hash{n}", f"k_hash{n}"]
    cols = columns(tf.transform(tbl))
    for name, vals in ((f"s_hash{n}", strs), (f"k_hash{n}", ints)):
        got = cols[name]
        for g, v in zip(got, vals):
            if v is None:
                assert g is None, (name, g)
            else:
                assert g is not None and float(int(g)) == g and 0 <= g < n, (name, v, g)
    # the string form of the integer 7 is "7": same bucket as the string "7"
    assert cols[f"k_hash{n}"][0] == cols[f"s_hash{n}"][3]
    # stable: a new instance, a JSON round trip and transform_one give the same buckets
    tf2 = rtml.Transforms.from_json(_fit([rtml.hash_bucket("s", n), rtml.hash_bucket("k", n)], tbl).to_json())
    for i in range(len(strs)):
        one = tf2.transform_one({"s": strs[i], "k": ints[i]})
        assert same_bits(one[f"s_hash{n}"], cols[f"s_hash{n}"][i])
        assert same_bits(one[f"k_hash{n}"], cols[f"k_hash{n}"][i])
    h = xxh3_64_reference()
    # the check must run: `xxhash` is in the test extra (a missing one is a broken environment)
    assert h is not None, "no independent xxh3_64 implementation: pip install xxhash (test extra)"
    for name, vals in ((f"s_hash{n}", strs), (f"k_hash{n}", ints)):
        want = [None if v is None else float(h(str(v).encode("utf-8")) % n) for v in vals]
        assert_exact(cols[name], want, name)


def _times_table(us_values, unit="us", tz="UTC"):
    def conv(v):
        if unit == "ns":
            return v * 1000
        if unit == "us":
            return v
        d = {"s": 10**6, "ms": 10**3}[unit]
        assert v % d == 0
        return v // d

    vals = [None if v is None else conv(v) for v in us_values]
    return pa.table({"t": pa.array(vals, type=pa.timestamp(unit, tz=tz))})


def _dst_day_us(tzname, day):
    """Every 30 minutes over a UTC window covering the whole local day ``day``."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tzname)) - dt.timedelta(hours=2)
    start_us = int(start.timestamp()) * 10**6
    return [start_us + i * 30 * 60 * 10**6 for i in range(58)]


DATE_CASES = [
    ("America/New_York", dt.date(2024, 3, 10)),  # spring forward: 02:00 -> 03:00
    ("America/New_York", dt.date(2024, 11, 3)),  # fall back: 01:00 twice
    ("Europe/Berlin", dt.date(2023, 3, 26)),
    ("Australia/Lord_Howe", dt.date(2024, 4, 7)),  # 30-minute DST shift
    ("Asia/Kolkata", dt.date(1969, 12, 31)),  # +05:30, negative epoch times
    ("UTC", dt.date(2000, 2, 29)),
    ("Pacific/Kiritimati", dt.date(2024, 12, 31)),  # +14:00, year boundary
]


@pytest.mark.parametrize("tzname,day", DATE_CASES)
def test_date_parts_in_time_zone_match_zoneinfo(tzname, day):
    us = _dst_day_us(tzname, day) + [None]
    tbl = _times_table(us)
    tf = _fit(
        [
            rtml.hour_of_day("t", tz=tzname),
            rtml.day_of_week("t", tz=tzname, name="dow"),
            rtml.day_of_month("t", tz=tzname, name="dom"),
            rtml.month("t", tz=tzname, name="mon"),
        ],
        tbl,
    )
    assert tf.feature_names == ["t_hour", "dow", "dom", "mon"]
    cols = columns(tf.transform(tbl))
    for name, part in (("t_hour", "hour"), ("dow", "day_of_week"), ("dom", "day_of_month"), ("mon", "month")):
        want = [None if v is None else float(date_part(us_to_datetime(v), tzname, part)) for v in us]
        assert_exact(cols[name], want, f"{part} in {tzname}")
    # transform_one with aware datetimes in any zone; a naive datetime against a pipeline fit on
    # tz-aware times is refused (docs/api.md, "Times and time zones")
    for i in range(0, len(us) - 1, 7):
        aware = us_to_datetime(us[i])
        for val in (aware, aware.astimezone(ZoneInfo("Asia/Tokyo"))):
            one = tf.transform_one({"t": val})
            assert one == {n: cols[n][i] for n in tf.feature_names}, (val, one)
        with raises(rtml.SchemaError, "naive"):
            tf.transform_one({"t": aware.replace(tzinfo=None)})


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", ["UTC", None, "America/New_York"])
def test_date_parts_accept_any_unit_and_column_zone(unit, tz):
    # the column's own zone does not matter: the instant does (naive = UTC wall time)
    us = [v - v % 10**6 for v in DST_US] + [0, -(10**6), 951782400 * 10**6]
    tbl = _times_table(us, unit=unit, tz=tz)
    tf = _fit([rtml.hour_of_day("t", tz="America/New_York"), rtml.day_of_week("t", tz="America/New_York", name="d")], tbl)
    cols = columns(tf.transform(tbl))
    assert_exact(cols["t_hour"], [float(date_part(us_to_datetime(v), "America/New_York", "hour")) for v in us])
    assert_exact(cols["d"], [float(date_part(us_to_datetime(v), "America/New_York", "day_of_week")) for v in us])


def test_cyclical_hour_and_day_of_week():
    tzname = "America/New_York"
    us = _dst_day_us(tzname, dt.date(2024, 3, 10)) + [None]
    tbl = _times_table(us)
    tf = _fit(
        [
            rtml.hour_of_day("t", tz=tzname, cyclical=True),
            rtml.day_of_week("t", tz=tzname, cyclical=True),
            rtml.month("t", tz=tzname, cyclical=True),
        ],
        tbl,
    )
    names = tf.feature_names
    assert names[:2] == ["t_hour_sin", "t_hour_cos"]
    assert len(names) == 6 and all(n.endswith("_sin") for n in names[::2]) and all(n.endswith("_cos") for n in names[1::2])
    cols = columns(tf.transform(tbl))
    # sin/cos(2 pi part / period): the rounding order of 2*pi*part/period is not specified, and
    # sin of an argument off by an ulp moves by ~1e-16 absolute: abs tol 1e-14
    for (sin_n, cos_n), part, period in (((names[0], names[1]), "hour", 24), ((names[2], names[3]), "day_of_week", 7)):
        want_sin, want_cos = [], []
        for v in us:
            if v is None:
                want_sin.append(None)
                want_cos.append(None)
                continue
            p = date_part(us_to_datetime(v), tzname, part)
            want_sin.append(math.sin(2 * math.pi * p / period))
            want_cos.append(math.cos(2 * math.pi * p / period))
        assert_close(cols[sin_n], want_sin, 0.0, 1e-14, sin_n)
        assert_close(cols[cos_n], want_cos, 0.0, 1e-14, cos_n)
    # month: whatever the numbering, a point on the unit circle
    for s, c in zip(cols[names[4]], cols[names[5]]):
        if s is None:
            assert c is None
        else:
            assert abs(s * s + c * c - 1.0) < 1e-14


# ==========================================================================
# fitted steps against scikit-learn


def _numeric_data(seed, n=200, null_every=9, loc=5.0, scale=3.0):
    rng = np.random.default_rng(seed)
    vals = rng.normal(loc, scale, n)
    return [None if (null_every and i % null_every == 0) else float(v) for i, v in enumerate(vals)]


def _probe(train, extra=(-1e3, 0.0, -0.0, 1e-300, 12345.678, None)):
    return list(train) + list(extra)


def _sk_col(vals):
    return np.array([np.nan if v is None else v for v in vals], dtype=np.float64)[:, None]


def _exact_scaler_reference(step, train, probe):
    """The doc's apply formula with the fitted statistics computed exactly (Fractions) and
    rounded once; returns (want, atol). A statistic within an ulp of the exact one moves an
    output by up to ulp(statistic) / spread, hence the atol."""
    from fractions import Fraction

    vs = [v for v in train if v is not None]
    if step == "standard_scale":
        fv = [Fraction(v) for v in vs]
        m = sum(fv) / len(fv)
        var = sum((v - m) ** 2 for v in fv) / len(fv)
        center, spread = float(m), math.sqrt(float(var))
        spread = spread if spread != 0.0 else 1.0
        atol = 2 * math.ulp(center) / spread
    elif step == "min_max_scale":
        center, hi = min(vs), max(vs)
        spread = (hi - center) if hi != center else 1.0
        atol = 0.0  # min and max are data values: the formula is exact
    else:
        from transform_helpers import percentile_linear_exact

        center = float(percentile_linear_exact(vs, Fraction(1, 2)))
        q25 = float(percentile_linear_exact(vs, Fraction(1, 4)))
        q75 = float(percentile_linear_exact(vs, Fraction(3, 4)))
        spread = (q75 - q25) if q75 != q25 else 1.0
        atol = 2 * (math.ulp(center) + math.ulp(q25) + math.ulp(q75)) / spread * (1 + max(abs(center), 1.0))
    want = [None if x is None else (x - center) / spread for x in probe]
    return want, atol, spread


@pytest.mark.parametrize("seed,loc,scale", [(0, 5.0, 3.0), (1, -1e6, 1e-2), (2, 0.0, 1e9), (3, 1e-8, 1e-9)])
@pytest.mark.parametrize("step", ["standard_scale", "min_max_scale", "robust_scale"])
def test_scalers_match_sklearn(step, seed, loc, scale):
    _sk()
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    train = _numeric_data(seed, loc=loc, scale=scale)
    probe = _probe(train)
    tf = _fit([getattr(rtml, step)("v")], pa.table({"v": _col(train)}))
    got = tf.transform(pa.table({"v": _col(probe)})).column("v").to_pylist()

    # 1. the doc's formula with exactly computed statistics
    want, atol, spread = _exact_scaler_reference(step, train, probe)
    if step == "min_max_scale":
        assert_exact(got, want, "min_max_scale vs (x - min) / (max - min)")
    else:
        assert_close(got, want, 1e-15, atol, f"{step} vs exact statistics")

    # 2. scikit-learn. Its float sums (and MinMaxScaler's x * scale + min form) carry an error
    # of about n * eps * max|x| / spread, which is large for the (loc=-1e6, scale=1e-2) data
    # (coefficient of variation 1e-8): widen the tolerance by that condition number.
    sk = {"standard_scale": StandardScaler, "min_max_scale": MinMaxScaler, "robust_scale": RobustScaler}[step]()
    want_sk = sk.fit(_sk_col(train)).transform(_sk_col(probe))[:, 0]
    cond = len(train) * 2.2e-16 * max(abs(v) for v in train if v is not None) / spread
    assert_close(got, list(want_sk), RTOL + 4 * cond, ATOL + 4 * cond, f"{step} vs sklearn")

    # transform_one agrees bit for bit with the table
    for i, v in enumerate(probe):
        assert same_bits(tf.transform_one({"v": v})["v"], got[i]), (i, v)


@pytest.mark.parametrize("step", ["standard_scale", "min_max_scale", "robust_scale"])
def test_scalers_on_a_constant_column_use_divisor_one(step):
    tbl = pa.table({"v": _col([3.0, 3.0, None, 3.0])})
    tf = _fit([getattr(rtml, step)("v")], tbl)
    got = tf.transform(pa.table({"v": _col([3.0, 5.0, 1.5, None])})).column("v").to_pylist()
    assert_exact(got, [0.0, 2.0, -1.5, None], step)


def test_standard_scale_uses_exact_sums():
    # naive float sums of these values lose the 1.0 and 3.0 completely
    train = [1e17, 1.0, -1e17, 3.0]
    tf = _fit([rtml.standard_scale("v", name="z"), rtml.impute("v", "mean", name="m")],
              pa.table({"v": _col(train + [None])}))
    one = tf.transform_one({"v": 1.0})
    # mean of the multiset is exactly 1.0 -> (1.0 - mean) / std is exactly 0.0
    assert same_bits(one["z"], 0.0), one
    assert same_bits(tf.transform_one({"v": None})["m"], 1.0)
    # population std of [1e9+1, 1e9+2, 1e9+3] is sqrt(2/3) exactly (to rounding)
    tf = _fit([rtml.standard_scale("v")], pa.table({"v": _col([1e9 + 1, 1e9 + 2, 1e9 + 3])}))
    got = tf.transform_one({"v": 1e9 + 1})["v"]
    assert_close([got], [-1.0 / math.sqrt(2.0 / 3.0)], 4e-16, 0.0, "std")


def test_robust_scale_hand_checked():
    tf = _fit([rtml.robust_scale("v")], pa.table({"v": _col([1.0, 2.0, 3.0, 4.0, 100.0, None])}))
    # median 3, q25 2, q75 4 (linear interpolation) -> (x - 3) / 2
    got = tf.transform(pa.table({"v": _col([3.0, 5.0, 0.0, None])})).column("v").to_pylist()
    assert_exact(got, [0.0, 1.0, -1.5, None])


def _kbins_sklearn(train, n_bins):
    from sklearn.preprocessing import KBinsDiscretizer

    kb = KBinsDiscretizer(n_bins=n_bins, encode="ordinal", strategy="quantile", quantile_method="linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "bins whose width are too small are removed"
        kb.fit(np.array(train, dtype=np.float64)[:, None])
    return kb


@pytest.mark.parametrize("n_bins", [2, 3, 4, 5, 8, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantile_bucketize_matches_sklearn_kbins(n_bins, seed):
    _sk()
    rng = np.random.default_rng(seed)
    size = int(rng.integers(5, 120))
    # integer-valued data: sklearn drops bins narrower than 1e-8, rtml exact duplicates; on an
    # integer grid both remove exactly the same edges
    train = [float(v) for v in rng.integers(0, int(rng.integers(2, 60)), size)]
    probe = sorted(set(train)) + [v / 2.0 for v in range(-10, 130)] + [1e300, -1e300]
    tf = _fit([rtml.quantile_bucketize("v", n_bins)], pa.table({"v": _col(train + [None])}))
    got = tf.transform(pa.table({"v": _col(probe + [None])})).column("v").to_pylist()
    assert got[-1] is None
    got = got[:-1]

    kb = _kbins_sklearn(train, n_bins)
    sk_edges = kb.bin_edges_[0]
    want_sk = kb.transform(np.array(probe)[:, None])[:, 0]
    edges = quantile_edges_exact(train, n_bins)
    mism = []
    for x, g, w in zip(probe, got, want_sk):
        # on an edge, sklearn's float percentile position may be an ulp off: compare away from edges
        if np.min(np.abs(sk_edges - x)) > 1e-9 and g != float(w):
            mism.append(("sklearn", x, g, float(w)))
        # the exact-rational reference; for n_bins a power of two every position k/n * (n - 1) is
        # exact in floats, so equality is promised even for values sitting on an edge
        exact_ok = n_bins in (2, 4, 8) or all(x != e for e in edges)
        if exact_ok and g != float(quantile_bucket_exact(edges, x)):
            mism.append(("exact", x, g, quantile_bucket_exact(edges, x)))
    assert not mism, f"edges={[float(e) for e in edges]} sklearn={list(sk_edges)}: {mism[:10]}"


def test_quantile_bucketize_constant_column_is_one_bucket():
    tf = _fit([rtml.quantile_bucketize("v", 4)], pa.table({"v": _col([5.0] * 10)}))
    got = tf.transform(pa.table({"v": _col([4.0, 5.0, 6.0])})).column("v").to_pylist()
    assert_exact(got, [0.0, 0.0, 0.0])


def _cat_data(kind, counts, seed):
    vals = []
    for c, k in counts.items():
        vals += [c] * k
    random.Random(seed).shuffle(vals)
    return vals


STR_COUNTS = {"a": 20, "b": 15, "c": 9, "d": 6, "e": 4, "f": 2, "g": 1, "": 3, "é": 11, "7": 5}
INT_COUNTS = {7: 20, -1: 15, 0: 9, 3: 6, 2**62: 4, -(2**63): 2, 12: 1, 5: 3, 100: 11, 8: 5}
OH_CONFIGS = [(1, None), (3, None), (5, None), (1, 4), (5, 3), (2, 10), (1, 1), (1, 2), (30, None)]


@pytest.mark.parametrize("mf,mc", OH_CONFIGS)
@pytest.mark.parametrize("kind", ["str", "int"])
def test_one_hot_matches_sklearn(kind, mf, mc):
    _sk()
    from sklearn.preprocessing import OneHotEncoder

    counts = STR_COUNTS if kind == "str" else INT_COUNTS  # all counts distinct: no ties
    train = _cat_data(kind, counts, 0)
    unseen = ["zz", "A"] if kind == "str" else [999, 6]
    probe = sorted(counts) + unseen
    typ = pa.string() if kind == "str" else pa.int64()
    tf = _fit([rtml.one_hot("c", min_frequency=mf, max_categories=mc)], pa.table({"c": _col(train, typ)}))
    vocab = vocabulary(train, mf, mc)
    assert tf.feature_names == [f"c={v}" for v in vocab] + ["c=__other__"]
    got = tf.transform(pa.table({"c": _col(probe, typ)}))

    enc = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=mf, max_categories=mc, sparse_output=False)
    X = np.array(train, dtype=object)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc.fit(X)
        M = enc.transform(np.array(probe, dtype=object)[:, None])
    infrequent = enc.infrequent_categories_[0]
    inf_set = set() if infrequent is None else set(infrequent.tolist())
    frequent = [c for c in enc.categories_[0].tolist() if c not in inf_set]
    assert frequent == vocab
    for j, c in enumerate(frequent):
        assert_exact(got.column(f"c={c}").to_pylist(), list(M[:, j]), f"c={c}")
    # the intended difference: rtml always has c=__other__ (infrequent *and* unseen values);
    # scikit-learn has an infrequent column only when some category is infrequent, and an
    # unseen value gives all zeros otherwise. So __other__ = 1 - (any frequent column set).
    other = [1.0 - float(M[i, : len(frequent)].sum()) for i in range(len(probe))]
    assert_exact(got.column("c=__other__").to_pylist(), other, "c=__other__")


def test_one_hot_max_categories_ties_prefer_smaller_values():
    # counts: b 3, a 3, d 3, c 1  ->  max_categories=3 keeps 2 of the tied {a, b, d}: a and b
    train = ["b", "a", "d", "c", "b", "a", "d", "b", "a", "d"]
    tf = _fit([rtml.one_hot("c", max_categories=3), rtml.ordinal("c", max_categories=3, name="o")],
              pa.table({"c": _col(train, pa.string())}))
    assert tf.feature_names == ["c=a", "c=b", "c=__other__", "o"]
    assert tf.transform_one({"c": "d"}) == {"c=a": 0.0, "c=b": 0.0, "c=__other__": 1.0, "o": 2.0}
    assert tf.transform_one({"c": "b"}) == {"c=a": 0.0, "c=b": 1.0, "c=__other__": 0.0, "o": 1.0}
    # integers are categories by value: "7" is not 7
    tf = _fit([rtml.one_hot("k")], pa.table({"k": _col([7, 7, 8], pa.int64())}))
    assert tf.feature_names == ["k=7", "k=8", "k=__other__"]
    assert tf.transform_one({"k": 7}) == {"k=7": 1.0, "k=8": 0.0, "k=__other__": 0.0}


def test_categorical_nulls_stay_null():
    tbl = pa.table({"c": _col(["a", "b", "a", None], pa.string()), "y": _col([1.0, 2.0, 3.0, 4.0])})
    tf = _fit(
        [rtml.one_hot("c"), rtml.ordinal("c", name="o"), rtml.hash_bucket("c", 4),
         rtml.target_encode("c", "y", smooth=1.0, folds=2)],
        tbl,
    )
    one = tf.transform_one({"c": None, "y": 0.0})
    assert one == {n: None for n in tf.feature_names}, one
    vec = tf.vector({"c": None, "y": 0.0})
    assert np.isnan(vec).all()


@pytest.mark.parametrize("mf,mc", OH_CONFIGS)
def test_ordinal_reference_and_sklearn(mf, mc):
    counts = STR_COUNTS
    train = _cat_data("str", counts, 1) + [None]
    probe = sorted(counts) + ["zz", None]
    tf = _fit([rtml.ordinal("c", min_frequency=mf, max_categories=mc)], pa.table({"c": _col(train, pa.string())}))
    vocab = vocabulary(train, mf, mc)
    got = tf.transform(pa.table({"c": _col(probe, pa.string())})).column("c").to_pylist()
    want = [None if v is None else float(vocab.index(v) if v in vocab else len(vocab)) for v in probe]
    assert_exact(got, want, "ordinal")
    if (mf, mc) == (1, None):
        _sk()
        from sklearn.preprocessing import OrdinalEncoder

        enc = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=len(vocab))
        enc.fit(np.array([v for v in train if v is not None], dtype=object)[:, None])
        M = enc.transform(np.array(probe[:-1], dtype=object)[:, None])[:, 0]
        assert_exact(got[:-1], list(M), "ordinal vs sklearn")


@settings(max_examples=n_examples(80))
@given(
    vals=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e", "", "é"])), min_size=1, max_size=40),
    mf=st.integers(1, 5),
    mc=st.one_of(st.none(), st.integers(1, 6)),
)
def test_vocabulary_rule_property(vals, mf, mc):
    """one_hot / ordinal vocabulary (ties included) against the doc's rule."""
    tbl = pa.table({"c": _col(vals, pa.string())})
    tf = _fit([rtml.one_hot("c", min_frequency=mf, max_categories=mc), rtml.ordinal("c", min_frequency=mf, max_categories=mc, name="o")], tbl)
    vocab = vocabulary(vals, mf, mc)
    assert tf.feature_names == [f"c={v}" for v in vocab] + ["c=__other__", "o"]
    cols = columns(tf.transform(tbl))
    for i, v in enumerate(vals):
        if v is None:
            assert all(cols[n][i] is None for n in tf.feature_names)
            continue
        for c in vocab:
            assert cols[f"c={c}"][i] == (1.0 if v == c else 0.0)
        assert cols["c=__other__"][i] == (0.0 if v in vocab else 1.0)
        assert cols["o"][i] == float(vocab.index(v) if v in vocab else len(vocab))


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_impute_matches_sklearn_simple_imputer(strategy, seed):
    _sk()
    from sklearn.impute import SimpleImputer

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 80))
    if strategy == "most_frequent":
        raw = [float(v) for v in rng.integers(-3, 4, n)]  # repeats, ties possible
    else:
        raw = [float(v) for v in rng.normal(10, 4, n)]
    train = [None if i % 4 == 1 else v for i, v in enumerate(raw)]
    if all(v is None for v in train):
        train[0] = 1.0
    kw = {"value": -7.25} if strategy == "constant" else {}
    tf = _fit([rtml.impute("v", strategy, **kw)], pa.table({"v": _col(train)}))
    got = tf.transform(pa.table({"v": _col(train)})).column("v").to_pylist()
    sk_kw = {"fill_value": -7.25} if strategy == "constant" else {}
    want = SimpleImputer(strategy=strategy, **sk_kw).fit_transform(_sk_col(train))[:, 0]
    # non-null values pass through unchanged
    assert_exact([g for g, v in zip(got, train) if v is not None], [v for v in train if v is not None])
    filled = [g for g, v in zip(got, train) if v is None]
    want_f = [w for w, v in zip(want, train) if v is None]
    if strategy in ("most_frequent", "constant"):
        assert_exact(filled, want_f, strategy)  # a value from the data / the constant: exact
    else:
        assert_close(filled, want_f, RTOL, 0.0, strategy)
    if strategy == "mean":  # exact sums: the correctly rounded mean, to about an ulp
        assert_close(filled, [exact_mean(train)] * len(filled), 3e-16, 0.0, "exact mean")


def test_impute_most_frequent_ties_take_smallest():
    tf = _fit([rtml.impute("v", "most_frequent")], pa.table({"v": _col([3.0, 1.0, 3.0, 1.0, 2.0, None])}))
    assert tf.transform_one({"v": None}) == {"v": 1.0}


def _te_data(seed, n=100, n_cats=7):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(n_cats))
    cats = [f"k{int(c)}" for c in rng.choice(n_cats, size=n, p=p)]
    effect = {f"k{i}": float(rng.normal(0, 5)) for i in range(n_cats)}
    ys = [round(effect[c] + float(rng.normal(0, 1)), 6) for c in cats]
    return cats, ys


@pytest.mark.parametrize("smooth", [0.5, 10.0, 250.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_target_encode_transform_matches_sklearn(smooth, seed):
    _sk()
    from sklearn.preprocessing import TargetEncoder

    cats, ys = _te_data(seed)
    tbl = pa.table({"c": _col(cats, pa.string()), "y": _col(ys)})
    tf = _fit([rtml.target_encode("c", "y", smooth=smooth)], tbl)
    assert tf.feature_names == ["c_te"]
    probe = sorted(set(cats)) + ["unseen", "k999"]
    got = tf.transform(pa.table({"c": _col(probe, pa.string()), "y": _col([0.0] * len(probe))})).column("c_te").to_pylist()
    te = TargetEncoder(smooth=smooth, target_type="continuous").fit(np.array(cats, dtype=object)[:, None], np.array(ys))
    want = te.transform(np.array(probe, dtype=object)[:, None])[:, 0]
    assert_close(got, list(want), RTOL, ATOL, "target_encode vs sklearn")
    enc, mean_y = target_encoding_exact(cats, ys, smooth)
    assert_close(got, [enc.get(c, mean_y) for c in probe], 1e-14, 0.0, "target_encode vs exact")


@pytest.mark.parametrize("folds", [5, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_target_encode_fit_transform_is_out_of_fold(folds, seed):
    _sk()
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import TargetEncoder

    n = 100  # divisible by every folds value here, so all contiguous-fold conventions agree
    cats, ys = _te_data(seed, n=n)
    smooth = 3.0
    tbl = pa.table({"c": _col(cats, pa.string()), "y": _col(ys)})
    tf = rtml.Transforms([rtml.target_encode("c", "y", smooth=smooth, folds=folds)])
    oof = tf.fit_transform(tbl).column("c_te").to_pylist()
    te = TargetEncoder(smooth=smooth, target_type="continuous", cv=KFold(n_splits=folds, shuffle=False))
    want = te.fit_transform(np.array(cats, dtype=object)[:, None], np.array(ys))[:, 0]
    assert_close(oof, list(want), RTOL, ATOL, "out-of-fold vs sklearn")
    # plain-Python reference: each fold encoded by the statistics of the other folds
    size = n // folds
    ref = []
    for f in range(folds):
        lo, hi = f * size, (f + 1) * size
        enc, mean_y = target_encoding_exact(cats[:lo] + cats[hi:], ys[:lo] + ys[hi:], smooth)
        ref += [enc.get(c, mean_y) for c in cats[lo:hi]]
    assert_close(oof, ref, 1e-14, 0.0, "out-of-fold vs exact")
    # after fit_transform the state is the full-data fit (like sklearn)
    full = tf.transform(tbl).column("c_te").to_pylist()
    enc, mean_y = target_encoding_exact(cats, ys, smooth)
    assert_close(full, [enc[c] for c in cats], 1e-14, 0.0, "full-data encoding after fit_transform")


def test_target_encode_apply_does_not_need_the_target():
    # a serving row has no label; the target is only read at fit time (inferred from the doc:
    # apply = "encoding", which depends on the category only)
    cats, ys = _te_data(0, n=30)
    tf = _fit([rtml.target_encode("c", "y", smooth=2.0)], pa.table({"c": _col(cats, pa.string()), "y": _col(ys)}))
    row = tf.transform_one({"c": cats[0]})
    full = tf.transform(pa.table({"c": _col(cats, pa.string())})).column("c_te").to_pylist()
    assert same_bits(row["c_te"], full[0])


# ==========================================================================
# property: transform == transform_one == vector == from_json(to_json())


def _step_groups():
    r = rtml
    return [
        [r.is_null("x")],
        [r.abs("x", name="x_abs"), r.log1p("x_abs", name="x_log")],
        [r.clip("x", -10.0, 10.0, name="x_clip")],
        [r.power("x", 0.5, name="x_sqrt"), r.power("y", 2, name="y_sq")],
        [r.add("x", "y", name="x_plus_y"), r.sub("y", "n", name="y_minus_n"), r.mul("y", "b", name="y_times_b")],
        [r.ratio("y", "n", name="y_per_n"), r.ratio("x", "y", on_zero=-1.0, name="x_per_y")],
        [r.fill_null("y", 0.5, name="y_filled")],
        [r.hash_bucket("s", 8), r.hash_bucket("k", 5)],
        [
            r.hour_of_day("t", tz="America/New_York"),
            r.day_of_week("t", tz="Europe/Berlin", name="t_dow"),
            r.day_of_month("t", tz="Asia/Kolkata", name="t_dom"),
            r.month("t", tz="Australia/Lord_Howe", cyclical=True),
        ],
        [r.standard_scale("y", name="y_std"), r.min_max_scale("x", name="x_mm"), r.robust_scale("n", name="n_rob")],
        [r.bucketize("y", [-1.0, 0.0, 2.5, 100.0], name="y_bkt"), r.quantile_bucketize("x", 4, name="x_qb")],
        [r.one_hot("s", min_frequency=2, max_categories=4), r.ordinal("k", name="k_ord")],
        [r.impute("y", "median", name="y_imp"), r.impute("n", "most_frequent", name="n_imp"), r.impute("b", "mean", name="b_imp")],
        [r.target_encode("s", "target", smooth=2.0, folds=3), r.target_encode("k", "target", smooth=0.5, folds=2)],
        [r.passthrough("b")],
        # in-place chain; fitted on the transformed column
        [r.abs("y"), r.log1p("y"), r.standard_scale("y")],
        # one-hot outputs rewritten by a second encoding of the same column, and read by
        # later steps (the table driver's non-adjacent / materialized one-hot cells)
        [
            r.one_hot("s"),
            r.passthrough("s=__other__", name="s_other_all"),
            r.one_hot("s", min_frequency=3),
            r.is_null("s=__other__", name="s_other_null"),
            r.add("s=__other__", "x", name="s_other_plus_x"),
        ],
    ]


N_GROUPS = 17


def _pipeline(mask):
    groups = _step_groups()
    assert len(groups) == N_GROUPS
    steps = [s for g, m in zip(groups, mask) if m for s in g]
    return steps or [s for s in groups[0]]


def _numpy_outputs(tf, table):
    """transform_numpy in both orders, and on the table cut into record batches of 3 rows."""
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=3), schema=table.schema)
    return {
        "C": tf.transform_numpy(table),
        "F": tf.transform_numpy(table, order="F"),
        "C, batches of 3": tf.transform_numpy(chunked),
    }


def _check_parity(tf, table):
    names = tf.feature_names
    rows = table.to_pylist()
    try:
        out = tf.transform(table)
    except rtml.RtmlError as e:
        # the same rows must fail one at a time
        errs = []
        for r in rows:
            try:
                tf.transform_one(r)
            except rtml.RtmlError as e1:
                errs.append(type(e1))
        assert type(e) in errs, f"transform raised {e!r} but no row raises it in transform_one"
        # transform_numpy reports the same error
        for order in ("C", "F"):
            with pytest.raises(type(e)) as e2:
                tf.transform_numpy(table, order=order)
            assert str(e2.value) == str(e)
        event("transform raised")
        return None
    assert_float64_table(out, names, len(rows))
    cols = columns(out)
    mats = _numpy_outputs(tf, table)
    for how, m in mats.items():
        assert isinstance(m, np.ndarray) and m.dtype == np.float64, how
        assert m.shape == (len(rows), len(names)), (how, m.shape)
    assert mats["C"].flags.c_contiguous and mats["F"].flags.f_contiguous
    for i, r in enumerate(rows):
        one = tf.transform_one(r)
        assert list(one) == names
        for n in names:
            assert same_bits(one[n], cols[n][i]), (i, n, one[n], cols[n][i], r)
        vec = tf.vector(r)
        assert isinstance(vec, np.ndarray) and vec.dtype == np.float64 and vec.shape == (len(names),)
        for j, n in enumerate(names):
            t = cols[n][i]
            if t is None:
                assert math.isnan(vec[j]), (i, n, vec[j])
            else:
                assert bits(float(vec[j])) == bits(t), (i, n, vec[j], t)
        # a row of transform_numpy is the vector, bit for bit (NaN payloads included)
        for how, m in mats.items():
            assert m[i].tobytes() == vec.tobytes(), (how, i, m[i], vec, r)
    return cols


@settings(max_examples=n_examples(80))
@given(tables=fit_apply_tables(), mask=st.lists(st.booleans(), min_size=N_GROUPS, max_size=N_GROUPS))
def test_table_row_vector_and_json_parity(tables, mask):
    fit_rows, apply_rows = tables
    fit_t = rows_table(fit_rows)
    apply_t = rows_table(fit_rows[:4] + apply_rows)
    tf = rtml.Transforms(_pipeline(mask))
    try:
        assert tf.fit(fit_t) is tf
    except rtml.RtmlError as e:
        event(f"fit raised {type(e).__name__}")
        return
    cols = _check_parity(tf, apply_t)
    s = tf.to_json()
    tf2 = rtml.Transforms.from_json(s)
    assert tf2.feature_names == tf.feature_names
    assert loads(tf2.to_json()) == loads(s)
    cols2 = _check_parity(tf2, apply_t)
    assert (cols is None) == (cols2 is None)
    if cols is not None:
        for n in tf.feature_names:
            for i, (a, b) in enumerate(zip(cols[n], cols2[n])):
                assert same_bits(a, b), (n, i, a, b)


def _encode_strings(table, how):
    """The same table with its string columns in another Arrow layout."""
    if how == "string":
        return table
    cols = []
    for f in table.schema:
        c = table.column(f.name)
        if f.type == pa.string():
            c = c.dictionary_encode() if how == "dictionary" else c.cast(getattr(pa, how)())
        cols.append(c)
    return pa.table(cols, names=table.column_names)


def _assert_numpy_rows_are_vectors(tf, table, mat):
    names = tf.feature_names
    rows = table.to_pylist()
    assert mat.shape == (len(rows), len(names)) and mat.dtype == np.float64
    for i, r in enumerate(rows):
        vec = tf.vector(r)
        assert mat[i].tobytes() == vec.tobytes(), (i, mat[i], vec, r)


@settings(max_examples=n_examples(60))
@given(
    tables=fit_apply_tables(),
    mask=st.lists(st.booleans(), min_size=N_GROUPS, max_size=N_GROUPS),
    how=st.sampled_from(["string", "large_string", "string_view", "dictionary"]),
    chunk=st.integers(1, 8),
    order=st.sampled_from(["C", "F"]),
)
def test_transform_numpy_equals_vector_for_any_string_layout_and_batching(tables, mask, how, chunk, order):
    """transform_numpy on strings as utf8 / large_utf8 / utf8_view / dictionary, and on tables
    of several record batches: every row is the one-row driver's vector, bit for bit."""
    fit_rows, apply_rows = tables
    tf = rtml.Transforms(_pipeline(mask))
    try:
        tf.fit(rows_table(fit_rows))
    except rtml.RtmlError as e:
        event(f"fit raised {type(e).__name__}")
        return
    base = rows_table(fit_rows[:4] + apply_rows)
    table = _encode_strings(base, how)
    table = pa.Table.from_batches(table.to_batches(max_chunksize=chunk), schema=table.schema)
    try:
        mat = tf.transform_numpy(table, order=order)
    except rtml.RtmlError as e:
        with pytest.raises(type(e)):
            tf.transform(base)
        event("transform raised")
        return
    _assert_numpy_rows_are_vectors(tf, base, mat)
    # and the pyarrow.Table of transform holds the same values (null <-> NaN)
    out = tf.transform(table)
    for j, n in enumerate(tf.feature_names):
        got = out.column(n).to_pylist()
        for i, v in enumerate(got):
            if v is None:
                assert math.isnan(mat[i, j]), (n, i)
            else:
                assert bits(v) == bits(float(mat[i, j])), (n, i, v, mat[i, j])


def _random_rows(n, seed):
    """Rows like fit_apply_tables draws them (nulls, unseen categories), but many of them."""
    from transform_helpers import INT_CATS, STR_CATS, UNSEEN_INT, UNSEEN_STR

    rng = random.Random(seed)

    def maybe(v):
        return None if rng.random() < 0.1 else v

    rows = []
    for _ in range(n):
        rows.append({
            "x": maybe(rng.choice([rng.uniform(-1e6, 1e6), -1.0, 0.0, 2.5, 1e300, -1e-300])),
            "y": maybe(rng.uniform(-1e3, 1e3)),
            "n": maybe(rng.randint(-5, 5)),
            "b": maybe(rng.random() < 0.5),
            "s": maybe(rng.choice(STR_CATS + UNSEEN_STR)),
            "k": maybe(rng.choice(INT_CATS + UNSEEN_INT)),
            "t": maybe(rng.randint(0, 4 * 10**15)),
            "target": rng.uniform(-100, 100),
        })
    return rows


@pytest.mark.parametrize("how", ["string", "dictionary"])
def test_transform_numpy_on_many_blocks_and_uneven_batches(how):
    """Enough rows for many parallel blocks, cut into record batches of uneven sizes (block
    edges fall inside batches and batch edges inside blocks): rows equal the one-row driver."""
    fit = rows_table(_random_rows(3000, 1))
    tf = rtml.Transforms(_pipeline([True] * N_GROUPS)).fit(fit)
    rows = _random_rows(5000, 2)
    base = rows_table(rows)
    table = _encode_strings(base, how)
    cuts = [0, 700, 701, 1900, 1900, 4999, 5000]
    batches = [b for lo, hi in zip(cuts, cuts[1:]) for b in table.slice(lo, hi - lo).to_batches()]
    chunked = pa.Table.from_batches(batches, schema=table.schema)
    mats = [tf.transform_numpy(chunked), tf.transform_numpy(table, order="F")]
    for m in mats:
        _assert_numpy_rows_are_vectors(tf, base, m)
    out = tf.transform(chunked)
    want = np.array(mats[0])
    got = np.column_stack([out.column(i).to_numpy(zero_copy_only=False) for i in range(out.num_columns)])
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~np.isnan(got)].view(np.uint64), want[~np.isnan(want)].view(np.uint64))
    # a column without nulls has no validity bitmap; one with nulls reports them
    for j, n in enumerate(tf.feature_names):
        assert out.column(n).null_count == int(np.isnan(want[:, j]).sum()), n


def test_transform_numpy_of_an_empty_table_and_errors():
    tf = _fit([rtml.standard_scale("x"), rtml.one_hot("c")], _table(x=[1.0, 2.0], c=["a", "b"]))
    empty = _table(x=_col([]), c=_col([], pa.string()))
    m = tf.transform_numpy(empty)
    assert m.shape == (0, 4) and m.dtype == np.float64
    with raises(rtml.SchemaError, "'c'", "not found"):
        tf.transform_numpy(_table(x=_col([])))
    with raises(rtml.SchemaError, "NaN and infinite"):
        tf.transform_numpy(_table(x=[1.0, float("nan")], c=["a", "b"]))
    with raises(ValueError, "order"):
        tf.transform_numpy(empty, order="K")
    with raises(rtml.SpecError, "not fitted"):
        rtml.Transforms([rtml.standard_scale("x")]).transform_numpy(empty)


def test_nonfinite_error_names_the_absolute_row():
    """The error of a bad value deep in a large table names its row in the whole table."""
    x = np.arange(100_000, dtype=np.float64)
    x[70_001] = np.inf
    tf = _fit([rtml.standard_scale("x")], _table(x=[0.0, 1.0]))
    table = pa.table({"x": x})
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=30_000))
    for call in (tf.transform, tf.transform_numpy):
        for t in (table, chunked):
            with raises(rtml.SchemaError, "at row 70001"):
                call(t)


@settings(max_examples=n_examples(50))
@given(tables=fit_apply_tables(), mask=st.lists(st.booleans(), min_size=N_GROUPS, max_size=N_GROUPS), seed=st.integers(0, 2**32 - 1))
def test_fit_is_independent_of_row_order(tables, mask, seed):
    """Exact sums and exact (sorted) quantiles: the fitted state does not depend on row order."""
    fit_rows, apply_rows = tables
    shuffled = list(fit_rows)
    random.Random(seed).shuffle(shuffled)
    a = rtml.Transforms(_pipeline(mask))
    b = rtml.Transforms(_pipeline(mask))
    try:
        a.fit(rows_table(fit_rows))
    except rtml.RtmlError as e:
        with raises(type(e)):
            b.fit(rows_table(shuffled))
        return
    b.fit(rows_table(shuffled))
    apply_t = rows_table(fit_rows + apply_rows)
    try:
        oa = a.transform(apply_t)
    except rtml.RtmlError as e:
        with raises(type(e)):
            b.transform(apply_t)
        return
    ob = b.transform(apply_t)
    for n in a.feature_names:
        for i, (x, y) in enumerate(zip(oa.column(n).to_pylist(), ob.column(n).to_pylist())):
            assert same_bits(x, y), (n, i, x, y)


# ==========================================================================
# errors


def _base_table(n=6):
    return pa.table(
        {
            "x": _col([float(i) for i in range(n)]),
            "s": _col([f"c{i % 3}" for i in range(n)], pa.string()),
            "t": _col([1_700_000_000_000_000 + i * 3_600_000_000 for i in range(n)], pa.timestamp("us", tz="UTC")),
            "y": _col([float(i % 2) for i in range(n)]),
        }
    )


def _all_kinds():
    """(kind, step reading column 'x' or 's' or 't') for every constructor."""
    r = rtml
    return [
        ("log1p", lambda c="x": r.log1p(c)),
        ("abs", lambda c="x": r.abs(c)),
        ("clip", lambda c="x": r.clip(c, 0.0, 1.0)),
        ("power", lambda c="x": r.power(c, 2)),
        ("fill_null", lambda c="x": r.fill_null(c, 0.0)),
        ("standard_scale", lambda c="x": r.standard_scale(c)),
        ("min_max_scale", lambda c="x": r.min_max_scale(c)),
        ("robust_scale", lambda c="x": r.robust_scale(c)),
        ("bucketize", lambda c="x": r.bucketize(c, [1.0, 2.0])),
        ("quantile_bucketize", lambda c="x": r.quantile_bucketize(c, 3)),
        ("impute", lambda c="x": r.impute(c, "mean")),
        ("one_hot", lambda c="s": r.one_hot(c)),
        ("ordinal", lambda c="s": r.ordinal(c)),
        ("hash_bucket", lambda c="s": r.hash_bucket(c, 4)),
        ("target_encode", lambda c="s": r.target_encode(c, "y")),
        ("hour_of_day", lambda c="t": r.hour_of_day(c, tz="UTC")),
        ("day_of_week", lambda c="t": r.day_of_week(c, tz="UTC")),
        ("day_of_month", lambda c="t": r.day_of_month(c, tz="UTC")),
        ("month", lambda c="t": r.month(c, tz="UTC")),
        ("passthrough", lambda c="x": r.passthrough(c)),
    ]


KINDS = [k for k, _ in [
    ("log1p", 0), ("abs", 0), ("clip", 0), ("power", 0), ("fill_null", 0), ("standard_scale", 0),
    ("min_max_scale", 0), ("robust_scale", 0), ("bucketize", 0), ("quantile_bucketize", 0), ("impute", 0),
    ("one_hot", 0), ("ordinal", 0), ("hash_bucket", 0), ("target_encode", 0), ("hour_of_day", 0),
    ("day_of_week", 0), ("day_of_month", 0), ("month", 0), ("passthrough", 0),
]]


def _ctor(kind):
    return dict(_all_kinds())[kind]


def _input_col(kind):
    import inspect

    return inspect.signature(_ctor(kind)).parameters["c"].default


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_column_at_fit(kind):
    tf = rtml.Transforms([rtml.passthrough("y"), _ctor(kind)("no_such_col")])
    with raises(rtml.SchemaError, "no_such_col", kind):
        tf.fit(_base_table())


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_column_at_apply_and_missing_row_field(kind):
    col = _input_col(kind)
    tbl = _base_table()
    tf = _fit([_ctor(kind)()], tbl)
    with raises(rtml.SchemaError, col, kind):
        tf.transform(tbl.drop_columns([col]))
    row = tbl.slice(0, 1).to_pylist()[0]
    del row[col]
    with raises(rtml.SchemaError, col, kind):
        tf.transform_one(row)
    with raises(rtml.SchemaError, col, kind):
        tf.vector(row)


def test_target_column_missing_at_fit():
    tbl = _base_table().drop_columns(["y"])
    with raises(rtml.SchemaError, "y", "target_encode"):
        rtml.Transforms([rtml.target_encode("s", "y")]).fit(tbl)


NUMERIC_KINDS = [k for k in KINDS if _input_col(k) == "x"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("kind", NUMERIC_KINDS)
def test_nonfinite_input_rejected(kind, bad):
    tbl = _base_table()
    bad_tbl = tbl.set_column(0, "x", _col([1.0, bad, 2.0, 3.0, 4.0, 5.0]))
    with raises(rtml.SchemaError, "x", kind):
        rtml.Transforms([_ctor(kind)()]).fit(bad_tbl)
    tf = _fit([_ctor(kind)()], tbl)
    with raises(rtml.SchemaError, "x", kind):
        tf.transform(bad_tbl)
    with raises(rtml.SchemaError, "x", kind):
        tf.transform_one({"x": bad, "s": "c0", "t": dt.datetime(2024, 1, 1), "y": 0.0})


def test_nonfinite_target_rejected():
    tbl = _base_table().set_column(3, "y", _col([1.0, float("nan"), 0.0, 1.0, 0.0, 1.0]))
    with raises(rtml.SchemaError, "y", "target_encode"):
        rtml.Transforms([rtml.target_encode("s", "y")]).fit(tbl)


@pytest.mark.parametrize("kind", NUMERIC_KINDS)
def test_string_into_numeric_step(kind):
    tbl = _base_table()
    str_tbl = tbl.set_column(0, "x", _col([str(i) for i in range(6)], pa.string()))
    with raises(rtml.SchemaError, "x", kind):
        rtml.Transforms([_ctor(kind)()]).fit(str_tbl)
    tf = _fit([_ctor(kind)()], tbl)
    with raises(rtml.SchemaError, "x", kind):
        tf.transform(str_tbl)
    with raises(rtml.SchemaError, "x", kind):
        tf.transform_one({"x": "1.5", "s": "c0", "t": dt.datetime(2024, 1, 1), "y": 0.0})


@pytest.mark.parametrize("kind", ["one_hot", "ordinal", "hash_bucket", "target_encode"])
def test_float_into_categorical_step(kind):
    tbl = _base_table()
    with raises(rtml.SchemaError, "x", kind):
        rtml.Transforms([_ctor(kind)("x")]).fit(tbl)
    tf = _fit([_ctor(kind)()], tbl)
    with raises(rtml.SchemaError, "s", kind):
        tf.transform_one({"s": 1.5, "x": 0.0, "t": dt.datetime(2024, 1, 1), "y": 0.0})


@pytest.mark.parametrize("kind", ["hour_of_day", "day_of_week", "day_of_month", "month"])
def test_non_time_into_date_part(kind):
    tbl = _base_table()
    with raises(rtml.SchemaError, "s", kind):
        rtml.Transforms([_ctor(kind)("s")]).fit(tbl)
    tf = _fit([_ctor(kind)()], tbl)
    with raises(rtml.SchemaError, "t", kind):
        tf.transform_one({"t": "2024-01-01T00:00:00", "x": 0.0, "s": "c0", "y": 0.0})


@pytest.mark.parametrize(
    "make",
    [
        lambda: rtml.hash_bucket("s", 0),
        lambda: rtml.hash_bucket("s", -3),
        lambda: rtml.quantile_bucketize("x", 0),
        lambda: rtml.impute("x", "no_such_strategy"),
        lambda: rtml.impute("x", "constant"),  # constant needs value=
        lambda: rtml.hour_of_day("t", tz="Mars/Olympus_Mons"),
    ],
    ids=["hash0", "hash_neg", "qb0", "impute_strategy", "impute_constant_no_value", "bad_tz"],
)
def test_invalid_step_definitions(make):
    with raises(rtml.SpecError):
        rtml.Transforms([make()]).fit(_base_table())


FITTED_KINDS = ["standard_scale", "min_max_scale", "robust_scale", "quantile_bucketize", "impute"]
EXTREME_COLUMNS = [
    [1.7976931348623157e308, -1.7976931348623157e308],
    [1.7976931348623157e308, -1.7976931348623157e308, 0.0, 5e-324, None],
    [1e308, 1e308, 1e308],
    [5e-324, -5e-324, 0.0, -0.0],
]


@pytest.mark.parametrize("vals", EXTREME_COLUMNS, ids=["max_min", "mixed", "huge_const", "subnormal"])
@pytest.mark.parametrize("kind", FITTED_KINDS)
def test_extreme_finite_fit_survives_json(kind, vals):
    """Finite inputs whose statistics overflow (range = max - min = inf, ...): fit may reject
    them with an rtml error, but a Transforms that fitted must write a document that loads back
    and gives the same outputs (docs/transforms.md: fitted state included in to_json)."""
    tbl = pa.table({"x": _col(vals)})
    try:
        tf = _fit([_ctor(kind)()], tbl)
    except rtml.RtmlError:
        return
    probe = pa.table({"x": _col([v for v in vals if v is not None] + [1.0, None])})
    out = tf.transform(probe)
    tf2 = rtml.Transforms.from_json(tf.to_json())
    out2 = tf2.transform(probe)
    for n in tf.feature_names:
        assert_exact(out2.column(n).to_pylist(), out.column(n).to_pylist(), n)


def test_fit_refits_from_scratch_and_failed_fit_keeps_state():
    a = pa.table({"x": _col([1.0, 2.0, 3.0]), "c": _col(["a", "a", "b"], pa.string())})
    b = pa.table({"x": _col([10.0, 20.0]), "c": _col(["z", "z"], pa.string())})
    steps = lambda: [rtml.standard_scale("x"), rtml.one_hot("c")]  # noqa: E731
    tf = _fit(steps(), a)
    tf.fit(b)  # from scratch: nothing of `a` remains
    assert loads(tf.to_json()) == loads(_fit(steps(), b).to_json())
    assert tf.feature_names == ["x", "c=z", "c=__other__"]
    before = tf.to_json()
    bad = b.set_column(0, "x", _col([1.0, float("nan")]))
    with raises(rtml.SchemaError, "x"):
        tf.fit(bad)
    assert tf.to_json() == before
    with raises(rtml.SchemaError, "c"):
        tf.fit(b.drop_columns(["c"]))
    assert tf.to_json() == before
    assert tf.transform_one({"x": 15.0, "c": "z"}) == {"x": 0.0, "c=z": 1.0, "c=__other__": 0.0}


def test_target_encode_fit_transform_needs_folds_rows():
    tbl = pa.table({"c": _col(["a", "b", "a"], pa.string()), "y": _col([1.0, 2.0, 3.0])})
    with raises(rtml.RtmlError, "target_encode"):
        rtml.Transforms([rtml.target_encode("c", "y", folds=5)]).fit_transform(tbl)
    out = rtml.Transforms([rtml.target_encode("c", "y", smooth=1.0, folds=3)]).fit_transform(tbl)
    # each row encoded by the other two rows: mean_y of the other folds, counts 0 or 1
    # row 0 (a): others b=2, a=3 -> mean 2.5, a: (3 + 2.5) / 2; row 1 (b): others 1, 3 -> unseen -> 2.0
    # row 2 (a): others a=1, b=2 -> mean 1.5, a: (1 + 1.5) / 2
    assert_close(out.column("c_te").to_pylist(), [2.75, 2.0, 1.25], 1e-15, 0.0, "3 folds of 1 row")


def test_transform_before_fit_is_an_rtml_error():
    tf = rtml.Transforms([rtml.standard_scale("x")])
    with raises(rtml.RtmlError):
        tf.transform(_base_table())
    with raises(rtml.RtmlError):
        tf.transform_one({"x": 1.0})


def test_fit_on_all_null_column_does_not_panic():
    tbl = pa.table({"x": _col([None, None], pa.float64()), "s": _col([None, None], pa.string()), "y": _col([1.0, 2.0])})
    for step in [rtml.standard_scale("x"), rtml.robust_scale("x"), rtml.quantile_bucketize("x", 3),
                 rtml.impute("x", "median"), rtml.one_hot("s"), rtml.target_encode("s", "y")]:
        try:
            tf = rtml.Transforms([step]).fit(tbl)
            tf.transform(tbl)
            tf.transform_one({"x": None, "s": None, "y": 1.0})
        except rtml.RtmlError:
            pass  # an rtml error is acceptable; a panic (BaseException) is not


# --------------------------------------------------------------------------
# documents


def _fitted_doc():
    tbl = _base_table(12)
    tf = _fit(
        [
            rtml.hash_bucket("s", 37),
            rtml.standard_scale("x", name="x_std"),
            rtml.quantile_bucketize("x", 3, name="x_qb"),
            rtml.one_hot("s"),
            rtml.target_encode("s", "y", smooth=2.5),
        ],
        tbl,
    )
    return tf, tbl, loads(tf.to_json())


def test_document_round_trip_is_stable():
    tf, tbl, doc = _fitted_doc()
    assert isinstance(doc, dict) and "version" in doc, doc
    tf2 = rtml.Transforms.from_json(json.dumps(doc))
    assert loads(tf2.to_json()) == doc
    a, b = tf.transform(tbl), tf2.transform(tbl)
    for n in tf.feature_names:
        assert_exact(b.column(n).to_pylist(), a.column(n).to_pylist(), n)


def test_document_of_a_newer_version():
    _, _, doc = _fitted_doc()
    doc["version"] = 999
    try:
        rtml.Transforms.from_json(json.dumps(doc))
    except rtml.SpecError as e:
        assert "version" in str(e).lower() or "999" in str(e), f"message does not say why: {e}"
    except BaseException as e:  # noqa: BLE001
        raise AssertionError(f"expected SpecError, got {type(e).__name__}: {e}")
    else:
        raise AssertionError("a version 999 document was accepted")


@pytest.mark.parametrize("text", ["", "{", "null", "[]", "{}", '{"version": 1}', "\x00\xff", '{"version": "one"}'])
def test_garbage_documents(text):
    with raises(rtml.SpecError):
        rtml.Transforms.from_json(text)


@pytest.mark.parametrize("bad_n", [-37, 0])
def test_hand_edited_negative_bucket_count(bad_n):
    _, _, doc = _fitted_doc()
    assert replace_ints(doc, 37, bad_n) >= 1, "hash_bucket's n=37 not found in the document"
    with raises(rtml.SpecError, "s", "hash_bucket"):
        rtml.Transforms.from_json(json.dumps(doc))


def test_hand_edited_unknown_step_kind():
    _, _, doc = _fitted_doc()
    assert replace_strings(doc, "hash_bucket", "frobnicate") >= 1
    with raises(rtml.SpecError, "frobnicate"):
        rtml.Transforms.from_json(json.dumps(doc))


def test_hand_edited_fitted_state_of_wrong_type():
    _, _, doc = _fitted_doc()
    found = step_dicts(doc, "standard_scale")
    assert found, "standard_scale step not found in the document"
    assert sum(replace_floats(d, "oops") for d in found) >= 1, found
    with raises(rtml.SpecError, "standard_scale"):
        rtml.Transforms.from_json(json.dumps(doc))


def test_from_json_of_non_string_is_an_error_not_a_panic():
    for bad in (None, 5, b"\xff"):
        with pytest.raises(TypeError):
            rtml.Transforms.from_json(bad)
