"""Backfill on Spark: the same Rust engine, inside the executors, the same bits as on a laptop.

``rtml.spark.backfill(fs, events_df, spine_df, partitions=N)`` returns a Spark DataFrame: the
spine's columns followed by one column per feature, equal (float bits included) to
``fs.backfill(events, spine)`` on the same rows. How:

1. on the driver, before any Spark job: the schemas are checked as the local backfill checks
   its inputs (a missing column, a time column of strings, float keys, a spine key of another
   kind than the events', naive times against tz-aware ones: the same :class:`rtml.SchemaError`);
2. with ``check=True`` (the default), one aggregation job per input: null keys or times are
   refused (:class:`rtml.SchemaError`, with the number of such rows) and the entity with the
   most events is reported with :class:`rtml.HotKeyWarning` when it holds more events than an
   average bucket (its bucket, one task, runs longer than the others and must fit one
   executor's memory);
3. both inputs get a bucket column ``pmod(xxhash64(key), N)`` (integer keys cast to bigint
   first, so an int spine key meets bigint events: Spark's hash of an int differs from its hash
   of the same long; a composite key, ``entity=["driver_id", "zone"]``, is hashed as the
   engine's encoding of its parts, built by Spark SQL: `encoded_key_column`), are repartitioned
   by it, and ``cogroup(...).applyInArrow`` hands each bucket's events and spine rows, as Arrow
   tables, to ``FeatureSet.backfill`` in a Python worker.

An entity's events and spine rows share one bucket, and an entity's features depend on its
events only: each row is the local answer. Spark has no row order; the result has the spine's
columns, so keep an id column in the spine to join on.

pyspark is not a dependency of rtml (``pip install 'rtml[spark]'``); rtml itself must be
installed on every executor (the engine is a compiled extension): docs/scale.md.

>>> import rtml, rtml.spark
>>> from pyspark.sql import SparkSession                                  # doctest: +SKIP
>>> spark = SparkSession.builder.master("local[2]").getOrCreate()         # doctest: +SKIP
>>> fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h")])
>>> events = spark.read.parquet("events/")                                # doctest: +SKIP
>>> spine = spark.read.parquet("spine/")                                  # doctest: +SKIP
>>> train = rtml.spark.backfill(fs, events, spine, partitions=64)         # doctest: +SKIP
>>> train.write.parquet("train/")                                         # doctest: +SKIP

(The examples that need a SparkSession are skipped by the doctest run; tests/python/test_spark.py
runs them on a local session.)
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import _frames
from . import exceptions as _exceptions
from .exceptions import HotKeyWarning, RtmlError, SchemaError, SpecError

if TYPE_CHECKING:
    from .features import FeatureSet

__all__ = [
    "backfill",
    "bucket_column",
    "encoded_key_column",
    "typed_errors",
    "from_spark_error",
    "BUCKET",
]

BUCKET = "__rtml_bucket"
"""The name of the bucket column added (and dropped again) by `backfill`."""


def _require_pyspark() -> Any:
    try:
        import pyspark.sql.functions as F
    except ImportError as e:  # pragma: no cover (the test extra installs pyspark)
        raise ImportError(
            "rtml.spark needs pyspark: pip install 'rtml[spark]' (and rtml on every executor)"
        ) from e
    return F


def _arrow_schema(schema: Any, timezone: str) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        return to_arrow_schema(schema, timezone=timezone)
    except TypeError:  # pragma: no cover (older pyspark: no timezone argument)
        return to_arrow_schema(schema)


def _probe(schema: pa.Schema) -> pa.Table:
    """A one-row table of `schema` (zeros, empty strings; null where no zero exists): what the
    local checks need to see the columns' types."""
    cols = []
    for f in schema:
        t = f.type
        value: Any = None
        if pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t):
            value = 0
        elif pa.types.is_floating(t):
            value = 0.0
        elif pa.types.is_boolean(t):
            value = False
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            value = ""
        elif pa.types.is_decimal(t):
            import decimal

            value = decimal.Decimal(0)
        try:
            cols.append(pa.array([value], t))
        except (pa.ArrowException, TypeError):
            cols.append(pa.nulls(1, t))
    return pa.Table.from_arrays(cols, schema=schema)


