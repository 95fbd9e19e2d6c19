"""The Python boundary (issue 11) and the input conversions (issue 19): the OnlineEngine wrapper
over the typed core, the panic guard and poisoning, time zones, one missing-value rule for every
input form, the late-events warning, `in` / `len`, `restore(feature_set=)`, stats and repr."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import re
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import tomllib

import rtml
from rtml import _core

ROOT = pathlib.Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc
BERLIN = dt.timezone(dt.timedelta(hours=2))  # CEST, fixed: no tz database needed
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MIN = dt.timedelta(minutes=1)


def _fs(**kw):
    return rtml.FeatureSet(
        entity="driver",
        timestamp="ts",
        features=[
            rtml.count(window="1h", name="n"),
            rtml.sum("fare", window="1h", name="fare_sum"),
            rtml.count("zone", window="1h", name="zones_seen"),
            rtml.distinct_count("zone", window="1h", name="zones"),
        ],
        **kw,
    )


def _rows(n=6, tz=UTC):
    base = T0 if tz is not None else T0.replace(tzinfo=None)
    return [
        {"driver": i % 2, "ts": base + i * MIN, "fare": float(i), "zone": f"z{i % 3}"}
        for i in range(n)
    ]


# --------------------------------------------------------------------------
# the wrapper and the core


def test_online_engine_is_the_python_wrapper_over_the_typed_core():
    eng = _fs().online()
    assert type(eng) is rtml.OnlineEngine
    assert rtml.OnlineEngine.__module__ == "rtml.online"
    assert isinstance(eng._engine, _core.Engine)
    # every compiled class names the module it lives in
    for cls in (_core.Spec, _core.Engine, _core.Transforms):
        assert cls.__module__ == "rtml._core", cls


def test_core_takes_typed_objects_only():
    """The compiled layer never reads the package's private attributes: an object that merely
    carries `_spec` / `_t` is refused with a TypeError; the wrapper passes the typed objects."""

    class Impostor:
        _spec = _fs()._spec
        _t = rtml.Transforms([rtml.passthrough("fare")])._t

    with pytest.raises(TypeError):
        _core.Engine(Impostor())
    eng = _fs().online()
    with pytest.raises(TypeError):
        eng._engine.vector(0, Impostor(), {}, T0)
    # through the wrapper, a FeatureSet, its document and a core Spec all work
    fs = _fs()
    for arg in (fs, fs.to_json(), fs._spec):
        assert rtml.OnlineEngine(arg).feature_names == fs.feature_names
    with pytest.raises(TypeError, match="FeatureSet"):
        rtml.OnlineEngine(42)


def test_compiled_layer_does_not_reach_into_the_package():
    """No read of the package's privates and no import of its modules from src/python: the
    exception classes are handed down once by rtml/__init__.py."""
    src = "\n".join(p.read_text() for p in (ROOT / "src" / "python").glob("*.rs"))
    for needle in ('"_spec"', '"_t"', "rtml._io", 'import("rtml', 'rtml.exceptions",'):
        assert needle not in src, needle
    assert not re.search(r"\bimport\(\s*\"rtml", src)


def test_errors_are_the_package_classes():
    eng = _fs().online()
    with pytest.raises(rtml.SchemaError) as e:
        eng.ingest({"driver": 1, "ts": T0})  # fare and zone missing
    assert type(e.value) is rtml.SchemaError and "fare" in str(e.value)
    with pytest.raises(rtml.SpecError):
        rtml.FeatureSet.from_json("{}")


# --------------------------------------------------------------------------
# panic guard and poisoning


def test_a_panic_poisons_the_engine_and_every_later_call_is_refused(tmp_path):
    eng = _fs().online()
    eng.ingest(_rows())
    before = eng.get(0, at=T0 + 10 * MIN)
    with pytest.raises(rtml.RtmlError) as e:
        eng._engine._panic_for_test()
    # an ordinary Exception (not pyo3's BaseException PanicException), naming the bug
    assert isinstance(e.value, Exception) and type(e.value) is rtml.RtmlError
    assert "internal error" in str(e.value) and "refuses further calls" in str(e.value)
    assert eng._engine.poisoned
    calls = [
        lambda: eng.get(0, at=T0 + 10 * MIN),
        lambda: eng.get_many([0, 1], at=T0 + 10 * MIN),
        lambda: eng.ingest(_rows()),
        lambda: eng.ingest(_rows()[0]),
        lambda: eng.ingest(pa.Table.from_pylist(_rows())),
        lambda: eng.stats(),
        lambda: eng.snapshot(tmp_path / "x.snap"),
        lambda: eng.evict_idle(),
        lambda: len(eng),
        lambda: 0 in eng,
        lambda: eng.vector(0, rtml.Transforms([rtml.passthrough("n")]), {}, at=T0 + 10 * MIN),
    ]
    for call in calls:
        with pytest.raises(rtml.PoisonedError, match="refuses further calls"):
            call()
    assert not (tmp_path / "x.snap").exists()
    # other engines are unaffected
    other = _fs().online()
    other.ingest(_rows())
    assert other.get(0, at=T0 + 10 * MIN) == before


# --------------------------------------------------------------------------
# issue 11: get_many, version


def test_get_many_with_wrong_length_at_raises_query_error_and_changes_nothing():
    eng = _fs().online()
    eng.ingest(_rows())
    stats = eng.stats()
    for at in ([T0], [T0, T0, T0], ()):
        with pytest.raises(rtml.QueryError, match="at: .* instants for 2 keys"):
            eng.get_many([0, 1], at=at)
    assert eng.stats() == stats
    t = eng.get_many([0, 1], at=[T0 + 10 * MIN, T0 + 10 * MIN])
    assert t.column("n").to_pylist() == [3, 3]


def test_public_names_are_a_literal_list_type_checkers_can_read():
    """rtml.__all__ is written out: mypy and pyright read it without running code, so a `*` of
    rtml.exceptions.__all__ inside it hid every exception from `mypy --strict` users (`rtml.RtmlError`
    "not explicitly exported"). Every name of the submodules' lists is in it and resolves."""
    import ast

    import rtml.exceptions
    import rtml.transforms

    tree = ast.parse(pathlib.Path(rtml.__file__).read_text())
    lists = [
        n.value
        for n in tree.body
        if isinstance(n, (ast.Assign, ast.AugAssign))
        and any(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in getattr(n, "targets", [getattr(n, "target", None)])
        )
    ]
    assert len(lists) == 1 and isinstance(lists[0], ast.List), (
        "rtml.__all__ must be one literal list"
    )
    written = [e.value for e in lists[0].elts if isinstance(e, ast.Constant)]
    assert len(written) == len(lists[0].elts), "every entry of rtml.__all__ is a string literal"
    assert written == list(rtml.__all__)
    assert len(set(written)) == len(written)
    for sub in (rtml.exceptions, rtml.transforms):
        missing = sorted(set(sub.__all__) - set(written))
        assert not missing, f"{sub.__name__}.__all__ names missing from rtml.__all__: {missing}"
        for name in sub.__all__:
            assert getattr(rtml, name) is getattr(sub, name)
    for name in written:
        assert hasattr(rtml, name), name


