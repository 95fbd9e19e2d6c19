"""The one-call paths of the online engine: `ingest(row_dict)` (applied directly, without a
batch) must be indistinguishable from the batch forms, and `vector` / `get` (stack buffers,
cached input slots, a copied template dict) from what they replaced."""

from __future__ import annotations

import datetime as dt
import struct

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import n_examples, ns_to_datetime

import rtml  # noqa: E402  (a broken build must fail the suite, not skip it)

S = 10**9
BASE = 1_700_000_000 * S


def _fs(ttl=None, lateness="30s"):
    return rtml.FeatureSet(
        entity="key", timestamp="ts", allowed_lateness=lateness, ttl=ttl,
        features=[
            rtml.count(window="60s"), rtml.sum("x", window="60s"), rtml.mean("x", window="30s"),
            rtml.std("x", window="60s"), rtml.min("x", window="60s"), rtml.last("x"),
            rtml.distinct_count("c", window="60s"), rtml.decayed_sum("x", half_life="20s", window="60s"),
            rtml.time_since_last(), rtml.count(), rtml.sum("x", window="60s", hop="10s"),
        ],
    )


def _bits(v):
    if v is None:
        return None
    if isinstance(v, float):
        return struct.pack("<d", v)
    return (type(v).__name__, v)


def _answers(eng, keys, times):
    out = []
    for k in keys:
        for t in times:
            try:
                out.append([(k, t, n, _bits(v)) for n, v in eng.get(k, at=t).items()])
            except rtml.QueryError as e:  # too far back: the same refusal everywhere
                out.append((k, t, str(e)))
    return out


events_st = st.lists(
    st.tuples(
        st.integers(0, 4),  # key
        st.integers(0, 300),  # seconds
        st.integers(0, 90),  # how far behind (beyond the 30s lateness: late)
        st.one_of(st.none(), st.integers(-40, 40)),  # x (quarters)
        st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
    ),
    max_size=60,
)


@settings(max_examples=n_examples(80), deadline=None)
@given(events_st, st.sampled_from(["int", "str"]), st.sampled_from(["int_ns", "datetime"]))
def test_row_by_row_equals_list_and_table(evs, key_kind, ts_kind):
    fs = _fs()
    if ts_kind == "int_ns":
        fs = rtml.FeatureSet.from_json(fs.to_json().replace('"timestamp_unit": null', '"timestamp_unit": "ns"'))
    key = (lambda k: k) if key_kind == "int" else (lambda k: f"k{k}")
    rows, ns_of = [], []
    for k, sec, back, x, c in sorted(evs, key=lambda e: e[1]):
        ns = BASE + (sec - back) * S + sec * 1000  # distinct microseconds
        rows.append({"key": key(k), "ts": ns if ts_kind == "int_ns" else ns_to_datetime(ns),
                     "x": None if x is None else x / 4, "c": c})
        ns_of.append(ns)
    # One call is one arrival: its events apply in time order, late against the watermark before
    # the call. So a chunk of rows given as a list, as a table, or row by row in time order is
    # the same arrival; across chunks, events behind the lateness are dropped by all three.
    one, as_list, table = fs.online(), fs.online(), fs.online()
    accepted = [0, 0, 0]
    for a in range(0, len(rows), 10):
        chunk = range(a, min(a + 10, len(rows)))
        accepted[0] += sum(one.ingest(rows[i]) for i in sorted(chunk, key=lambda i: ns_of[i]))
        accepted[1] += as_list.ingest([rows[i] for i in chunk])
        tab = pa.table({
            "key": pa.array([rows[i]["key"] for i in chunk]),
            "ts": pa.array([ns_of[i] for i in chunk], pa.timestamp("ns", tz="UTC")),
            "x": pa.array([rows[i]["x"] for i in chunk], pa.float64()),
            "c": pa.array([rows[i]["c"] for i in chunk], pa.string()),
        })
        accepted[2] += table.ingest(tab)
    assert accepted[0] == accepted[1] == accepted[2]
    keys = [key(k) for k in range(6)]
    times = [ns_to_datetime(BASE + s * S + 3000) for s in (-10, 0, 45, 150, 299, 330, 400)]
    want = _answers(as_list, keys, times)
    assert _answers(one, keys, times) == want
    assert _answers(table, keys, times) == want
    for e in (one, table):
        assert e.stats() == as_list.stats()
        assert e.watermark == as_list.watermark


