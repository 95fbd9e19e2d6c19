"""Composite entity keys (``entity=["driver_id", "zone"]``): backfill against a slow pure-Python
reference and against a single-key backfill on a concatenated key column (bit for bit), online
reads against backfill across arrival orders, every input form, and the error cases."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rtml
import reference as ref
from helpers import raises, same_exact
from reference import Feat

S = 1_000_000_000
BASE = 1_700_000_000 * S

FEATS = [
    Feat("count", window=60 * S, name="count_60s"),
    Feat("sum", "x", window=60 * S, name="x_sum_60s"),
    Feat("mean", "x", name="x_mean"),
    Feat("min", "x", window=120 * S, name="x_min_120s"),
    Feat("max", "x", name="x_max"),
    Feat("last", "x", window=90 * S, name="x_last_90s"),
    Feat("distinct_count", "s", window=60 * S, name="s_distinct_60s"),
    Feat("time_since_last", name="tsl"),
]


def _feature(f: Feat):
    kw = {"name": f.name}
    if f.window is not None:
        kw["window"] = f"{f.window // S}s"
    if f.agg == "count":
        return rtml.count(**kw)
    if f.agg == "time_since_last":
        return rtml.time_since_last(**kw)
    return getattr(rtml, f.agg)(f.col, **kw)


def _fs(entity=("driver", "zone"), **kw):
    kw.setdefault("timestamp_unit", "ns")
    return rtml.FeatureSet(list(entity) if not isinstance(entity, str) else entity, "ts",
                           [_feature(f) for f in FEATS], **kw)


def _events(rng: random.Random, n: int, drivers=("a", "ab", "b", "bc"), zones=(1, 2, 12)):
    """Events whose parts are chosen so that joining them without a separator collides
    (("a", 12) and ("a1", 2) would both read "a12")."""
    out = []
    for _ in range(n):
        out.append({
            "driver": rng.choice(drivers),
            "zone": rng.choice(zones),
            "ts": BASE + rng.randrange(0, 600) * S,
            "x": rng.choice([None, float(rng.randrange(-5, 20)) / 4]),
            "s": rng.choice(["p", "q", "r", None]),
        })
    return out


def _table(rows, cols=("driver", "zone", "ts", "x", "s")):
    types = {"driver": pa.string(), "zone": pa.int64(), "ts": pa.int64(), "x": pa.float64(),
             "s": pa.string(), "dz": pa.string()}
    return pa.table({c: pa.array([r[c] for r in rows], types[c]) for c in cols})


def _queries(rng: random.Random, n: int, drivers=("a", "ab", "b", "bc", "zz"), zones=(1, 2, 12)):
    return [((rng.choice(drivers), rng.choice(zones)), BASE + rng.randrange(0, 700) * S)
            for _ in range(n)]


def _spine(queries):
    return pa.table({
        "driver": pa.array([k[0] for k, _ in queries], pa.string()),
        "zone": pa.array([k[1] for k, _ in queries], pa.int64()),
        "ts": pa.array([t for _, t in queries], pa.int64()),
    })


def _ref_rows(events, queries):
    keyed = [dict(e, key=(e["driver"], e["zone"])) for e in events]
    return ref.evaluate(FEATS, keyed, queries, "key", "ts"), ref.evaluate_scales(
        FEATS, keyed, queries, "key", "ts")


@pytest.mark.parametrize("seed", range(4))
def test_backfill_matches_the_reference(seed):
    rng = random.Random(seed)
    events = _events(rng, 300)
    queries = _queries(rng, 200)
    fs = _fs()
    spine = _spine(queries)
    out = fs.backfill(_table(events), spine)
    assert out.column_names == ["driver", "zone", "ts", *fs.feature_names]
    assert out.select(["driver", "zone", "ts"]).equals(spine)
    want, scales = _ref_rows(events, queries)
    errors = []
    for f in FEATS:
        got = out.column(f.name).to_pylist()
        for i, (q, w) in enumerate(zip(queries, want)):
            msg = ref.check_value(f, got[i], w[f.name], scales[i].get(f.name, 0.0))
            if msg:
                errors.append(f"row {i} {q} {f.name}: {msg}")
    assert not errors, "\n".join(errors[:10])


@pytest.mark.parametrize("seed", range(3))
def test_backfill_equals_a_single_key_on_a_joined_column(seed):
    rng = random.Random(100 + seed)
    events = _events(rng, 400)
    queries = _queries(rng, 300)
    # a joined column with an unambiguous separator is the same grouping as the tuple
    for e in events:
        e["dz"] = f"{e['driver']}|{e['zone']}"
    composite = _fs().backfill(_table(events), _spine(queries))
    single_spine = pa.table({"dz": [f"{k[0]}|{k[1]}" for k, _ in queries],
                             "ts": pa.array([t for _, t in queries], pa.int64())})
    single = _fs(entity="dz").backfill(_table(events, ("dz", "ts", "x", "s")), single_spine)
    names = _fs().feature_names
    for n in names:
        assert composite.schema.field(n).type == single.schema.field(n).type
        a, b = composite.column(n).to_pylist(), single.column(n).to_pylist()
        assert all(same_exact(x, y) for x, y in zip(a, b)), n


def test_parts_order_and_kinds_are_part_of_the_key():
    # ("a", 12) and ("a1", 2) join to the same text without a separator: different keys here
    fs = rtml.FeatureSet(["p", "q"], "ts", [rtml.count()], timestamp_unit="s")
    ev = {"p": ["a", "a1", "a1"], "q": ["12", "2", "2"], "ts": [1, 2, 3]}
    sp = {"p": ["a", "a1"], "q": ["12", "2"], "ts": [10, 10]}
    assert fs.backfill(ev, sp)["count"].to_pylist() == [1, 2]
    eng = fs.online(ev)
    assert eng.get(("a", "12"), at=10) == {"count": 1}
    assert eng.get(("a1", "2"), at=10) == {"count": 2}
    assert eng.get(("12", "a"), at=10) == {"count": 0}
    assert ("12", "a") not in eng and ("a", "12") in eng and len(eng) == 2


def _online_answers(fs, batches, queries):
    eng = fs.online()
    for b in batches:
        if b:
            eng.ingest(b)
    at = [t for _, t in queries]
    got = [eng.get(k, at=t) for k, t in queries]
    many = eng.get_many([k for k, _ in queries], at=at)
    return eng, got, many


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_batches=st.integers(1, 6))
def test_online_equals_backfill_across_arrival_orders(seed, n_batches):
    rng = random.Random(seed)
    events = _events(rng, 60)
    # every event arrives within allowed_lateness: none is late, whatever the order
    fs = _fs(allowed_lateness="1h", max_ahead=None)
    last = max(e["ts"] for e in events)
    queries = [((d, z), last + rng.randrange(1, 120) * S)
               for d, z in {(e["driver"], e["zone"]) for e in events}]
    queries.append((("zz", 1), last + S))
    expected = fs.backfill(_table(events), _spine(queries))
    order = events[:]
    rng.shuffle(order)
    cuts = sorted(rng.randrange(0, len(order) + 1) for _ in range(n_batches - 1))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]
    eng, got, many = _online_answers(fs, batches, queries)
    assert many.column_names[:2] == ["driver", "zone"]
    assert many.column("driver").to_pylist() == [k[0] for k, _ in queries]
    assert many.column("zone").to_pylist() == [k[1] for k, _ in queries]
    assert many.schema.field("zone").type == pa.int64()
    for n in fs.feature_names:
        want = expected.column(n).to_pylist()
        assert all(same_exact(g[n], w) for g, w in zip(got, want)), n
        assert all(same_exact(g, w) for g, w in zip(many.column(n).to_pylist(), want)), n
    # vector: the same features through transforms
    tf = rtml.Transforms([rtml.passthrough("count_60s"), rtml.passthrough("x_sum_60s")])
    tf.fit(expected)
    for i, (k, t) in enumerate(queries):
        v = eng.vector(k, tf, at=t)
        s = expected["x_sum_60s"][i].as_py()
        want = np.array([expected["count_60s"][i].as_py(), np.nan if s is None else s])
        assert v.tobytes() == want.tobytes()


def _forms(rows):
    import pandas as pd
    import polars as pl

    table = _table(rows)
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    return {
        "pyarrow": table,
        "pandas": table.to_pandas(),
        "polars": pl.from_arrow(table),
        "dict of lists": cols,
        "list of dicts": [dict(r) for r in rows],
        "one dict at a time": None,
    }


def test_every_input_form_gives_the_same_state():
    rng = random.Random(7)
    rows = sorted(_events(rng, 50), key=lambda r: r["ts"])
    fs = _fs(max_ahead=None)
    keys = sorted({(r["driver"], r["zone"]) for r in rows}) + [("zz", 2)]
    at = max(r["ts"] for r in rows) + S
    answers = {}
    for name, data in _forms(rows).items():
        eng = fs.online()
        if data is None:
            for r in rows:
                eng.ingest(dict(r))
        else:
            assert eng.ingest(data) == len(rows), name
        answers[name] = eng.get_many(keys, at=at)
        # the backfill takes every form too
        if data is not None and name != "list of dicts":
            out = fs.backfill(data, _spine([(k, at) for k in keys]), output="arrow")
            assert out.select(fs.feature_names).equals(answers[name].select(fs.feature_names)), name
    first = answers["pyarrow"]
    for name, got in answers.items():
        assert got.equals(first), name


def test_backfill_keeps_the_spine_kind_and_its_part_columns():
    import pandas as pd
    import polars as pl

    fs = rtml.FeatureSet(["d", "z"], "ts", [rtml.count()], timestamp_unit="s")
    ev = {"d": ["a", "a", "b"], "z": [1, 2, 1], "ts": [1, 2, 3]}
    sp = pd.DataFrame({"z": [1, 2, 1], "d": ["a", "a", "b"], "ts": [9, 9, 9]}, index=[5, 6, 7])
    out = fs.backfill(ev, sp)
    assert list(out.index) == [5, 6, 7] and list(out.columns) == ["z", "d", "ts", "count"]
    assert out["count"].tolist() == [1, 1, 1]
    out = fs.backfill(ev, pl.from_pandas(sp))
    assert isinstance(out, pl.DataFrame) and out["count"].to_list() == [1, 1, 1]
    # spine key columns named otherwise: key= lists them in key order
    sp2 = pa.table({"driver": ["a", "b"], "zone": [2, 1], "t": [9, 9]})
    out = fs.backfill(ev, sp2, key=["driver", "zone"], time="t")
    assert out["count"].to_pylist() == [1, 1]


def test_spec_json_single_key_unchanged_and_composite_round_trip():
    single = rtml.FeatureSet("k", "ts", [rtml.count()])
    assert json.loads(single.to_json())["entity"] == "k"
    assert single.entity == "k" and single.entity_columns == ["k"] and not single.is_composite
    fs = rtml.FeatureSet(["driver_id", "zone"], "ts", [rtml.count()])
    doc = json.loads(fs.to_json())
    assert doc["entity"] == ["driver_id", "zone"] and doc["version"] == 1
    assert fs.entity == ["driver_id", "zone"] and fs.is_composite
    assert rtml.FeatureSet.from_json(fs.to_json()) == fs
    assert fs != rtml.FeatureSet(["zone", "driver_id"], "ts", [rtml.count()])
    assert "entity=['driver_id', 'zone']" in repr(fs)
    assert rtml.FeatureSet(("driver_id", "zone"), "ts", [rtml.count()]) == fs
    # a list of one column is that column
    assert rtml.FeatureSet(["k"], "ts", [rtml.count()]) == single


def test_snapshot_round_trip_keeps_keys_and_kind(tmp_path):
    fs = rtml.FeatureSet(["d", "z"], "ts", [rtml.count(), rtml.sum("x")], timestamp_unit="s")
    eng = fs.online()
    eng.ingest({"d": ["a", "b", "a"], "z": [1, 1, 2], "ts": [1, 2, 3], "x": [1.0, 2.0, 3.0]})
    p = tmp_path / "e.snap"
    eng.snapshot(p)
    for back in (rtml.OnlineEngine.restore(p, feature_set=fs),
                 rtml.OnlineEngine.from_bytes(eng.to_bytes(), feature_set=fs)):
        assert back.get_many([("a", 1), ("a", 2), ("b", 1)], at=10).equals(
            eng.get_many([("a", 1), ("a", 2), ("b", 1)], at=10))
        assert len(back) == 3 and ("a", 2) in back
        # the part kinds stay fixed after a restore
        with raises(rtml.SchemaError, "(d: string, z: integer)", "(d: string, z: string)"):
            back.ingest({"d": "a", "z": "1", "ts": 5, "x": 1.0})


def test_errors():
    fs = rtml.FeatureSet(["driver", "zone"], "ts", [rtml.count()], timestamp_unit="s")
    ev = {"driver": ["a"], "zone": [1], "ts": [1]}
    # a missing part column is named, in events, spine and every ingest form
    with raises(rtml.SchemaError, "'zone'"):
        fs.backfill({"driver": ["a"], "ts": [1]}, {"driver": ["a"], "zone": [1], "ts": [2]})
    with raises(rtml.SchemaError, "'zone'", "spine"):
        fs.backfill(ev, {"driver": ["a"], "ts": [2]})
    eng = fs.online()
    for bad in ({"driver": "a", "ts": 1}, [{"driver": "a", "ts": 1}], {"driver": ["a"], "ts": [1]}):
        with raises(rtml.SchemaError, "'zone'"):
            eng.ingest(bad)
    eng.ingest(ev)
    # a key of the wrong shape or type
    with raises(rtml.SchemaError, "2 parts", "got 3"):
        eng.get(("a", 1, 2), at=5)
    with raises(rtml.SchemaError, "tuple", "str"):
        eng.get("a", at=5)
    with raises(rtml.SchemaError, "zone", "float"):
        eng.get(("a", 1.5), at=5)
    with raises(rtml.SchemaError, "(driver: string, zone: integer)", "(driver: string, zone: string)"):
        eng.get(("a", "1"), at=5)
    with raises(rtml.SchemaError, "2 parts"):
        eng.get_many([("a", 1), ("a",)], at=5)
    assert ("a", "1") not in eng and ("a", 1) in eng
    # part kinds are fixed by the first ingest
    with raises(rtml.SchemaError, "this engine holds"):
        eng.ingest({"driver": ["a"], "zone": ["1"], "ts": [2]})
    with raises(rtml.SchemaError, "row 1"):
        fs.online().ingest([{"driver": "a", "zone": 1, "ts": 1}, {"driver": "a", "zone": "1", "ts": 2}])
    with raises(rtml.SchemaError, "spine keys are"):
        fs.backfill(ev, {"driver": ["a"], "zone": ["1"], "ts": [2]})
    # key= must name one spine column per key column
    with raises(rtml.SchemaError, "key="):
        fs.backfill(ev, {"driver": ["a"], "zone": [1], "ts": [2]}, key="driver")
    # float parts get the cast hint, as a float single key
    with raises(rtml.SchemaError, "'zone'", "astype('int64')"):
        fs.backfill({"driver": ["a"], "zone": [1.0], "ts": [1]}, {"driver": ["a"], "zone": [1], "ts": [2]})
    # entity spelling
    for bad in ([], ["a", "a"], ["a", 1], ["a", ""]):
        with pytest.raises(rtml.SpecError, match="entity"):
            rtml.FeatureSet(bad, "ts", [rtml.count()])
    with pytest.raises(rtml.SpecError, match="collides"):
        rtml.FeatureSet(["a", "count"], "ts", [rtml.count()])


def test_null_parts_follow_null_keys():
    fs = rtml.FeatureSet(["driver", "zone"], "ts", [rtml.count()], timestamp_unit="s")
    ev = {"driver": ["a", None, "a", "a"], "zone": [1, 1, None, 1], "ts": [1, 2, 3, 4]}
    sp = {"driver": ["a", "a", None], "zone": [1, None, 1], "ts": [9, 9, 9]}
    with raises(rtml.SchemaError, "'driver'", "null key"):
        fs.backfill(ev, {"driver": ["a"], "zone": [1], "ts": [9]})
    with raises(rtml.SchemaError, "'driver'", "null key at row 2"):
        fs.backfill({"driver": ["a"], "zone": [1], "ts": [1]}, sp)
    with raises(rtml.SchemaError, "'zone'", "null key at row 1"):
        fs.backfill({"driver": ["a"], "zone": [1], "ts": [1]}, {"driver": ["a", "a"], "zone": [1, None], "ts": [9, 9]})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fs.backfill(ev, sp, null_keys="skip")
    assert out["count"].to_pylist() == [2, None, None]
    assert any("left out 2 event(s)" in str(x.message) and "2 spine row(s)" in str(x.message)
               for x in w)
    rows = [{"driver": d, "zone": z, "ts": t} for d, z, t in zip(ev["driver"], ev["zone"], ev["ts"])]
    for data in (ev, rows, pa.table(ev)):
        eng = fs.online()
        with pytest.raises(rtml.SchemaError):
            eng.ingest(data)
        assert eng.ingest(data, null_keys="skip") == 2
        assert eng.stats()["null_keys_skipped"] == 2
        assert eng.get(("a", 1), at=9) == {"count": 2}
    eng = fs.online()
    assert eng.ingest({"driver": "a", "zone": None, "ts": 1}, null_keys="skip") == 0
    assert eng.ingest({"driver": "a", "zone": float("nan"), "ts": 1}, null_keys="skip") == 0
    assert eng.stats()["null_keys_skipped"] == 2


def test_numpy_and_pandas_scalars_in_a_key_tuple():
    import pandas as pd

    fs = rtml.FeatureSet(["d", "z"], "ts", [rtml.count()], timestamp_unit="s")
    df = pd.DataFrame({"d": ["a", "b"], "z": [1, 2], "ts": [1, 2]})
    eng = fs.online(df)
    for row in df.itertuples(index=False):
        assert eng.get((row.d, row.z), at=9) == {"count": 1}
    assert eng.get(("a", np.int64(1)), at=9) == {"count": 1}
    assert eng.get(["a", 1], at=9) == {"count": 1}


def test_arrival_and_dedupe_replay_the_stream_with_composite_keys():
    # backfill(arrival=...) drops what an engine fed the same calls drops (late, duplicate):
    # the filtered events keep their composite keys
    fs = rtml.FeatureSet(["d", "z"], "ts", [rtml.count(), rtml.sum("x")], timestamp_unit="s",
                         dedupe_on="id", max_ahead=None)
    ev = {"d": ["a", "a", "b", "a", "a"], "z": [1, 1, 1, 2, 1], "ts": [10, 20, 20, 5, 30],
          "x": [1.0, 2.0, 3.0, 4.0, 5.0], "id": ["e1", "e2", "e3", "e4", "e1"],
          "batch": [0, 0, 0, 1, 1]}
    eng = fs.online()
    for b in (0, 1):
        rows = [i for i, v in enumerate(ev["batch"]) if v == b]
        eng.ingest({c: [ev[c][i] for i in rows] for c in ev})
    keys = [("a", 1), ("b", 1), ("a", 2)]
    want = eng.get_many(keys, at=40)
    assert want["count"].to_pylist()[2] == 0  # e4 arrived late
    sp = {"d": [k[0] for k in keys], "z": [k[1] for k in keys], "ts": [40, 40, 40]}
    out = fs.backfill(ev, sp, arrival="batch")
    assert out.select(["count", "x_sum"]).equals(want.select(["count", "x_sum"]))
    v = fs.verdicts(ev, arrival="batch")
    assert v[3] == "late" and v.count("applied") == eng.stats()["events_ingested"]
    # ids: a duplicate within one call is dropped, online and in the replay
    ev2 = dict(ev, id=["e1", "e1", "e3", "e4", "e5"])
    assert fs.verdicts(ev2, arrival="batch")[:2] == ["applied", "duplicate"]


# ------------------------------------------------------------------ the other paths
# Each compared with an independent expectation: the in-memory backfill on the composite key
# (itself equal to a backfill on a joined single-key column, above), or that joined column
# through the same path.

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def _stream_fs(entity=("driver", "zone")):
    return rtml.FeatureSet(
        list(entity) if not isinstance(entity, str) else entity, "ts",
        [rtml.count(window="1h"), rtml.sum("amount", window="1h"), rtml.mean("amount", window="30m"),
         rtml.last("amount"), rtml.distinct_count("shop", window="1h"), rtml.time_since_last()],
        allowed_lateness="600s",
    )


def _stream_events(n: int, seed: int) -> pa.Table:
    """Events in time order keyed by (driver: str, zone: int); parts that collide when joined
    without a separator; awkward float bits."""
    rng = np.random.default_rng(seed)
    drivers = np.array(["a", "a1", "b", "bc", "ü", "d7"], dtype=object)
    return pa.table({
        "driver": pa.array(rng.choice(drivers, n).tolist()),
        "zone": pa.array(rng.choice([1, 2, 12, -3], n), pa.int64()),
        "ts": pa.array(np.sort(T0 + rng.integers(0, 4 * 3600 * NS, n)), pa.timestamp("ns", "UTC")),
        "amount": pa.array(np.round(rng.lognormal(2.0, 1.0, n), 3) * (1 + 1e-9 * rng.standard_normal(n))),
        "shop": pa.array([f"s{x}" for x in rng.integers(0, 9, n)]),
    })


def _tuples(events: pa.Table) -> list:
    return sorted(set(zip(events["driver"].to_pylist(), events["zone"].to_pylist())), key=str)


def _bits_equal(a, b) -> bool:
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    b = b.combine_chunks() if isinstance(b, pa.ChunkedArray) else b
    if a.type != b.type or not a.is_null().equals(b.is_null()):
        return False
    if pa.types.is_floating(a.type):
        return bool((a.fill_null(0.0).to_numpy().view(np.uint64)
                     == b.fill_null(0.0).to_numpy().view(np.uint64)).all())
    return a.equals(b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=6)), min_size=2, max_size=5))
def test_the_python_side_encoder_is_the_rust_one(parts):
    """`_core.encode_keys` (tables), `_keyhash.encode_key` and `sources.message_key` (tuples)
    give the documented bytes, computed here by the slow obvious rule, for any parts."""
    from rtml import _core, _keyhash
    import rtml.sources

    want = "".join(f"i{p};" if isinstance(p, int) else f"s{len(p.encode())}:{p}" for p in parts)
    table = pa.table({f"c{j}": pa.array([p], pa.int64() if isinstance(p, int) else pa.string())
                      for j, p in enumerate(parts)})
    assert _core.encode_keys(table, table.column_names).column(0).to_pylist() == [want]
    assert _keyhash.encode_key(tuple(parts)) == want
    assert rtml.sources.message_key(tuple(parts)) == want.encode()


def test_encoded_keys_are_the_engines_keys():
    """The store key an engine's writer publishes for a composite key ends in the encoding of
    its tuple: the shared store, the partitioning and the engine agree."""
    from rtml import _core, _keyhash
    from rtml.remote import namespace_of

    fs = _stream_fs()
    eng = fs.online()
    eng.ingest(_stream_events(50, seed=1))
    _core.track_changes(eng._engine, True)
    ns, sid = namespace_of(fs)
    items = _core.publish_changes(eng._engine, ns, sid, True)[5]
    names = sorted(bytes(n) for n, _, _ in items)
    reader = _core.RemoteReader(fs._spec, ns, sid)
    assert names == sorted(bytes(reader.store_key(t)) for t in _tuples(_stream_events(50, seed=1)))
    assert all(n.endswith(_keyhash.encode_key(t).encode()) for n, t in
               zip(sorted(bytes(reader.store_key(t)) for t in [("d7", 3)]), [("d7", 3)]))
    with pytest.raises(rtml.SchemaError, match="2 parts"):
        reader.store_key(("d7",))
    with pytest.raises(rtml.SchemaError, match="tuple"):
        reader.store_key("d7")


def test_join_several_sets_with_a_composite_one():
    """rtml.backfill: a composite set next to a single-key set, its key columns named by
    keys=[...]; each set's columns equal its own backfill, and the composite set's equal a
    single-key set on a joined column."""
    ev = _stream_events(2000, seed=3)
    rng = random.Random(3)
    tuples = _tuples(ev) + [("zz", 1)]
    picks = [rng.choice(tuples) for _ in range(300)]
    at = pa.array([T0 + rng.randrange(0, 5 * 3600) * NS for _ in picks], pa.timestamp("ns", "UTC"))
    spine = pa.table({"drv": [p[0] for p in picks], "zn": pa.array([p[1] for p in picks], pa.int64()),
                      "ts": at, "id": list(range(len(picks)))})
    by_pair, by_driver = _stream_fs(), _stream_fs("driver")
    out = rtml.backfill(spine, {"pair": (by_pair, ev), "driver": (by_driver, ev)},
                        keys={"pair": ["drv", "zn"], "driver": "drv"}, output="arrow")
    own = by_pair.backfill(ev, spine, key=["drv", "zn"], output="arrow")
    joined_ev = ev.append_column("dz", pa.array([f"{d}|{z}" for d, z in zip(ev["driver"].to_pylist(), ev["zone"].to_pylist())]))
    joined_sp = pa.table({"dz": [f"{d}|{z}" for d, z in picks], "ts": at})
    single = _stream_fs("dz").backfill(joined_ev, joined_sp, output="arrow")
    driver = by_driver.backfill(ev, spine, key="drv", output="arrow")
    for n in by_pair.feature_names:
        assert _bits_equal(out[f"pair__{n}"], own[n]), n
        assert _bits_equal(out[f"pair__{n}"], single[n]), n
        assert _bits_equal(out[f"driver__{n}"], driver[n]), n
    with raises(rtml.SchemaError, "key="):
        rtml.backfill(spine, {"pair": (by_pair, ev)}, keys={"pair": "drv"})
    # by default the set's own column names
    sp2 = spine.rename_columns(["driver", "zone", "ts", "id"])
    out2 = rtml.backfill(sp2, {"pair": (by_pair, ev)}, output="arrow")
    assert all(_bits_equal(out2[f"pair__{n}"], own[n]) for n in by_pair.feature_names)


def _served_log(eng, ev: pa.Table, rng: random.Random, n: int):
    tuples = _tuples(ev) + [("zz", 2)]
    keys = [rng.choice(tuples) for _ in range(n)]
    ats = [eng.watermark - 599 * NS + rng.randrange(0, 3600) * NS for _ in keys]
    rows = eng.get_many(keys, at=[pa.scalar(t, pa.timestamp("ns", "UTC")).as_py() for t in ats])
    return keys, ats, rows


def test_parity_check_with_composite_keys(tmp_path):
    """parity.check keyed by the part columns: an engine's answers match; a changed value is a
    mismatch whose example names the tuple; the CLI's --key takes several columns."""
    import rtml.parity

    fs = _stream_fs()
    ev = _stream_events(3000, seed=5)
    eng = fs.online(ev)
    rng = random.Random(5)
    keys, ats, rows = _served_log(eng, ev, rng, 200)
    log = pa.table({
        "drv": [k[0] for k in keys], "zn": pa.array([k[1] for k in keys], pa.int64()),
        "at": pa.array(ats, pa.timestamp("ns", "UTC")),
        **{n: rows[n] for n in fs.feature_names},
    })
    report = rtml.parity.check(fs, ev, log, key=["drv", "zn"])
    assert report.ok and report.rows == 200
    assert all(f.matches == 200 for f in report.features.values())
    # a tampered value: one mismatch, the example keyed by the tuple
    sums = log["amount_sum_1h"].to_pylist()
    sums[7] = (sums[7] or 0.0) + 1.0
    bad = log.set_column(log.column_names.index("amount_sum_1h"), "amount_sum_1h", pa.array(sums))
    report = rtml.parity.check(fs, ev, bad, key=["drv", "zn"])
    f = report.features["amount_sum_1h"]
    assert f.mismatches == 1 and f.examples[0]["key"] == keys[7]
    # the default: the entity's column names
    report = rtml.parity.check(fs, ev, log.rename_columns(["driver", "zone", *log.column_names[2:]]))
    assert report.ok
    with raises(rtml.SchemaError, "one served-log column per key column"):
        rtml.parity.check(fs, ev, log, key="drv")
    # the CLI
    import pyarrow.parquet as pq
    from rtml.cli import main

    (tmp_path / "spec.json").write_text(fs.to_json())
    pq.write_table(ev, tmp_path / "events.parquet")
    pq.write_table(log, tmp_path / "log.parquet")
    pq.write_table(bad, tmp_path / "bad.parquet")
    args = ["parity", "--spec", str(tmp_path / "spec.json"), "--events", str(tmp_path / "events.parquet"),
            "--key", "drv", "zn", "--quiet", "--log"]
    assert main([*args, str(tmp_path / "log.parquet")]) == 0
    assert main([*args, str(tmp_path / "bad.parquet")]) == 1