def test_version_is_written_once_in_cargo_toml():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in py["project"]
    assert "version" in py["project"]["dynamic"]
    assert rtml.__version__ == cargo["package"]["version"] == _core.__version__


# --------------------------------------------------------------------------
# issue 19: time zones


def test_backfill_refuses_a_naive_spine_against_aware_events_and_the_reverse():
    fs = _fs()
    events = pd.DataFrame(_rows())
    events["ts"] = pd.to_datetime(events["ts"], utc=True).dt.tz_convert("Europe/Berlin")
    spine = pd.DataFrame({"driver": [0, 1], "ts": [T0 + 30 * MIN, T0 + 30 * MIN]})
    spine_naive = spine.assign(ts=pd.to_datetime(spine["ts"]).dt.tz_localize(None))
    spine_aware = spine.assign(ts=pd.to_datetime(spine["ts"], utc=True))
    with pytest.raises(rtml.SchemaError, match="column 'ts'.*naive.*tz-aware"):
        fs.backfill(events, spine_naive)
    events_naive = events.assign(ts=events["ts"].dt.tz_convert("UTC").dt.tz_localize(None))
    with pytest.raises(rtml.SchemaError, match="column 'ts'.*tz-aware.*naive"):
        fs.backfill(events_naive, spine_aware)
    # a custom spine time column is the one named
    with pytest.raises(rtml.SchemaError, match="column 'when'"):
        fs.backfill(events, spine_naive.rename(columns={"ts": "when"}), time="when")
    # same clock on both sides: aware in two zones, or naive throughout (read as UTC)
    a = fs.backfill(events, spine_aware, output="pandas")
    b = fs.backfill(events_naive, spine_naive, output="pandas")
    assert a["n"].tolist() == b["n"].tolist() == [3, 3]
    assert a["fare_sum"].tolist() == b["fare_sum"].tolist() == [0.0 + 2 + 4, 1.0 + 3 + 5]


