"""Online / offline parity: OnlineEngine.get must equal FeatureSet.backfill bit for bit
for any arrival order within the allowed lateness (docs/semantics.md, "Parity")."""

from __future__ import annotations

import os
import tempfile

import pyarrow as pa
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import reference as ref
from helpers import (
    absent_key,
    n_examples,
    NS_PER_UNIT,
    event_rows,
    event_sets,
    events_table,
    feature_lists,
    make_feature_set,
    ns_to_datetime,
    same_exact,
    spine_table,
    spines,
    time_scalar,
)
from reference import Feat

import rtml  # noqa: E402  (a broken build must fail the suite, not skip it)

S = NS_PER_UNIT["s"]
BASE = 1_700_000_000 * S


def _diff(got: dict, want: dict, names) -> list:
    out = []
    for n in names:
        if n not in got:
            out.append(f"{n}: missing from get() result {sorted(got)}")
        elif not same_exact(got[n], want[n]):
            out.append(f"{n}: online {got[n]!r} != backfill {want[n]!r}")
    return out


@st.composite
def parity_cases(draw, max_events=30):
    key_kind, unit, step, base, keys, events = draw(event_sets(max_events=max_events))
    # row dicts carry datetimes (microsecond resolution) in "ts" mode
    mode = "int" if unit == "ns" else draw(st.sampled_from(["int", "ts"]))
    feats = draw(feature_lists(step))
    lateness = draw(st.sampled_from([0, 0, 1, 3, 10])) * step
    # arrival order: by ts + jitter in [0, lateness], random tie-break: never late
    keyed = [
        (e["ts"] + draw(st.integers(0, lateness)), draw(st.integers(0, 10**6)), i) for i, e in enumerate(events)
    ]
    arrival = [events[i] for _, _, i in sorted(keyed)]
    queries = draw(spines(keys, events, feats, base, step, key_kind))
    last = max([e["ts"] for e in events], default=base)
    queries += [(k, last + step) for k in keys]
    # batches: sizes and forms (row dicts / Arrow table / single row dict)
    plan = draw(st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["rows", "table", "row"])), min_size=1, max_size=40))
    # before some queries, also ask about a far-future instant (like get() at wall-clock now):
    # that must not change any later answer
    probes = draw(st.lists(st.booleans(), min_size=len(queries), max_size=len(queries)))
    # how far past "everything with ts < t is in" to ingest before a query, as a percentage of
    # the room left before t < watermark - allowed_lateness (0: not at all, 100: to the limit)
    overshoot = draw(st.lists(st.sampled_from([0, 0, 30, 70, 100]), min_size=len(queries), max_size=len(queries)))
    return dict(overshoot=overshoot, key_kind=key_kind, unit=unit, step=step, mode=mode, feats=feats, lateness=lateness,
                events=events, arrival=arrival, queries=queries, plan=plan, keys=keys, probes=probes)


def _fs(case):
    kw = {}
    if case["mode"] == "int":
        kw["timestamp_unit"] = case["unit"]
    if case["lateness"]:
        kw["allowed_lateness"] = f"{case['lateness'] // case['step']}{case['unit']}"
    return make_feature_set(case["feats"], **kw)


def _ingest_batch(eng, batch, form, case):
    if form == "table" or (form == "row" and len(batch) != 1):
        eng.ingest(events_table(batch, case["key_kind"], case["mode"], case["unit"]))
    elif form == "row":
        eng.ingest(event_rows(batch, case["mode"], case["unit"])[0])
    else:
        eng.ingest(event_rows(batch, case["mode"], case["unit"]))


class Feeder:
    """Feeds the arrival sequence into an engine in planned batch sizes and forms,
    never past a requested position."""

    def __init__(self, case, engines):
        self.case = case
        self.engines = engines
        self.pos = 0
        self.step_i = 0

    def advance_to(self, need: int):
        arrival, plan = self.case["arrival"], self.case["plan"]
        while self.pos < need:
            size, form = plan[self.step_i % len(plan)]
            self.step_i += 1
            batch = arrival[self.pos : min(need, self.pos + size)]
            for eng in self.engines:
                _ingest_batch(eng, batch, form, self.case)
            self.pos += len(batch)


