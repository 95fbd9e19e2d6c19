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
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
        return pa.concat_tables([_read_path(d) for d in data], promote_options="default")
    if isinstance(data, dict):
        return pa.table(data)
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, dict) for d in data):
        return pa.Table.from_pylist(list(data))
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


def events_table(data: Any, timestamp: str) -> pa.Table:
    """Used by OnlineEngine.ingest for non-row inputs."""
    return to_table(data, "events")
