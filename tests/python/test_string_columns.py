"""min / max / first / last of string columns (FeatureSet(string_columns=...)): backfill and the
online engine against the slow reference (tests/python/reference.py: strings ordered by their
UTF-8 bytes), in every batch form, over arrival orders within the allowed lateness, through a
snapshot round trip; sliding and lifetime (no window) features; a long stream whose strings are
swept; the refusals; a string window feature in `vector`."""

from __future__ import annotations

import random
import types

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from helpers import n_examples, ns_to_datetime, raises
from reference import Feat

import rtml  # noqa: E402

S = 10**9
MIN = 60 * S
BASE = 1_700_000_000 * S
LATENESS = 10 * MIN

FEATS = [
    Feat("min", "s", 30 * MIN, name="s_min", text=True),
    Feat("max", "s", 60 * MIN, name="s_max", text=True),
    Feat("first", "s", 30 * MIN, name="s_first", text=True),
    Feat("last", "s", 60 * MIN, name="s_last", text=True),
    Feat("last", "s", 5 * MIN, name="s_last5", text=True),
    Feat("count", "s", 60 * MIN, name="s_n"),
    Feat("distinct_count", "s", 60 * MIN, name="s_d"),
    Feat("sum", "x", 60 * MIN, name="x_sum"),
    Feat("last", "x", 30 * MIN, name="x_last"),
    # lifetime (no window): a pick of the settled events plus the buffered ones
    Feat("min", "s", None, name="s_min_all", text=True),
    Feat("max", "s", None, name="s_max_all", text=True),
    Feat("first", "s", None, name="s_first_all", text=True),
    Feat("last", "s", None, name="s_last_all", text=True),
]

FORMS = ["table", "pandas", "polars", "dict_of_lists", "rows", "row_by_row"]


def feature_set():
    def make(f):
        ctor = getattr(rtml, f.agg)
        window = None if f.window is None else f"{f.window // MIN}m"
        return ctor(f.col, window=window, name=f.name)

    return rtml.FeatureSet(
        "key",
        "ts",
        [make(f) for f in FEATS],
        allowed_lateness="10m",
        max_ahead=None,
        string_columns=["s"],
    )


# strings whose byte order differs from case-insensitive, length-first or locale order
WORDS = ["", "a", "B", "ab", "b", "é", "e\u0301", "z", "Zoë", "日本", "\U0001f600", "a\x00"]