def test_ingest_refuses_a_clock_other_than_the_engines():
    for first, second in ((UTC, None), (None, UTC)):
        eng = _fs().online()
        eng.ingest(_rows(tz=first))
        stats = eng.stats()
        bad = _rows(tz=second)
        forms = {
            "row": lambda eng=eng, bad=bad: eng.ingest(bad[0]),
            "rows": lambda eng=eng, bad=bad: eng.ingest(bad),
            "table": lambda eng=eng, bad=bad: eng.ingest(pa.Table.from_pylist(bad)),
            "pandas": lambda eng=eng, bad=bad: eng.ingest(pd.DataFrame(bad)),
        }
        for name, call in forms.items():
            with pytest.raises(rtml.SchemaError, match="column 'ts'") as e:
                call()
            assert "naive" in str(e.value) and "tz-aware" in str(e.value), name
        assert eng.stats() == stats


def test_rows_of_one_call_may_not_mix_clocks():
    eng = _fs().online()
    rows = _rows(3, tz=UTC) + _rows(3, tz=None)
    with pytest.raises(rtml.SchemaError, match="column 'ts': row 3"):
        eng.ingest(rows)
    assert eng.stats()["events_ingested"] == 0


def test_at_must_be_on_the_engines_clock():
    aware = _fs().online()
    aware.ingest(_rows(tz=UTC))
    naive = _fs().online()
    naive.ingest(_rows(tz=None))
    tf = rtml.Transforms([rtml.passthrough("n")])
    tf.fit(pa.table({"n": [1.0, 2.0]}))
    at_aware = T0 + 10 * MIN
    at_naive = at_aware.replace(tzinfo=None)
    for eng, good, bad in ((aware, at_aware, at_naive), (naive, at_naive, at_aware)):
        want = eng.get(0, at=good)
        assert want["n"] == 3
        for call in (
            lambda at, eng=eng: eng.get(0, at=at),
            lambda at, eng=eng: eng.get_many([0], at=at),
            lambda at, eng=eng: eng.get_many([0], at=[at]),
            lambda at, eng=eng: eng.vector(0, tf, {}, at=at),
        ):
            call(good)
            with pytest.raises(rtml.SchemaError, match="column 'at'"):
                call(bad)
    # aware instants in any zone, ISO strings with an offset, pandas Timestamps: the same answer
    want = aware.get(0, at=at_aware)
    for at in (
        at_aware.astimezone(BERLIN),
        at_aware.isoformat(),
        pd.Timestamp(at_aware),
        pd.Timestamp(at_aware).tz_convert("Asia/Tokyo"),
    ):
        assert aware.get(0, at=at) == want, at
    for at in (at_naive.isoformat(), np.datetime64(at_naive), pd.Timestamp(at_naive)):
        assert naive.get(0, at=at) == want, at
        with pytest.raises(rtml.SchemaError, match="column 'at'"):
            aware.get(0, at=at)


