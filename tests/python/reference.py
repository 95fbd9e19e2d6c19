"""Slow, obviously-correct pure-Python reference for rtml's feature semantics.

This module implements docs/semantics.md directly, with no cleverness and no
dependency on rtml, so that the engine can be checked against it.

Events are plain dicts::

    {"key": 1, "ts": 1_700_000_000_000_000_000, "x": 1.5, "s": "a"}

``ts`` is an int number of nanoseconds since the epoch, value columns hold
Python numbers / strings, ``None`` for null.  Queries are ``(key, t)`` pairs
with ``t`` in int nanoseconds.

A feature is described by :class:`Feat`; :func:`evaluate` returns one dict
``{feature_name: value}`` per query.  :func:`check_value` compares an engine
answer with the reference answer using the tolerances of the test contract:

* count / count(col) / distinct_count: exact integers
* sum: exact (== math.fsum of the window's values)
* min / max: exact, float bits included (IEEE total order, -0.0 < 0.0)
* first / last: exact (==)
* min / max / first / last of a string column (``Feat(text=True)``): the same str; strings
  compare by their UTF-8 bytes (Unicode code point order), first / last ties: the smallest /
  largest string
* mean / var / std: relative error <= 1e-12
* quantile: relative error <= 2**-8 of the nearest-rank value, exact when it is 0;
  for a subnormal value, absolute error <= 2**-1030 with the right sign
* decayed_sum: |got - want| <= 1e-12 * (|want| + sum of |terms|) + 1e-300
* time_since_last: relative error <= 1e-12
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Optional, Sequence

NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 7 * 86_400_000_000_000,
}

# Aggregations whose output column is int64; every other one is float64.
INT_AGGS = frozenset({"count", "distinct_count"})

ALL_AGGS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "var",
    "std",
    "first",
    "last",
    "distinct_count",
    "quantile",
    "decayed_sum",
    "time_since_last",
)


@dataclass(frozen=True)
class Feat:
    """Reference description of one feature.

    agg        one of ALL_AGGS
    col        value column (None for count() and time_since_last())
    window     window length in ns, or None for a lifetime feature
    q          quantile level (quantile only)
    half_life  half-life in ns (decayed_sum only)
    name       output column name
    text       min / max / first / last of a string column (FeatureSet string_columns)
    """

    agg: str
    col: Optional[str] = None
    window: Optional[int] = None
    q: Optional[float] = None
    half_life: Optional[int] = None
    name: str = ""
    text: bool = False

    @property
    def is_int(self) -> bool:
        return self.agg in INT_AGGS


# --------------------------------------------------------------------------
# helpers


def is_null(v: Any) -> bool:
    return v is None


def as_float(v: Any) -> float:
    """Numeric columns (int, float, bool) are read as float64."""
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    return float(v)


def total_order_key(x: float):
    """IEEE 754 totalOrder restricted to non-NaN values: -0.0 < 0.0."""
    return (x, math.copysign(1.0, x))


def float_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def nonfinite_to_none(v: Any) -> Any:
    """What on_nonfinite="skip" does to a value: NaN / +-inf become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def quantile_rank(q: float, n: int) -> int:
    """Nearest rank max(1, ceil(q * n)), 1-based.

    q is taken with its decimal meaning (0.1 means one tenth), which is what a
    user writing quantile("x", 0.1) means.  For the q values used in the tests
    this agrees with IEEE float64 ``ceil(q * n)``.
    """
    qf = Fraction(repr(float(q)))
    return max(1, math.ceil(qf * n))


# --------------------------------------------------------------------------
# one aggregation over the events of one window


def _values(events: Sequence[dict], col: str) -> list:
    return [e.get(col) for e in events if not is_null(e.get(col))]


