"""Shared helpers for the rtml Python tests: building rtml feature sets and Arrow
inputs from reference descriptions, comparing results, hypothesis strategies."""

from __future__ import annotations

import contextlib
import datetime as dt
import struct

import pyarrow as pa
from hypothesis import strategies as st

import reference as ref
from reference import Feat, NS_PER_UNIT

rtml = None


def get_rtml():
    global rtml
    if rtml is None:
        import rtml as _rtml

        rtml = _rtml
    return rtml


UTC = dt.timezone.utc


def n_examples(n: int) -> int:
    """max_examples, scaled by RTML_HYPOTHESIS_SCALE for long local bug hunts (CI: 1)."""
    import os

    return max(1, int(n * float(os.environ.get("RTML_HYPOTHESIS_SCALE", "1"))))
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# --------------------------------------------------------------------------
# durations and times


def duration_str(ns: int) -> str:
    """Shortest "<n><unit>" spelling of a positive ns duration."""
    assert ns > 0
    for unit in ("w", "d", "h", "m", "s", "ms", "us", "ns"):
        u = NS_PER_UNIT[unit]
        if ns % u == 0:
            return f"{ns // u}{unit}"
    raise AssertionError


def ns_to_datetime(ns: int, tz=UTC) -> dt.datetime:
    assert ns % 1000 == 0, "datetime only holds microseconds"
    d = EPOCH + dt.timedelta(microseconds=ns // 1000)
    if tz is None:
        return d.replace(tzinfo=None)
    return d.astimezone(tz)


def to_unit(ns: int, unit: str) -> int:
    m = NS_PER_UNIT[unit]
    assert ns % m == 0, (ns, unit)
    return ns // m


# --------------------------------------------------------------------------
# feature construction


def make_feature(f: Feat, use_name: bool = True):
    """The rtml constructor call matching reference Feat ``f``."""
    r = get_rtml()
    kw = {}
    if f.window is not None:
        kw["window"] = duration_str(f.window)
    if use_name and f.name:
        kw["name"] = f.name
    a = f.agg
    if a == "count":
        return r.count(f.col, **kw) if f.col is not None else r.count(**kw)
    if a == "time_since_last":
        return r.time_since_last(**kw)
    if a == "quantile":
        return r.quantile(f.col, f.q, **kw)
    if a == "decayed_sum":
        return r.decayed_sum(f.col, half_life=duration_str(f.half_life), **kw)
    ctor = {
        "sum": r.sum,
        "mean": r.mean,
        "min": r.min,
        "max": r.max,
        "var": r.var,
        "std": r.std,
        "first": r.first,
        "last": r.last,
        "distinct_count": r.distinct_count,
    }[a]
    return ctor(f.col, **kw)


def make_feature_set(feats, entity="key", timestamp="ts", **kw):
    r = get_rtml()
    return r.FeatureSet(entity=entity, timestamp=timestamp, features=[make_feature(f) for f in feats], **kw)


# --------------------------------------------------------------------------
# Arrow inputs


def key_type(kind: str):
    return pa.int64() if kind == "int" else pa.string()


def time_array(ns_values, mode: str, unit: str, tz="UTC"):
    """Times as an Arrow array.

    mode "ts":  timestamp[unit, tz] (values are the UTC instants)
    mode "int": int64 counts of ``unit`` (FeatureSet needs timestamp_unit=unit)
    """
    vals = [None if v is None else to_unit(v, unit) for v in ns_values]
    if mode == "ts":
        return pa.array(vals, type=pa.timestamp(unit, tz=tz))
    assert mode == "int"
    return pa.array(vals, type=pa.int64())


def time_scalar(ns: int, mode: str, unit: str):
    """A time as a Python value for ``get(..., at=)`` / row dicts."""
    if mode == "int":
        return to_unit(ns, unit)
    return ns_to_datetime(ns)


VALUE_TYPES = {"x": pa.float64(), "n": pa.int64(), "s": pa.string()}


def events_table(events, key_kind: str, mode: str, unit: str, tz="UTC", key="key", ts="ts", columns=("x", "n", "s")):
    cols = {
        key: pa.array([e[key] for e in events], type=key_type(key_kind)),
        ts: time_array([e[ts] for e in events], mode, unit, tz),
    }
    for c in columns:
        cols[c] = pa.array([e.get(c) for e in events], type=VALUE_TYPES[c])
    return pa.table(cols)


def event_rows(events, mode: str, unit: str, key="key", ts="ts", columns=("x", "n", "s")):
    """Events as a list of row dicts (the list-of-dicts ingest form)."""
    rows = []
    for e in events:
        r = {key: e[key], ts: time_scalar(e[ts], mode, unit)}
        for c in columns:
            r[c] = e.get(c)
        rows.append(r)
    return rows


def spine_table(queries, key_kind: str, mode: str, unit: str, tz="UTC", key="key", ts="ts", extra=True):
    cols = {
        key: pa.array([k for k, _ in queries], type=key_type(key_kind)),
        ts: time_array([t for _, t in queries], mode, unit, tz),
    }
    if extra:
        cols["row_id"] = pa.array(list(range(len(queries))), type=pa.int64())
        cols["label"] = pa.array([None if i % 3 == 0 else f"l{i}" for i in range(len(queries))], type=pa.string())
    return pa.table(cols)


# --------------------------------------------------------------------------
# comparing


def bits(x) -> bytes:
    return struct.pack("<d", x)


def same_exact(a, b) -> bool:
    """Equality for parity checks: None == None, ints by value, floats by bits."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, float) and isinstance(b, float)):
            return False
        return bits(a) == bits(b)
    return type(a) is type(b) and a == b


def check_backfill_against_reference(result: pa.Table, spine: pa.Table, feats, events, queries, key="key", ts="ts"):
    """Column names, spine pass-through, dtypes and every value against the reference."""
    names = [f.name for f in feats]
    assert result.column_names == spine.column_names + names, result.column_names
    assert result.num_rows == spine.num_rows
    # the spine's columns come back unchanged and in the same order
    for c in spine.column_names:
        assert result.column(c).to_pylist() == spine.column(c).to_pylist(), c
        assert result.schema.field(c).type == spine.schema.field(c).type, c
    for f in feats:
        want_t = pa.int64() if f.is_int else pa.float64()
        assert result.schema.field(f.name).type == want_t, (f.name, result.schema.field(f.name).type)

    want_rows = ref.evaluate(feats, events, queries, key, ts)
    scales = ref.evaluate_scales(feats, events, queries, key, ts)
    got_cols = {n: result.column(n).to_pylist() for n in names}
    errors = []
    for i, (q, want) in enumerate(zip(queries, want_rows)):
        for f in feats:
            msg = ref.check_value(f, got_cols[f.name][i], want[f.name], scales[i].get(f.name, 0.0))
            if msg:
                errors.append(f"row {i} query={q} feature={f.name} ({f.agg}): {msg}")
    assert not errors, "\n".join(errors[:20]) + f"\n({len(errors)} mismatches)"


# --------------------------------------------------------------------------
# exceptions


@contextlib.contextmanager
def raises(exc_type, *substrings):
    """Like pytest.raises, but also rejects pyo3 PanicException (a BaseException)
    and checks that the message mentions every one of ``substrings``."""
    try:
        yield
    except BaseException as e:  # noqa: BLE001
        assert type(e).__name__ != "PanicException", f"engine panicked: {e!r}"
        assert isinstance(e, exc_type), f"expected {exc_type.__name__}, got {type(e).__name__}: {e}"
        msg = str(e)
        for s in substrings:
            assert s in msg, f"error message {msg!r} does not mention {s!r}"
        return
    raise AssertionError(f"expected {exc_type.__name__}, nothing raised")


def assert_not_panic(fn, *args, **kwargs):
    """Run fn; any exception must be a regular Exception (not a Rust panic)."""
    try:
        return fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001
        assert type(e).__name__ != "PanicException", f"engine panicked: {e!r}"
        assert isinstance(e, Exception), f"non-Exception raised: {e!r}"
        return e


# --------------------------------------------------------------------------
# hypothesis strategies

BASES_NS = [
    1_700_000_000 * NS_PER_UNIT["s"],  # 2023-11-14
    0,  # the epoch itself
    -86_400 * NS_PER_UNIT["s"],  # 1969-12-31: negative times
]

Q_VALUES = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]


@st.composite
def wide_float(draw):
    """Mixed-sign values over a wide dynamic range, plus small values that repeat."""
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        return draw(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 3.0, -2.5, 1e12, -1e-8]))
    mag = draw(st.floats(min_value=1e-8, max_value=1e12, allow_nan=False, allow_infinity=False))
    if kind <= 6:
        # log-uniform magnitude
        e = draw(st.integers(-8, 11))
        mag = draw(st.floats(min_value=1.0, max_value=10.0)) * 10.0 ** e
    return -mag if draw(st.booleans()) else mag


def maybe_null(strategy, p_null_weight=1):
    return st.one_of(*([st.none()] * p_null_weight), strategy, strategy, strategy)


@st.composite
def event_sets(draw, max_events=25, key_kind=None, unit=None, max_offset=40):
    """(key_kind, unit, step_ns, base_ns, keys, events) with int-ns times."""
    key_kind = key_kind or draw(st.sampled_from(["int", "str"]))
    unit = unit or draw(st.sampled_from(["ns", "us", "ms", "s"]))
    step = NS_PER_UNIT[unit]
    base = draw(st.sampled_from(BASES_NS))
    n_keys = draw(st.integers(1, 3))
    if key_kind == "int":
        ints = st.one_of(st.integers(-50, 50), st.integers(-(2**63), 2**63 - 1),
                         st.sampled_from([-(2**63), 2**63 - 1, 0, -1, 2**53 + 1]))
        keys = draw(st.lists(ints, min_size=n_keys, max_size=n_keys, unique=True))
    else:
        texts = st.one_of(st.text(min_size=0, max_size=4), st.text(min_size=20, max_size=40))
        keys = draw(st.lists(texts, min_size=n_keys, max_size=n_keys, unique=True))
    n = draw(st.integers(0, max_events))
    events = []
    for _ in range(n):
        events.append(
            {
                "key": draw(st.sampled_from(keys)),
                "ts": base + draw(st.integers(0, max_offset)) * step,
                "x": draw(maybe_null(wide_float())),
                "n": draw(maybe_null(st.integers(-5, 5))),
                "s": draw(maybe_null(st.sampled_from(["a", "b", "c", "", "é"]))),
            }
        )
    return key_kind, unit, step, base, keys, events


@st.composite
def feature_lists(draw, step: int):
    """A list of reference Feats over columns x / n / s, with explicit names."""
    w1 = draw(st.sampled_from([1, 2, 3, 5, 7, 10, 16])) * step
    w2 = draw(st.sampled_from([4, 20, 33])) * step
    wins = [w1, w2, None]
    hl = draw(st.sampled_from([1, 3, 8])) * step
    specs = [
        ("count", None),
        ("count", "x"),
        ("count", "s"),
        ("sum", "x"),
        ("mean", "x"),
        ("min", "x"),
        ("max", "x"),
        ("var", "x"),
        ("std", "x"),
        ("first", "x"),
        ("last", "x"),
        ("distinct_count", "x"),
        ("distinct_count", "s"),
        ("quantile", "x"),
        ("decayed_sum", "x"),
        ("time_since_last", None),
        ("sum", "n"),
        ("max", "n"),
        ("distinct_count", "n"),
    ]
    feats = []
    for i, (agg, col) in enumerate(specs):
        for j in range(draw(st.integers(1, 2))):
            w = draw(st.sampled_from(wins))
            q = draw(st.sampled_from(Q_VALUES)) if agg == "quantile" else None
            h = hl if agg == "decayed_sum" else None
            feats.append(Feat(agg, col, window=w, q=q, half_life=h, name=f"f{i}_{j}_{agg}"))
    return feats


def absent_key(keys, key_kind):
    """A key of the right kind that has no events."""
    if key_kind == "int":
        for c in (max(keys) + 1, min(keys) - 1, 12345):
            if -(2**63) <= c < 2**63 and c not in keys:
                return c
        return next(c for c in range(len(keys) + 1) if c not in keys)
    k = "<absent>"
    while k in keys:
        k += "!"
    return k


def spine_candidates(events, feats, base, step):
    """Instants that stress the window edges: event times, ts + W, ts + W +- 1 step..."""
    cands = {base, base + 50 * step}
    windows = {f.window for f in feats if f.window is not None}
    for e in events:
        ts = e["ts"]
        cands.update([ts, ts + step, ts - step])
        for w in windows:
            cands.update([ts + w, ts + w + step, ts + w - step])
    return sorted(cands)


@st.composite
def spines(draw, keys, events, feats, base, step, key_kind, max_size=20):
    cands = spine_candidates(events, feats, base, step)
    absent = absent_key(keys, key_kind)
    qkeys = list(keys) + [absent]
    return draw(
        st.lists(st.tuples(st.sampled_from(qkeys), st.sampled_from(cands)), min_size=0, max_size=max_size)
    )
