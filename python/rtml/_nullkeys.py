"""The ``null_keys="skip"`` option of `FeatureSet.backfill` and `OnlineEngine.ingest`: rows whose
entity key is null are left out and counted, instead of refusing the whole input.

One rule for every input form: a key is null when it is None, a float NaN (pandas' missing value
in an object column) or an Arrow null (including a null stored in a dictionary's values).
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["POLICIES", "skips", "is_null_key", "valid_mask", "valid_rows", "drop_from_table"]

#: the accepted values of ``null_keys=``
POLICIES = ("error", "skip")


def skips(null_keys: Any, what: str) -> bool:
    """Whether `null_keys` asks to skip (True) or to refuse (False) rows with null keys.

    >>> skips("skip", "ingest"), skips("error", "ingest")
    (True, False)
    """
    if null_keys == "skip":
        return True
    if null_keys == "error":
        return False
    raise ValueError(f"{what}: null_keys must be one of {POLICIES}, got {null_keys!r}")


def is_null_key(value: Any) -> bool:
    """None or a float NaN.

    >>> is_null_key(None), is_null_key(float("nan")), is_null_key(0), is_null_key("")
    (True, True, False, False)
    """
    return value is None or (isinstance(value, float) and math.isnan(value))


def valid_mask(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a key column holds a key (not null, not NaN)."""
    if pa.types.is_dictionary(column.type):
        # a null may sit in the dictionary's values rather than in its indices
        column = column.cast(column.type.value_type)
    mask = pc.is_valid(column)
    if pa.types.is_floating(column.type):
        mask = pc.and_(mask, pc.invert(pc.is_nan(column)))
    return mask


def valid_rows(table: pa.Table, columns: str | list[str]) -> Any:
    """A NumPy bool array, True where every key column present in `table` holds a key (a
    composite key is null when any part is); missing columns are left for the caller's
    validation to name."""
    import numpy as np

    cols = [columns] if isinstance(columns, str) else columns
    valid = np.ones(table.num_rows, dtype=bool)
    for c in cols:
        if c in table.column_names:
            valid &= valid_mask(table[c]).to_numpy(zero_copy_only=False)
    return valid


def drop_from_table(table: pa.Table, columns: str | list[str]) -> tuple[pa.Table, int]:
    """`table` without its rows whose key (the column, or any of the columns of a composite
    key) is null, and how many were dropped. A missing column is left for the caller's
    validation to name."""
    cols = [columns] if isinstance(columns, str) else columns
    present = [c for c in cols if c in table.column_names]
    if not present:
        return table, 0
    mask = valid_mask(table[present[0]])
    for c in present[1:]:
        mask = pc.and_(mask, valid_mask(table[c]))
    kept = pc.sum(mask).as_py() or 0
    if kept == table.num_rows:
        return table, 0
    return table.filter(mask), table.num_rows - kept