def test_runner_replay_partitions_by_the_encoded_key_and_matches_backfill(tmp_path):
    """A Runner over a 3-partition replay: every tuple's events in the partition
    partition_of(tuple) names (CRC-32 of its encoding), runner.get(tuple) equals the backfill
    bit for bit."""
    import pandas as pd
    import rtml.sources
    from rtml.runner import Runner

    fs = _stream_fs()
    ev = _stream_events(4000, seed=8)
    src = rtml.sources.replay(ev, partitions=3, max_delay="300s", seed=8)
    r = Runner(fs, src, tmp_path / "ckpt", checkpoint_every="0s", max_batch=300)
    r.run_until_idle()
    tuples = _tuples(ev)
    order = src.arrival_order()
    for p, rows in enumerate(order):
        held = set(zip(ev["driver"].take(pa.array(rows)).to_pylist(), ev["zone"].take(pa.array(rows)).to_pylist()))
        assert held == {t for t in tuples if rtml.sources.partition_of(t, 3) == p}
        assert all((t in r.engines[p]) == (t in held) for t in tuples)
    assert len({rtml.sources.partition_of(t, 3) for t in tuples}) > 1
    wm = max(e.watermark for e in r.engines.values() if e.watermark is not None)
    ats = [wm + i * 600 * NS for i in range(3)]
    spine = pa.table({"driver": [t[0] for t in tuples for _ in ats],
                      "zone": pa.array([t[1] for t in tuples for _ in ats], pa.int64()),
                      "ts": pa.array([a for _ in tuples for a in ats], pa.timestamp("ns", "UTC"))})
    off = fs.backfill(ev, spine, output="arrow")
    on = [r.get(t, at=pd.Timestamp(a, unit="ns", tz="UTC")) for t in tuples for a in ats]
    for n in fs.feature_names:
        assert _bits_equal(pa.array([x[n] for x in on], off[n].type), off[n]), n
    assert r.engine_for(tuples[0]) is r.engines[rtml.sources.partition_of(tuples[0], 3)]