_bad_values = st.one_of(
    st.none(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=2), st.booleans(),
    st.just([1, 2]), st.just(dt.datetime(2024, 1, 1)), st.just(np.int64(3)), st.just(np.float64(2.5)),
)


@settings(max_examples=n_examples(150), deadline=None)
@given(st.fixed_dictionaries({}, optional={"key": _bad_values, "ts": _bad_values, "x": _bad_values,
                                           "c": _bad_values, "extra": _bad_values}))
def test_one_row_dict_fails_and_succeeds_like_a_one_row_list(row):
    fs = _fs()
    base = [{"key": 1, "ts": ns_to_datetime(BASE + i * S), "x": 1.0, "c": "a"} for i in range(5)]
    a, b = fs.online(), fs.online()
    a.ingest(base)
    b.ingest(base)

    def outcome(f):
        try:
            return ("ok", f())
        except Exception as e:  # noqa: BLE001 - compared, not swallowed
            return (type(e), str(e))

    got_dict = outcome(lambda: a.ingest(row))
    # a dict whose key field holds a sequence is a dict of columns: compare with that form
    if isinstance(row.get("key"), list):
        got_other = outcome(lambda: b.ingest(dict(row)))
    else:
        got_other = outcome(lambda: b.ingest([row]))
    assert got_dict == got_other
    if got_dict[0] != "ok":
        assert issubclass(got_dict[0], (rtml.RtmlError, TypeError)), got_dict
    assert a.stats() == b.stats()
    keys = [1, 2] if a.stats()["keys"] <= 1 or isinstance(row.get("key"), int) else [1]
    times = [ns_to_datetime(BASE + 10 * S)]
    assert _answers(a, keys, times) == _answers(b, keys, times)


def test_one_row_errors_name_the_field():
    eng = _fs().online()
    eng.ingest({"key": 1, "ts": ns_to_datetime(BASE), "x": 1.0, "c": "a"})
    with pytest.raises(rtml.SchemaError, match="'x'|x"):
        eng.ingest({"key": 1, "ts": ns_to_datetime(BASE), "c": "a"})
    with pytest.raises(rtml.SchemaError, match="key"):
        eng.ingest({"key": "one", "ts": ns_to_datetime(BASE), "x": 1.0, "c": "a"})
    with pytest.raises(rtml.SchemaError, match="x"):
        eng.ingest({"key": 1, "ts": ns_to_datetime(BASE), "x": float("nan"), "c": "a"})
    with pytest.raises(rtml.SchemaError, match="ts"):
        eng.ingest({"key": 1, "ts": None, "x": 1.0, "c": "a"})
    assert eng.stats()["events_ingested"] == 1
    # a late row is counted, not applied
    eng.ingest({"key": 1, "ts": ns_to_datetime(BASE + 100 * S), "x": 1.0, "c": "a"})
    assert eng.ingest({"key": 1, "ts": ns_to_datetime(BASE), "x": 1.0, "c": "a"}) == 0
    assert eng.stats()["late_events_dropped"] == 1


def test_one_row_with_a_ttl_sweeps_like_a_one_row_list():
    fs = _fs(ttl="2m")
    a, b = fs.online(), fs.online()
    for i in range(40):
        r = {"key": i % 7 if i < 20 else 100 + i % 3, "ts": ns_to_datetime(BASE + i * 9 * S), "x": float(i), "c": None}
        assert a.ingest(r) == b.ingest([r])
        assert a.stats() == b.stats()
    assert a.stats()["keys_evicted"] > 0
    t = [ns_to_datetime(BASE + 400 * S)]
    assert _answers(a, [*range(8), 100, 101, 102], t) == _answers(b, [*range(8), 100, 101, 102], t)