@st.composite
def histories(draw, max_events=40):
    n = draw(st.integers(1, max_events))
    events = []
    for _ in range(n):
        ts = BASE + draw(st.integers(0, 180)) * MIN + draw(st.sampled_from([0, 0, 20, 40])) * S
        s = draw(st.one_of(st.none(), st.sampled_from(WORDS), st.text(max_size=3)))
        x = draw(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)))
        events.append({"key": draw(st.integers(0, 2)), "ts": ts, "s": s, "x": x})
    # arrival: by time plus a delay within the allowed lateness (nothing is late)
    delays = [draw(st.integers(0, LATENESS // MIN)) * MIN for _ in events]
    arrival = [e for _, e in sorted(zip([e["ts"] + d for e, d in zip(events, delays)], range(n)))]
    order = [events[i] for i in arrival]
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=10))
    form = draw(st.sampled_from(FORMS))
    offsets = draw(st.lists(st.integers(0, 120), min_size=1, max_size=4))
    return events, order, sizes, form, offsets


def table(events):
    return pa.table(
        {
            "key": pa.array([e["key"] for e in events], pa.int64()),
            "ts": pa.array([e["ts"] for e in events], pa.timestamp("ns", "UTC")),
            "s": pa.array([e["s"] for e in events], pa.string()),
            "x": pa.array([e["x"] for e in events], pa.float64()),
        }
    )


def spine(queries):
    return pa.table(
        {
            "key": pa.array([k for k, _ in queries], pa.int64()),
            "ts": pa.array([t for _, t in queries], pa.timestamp("ns", "UTC")),
        }
    )


def rows(events):
    return [dict(e, ts=ns_to_datetime(e["ts"])) for e in events]


def ingest(eng, batch, form):
    import polars as pl

    if form == "table":
        eng.ingest(table(batch))
    elif form == "pandas":
        eng.ingest(table(batch).to_pandas())
    elif form == "polars":
        eng.ingest(pl.from_arrow(table(batch)))
    elif form == "dict_of_lists":
        r = rows(batch)
        eng.ingest({c: [e[c] for e in r] for c in ("key", "ts", "s", "x")})
    elif form == "rows":
        eng.ingest(rows(batch))
    else:
        for r in rows(batch):
            eng.ingest(r)


def same(a, b) -> bool:
    """Equal answers: strings equal, numbers equal by bits, null = null (None or NaN)."""
    if isinstance(a, float) and a != a:
        a = None
    if isinstance(b, float) and b != b:
        b = None
    if isinstance(a, float) and isinstance(b, float):
        return ref.float_bits(a) == ref.float_bits(b)
    return a == b and type(a) is type(b)


def check_rows(got_rows, want_rows, names, where):
    for got, want, w in zip(got_rows, want_rows, where):
        bad = [(n, got[n], want[n]) for n in names if not same(got[n], want[n])]
        assert not bad, (w, bad)


@settings(max_examples=n_examples(60), deadline=None)
@given(histories())
def test_backfill_and_online_match_the_reference_bit_for_bit(case):
    events, order, sizes, form, offsets = case
    fs = feature_set()
    names = fs.feature_names
    eng = fs.online()
    cut = random.Random(len(events)).randrange(len(order) + 1)
    restored = None
    i, b = 0, 0
    while i < len(order):
        if restored is None and i >= cut:
            restored = rtml.OnlineEngine.from_bytes(eng.to_bytes())
        n = sizes[b % len(sizes)]
        b += 1
        batch = order[i : i + n]
        ingest(eng, batch, form)
        if restored is not None:
            ingest(restored, batch, form)
        i += n
    assert eng.stats()["late_events_dropped"] == 0
    wm = eng.watermark
    queries = [(k, wm - LATENESS + o * MIN // 2) for k in range(4) for o in offsets]
    # the slow reference
    want = ref.evaluate(FEATS, events, queries)
    # backfill, from a pyarrow table (and pandas / polars give the same)
    out = fs.backfill(table(events), spine(queries))
    assert out.schema.field("s_min").type == pa.string()
    bf = out.to_pylist()
    for r, w, q in zip(bf, want, queries):
        for f in FEATS:
            msg = ref.check_value(f, None if (isinstance(r[f.name], float) and r[f.name] != r[f.name]) else r[f.name], w[f.name])
            assert msg is None, (q, f.name, msg)
    # online, the engine restored from a snapshot mid-stream, and get_many: the same bits
    at = [ns_to_datetime(t) for _, t in queries]
    got = [eng.get(k, at=a) for (k, _), a in zip(queries, at)]
    check_rows(got, bf, names, queries)
    if restored is not None:
        check_rows([restored.get(k, at=a) for (k, _), a in zip(queries, at)], bf, names, queries)
    many = eng.get_many([k for k, _ in queries], at=at)
    assert many.schema.field("s_last").type == pa.string()
    check_rows(many.to_pylist(), bf, names, queries)
    again = rtml.OnlineEngine.from_bytes(eng.to_bytes())
    check_rows([again.get(k, at=a) for (k, _), a in zip(queries, at)], bf, names, queries)


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_backfill_of_dataframes_gives_strings(kind):
    import pandas as pd
    import polars as pl

    events = [
        {"key": 1, "ts": BASE + i * MIN, "s": w, "x": float(i)}
        for i, w in enumerate(["b", None, "a", "é", "B"])
    ]
    queries = [(1, BASE + 10 * MIN), (2, BASE + 10 * MIN)]
    fs = feature_set()
    want = fs.backfill(table(events), spine(queries)).to_pylist()
    assert [w["s_min"] for w in want] == ["B", None]
    assert [w["s_max"] for w in want] == ["é", None]
    assert [w["s_first"] for w in want] == ["b", None]
    assert [w["s_last"] for w in want] == ["B", None]
    if kind == "pandas":
        out = fs.backfill(table(events).to_pandas(), spine(queries).to_pandas())
        assert isinstance(out, pd.DataFrame)
        got = out["s_min"].tolist()
        assert got[0] == "B" and pd.isna(got[1]), got
    else:
        out = fs.backfill(pl.from_arrow(table(events)), pl.from_arrow(spine(queries)))
        assert isinstance(out, pl.DataFrame)
        assert out["s_max"].to_list() == ["é", None]


def test_ties_at_equal_times_follow_the_number_rule():
    # three events at one instant: first = the smallest string, last = the largest (by bytes)
    events = [{"key": 1, "ts": BASE, "s": w, "x": None} for w in ["b", "B", "é", None]]
    fs = feature_set()
    t = BASE + MIN
    for order in (events, events[::-1]):
        eng = fs.online()
        eng.ingest(table(order))
        g = eng.get(1, at=ns_to_datetime(t))
        assert (g["s_first"], g["s_last"], g["s_min"], g["s_max"]) == ("B", "é", "B", "é")
    assert fs.backfill(table(events), spine([(1, t)])).to_pylist()[0]["s_first"] == "B"
    # an unknown key and an empty window: None
    assert eng.get(99, at=ns_to_datetime(t))["s_last"] is None
    assert eng.get(1, at=ns_to_datetime(t + 2 * 3600 * S))["s_last"] is None


def test_refusals_are_typed_and_name_the_column():
    with raises(rtml.SpecError, "sum", "string column"):
        rtml.FeatureSet("key", "ts", [rtml.sum("s", window="1h")], string_columns=["s"])
    for f in (rtml.min("s", window="1h", hop="10m"), rtml.last("s", window="2h", hop="1h")):
        with raises(rtml.SpecError, "tiled windows"):
            rtml.FeatureSet("key", "ts", [f], string_columns=["s"])
    # lifetime (no window) is accepted
    assert rtml.FeatureSet("key", "ts", [rtml.last("s")], string_columns=["s"]).string_columns == ["s"]
    with raises(rtml.SpecError, "string_columns"):
        rtml.FeatureSet("key", "ts", [rtml.last("s", window="1h")], string_columns="s")
    # not declared: the old refusal, with the hint
    fs = rtml.FeatureSet("key", "ts", [rtml.last("s", window="1h")], max_ahead=None)
    with raises(rtml.SchemaError, "string_columns"):
        fs.online().ingest(table([{"key": 1, "ts": BASE, "s": "a", "x": 1.0}]))
    # declared but numbers: refused in every form, nothing applied
    fs = feature_set()
    eng = fs.online()
    bad = pa.table({"key": [1], "ts": pa.array([BASE], pa.timestamp("ns", "UTC")), "s": [3], "x": [1.0]})
    with raises(rtml.SchemaError, "s", "string_columns"):
        eng.ingest(bad)
    with raises(rtml.SchemaError, "s", "string_columns"):
        eng.ingest({"key": 1, "ts": ns_to_datetime(BASE), "s": 3, "x": 1.0})
    assert eng.stats()["events_ingested"] == 0
    # a pandas NaN in the string column is null, as in every other string column
    eng.ingest({"key": 1, "ts": ns_to_datetime(BASE), "s": float("nan"), "x": 1.0})
    assert eng.get(1, at=ns_to_datetime(BASE + S))["s_last"] is None
    # a remote reader serves string features too (through Redis:
    # tests/python/test_shared_state_reads.py); a store holding nothing answers unknown keys
    empty = types.SimpleNamespace(mget=lambda names: [None] * len(names), get=lambda name: None)
    at = ns_to_datetime(BASE + S)
    assert rtml.RemoteEngine(fs, client=empty).get(2, at=at) == fs.online().get(2, at=at)
    assert fs.string_columns == ["s"]
    assert "string_columns=['s']" in repr(fs)
    assert rtml.FeatureSet.from_json(fs.to_json()) == fs


def test_a_string_window_feature_feeds_one_hot_in_vector():
    fs = rtml.FeatureSet(
        "key", "ts", [rtml.last("s", window="1h", name="s_last")],
        max_ahead=None, string_columns=["s"],
    )
    events = [{"key": k, "ts": BASE + i * MIN, "s": w, "x": None}
              for i, (k, w) in enumerate([(1, "a"), (2, "b"), (1, "c"), (3, None)])]
    t = BASE + 10 * MIN
    train = fs.backfill(table(events), spine([(1, t), (2, t), (3, t)]))
    tf = rtml.Transforms([rtml.one_hot("s_last")]).fit(train)
    eng = fs.online()
    eng.ingest(table(events))
    want = tf.transform(train)
    names = tf.feature_names
    for row, k in enumerate([1, 2, 3]):
        got = eng.vector(k, tf, at=ns_to_datetime(t))
        exp = [want.column(n)[row].as_py() for n in names]
        assert [None if v != v else v for v in got.tolist()] == exp, k


def test_a_long_stream_keeps_its_lifetime_strings_while_its_table_stays_bounded():
    # one key, a new string every minute for 20 hours: the sliding features need about an hour
    # of rows, the lifetime picks one string each; rows (and their strings) leave the state as
    # the key settles, the picks' strings stay. Ten-hours-in snapshot, restored, continues alike.
    fs = feature_set()
    n = 1200
    words = [f"w{(i * 7919) % n}" for i in range(n)]  # a permutation of w0 .. w1199
    events = [{"key": 1, "ts": BASE + i * MIN, "s": w, "x": None} for i, w in enumerate(words)]
    eng = fs.online()
    same = fs.online()  # the same stream with one repeated string: the baseline state size
    restored = None
    for i in range(0, n, 20):
        if i == n // 2:
            restored = rtml.OnlineEngine.from_bytes(eng.to_bytes())
        eng.ingest(table(events[i : i + 20]))
        same.ingest(table([dict(e, s="w0") for e in events[i : i + 20]]))
        if restored is not None:
            restored.ingest(table(events[i : i + 20]))
    t = BASE + n * MIN
    q = [(1, t)]
    want = ref.evaluate(FEATS, events, q)[0]
    got = eng.get(1, at=ns_to_datetime(t))
    by_bytes = sorted(words, key=ref.utf8_key)
    assert (got["s_first_all"], got["s_last_all"]) == (words[0], words[-1])
    assert (got["s_min_all"], got["s_max_all"]) == (by_bytes[0], by_bytes[-1])
    for f in FEATS:
        assert ref.check_value(f, got[f.name], want[f.name]) is None, f.name
    assert restored is not None
    check_rows([restored.get(1, at=ns_to_datetime(t))], [got], fs.feature_names, q)
    bf = fs.backfill(table(events), spine(q)).to_pylist()
    check_rows(bf, [got], fs.feature_names, q)
    # bounded: a table that kept all 1200 strings would hold ~1200 * 44 bytes more than one
    # string; about 75 are live (an hour of rows, the lateness, the picks)
    extra = eng.stats()["state_bytes"] - same.stats()["state_bytes"]
    assert extra < 250 * 44, extra
