"""Nothing one bad event can break (issue 12, the engine part): the watermark guard
(`max_ahead`), deduplication by event id (`dedupe_on`), and out-of-range times as typed errors
on the guard and dedupe paths. Online and offline agree on every event (`backfill(...,
arrival=...)`, `FeatureSet.verdicts`), and the runner sends events ahead of the watermark to its
dead letters."""

from __future__ import annotations

import datetime as dt
import json
import warnings
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rtml
import rtml.sources
from helpers import n_examples
from rtml.runner import AHEAD_REASON, Runner

UTC = dt.timezone.utc
S = 10**9
MIN = 60 * S
DAY = 24 * 60 * MIN
T0 = 1_356_998_400 * S  # 2013-01-01, the flights of the issue
FAR = int((dt.datetime(2200, 1, 1, tzinfo=UTC) - dt.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * S


def _fs(**kw):
    kw.setdefault("allowed_lateness", "10m")
    kw.setdefault("timestamp_unit", "ns")
    return rtml.FeatureSet(
        "tail",
        "ts",
        [
            rtml.count(window="1h"),
            rtml.sum("delay", window="1h"),
            rtml.mean("delay", window="30m"),
            rtml.max("delay", window="2h", hop="30m"),
            rtml.last("delay"),
            rtml.distinct_count("origin", window="1h"),
        ],
        **kw,
    )


def _row(tail, ts_ns, delay=1.0, origin="EWR", **extra):
    return {"tail": tail, "ts": ts_ns, "delay": delay, "origin": origin, **extra}


def _table(rows):
    return pa.table({k: [r[k] for r in rows] for k in rows[0]})


def _ts(ns):
    return dt.datetime.fromtimestamp(ns // S, UTC) + dt.timedelta(microseconds=(ns % S) // 1000)


def _rows_dt(rows):
    return [dict(r, ts=_ts(r["ts"])) for r in rows]


# ------------------------------------------------------------------ the watermark guard


def test_default_bound_is_derived_from_windows_and_lateness_and_can_be_set_or_disabled():
    fs = _fs()
    # max(2 * longest window (2h, plus its 30m hop), 1 day) + lateness
    assert fs.max_ahead == "1450m"  # 1 day + 10 minutes
    long = rtml.FeatureSet("k", "ts", [rtml.count(window="30d")], allowed_lateness="1h")
    assert long.max_ahead == "1441h"  # 60 days + 1 hour
    assert _fs(max_ahead="6h").max_ahead == "6h"
    assert _fs(max_ahead=dt.timedelta(hours=3)).max_ahead == "3h"
    assert _fs(max_ahead=None).max_ahead is None
    with pytest.raises(rtml.SpecError, match="max_ahead"):
        _fs(max_ahead="-1h")
    with pytest.raises(rtml.SpecError, match="max_ahead"):
        _fs(max_ahead="soon")


def test_documents_state_the_new_fields_only_when_set():
    """An old document (no max_ahead, no dedupe_on) loads, and a feature set that does not set
    them writes exactly the document it wrote before (so its hash does not change)."""
    fs = _fs()
    doc = json.loads(fs.to_json())
    assert "max_ahead" not in doc and "dedupe_on" not in doc
    old = {k: v for k, v in doc.items()}
    assert rtml.FeatureSet.from_json(json.dumps(old)) == fs
    for kw, key, want in [
        ({"max_ahead": "6h"}, "max_ahead", "6h"),
        ({"max_ahead": None}, "max_ahead", None),
        ({"dedupe_on": "event_id"}, "dedupe_on", "event_id"),
    ]:
        other = _fs(**kw)
        d = json.loads(other.to_json())
        assert d[key] == want
        assert other != fs
        back = rtml.FeatureSet.from_json(other.to_json())
        assert back == other and back.max_ahead == other.max_ahead and back.dedupe_on == other.dedupe_on
    with pytest.raises(rtml.SpecError, match="dedupe_on"):
        _fs(dedupe_on="tail")
    with pytest.raises(rtml.SpecError, match="dedupe_on"):
        _fs(dedupe_on=3)


@pytest.mark.parametrize("form", ["row", "rows", "table"])
def test_the_year_2200_does_not_poison_the_watermark(form):
    """The issue's reproduction: a departure stamped 2200-01-01 arrives at a running engine. It
    is not applied, never moves the watermark, is counted and named; the 2013 events after it are
    applied as if it never came."""
    fs = _fs()
    history = [_row(f"N{i % 7}", T0 + i * MIN, float(i % 11)) for i in range(120)]
    eng, clean = fs.online(), fs.online()
    eng.ingest(_table(history))
    clean.ingest(_table(history))
    wm = eng.watermark
    bad = [_row("N14228", T0 + 200 * MIN, 2.0), _row("N14228", FAR, 5.0), _row("N1", T0 + 201 * MIN, 3.0)]
    if form == "row":
        reports = [eng.ingest(r, report=True) for r in _rows_dt(bad)]
        assert [r.rejected for r in reports] == [[], [0], []]
        rep = rtml.IngestReport(
            sum(r.accepted for r in reports), sum(r.late for r in reports),
            sum(r.ahead for r in reports), sum(r.duplicates for r in reports), [1],
        )
    elif form == "rows":
        rep = eng.ingest(_rows_dt(bad), report=True)
    else:
        rep = eng.ingest(_table(bad), report=True)
    assert rep == rtml.IngestReport(accepted=2, late=0, ahead=1, duplicates=0, rejected=[1])
    clean.ingest(_table([bad[0], bad[2]]))
    assert eng.watermark == clean.watermark == T0 + 201 * MIN > wm
    assert eng.stats()["ahead_events_rejected"] == 1
    assert eng.stats()["events_ingested"] == clean.stats()["events_ingested"]
    # every later real event is applied, and every answer is the clean engine's
    later = [_row(f"N{i % 7}", T0 + (202 + i) * MIN, 1.5) for i in range(30)]
    assert eng.ingest(_table(later)) == 30
    clean.ingest(_table(later))
    at = T0 + 240 * MIN
    for k in ["N14228", "N1", "N3"]:
        assert eng.get(k, at=at) == clean.get(k, at=at)
    # ingest without report= still returns the count
    assert eng.ingest(_row("N1", FAR, 1.0)) == 0


def test_an_empty_engine_guards_a_batch_from_its_lower_median_and_advance_watermark_seeds_it():
    fs = _fs()
    eng = fs.online()
    rep = eng.ingest(_table([_row("a", FAR, 1.0), _row("a", T0, 1.0), _row("b", T0 + MIN, 1.0)]), report=True)
    assert (rep.accepted, rep.ahead, rep.rejected) == (2, 1, [0])
    assert eng.watermark == T0 + MIN
    # a lone first event cannot be judged by the data: advance_watermark gives the reference
    seeded = fs.online()
    assert seeded.advance_watermark(_ts(T0)) == T0
    assert seeded.ingest(_row("a", FAR, 1.0), report=True).ahead == 1
    assert seeded.watermark == T0
    assert seeded.advance_watermark(_ts(T0 - DAY)) == T0  # never backwards
    with pytest.raises(rtml.SchemaError, match="'t'"):
        seeded.advance_watermark(dt.datetime(2300, 1, 1, tzinfo=UTC))


def test_a_stream_that_really_jumps_is_followed():
    """16 events ahead that agree (within max_ahead of each other) are a jump of the stream, not
    garbage: the 16th is applied and the stream goes on from there."""
    fs = _fs()
    eng = fs.online()
    eng.ingest(_row("a", T0, 1.0))
    later = T0 + 30 * DAY
    reports = [eng.ingest(_row("a", later + i * S, 1.0), report=True) for i in range(16)]
    assert [r.ahead for r in reports] == [1] * 15 + [0]
    assert eng.watermark == later + 15 * S
    assert eng.ingest(_row("a", later + 20 * S, 1.0)) == 1


def test_backfill_with_arrival_and_verdicts_name_exactly_what_online_rejects():
    fs = _fs(dedupe_on="id")
    rows = [_row("a", T0 + i * MIN, float(i), id=f"e{i}") for i in range(40)]
    rows.insert(10, _row("a", FAR, 9.0, id="far"))
    rows.insert(20, dict(rows[5]))  # a duplicate in a later batch
    rows.insert(30, _row("b", T0, 1.0, id="late"))  # late by the time it arrives
    for i, r in enumerate(rows):
        r["batch"] = i // 8
    eng = fs.online()
    verdicts = []
    for b in range(rows[-1]["batch"] + 1):
        part = [r for r in rows if r["batch"] == b]
        rep = eng.ingest(_table(part), report=True)
        got = ["applied"] * len(part)
        for j in rep.rejected:
            got[j] = "ahead"
        verdicts += got
        assert rep.ahead == len(rep.rejected)
    want = fs.verdicts(_table(rows), arrival="batch")
    assert [v if v == "ahead" else "applied" for v in want] == verdicts
    assert want.count("ahead") == 1 and want.count("duplicate") == 1 and want.count("late") == 1
    assert want[10] == "ahead" and want[20] == "duplicate" and want[30] == "late"
    st_ = eng.stats()
    assert (st_["ahead_events_rejected"], st_["duplicates_dropped"], st_["late_events_dropped"]) == (1, 1, 1)
    spine = pa.table({"tail": ["a", "a", "b"], "ts": [T0 + 39 * MIN + 1, T0 + 50 * MIN, T0 + 50 * MIN]})
    off = fs.backfill(_table(rows), spine, arrival="batch", output="arrow")
    for i in range(spine.num_rows):
        k, t = spine.column("tail")[i].as_py(), spine.column("ts")[i].as_py()
        on = eng.get(k, at=t)
        assert {n: off.column(n)[i].as_py() for n in fs.feature_names} == on
    with pytest.raises(rtml.SchemaError, match="'nope'"):
        fs.verdicts(_table(rows), arrival="nope")
    with pytest.raises(rtml.SchemaError, match="'origin'"):
        fs.verdicts(_table(rows), arrival="origin")


# ------------------------------------------------------------------ deduplication


@pytest.mark.parametrize("kind", ["int", "str"])
def test_duplicates_are_dropped_first_arrival_wins(kind):
    fs = _fs(dedupe_on="event_id")
    mk = (lambda i: i) if kind == "int" else (lambda i: f"ev-{i}")
    eng = fs.online()
    rows = [_row("a", T0 + i * MIN, float(i), event_id=mk(i)) for i in range(10)]
    assert eng.ingest(_table(rows + [rows[3], rows[3]])) == 10  # within a batch
    assert eng.ingest(_table(rows[5:])) == 0  # a retried batch
    assert eng.ingest(_rows_dt([rows[9]])) == 0  # list of dicts
    assert eng.ingest(_rows_dt(rows[9:])[0]) == 0  # one row
    # a different payload under a seen id: the first one stays
    changed = dict(rows[7], delay=1000.0)
    assert eng.ingest(_rows_dt([changed]), report=True).duplicates == 1
    assert eng.stats()["duplicates_dropped"] == 2 + 5 + 1 + 1 + 1
    clean = fs.online()
    clean.ingest(_table(rows))
    at = T0 + 10 * MIN
    assert eng.get("a", at=at) == clean.get("a", at=at)
    # backfill drops the same copies
    spine = pa.table({"tail": ["a"], "ts": [at]})
    dirty = rows + [rows[3], changed] + rows[5:]
    off = fs.backfill(_table(dirty), spine, output="arrow").to_pylist()[0]
    assert {n: off[n] for n in fs.feature_names} == clean.get("a", at=at)
    # ... and without dedupe_on they would count twice
    plain = _fs().backfill(_table(dirty), spine, output="arrow").to_pylist()[0]
    assert plain["count_1h"] > off["count_1h"]


def test_the_dedupe_set_is_bounded_and_survives_a_snapshot(tmp_path):
    fs = _fs(dedupe_on="id")
    eng = fs.online()
    for b in range(50):
        eng.ingest(_table([_row("a", T0 + (b * 20 + i) * MIN, 1.0, id=b * 20 + i) for i in range(20)]))
    # only the ids within the horizon stay (lateness 10m + longest window 2h30m = 160 events,
    # plus the sweep step of a quarter of it and one batch: at most 220 ids, a table of at most
    # 512 slots), not 1,000 ids (at least 33 bytes each)
    assert fs.dedupe_horizon == "160m"
    small = eng.stats()["state_bytes"]
    eng2 = _fs().online()
    for b in range(50):
        eng2.ingest(_table([_row("a", T0 + (b * 20 + i) * MIN, 1.0) for i in range(20)]))
    assert small - eng2.stats()["state_bytes"] <= 512 * 49 < 1000 * 33
    last = [_row("a", T0 + 999 * MIN, 1.0, id=999)]
    eng.snapshot(tmp_path / "s.snap")
    back = rtml.OnlineEngine.restore(tmp_path / "s.snap", feature_set=fs)
    assert back.stats()["duplicates_dropped"] == eng.stats()["duplicates_dropped"]
    assert back.ingest(_table(last), report=True).duplicates == 1
    assert eng.ingest(_table(last), report=True).duplicates == 1


def test_a_restamped_copy_is_dropped_while_a_window_could_hold_both_copies():
    """The dedupe horizon is the lateness plus the longest window: a copy re-stamped with a later
    time (not late) is recognised while some window still holds the first copy, so no window
    counts one event twice; past the horizon it is an event of its own. Backfill with the same
    arrival order drops exactly the same copies."""
    fs = _fs(dedupe_on="id")  # lateness 10m, longest window 2h + hop 30m
    horizon = 160 * MIN
    assert fs.dedupe_horizon == "160m"
    rows = [_row("a", T0, 5.0, id="x")]
    rows += [_row("b", T0 + i * MIN, 1.0, id=f"f{i}") for i in range(1, 101)]  # watermark T0+100m
    rows.append(_row("a", T0 + 100 * MIN, 5.0, id="x"))  # re-stamped, past the lateness
    rows += [_row("b", T0 + i * MIN, 1.0, id=f"f{i}") for i in range(101, 221)]  # watermark T0+220m
    rows.append(_row("a", T0 + 220 * MIN, 5.0, id="x"))  # past the horizon (and its sweep step)
    for i, r in enumerate(rows):
        r["batch"] = i // 10
    spine = pa.table({"tail": ["a", "a", "a"], "ts": [T0 + 101 * MIN, T0 + 219 * MIN, T0 + 221 * MIN]})
    ask = {10: 0, 21: 1, 22: 2}  # after batch b, ask spine row i (answerable then)
    eng = fs.online()
    dup, on = [], {}
    for b in range(rows[-1]["batch"] + 1):
        part = [r for r in rows if r["batch"] == b]
        dup.append(eng.ingest(_table(part), report=True).duplicates)
        if b in ask:
            on[ask[b]] = eng.get("a", at=spine.column("ts")[ask[b]].as_py())
    assert sum(dup) == 1 and eng.stats()["duplicates_dropped"] == 1
    verdicts = fs.verdicts(_table(rows), arrival="batch")
    assert [i for i, v in enumerate(verdicts) if v != "applied"] == [101]
    assert verdicts[101] == "duplicate"
    # the 1h window at T0 + 101m would hold the copy at T0 + 100m: dropped, so it is empty
    off = fs.backfill(_table(rows), spine, arrival="batch", output="arrow").to_pylist()
    assert [r["count_1h"] for r in off] == [0, 0, 1]
    assert [r["delay_sum_1h"] for r in off] == [0.0, 0.0, 5.0]
    for i, r in enumerate(off):
        assert {n: r[n] for n in fs.feature_names} == on[i]
    # the first copy is past the horizon when the last copy arrives: the watermark passed
    # T0 + horizon + a quarter of it before the last copy's batch
    assert T0 + 220 * MIN - T0 > horizon + horizon // 4


def test_bad_event_ids_are_typed_errors_naming_the_column_and_change_nothing():
    fs = _fs(dedupe_on="id")
    eng = fs.online()
    eng.ingest(_row("a", T0, 1.0, id=1))
    before = eng.stats()
    for bad in [None, 1.5, True, b"x"]:
        with pytest.raises(rtml.SchemaError, match="'id'"):
            eng.ingest(_rows_dt([_row("a", T0 + MIN, 1.0, id=bad)]))
        with pytest.raises(rtml.SchemaError, match="'id'"):
            eng.ingest(_rows_dt([_row("a", T0 + MIN, 1.0, id=bad)])[0])
    with pytest.raises(rtml.SchemaError, match="'id'"):
        eng.ingest(pa.table({"tail": ["a"], "ts": [T0 + MIN],
                             "delay": [1.0], "origin": ["x"], "id": pa.array([None], pa.int64())}))
    with pytest.raises(rtml.SchemaError, match="'id'"):
        eng.ingest(pa.table({"tail": ["a"], "ts": [T0 + MIN],
                             "delay": [1.0], "origin": ["x"], "id": [1.5]}))
    with pytest.raises(rtml.SchemaError, match="'id'"):
        eng.ingest(_table([_row("a", T0 + MIN, 1.0)]))  # no id column
    with pytest.raises(rtml.SchemaError, match="'id'"):
        fs.backfill(_table([_row("a", T0 + MIN, 1.0)]), pa.table({"tail": ["a"], "ts": [T0]}))
    assert eng.stats() == before


# ------------------------------------------------------------------ out-of-range times


def test_out_of_range_times_stay_typed_errors_on_the_guard_and_dedupe_paths():
    """The issue's `dep_delay` 1e12 minutes: a departure time pushed beyond int64 nanoseconds is a
    SchemaError naming the column on every path, with the guard and dedupe on, and changes
    nothing."""
    fs = rtml.FeatureSet("tail", "ts", [rtml.count(window="1h")], timestamp_unit="s", dedupe_on="id")
    eng = fs.online()
    eng.ingest({"tail": "a", "ts": T0 // S, "id": 1})
    before = eng.stats()
    overflow = T0 // S + 10**12 * 60  # 1e12 minutes later, in seconds: beyond year 2262
    rows = [{"tail": "a", "ts": T0 // S + 60, "id": 2}, {"tail": "a", "ts": overflow, "id": 3}]
    with pytest.raises(rtml.SchemaError, match="'ts'"):
        eng.ingest(rows[1])
    with pytest.raises(rtml.SchemaError, match="'ts'"):
        eng.ingest(rows)
    with pytest.raises(rtml.SchemaError, match="'ts'"):
        eng.ingest(pa.table({"tail": ["a", "a"], "ts": [r["ts"] for r in rows], "id": [2, 3]}))
    with pytest.raises(rtml.SchemaError, match="'ts'"):
        eng.ingest({"tail": "a", "ts": 10**30, "id": 4})  # beyond int64 itself
    with pytest.raises(rtml.SchemaError, match="'ts'"):
        eng.ingest({"tail": "a", "ts": dt.datetime(2200, 1, 1) + dt.timedelta(minutes=1e8), "id": 5})
    table = pa.table({"tail": ["a", "a"], "ts": [r["ts"] for r in rows], "id": [2, 3], "b": [0, 1]})
    with pytest.raises(rtml.SchemaError, match="'ts'"):
        fs.verdicts(table, arrival="b")
    with pytest.raises(rtml.SchemaError, match="'ts'"):
        fs.backfill(table, pa.table({"tail": ["a"], "ts": [T0 // S]}), arrival="b")
    assert eng.stats() == before
    assert eng.ingest(rows[0]) == 1


# ------------------------------------------------------------------ the runner


def test_the_runner_sends_events_ahead_of_the_watermark_to_its_dead_letters(tmp_path):
    fs = _fs()
    rows = [_row(f"N{i % 5}", T0 + i * MIN, float(i)) for i in range(300)]
    far_at = [57, 58, 201]
    for i in far_at:
        rows[i] = _row("N14228", FAR + i * DAY, 1.0)
    events = _table(rows)
    r = Runner(fs, rtml.sources.replay(events), tmp_path, max_batch=64)
    assert r.run_until_idle() == len(rows)
    m = r.metrics()
    assert m["ahead"] == len(far_at) and m["malformed"] == 0 and m["late"] == 0
    assert f'rtml_runner_ahead_events_total{{partition="0"}} {len(far_at)}' in r.prometheus()
    r.checkpoint()
    dl = pq.read_table(tmp_path / "dead_letters")
    # a replay source delivers in time order: the far events come last
    order = sorted(range(len(rows)), key=lambda i: rows[i]["ts"])
    assert sorted(int(x) for x in dl.column("offset").to_pylist()) == [
        pos for pos, i in enumerate(order) if i in far_at
    ]
    assert set(dl.column("reason").to_pylist()) == {AHEAD_REASON}
    good = [x for i, x in enumerate(rows) if i not in far_at]
    clean = fs.online()
    clean.ingest(_table(good))
    at = T0 + 301 * MIN
    for k in ["N0", "N3", "N14228"]:
        assert r.get(k, at=at) == clean.get(k, at=at)


# ------------------------------------------------------------------ the property


@st.composite
def _streams(draw):
    """A clean stream cut into arrival batches, and the same stream polluted: far-future events
    (never in the first batch), copies within a batch, retried batches; ids int or str."""
    n = draw(st.integers(1, 80))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    str_ids = draw(st.booleans())
    ts = sorted(T0 + rnd.randrange(0, 6 * 60) * MIN + rnd.randrange(0, 60) * S for _ in range(n))
    # a little out of order, sometimes beyond the lateness (those are late, in both streams)
    ts = [t - (rnd.randrange(0, 15) * MIN if rnd.random() < 0.2 else 0) for t in ts]
    rows = [
        {"tail": f"N{rnd.randrange(4)}", "ts": t, "delay": float(rnd.randrange(-8, 40)) / 4,
         "origin": rnd.choice(["EWR", "JFK", "LGA"]), "id": (f"id-{i}" if str_ids else i)}
        for i, t in enumerate(ts)
    ]
    cuts = sorted(rnd.sample(range(1, n), k=min(n - 1, draw(st.integers(0, 8))))) if n > 1 else []
    batches = [rows[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    dirty = [list(b) for b in batches]
    far = copies = 0
    for j in range(draw(st.integers(0, 12))):
        kind = rnd.randrange(3)
        if len(dirty) < 2:
            break
        b = rnd.randrange(1, len(dirty))
        if kind == 0 and far < 15:
            dirty[b].insert(rnd.randrange(len(dirty[b]) + 1), {
                "tail": "N14228", "ts": FAR - rnd.randrange(0, 30) * 11 * DAY - j * 400 * DAY, "delay": 5.0,
                "origin": "EWR", "id": (f"far-{j}" if str_ids else 10**9 + j)})
            far += 1
        elif kind == 1:
            clean_rows = [r for r in dirty[b] if r["tail"] != "N14228"]
            if clean_rows:
                dirty[b].insert(rnd.randrange(len(dirty[b]) + 1), dict(rnd.choice(clean_rows)))
                copies += 1
        else:
            again = [dict(r) for r in dirty[b] if r["tail"] != "N14228"]
            dirty.insert(min(b + 2, len(dirty)), again)
            copies += len(again)
    shuffle = draw(st.booleans())
    if shuffle:
        for b in dirty:
            rnd.shuffle(b)
    return batches, dirty, far, copies


def _with_arrival(batches):
    return [dict(r, batch=i) for i, b in enumerate(batches) for r in b]


@settings(max_examples=n_examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_streams(), st.sampled_from(["table", "rows", "one_by_one"]))
def test_a_polluted_stream_answers_like_the_clean_one_online_and_offline(stream, form):
    batches, dirty, far, copies = stream
    fs = _fs(dedupe_on="id")

    def feed(bs):
        eng = fs.online()
        total = [0, 0, 0, 0]
        for b in bs:
            if not b:
                continue
            if form == "table":
                reps = [eng.ingest(_table(b), report=True)]
            elif form == "rows":
                reps = [eng.ingest(_rows_dt(b), report=True)]
            else:  # one arrival: one call per event in time order (ties by value)
                order = sorted(b, key=lambda r: (r["ts"], r["delay"]))
                reps = [eng.ingest(_rows_dt([r])[0], report=True) for r in order]
            for rep in reps:
                for j, v in enumerate([rep.accepted, rep.late, rep.ahead, rep.duplicates]):
                    total[j] += v
            if form != "one_by_one":
                far_rows = [i for i, r in enumerate(b) if r["tail"] == "N14228"]
                assert reps[0].rejected == far_rows
        return eng, total

    clean, c = feed(batches)
    eng, d = feed(dirty)
    assert c[2:] == [0, 0]
    assert d[0] == c[0] and d[2] == far and d[1] + d[3] == c[1] + copies
    assert eng.watermark == clean.watermark
    # answers at every instant the engine answers exactly
    wm, late = clean.watermark, 10 * MIN
    ats = [wm - late, wm - late + 7 * S, wm + 1, wm + 45 * MIN]
    keys = ["N0", "N1", "N2", "N3", "N14228"]
    spine = pa.table({"tail": [k for k in keys for _ in ats],
                      "ts": [t for _ in keys for t in ats]})
    off_clean = fs.backfill(_table(_with_arrival(batches)), spine, arrival="batch", output="arrow").to_pylist()
    off_dirty = fs.backfill(_table(_with_arrival(dirty)), spine, arrival="batch", output="arrow").to_pylist()
    assert off_dirty == off_clean
    for i, (k, t) in enumerate((k, t) for k in keys for t in ats):
        got = eng.get(k, at=t)
        assert got == clean.get(k, at=t)
        assert got == {n: off_clean[i][n] for n in fs.feature_names}
    v = fs.verdicts(_table(_with_arrival(dirty)), arrival="batch")
    assert [v.count(x) for x in ("applied", "late", "ahead", "duplicate")] == d


def test_the_runner_dedupes_json_payloads_by_event_id(tmp_path):
    """Raw JSON messages (as a broker delivers them) with ids, some re-sent by a retrying
    producer, some without an id: each event counts once, the id-less ones are dead letters."""
    fs = _fs(dedupe_on="event_id")
    rows = [_row(f"N{i % 3}", T0 + i * MIN, float(i), event_id=(i if i % 2 else f"e{i}")) for i in range(60)]
    msgs = [json.dumps(r).encode() for r in rows]
    resent = msgs[:20] + msgs[10:30] + msgs[30:] + msgs[55:]  # retried messages
    missing = json.dumps(_row("N1", T0 + 61 * MIN, 1.0)).encode()
    src = rtml.sources.replay_messages(resent + [missing], timestamp_unit="ns", fields={"event_id": "event_id"})
    r = Runner(fs, src, tmp_path, max_batch=16)
    r.run_until_idle()
    m = r.metrics()
    assert m["duplicates"] == 10 + 5 and m["malformed"] == 1
    assert f'rtml_runner_duplicate_events_total{{partition="0"}} {15}' in r.prometheus()
    r.checkpoint()
    reasons = pq.read_table(tmp_path / "dead_letters").column("reason").to_pylist()
    assert len(reasons) == 1 and "event_id" in reasons[0]
    clean = fs.online()
    clean.ingest(rows)  # row dicts: ints and strings may mix as ids
    at = T0 + 62 * MIN
    for k in ["N0", "N1", "N2"]:
        assert r.get(k, at=at) == clean.get(k, at=at)


def test_backfill_arrival_may_be_arrival_times():
    fs = _fs(dedupe_on="id")
    rows = [_row("a", T0 + i * MIN, float(i), id=i) for i in range(10)] + [_row("a", FAR, 1.0, id=99)]
    arrived = [T0 + (i // 4) * 5 * MIN for i in range(len(rows))]
    table = _table(rows).append_column("arrived", pa.array(arrived, pa.timestamp("ns", "UTC")))
    by_time = fs.verdicts(table, arrival="arrived")
    numbered = fs.verdicts(table.append_column("n", pa.array([i // 4 for i in range(len(rows))])), arrival="n")
    assert by_time == numbered and by_time[-1] == "ahead" and by_time.count("applied") == 10


def test_history_is_trusted_and_a_reject_warns_once():
    """`fs.online(history=...)` applies a history with a gap wider than max_ahead whole, as
    backfill does (the guard is for the live stream); the first call that rejects events warns
    once per engine."""
    fs = _fs()
    rows = [_row("a", T0 + i * MIN, 1.0) for i in range(5)] + [_row("a", T0 + 3 * DAY + i * MIN, 2.0) for i in range(5)]
    eng = fs.online(history=_table(rows))
    assert eng.stats()["events_ingested"] == 10 and eng.stats()["ahead_events_rejected"] == 0
    at = T0 + 3 * DAY + 10 * MIN
    spine = pa.table({"tail": ["a"], "ts": [at]})
    off = fs.backfill(_table(rows), spine, output="arrow").to_pylist()[0]
    assert eng.get("a", at=at) == {n: off[n] for n in fs.feature_names}
    # the same events live, in one call: the events after the 3-day gap are ahead
    live = fs.online()
    with pytest.warns(rtml.AheadEventsWarning, match="max_ahead"):
        assert live.ingest(_table(rows)) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert live.ingest(_row("a", FAR, 1.0)) == 0  # once per engine
    assert live.stats()["ahead_events_rejected"] == 6