def test_json_messages_map_one_field_per_key_part(tmp_path):
    """The JSON decoder with a composite entity: one JSON field per key column (renamed by
    fields=), each part's kind fixed like the table path; a missing or wrong-typed part is a
    dead letter naming the field; the state equals the backfill of the good events."""
    import json
    import pyarrow.parquet as pq
    import rtml.sources
    from rtml.runner import Runner, load_checkpoints  # noqa: F401

    fs = _stream_fs()
    ev = _stream_events(1500, seed=9)
    msgs, keys = [], []
    for row in ev.to_pylist():
        t = row["ts"]
        msgs.append(json.dumps({"drv": row["driver"], "zn": row["zone"],
                                "ts": t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
                                "amount": row["amount"], "shop": row["shop"]}).encode())
        keys.append((row["driver"], row["zone"]))
    bad = [
        (b'{"drv": "a", "ts": "2023-11-14T22:13:20Z"}', "'zn'"),
        (b'{"drv": "a", "zn": "1", "ts": "2023-11-14T22:13:20Z"}', "'zn'"),
        (b'{"drv": 5, "zn": 1, "ts": "2023-11-14T22:13:20Z"}', "'drv'"),
        (b'{"drv": "a", "zn": [1], "ts": "2023-11-14T22:13:20Z"}', "'zn'"),
        (b'{"drv": null, "zn": 1, "ts": "2023-11-14T22:13:20Z"}', "'drv'"),
    ]
    where = [100, 500, 501, 900, 1400]
    for (m, _), i in zip(bad, where):
        msgs.insert(i, m)
        keys.insert(i, ("a", 1))
    src = rtml.sources.replay_messages(msgs, keys=keys, partitions=2,
                                       fields={"driver": "drv", "zone": "zn"})
    r = Runner(fs, src, tmp_path / "ckpt", checkpoint_every="0s", max_batch=200)
    r.run_until_idle()
    m = r.metrics()
    assert m["malformed"] == len(bad), m
    dl = pq.read_table(tmp_path / "ckpt" / "dead_letters").to_pylist()
    reasons = {bytes(d["payload"]): d["reason"] for d in dl}
    for msg, word in bad:
        assert word in reasons[msg], (msg, reasons[msg])
    # the checkpointed key kind is a list of part kinds, and the state equals the backfill
    # (microsecond times: the JSON above carries microseconds)
    us = ev["ts"].cast(pa.int64()).to_numpy() // 1000 * 1000
    ev_us = ev.set_column(2, "ts", pa.array(us, pa.timestamp("ns", "UTC")))
    tuples = _tuples(ev)
    wm = max(e.watermark for e in r.engines.values() if e.watermark is not None)
    spine = pa.table({"driver": [t[0] for t in tuples], "zone": pa.array([t[1] for t in tuples]),
                      "ts": pa.array([wm + 60 * NS] * len(tuples), pa.timestamp("ns", "UTC"))})
    off = fs.backfill(ev_us, spine, output="arrow")
    import pandas as pd

    on = [r.get(t, at=pd.Timestamp(wm + 60 * NS, unit="ns", tz="UTC")) for t in tuples]
    for n in fs.feature_names:
        assert _bits_equal(pa.array([x[n] for x in on], off[n].type), off[n]), n
    # restart from the checkpoints: the part kinds come back with them
    r2 = Runner(fs, rtml.sources.replay_messages(msgs, keys=keys, partitions=2,
                                                 fields={"driver": "drv", "zone": "zn"}),
                tmp_path / "ckpt", checkpoint_every="0s")
    r2.run_until_idle()
    assert r2.get(tuples[0], at=pd.Timestamp(wm + 60 * NS, unit="ns", tz="UTC")) == on[0]