def test_integer_times_mix_with_either_clock():
    fs = rtml.FeatureSet(
        entity="k", timestamp="ts", timestamp_unit="s", features=[rtml.count(window="1h", name="n")]
    )
    base = int(T0.timestamp())
    for clock in (T0, T0.replace(tzinfo=None)):
        eng = fs.online()
        eng.ingest([{"k": 1, "ts": base}, {"k": 1, "ts": base + 60}])
        assert eng._engine.time_zone_kind is None
        eng.ingest({"k": 1, "ts": clock + 2 * MIN})  # fixes the clock
        assert eng.get(1, at=base + 600)["n"] == 3
        assert eng.get(1, at=clock + 10 * MIN)["n"] == 3


# --------------------------------------------------------------------------
# issue 19: one missing-value rule for every input form


def _string_nan_frame():
    return pd.DataFrame(
        {
            "driver": [0, 0, 1, 1],
            "ts": [T0 + i * MIN for i in range(4)],
            "fare": [1.0, 2.0, 3.0, 4.0],
            "zone": ["a", np.nan, None, "b"],
        }
    )


def test_nan_in_a_string_column_is_null_in_every_input_form():
    df = _string_nan_frame()
    forms = {
        "pandas": lambda: df,
        "pyarrow": lambda: pa.Table.from_pandas(df, preserve_index=False),
        "polars": lambda: pl.from_pandas(df),
        "dict of lists": lambda: df.to_dict("list"),
        "list of dicts": lambda: df.to_dict("records"),
        "one dict at a time": lambda: df.to_dict("records"),
    }
    at = T0 + 10 * MIN
    answers = {}
    for name, make in forms.items():
        eng = _fs().online()
        if name == "one dict at a time":
            rows = make()
            # a lone NaN cannot say it is a missing string; None can
            accepted = sum(
                eng.ingest({k: (None if k == "zone" and v != v else v) for k, v in r.items()})
                for r in rows
            )
        else:
            accepted = eng.ingest(make())
        assert accepted == 4, name
        answers[name] = [eng.get(k, at=at) for k in (0, 1)]
    want = [
        {"n": 2, "fare_sum": 3.0, "zones_seen": 1, "zones": 1},
        {"n": 2, "fare_sum": 7.0, "zones_seen": 1, "zones": 1},
    ]
    for name, got in answers.items():
        assert got == want, name
    # backfill reads the same
    out = _fs().backfill(df.to_dict("list"), {"driver": [0, 1], "ts": [at, at]})
    assert out.column("zones_seen").to_pylist() == [1, 1]


def test_nan_in_a_numeric_column_follows_on_nonfinite_in_every_non_pandas_form():
    rows = _rows(4)
    rows[2]["fare"] = float("nan")
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    forms = {
        "pyarrow": lambda: pa.Table.from_pylist(rows),
        "polars": lambda: pl.DataFrame(cols),
        "dict of lists": lambda: cols,
        "list of dicts": lambda: rows,
        "one dict": lambda: rows[2],
    }
    for name, make in forms.items():
        eng = _fs().online()
        with pytest.raises(rtml.SchemaError, match="column 'fare'"):
            eng.ingest(make())
        assert eng.stats()["events_ingested"] == 0, name
        skip = _fs(on_nonfinite="skip").online()
        assert skip.ingest(make()) == (1 if name == "one dict" else 4), name


def test_unconvertible_dict_column_names_the_column():
    eng = _fs().online()
    bad = {"driver": [0, 1], "ts": [T0, T0 + MIN], "fare": [1.0, 2.0], "zone": ["a", {"x": 1}]}
    with pytest.raises(rtml.SchemaError, match="column 'zone'"):
        eng.ingest(bad)
    mixed = {"driver": [0, 1], "ts": [T0, T0 + MIN], "fare": [1.0, "two"], "zone": ["a", "b"]}
    with pytest.raises(rtml.SchemaError, match="column 'fare'"):
        eng.ingest(mixed)
    assert eng.stats()["events_ingested"] == 0