def _is_integral(df: Any, column: str) -> bool:
    from pyspark.sql import types as T

    typ = df.schema[column].dataType
    return isinstance(typ, (T.ByteType, T.ShortType, T.IntegerType, T.LongType))


def encoded_key_column(df: Any, columns: list[str]) -> Any:
    """A Spark column holding the engine's encoding of the composite key made of `columns`
    (src/key.rs: an integer part is ``i<decimal>;``, a string part ``s<UTF-8 byte length>:<bytes>``),
    built with Spark SQL functions so that no Python runs per row. The same bytes as
    ``rtml._core.encode_keys`` (tests/python/test_spark.py checks it on every kind of part);
    null when a part is null."""
    F = _require_pyspark()
    parts = []
    for c in columns:
        if _is_integral(df, c):
            parts.append(F.concat(F.lit("i"), F.col(c).cast("long").cast("string"), F.lit(";")))
        else:
            parts.append(
                F.concat(F.lit("s"), F.octet_length(F.col(c)).cast("string"), F.lit(":"), F.col(c))
            )
    return F.concat(*parts)


def bucket_column(df: Any, column: str | list[str], partitions: int) -> Any:
    """The bucket of each row of `df`: ``pmod(xxhash64(key), partitions)``, the key cast to
    bigint when it is an integer (so every integer width hashes alike); for a composite key
    (a list of columns) the hash of its encoding (`encoded_key_column`), so every row of one
    tuple of parts lands in one bucket. Spark's xxhash64 is seeded (42) and deterministic: the
    same key gives the same bucket on every executor, run and Spark version (it is part of
    Spark's SQL function set)."""
    F = _require_pyspark()
    columns = [column] if isinstance(column, str) else list(column)
    if len(columns) > 1:
        return F.pmod(F.xxhash64(encoded_key_column(df, columns)), F.lit(partitions))
    col = F.col(columns[0])
    if _is_integral(df, columns[0]):
        col = col.cast("long")
    return F.pmod(F.xxhash64(col), F.lit(partitions))


