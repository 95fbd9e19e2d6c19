"""What comes back: results in the kind of table that went in (pandas, polars or pyarrow).

`FeatureSet.backfill` and `Transforms.transform` take an ``output=`` argument:

* ``"auto"`` (the default): the kind of the input that decides the rows (the spine of a
  backfill, the table of a transform): a pandas DataFrame gives a pandas DataFrame **with the
  input's index** (so ``spine["f"] = out["f"]`` aligns even on a filtered spine), a polars
  DataFrame or LazyFrame gives a polars DataFrame, anything else a ``pyarrow.Table``;
* ``"arrow"``, ``"pandas"``, ``"polars"``: that kind, whatever went in (``"pandas"`` from a
  pandas input keeps its index; from any other input the index is a RangeIndex);
* ``"numpy"`` (``Transforms.transform`` only): a 2-D float64 array, as ``transform_numpy``.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa

from .exceptions import SchemaError

__all__ = ["Output", "TableKind", "deliver", "kind_of", "prepare", "resolve_output"]

Output = Literal["auto", "arrow", "pandas", "polars"]
TableKind = Literal["arrow", "pandas", "polars"]


def _module(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def kind_of(obj: Any) -> TableKind:
    """'pandas' for a pandas DataFrame, 'polars' for a polars DataFrame / LazyFrame, else 'arrow'."""
    module = _module(obj)
    if module == "pandas" and type(obj).__name__ == "DataFrame":
        return "pandas"
    if module == "polars" and type(obj).__name__ in ("DataFrame", "LazyFrame"):
        return "polars"
    return "arrow"


def prepare(obj: Any) -> Any:
    """Inputs the generic converter does not read well, made into ones it does: a polars
    LazyFrame is collected (without resolving its schema twice, which polars warns about), a
    pyarrow dataset is read into a Table."""
    module = _module(obj)
    if module == "polars" and type(obj).__name__ == "LazyFrame":
        return obj.collect()
    if module == "pyarrow" and not isinstance(obj, (pa.Table, pa.RecordBatch)):
        import pyarrow.dataset as ds

        if isinstance(obj, (ds.Dataset, ds.Scanner)):
            return obj.to_table()
    return obj


def resolve_output(output: str, source: Any, *, allowed: tuple[str, ...], what: str) -> str:
    """The kind of result to build for `output=` given the rows' source object."""
    if output == "auto":
        return kind_of(source)
    if output not in allowed:
        choices = ", ".join(repr(a) for a in ("auto", *allowed))
        raise ValueError(f"{what}: output must be one of {choices}; got {output!r}")
    return output


def deliver(table: pa.Table, kind: str, source: Any | None = None) -> Any:
    """`table` as `kind`; a pandas result takes `source`'s index when `source` is pandas."""
    if kind == "arrow":
        return table
    if kind == "pandas":
        frame = table.to_pandas()
        if source is not None and kind_of(source) == "pandas":
            if len(source.index) != len(frame):
                raise SchemaError("result rows do not match the input rows")  # never expected
            frame.index = source.index
        return frame
    if kind == "polars":
        import polars as pl

        return pl.from_arrow(table)
    raise ValueError(f"unknown output kind {kind!r}")


def decimals_to_float(table: pa.Table) -> pa.Table:
    """Decimal columns as float64: each value the nearest double (correctly rounded, as
    ``float(Decimal)``; Arrow's direct decimal cast can be an ulp off). Documented in docs/api.md."""
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type):
            col = table.column(i).cast(pa.string()).cast(pa.float64())
            table = table.set_column(i, pa.field(f.name, pa.float64(), f.nullable), col)
    return table