def test_get_dict_order_types_and_nulls():
    fs = _fs()
    eng = fs.online()
    eng.ingest({"key": 1, "ts": ns_to_datetime(BASE), "x": None, "c": None})
    got = eng.get(1, at=ns_to_datetime(BASE + S))
    assert list(got) == fs.feature_names
    assert got["count_60s"] == 1 and type(got["count_60s"]) is int
    assert got["x_mean_30s"] is None and got["x_last"] is None
    assert isinstance(got["time_since_last"], float)
    # a fresh dict every call
    got["count_60s"] = 99
    assert eng.get(1, at=ns_to_datetime(BASE + S))["count_60s"] == 1
    # same values, types and nulls as the table path, for a known and an unknown key
    at = ns_to_datetime(BASE + S)
    for k in (1, 2):
        row = eng.get_many([k], at).to_pylist()[0]
        del row["key"]
        assert [_bits(v) for v in eng.get(k, at=at).values()] == [_bits(v) for v in row.values()]


def _fit(tf, eng, keys, at, scale=1.0):
    feats = eng.get_many(keys, at)
    tab = feats.append_column("amount", pa.array(np.arange(len(keys), dtype=float) * scale + 1))
    return tf.fit(tab)


def test_vector_with_two_engines_refits_and_the_core_object():
    fs1 = _fs()
    fs2 = rtml.FeatureSet(entity="key", timestamp="ts", allowed_lateness="30s",
                          features=[rtml.sum("x", window="60s"), rtml.count(window="60s"), rtml.max("x")])
    e1, e2 = fs1.online(), fs2.online()
    for i in range(50):
        r = {"key": i % 5, "ts": ns_to_datetime(BASE + i * S), "x": float(i % 7), "c": "ab"[i % 2]}
        e1.ingest(r)
        e2.ingest(r)
    at = ns_to_datetime(BASE + 60 * S)
    # reads count_60s and x_sum_60s, both in either feature set (in different positions)
    tf = rtml.Transforms([rtml.ratio("x_sum_60s", "count_60s", name="avg"), rtml.standard_scale("amount"),
                          rtml.passthrough("count_60s")])
    _fit(tf, e1, list(range(5)), at)

    def want(eng, k, amount):
        row = eng.get(k, at=at)
        row["amount"] = amount
        return tf.vector(row)

    for eng in (e1, e2, e1):
        for k in range(6):
            got = eng.vector(k, tf, {"amount": 3.0}, at)
            assert got.dtype == np.float64 and got.flags["C_CONTIGUOUS"] and got.flags["WRITEABLE"]
            assert got.tobytes() == want(eng, k, 3.0).tobytes()
            assert eng.vector(k, tf._t, {"amount": 3.0}, at).tobytes() == got.tobytes()
    # used before its fit (refused), then fitted: the fitted pipeline answers
    tf2 = rtml.Transforms([rtml.ratio("x_sum_60s", "count_60s", name="avg"), rtml.standard_scale("amount")])
    with pytest.raises(rtml.RtmlError, match="fit"):
        e2.vector(1, tf2, {"amount": 3.0}, at)
    _fit(tf2, e1, list(range(5)), at, scale=10.0)
    for eng in (e1, e2):
        row = eng.get(1, at=at)
        row["amount"] = 3.0
        assert eng.vector(1, tf2, {"amount": 3.0}, at).tobytes() == tf2.vector(row).tobytes()
    # a feature set without the inputs: the request row must carry them
    fs3 = rtml.FeatureSet(entity="key", timestamp="ts", features=[rtml.max("x")])
    e3 = fs3.online()
    with pytest.raises(rtml.SchemaError, match="x_sum_60s"):
        e3.vector(1, tf, {"amount": 3.0}, at)
    got = e3.vector(1, tf, {"amount": 3.0, "x_sum_60s": 6.0, "count_60s": 3}, at)
    assert got.tobytes() == tf.vector({"amount": 3.0, "x_sum_60s": 6.0, "count_60s": 3}).tobytes()