def _needed(arrival, t):
    """Number of arrivals to ingest so that every event with ts < t is in."""
    need = 0
    for i, e in enumerate(arrival):
        if e["ts"] < t:
            need = i + 1
    return need


def _allowed(arrival, t, lateness):
    """Largest number of arrivals that can be in while t >= watermark - allowed_lateness."""
    n, wm = 0, None
    for i, e in enumerate(arrival):
        wm = e["ts"] if wm is None else max(wm, e["ts"])
        if wm - lateness > t:
            break
        n = i + 1
    return n


def _backfill_rows(fs, case, queries):
    ev = events_table(case["events"], case["key_kind"], case["mode"], case["unit"])
    sp = spine_table(queries, case["key_kind"], case["mode"], case["unit"], extra=False)
    return fs.backfill(ev, sp).to_pylist()


def _at(case, t):
    return time_scalar(t, case["mode"], case["unit"])


@settings(max_examples=n_examples(100))
@given(parity_cases())
def test_online_equals_backfill_bit_for_bit(case):
    fs = _fs(case)
    names = fs.feature_names
    queries = case["queries"]
    want = _backfill_rows(fs, case, queries)
    eng = fs.online()
    feeder = Feeder(case, [eng])
    errors = []
    for i in sorted(range(len(queries)), key=lambda i: queries[i][1]):
        k, t = queries[i]
        need = _needed(case["arrival"], t)
        room = _allowed(case["arrival"], t, case["lateness"])
        assert need <= room
        feeder.advance_to(max(feeder.pos, need + (room - need) * case["overshoot"][i] // 100))
        if case["probes"][i]:
            eng.get(k, at=_at(case, t + 1000 * case["step"]))
        got = eng.get(k, at=_at(case, t))
        for d in _diff(got, want[i], names):
            errors.append(f"get({k!r}, at={t}) after {feeder.pos} arrivals: {d}")
    assert not errors, "\n".join(errors[:20])
    feeder.advance_to(len(case["arrival"]))
    st_ = eng.stats()
    assert st_["late_events_dropped"] == 0
    assert st_["events_ingested"] == len(case["events"])


@settings(max_examples=n_examples(60))
@given(parity_cases())
def test_get_many_matches_backfill(case):
    fs = _fs(case)
    names = fs.feature_names
    eng = fs.online()
    Feeder(case, [eng]).advance_to(len(case["arrival"]))
    keys = list(case["keys"])
    keys.append(absent_key(keys, case["key_kind"]))
    last = max([e["ts"] for e in case["events"]], default=BASE)
    for t in (last + case["step"], last + 7 * case["step"]):
        want = _backfill_rows(fs, case, [(k, t) for k in keys])
        tbl = eng.get_many(keys, at=_at(case, t))
        assert isinstance(tbl, pa.Table)
        assert tbl.num_rows == len(keys)
        assert tbl.column_names[1:] == names
        assert tbl.column(0).to_pylist() == keys
        rows = tbl.to_pylist()
        for k, g, w in zip(keys, rows, want):
            assert not _diff(g, w, names), (k, _diff(g, w, names))
            # and get_many agrees with get
            assert not _diff(eng.get(k, at=_at(case, t)), w, names)


@settings(max_examples=n_examples(50))
@given(parity_cases(), st.integers(0, 10**6))
def test_snapshot_restore_preserves_answers_and_continues(case, cut_seed):
    fs = _fs(case)
    names = fs.feature_names
    arrival = case["arrival"]
    cut = cut_seed % (len(arrival) + 1)
    eng = fs.online()
    feeder = Feeder(case, [eng])
    feeder.advance_to(cut)
    keys = list(case["keys"]) + [absent_key(case["keys"], case["key_kind"])]
    step = case["step"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "state.rtml")
        before = eng.stats()
        eng.snapshot(path)
        assert eng.stats() == before  # snapshotting changes nothing
        eng2 = rtml.OnlineEngine.restore(path)
    s1, s2 = eng.stats(), eng2.stats()
    for k in ("keys", "events_ingested", "late_events_dropped", "watermark"):
        assert s1[k] == s2[k], (k, s1[k], s2[k])
    # every answer the original can give, the restored engine gives identically
    wm = max([e["ts"] for e in arrival[:cut]], default=BASE)
    for t in (wm - case["lateness"] + step, wm, wm + step, wm + 40 * step):
        for k in keys:
            a = eng.get(k, at=_at(case, t))
            b = eng2.get(k, at=_at(case, t))
            assert not _diff(b, a, names), (k, t, _diff(b, a, names))
    # ingest continues identically on both
    feeder.engines = [eng, eng2]
    feeder.advance_to(len(arrival))
    last = max([e["ts"] for e in case["events"]], default=BASE)
    t = last + step
    want = _backfill_rows(fs, case, [(k, t) for k in keys])
    for k, w in zip(keys, want):
        a = eng.get(k, at=_at(case, t))
        b = eng2.get(k, at=_at(case, t))
        assert not _diff(a, w, names), (k, _diff(a, w, names))
        assert not _diff(b, w, names), (k, _diff(b, w, names))
    assert eng.stats()["events_ingested"] == eng2.stats()["events_ingested"] == len(case["events"])


def _simulate_late(arrival, lateness):
    """Which arrivals are late when ingested one at a time (watermark = max ts seen)."""
    wm = None
    kept, late = [], []
    for e in arrival:
        if wm is not None and e["ts"] < wm - lateness:
            late.append(e)
            continue
        kept.append(e)
        wm = e["ts"] if wm is None else max(wm, e["ts"])
    return kept, late


@settings(max_examples=n_examples(60))
@given(event_sets(unit="s", max_events=25), st.sampled_from([0, 1, 3]), st.randoms(use_true_random=False))
def test_late_events_are_dropped_and_counted(es, late_s, rnd):
    key_kind, unit, step, base, keys, events = es
    feats = [
        Feat("count", None, None, name="n"),
        Feat("sum", "x", None, name="s"),
        Feat("last", "x", 5 * S, name="l5"),
        Feat("var", "x", 10 * S, name="v10"),
        Feat("time_since_last", None, None, name="tsl"),
    ]
    kw = {"allowed_lateness": f"{late_s}s"} if late_s else {}
    fs = make_feature_set(feats, **kw)
    arrival = list(events)
    rnd.shuffle(arrival)  # arbitrary order: some events will be late
    kept, late = _simulate_late(arrival, late_s * S)
    eng = fs.online()
    for e in arrival:  # one event per call: "the watermark as of its arrival" is unambiguous
        eng.ingest(events_table([e], key_kind, "ts", "ns"))
    stats = eng.stats()
    assert stats["late_events_dropped"] == len(late)
    assert stats["events_ingested"] in (len(kept), len(arrival))
    # answers are those of the events that were kept
    last = max([e["ts"] for e in events], default=base)
    qs = [(k, last + S) for k in keys] + [(k, last + 3 * S) for k in keys]
    want = ref.evaluate(feats, kept, qs)
    for (k, t), w in zip(qs, want):
        got = eng.get(k, at=ns_to_datetime(t))
        for f in feats:
            assert ref.check_value(f, got[f.name], w[f.name]) is None, (k, t, f.name, got[f.name], w[f.name])
    # and bit-for-bit what backfill says about the kept events
    if kept:
        bf = fs.backfill(events_table(kept, key_kind, "ts", "ns"), spine_table(qs, key_kind, "ts", "ns", extra=False))
        for (k, t), row in zip(qs, bf.to_pylist()):
            assert not _diff(eng.get(k, at=ns_to_datetime(t)), row, fs.feature_names)


def test_late_boundary_is_inclusive():
    fs = rtml.FeatureSet(entity="key", timestamp="ts", features=[rtml.count(name="n"), rtml.sum("x", name="s")],
                         allowed_lateness="10s")
    eng = fs.online()
    for sec, x in [(100, 1.0), (95, 2.0), (89, 4.0), (90, 8.0), (100, 16.0)]:
        eng.ingest({"key": 1, "ts": ns_to_datetime(BASE + sec * S), "x": x})
    # watermark 100s: 95 ok, 89 < 90 late, 90 == 100 - 10 not late
    assert eng.stats()["late_events_dropped"] == 1
    got = eng.get(1, at=ns_to_datetime(BASE + 200 * S))
    assert got["n"] == 4 and got["s"] == 27.0


def test_online_history_equals_ingest():
    events = [
        {"key": k, "ts": BASE + i * S, "x": float(i % 7) - 3.0 if i % 5 else None}
        for i in range(60)
        for k in ("a", "b")
        if (i + len(k)) % 3
    ]
    feats = [Feat("sum", "x", 10 * S, name="s"), Feat("std", "x", None, name="sd"),
             Feat("quantile", "x", 20 * S, q=0.5, name="med"),
             Feat("decayed_sum", "x", None, half_life=4 * S, name="ds")]
    fs = make_feature_set(feats)
    tbl = events_table(events, "str", "ts", "ns", columns=("x",))
    e1 = fs.online(history=tbl)
    e2 = fs.online()
    e2.ingest(tbl)
    t = BASE + 61 * S
    want = fs.backfill(tbl, spine_table([("a", t), ("b", t), ("c", t)], "str", "ts", "ns", extra=False)).to_pylist()
    for k, w in zip("abc", want):
        assert not _diff(e1.get(k, at=ns_to_datetime(t)), w, fs.feature_names)
        assert not _diff(e2.get(k, at=ns_to_datetime(t)), w, fs.feature_names)


def test_at_accepts_aware_datetimes_in_any_zone_and_refuses_naive_ones():
    """Against tz-aware events, `at` may be in any zone (same instant, same answer); a naive
    `at` is refused (it would be read as UTC: docs/api.md, "Times and time zones"). Against
    naive events, a naive `at` is the same UTC wall time."""
    fs = make_feature_set([Feat("count", None, 10 * S, name="n"), Feat("time_since_last", None, None, name="tsl")])
    evs = [{"key": 1, "ts": BASE + i * S, "x": 1.0} for i in range(20)]
    eng = fs.online()
    eng.ingest(events_table(evs, "int", "ts", "ns", columns=("x",)))
    import datetime as dt

    t = BASE + 25 * S + 500_000_000
    aware = ns_to_datetime(t)
    naive = ns_to_datetime(t, tz=None)
    tokyo = aware.astimezone(dt.timezone(dt.timedelta(hours=9)))
    a, c = (eng.get(1, at=x) for x in (aware, tokyo))
    assert a == c
    assert a["n"] == 4 and a["tsl"] == pytest.approx(6.5, rel=1e-12)
    with pytest.raises(rtml.SchemaError, match="at"):
        eng.get(1, at=naive)
    naive_eng = fs.online()
    naive_eng.ingest(events_table(evs, "int", "ts", "ns", tz=None, columns=("x",)))
    assert naive_eng.get(1, at=naive) == a


INGEST_FORMS = ["table", "batches", "reader", "pandas", "polars", "parquet", "parquet_list", "rows", "row_by_row",
                "dict_of_columns"]


@pytest.mark.parametrize("form", INGEST_FORMS)
def test_ingest_forms_are_equivalent(form, tmp_path):
    """Every input form of docs/api.md ("pyarrow Table / RecordBatch(Reader), pandas, polars,
    Parquet path(s), a dict of columns, a list of row dicts, or one row dict") ingests the same."""
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    events = [{"key": i % 3, "ts": BASE + i * S, "x": float(i) if i % 4 else None} for i in range(30)]
    feats = [Feat("sum", "x", 10 * S, name="s"), Feat("count", "x", None, name="c"),
             Feat("last", "x", None, name="l")]
    fs = make_feature_set(feats)
    tbl = events_table(events, "int", "ts", "ns", columns=("x",))
    t = BASE + 31 * S
    want = fs.backfill(tbl, spine_table([(k, t) for k in range(4)], "int", "ts", "ns", extra=False)).to_pylist()
    p1, p2 = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    pq.write_table(tbl.slice(0, 10), p1)
    pq.write_table(tbl.slice(10), p2)
    rows = [{"key": e["key"], "ts": ns_to_datetime(e["ts"]), "x": e["x"]} for e in events]
    parts = {
        "table": lambda: [tbl],
        "batches": lambda: tbl.to_batches(max_chunksize=7),
        "reader": lambda: [pa.RecordBatchReader.from_batches(tbl.schema, tbl.to_batches(max_chunksize=4))],
        "pandas": lambda: [tbl.to_pandas(types_mapper={pa.float64(): pd.Float64Dtype()}.get)],
        "polars": lambda: [pl.from_arrow(tbl)],
        "parquet": lambda: [p1, p2],
        "parquet_list": lambda: [[p1, p2]],
        "rows": lambda: [rows],
        "row_by_row": lambda: rows,
        "dict_of_columns": lambda: [{
            "key": [e["key"] for e in events],
            "ts": [ns_to_datetime(e["ts"]) for e in events],
            "x": [e["x"] for e in events],
        }],
    }[form]()
    eng = fs.online()
    for p in parts:
        eng.ingest(p)
    assert eng.stats()["events_ingested"] == len(events)
    for k in range(4):
        assert not _diff(eng.get(k, at=ns_to_datetime(t)), want[k], fs.feature_names), (form, k)


def test_get_without_at_uses_wall_clock():
    import datetime as dt

    events = [{"key": 1, "ts": BASE + i * S, "x": 1.0} for i in range(10)]
    fs = make_feature_set([Feat("count", None, 10 * S, name="n10"), Feat("count", None, None, name="n"),
                           Feat("time_since_last", None, None, name="tsl")])
    eng = fs.online(history=events_table(events, "int", "ts", "ns", columns=("x",)))
    before = dt.datetime.now(dt.timezone.utc).timestamp()
    got = eng.get(1)
    after = dt.datetime.now(dt.timezone.utc).timestamp()
    last = (BASE + 9 * S) / 1e9
    assert got["n10"] == 0 and got["n"] == 10
    assert before - last - 1e-3 <= got["tsl"] <= after - last + 1e-3
    tbl = eng.get_many([1, 2])
    assert tbl.column("n").to_pylist() == [10, 0]


@settings(max_examples=n_examples(60))
@given(parity_cases())
def test_parity_with_ttl_on_windowed_features(case):
    """With ttl = largest window + allowed_lateness (the smallest allowed), evicting idle keys
    never changes a windowed feature: parity still holds bit for bit."""
    # the shorter windows only, so that ttl is short and keys do get evicted
    w_min = min([f.window for f in case["feats"] if f.window is not None], default=None)
    feats = [f for f in case["feats"] if f.window == w_min]
    if not feats:
        return
    case = dict(case, feats=feats)
    ttl = max(f.window for f in feats) + case["lateness"]
    kw = {"ttl": f"{ttl}ns"}
    if case["mode"] == "int":
        kw["timestamp_unit"] = case["unit"]
    if case["lateness"]:
        kw["allowed_lateness"] = f"{case['lateness'] // case['step']}{case['unit']}"
    fs = make_feature_set(feats, **kw)
    names = fs.feature_names
    queries = case["queries"]
    want = _backfill_rows(fs, case, queries)
    eng = fs.online()
    feeder = Feeder(case, [eng])
    errors = []
    for i in sorted(range(len(queries)), key=lambda i: queries[i][1]):
        k, t = queries[i]
        feeder.advance_to(_needed(case["arrival"], t))
        got = eng.get(k, at=_at(case, t))
        for d in _diff(got, want[i], names):
            errors.append(f"get({k!r}, at={t}) after {feeder.pos} arrivals: {d}")
    assert not errors, "\n".join(errors[:20])
    event("keys evicted" if eng.stats().get("keys_evicted") else "no key evicted")


def test_nanosecond_precision_of_at_and_row_times():
    """pandas / NumPy instants keep their nanoseconds, in get(at=) and in row dicts."""
    import numpy as np
    import pandas as pd
    feats = [Feat("count", None, 10, name="c"), Feat("time_since_last", None, None, name="tsl"),
             Feat("sum", "x", 7, name="s7")]
    fs = make_feature_set(feats)
    events = [{"key": 1, "ts": BASE + i, "x": float(i)} for i in range(0, 30, 3)]
    t = BASE + 31
    want = fs.backfill(events_table(events, "int", "ts", "ns", columns=("x",)),
                       spine_table([(1, t)], "int", "ts", "ns", extra=False)).to_pylist()[0]
    assert want["c"] == 3 and want["s7"] == 27.0 + 24.0
    # naive and tz-aware times never mix (docs/api.md): each engine is asked on its own clock
    engines = {
        "table naive": fs.online(history=events_table(events, "int", "ts", "ns", tz=None, columns=("x",))),
        "table aware": fs.online(history=events_table(events, "int", "ts", "ns", columns=("x",))),
    }
    for name, conv in {"pd.Timestamp": lambda ns: pd.Timestamp(ns, unit="ns"),
                       "pd.Timestamp aware": lambda ns: pd.Timestamp(ns, unit="ns", tz="UTC"),
                       "np.datetime64": lambda ns: np.datetime64(ns, "ns")}.items():
        eng = fs.online()
        eng.ingest([{"key": 1, "ts": conv(e["ts"]), "x": e["x"]} for e in events])
        engines[name] = eng
    naive_at = {"np": np.datetime64(t, "ns"), "pd": pd.Timestamp(t, unit="ns")}
    aware_at = {"pd_utc": pd.Timestamp(t, unit="ns", tz="UTC")}
    for ename, eng in engines.items():
        ats, refused = (aware_at, naive_at) if "aware" in ename else (naive_at, aware_at)
        for aname, at in ats.items():
            assert not _diff(eng.get(1, at=at), want, fs.feature_names), (ename, aname)
        for aname, at in refused.items():
            with pytest.raises(rtml.SchemaError, match="at"):
                eng.get(1, at=at)


def test_key_kind_is_fixed_per_engine():
    fs = make_feature_set([Feat("count", None, None, name="n")])
    eng = fs.online()
    eng.ingest(events_table([{"key": 1, "ts": BASE, "x": 1.0}], "int", "ts", "ns", columns=("x",)))
    before = eng.stats()
    with pytest.raises(rtml.SchemaError, match="key"):
        eng.ingest(events_table([{"key": "a", "ts": BASE + S, "x": 1.0}], "str", "ts", "ns", columns=("x",)))
    assert eng.stats() == before
    with pytest.raises(rtml.SchemaError):
        eng.get("1", at=ns_to_datetime(BASE + 2 * S))


def test_get_many_edge_cases():
    fs = make_feature_set([Feat("count", None, None, name="n"), Feat("sum", "x", None, name="s")])
    eng = fs.online(history=events_table([{"key": 1, "ts": BASE, "x": 2.0}], "int", "ts", "ns", columns=("x",)))
    at = ns_to_datetime(BASE + S)
    empty = eng.get_many([], at=at)
    assert empty.num_rows == 0 and empty.column_names == ["key", "n", "s"]
    assert empty.schema.field("n").type == pa.int64() and empty.schema.field("s").type == pa.float64()
    dup = eng.get_many([1, 2, 1], at=at).to_pylist()
    assert [r["n"] for r in dup] == [1, 0, 1]
    assert [r["s"] for r in dup] == [2.0, 0.0, 2.0]


@pytest.mark.parametrize("form", ["shuffled_table", "pandas", "row_dicts"])
def test_online_history_any_order_and_form(form):
    """fs.online(history=events) bootstraps from a history in any row order: nothing is late,
    and every answer equals backfill."""
    import random

    import pandas as pd
    events = [{"key": i % 4, "ts": BASE + (i * 7919 % 101) * S, "x": float(i % 13) - 6.0} for i in range(120)]
    random.Random(3).shuffle(events)
    feats = [Feat("sum", "x", 10 * S, name="s"), Feat("last", "x", None, name="l"),
             Feat("var", "x", 30 * S, name="v"), Feat("count", None, None, name="n")]
    fs = make_feature_set(feats)
    tbl = events_table(events, "int", "ts", "ns", columns=("x",))
    hist = {
        "shuffled_table": lambda: tbl,
        "pandas": lambda: tbl.to_pandas(),
        "row_dicts": lambda: [{"key": e["key"], "ts": ns_to_datetime(e["ts"]), "x": e["x"]} for e in events],
    }[form]()
    eng = fs.online(history=hist)
    assert eng.stats()["late_events_dropped"] == 0
    assert eng.stats()["events_ingested"] == len(events)
    t = BASE + 101 * S
    want = fs.backfill(tbl, spine_table([(k, t) for k in range(5)], "int", "ts", "ns", extra=False)).to_pylist()
    for k in range(5):
        assert not _diff(eng.get(k, at=ns_to_datetime(t)), want[k], fs.feature_names), k


def test_durations_as_timedelta():
    import datetime as dt

    fs1 = rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.sum("v", window=dt.timedelta(hours=1))],
                          allowed_lateness=dt.timedelta(seconds=10), ttl=dt.timedelta(days=7))
    fs2 = rtml.FeatureSet(entity="k", timestamp="t", features=[rtml.sum("v", window="1h")],
                          allowed_lateness="10s", ttl="7d")
    assert fs1.to_json() == fs2.to_json()
    assert fs1.feature_names == ["v_sum_1h"]