def backfill(
    fs: FeatureSet,
    events_df: Any,
    spine_df: Any,
    *,
    partitions: int | None = None,
    key: str | Sequence[str] | None = None,
    time: str | None = None,
    check: bool = True,
    hot_key_events: int | None = None,
) -> Any:
    """Point-in-time-correct features of `fs` for every row of `spine_df`, computed by rtml's
    engine inside Spark's executors. Returns a Spark DataFrame (lazy): the spine's columns, then
    one column per feature (bigint for counts, double otherwise), bit for bit what
    ``fs.backfill`` gives locally on the same rows.

    `events_df`, `spine_df`: Spark DataFrames; only the entity, time and value columns of the
    events are shuffled. `key` / `time`: the spine's key and time columns (default: the feature
    set's; for a composite entity `key` is a list with one spine column per key column).
    `partitions`: the number of buckets (default: Spark's default parallelism times 4);
    each bucket's events and spine rows are one Arrow table in one Python worker, so choose it
    so that a bucket fits an executor's memory. `check`: run the null and skew checks (one
    aggregation job per input) before returning; `hot_key_events`: warn (:class:`rtml.HotKeyWarning`,
    with the key, a tuple of its parts for a composite key, and its event count) when one entity
    has more events than this (default: the
    number of events divided by `partitions`, an average bucket).

    Raises :class:`rtml.SchemaError` before any Spark job for a schema the local backfill
    refuses (missing column, wrong type, key kinds that differ, naive vs tz-aware times, a spine
    column named like a feature), and with ``check=True`` for null keys or times (row counts
    given: Spark rows have no stable number). An rtml error raised inside an executor (a NaN
    value with ``on_nonfinite="error"``, a null key with ``check=False``) fails the Spark
    action; run the action inside :func:`typed_errors` to get it back on the driver as the same
    rtml exception (naming the column, and the bucket) instead of Spark's ``PythonException``.

    >>> import rtml, rtml.spark
    >>> fs = rtml.FeatureSet("k", "ts", [rtml.sum("v", window="1h")])
    >>> out = rtml.spark.backfill(fs, events_df, spine_df, partitions=8)  # doctest: +SKIP
    >>> out.columns                                                        # doctest: +SKIP
    ['k', 'ts', 'label', 'v_sum_1h']
    """
    _require_pyspark()
    from pyspark.sql import types as T

    from .features import _check_key_column, _check_time_column

    ent = fs.entity_columns
    keys = fs._spine_key(key)
    time = time or fs.timestamp
    spark = spine_df.sparkSession
    if partitions is None:
        partitions = 4 * int(spark.sparkContext.defaultParallelism)
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise SpecError(f"partitions: expected a positive int, got {partitions!r}")
    names = fs.feature_names
    for name in [*names, BUCKET]:
        if name in spine_df.columns:
            raise SchemaError(
                f"column '{name}': the spine already has a column named like this "
                + (
                    "feature; rename one of them (feature name=...)"
                    if name in names
                    else "internal column"
                )
            )

    # 1. the local checks, on one synthetic row of each schema (no Spark job)
    tz = str(spark.conf.get("spark.sql.session.timeZone") or "UTC")
    ev_arrow = _arrow_schema(events_df.schema, tz)
    sp_arrow = _arrow_schema(spine_df.schema, tz)
    ev_probe = _frames.decimals_to_float(_probe(ev_arrow))
    sp_probe = _probe(sp_arrow)
    _check_time_column(ev_probe, fs.timestamp, "events")
    _check_time_column(sp_probe, time, "spine")
    for c in ent:
        _check_key_column(ev_probe, c, "events")
    for c in keys:
        _check_key_column(sp_probe, c, "spine")
    fs._spec.backfill(ev_probe, sp_probe, keys, time, None)

    value_cols = [c for c, _ in fs._spec.value_columns]
    ev_cols = list(dict.fromkeys([*ent, fs.timestamp, *value_cols]))

    # 2. nulls and hot keys: one aggregation job per input
    if check:
        _check_data(fs, events_df, spine_df, keys, time, partitions, hot_key_events)

    # 3. bucket, shuffle, the engine per bucket
    ev = events_df.select(*ev_cols)
    ev = ev.withColumn(BUCKET, bucket_column(ev, ent, partitions)).repartition(partitions, BUCKET)
    sp = spine_df.withColumn(BUCKET, bucket_column(spine_df, keys, partitions)).repartition(
        partitions, BUCKET
    )
    out_fields = list(spine_df.schema.fields)
    for name, dtype in zip(names, fs._spec.feature_dtypes):
        t = {"int64": T.LongType(), "string": T.StringType()}.get(dtype, T.DoubleType())
        out_fields.append(T.StructField(name, t, True))
    out_schema = T.StructType(out_fields)
    out_arrow = _arrow_schema(out_schema, "UTC")
    run = _bucket_backfill(fs.to_json(), keys, time, out_arrow, partitions)
    return ev.groupBy(BUCKET).cogroup(sp.groupBy(BUCKET)).applyInArrow(run, out_schema)