def aggregate(feat: Feat, events: Sequence[dict], t: int, ts_field: str = "ts"):
    """Value of ``feat`` over ``events`` (already restricted to the window) at ``t``."""
    agg = feat.agg

    if agg == "count":
        if feat.col is None:
            return len(events)
        return len(_values(events, feat.col))

    if agg == "time_since_last":
        if not events:
            return None
        last_ts = max(e[ts_field] for e in events)
        return (t - last_ts) / 1e9

    if agg == "distinct_count":
        vals = _values(events, feat.col)
        out = set()
        for v in vals:
            if isinstance(v, str):
                out.add(("s", v))
            else:
                # 0.0 == -0.0 and hash equal, so they collapse as required
                out.add(("f", as_float(v)))
        return len(out)

    if feat.text and agg in ("min", "max", "first", "last"):
        return _text_aggregate(feat, events, ts_field)

    if agg == "first" or agg == "last":
        pairs = [(e[ts_field], as_float(e[feat.col])) for e in events if not is_null(e.get(feat.col))]
        if not pairs:
            return None
        if agg == "first":
            t0 = min(p[0] for p in pairs)
            return min((p[1] for p in pairs if p[0] == t0), key=total_order_key)
        t1 = max(p[0] for p in pairs)
        return max((p[1] for p in pairs if p[0] == t1), key=total_order_key)

    if agg == "decayed_sum":
        h = feat.half_life
        vals = [(e[ts_field], as_float(e[feat.col])) for e in events if not is_null(e.get(feat.col))]
        terms = [v * 2.0 ** (-((t - ts) / h)) for ts, v in vals]
        return math.fsum(terms)

    xs = [as_float(v) for v in _values(events, feat.col)]
    n = len(xs)

    if agg == "sum":
        return math.fsum(xs) if xs else 0.0
    if agg == "min":
        return min(xs, key=total_order_key) if xs else None
    if agg == "max":
        return max(xs, key=total_order_key) if xs else None
    if agg == "mean":
        if n == 0:
            return None
        return float(sum((Fraction(x) for x in xs), Fraction(0)) / n)
    if agg in ("var", "std"):
        if n < 2:
            return None
        fx = [Fraction(x) for x in xs]
        s1 = sum(fx, Fraction(0))
        s2 = sum((x * x for x in fx), Fraction(0))
        var = (s2 - s1 * s1 / n) / (n - 1)
        assert var >= 0
        if agg == "var":
            return float(var)
        return _sqrt_fraction(var)
    if agg == "quantile":
        if n == 0:
            return None
        ys = sorted(xs)
        return ys[quantile_rank(feat.q, n) - 1]

    raise ValueError(f"unknown aggregation {agg!r}")


def utf8_key(s: str) -> bytes:
    """Strings order by their UTF-8 bytes (= Unicode code point order)."""
    return s.encode("utf-8")


def _text_aggregate(feat: Feat, events: Sequence[dict], ts_field: str):
    pairs = [(e[ts_field], e[feat.col]) for e in events if not is_null(e.get(feat.col))]
    for _, v in pairs:
        assert isinstance(v, str), v
    if not pairs:
        return None
    if feat.agg == "min":
        return min((v for _, v in pairs), key=utf8_key)
    if feat.agg == "max":
        return max((v for _, v in pairs), key=utf8_key)
    if feat.agg == "first":
        t0 = min(p[0] for p in pairs)
        return min((v for ts, v in pairs if ts == t0), key=utf8_key)
    t1 = max(p[0] for p in pairs)
    return max((v for ts, v in pairs if ts == t1), key=utf8_key)


def _sqrt_fraction(v: Fraction) -> float:
    """sqrt of an exact non-negative rational, to well under 1e-15 relative error."""
    if v == 0:
        return 0.0
    f = float(v)
    if f == 0.0 or not math.isfinite(f):
        return math.sqrt(f)
    r = math.sqrt(f)
    # one Newton step in exact arithmetic from a very good start
    fr = Fraction(r)
    fr = (fr + v / fr) / 2
    return float(fr)


def decayed_scale(feat: Feat, events: Sequence[dict], t: int, ts_field: str = "ts") -> float:
    """Sum of |terms| of a decayed sum: the scale its rounding error is measured against."""
    h = feat.half_life
    return math.fsum(
        abs(as_float(e[feat.col])) * 2.0 ** (-((t - e[ts_field]) / h))
        for e in events
        if not is_null(e.get(feat.col))
    )


# --------------------------------------------------------------------------
# windows and queries


def in_window(feat: Feat, ts: int, t: int) -> bool:
    """t - W <= ts < t (lifetime: ts < t)."""
    if ts >= t:
        return False
    if feat.window is None:
        return True
    return t - feat.window <= ts


def window_events(feat: Feat, events: Iterable[dict], t: int, ts_field: str = "ts") -> list:
    return [e for e in events if in_window(feat, e[ts_field], t)]


