"""Turning whatever a user has (pyarrow, pandas, polars, Parquet files, dicts) into Arrow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from .exceptions import SchemaError

__all__ = ["to_table", "events_table"]


def _read_path(path: str | os.PathLike[str]) -> pa.Table:
    if not os.fspath(path):
        # Path("") is ".": never read the working directory by accident
        raise FileNotFoundError(2, "No such file or directory", "")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            return pacsv.read_csv(p)
        if suffix in (".feather", ".arrow", ".ipc"):
            import pyarrow.feather as feather

            return feather.read_table(p)
        import pyarrow.parquet as pq

        return pq.read_table(p)
    except pa.ArrowException as e:
        # a file that is not what its name says (or not a table at all)
        raise SchemaError(f"{p}: cannot be read as a table: {e}") from e


def to_table(data: Any, what: str = "events") -> pa.Table:
    """Return `data` as a pyarrow Table, without copying where the source allows.

    Accepts a pyarrow Table / RecordBatch / RecordBatchReader, a pandas or polars DataFrame
    (or polars LazyFrame), any object with ``__arrow_c_stream__`` (DuckDB relations, ...),
    a Parquet / CSV / Feather path or a list of them, or a dict of columns.
    """
    try:
        return _to_table(data, what)
    except (pa.ArrowException, OverflowError) as e:
        if isinstance(e, (SchemaError, TypeError, OSError)):
            raise
        # values pyarrow cannot hold (an int beyond 64 bits, mixed types in a column, ...)
        raise SchemaError(f"{what}: cannot convert to Arrow: {e}") from e


def _to_table(data: Any, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    if isinstance(data, (str, os.PathLike)):
        return _read_path(data)
    if (
        isinstance(data, (list, tuple))
        and data
        and all(isinstance(d, (str, os.PathLike)) for d in data)
    ):
        return pa.concat_tables([_read_path(d) for d in data], promote_options="default")
    if isinstance(data, dict):
        return _columns_table(data, what)
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, dict) for d in data):
        names = dict.fromkeys(k for row in data for k in row)
        return _columns_table({n: [row.get(n) for row in data] for n in names}, what)
    module = type(data).__module__.split(".")[0]
    # DataFrames only: a pandas Series / Timestamp / NaT is not a table (TypeError below)
    if module == "pandas" and hasattr(data, "columns"):
        return pa.Table.from_pandas(data, preserve_index=False)
    if module == "polars" and hasattr(data, "columns"):
        if hasattr(data, "collect") and not hasattr(data, "to_arrow"):
            data = data.collect()
        return data.to_arrow()
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    if hasattr(data, "__arrow_c_array__"):
        return pa.Table.from_batches([pa.record_batch(data)])
    raise TypeError(
        f"{what}: expected a pyarrow Table/RecordBatch/RecordBatchReader, a pandas or polars "
        f"DataFrame, a file path, a dict of columns or a list of row dicts; got {type(data).__name__}"
    )


def _is_missing(value: Any, strings: bool) -> bool:
    """pandas' missing markers: None, pd.NA and pd.NaT always; a float NaN in a column that holds
    strings (where it can only mean "missing": pandas writes it for a missing string)."""
    if value is None:
        return True
    if isinstance(value, float):
        return strings and value != value
    t = type(value)
    return t.__module__.startswith("pandas") and t.__name__ in ("NAType", "NaTType")


def _column(name: str, values: Any, what: str) -> pa.Array | pa.ChunkedArray:
    """One column of a dict of columns: as pyarrow reads it, or, where pyarrow refuses it because
    of pandas' missing markers, with those read as null. Errors name the column."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        error: Exception = e
        if isinstance(values, (list, tuple)) or type(values).__module__ == "numpy":
            seq = list(values)
            strings = any(isinstance(v, str) for v in seq)
            cleaned = [None if _is_missing(v, strings) else v for v in seq]
            try:
                return pa.array(cleaned)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e2:
                error = e2
        raise SchemaError(f"column '{name}': {what}: cannot convert to Arrow: {error}") from error


def _columns_table(columns: dict[Any, Any], what: str) -> pa.Table:
    """A dict of columns (lists, numpy arrays, pandas Series, Arrow arrays) as a table, with the
    missing-value rule of docs/api.md ("Missing values"): one rule for every input form."""
    arrays = {}
    for name, values in columns.items():
        if not isinstance(name, str):
            raise SchemaError(f"{what}: column names must be str, got {type(name).__name__}")
        arrays[name] = _column(name, values, what)
    return pa.table(arrays)


def events_table(data: Any, timestamp: str) -> pa.Table:
    """Events for OnlineEngine.ingest given as a table (not as row dicts): read as backfill
    reads them (a polars LazyFrame collected without a warning, a pyarrow dataset read, Decimal
    columns correctly rounded to float64)."""
    from . import _frames

    return _frames.decimals_to_float(to_table(_frames.prepare(data), "events"))