def test_vector_argument_errors():
    eng = _fs().online()
    tf = rtml.Transforms([rtml.standard_scale("count_60s")])
    with pytest.raises(TypeError, match="rtml.Transforms"):
        eng.vector(1, object(), None, BASE)
    with pytest.raises(TypeError, match="rtml.Transforms"):
        eng.vector(1, "nope", None, BASE)

    class Broken:
        @property
        def _t(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        eng.vector(1, Broken(), None, BASE)
    at = ns_to_datetime(BASE)
    with pytest.raises(rtml.RtmlError, match="fit"):
        eng.vector(1, tf, None, at)
    eng.ingest({"key": 1, "ts": at, "x": 1.0, "c": "a"})
    eng.ingest({"key": 2, "ts": at, "x": 1.0, "c": "a"})
    tf.fit(eng.get_many([1, 2, 3], ns_to_datetime(BASE + S)))
    assert eng.vector(1, tf, None, ns_to_datetime(BASE + S)).shape == (1,)
    with pytest.raises(TypeError, match="dict"):
        eng.vector(1, tf, [1, 2], at)
    with pytest.raises(rtml.SchemaError, match="key"):
        eng.vector(None, tf, None, at)


@settings(max_examples=n_examples(100), deadline=None)
@given(st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
       st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59, seconds=59),
                     max_value=dt.timedelta(hours=23, minutes=59, seconds=59)),
       st.sampled_from(["aware", "naive", "pandas"]))
def test_row_and_at_instants_are_exact(when, offset, kind):
    """Row times and `at` of any datetime form convert to the exact nanosecond, whatever the
    tz offset (sub-minute and negative ones too)."""
    if kind == "aware":
        ts = when.replace(tzinfo=dt.timezone(offset))
    elif kind == "pandas":
        import pandas as pd
        ts = pd.Timestamp(when.replace(tzinfo=dt.timezone(offset))) + pd.Timedelta(7, "ns")
    else:
        ts = when
    if kind == "pandas":
        want = ts.value
    else:
        aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=dt.timezone.utc)
        want = (aware - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1) * 1000
    fs = rtml.FeatureSet(entity="key", timestamp="ts", timestamp_unit="ns",
                         features=[rtml.count(), rtml.time_since_last()])
    eng = fs.online()
    eng.ingest({"key": 1, "ts": ts})
    assert eng.watermark == want
    # `at` converts the same way (an event is in from the next nanosecond on)
    assert eng.get(1, at=ts) == eng.get(1, at=want) == {"count": 0, "time_since_last": None}
    assert eng.get(1, at=want + 1)["count"] == 1


@pytest.mark.parametrize("call", ["get", "vector", "get_many"])
def test_a_read_that_settles_a_lagging_key_equals_backfill(call):
    """A key with a long unsettled history (it went quiet while the stream moved on) is settled
    by the read itself, under its shard's write lock: the answer is still backfill's."""
    fs = _fs(lateness="5m")
    minute = 60 * S
    rows = [{"key": 0, "ts": ns_to_datetime(BASE + i * minute // 4), "x": float(i % 9), "c": "abc"[i % 3]}
            for i in range(300)]
    rows += [{"key": 1, "ts": ns_to_datetime(BASE + (80 + 3 * i) * minute), "x": None, "c": None} for i in range(20)]
    at = BASE + 140 * minute - 1000
    tab = pa.table({"key": [r["key"] for r in rows], "ts": pa.array([r["ts"] for r in rows], pa.timestamp("us", "UTC")),
                    "x": [r["x"] for r in rows], "c": [r["c"] for r in rows]})
    spine = pa.table({"key": [0], "ts": pa.array([at], pa.timestamp("ns", "UTC"))})
    want = fs.backfill(tab, spine).to_pylist()[0]
    del want["key"]
    want.pop("ts", None)
    eng = fs.online()
    for r in rows:
        eng.ingest(r)
    for _ in range(2):  # settling, then settled
        if call == "get":
            got = eng.get(0, at=ns_to_datetime(at))
        elif call == "get_many":
            got = eng.get_many([0], ns_to_datetime(at)).to_pylist()[0]
            del got["key"]
        else:
            tf = rtml.Transforms([rtml.passthrough(n) for n in fs.feature_names])
            vec = eng.vector(0, tf, None, ns_to_datetime(at))
            got = {n: (None if np.isnan(v) else v) for n, v in zip(fs.feature_names, vec.tolist())}
            want = {n: (None if v is None else float(v)) for n, v in want.items()}
        assert {n: _bits(v) for n, v in got.items()} == {n: _bits(v) for n, v in want.items()}
