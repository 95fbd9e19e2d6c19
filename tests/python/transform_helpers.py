"""Helpers for tests/python/test_transforms.py: plain-Python references for the transform
contract in docs/transforms.md, table builders, output comparison, JSON document editing,
and hypothesis strategies for random tables."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import json
import math
import struct
from collections import Counter
from fractions import Fraction
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
from hypothesis import strategies as st

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# --------------------------------------------------------------------------
# comparing outputs


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same_bits(a, b) -> bool:
    """None == None; floats compared by their IEEE bits (so -0.0 != 0.0, NaN == same NaN)."""
    if a is None or b is None:
        return a is None and b is None
    return isinstance(a, float) and isinstance(b, float) and bits(a) == bits(b)


def columns(out: pa.Table) -> dict:
    """name -> list of Python floats / None."""
    return {n: out.column(n).to_pylist() for n in out.column_names}


def column_np(out: pa.Table, name: str) -> np.ndarray:
    """A float64 output column as numpy, null -> NaN."""
    return np.array([np.nan if v is None else v for v in out.column(name).to_pylist()], dtype=np.float64)


def assert_float64_table(out: pa.Table, names, n_rows=None):
    assert isinstance(out, pa.Table), type(out)
    assert out.column_names == list(names), (out.column_names, list(names))
    for f in out.schema:
        assert f.type == pa.float64(), (f.name, f.type)
    if n_rows is not None:
        assert out.num_rows == n_rows, (out.num_rows, n_rows)


def assert_close(got, want, rtol, atol=0.0, what=""):
    """got: list of float/None; want: sequence of float/None/NaN(=null)."""
    assert len(got) == len(want), (what, len(got), len(want))
    bad = []
    for i, (g, w) in enumerate(zip(got, want)):
        w_null = w is None or (isinstance(w, float) and math.isnan(w))
        if w_null or g is None:
            if not (w_null and g is None):
                bad.append((i, g, w))
            continue
        if not (abs(g - w) <= atol + rtol * abs(w)):
            bad.append((i, g, w))
    assert not bad, f"{what}: {len(bad)} mismatches (row, got, want): {bad[:10]}"


def assert_exact(got, want, what=""):
    """Bit-for-bit (None for null)."""
    assert len(got) == len(want), (what, len(got), len(want))
    bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if not same_bits(g, None if w is None else float(w))]
    assert not bad, f"{what}: {len(bad)} mismatches (row, got, want): {bad[:10]}"


# --------------------------------------------------------------------------
# references (docs/transforms.md)


def vocabulary(values, min_frequency=1, max_categories=None):
    """one_hot / ordinal vocabulary: categories with count >= min_frequency; if max_categories
    is set, the most frequent max_categories - 1 of them (ties: smaller value first); sorted."""
    counts = Counter(v for v in values if v is not None)
    keep = [v for v, c in counts.items() if c >= min_frequency]
    if max_categories is not None:
        keep = sorted(keep, key=lambda v: (-counts[v], v))[: max(0, max_categories - 1)]
    return sorted(keep)


def percentile_linear_exact(values, q: Fraction) -> Fraction:
    """numpy's "linear" percentile (h = (n - 1) q), in exact rational arithmetic."""
    xs = sorted(Fraction(v) for v in values)
    n = len(xs)
    h = (n - 1) * Fraction(q)
    lo = math.floor(h)
    frac = h - lo
    hi = min(lo + 1, n - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def quantile_edges_exact(values, n_bins):
    edges = [percentile_linear_exact(values, Fraction(k, n_bins)) for k in range(n_bins + 1)]
    out = []
    for e in edges:
        if not out or e != out[-1]:
            out.append(e)
    return out


def quantile_bucket_exact(edges, x):
    inner = edges[1:-1]
    fx = Fraction(x)
    return sum(1 for e in inner if e <= fx)


def exact_mean(values) -> float:
    vs = [Fraction(v) for v in values if v is not None]
    return float(sum(vs) / len(vs))


def target_encoding_exact(cats, ys, smooth):
    """category -> (sum_y + smooth * mean_y) / (count + smooth), and mean_y; exact then rounded."""
    fy = [Fraction(y) for y in ys]
    mean_y = sum(fy) / len(fy)
    sums, counts = {}, Counter()
    for c, y in zip(cats, fy):
        sums[c] = sums.get(c, 0) + y
        counts[c] += 1
    s = Fraction(smooth)
    enc = {c: float((sums[c] + s * mean_y) / (counts[c] + s)) for c in counts}
    return enc, float(mean_y)


def date_part(ts: dt.datetime, tz: str, part: str) -> int:
    local = ts.astimezone(ZoneInfo(tz))
    return {
        "hour": local.hour,
        "day_of_week": local.weekday(),  # Monday = 0
        "day_of_month": local.day,
        "month": local.month,
    }[part]


def us_to_datetime(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


# --------------------------------------------------------------------------
# xxh3-64 reference: the `xxhash` package if installed, else the system libxxhash through ctypes


def xxh3_64_reference():
    """A function bytes -> int (xxh3_64, seed 0), or None when no independent implementation
    is available on this machine."""
    try:
        import xxhash  # type: ignore

        return xxhash.xxh3_64_intdigest
    except ImportError:
        pass
    for name in ("libxxhash.so.0", ctypes.util.find_library("xxhash")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            f = lib.XXH3_64bits
        except (OSError, AttributeError):
            continue
        f.restype = ctypes.c_uint64
        f.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

        def h(b: bytes, _f=f) -> int:
            return int(_f(b, len(b)))

        # sanity: the published xxh3_64("") value
        if h(b"") == 0x2D06800538D394C2:
            return h
    return None


# --------------------------------------------------------------------------
# JSON documents


def walk(node):
    """Every dict and list in a JSON document (depth first, parents first)."""
    yield node
    if isinstance(node, dict):
        for v in node.values():
            if isinstance(v, (dict, list)):
                yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            if isinstance(v, (dict, list)):
                yield from walk(v)


def step_dicts(doc, kind: str):
    """The innermost dicts whose values mention the string ``kind`` (the step's own record)."""
    found = [d for d in walk(doc) if isinstance(d, dict) and kind in d.values()]
    return found


def replace_ints(node, old: int, new):
    """Replace every int ``old`` (not bool) anywhere under ``node``; returns the count."""
    n = 0
    if isinstance(node, dict):
        for k, v in node.items():
            if type(v) is int and v == old:
                node[k] = new
                n += 1
            elif isinstance(v, (dict, list)):
                n += replace_ints(v, old, new)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if type(v) is int and v == old:
                node[i] = new
                n += 1
            elif isinstance(v, (dict, list)):
                n += replace_ints(v, old, new)
    return n


def replace_strings(node, old: str, new: str):
    n = 0
    if isinstance(node, dict):
        for k, v in node.items():
            if v == old:
                node[k] = new
                n += 1
            elif isinstance(v, (dict, list)):
                n += replace_strings(v, old, new)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if v == old:
                node[i] = new
                n += 1
            elif isinstance(v, (dict, list)):
                n += replace_strings(v, old, new)
    return n


def replace_floats(node, new):
    """Replace every non-integral float under ``node`` by ``new``; returns the count."""
    n = 0
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in list(items):
        if isinstance(v, float):
            node[k] = new
            n += 1
        elif isinstance(v, (dict, list)):
            n += replace_floats(v, new)
    return n


def loads(s: str):
    return json.loads(s)


# --------------------------------------------------------------------------
# hypothesis: random tables

EXTREMES = [
    1.7976931348623157e308,
    -1.7976931348623157e308,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e300,
    -1e300,
    -0.0,
    0.0,
    1e-300,
]

STR_CATS = ["a", "b", "c", "", "é", "7", "a b", "zone=1"]
INT_CATS = [7, -1, 0, 3, 2**62, -(2**63)]
UNSEEN_STR = ["zz", "A", "ü"]
UNSEEN_INT = [999, 8, 2**63 - 1]

# 1900-01-01 .. 2200-01-01 in microseconds
T_MIN_US = -2208988800 * 10**6
T_MAX_US = 7258118400 * 10**6
DST_US = [
    1710052200 * 10**6,  # 2024-03-10 06:30 UTC (New York spring forward)
    1730611800 * 10**6,  # 2024-11-03 05:30 UTC (New York fall back)
    -1800 * 10**6,  # 1969-12-31 23:30 UTC (negative epoch)
]


def finite_float(extreme=True):
    base = st.one_of(
        st.sampled_from([0.0, 1.0, -1.0, 2.5, -3.0, 10.0, 0.5, 100.0]),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    )
    if extreme:
        return st.one_of(base, base, st.sampled_from(EXTREMES),
                         st.floats(allow_nan=False, allow_infinity=False))
    return base


def nullable(s):
    return st.one_of(st.none(), s, s, s)


@st.composite
def row_values(draw, unseen=False):
    s_cats = STR_CATS + (UNSEEN_STR if unseen else [])
    i_cats = INT_CATS + (UNSEEN_INT if unseen else [])
    return {
        "x": draw(nullable(finite_float(True))),
        "y": draw(nullable(finite_float(False))),
        "n": draw(nullable(st.one_of(st.integers(-5, 5), st.sampled_from([2**62, -(2**62), 2**53 + 1])))),
        "b": draw(nullable(st.booleans())),
        "s": draw(nullable(st.sampled_from(s_cats))),
        "k": draw(nullable(st.sampled_from(i_cats))),
        "t": draw(nullable(st.one_of(st.integers(T_MIN_US, T_MAX_US), st.sampled_from(DST_US)))),
        "target": draw(st.floats(min_value=-100, max_value=100, allow_nan=False)),
    }


SCHEMA = pa.schema(
    [
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("n", pa.int64()),
        ("b", pa.bool_()),
        ("s", pa.string()),
        ("k", pa.int64()),
        ("t", pa.timestamp("us", tz="UTC")),
        ("target", pa.float64()),
    ]
)


def rows_table(rows) -> pa.Table:
    cols = {}
    for f in SCHEMA:
        cols[f.name] = pa.array([r[f.name] for r in rows], type=f.type)
    return pa.table(cols, schema=SCHEMA)


def table_rows(table: pa.Table):
    """Row dicts as a request would send them (datetimes for timestamps)."""
    return table.to_pylist()


@st.composite
def fit_apply_tables(draw, min_fit=1, max_fit=25, max_apply=12):
    fit_rows = draw(st.lists(row_values(unseen=False), min_size=min_fit, max_size=max_fit))
    # at least one non-null value in every column fitted steps read
    anchor = draw(row_values(unseen=False))
    for c in ("x", "y", "n", "b", "s", "k", "t"):
        if anchor[c] is None:
            anchor[c] = {"x": 1.0, "y": 2.0, "n": 1, "b": True, "s": "a", "k": 7, "t": 0}[c]
    fit_rows.append(anchor)
    apply_rows = draw(st.lists(row_values(unseen=True), min_size=0, max_size=max_apply))
    return fit_rows, apply_rows
