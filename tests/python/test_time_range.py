"""Issue 12: instants outside the int64-nanosecond range (years 1677..2262) are a typed
``rtml.SchemaError`` naming the column or argument, on every conversion path, never an
uncaught OverflowError / panic, and a call that raises leaves the engine unchanged."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

import rtml  # noqa: E402  (a broken build must fail the suite, not skip it)

S = 1_000_000_000
BASE = 1_700_000_000 * S
UTC = dt.timezone.utc

# Beyond int64 ns: the representable range is 1677-09-21 .. 2262-04-11.
FAR_FUTURE = [dt.datetime(2300, 1, 1, tzinfo=UTC), dt.datetime(2262, 4, 12, tzinfo=UTC)]
FAR_PAST = [dt.datetime(1600, 1, 1, tzinfo=UTC), dt.datetime(1677, 9, 20, tzinfo=UTC)]
OUT = FAR_FUTURE + FAR_PAST
IDS = ["2300", "2262-04-12", "1600", "1677-09-20"]


def _fs(**kw):
    # the watermark guard off: these tests move one engine across centuries on purpose, to
    # check time conversion at the edges of the range (the guard: test_guards.py)
    kw.setdefault("max_ahead", None)
    return rtml.FeatureSet(
        entity="plane",
        timestamp="sched_dep",
        features=[rtml.count(window="1h", name="n"), rtml.sum("delay", window="1h", name="d")],
        **kw,
    )


def _table(times, unit="ns"):
    return pa.table(
        {
            "plane": pa.array([1] * len(times), pa.int64()),
            "sched_dep": pa.array(times, pa.timestamp(unit, tz="UTC")),
            "delay": pa.array([5.0] * len(times), pa.float64()),
        }
    )


def _engine():
    eng = rtml.OnlineEngine(_fs())
    eng.ingest(_table([BASE, BASE + S]))
    return eng


def _state(eng):
    aware = pd.Timestamp(eng.watermark, tz="UTC")
    try:
        answer = eng.get(1, at=aware)
    except rtml.SchemaError:  # an engine of naive times
        answer = eng.get(1, at=aware.tz_localize(None))
    return eng.stats(), eng.watermark, answer


def _assert_rejected(eng, call, name):
    before = _state(eng)
    with pytest.raises(rtml.SchemaError, match=f"'{name}'.*representable range"):
        call()
    assert _state(eng) == before


@pytest.mark.parametrize("when", OUT, ids=IDS)
def test_python_datetime_rows(when):
    eng = _engine()
    good = {"plane": 1, "sched_dep": dt.datetime(2023, 11, 14, 22, 14, 0, tzinfo=UTC), "delay": 1.0}
    bad = {"plane": 1, "sched_dep": when, "delay": 5.0}
    _assert_rejected(eng, lambda: eng.ingest(bad), "sched_dep")  # one row dict
    # a list with a good row first: the whole call fails, the good row is not applied
    _assert_rejected(eng, lambda: eng.ingest([good, bad]), "sched_dep")
    # the same instant as an ISO string and as a date
    _assert_rejected(eng, lambda: eng.ingest([dict(bad, sched_dep=when.isoformat())]), "sched_dep")
    _assert_rejected(eng, lambda: eng.ingest([dict(bad, sched_dep=when.date())]), "sched_dep")


@pytest.mark.parametrize("when", OUT, ids=IDS)
def test_naive_datetime_rows(when):
    eng = rtml.OnlineEngine(_fs())
    eng.ingest([{"plane": 1, "sched_dep": dt.datetime(2023, 1, 1), "delay": 1.0}])
    naive = when.replace(tzinfo=None)
    _assert_rejected(
        eng, lambda: eng.ingest([{"plane": 1, "sched_dep": naive, "delay": 5.0}]), "sched_dep"
    )


def test_pandas_timestamp_and_frames():
    # pandas >= 2 builds Timestamps beyond int64 ns at a coarser resolution ('us'): their
    # `.value` overflows in pandas; the engine must still name the column
    eng = _engine()
    for when in OUT:
        stamp = pd.Timestamp(when)
        _assert_rejected(
            eng,
            lambda stamp=stamp: eng.ingest([{"plane": 1, "sched_dep": stamp, "delay": 1.0}]),
            "sched_dep",
        )
        _assert_rejected(eng, lambda stamp=stamp: eng.get(1, at=stamp), "at")
    # the in-range edge works, and an object column of out-of-range datetimes is a typed
    # error on the frame path too
    edge = pd.Timestamp("2262-04-11T23:47:16.854775807", tz="UTC")
    eng2 = rtml.OnlineEngine(_fs())
    eng2.ingest([{"plane": 1, "sched_dep": edge, "delay": 1.0}])
    assert eng2.watermark == edge.value
    frame = pd.DataFrame(
        {
            "plane": [1, 1],
            "sched_dep": pd.Series(
                [dt.datetime(2023, 1, 1, tzinfo=UTC), FAR_FUTURE[0]], dtype=object
            ),
            "delay": [1.0, 2.0],
        }
    )
    _assert_rejected(eng, lambda: eng.ingest(frame), "sched_dep")


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
@pytest.mark.parametrize("when", OUT, ids=IDS)
def test_arrow_units_ingest_and_backfill(unit, when):
    naive = when.replace(tzinfo=None)
    table = _table([dt.datetime(2023, 1, 1), naive], unit)
    eng = _engine()
    _assert_rejected(eng, lambda: eng.ingest(table), "sched_dep")
    fs = _fs()
    good = _table([BASE])
    with pytest.raises(rtml.SchemaError, match="'sched_dep'.*representable range"):
        fs.backfill(table, good.select(["plane", "sched_dep"]))
    with pytest.raises(rtml.SchemaError, match="'sched_dep'.*representable range"):
        fs.backfill(good, table.select(["plane", "sched_dep"]))


@pytest.mark.parametrize("unit, factor", [("s", S), ("ms", 10**6), ("us", 10**3)])
def test_epoch_numbers_that_overflow_when_scaled(unit, factor):
    fs = _fs(timestamp_unit=unit)
    eng = rtml.OnlineEngine(fs)
    eng.ingest([{"plane": 1, "sched_dep": BASE // factor, "delay": 1.0}])
    big = (2**63 - 1) // factor + 1  # the smallest epoch number that overflows i64 ns
    before = eng.stats()
    for v in (big, -big - 1, 10**12 * 10**9 // factor * factor, 2**80):
        row = {"plane": 1, "sched_dep": v, "delay": 1.0}
        with pytest.raises(rtml.SchemaError, match="'sched_dep'.*representable range"):
            eng.ingest([row])
        table = pa.table(
            {"plane": [1], "sched_dep": pa.array([min(v, 2**63 - 1)], pa.int64()), "delay": [1.0]}
        )
        with pytest.raises(rtml.SchemaError, match="'sched_dep'.*representable range"):
            eng.ingest(table)
        with pytest.raises(rtml.SchemaError, match="'at'.*representable range"):
            eng.get(1, at=v)
    assert eng.stats() == before
    # the largest epoch number that still fits is accepted
    eng.ingest([{"plane": 1, "sched_dep": (2**63 - 1) // factor, "delay": 1.0}])


@pytest.mark.parametrize("when", OUT, ids=IDS)
def test_query_at(when):
    eng = _engine()
    _assert_rejected(eng, lambda: eng.get(1, at=when), "at")
    _assert_rejected(eng, lambda: eng.get_many([1, 2], at=when), "at")
    _assert_rejected(
        eng, lambda: eng.get_many([1, 2], at=[pd.Timestamp(BASE, tz="UTC"), when]), "at"
    )
    tf = rtml.Transforms([rtml.passthrough("n")])
    _assert_rejected(eng, lambda: eng.vector(1, tf, {}, at=when), "at")


@pytest.mark.parametrize("unit", ["D", "s", "ms", "us"])
def test_numpy_datetime64_does_not_wrap(unit):
    # numpy's astype('datetime64[ns]') wraps silently on overflow (year 1600 in 'us' becomes
    # 2184): the engine must reject it, not move the watermark to a wrapped instant
    import numpy as np

    eng = rtml.OnlineEngine(_fs())
    eng.ingest([{"plane": 1, "sched_dep": np.datetime64("2023-01-01", unit), "delay": 1.0}])
    assert eng.watermark == pd.Timestamp("2023-01-01").value
    for when in ("2300-01-01", "1600-01-01", "2262-04-12", "1677-09-20"):
        v = np.datetime64(when, unit)
        _assert_rejected(
            eng, lambda v=v: eng.ingest([{"plane": 1, "sched_dep": v, "delay": 1.0}]), "sched_dep"
        )
        _assert_rejected(eng, lambda v=v: eng.get(1, at=v), "at")
    # in range, every unit is read exactly
    eng.ingest([{"plane": 1, "sched_dep": np.datetime64("2262-04-11", unit), "delay": 1.0}])
    assert eng.watermark == pd.Timestamp("2262-04-11").value