def test_pandas_missing_scalars_are_null_in_row_dicts():
    eng = _fs().online()
    eng.ingest([{"driver": 0, "ts": T0, "fare": pd.NA, "zone": pd.NA}])
    assert eng.get(0, at=T0 + MIN) == {"n": 1, "fare_sum": 0.0, "zones_seen": 0, "zones": 0}


# --------------------------------------------------------------------------
# issue 19: late-drop warning


def test_ingest_warns_once_when_a_call_drops_many_late_events():
    eng = _fs().online()
    rows = _rows(20)
    unsorted = sorted(rows, key=lambda r: (r["driver"], r["ts"]))  # by entity, not time
    # a batch is one arrival: out of time order within it drops nothing, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert eng.ingest(pa.Table.from_pylist(unsorted)) == 20
    assert eng.stats()["late_events_dropped"] == 0
    # the same batch again: all but the event at the watermark itself (T0 + 19 min) are late
    with pytest.warns(rtml.LateEventsWarning, match=r"dropped 19 of 20 events as late"):
        accepted = eng.ingest(pa.Table.from_pylist(unsorted))
    assert accepted == 1
    assert eng.stats()["late_events_dropped"] == 19
    # once per engine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eng.ingest(pa.Table.from_pylist(unsorted))
    assert eng.stats()["late_events_dropped"] == 19 + 19
    assert issubclass(rtml.LateEventsWarning, rtml.RtmlWarning)
    assert issubclass(rtml.RtmlWarning, UserWarning)