def test_encode_keys_nulls_dictionaries_and_widths():
    """A null part gives a null key; dictionary-encoded string parts and every integer width
    encode as their values; a float part is refused naming the column."""
    from rtml import _core

    t = pa.table({
        "d": pa.array(["b", None, "b", "ü"]).dictionary_encode(),
        "z": pa.array([3, 4, None, -1], pa.int8()),
        "u": pa.array([1, 2, 3, 2**32], pa.uint64()),
    })
    got = _core.encode_keys(t, ["d", "z", "u"]).column(0).to_pylist()
    assert got == ["s1:bi3;i1;", None, None, "s2:üi-1;i4294967296;"]
    with raises(rtml.SchemaError, "'x'", "integers or strings"):
        _core.encode_keys(pa.table({"x": [1.5], "d": ["a"]}), ["d", "x"])
    with raises(rtml.SchemaError, "'nope'"):
        _core.encode_keys(t, ["d", "nope"])


def test_parity_arrived_late_with_composite_keys():
    """parity.check(arrival=...) recomputes a differing row from the events of its tuple that
    had arrived by served_at: ("a", 1) served before its second event arrived is 'arrived
    late'; ("a1", 2), whose parts join to the same text as ("a", 12), is a true mismatch."""
    import rtml.parity

    fs = rtml.FeatureSet(["d", "z"], "ts", [rtml.count(), rtml.sum("x")])
    t = lambda s: pa.array(s, pa.timestamp("s", "UTC"))  # noqa: E731
    ev = pa.table({"d": ["a", "a", "a", "a1"], "z": [1, 1, 12, 2], "ts": t([10, 20, 15, 15]),
                   "x": [1.0, 2.0, 4.0, 8.0], "received_at": t([11, 100, 16, 16])})
    log = pa.table({"d": ["a", "a1", "a"], "z": [1, 2, 12], "at": t([30, 30, 30]),
                    "served_at": t([50, 200, 50]),
                    "count": [1.0, 2.0, 1.0], "x_sum": [1.0, 8.0, 4.0]})
    report = rtml.parity.check(fs, ev, log, key=["d", "z"], arrival="received_at")
    assert report.features["count"].arrived_late == 1
    assert report.features["count"].mismatches == 1
    assert report.features["count"].examples[0]["key"] == ("a1", 2)
    assert report.features["x_sum"].arrived_late == 1 and report.features["x_sum"].mismatches == 0
    assert report.features["x_sum"].matches == 2