def _bucket_backfill(
    doc: str, key: list[str], time: str, out_schema: pa.Schema, partitions: int
) -> Any:
    """The function each Python worker runs on one bucket: (events, spine) -> spine + features.
    A plain function of two arguments (Spark reads its signature); the feature set travels as
    its JSON document. An rtml error is raised again with its class, message and bucket
    encoded in its message (`_MARK`), for `from_spark_error` on the driver."""

    def run(events: pa.Table, spine: pa.Table) -> pa.Table:
        if spine.num_rows == 0:
            return out_schema.empty_table()
        from .features import FeatureSet

        fs = FeatureSet.from_json(doc)
        try:
            out = fs.backfill(
                events.drop_columns([BUCKET]),
                spine.drop_columns([BUCKET]),
                key=key,
                time=time,
                output="arrow",
                progress=False,
            )
        except RtmlError as e:
            bucket = spine.column(BUCKET)[0].as_py()
            raise _marked(e, bucket, partitions) from None
        # Spark wants its own Arrow types back (e.g. timestamps in UTC, nullable fields)
        return out.replace_schema_metadata(None).cast(out_schema)

    return run


def _check_data(
    fs: FeatureSet,
    events_df: Any,
    spine_df: Any,
    keys: list[str],
    time: str,
    partitions: int,
    hot_key_events: int | None,
) -> None:
    F = _require_pyspark()
    ent, ts = fs.entity_columns, fs.timestamp
    per_key = events_df.groupBy(*ent).agg(
        F.count(F.lit(1)).alias("n"), F.count(F.col(ts)).alias("n_ts")
    )
    # a composite key is null when any part is; the hot key of a composite entity is the tuple
    # of its parts (a struct)
    any_null = F.lit(False)
    for c in ent:
        any_null = any_null | F.col(c).isNull()
    top_key = F.col(ent[0]) if len(ent) == 1 else F.struct(*[F.col(c) for c in ent])
    row = per_key.agg(
        F.sum("n").alias("events"),
        F.sum(F.col("n") - F.col("n_ts")).alias("null_ts"),
        *[
            F.sum(F.when(F.col(c).isNull(), F.col("n")).otherwise(0)).alias(f"null_key_{i}")
            for i, c in enumerate(ent)
        ],
        F.max_by(top_key, F.when(~any_null, F.col("n"))).alias("top_key"),
        F.max(F.when(~any_null, F.col("n"))).alias("top"),
    ).first()
    n = int(row["events"] or 0)
    for i, c in enumerate(ent):
        if row[f"null_key_{i}"]:
            raise SchemaError(f"column '{c}': null key in {int(row[f'null_key_{i}']):,} event rows")
    if row["null_ts"]:
        raise SchemaError(f"column '{ts}': null timestamp in {int(row['null_ts']):,} event rows")
    sp_row = spine_df.agg(
        *[
            F.sum(F.when(F.col(c).isNull(), 1).otherwise(0)).alias(f"null_key_{i}")
            for i, c in enumerate(keys)
        ],
        F.sum(F.when(F.col(time).isNull(), 1).otherwise(0)).alias("null_ts"),
    ).first()
    for i, c in enumerate(keys):
        if sp_row[f"null_key_{i}"]:
            raise SchemaError(
                f"column '{c}': null key in {int(sp_row[f'null_key_{i}']):,} spine rows"
            )
    if sp_row["null_ts"]:
        raise SchemaError(
            f"column '{time}': null timestamp in {int(sp_row['null_ts']):,} spine rows"
        )
    threshold = hot_key_events if hot_key_events is not None else n // partitions
    top = int(row["top"] or 0)
    if n and top > threshold:
        hot = row["top_key"]
        hot = tuple(hot) if len(ent) > 1 and hot is not None else hot
        where = f"column '{ent[0]}'" if len(ent) == 1 else f"columns {tuple(ent)!r}"
        warnings.warn(
            HotKeyWarning(
                f"entity {hot!r} of {where} has {top:,} events, more than "
                f"{threshold:,} ({'hot_key_events' if hot_key_events is not None else 'an average bucket: events / partitions'}): "
                "its bucket is one task that runs longer than the others and must fit one "
                "executor's memory"
            ),
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- errors

_MARK = "rtml-error:"
"""Starts the one-line JSON record of an rtml error raised in an executor (in the message of
the exception the worker raises, which Spark's PythonException quotes on the driver)."""


def _marked(e: RtmlError, bucket: Any, partitions: int) -> RtmlError:
    record = {
        "type": type(e).__name__,
        "message": str(e),
        "bucket": bucket,
        "partitions": partitions,
    }
    text = _MARK + json.dumps(record, ensure_ascii=True)
    try:
        return type(e)(text)
    except Exception:  # pragma: no cover (an rtml error class with another constructor)
        return RtmlError(text)


def from_spark_error(error: BaseException) -> RtmlError | None:
    """The rtml exception that an executor raised, rebuilt from the Spark exception that the
    failed action raised on the driver (``PythonException``, ``Py4JJavaError``, or one wrapping
    them); None when the failure did not come from rtml.

    Its class is the executor's (``rtml.SchemaError`` ...), its message the executor's followed
    by the bucket, ``(in Spark bucket 3 of 8: rtml.spark.backfill's partitions; row numbers
    count the rows of that bucket)``; ``.spark_error`` holds the Spark exception.

    >>> import json
    >>> from rtml.spark import from_spark_error
    >>> record = {"type": "SchemaError", "message": "column 'v': NaN at row 3",
    ...           "bucket": 2, "partitions": 8}
    >>> spark_error = RuntimeError("Traceback ... rtml.exceptions.SchemaError: rtml-error:"
    ...                            + json.dumps(record))
    >>> err = from_spark_error(spark_error)
    >>> type(err).__name__, err.spark_error is spark_error
    ('SchemaError', True)
    >>> print(err)  # doctest: +NORMALIZE_WHITESPACE
    column 'v': NaN at row 3 (in Spark bucket 2 of 8: rtml.spark.backfill's partitions;
    row numbers count the rows of that bucket)
    >>> from_spark_error(RuntimeError("Java heap space")) is None
    True
    """
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        texts = [str(e)]
        java = getattr(e, "java_exception", None)  # py4j's Py4JJavaError
        if java is not None:
            with contextlib.suppress(Exception):
                texts.append(str(java.toString()))
        for text in texts:
            record = _find_record(text)
            if record is not None:
                typed = _rebuild(record)
                typed.spark_error = error  # type: ignore[attr-defined]
                return typed
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return None


def _find_record(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    start = text.find(_MARK)
    while start >= 0:
        try:
            record, _ = decoder.raw_decode(text, start + len(_MARK))
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("type"), str):
            return record
        start = text.find(_MARK, start + 1)
    return None


def _rebuild(record: dict[str, Any]) -> RtmlError:
    cls = getattr(_exceptions, str(record["type"]), None)
    if not (isinstance(cls, type) and issubclass(cls, RtmlError)):
        cls = RtmlError
    message = str(record.get("message", ""))
    where = (
        f"in Spark bucket {record.get('bucket')} of {record.get('partitions')}: "
        "rtml.spark.backfill's partitions"
    )
    if "row" in message:
        where += "; row numbers count the rows of that bucket"
    try:
        return cls(f"{message} ({where})")
    except Exception:  # pragma: no cover (an rtml error class with another constructor)
        return RtmlError(f"{message} ({where})")


@contextlib.contextmanager
def typed_errors() -> Iterator[None]:
    """Spark actions on `backfill`'s result, with rtml's errors: an rtml exception raised in
    an executor is raised again on the driver as the same rtml exception (see
    `from_spark_error`), not as Spark's ``PythonException``; other errors pass unchanged.

    >>> import rtml.spark
    >>> with rtml.spark.typed_errors():                                   # doctest: +SKIP
    ...     rtml.spark.backfill(fs, events_df, spine_df).write.parquet("train/")
    """
    try:
        yield
    except Exception as e:
        typed = from_spark_error(e)
        if typed is None:
            raise
        raise typed from None