def _group(events: Iterable[dict], key_field: str) -> dict:
    by_key: dict = {}
    for e in events:
        k = e[key_field]
        by_key.setdefault((type(k) is str, k), []).append(e)
    return by_key


def _norm_key(k):
    return (type(k) is str, k)


def evaluate(
    feats: Sequence[Feat],
    events: Sequence[dict],
    queries: Sequence[tuple],
    key_field: str = "key",
    ts_field: str = "ts",
) -> list:
    """One dict {feature name: value} per (key, t) query, in query order."""
    by_key = _group(events, key_field)
    out = []
    for k, t in queries:
        evs = by_key.get(_norm_key(k), [])
        row = {}
        for f in feats:
            row[f.name] = aggregate(f, window_events(f, evs, t, ts_field), t, ts_field)
        out.append(row)
    return out


def evaluate_scales(
    feats: Sequence[Feat],
    events: Sequence[dict],
    queries: Sequence[tuple],
    key_field: str = "key",
    ts_field: str = "ts",
) -> list:
    """Per query, {name: scale} for decayed_sum features (see check_value)."""
    by_key = _group(events, key_field)
    out = []
    for k, t in queries:
        evs = by_key.get(_norm_key(k), [])
        row = {}
        for f in feats:
            if f.agg == "decayed_sum":
                row[f.name] = decayed_scale(f, window_events(f, evs, t, ts_field), t, ts_field)
        out.append(row)
    return out


def empty_value(feat: Feat):
    """Value of a feature over an empty history (semantics.md table)."""
    return aggregate(feat, [], 0)


# --------------------------------------------------------------------------
# comparison with the tolerances of the test contract

REL_TOL_MOMENTS = 1e-12
QUANTILE_REL = 2.0 ** -8
DECAY_REL = 1e-12


def check_value(feat: Feat, got, want, scale: float = 0.0):
    """Return None if ``got`` is an acceptable engine answer, else a message."""
    if want is None:
        return None if got is None else f"expected null, got {got!r}"
    if got is None:
        return f"expected {want!r}, got null"

    agg = feat.agg
    if feat.text:
        if not isinstance(got, str):
            return f"expected a str, got {type(got).__name__} {got!r}"
        return None if got == want else f"expected {want!r}, got {got!r}"
    if feat.is_int:
        if isinstance(got, bool) or not isinstance(got, int):
            return f"expected an int, got {type(got).__name__} {got!r}"
        return None if got == want else f"expected {want}, got {got}"

    if not isinstance(got, float):
        return f"expected a float, got {type(got).__name__} {got!r}"
    if math.isnan(got):
        return f"expected {want!r}, got NaN"

    if agg in ("min", "max"):
        return None if float_bits(got) == float_bits(want) else f"expected {want!r}, got {got!r} (bitwise)"
    if agg in ("sum", "first", "last"):
        return None if got == want else f"expected {want!r} exactly, got {got!r}"
    if agg in ("mean", "var", "std", "time_since_last"):
        if want == 0.0:
            return None if got == 0.0 else f"expected exactly 0, got {got!r}"
        err = abs(got - want) / abs(want)
        return None if err <= REL_TOL_MOMENTS else f"expected {want!r}, got {got!r} (rel err {err:.3g})"
    if agg == "quantile":
        if want == 0.0:
            return None if got == 0.0 else f"expected exactly 0, got {got!r}"
        if abs(want) < 2.0 ** -1022:
            # semantics.md: subnormals sit in buckets of absolute width 2^-1029
            ok = abs(got - want) <= 2.0 ** -1030 and math.copysign(1.0, got) == math.copysign(1.0, want)
            return None if ok else f"expected ~{want!r} (subnormal, abs err <= 2^-1030), got {got!r}"
        err = abs(got - want) / abs(want)
        # a hair of slack for the midpoint's own rounding
        return None if err <= QUANTILE_REL * (1 + 1e-9) else f"expected ~{want!r}, got {got!r} (rel err {err:.3g})"
    if agg == "decayed_sum":
        tol = DECAY_REL * (abs(want) + scale) + 1e-300
        return None if abs(got - want) <= tol else f"expected {want!r}, got {got!r} (|err| {abs(got - want):.3g} > tol {tol:.3g})"
    raise ValueError(agg)