def test_concurrent_ingest_and_get_from_threads():
    """Threads ingesting (row dicts and tables) while others query: no crash, no deadlock, and
    the final state equals backfill. allowed_lateness covers the whole span, so no event is late
    whatever the interleaving."""
    import threading

    n_threads, per_thread = 4, 200
    events = [
        {"key": th, "ts": BASE + i * S, "x": float((i * 31 + th) % 17) - 8.0}
        for th in range(n_threads)
        for i in range(per_thread)
    ]
    feats = [Feat("sum", "x", 10 * S, name="s"), Feat("count", None, None, name="n"),
             Feat("quantile", "x", 50 * S, q=0.9, name="p90"), Feat("last", "x", None, name="l")]
    fs = make_feature_set(feats, allowed_lateness=f"{per_thread + 10}s")
    eng = fs.online()
    errors = []

    def writer(th):
        try:
            mine = [e for e in events if e["key"] == th]
            for j in range(0, len(mine), 10):
                chunk = mine[j:j + 10]
                if (j // 10) % 2:
                    eng.ingest(events_table(chunk, "int", "ts", "ns", columns=("x",)))
                else:
                    eng.ingest([{"key": e["key"], "ts": ns_to_datetime(e["ts"]), "x": e["x"]} for e in chunk])
        except BaseException as e:  # noqa: BLE001
            errors.append(repr(e))

    def reader():
        try:
            for j in range(200):
                eng.get(j % n_threads, at=ns_to_datetime(BASE + (per_thread + 20) * S))
                eng.get_many(list(range(n_threads)), at=ns_to_datetime(BASE + (per_thread + 20) * S))
                eng.stats()
        except BaseException as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(th,)) for th in range(n_threads)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "deadlock: threads still running"
    assert not errors, errors
    assert eng.stats()["late_events_dropped"] == 0
    assert eng.stats()["events_ingested"] == len(events)
    t = BASE + per_thread * S
    want = fs.backfill(events_table(events, "int", "ts", "ns", columns=("x",)),
                       spine_table([(k, t) for k in range(n_threads)], "int", "ts", "ns", extra=False)).to_pylist()
    for k in range(n_threads):
        assert not _diff(eng.get(k, at=ns_to_datetime(t)), want[k], fs.feature_names), k
