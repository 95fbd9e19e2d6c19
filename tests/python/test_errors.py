"""Bad inputs: the right rtml exception, naming the column / field / file, no Rust
panics, and a call that raises changes nothing in the engine."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from helpers import (
    n_examples,
    NS_PER_UNIT,
    assert_not_panic,
    events_table,
    make_feature_set,
    ns_to_datetime,
    raises,
    same_exact,
    spine_table,
)
from reference import Feat

import rtml  # noqa: E402  (a broken build must fail the suite, not skip it)

S = NS_PER_UNIT["s"]
BASE = 1_700_000_000 * S

ENTITY = "driver_id"
TS = "event_time"


def _fs(**kw):
    feats = kw.pop("features", None) or [
        rtml.count(window="1h", name="n"),
        rtml.sum("fare", window="1h", name="fare_sum"),
        rtml.mean("fare", name="fare_mean"),
        rtml.distinct_count("rider", window="1d", name="riders"),
    ]
    return rtml.FeatureSet(entity=ENTITY, timestamp=TS, features=feats, **kw)


def _events(n=6, **over):
    cols = {
        ENTITY: pa.array([i % 2 for i in range(n)], pa.int64()),
        TS: pa.array([BASE + i * S for i in range(n)], pa.timestamp("ns", tz="UTC")),
        "fare": pa.array([float(i) + 0.5 for i in range(n)], pa.float64()),
        "rider": pa.array([f"r{i % 3}" for i in range(n)], pa.string()),
    }
    for k, v in over.items():
        if v is None:
            del cols[k]
        else:
            cols[k] = v
    return pa.table(cols)


def _spine(keys=(0, 1, 2), t=BASE + 100 * S, **over):
    cols = {
        ENTITY: pa.array(list(keys), pa.int64()),
        TS: pa.array([t] * len(keys), pa.timestamp("ns", tz="UTC")),
    }
    for k, v in over.items():
        if v is None:
            del cols[k]
        else:
            cols[k] = v
    return pa.table(cols)


def _row(i, **over):
    r = {ENTITY: i % 2, TS: ns_to_datetime(BASE + i * S), "fare": float(i) + 0.5, "rider": f"r{i % 3}"}
    r.update(over)
    return r


# --------------------------------------------------------------------------
# the exception hierarchy


def test_exception_hierarchy():
    assert issubclass(rtml.RtmlError, Exception)
    for e in (rtml.SpecError, rtml.SchemaError, rtml.QueryError):
        assert issubclass(e, rtml.RtmlError) and issubclass(e, ValueError), e
    assert issubclass(rtml.SnapshotError, rtml.RtmlError)
    assert not issubclass(rtml.SnapshotError, OSError)


# --------------------------------------------------------------------------
# schema errors: backfill


@pytest.mark.parametrize("col", [ENTITY, TS, "fare", "rider"])
def test_backfill_missing_event_column(col):
    with raises(rtml.SchemaError, col):
        _fs().backfill(_events(**{col: None}), _spine())


@pytest.mark.parametrize("col", [ENTITY, TS])
def test_backfill_missing_spine_column(col):
    with raises(rtml.SchemaError, col):
        _fs().backfill(_events(), _spine(**{col: None}))


def test_backfill_missing_custom_spine_columns():
    sp = _spine().rename_columns(["uid", "at"])
    with raises(rtml.SchemaError, "user_key"):
        _fs().backfill(_events(), sp, key="user_key", time="at")
    with raises(rtml.SchemaError, "when"):
        _fs().backfill(_events(), sp, key="uid", time="when")


@pytest.mark.parametrize("ctor", ["sum", "mean", "min", "max", "var", "std", "first", "last", "quantile", "decayed_sum"])
def test_string_column_for_numeric_aggregation(ctor):
    if ctor == "quantile":
        f = rtml.quantile("rider", 0.5, name="f")
    elif ctor == "decayed_sum":
        f = rtml.decayed_sum("rider", half_life="1h", name="f")
    else:
        f = getattr(rtml, ctor)("rider", name="f")
    fs = _fs(features=[f])
    with raises(rtml.SchemaError, "rider"):
        fs.backfill(_events(), _spine())
    eng = fs.online()
    with raises(rtml.SchemaError, "rider"):
        eng.ingest(_events())
    assert eng.stats()["events_ingested"] == 0


def _with_null(arr: pa.Array, i: int) -> pa.Array:
    vals = arr.to_pylist()
    vals[i] = None
    return pa.array(vals, type=arr.type)


@pytest.mark.parametrize("col", [ENTITY, TS])
@pytest.mark.parametrize("where", [0, 3, 5])
def test_null_key_or_timestamp(col, where):
    ev = _events()
    ev = ev.set_column(ev.schema.get_field_index(col), col, _with_null(ev.column(col).combine_chunks(), where))
    with raises(rtml.SchemaError, col):
        _fs().backfill(ev, _spine())
    eng = _fs().online()
    with raises(rtml.SchemaError, col):
        eng.ingest(ev)
    assert eng.stats()["events_ingested"] == 0


@pytest.mark.parametrize("col", [ENTITY, TS])
def test_null_in_spine(col):
    sp = _spine()
    sp = sp.set_column(sp.schema.get_field_index(col), col, _with_null(sp.column(col).combine_chunks(), 1))
    with raises(rtml.SchemaError, col):
        _fs().backfill(_events(), sp)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_values_rejected_unless_skip(bad):
    fare = pa.array([1.0, 2.0, bad, 4.0, 5.0, 6.0], pa.float64())
    ev = _events(fare=fare)
    with raises(rtml.SchemaError, "fare"):
        _fs().backfill(ev, _spine())
    eng = _fs().online()
    with raises(rtml.SchemaError, "fare"):
        eng.ingest(ev)
    assert eng.stats()["events_ingested"] == 0
    # on_nonfinite="skip": the value is a null, and the row still counts as an event
    fs = _fs(on_nonfinite="skip")
    out = fs.backfill(ev, _spine(keys=(0,)))
    row = out.to_pylist()[0]
    assert row["n"] == 3
    assert row["fare_sum"] == 1.0 + 5.0  # key 0 has fares 1, nan->null, 5
    eng = fs.online()
    eng.ingest(ev)
    assert same_exact(eng.get(0, at=ns_to_datetime(BASE + 100 * S))["fare_sum"], row["fare_sum"])


def test_nonfinite_in_column_no_feature_reads():
    # only columns that features read are checked
    ev = _events().append_column("other", pa.array([float("nan")] * 6))
    out = _fs().backfill(ev, _spine())
    assert out.num_rows == 3


def test_integer_timestamps_need_timestamp_unit():
    ev = _events(**{TS: pa.array([BASE + i * S for i in range(6)], pa.int64())})
    sp = _spine(**{TS: pa.array([BASE + 100 * S] * 3, pa.int64())})
    with raises(rtml.SchemaError, TS):
        _fs().backfill(ev, sp)
    out = _fs(timestamp_unit="ns").backfill(ev, sp)
    want = _fs().backfill(_events(), _spine())
    for n in ("n", "fare_sum", "fare_mean", "riders"):
        assert out.column(n).equals(want.column(n))


def test_timestamp_out_of_range():
    # 10**11 seconds is year ~5138, beyond int64 nanoseconds
    ev = _events(**{TS: pa.array([1_700_000_000 + i for i in range(5)] + [10**11], pa.int64())})
    sp = _spine(**{TS: pa.array([1_700_000_100] * 3, pa.int64())})
    with raises(rtml.SchemaError, TS):
        _fs(timestamp_unit="s").backfill(ev, sp)
    eng = _fs(timestamp_unit="s").online()
    with raises(rtml.SchemaError, TS):
        eng.ingest(ev)
    assert eng.stats()["events_ingested"] == 0
    # Arrow timestamp[s] too
    ev2 = _events(**{TS: pa.array([1_700_000_000 + i for i in range(5)] + [-(10**11)], pa.timestamp("s"))})
    with raises(rtml.SchemaError, TS):
        _fs().backfill(ev2, _spine())


def test_key_kind_mismatch_between_events_and_spine():
    sp = _spine(**{ENTITY: pa.array(["0", "1", "2"])})
    with raises(rtml.SchemaError, ENTITY):
        _fs().backfill(_events(), sp)


@pytest.mark.parametrize("typ", [pa.float64(), pa.timestamp("ns")])
def test_bad_key_dtype(typ):
    if typ == pa.timestamp("ns"):
        arr = pa.array([BASE] * 6, typ)
    else:
        arr = pa.array([0.0, 1.0] * 3, typ)
    with raises(rtml.SchemaError, ENTITY):
        _fs().backfill(_events(**{ENTITY: arr}), _spine())


def test_bad_timestamp_dtype():
    with raises(rtml.SchemaError, TS):
        _fs().backfill(_events(**{TS: pa.array([f"2023-01-0{i + 1}" for i in range(6)])}), _spine())
    with raises(rtml.SchemaError, TS):
        _fs(timestamp_unit="s").backfill(_events(**{TS: pa.array([1.5] * 6)}), _spine())


# --------------------------------------------------------------------------
# empty inputs


def test_empty_events_backfill_gives_empty_values():
    feats = [Feat(a, None if a in ("count", "time_since_last") else "x", 10 * S,
                  q=0.5 if a == "quantile" else None,
                  half_life=S if a == "decayed_sum" else None, name=a) for a in ref.ALL_AGGS]
    fs = make_feature_set(feats)
    ev = events_table([], "int", "ts", "ns", columns=("x",))
    assert ev.num_rows == 0
    sp = spine_table([(1, BASE), (2, BASE + S)], "int", "ts", "ns")
    out = fs.backfill(ev, sp)
    assert out.num_rows == 2
    for f in feats:
        assert out.schema.field(f.name).type == (pa.int64() if f.is_int else pa.float64())
        for v in out.column(f.name).to_pylist():
            assert same_exact(v, ref.empty_value(f)), (f.name, v, ref.empty_value(f))


def test_empty_spine_gives_zero_rows():
    fs = _fs()
    sp = _spine(keys=()).append_column("label", pa.array([], pa.string()))
    out = fs.backfill(_events(), sp)
    assert out.num_rows == 0
    assert out.column_names == [ENTITY, TS, "label", "n", "fare_sum", "fare_mean", "riders"]
    assert out.schema.field("n").type == pa.int64()
    assert out.schema.field("fare_sum").type == pa.float64()
    assert out.schema.field("riders").type == pa.int64()
    assert out.schema.field(TS).type == pa.timestamp("ns", tz="UTC")


def test_empty_both():
    out = _fs().backfill(_events(n=0), _spine(keys=()))
    assert out.num_rows == 0


# --------------------------------------------------------------------------
# spec errors


@pytest.mark.parametrize("window", ["1x", "-5m", "", "0s", "5", "m", "1h-", "1.5.h", " ", "9999999999999999999999w"])
def test_malformed_window(window):
    with raises(rtml.SpecError):
        rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.sum("v", window=window)])


@pytest.mark.parametrize("hl", ["1x", "-5m", "", "0s"])
def test_malformed_half_life(hl):
    with raises(rtml.SpecError):
        rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.decayed_sum("v", half_life=hl)])


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_quantile_level(q):
    with raises(rtml.SpecError):
        rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.quantile("v", q)])


def test_duplicate_feature_names():
    with raises(rtml.SpecError, "v_sum"):
        rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.sum("v"), rtml.sum("v")])
    with raises(rtml.SpecError, "same"):
        rtml.FeatureSet(entity="k", timestamp="t",
                        features=[rtml.sum("v", name="same"), rtml.count(name="same")])


@pytest.mark.parametrize("field,value", [("allowed_lateness", "soon"), ("ttl", "-1d"), ("timestamp_unit", "fortnight"),
                                         ("on_nonfinite", "ignore")])
def test_bad_feature_set_options(field, value):
    with raises(rtml.SpecError):
        rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.sum("v")], **{field: value})


def test_ttl_shorter_than_window_plus_lateness():
    with raises(rtml.SpecError):
        rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.sum("v", window="1d")],
                        allowed_lateness="1h", ttl="1d")
    # exactly window + lateness is fine
    rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.sum("v", window="1d")],
                    allowed_lateness="1h", ttl="25h")


def _spec():
    fs = rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.sum("v", window="1h"), rtml.count()])
    return json.loads(fs.to_json())


def _replace(obj, pred, new):
    """Replace every string value / dict key satisfying pred by new; return the count."""
    n = 0
    if isinstance(obj, dict):
        for k in list(obj):
            v = obj[k]
            if isinstance(v, str) and pred(v):
                obj[k] = new
                n += 1
            else:
                n += _replace(v, pred, new)
            if isinstance(k, str) and pred(k):
                obj[new] = obj.pop(k)
                n += 1
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, str) and pred(v):
                obj[i] = new
                n += 1
            else:
                n += _replace(v, pred, new)
    return n


def test_spec_json_unknown_aggregation():
    spec = _spec()
    assert _replace(spec, lambda s: s == "sum", "median_of_medians") >= 1, spec
    with raises(rtml.SpecError, "median_of_medians"):
        rtml.FeatureSet.from_json(json.dumps(spec))


@pytest.mark.parametrize("bad", ["1x", "-5m", ""])
def test_spec_json_malformed_window(bad):
    spec = _spec()
    n = _replace(spec, lambda s: s == "1h", bad)
    if n == 0:
        # windows held as integers (ns): make them non-positive instead
        def walk(o):
            c = 0
            if isinstance(o, dict):
                for k, v in o.items():
                    if v == 3_600 * S and not isinstance(v, bool):
                        o[k] = -5 if bad else 0
                        c += 1
                    else:
                        c += walk(v)
            elif isinstance(o, list):
                for v in o:
                    c += walk(v)
            return c

        n = walk(spec)
    assert n >= 1, spec
    with raises(rtml.SpecError):
        rtml.FeatureSet.from_json(json.dumps(spec))


def test_spec_json_newer_version():
    spec = _spec()
    assert "version" in spec, spec
    spec["version"] = 999
    with raises(rtml.SpecError):
        rtml.FeatureSet.from_json(json.dumps(spec))
    try:
        rtml.FeatureSet.from_json(json.dumps(spec))
    except rtml.SpecError as e:
        assert "version" in str(e).lower() or "999" in str(e), f"message does not say why: {e}"


@pytest.mark.parametrize("text", ["", "{", "null", "[]", "{}", '{"version": 1}', "\x00\xff", '{"version": "one"}'])
def test_spec_json_garbage(text):
    with raises(rtml.SpecError):
        rtml.FeatureSet.from_json(text)


def test_spec_json_roundtrip_is_stable():
    s = rtml.FeatureSet.from_json(json.dumps(_spec())).to_json()
    assert json.loads(s) == _spec()


# --------------------------------------------------------------------------
# snapshots


def _engine_with_state():
    eng = _fs(allowed_lateness="5s").online()
    eng.ingest(_events(n=40))
    return eng


def _answers(eng, t=BASE + 50 * S):
    return [eng.get(k, at=ns_to_datetime(t)) for k in (0, 1, 2)]


def test_snapshot_roundtrip(tmp_path):
    eng = _engine_with_state()
    p = tmp_path / "ok.snap"
    eng.snapshot(str(p))
    eng2 = rtml.OnlineEngine.restore(str(p))
    assert _answers(eng2) == _answers(eng)
    # pathlib.Path works too
    eng.snapshot(tmp_path / "ok2.snap")
    assert _answers(rtml.OnlineEngine.restore(tmp_path / "ok2.snap")) == _answers(eng)


def test_truncated_snapshot(tmp_path):
    eng = _engine_with_state()
    good = tmp_path / "good.snap"
    eng.snapshot(str(good))
    data = good.read_bytes()
    assert len(data) > 16
    for n in sorted({0, 1, 4, 8, 12, 16, len(data) // 3, len(data) // 2, len(data) - 4, len(data) - 1}):
        p = tmp_path / f"trunc_{n}.snap"
        p.write_bytes(data[:n])
        with raises(rtml.SnapshotError, str(p)):
            rtml.OnlineEngine.restore(str(p))


def test_bit_flipped_snapshot(tmp_path):
    eng = _engine_with_state()
    good = tmp_path / "good.snap"
    eng.snapshot(str(good))
    data = good.read_bytes()
    n = len(data)
    positions = sorted(set(list(range(min(n, 24))) + list(range(max(0, n - 16), n)) + [i * n // 48 for i in range(48)]))
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        p = tmp_path / f"flip_{pos}.snap"
        p.write_bytes(bytes(bad))
        with raises(rtml.SnapshotError, str(p)):
            rtml.OnlineEngine.restore(str(p))


def test_appended_garbage_snapshot(tmp_path):
    eng = _engine_with_state()
    good = tmp_path / "good.snap"
    eng.snapshot(str(good))
    p = tmp_path / "long.snap"
    p.write_bytes(good.read_bytes() + b"\x00garbage")
    with raises(rtml.SnapshotError, str(p)):
        rtml.OnlineEngine.restore(str(p))


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PAR1" + b"\x00" * 100 + b"PAR1", bytes(range(256)) * 8])
def test_foreign_snapshot_file(tmp_path, content):
    p = tmp_path / "foreign.bin"
    p.write_bytes(content)
    with raises(rtml.SnapshotError, str(p)):
        rtml.OnlineEngine.restore(str(p))


def test_missing_snapshot_file(tmp_path):
    p = tmp_path / "nope" / "missing.snap"
    with raises(Exception, str(p)):
        rtml.OnlineEngine.restore(str(p))
    # snapshot into a directory that does not exist: an error naming the path, engine intact
    eng = _engine_with_state()
    before = (eng.stats(), _answers(eng))
    with raises(Exception, str(p)):
        eng.snapshot(str(p))
    assert (eng.stats(), _answers(eng)) == before


# --------------------------------------------------------------------------
# a failed ingest changes nothing


BAD_ROWS = {
    "null_key": {ENTITY: None},
    "null_ts": {TS: None},
    "missing_ts": "drop:" + TS,
    "missing_key": "drop:" + ENTITY,
    "nan": {"fare": float("nan")},
    "inf": {"fare": float("inf")},
    "string_fare": {"fare": "12.5"},
    "out_of_range_ts": {TS: "huge"},
}


def _bad_row(i, kind):
    spec = BAD_ROWS[kind]
    r = _row(i)
    if isinstance(spec, str):
        del r[spec.split(":", 1)[1]]
    elif spec.get(TS) == "huge":
        r[TS] = 10**30
    else:
        r.update(spec)
    return r


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_failed_ingest_changes_nothing(kind, where):
    eng = _fs(allowed_lateness="1s").online()
    eng.ingest(_events(n=10))
    ans0 = _answers(eng, BASE + 20 * S)
    stats0 = eng.stats()
    # a batch of good rows that would move the watermark far ahead, plus one bad row
    rows = [_row(i, **{TS: ns_to_datetime(BASE + (1000 + i) * S)}) for i in range(20, 26)]
    rows.append(_row(5, **{ENTITY: 77}))  # a new key
    pos = {"first": 0, "middle": 3, "last": len(rows)}[where]
    rows.insert(pos, _bad_row(30, kind))
    col = {"nan": "fare", "inf": "fare", "string_fare": "fare", "null_key": ENTITY, "missing_key": ENTITY}.get(kind, TS)
    with raises(rtml.SchemaError, col):
        eng.ingest(rows)
    assert eng.stats() == stats0
    assert _answers(eng, BASE + 20 * S) == ans0
    assert eng.get(77, at=ns_to_datetime(BASE + 20 * S)) == eng.get(12345, at=ns_to_datetime(BASE + 20 * S))
    # the watermark did not move: an event at 15s is still on time
    eng.ingest(_row(15))
    assert eng.stats()["late_events_dropped"] == 0
    assert eng.stats()["events_ingested"] == stats0["events_ingested"] + 1


def test_failed_table_ingest_changes_nothing():
    eng = _fs().online()
    eng.ingest(_events(n=10))
    ans0 = _answers(eng, BASE + 20 * S)
    stats0 = eng.stats()
    fare = pa.array([1.0] * 9 + [float("nan")], pa.float64())
    ev = _events(n=10, fare=fare, **{TS: pa.array([BASE + (500 + i) * S for i in range(10)], pa.timestamp("ns", tz="UTC"))})
    with raises(rtml.SchemaError, "fare"):
        eng.ingest(ev)
    assert eng.stats() == stats0
    assert _answers(eng, BASE + 20 * S) == ans0


def test_failed_multi_batch_ingest_changes_nothing():
    # a RecordBatchReader whose second batch is bad: nothing from the first batch is applied
    eng = _fs().online()
    eng.ingest(_events(n=10))
    ans0 = _answers(eng, BASE + 20 * S)
    stats0 = eng.stats()
    good = _events(n=10, **{TS: pa.array([BASE + (500 + i) * S for i in range(10)], pa.timestamp("ns", tz="UTC"))})
    bad = _events(n=10, **{ENTITY: pa.array([1] * 9 + [None], pa.int64())})
    reader = pa.RecordBatchReader.from_batches(good.schema, good.to_batches() + bad.to_batches())
    with raises(rtml.SchemaError, ENTITY):
        eng.ingest(reader)
    assert eng.stats() == stats0
    assert _answers(eng, BASE + 20 * S) == ans0


def test_large_input_reports_the_first_bad_row_and_changes_nothing():
    # Over 65,536 rows, columns convert in parallel: the error is still the first one in row
    # order (batch 1's null key, not batch 2's NaN or batch 3's null key), and nothing applies.
    import numpy as np

    eng = _fs().online()
    eng.ingest(_events(n=10))
    ans0 = _answers(eng, BASE + 20 * S)
    stats0 = eng.stats()
    n = 40_000
    batches = []
    for b in range(4):
        keys = np.arange(n, dtype=np.int64) % 50
        key_mask = np.zeros(n, dtype=bool)
        fare = np.arange(n, dtype=np.float64) + 0.5
        if b == 1:
            key_mask[123] = True
        if b == 2:
            fare[7] = np.nan
        if b == 3:
            key_mask[5] = True
        batches.append(pa.record_batch({
            ENTITY: pa.array(keys, mask=key_mask),
            TS: pa.array(BASE + (1000 + b * n + np.arange(n)) * S, pa.timestamp("ns", tz="UTC")),
            "fare": pa.array(fare),
            "rider": pa.array([f"r{i % 3}" for i in range(n)], pa.string()),
        }))
    table = pa.Table.from_batches(batches)
    with raises(rtml.SchemaError, ENTITY, f"row {n + 123}"):
        eng.ingest(table)
    assert eng.stats() == stats0
    assert _answers(eng, BASE + 20 * S) == ans0
    with raises(rtml.SchemaError, ENTITY, f"row {n + 123}"):
        _fs().backfill(table, _spine())
    # without batch 1, batch 2's NaN fare is the first error
    with raises(rtml.SchemaError, "fare", f"row {n + 7}"):
        eng.ingest(pa.Table.from_batches([batches[0], batches[2], batches[3]]))


# --------------------------------------------------------------------------
# queries before the settled point


@settings(max_examples=n_examples(60))
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 200), st.floats(-1e6, 1e6)), min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(0, 3), st.integers(-20, 260)), min_size=1, max_size=15),
    st.sampled_from([0, 5]),
)
def test_early_queries_are_exact_or_query_error(evs, qs, late_s):
    """A query at any instant is either answered exactly (== backfill) or raises QueryError."""
    events = sorted(({"key": k, "ts": BASE + s * S, "x": x} for k, s, x in evs), key=lambda e: e["ts"])
    feats = [Feat("sum", "x", 10 * S, name="s10"), Feat("count", None, None, name="n"),
             Feat("last", "x", 30 * S, name="l30"), Feat("quantile", "x", 50 * S, q=0.5, name="med"),
             Feat("decayed_sum", "x", 20 * S, half_life=3 * S, name="ds")]
    kw = {"allowed_lateness": f"{late_s}s"} if late_s else {}
    fs = make_feature_set(feats, **kw)
    eng = fs.online()
    eng.ingest(events_table(events, "int", "ts", "ns", columns=("x",)))
    queries = [(k, BASE + s * S) for k, s in qs]
    want = fs.backfill(events_table(events, "int", "ts", "ns", columns=("x",)),
                       spine_table(queries, "int", "ts", "ns", extra=False)).to_pylist()
    wm = events[-1]["ts"]
    for (k, t), w in zip(queries, want):
        try:
            got = eng.get(k, at=ns_to_datetime(t))
        except rtml.QueryError as e:
            assert t < wm - late_s * S, f"QueryError at t={t} >= watermark - lateness: {e}"
            continue
        for f in feats:
            assert same_exact(got[f.name], w[f.name]), (k, t, f.name, got[f.name], w[f.name])


def test_query_error_leaves_engine_usable():
    fs = _fs()
    eng = fs.online()
    eng.ingest(_events(n=40))
    # key 0's state is settled up to its last event (BASE + 38 s; allowed_lateness 0): every
    # instant below is before it, so each query is refused, and the engine stays usable
    for t in (BASE - 10**6 * S, BASE, BASE + 10 * S):
        r = assert_not_panic(eng.get, 0, at=ns_to_datetime(t))
        assert isinstance(r, rtml.QueryError), r
        assert "settled up to" in str(r), r
    assert eng.get(0, at=ns_to_datetime(BASE + 100 * S))["n"] == 20


# --------------------------------------------------------------------------
# garbage never panics


def test_garbage_inputs_never_panic(tmp_path):
    fs = _fs()
    eng = fs.online()
    eng.ingest(_events())
    before = _answers(eng)
    calls = [
        lambda: fs.backfill(None, _spine()),
        lambda: fs.backfill(_events(), None),
        lambda: fs.backfill(123, "abc"),
        lambda: fs.backfill(_events(), _spine(), key=5),
        lambda: eng.ingest(None),
        lambda: eng.ingest(42),
        lambda: eng.ingest("no/such/file.parquet"),
        lambda: eng.ingest([1, 2, 3]),
        lambda: eng.ingest([{ENTITY: 1}]),
        lambda: eng.ingest({ENTITY: [1, 2], TS: [ns_to_datetime(BASE)], "fare": [1.0], "rider": ["a"]}),
        lambda: eng.ingest([_row(1, **{ENTITY: 2**70})]),
        lambda: eng.ingest([_row(1, **{ENTITY: "string key for an int engine"})]),
        lambda: eng.ingest([_row(1, fare=[1.0, 2.0])]),
        lambda: eng.ingest([_row(1, fare=10**400)]),
        lambda: eng.ingest([_row(1, **{TS: 2**63 - 1})]),
        lambda: eng.ingest([_row(1, **{TS: -(2**63)})]),
        lambda: eng.ingest(_events(**{ENTITY: pa.array([2**64 - 1] * 6, pa.uint64())})),
        lambda: eng.get(None),
        lambda: eng.get([1, 2]),
        lambda: eng.get(1, at="yesterday"),
        lambda: eng.get(1, at=float("nan")),
        lambda: eng.get(1, at=object()),
        lambda: eng.get(2**70, at=ns_to_datetime(BASE)),
        lambda: eng.get_many(None),
        lambda: eng.get_many([1, "a"]),
        lambda: eng.snapshot(""),
        lambda: rtml.OnlineEngine.restore(""),
        lambda: rtml.OnlineEngine.restore(str(tmp_path)),
        lambda: rtml.FeatureSet(entity=None, timestamp=TS, features=[rtml.count()]),
        lambda: rtml.FeatureSet(entity=ENTITY, timestamp=TS, features=[None]),
        lambda: rtml.FeatureSet(entity=ENTITY, timestamp=TS, features="sum"),
        lambda: rtml.FeatureSet(entity=ENTITY, timestamp=TS, features=[]),
        lambda: rtml.FeatureSet(entity=ENTITY, timestamp=ENTITY, features=[rtml.count()]),
        lambda: rtml.quantile("x", "high"),
        lambda: rtml.sum(None),
        lambda: rtml.sum(""),
        lambda: rtml.sum("x", window=-5),
        lambda: rtml.sum("x", window=10**30),
        lambda: rtml.sum("x", window=__import__("datetime").timedelta(0)),
        lambda: rtml.sum("x", window=__import__("datetime").timedelta(microseconds=-1)),
        lambda: rtml.decayed_sum("x", half_life=None),
        lambda: rtml.FeatureSet.from_json(None),
        lambda: rtml.FeatureSet.from_json("{" * 10000),
        lambda: rtml.FeatureSet(entity=ENTITY, timestamp=TS, features=[rtml.sum("fare", window="106751d")]),
        lambda: rtml.FeatureSet(entity=ENTITY, timestamp=TS, features=[rtml.sum("fare", window="1000000w")]),
    ]
    for i, c in enumerate(calls):
        try:
            assert_not_panic(c)
        except AssertionError as e:
            raise AssertionError(f"call #{i}: {e}") from None
    assert _answers(eng) == before
    assert eng.stats()["events_ingested"] == 6


@settings(max_examples=n_examples(60))
@given(st.lists(st.fixed_dictionaries({}, optional={
    ENTITY: st.one_of(st.none(), st.integers(-(2**64), 2**64), st.text(max_size=3), st.floats()),
    TS: st.one_of(st.none(), st.integers(-(2**64), 2**64), st.datetimes(), st.text(max_size=3)),
    "fare": st.one_of(st.none(), st.floats(), st.integers(-(2**70), 2**70), st.text(max_size=2), st.booleans()),
    "rider": st.one_of(st.none(), st.text(max_size=3), st.integers()),
}), max_size=5))
def test_random_row_dicts_never_panic_and_fail_atomically(rows):
    eng = _fs().online()
    eng.ingest(_events())
    ans0 = _answers(eng)
    stats0 = eng.stats()
    r = assert_not_panic(eng.ingest, rows)
    if isinstance(r, Exception):
        assert isinstance(r, (rtml.RtmlError, TypeError)), repr(r)
        assert eng.stats() == stats0
        assert _answers(eng) == ans0