def test_no_warning_at_or_below_the_stated_share():
    assert rtml.LATE_WARNING_SHARE == 0.10
    eng = _fs().online()
    eng.ingest(_rows(20))
    late_one = [{"driver": 0, "ts": T0, "fare": 1.0, "zone": "a"}]
    fresh = [{"driver": 0, "ts": T0 + (30 + i) * MIN, "fare": 1.0, "zone": "a"} for i in range(9)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert eng.ingest(fresh + late_one) == 9  # 1 of 10 dropped: exactly 10%, no warning
        later = [{**r, "ts": r["ts"] + 60 * MIN} for r in _rows(20)]
        eng.ingest(later)  # no late events
    with pytest.warns(rtml.LateEventsWarning):
        eng.ingest(late_one)  # 1 of 1


# --------------------------------------------------------------------------
# issue 19: in / len, restore(feature_set=), stats, repr


def test_contains_and_len_tell_unknown_keys_from_empty_history():
    fs = rtml.FeatureSet(
        entity="driver", timestamp="ts", features=[rtml.count(window="1h", name="n")], ttl="1h"
    )
    eng = fs.online()
    assert len(eng) == 0 and 0 not in eng
    eng.ingest([{"driver": k, "ts": T0 + k * MIN} for k in range(3)])
    assert len(eng) == 3
    assert [k in eng for k in (0, 1, 2, 3)] == [True, True, True, False]
    assert "0" not in eng  # another key kind is simply not there
    # both answer the empty history; only `in` tells them apart
    assert eng.get(3, at=T0 + 3 * 60 * MIN) == eng.get(0, at=T0 + 3 * 60 * MIN) == {"n": 0}
    # evicted after the ttl: gone from `in` and `len`
    eng.ingest({"driver": 9, "ts": T0 + 5 * 60 * MIN})
    eng.evict_idle()
    assert len(eng) == 1 and 0 not in eng and 9 in eng
    assert len(eng) == eng.stats()["keys"]


def test_restore_checks_the_snapshot_against_the_callers_feature_set(tmp_path):
    fs = _fs()
    eng = fs.online()
    eng.ingest(_rows())
    path = tmp_path / "e.snap"
    eng.snapshot(path)
    ok = rtml.OnlineEngine.restore(path, feature_set=fs)
    assert ok.get(0, at=T0 + 10 * MIN) == eng.get(0, at=T0 + 10 * MIN)
    assert ok.feature_set == fs
    other = _fs(allowed_lateness="5m")
    with pytest.raises(
        rtml.SnapshotError, match=r"another feature set \(differs in: allowed_lateness\)"
    ):
        rtml.OnlineEngine.restore(path, feature_set=other)
    renamed = rtml.FeatureSet(entity="driver", timestamp="ts", features=[rtml.count(window="1h")])
    with pytest.raises(rtml.SnapshotError, match="features"):
        rtml.OnlineEngine.restore(path, feature_set=renamed)
    assert rtml.OnlineEngine.restore(path).feature_names == fs.feature_names


def test_stats_show_the_watermark_as_iso_8601_too():
    eng = _fs().online()
    s = eng.stats()
    assert s["watermark"] is None and s["watermark_iso"] is None
    t = dt.datetime(2024, 5, 1, 12, 34, 56, 789012, tzinfo=UTC)
    eng.ingest(
        {
            "driver": 1,
            "ts": pd.Timestamp(t) + pd.Timedelta(nanoseconds=345),
            "fare": 1.0,
            "zone": "a",
        }
    )
    s = eng.stats()
    assert s["watermark"] == pd.Timestamp(t).value + 345
    assert s["watermark_iso"] == "2024-05-01T12:34:56.789012345+00:00"
    assert dt.datetime.fromisoformat(s["watermark_iso"][:26] + "+00:00") == t
    eng.ingest({"driver": 1, "ts": T0 + 60 * MIN, "fare": 1.0, "zone": "a"})
    assert eng.stats()["watermark_iso"] == (T0 + 60 * MIN).isoformat()


def test_repr_shows_what_the_engine_is():
    fs = _fs(allowed_lateness="5m", ttl="2d")
    eng = fs.online()
    eng.ingest(_rows())
    r = repr(eng)
    assert r.startswith("OnlineEngine(entity='driver'")
    for part in (
        f"features={fs.feature_names!r}",
        "allowed_lateness='5m'",
        "ttl='2d'",
        "keys=2",
        "events_ingested=6",
        f"watermark='{(T0 + 5 * MIN).isoformat()}'",
    ):
        assert part in r, (part, r)
    assert json.loads(eng.spec_json)["entity"] == "driver"


def test_request_times_must_be_on_the_clock_of_the_fit_table_and_of_the_engine():
    """A time part (hour_of_day, ...) of a request row: a naive time against a pipeline fit on
    tz-aware times (or an engine of tz-aware events) is refused, naming the field."""
    fit = pa.table({"t": pa.array([T0, T0 + 60 * MIN], pa.timestamp("us", tz="UTC"))})
    tf = rtml.Transforms([rtml.hour_of_day("t", tz="America/New_York")])
    tf.fit(fit)
    assert tf.transform_one({"t": T0}) == {"t_hour": 8.0}  # 12:00 UTC = 08:00 EDT
    naive = T0.replace(tzinfo=None)
    with pytest.raises(rtml.SchemaError, match="column 't'.*transforms were fit on tz-aware"):
        tf.transform_one({"t": naive})
    with pytest.raises(rtml.SchemaError, match="column 't'"):
        tf.vector({"t": np.datetime64(naive)})
    naive_table = pa.table({"t": pa.array([naive], pa.timestamp("us"))})
    with pytest.raises(rtml.SchemaError, match="column 't'"):
        tf.transform(naive_table)
    with pytest.raises(rtml.SchemaError, match="column 't'"):
        tf.transform_numpy(naive_table)
    # a pipeline fit on naive times takes naive request times
    tf_naive = rtml.Transforms([rtml.hour_of_day("t", tz="UTC")])
    tf_naive.fit(naive_table)
    assert tf_naive.transform_one({"t": naive}) == {"t_hour": 12.0}
    # in OnlineEngine.vector the request time must also be on the engine's clock
    eng = _fs().online()
    eng.ingest(_rows())
    at = T0 + 10 * MIN
    assert eng.vector(0, tf, {"t": T0}, at=at).tolist() == [8.0]
    with pytest.raises(rtml.SchemaError, match="column 't'"):
        eng.vector(0, tf, {"t": naive}, at=at)
    with pytest.raises(rtml.SchemaError, match="column 't'.*engine's events hold tz-aware"):
        eng.vector(0, tf_naive, {"t": naive}, at=at)
