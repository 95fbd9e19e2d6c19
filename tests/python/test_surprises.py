"""Issue 19, the Python side: what comes back is what went in, durations people write, typed
errors instead of silently different results, and reprs that show what a thing is."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pickle
from decimal import Decimal

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

import rtml

T0 = pd.Timestamp("2024-03-01 08:00", tz="UTC")


def _events(n=300, keys=12, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "driver": rng.integers(0, keys, n),
        "ts": T0 + pd.to_timedelta(np.sort(rng.integers(0, 6 * 3600, n)), unit="s"),
        "fare": np.round(rng.gamma(2.0, 5.0, n), 2),
    })


def _spine(n=280, keys=12, seed=1):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "driver": rng.integers(0, keys, n),
        "ts": T0 + pd.to_timedelta(rng.integers(0, 7 * 3600, n), unit="s"),
        "label": rng.integers(0, 2, n),
    })


FS = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h"), rtml.mean("fare", window="2h")])


# --- backfill returns the spine's kind -------------------------------------------------------

def test_pandas_spine_gives_pandas_with_the_spine_index_and_assignment_aligns():
    events, spine = _events(), _spine()
    filtered = spine[spine["label"] == 1].sample(frac=1.0, random_state=0)  # filtered and shuffled
    out = FS.backfill(events, filtered)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(filtered.index)
    assert list(out.columns) == ["driver", "ts", "label", "count_1h", "fare_mean_2h"]
    pd.testing.assert_frame_equal(out[["driver", "ts", "label"]], filtered)
    # the user's move: assign back into the (filtered) spine, and into the full one
    filtered = filtered.copy()
    filtered["count_1h"] = out["count_1h"]
    full = spine.copy()
    full["count_1h"] = out["count_1h"]
    # independent expectation: count by hand with pandas, t - 1h <= ts < t
    for i, row in filtered.iterrows():
        ev = events[(events.driver == row.driver) & (events.ts >= row.ts - pd.Timedelta("1h"))
                     & (events.ts < row.ts)]
        assert filtered.at[i, "count_1h"] == len(ev)
        assert full.at[i, "count_1h"] == len(ev)
    assert full.loc[spine["label"] == 0, "count_1h"].isna().all()
    # the arrow result has the same values, in spine order
    arrow = FS.backfill(events, filtered.drop(columns=["count_1h"]), output="arrow")
    assert isinstance(arrow, pa.Table)
    assert arrow.column("count_1h").to_pylist() == list(out["count_1h"])


def test_polars_and_arrow_spines_give_their_own_kind():
    events, spine = _events(), _spine()
    want = FS.backfill(events, spine, output="arrow")
    p = FS.backfill(pl.from_pandas(events), pl.from_pandas(spine))
    assert isinstance(p, pl.DataFrame)
    assert p["count_1h"].to_list() == want.column("count_1h").to_pylist()
    lazy = FS.backfill(pl.from_pandas(events).lazy(), pl.from_pandas(spine).lazy())
    assert isinstance(lazy, pl.DataFrame) and lazy.equals(p)
    a = FS.backfill(pa.Table.from_pandas(events), pa.Table.from_pandas(spine, preserve_index=False))
    assert isinstance(a, pa.Table) and a.equals(want)
    # explicit output= wins over the spine's kind
    assert isinstance(FS.backfill(events, spine, output="polars"), pl.DataFrame)
    assert isinstance(FS.backfill(pl.from_pandas(events), pl.from_pandas(spine), output="pandas"), pd.DataFrame)
    with pytest.raises(ValueError, match="output"):
        FS.backfill(events, spine, output="numpy")


def test_polars_lazyframe_input_gives_no_warning(recwarn):
    events, spine = _events(), _spine()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FS.backfill(pl.from_pandas(events).lazy(), pl.from_pandas(spine).lazy())


def test_pyarrow_dataset_inputs(tmp_path):
    events, spine = _events(), _spine()
    ev = pads.dataset(pa.Table.from_pandas(events, preserve_index=False))
    sp = pa.Table.from_pandas(spine, preserve_index=False)
    want = FS.backfill(events, spine, output="arrow")
    assert FS.backfill(ev, sp).equals(want)
    assert FS.backfill(ev.scanner(), sp).equals(want)
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), tmp_path / "e.parquet")
    assert FS.backfill(pads.dataset(tmp_path / "e.parquet"), sp).equals(want)


def test_transform_returns_the_input_kind():
    df = _spine().assign(fare=np.linspace(1, 50, 280))
    part = df[df.label == 1]
    tf = rtml.Transforms([rtml.standard_scale("fare"), rtml.one_hot("driver")]).fit(part)
    out = tf.transform(part)
    assert isinstance(out, pd.DataFrame) and out.index.equals(part.index)
    assert list(out.columns) == tf.feature_names
    np.testing.assert_array_equal(out.to_numpy(), tf.transform_numpy(part))
    assert isinstance(tf.transform(pl.from_pandas(part)), pl.DataFrame)
    assert isinstance(tf.transform(pa.Table.from_pandas(part)), pa.Table)
    np.testing.assert_array_equal(tf.transform(part, output="numpy"), tf.transform_numpy(part))
    ft = tf.fit_transform(part)
    assert isinstance(ft, pd.DataFrame) and ft.index.equals(part.index)
    with pytest.raises(ValueError, match="output"):
        tf.transform(part, output="dict")


# --- inputs people have ----------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("1 hour", "1h"), ("1.5h", "90m"), ("90 minutes", "90m"), ("2 days", "2d"), ("1h 30m", "90m"),
    ("0.5s", "500ms"), ("1 week", "1w"), (" 24h ", "24h"), ("1h30m", "1h30m"), ("1.25 hours", "75m"),
])
def test_window_strings_people_write(text, want):
    assert rtml.sum("fare", window=text).window == want


@pytest.mark.parametrize("value,want", [
    (np.timedelta64(90, "m"), "90m"), (np.timedelta64(1, "D"), "1d"), (np.timedelta64(1500, "ms"), "1500ms"),
    (pd.Timedelta("1h30m"), "90m"), (pd.Timedelta(1, "ns"), "1ns"), (dt.timedelta(hours=1), "1h"),
])
def test_timedelta_windows(value, want):
    assert rtml.count(window=value).window == want


@pytest.mark.parametrize("text,why", [
    ("1 month", "not a fixed length"), ("1y", "not a fixed length"), ("1.5ns", "whole number of nanoseconds"),
    ("5", "no unit"), ("1 fortnight", "unknown unit 'fortnight'"), ("-1h", "positive"), ("0s", "positive"),
    ("", "empty"), ("h", "number and a unit"),
])
def test_window_strings_refused_with_the_reason(text, why):
    with pytest.raises(rtml.SpecError, match=why):
        rtml.count(window=text)


def test_bad_timedeltas_are_refused():
    with pytest.raises(rtml.SpecError, match="NaT"):
        rtml.count(window=np.timedelta64("NaT"))
    with pytest.raises(rtml.SpecError, match="months"):
        rtml.count(window=np.timedelta64(1, "M"))
    with pytest.raises(rtml.SpecError, match="positive"):
        rtml.count(window=dt.timedelta(0))
    with pytest.raises(rtml.SpecError, match="duration"):
        rtml.count(window=3600)


def test_fractional_window_computes_like_its_exact_spelling():
    events, spine = _events(), _spine()
    a = rtml.FeatureSet("driver", "ts", [rtml.sum("fare", window="1.5 hours")]).backfill(events, spine)
    b = rtml.FeatureSet("driver", "ts", [rtml.sum("fare", window="90m")]).backfill(events, spine)
    pd.testing.assert_frame_equal(a, b)


def test_iso_string_time_columns_get_a_hint_to_parse():
    events, spine = _events(), _spine()
    with pytest.raises(rtml.SchemaError, match=r"events column 'ts'.*strings.*to_datetime"):
        FS.backfill(events.assign(ts=events.ts.astype(str)), spine)
    with pytest.raises(rtml.SchemaError, match=r"spine column 'ts'.*strings.*parse it first"):
        FS.backfill(events, spine.assign(ts=spine.ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")))


def test_decimal_value_columns_are_cast_to_float64():
    events, spine = _events(), _spine()
    dec = pa.Table.from_pandas(events, preserve_index=False)
    dec = dec.set_column(2, "fare", pa.array([Decimal(str(v)) for v in events.fare], pa.decimal128(12, 2)))
    assert pa.types.is_decimal(dec.schema.field("fare").type)
    got = FS.backfill(dec, spine)
    pd.testing.assert_frame_equal(got, FS.backfill(events, spine), check_exact=True)
    eng = FS.online(history=dec)
    assert eng.get(int(spine.driver[0]), at=T0 + pd.Timedelta("7h")) == FS.online(history=events).get(
        int(spine.driver[0]), at=T0 + pd.Timedelta("7h"))


# --- transforms: typed errors instead of silent differences ------------------------------

def test_unfitted_feature_names_are_complete_or_an_error():
    assert rtml.Transforms([rtml.log1p("x"), rtml.standard_scale("x"), rtml.is_null("y")]).feature_names == [
        "x", "y_is_null"]
    tf = rtml.Transforms([rtml.standard_scale("x"), rtml.one_hot("c")])
    with pytest.raises(rtml.SpecError, match=r"one_hot\('c'\).*fit") as e:
        tf.feature_names
    assert isinstance(e.value, AttributeError)  # hasattr() is False, as with sklearn's NotFittedError
    tf.fit({"x": [1.0, 2.0], "c": ["a", "b"]})
    assert tf.feature_names == ["x", "c=a", "c=b", "c=__other__"]


@pytest.mark.parametrize("steps,culprit", [
    ([rtml.log1p("a", name="z"), rtml.log1p("b", name="z")], "steps\\[1\\]"),
    ([rtml.standard_scale("x"), rtml.log1p("y", name="x")], "steps\\[1\\]"),
    ([rtml.is_null("x"), rtml.is_null("x")], "steps\\[1\\]"),
    ([rtml.one_hot("a", name="c"), rtml.one_hot("b", name="c")], "steps\\[1\\]"),
    ([rtml.passthrough("q"), rtml.ratio("a", "b", name="q")], "steps\\[1\\]"),
])
def test_two_steps_writing_one_output_are_refused(steps, culprit):
    with pytest.raises(rtml.SpecError, match=culprit + ".*already writes"):
        rtml.Transforms(steps)


def test_in_place_chains_are_still_allowed():
    tf = rtml.Transforms([rtml.log1p("x"), rtml.standard_scale("x"), rtml.impute("y", name="y2"),
                          rtml.clip("y2", 0, 1), rtml.add("a", "y2", name="y2")])
    assert tf.feature_names == ["x", "y2"]


def test_steps_are_immutable_and_hashable():
    s = rtml.bucketize("x", [1, 2, 3])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.op = "log1p"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.params["boundaries"] = [0.0]  # type: ignore[index]
    assert s.params["boundaries"] == (1.0, 2.0, 3.0)
    assert hash(s) == hash(rtml.bucketize("x", [1, 2, 3])) and s == rtml.bucketize("x", [1, 2, 3])
    assert pickle.loads(pickle.dumps(s)) == s
    tf = rtml.Transforms([s])
    assert tf.steps == (s,)
    assert rtml.Transforms.from_json(tf.to_json()).steps == (s,)


# --- what things look like -------------------------------------------------------------------

def test_feature_set_exposes_its_parameters():
    fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h"), rtml.quantile("fare", 0.9, window="1.5h")],
                         allowed_lateness="5 minutes", ttl=dt.timedelta(days=2), on_nonfinite="skip")
    assert (fs.entity, fs.timestamp, fs.allowed_lateness, fs.ttl, fs.on_nonfinite, fs.timestamp_unit) == (
        "driver", "ts", "5m", "2d", "skip", None)
    assert fs.feature_names == ["count_1h", "fare_p90_90m"]
    assert [f.window for f in fs.features] == ["1h", "90m"]
    r = repr(fs)
    for part in ("entity='driver'", "allowed_lateness='5m'", "ttl='2d'", "on_nonfinite='skip'",
                 "count_1h", "rtml.quantile('fare', 0.9, window='90m')"):
        assert part in r, (part, r)
    h = fs._repr_html_()
    assert "<table" in h and "fare_p90_90m" in h and "allowed_lateness" in h and "90m" in h
    assert rtml.FeatureSet.from_json(fs.to_json()) == fs
    assert repr(rtml.FeatureSet.from_json(fs.to_json())) == r


def test_transforms_reprs():
    tf = rtml.Transforms([rtml.ratio("a", "b", name="r"), rtml.one_hot("c", min_frequency=3)])
    assert repr(tf) == (
        "Transforms(fitted=False, steps=[\n    rtml.ratio('a', 'b', name='r'),\n"
        "    rtml.one_hot('c', min_frequency=3),\n], feature_names=<learned in fit>)")
    h = tf._repr_html_()
    assert "rtml.Transforms" in h and "ratio" in h and "a, b, c" in h
    tf.fit({"a": [1.0] * 4, "b": [2.0] * 4, "c": ["x", "x", "x", "y"]})
    assert "feature_names=['r', 'c=x', 'c=__other__']" in repr(tf)
    est = rtml.TransformsEstimator([rtml.log1p("x")])
    assert repr(est) == "TransformsEstimator(steps=[rtml.log1p('x')])"


def test_parity_is_reachable_from_import_rtml():
    import subprocess
    import sys

    code = "import rtml; print(rtml.parity.check.__name__)"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "check", out.stderr


def test_transforms_read_decimal_columns_as_float64():
    vals = ["1.10", "2.25", "3.40", None]
    dec = pa.table({"x": pa.array([None if v is None else Decimal(v) for v in vals], pa.decimal128(6, 2))})
    flt = pa.table({"x": [None if v is None else float(v) for v in vals]})
    steps = [rtml.standard_scale("x"), rtml.is_null("x", name="x_missing")]
    a = rtml.Transforms(steps).fit(dec).transform(dec)
    b = rtml.Transforms(steps).fit(flt).transform(flt)
    assert a.equals(b)


def test_vector_request_field_named_like_a_window_feature_is_refused():
    fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h")])
    eng = fs.online(history=_events())
    tf = rtml.Transforms([rtml.passthrough("count_1h"), rtml.passthrough("distance")])
    at = T0 + pd.Timedelta("6h30m")  # after the history (the state is settled up to its end)
    want = eng.get(3, at=at)["count_1h"]
    assert want > 0
    with pytest.raises(rtml.SchemaError, match="column 'count_1h'.*window feature"):
        eng.vector(3, tf, {"count_1h": want + 1000.0, "distance": 2.0}, at=at)
    # extra fields that are not features are fine, and the answer is the engine's value
    got = eng.vector(3, tf, {"distance": 2.0, "unused": "x"}, at=at)
    assert got.tolist() == [float(want), 2.0]


def test_not_fitted_error_is_exported_at_the_top_level():
    tf = rtml.Transforms([rtml.one_hot("c")])
    with pytest.raises(rtml.NotFittedError):
        tf.feature_names
    assert issubclass(rtml.NotFittedError, rtml.SpecError)
    assert rtml.transforms.NotFittedError is rtml.NotFittedError
    assert "NotFittedError" in rtml.__all__


def test_float_keys_are_refused_with_a_hint_to_cast():
    events, spine = _events(), _spine()
    with pytest.raises(rtml.SchemaError, match=r"events column 'driver'.*astype\('int64'\)"):
        FS.backfill(events.assign(driver=events.driver.astype(float)), spine)
    with pytest.raises(rtml.SchemaError, match=r"spine column 'driver'.*fractions.*astype\(str\)"):
        FS.backfill(events, spine.assign(driver=spine.driver + 0.5))


def test_ingest_reads_tables_as_backfill_does_decimal_lazyframe_dataset():
    import warnings

    import polars as pl
    import pyarrow.dataset as ds

    events, spine = _events(), _spine()
    plain = pa.Table.from_pandas(events, preserve_index=False)
    dec = plain.set_column(2, "fare", pa.array([Decimal(str(v)) for v in events.fare], pa.decimal128(12, 2)))
    key, at = int(spine.driver[0]), T0 + pd.Timedelta("7h")
    want = FS.online(history=events).get(key, at=at)
    inputs = {
        "decimal table": dec,
        "polars LazyFrame": pl.from_arrow(plain).lazy(),
        "pyarrow dataset": ds.dataset(plain),
    }
    for what, data in inputs.items():
        eng = FS.online()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no polars PerformanceWarning, nothing else
            assert eng.ingest(data) == plain.num_rows, what
        assert eng.get(key, at=at) == want, what


# ---------------------------------------------------------------- null keys: refuse or skip


def _with_null_keys(df, rows, column="driver"):
    out = df.copy()
    out[column] = out[column].astype(object)
    out.loc[rows, column] = None
    return out


def test_backfill_skips_null_key_events_and_answers_null_key_spine_rows_with_nulls():
    events, spine = _events(), _spine()
    bad_events = _with_null_keys(events, [3, 50, 51, 299])
    bad_spine = _with_null_keys(spine, [0, 10, 279])
    with pytest.raises(rtml.SchemaError, match="driver"):
        FS.backfill(bad_events, spine)
    with pytest.raises(ValueError, match="null_keys"):
        FS.backfill(events, spine, null_keys="drop")
    with pytest.warns(rtml.NullKeysWarning, match=r"left out 4 event.*gave 3 spine row"):
        got = FS.backfill(bad_events, bad_spine, null_keys="skip")
    # independent expectation: the clean events without those rows, the spine without those rows
    clean_events = events.drop(index=[3, 50, 51, 299])
    keep = [i for i in spine.index if i not in (0, 10, 279)]
    want = FS.backfill(clean_events, spine.loc[keep])
    assert list(got.index) == list(spine.index)  # the spine's rows and index, all of them
    for name in FS.feature_names:
        # (a count column holds nulls now, so compare as float64; NaN == NaN here)
        np.testing.assert_array_equal(got.loc[keep, name].to_numpy(dtype=float),
                                      want[name].to_numpy(dtype=float))
        assert got.loc[[0, 10, 279], name].isna().all()


def test_backfill_null_keys_skip_with_nothing_null_is_the_plain_backfill(recwarn):
    events, spine = _events(), _spine()
    got = FS.backfill(events, spine, null_keys="skip", output="arrow")
    assert got.equals(FS.backfill(events, spine, output="arrow"))
    assert not [w for w in recwarn if issubclass(w.category, rtml.NullKeysWarning)]


@pytest.mark.parametrize("form", ["pandas", "arrow", "polars", "dict_of_lists", "records", "one_row"])
def test_ingest_skips_null_keys_in_every_input_form(form):
    events = _events(n=40)
    bad = _with_null_keys(events, [5, 6, 20])
    clean = events.drop(index=[5, 6, 20])

    def as_form(df):
        if form == "pandas":
            return [df]
        if form == "arrow":
            return [pa.Table.from_pandas(df, preserve_index=False)]
        if form == "polars":
            return [pl.from_pandas(df)]
        if form == "dict_of_lists":
            return [df.to_dict("list")]
        if form == "records":
            return [df.to_dict("records")]
        return [r for r in df.to_dict("records")]  # one call per row

    eng = FS.online()
    with pytest.raises(rtml.SchemaError, match="driver"):
        for part in as_form(bad):
            eng.ingest(part)
    eng, ref = FS.online(), FS.online()
    accepted = sum(eng.ingest(part, null_keys="skip") for part in as_form(bad))
    for part in as_form(clean):
        ref.ingest(part)
    assert accepted == len(clean)
    assert eng.stats()["null_keys_skipped"] == 3
    assert ref.stats()["null_keys_skipped"] == 0
    at = T0 + pd.Timedelta("7h")
    for k in range(12):
        assert eng.get(k, at=at) == ref.get(k, at=at)


def test_ingest_null_keys_policy_is_checked():
    with pytest.raises(ValueError, match="null_keys"):
        FS.online().ingest({"driver": 1, "ts": T0, "fare": 1.0}, null_keys="ignore")


def test_null_key_in_dictionary_values_is_skipped_too():
    keys = pa.array(["a", None, "b"]).dictionary_encode(null_encoding="encode")
    assert keys.null_count == 0  # the null is in the dictionary's values, not in the indices
    fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h")])
    ts = pa.array([T0.value, T0.value + 1, T0.value + 2], pa.timestamp("ns", tz="UTC"))
    eng = fs.online()
    assert eng.ingest(pa.table({"driver": keys, "ts": ts}), null_keys="skip") == 2
    assert eng.stats()["null_keys_skipped"] == 1


# ---------------------------------------------------------------- several feature sets, one spine


def _trips(n=400, seed=3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "driver": rng.integers(0, 9, n),
        "zone": rng.choice(["a", "b", "c", "d"], n),
        "ts": T0 + pd.to_timedelta(np.sort(rng.integers(0, 6 * 3600, n)), unit="s"),
        "fare": np.round(rng.gamma(2.0, 5.0, n), 2),
    })


BY_DRIVER = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h"), rtml.mean("fare", window="2h")])
BY_ZONE = rtml.FeatureSet("zone", "ts", [rtml.count(window="1h"), rtml.sum("fare", window="30m")])


def test_several_feature_sets_in_one_backfill_equal_each_backfill_with_prefixes():
    trips = _trips()
    rng = np.random.default_rng(4)
    spine = pd.DataFrame({
        "driver": rng.integers(0, 9, 150), "pickup_zone": rng.choice(["a", "b", "c", "e"], 150),
        "ts": T0 + pd.to_timedelta(rng.integers(0, 7 * 3600, 150), unit="s"),
        "label": rng.integers(0, 2, 150)}, index=np.arange(1000, 1150))
    got = rtml.backfill(spine, {"drv": (BY_DRIVER, trips), "zone": (BY_ZONE, trips)},
                        keys={"zone": "pickup_zone"})
    assert list(got.columns) == ["driver", "pickup_zone", "ts", "label", "drv__count_1h",
                                 "drv__fare_mean_2h", "zone__count_1h", "zone__fare_sum_30m"]
    assert list(got.index) == list(spine.index)
    one = BY_DRIVER.backfill(trips, spine)
    two = BY_ZONE.backfill(trips, spine, key="pickup_zone")
    for name in BY_DRIVER.feature_names:
        np.testing.assert_array_equal(got[f"drv__{name}"].to_numpy(), one[name].to_numpy())
    for name in BY_ZONE.feature_names:
        np.testing.assert_array_equal(got[f"zone__{name}"].to_numpy(), two[name].to_numpy())


def test_several_feature_sets_without_prefixes_refuse_colliding_names():
    trips = _trips()
    spine = trips[["driver", "zone", "ts"]].iloc[::7]
    with pytest.raises(rtml.SchemaError, match="column 'count_1h'.*set 'zone'.*set 'drv'"):
        rtml.backfill(spine, {"drv": (BY_DRIVER, trips), "zone": (BY_ZONE, trips)}, prefix=False)
    other = rtml.FeatureSet("zone", "ts", [rtml.max("fare", window="1h")])
    got = rtml.backfill(spine, {"drv": (BY_DRIVER, trips), "zone": (other, trips)}, prefix=False,
                        output="polars")
    assert isinstance(got, pl.DataFrame)
    assert got.columns == ["driver", "zone", "ts", "count_1h", "fare_mean_2h", "fare_max_1h"]


def test_several_feature_sets_name_what_is_missing():
    trips = _trips()
    spine = trips[["driver", "ts"]]
    with pytest.raises(rtml.SchemaError, match="column 'zone'.*set 'zone'"):
        rtml.backfill(spine, {"drv": (BY_DRIVER, trips), "zone": (BY_ZONE, trips)})
    with pytest.raises(rtml.SchemaError, match="keys"):
        rtml.backfill(spine, {"drv": (BY_DRIVER, trips)}, keys={"zone": "zone"})
    other_time = rtml.FeatureSet("driver", "event_time", [rtml.count(window="1h")])
    with pytest.raises(rtml.SchemaError, match="time="):
        rtml.backfill(spine, {"a": (BY_DRIVER, trips), "b": (other_time, trips)})
    with pytest.raises(TypeError, match="FeatureSet, events"):
        rtml.backfill(spine, {"a": BY_DRIVER})


@pytest.mark.parametrize("form", ["records", "arrow"])
def test_ingest_report_numbers_rows_as_passed_when_null_keys_are_skipped(form):
    fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h")], max_ahead="2h")
    eng = fs.online()
    eng.ingest({"driver": 1, "ts": T0})
    rows = [
        {"driver": None, "ts": T0 + pd.Timedelta("1m")},
        {"driver": 2, "ts": T0 + pd.Timedelta("2m")},
        {"driver": None, "ts": T0 + pd.Timedelta("3m")},
        {"driver": 3, "ts": T0 + pd.Timedelta("30h")},  # ahead of the watermark: rejected
    ]
    data = rows if form == "records" else pa.Table.from_pylist(rows)
    got = eng.ingest(data, report=True, null_keys="skip")
    assert (got.accepted, got.ahead, got.rejected) == (1, 1, [3])  # row 3 as passed, not 1
    assert eng.stats()["null_keys_skipped"] == 2


def test_iso_string_instants_keep_their_nanoseconds():
    fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h")])
    eng = fs.online()
    t = pd.Timestamp("2024-03-01 08:00:00.123456789", tz="UTC")
    eng.ingest({"driver": 1, "ts": t})
    # the instant itself is excluded: one nanosecond later the event counts
    assert eng.get(1, at="2024-03-01T08:00:00.123456789+00:00")["count_1h"] == 0
    assert eng.get(1, at="2024-03-01T08:00:00.123456790+00:00")["count_1h"] == 1
    assert eng.get(1, at="2024-03-01 08:00:00,1234567901+00:00")["count_1h"] == 1
    assert eng.get(1, at=t + pd.Timedelta(1, "ns"))["count_1h"] == 1


def test_a_parameter_of_another_aggregation_is_refused_not_ignored():
    doc = json.loads(FS.to_json())
    doc["features"][0]["half_life"] = "1h"  # count_1h: half_life means nothing there
    with pytest.raises(rtml.SpecError, match=r"features\[0\]\.half_life.*decayed_sum, not count"):
        rtml.FeatureSet.from_json(json.dumps(doc))


def test_no_lateness_reads_as_none_and_stays_out_of_the_repr():
    fs = rtml.FeatureSet("k", "ts", [rtml.count()])
    assert fs.allowed_lateness is None
    assert "allowed_lateness" not in repr(fs)
    late = rtml.FeatureSet("k", "ts", [rtml.count()], allowed_lateness="5m")
    assert late.allowed_lateness == "5m" and "allowed_lateness='5m'" in repr(late)
