"""Feature transforms: fit once, apply bit-identically to a table and to one request row."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from . import _core, _frames, _io
from .exceptions import NotFittedError, SpecError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Step",
    "Transforms",
    "TransformsEstimator",
    "abs",
    "add",
    "bucketize",
    "clip",
    "day_of_month",
    "day_of_week",
    "fill_null",
    "from_sklearn",
    "hash_bucket",
    "hour_of_day",
    "impute",
    "is_null",
    "log1p",
    "min_max_scale",
    "month",
    "mul",
    "one_hot",
    "ordinal",
    "passthrough",
    "power",
    "quantile_bucketize",
    "ratio",
    "robust_scale",
    "standard_scale",
    "sub",
    "target_encode",
]


_PARAMS: dict[str, tuple[str, ...]] = {
    "clip": ("lo", "hi"),
    "power": ("p",),
    "add": ("other",),
    "sub": ("other",),
    "mul": ("other",),
    "ratio": ("other", "on_zero"),
    "fill_null": ("value",),
    "hash_bucket": ("n",),
    "hour_of_day": ("tz", "cyclical"),
    "day_of_week": ("tz", "cyclical"),
    "day_of_month": ("tz", "cyclical"),
    "month": ("tz", "cyclical"),
    "bucketize": ("boundaries",),
    "quantile_bucketize": ("n",),
    "one_hot": ("min_frequency", "max_categories"),
    "ordinal": ("min_frequency", "max_categories"),
    "impute": ("strategy", "value"),
    "target_encode": ("target", "smooth", "folds"),
}
_DEFAULTS: dict[str, Any] = {
    "min_frequency": 1,
    "cyclical": False,
    "smooth": 10.0,
    "folds": 5,
    "strategy": "mean",
}
_BINARY = {"add": "plus", "sub": "minus", "mul": "times", "ratio": "per"}
_TIME_PART = {
    "hour_of_day": "hour",
    "day_of_week": "day_of_week",
    "day_of_month": "day_of_month",
    "month": "month",
}


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Step:
    """One transform step; build it with the constructors (``rtml.standard_scale("fare")``).

    Immutable: `op`, `column`, `name` (None = the default output name) and `params` (a
    read-only mapping of the constructor's parameters) cannot be changed after construction;
    steps are hashable and compare by value.

    >>> import rtml
    >>> s = rtml.clip("fare", 0, 100)
    >>> s
    rtml.clip('fare', lo=0.0, hi=100.0)
    >>> s.params["lo"] = 1.0
    Traceback (most recent call last):
        ...
    TypeError: 'mappingproxy' object does not support item assignment
    """

    op: str
    column: str
    name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frozen = {k: _freeze(v) for k, v in dict(self.params).items()}
        object.__setattr__(self, "params", MappingProxyType(frozen))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Step, (self.op, self.column, self.name, dict(self.params)))

    def to_dict(self) -> dict[str, Any]:
        """The step as it appears in a Transforms document.

        >>> import rtml
        >>> rtml.ratio("a", "b", name="a_per_b").to_dict()
        {'op': 'ratio', 'column': 'a', 'other': 'b', 'name': 'a_per_b'}
        """
        d: dict[str, Any] = {"op": self.op, "column": self.column}
        for k, v in self.params.items():
            d[k] = list(v) if isinstance(v, tuple) else v
        if self.name is not None:
            d["name"] = self.name
        return d

    def __repr__(self) -> str:
        args = [repr(self.column)]
        params = dict(self.params)
        if self.op in _BINARY:
            args.append(repr(params.pop("other", None)))
        for k, v in params.items():
            if k in _DEFAULTS and v == _DEFAULTS[k] and type(v) is type(_DEFAULTS[k]):
                continue
            args.append(f"{k}={list(v) if isinstance(v, tuple) else v!r}")
        if self.name is not None:
            args.append(f"name={self.name!r}")
        return f"rtml.{self.op}({', '.join(args)})"


def _default_output(op: str, column: str, params: Mapping[str, Any]) -> str:
    """The output name a step writes without `name=` (mirrors the engine's rule)."""
    if op == "is_null":
        return f"{column}_is_null"
    if op == "hash_bucket":
        return f"{column}_hash{params.get('n')}"
    if op in _BINARY:
        return f"{column}_{_BINARY[op]}_{params.get('other')}"
    if op in _TIME_PART and not params.get("cyclical"):
        return f"{column}_{_TIME_PART[op]}"
    if op == "target_encode":
        return f"{column}_te"
    return column


def _step(op: str, column: str, name: str | None, **params: Any) -> Step:
    if not isinstance(column, str):
        raise SpecError(f"{op}: column must be a column name (str), got {type(column).__name__}")
    if name is not None and not isinstance(name, str):
        raise SpecError(f"{op}: name must be a str, got {type(name).__name__}")
    return Step(op, column, name, {k: v for k, v in params.items() if v is not None})


def log1p(column: str, *, name: str | None = None) -> Step:
    """``log(1 + x)``; null for x <= -1 (numpy gives -inf / NaN there). In place by default.

    >>> import rtml, pyarrow as pa
    >>> rtml.Transforms([rtml.log1p("x")]).transform_one({"x": 0.0})
    {'x': 0.0}
    """
    return _step("log1p", column, name)


def abs(column: str, *, name: str | None = None) -> Step:
    """``|x|``. In place by default.

    >>> import rtml
    >>> rtml.Transforms([rtml.abs("x")]).transform_one({"x": -2})
    {'x': 2.0}
    """
    return _step("abs", column, name)


def clip(column: str, lo: float, hi: float, *, name: str | None = None) -> Step:
    """``x`` limited to ``[lo, hi]``. In place by default.

    >>> import rtml
    >>> rtml.Transforms([rtml.clip("x", 0, 10)]).transform_one({"x": 12})
    {'x': 10.0}
    """
    return _step("clip", column, name, lo=float(lo), hi=float(hi))


def power(column: str, p: float, *, name: str | None = None) -> Step:
    """``x ** p``; null where undefined (negative base, fractional p). In place by default.

    >>> import rtml
    >>> rtml.Transforms([rtml.power("x", 2)]).transform_one({"x": 3})
    {'x': 9.0}
    """
    return _step("power", column, name, p=float(p))


def add(a: str, b: str, *, name: str | None = None) -> Step:
    """``a + b`` (null if either is null) into ``{a}_plus_{b}`` (or `name`).

    >>> import rtml
    >>> rtml.Transforms([rtml.add("a", "b")]).transform_one({"a": 1, "b": 2})
    {'a_plus_b': 3.0}
    """
    return _step("add", a, name, other=b)


def sub(a: str, b: str, *, name: str | None = None) -> Step:
    """``a - b`` (null if either is null) into ``{a}_minus_{b}`` (or `name`).

    >>> import rtml
    >>> rtml.Transforms([rtml.sub("a", "b")]).transform_one({"a": 1, "b": 2})
    {'a_minus_b': -1.0}
    """
    return _step("sub", a, name, other=b)


def mul(a: str, b: str, *, name: str | None = None) -> Step:
    """``a * b`` (null if either is null) into ``{a}_times_{b}`` (or `name`).

    >>> import rtml
    >>> rtml.Transforms([rtml.mul("a", "b")]).transform_one({"a": 3, "b": 2})
    {'a_times_b': 6.0}
    """
    return _step("mul", a, name, other=b)


def ratio(a: str, b: str, *, on_zero: float | None = None, name: str | None = None) -> Step:
    """``a / b`` into ``{a}_per_{b}`` (or `name`); where b == 0 the result is `on_zero`
    (default null).

    >>> import rtml
    >>> tf = rtml.Transforms([rtml.ratio("a", "b", name="r")])
    >>> tf.transform_one({"a": 3, "b": 2}), tf.transform_one({"a": 3, "b": 0})
    ({'r': 1.5}, {'r': None})
    """
    return _step("ratio", a, name, other=b, on_zero=None if on_zero is None else float(on_zero))


def is_null(column: str, *, name: str | None = None) -> Step:
    """1.0 where the value is null, else 0.0, into ``{column}_is_null`` (or `name`).

    >>> import rtml
    >>> rtml.Transforms([rtml.is_null("x")]).transform_one({"x": None})
    {'x_is_null': 1.0}
    """
    return _step("is_null", column, name)


def fill_null(column: str, value: float, *, name: str | None = None) -> Step:
    """`value` where null. In place by default.

    >>> import rtml
    >>> rtml.Transforms([rtml.fill_null("x", 0)]).transform_one({"x": None})
    {'x': 0.0}
    """
    return _step("fill_null", column, name, value=float(value))


def hash_bucket(column: str, n: int, *, name: str | None = None) -> Step:
    """xxh3-64 of the value's UTF-8 string form, modulo n, into ``{column}_hash{n}``: stable
    across machines and versions.

    >>> import rtml
    >>> rtml.Transforms([rtml.hash_bucket("zone", 8)]).feature_names
    ['zone_hash8']
    """
    return _step("hash_bucket", column, name, n=int(n))


def _time(op: str, column: str, tz: str, cyclical: bool, name: str | None) -> Step:
    if not isinstance(tz, str) or not tz:
        raise SpecError(f"{op}: tz is required, e.g. tz='UTC' or tz='America/New_York'")
    return _step(op, column, name, tz=tz, cyclical=bool(cyclical))


_TIME_DOC = """
    `column` holds instants (timestamps of any unit, aware or naive; naive ones are read as
    UTC, like everywhere in rtml); `tz` is the IANA zone the part is taken in (required).
    ``cyclical=True`` writes ``{name}_sin`` / ``{name}_cos`` of ``2 pi part / period`` instead.
"""


def hour_of_day(column: str, *, tz: str, cyclical: bool = False, name: str | None = None) -> Step:
    """Hour (0-23) in time zone `tz`, into ``{column}_hour``.

    >>> import rtml, datetime as dt
    >>> t = dt.datetime(2024, 7, 1, 12, 30, tzinfo=dt.timezone.utc)
    >>> rtml.Transforms([rtml.hour_of_day("ts", tz="America/New_York")]).transform_one({"ts": t})
    {'ts_hour': 8.0}
    """
    return _time("hour_of_day", column, tz, cyclical, name)


def day_of_week(column: str, *, tz: str, cyclical: bool = False, name: str | None = None) -> Step:
    """Day of the week (Monday = 0) in time zone `tz`, into ``{column}_day_of_week``.

    >>> import rtml, datetime as dt
    >>> t = dt.datetime(2024, 7, 1, 2, tzinfo=dt.timezone.utc)  # Sunday evening in New York
    >>> rtml.Transforms([rtml.day_of_week("ts", tz="America/New_York")]).transform_one({"ts": t})
    {'ts_day_of_week': 6.0}
    """
    return _time("day_of_week", column, tz, cyclical, name)


def day_of_month(column: str, *, tz: str, cyclical: bool = False, name: str | None = None) -> Step:
    """Day of the month (1-31) in time zone `tz`, into ``{column}_day_of_month``.

    >>> import rtml, datetime as dt
    >>> t = dt.datetime(2024, 7, 1, 2, tzinfo=dt.timezone.utc)
    >>> rtml.Transforms([rtml.day_of_month("ts", tz="UTC")]).transform_one({"ts": t})
    {'ts_day_of_month': 1.0}
    """
    return _time("day_of_month", column, tz, cyclical, name)


def month(column: str, *, tz: str, cyclical: bool = False, name: str | None = None) -> Step:
    """Month (1-12) in time zone `tz`, into ``{column}_month``.

    >>> import rtml, datetime as dt
    >>> t = dt.datetime(2024, 7, 1, 2, tzinfo=dt.timezone.utc)
    >>> rtml.Transforms([rtml.month("ts", tz="America/New_York")]).transform_one({"ts": t})
    {'ts_month': 6.0}
    """
    return _time("month", column, tz, cyclical, name)


for _f in (hour_of_day, day_of_week, day_of_month, month):
    _f.__doc__ = (_f.__doc__ or "").replace("\n\n    >>>", "\n" + _TIME_DOC + "\n    >>>", 1)


def standard_scale(column: str, *, name: str | None = None) -> Step:
    """``(x - mean) / std`` with the fitted mean and population std (exact sums; std 0 -> 1),
    like scikit-learn's ``StandardScaler``. In place by default.

    >>> import rtml
    >>> tf = rtml.Transforms([rtml.standard_scale("x")]).fit({"x": [1.0, 3.0]})
    >>> tf.transform_one({"x": 3.0})
    {'x': 1.0}
    """
    return _step("standard_scale", column, name)


def min_max_scale(column: str, *, name: str | None = None) -> Step:
    """``(x - min) / (max - min)`` with the fitted min and max (range 0 -> 1), like
    ``MinMaxScaler()``. In place by default.

    >>> import rtml
    >>> rtml.Transforms([rtml.min_max_scale("x")]).fit({"x": [0.0, 4.0]}).transform_one({"x": 1})
    {'x': 0.25}
    """
    return _step("min_max_scale", column, name)


def robust_scale(column: str, *, name: str | None = None) -> Step:
    """``(x - median) / (q75 - q25)`` (linear interpolation; IQR 0 -> 1), like
    ``RobustScaler()``. In place by default.

    >>> import rtml
    >>> tf = rtml.Transforms([rtml.robust_scale("x")]).fit({"x": [1.0, 2.0, 3.0, 4.0, 5.0]})
    >>> tf.transform_one({"x": 5.0})
    {'x': 1.0}
    """
    return _step("robust_scale", column, name)


def bucketize(column: str, boundaries: Sequence[float], *, name: str | None = None) -> Step:
    """Index i with ``boundaries[i-1] <= x < boundaries[i]`` (like ``numpy.digitize``).

    >>> import rtml
    >>> rtml.Transforms([rtml.bucketize("x", [0, 10])]).transform_one({"x": 10})
    {'x': 2.0}
    """
    return _step("bucketize", column, name, boundaries=[float(b) for b in boundaries])


def quantile_bucketize(column: str, n: int, *, name: str | None = None) -> Step:
    """n buckets with edges at the fitted quantiles (like
    ``KBinsDiscretizer(strategy="quantile", encode="ordinal", quantile_method="linear")``).

    >>> import rtml
    >>> tf = rtml.Transforms([rtml.quantile_bucketize("x", 2)]).fit({"x": [1.0, 2.0, 3.0, 4.0]})
    >>> tf.transform_one({"x": 1.0}), tf.transform_one({"x": 4.0})
    ({'x': 0.0}, {'x': 1.0})
    """
    return _step("quantile_bucketize", column, name, n=int(n))


def one_hot(
    column: str,
    *,
    min_frequency: int = 1,
    max_categories: int | None = None,
    name: str | None = None,
) -> Step:
    """One column ``{name}={value}`` per kept category (sorted), plus ``{name}=__other__`` for
    infrequent and unseen values; a null value makes every column null. The columns are known
    only after `fit`.

    >>> import rtml
    >>> tf = rtml.Transforms([rtml.one_hot("c")]).fit({"c": ["a", "b", "a"]})
    >>> tf.feature_names
    ['c=a', 'c=b', 'c=__other__']
    >>> tf.transform_one({"c": "z"})
    {'c=a': 0.0, 'c=b': 0.0, 'c=__other__': 1.0}
    """
    return _step(
        "one_hot", column, name, min_frequency=int(min_frequency), max_categories=max_categories
    )


def ordinal(
    column: str,
    *,
    min_frequency: int = 1,
    max_categories: int | None = None,
    name: str | None = None,
) -> Step:
    """Index in the sorted fitted vocabulary; infrequent / unseen values get
    ``len(vocabulary)``; null stays null. In place by default.

    >>> import rtml
    >>> tf = rtml.Transforms([rtml.ordinal("c")]).fit({"c": ["b", "a"]})
    >>> [tf.transform_one({"c": v})["c"] for v in ("a", "b", "z")]
    [0.0, 1.0, 2.0]
    """
    return _step(
        "ordinal", column, name, min_frequency=int(min_frequency), max_categories=max_categories
    )


ImputeStrategy = Literal["mean", "median", "most_frequent", "constant"]


def impute(
    column: str,
    strategy: ImputeStrategy = "mean",
    *,
    value: float | None = None,
    name: str | None = None,
) -> Step:
    """Fill nulls with the fitted mean / median / most_frequent (ties: smallest), or
    ``strategy="constant"`` with `value`. In place by default.

    >>> import rtml
    >>> tf = rtml.Transforms([rtml.impute("x", "median")]).fit({"x": [1.0, None, 5.0, 6.0]})
    >>> tf.transform_one({"x": None})
    {'x': 5.0}
    """
    return _step(
        "impute", column, name, strategy=strategy, value=None if value is None else float(value)
    )


def target_encode(
    column: str, target: str, *, smooth: float = 10.0, folds: int = 5, name: str | None = None
) -> Step:
    """Smoothed mean of `target` per category, into ``{column}_te``:
    ``(sum_y + smooth * mean_y) / (count + smooth)``; unseen categories get ``mean_y``.
    ``fit_transform`` returns out-of-fold encodings (`folds` contiguous folds) for the
    training rows, so a model never sees its own label through this column.

    >>> import rtml
    >>> tf = rtml.Transforms([rtml.target_encode("c", "y", smooth=0.0)])
    >>> tf = tf.fit({"c": ["a", "a", "b"], "y": [1.0, 0.0, 1.0]})
    >>> tf.transform_one({"c": "a"})
    {'c_te': 0.5}
    """
    return _step(
        "target_encode", column, name, target=target, smooth=float(smooth), folds=int(folds)
    )


def passthrough(column: str, *, name: str | None = None) -> Step:
    """The input column unchanged (as float64) in the output.

    >>> import rtml
    >>> rtml.Transforms([rtml.passthrough("x")]).transform_one({"x": 3})
    {'x': 3.0}
    """
    return _step("passthrough", column, name)


def _step_from_doc(d: Mapping[str, Any]) -> Step:
    op, column = str(d["op"]), str(d["column"])
    params = {k: d[k] for k in _PARAMS.get(op, ()) if d.get(k) is not None}
    name = d.get("name")
    if name == _default_output(op, column, params):
        name = None
    return Step(op, column, name, params)


def _table(data: Any, what: str = "table") -> pa.Table:
    """Any table input as Arrow; Decimal columns as float64 (correctly rounded)."""
    return _frames.decimals_to_float(_io.to_table(_frames.prepare(data), what))


def _check_outputs(doc_steps: list[dict[str, Any]]) -> None:
    """Two steps may write the same column only when the later one reads it (in place)."""
    written: dict[str, int] = {}
    for i, s in enumerate(doc_steps):
        out = s["name"]
        reads = {s["column"], s.get("other")}
        if out in written and out not in reads:
            j = written[out]
            raise SpecError(
                f"steps[{i}].name: {s['op']}('{s['column']}') writes '{out}', which "
                f"steps[{j}] ({doc_steps[j]['op']}('{doc_steps[j]['column']}')) already writes; "
                "give one of them another name="
            )
        written.setdefault(out, i)


class Transforms:
    """An ordered transform pipeline, fitted on a table and applied identically to a table
    (`transform`) and to one request row (`transform_one`, `vector`).

    `steps`: from the constructors (``rtml.standard_scale("x")`` ...). Raises SpecError for a
    non-step, an invalid parameter, or two steps writing the same output (a step may write a
    column an earlier step wrote only by reading it: in place, like ``log1p("x")`` then
    ``standard_scale("x")``).

    Table arguments (`fit`, `transform` ...) take a pyarrow Table / RecordBatch / dataset, a
    pandas or polars DataFrame (or LazyFrame), a dict of columns or Parquet / CSV / Feather
    path(s).

    >>> import rtml, pyarrow as pa
    >>> tf = rtml.Transforms([rtml.standard_scale("x")]).fit(pa.table({"x": [1.0, 3.0]}))
    >>> tf.transform_one({"x": 3.0})
    {'x': 1.0}
    >>> tf
    Transforms(fitted=True, steps=[
        rtml.standard_scale('x'),
    ], feature_names=['x'])
    """

    _t: _core.Transforms

    def __init__(self, steps: Sequence[Step]) -> None:
        if isinstance(steps, Step):
            raise SpecError("steps: expected a list of steps, got one Step; wrap it in [...]")
        steps = list(steps)
        for i, s in enumerate(steps):
            if not isinstance(s, Step):
                raise SpecError(
                    f"steps[{i}]: expected a transform step such as rtml.standard_scale('x'), "
                    f"got {type(s).__name__}"
                )
        doc = {"format": "rtml.Transforms", "version": 1, "steps": [s.to_dict() for s in steps]}
        t = _core.Transforms.from_json(json.dumps(doc))
        _check_outputs(json.loads(t.to_json())["steps"])
        self._t = t

    @classmethod
    def from_json(cls, text: str) -> Transforms:
        """Load a document written by `to_json` (fitted state included). Raises SpecError for
        an invalid document or one of a newer version.

        >>> import rtml
        >>> tf = rtml.Transforms([rtml.min_max_scale("x")]).fit({"x": [0.0, 2.0]})
        >>> rtml.Transforms.from_json(tf.to_json()).transform_one({"x": 1.0})
        {'x': 0.5}
        """
        obj = cls.__new__(cls)
        t = _core.Transforms.from_json(text)
        _check_outputs(json.loads(t.to_json())["steps"])
        obj._t = t
        return obj

    def to_json(self) -> str:
        """The versioned JSON document (str), fitted state included.

        >>> import rtml, json
        >>> json.loads(rtml.Transforms([rtml.log1p("x")]).to_json())["steps"][0]["op"]
        'log1p'
        """
        return self._t.to_json()

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps (immutable), as given (fitted state is in the document, not here).

        >>> import rtml
        >>> rtml.Transforms([rtml.log1p("x"), rtml.clip("x", 0, 1)]).steps
        (rtml.log1p('x'), rtml.clip('x', lo=0.0, hi=1.0))
        """
        return tuple(_step_from_doc(d) for d in json.loads(self._t.to_json())["steps"])

    def _unfitted_open(self) -> list[Step]:
        """Unfitted steps whose output columns depend on the data (one_hot)."""
        if self._t.is_fitted:
            return []
        doc = json.loads(self._t.to_json())["steps"]
        return [_step_from_doc(d) for d in doc if d["op"] == "one_hot" and "categories" not in d]

    @property
    def feature_names(self) -> list[str]:
        """Output columns (list of str), in the order of `transform` columns and `vector`
        entries. Complete before `fit` unless a ``one_hot`` step is unfitted (its columns are
        its fitted categories): then it raises :class:`rtml.NotFittedError` (a SpecError).

        >>> import rtml
        >>> rtml.Transforms([rtml.log1p("x"), rtml.is_null("y")]).feature_names
        ['x', 'y_is_null']
        >>> rtml.Transforms([rtml.one_hot("c")]).feature_names
        Traceback (most recent call last):
            ...
        rtml.exceptions.NotFittedError: feature_names: one_hot('c') learns its columns in fit; call fit(table) first
        """
        names = list(self._t.feature_names)
        if not self._t.is_fitted:
            doc = json.loads(self._t.to_json())["steps"]
            for d in doc:
                if d["op"] == "one_hot" and not any(n.startswith(f"{d['name']}=") for n in names):
                    raise NotFittedError(
                        f"feature_names: one_hot('{d['column']}') learns its columns in fit; "
                        "call fit(table) first"
                    )
        return names

    @property
    def required_inputs(self) -> list[str]:
        """Input columns the pipeline reads (list of str), known before `fit`.

        >>> import rtml
        >>> rtml.Transforms([rtml.ratio("a", "b"), rtml.one_hot("c")]).required_inputs
        ['a', 'b', 'c']
        """
        return list(self._t.required_inputs)

    @property
    def is_fitted(self) -> bool:
        """Whether every fitted step (scalers, vocabularies, ...) has its state.

        >>> import rtml
        >>> rtml.Transforms([rtml.standard_scale("x")]).is_fitted
        False
        """
        return self._t.is_fitted

    def fit(self, table: Any) -> Transforms:
        """Fit every fitted step on `table` (each on the column as the earlier steps transform
        it), from scratch; returns self. Raises SchemaError naming the column and step for a
        missing column, wrong type or NaN / inf; a failed fit keeps the previous state.

        >>> import rtml
        >>> rtml.Transforms([rtml.standard_scale("x")]).fit({"x": [1.0, 2.0]}).is_fitted
        True
        """
        self._t.fit(_table(table))
        return self

    def fit_transform(self, table: Any, *, output: TransformOutput = "auto") -> Any:
        """Fit, then transform `table`; target encodings of these rows are out of fold (each
        of `folds` contiguous folds encoded with the statistics of the others). `output` as
        in `transform`.

        >>> import rtml
        >>> tf = rtml.Transforms([rtml.target_encode("c", "y", smooth=0.0, folds=2)])
        >>> tf.fit_transform({"c": ["a", "a", "a", "a"], "y": [1.0, 1.0, 0.0, 0.0]}, output="numpy")
        array([[0.],
               [0.],
               [1.],
               [1.]])
        """
        src = _frames.prepare(table)
        kind = _frames.resolve_output(
            output, src, allowed=("arrow", "pandas", "polars", "numpy"), what="fit_transform"
        )
        batch = self._t.fit_transform(_table(src))
        return self._deliver(pa.Table.from_batches([batch]), kind, src)

    def transform(self, table: Any, *, output: TransformOutput = "auto") -> Any:
        """Apply to a table: float64 columns in `feature_names` order (null where a value is
        null and no step fills it).

        `output`: ``"auto"`` (default) follows the input: a pandas DataFrame gives a pandas
        DataFrame **with the input's index**, a polars DataFrame / LazyFrame a polars
        DataFrame, anything else a pyarrow.Table; or ``"arrow"``, ``"pandas"``, ``"polars"``,
        ``"numpy"`` (a 2-D float64 array, NaN = null, as `transform_numpy`). Raises SchemaError
        naming the column and step for bad input, NotFittedError / SpecError when not fitted.

        >>> import rtml, pandas as pd
        >>> df = pd.DataFrame({"x": [1.0, 3.0, None]}, index=[10, 11, 12])
        >>> tf = rtml.Transforms([rtml.standard_scale("x")]).fit(df)
        >>> tf.transform(df)
              x
        10 -1.0
        11  1.0
        12  NaN
        """
        src = _frames.prepare(table)
        kind = _frames.resolve_output(
            output, src, allowed=("arrow", "pandas", "polars", "numpy"), what="transform"
        )
        if kind == "numpy":
            return self._t.transform_numpy(_table(src), "C")
        batch = self._t.transform(_table(src))
        return self._deliver(pa.Table.from_batches([batch]), kind, src)

    @staticmethod
    def _deliver(table: pa.Table, kind: str, src: Any) -> Any:
        if kind == "numpy":
            import numpy as np

            if table.num_columns == 0:
                return np.zeros((table.num_rows, 0))
            return np.column_stack(
                [c.to_numpy(zero_copy_only=False).astype("float64") for c in table.columns]
            )
        return _frames.deliver(table, kind, src)

    def transform_numpy(self, table: Any, *, order: Literal["C", "F"] = "C") -> np.ndarray:
        """Apply to a table: one 2-D float64 array, rows x `feature_names`, NaN = null.

        The same values as `transform` (and, row by row, as `vector`), bit for bit, written
        straight into one array (C order by default, ``order="F"`` for column-major): the
        fastest table call, and the input a model's ``predict`` takes.

        >>> import rtml, pyarrow as pa
        >>> tf = rtml.Transforms([rtml.standard_scale("x"), rtml.one_hot("c")])
        >>> tf = tf.fit(pa.table({"x": [1.0, 3.0], "c": ["a", "b"]}))
        >>> tf.feature_names
        ['x', 'c=a', 'c=b', 'c=__other__']
        >>> tf.transform_numpy(pa.table({"x": [3.0, None], "c": ["b", "z"]}))
        array([[ 1.,  0.,  1.,  0.],
               [nan,  0.,  0.,  1.]])
        """
        return self._t.transform_numpy(_table(table), order)

    def transform_one(self, row: dict[str, Any]) -> dict[str, float | None]:
        """Apply to one row (a dict of input values): ``{feature_name: float or None}``. Time
        values: datetime, pandas Timestamp, numpy datetime64 (naive = UTC). Raises SchemaError
        for a missing field or a wrong type.

        >>> import rtml
        >>> rtml.Transforms([rtml.fill_null("x", -1)]).transform_one({"x": None})
        {'x': -1.0}
        """
        return self._t.transform_one(row)

    def vector(self, row: dict[str, Any]) -> np.ndarray:
        """Apply to one row: a 1-D float64 numpy array in `feature_names` order (NaN = null),
        bit for bit row i of `transform_numpy`.

        >>> import rtml
        >>> rtml.Transforms([rtml.log1p("x"), rtml.is_null("x")]).vector({"x": 0.0})
        array([0., 0.])
        """
        out: np.ndarray = self._t.vector(row)
        return out

    def __getstate__(self) -> str:
        return self.to_json()

    def __setstate__(self, state: str) -> None:
        self._t = _core.Transforms.from_json(state)

    def _names_shown(self) -> str:
        try:
            names = self.feature_names
        except NotFittedError:
            return "<learned in fit>"
        if len(names) > 12:
            return repr(names[:10])[:-1] + f", ... ({len(names)} in all)]"
        return repr(names)

    def __repr__(self) -> str:
        lines = [f"Transforms(fitted={self.is_fitted}, steps=["]
        lines += [f"    {s!r}," for s in self.steps]
        lines.append(f"], feature_names={self._names_shown()})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td>{i}</td><td><code>{e(repr(s))}</code></td></tr>"
            for i, s in enumerate(self.steps)
        )
        return (
            f"<div><b>rtml.Transforms</b> (fitted: {self.is_fitted}; inputs: "
            f"{e(', '.join(self.required_inputs))})<table><thead><tr><th>#</th><th>step</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>outputs: {e(self._names_shown())}</div>"
        )


TransformOutput = Literal["auto", "arrow", "pandas", "polars", "numpy"]


class TransformsEstimator:
    """scikit-learn adapter: an rtml Transforms as a Pipeline step.

    ``fit(X, y)`` fits ``Transforms(steps)`` on X; ``transform(X)`` returns the 2-D float64
    matrix (``transform_numpy``); ``fit_transform(X, y)`` returns the **out-of-fold** target
    encodings for the training rows (what ``Pipeline.fit`` calls), as
    ``Transforms.fit_transform`` does. When a ``target_encode`` step's `target` column is not in
    X, `y` is used as that column. ``set_output(transform="pandas" | "polars")`` is honoured.

    >>> import rtml, pandas as pd
    >>> est = rtml.TransformsEstimator([rtml.standard_scale("x")])
    >>> est
    TransformsEstimator(steps=[rtml.standard_scale('x')])
    >>> est.fit_transform(pd.DataFrame({"x": [1.0, 3.0]}))
    array([[-1.],
           [ 1.]])
    >>> list(est.get_feature_names_out())
    ['x']
    """

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self.steps = steps

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """scikit-learn's parameter protocol: ``{"steps": steps}``."""
        return {"steps": self.steps}

    def set_params(self, **params: Any) -> TransformsEstimator:
        """scikit-learn's parameter protocol; only ``steps`` exists."""
        for k, v in params.items():
            if k != "steps":
                raise ValueError(f"TransformsEstimator: unknown parameter {k!r} (only 'steps')")
            setattr(self, k, v)
        return self

    def set_output(self, *, transform: str | None = None) -> TransformsEstimator:
        """scikit-learn's output API: ``"default"`` (numpy), ``"pandas"`` or ``"polars"``."""
        if transform not in (None, "default", "pandas", "polars"):
            raise ValueError(
                f"set_output: transform must be 'default', 'pandas' or 'polars', got {transform!r}"
            )
        if transform is not None:
            self._output = "numpy" if transform == "default" else transform
        return self

    def _with_target(self, X: Any, y: Any) -> Any:
        if y is None:
            return X
        targets = [s.params["target"] for s in self.steps if s.op == "target_encode"]
        if not targets:
            return X
        table = _table(X, "X")
        for t in dict.fromkeys(targets):
            if t not in table.column_names:
                import numpy as np

                table = table.append_column(t, pa.array(np.asarray(y, dtype="float64")))
        return table

    def fit(self, X: Any, y: Any = None) -> TransformsEstimator:
        """Fit on X (and y as the target column of ``target_encode`` steps); returns self."""
        self.transforms_ = Transforms(self.steps).fit(self._with_target(X, y))
        self.n_features_in_ = len(self.transforms_.required_inputs)
        return self

    def transform(self, X: Any) -> Any:
        """The fitted pipeline applied to X: a 2-D float64 array (or a DataFrame after
        ``set_output``)."""
        kind: TransformOutput = getattr(self, "_output", "numpy")
        if kind == "numpy":
            return self.transforms_.transform_numpy(X)
        return self.transforms_.transform(X, output=kind)

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        """Fit on X, then return X transformed with out-of-fold target encodings."""
        data = self._with_target(X, y)
        tf = Transforms(self.steps)
        kind: TransformOutput = getattr(self, "_output", "numpy")
        out = tf.fit_transform(data, output=kind)
        if kind == "pandas" and _frames.kind_of(X) == "pandas":
            out.index = X.index
        self.transforms_ = tf
        self.n_features_in_ = len(tf.required_inputs)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The fitted output names as a numpy object array."""
        import numpy as np

        return np.asarray(self.transforms_.feature_names, dtype=object)

    def __repr__(self) -> str:
        return f"TransformsEstimator(steps={list(self.steps)!r})"


def _refuse(where: str, param: str, value: Any, why: str) -> SpecError:
    return SpecError(f"from_sklearn: {where}: {param}={value!r} {why}")


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def from_sklearn(column_transformer: Any, *, target: str | None = None) -> Transforms:
    """Translate a scikit-learn ``ColumnTransformer`` into an (unfitted) rtml ``Transforms`` that
    computes the same values; fit it on the same training table. What cannot be translated
    exactly raises :class:`rtml.SpecError` naming the transformer, the estimator and the
    parameter; nothing is translated approximately.

    Translated (each alone or as a step of a ``Pipeline``; columns named by string):

    * ``StandardScaler()``, ``MinMaxScaler()`` (``feature_range=(0, 1)``, ``clip=False``),
      ``RobustScaler()`` (``quantile_range=(25, 75)``, ``unit_variance=False``);
    * ``SimpleImputer`` with ``missing_values=np.nan``, ``strategy`` mean / median /
      most_frequent / constant (numeric ``fill_value``), ``add_indicator=False``;
    * ``OneHotEncoder`` with ``categories="auto"``, ``drop=None``, integer ``min_frequency``,
      ``max_categories``, any ``handle_unknown`` (see below), ``sparse_output`` (rtml's output
      is dense), ``dtype``;
    * ``OrdinalEncoder`` with ``categories="auto"``, ``handle_unknown="error"``,
      ``encoded_missing_value=nan``, integer ``min_frequency``, ``max_categories``;
    * ``KBinsDiscretizer(strategy="quantile", encode="ordinal", quantile_method="linear",
      subsample=None)`` (``n_bins`` an int or one per column);
    * ``TargetEncoder(target_type="continuous", smooth=<number>, cv=KFold(n, shuffle=False))``
      (or an integer ``cv`` with ``shuffle=False``); pass ``target=`` (the label column);
    * ``FunctionTransformer(numpy.log1p)``; ``"passthrough"`` and ``"drop"``;
    * ``ColumnTransformer`` with ``remainder="drop"``, or ``remainder="passthrough"`` once it
      is fitted (the remainder columns are then known), and no ``transformer_weights``.

    A column used by several transformers gets one output per transformer, named
    ``{transformer}__{column}`` (scikit-learn's name), each computed from the input column.
    Other outputs keep the input column names (``fare``, ``zone=z1``) instead of
    scikit-learn's ``num__fare``.

    Where the output differs by design (documented, not refused): a one-hot step always has a
    ``{column}=__other__`` column (scikit-learn's ``infrequent_sklearn`` column when it has
    one; otherwise an extra column, 0 on categories seen in fit) and an unseen category sets it
    to 1 instead of raising (``handle_unknown="error"``) or giving all zeros (``"ignore"``); an
    unseen category under ``OrdinalEncoder(handle_unknown="error")`` gets ``len(categories)``
    instead of raising; a missing category value gives null (scikit-learn treats NaN / None as
    a category of its own); ``log1p`` of x <= -1 is null (numpy: -inf / NaN); a value exactly on
    a quantile bin edge: rtml computes the edges exactly, scikit-learn's float percentile can be
    one ulp off (so its bin for that one value can differ).

    >>> import rtml
    >>> from sklearn.compose import ColumnTransformer
    >>> from sklearn.preprocessing import OneHotEncoder, StandardScaler
    >>> ct = ColumnTransformer([("num", StandardScaler(), ["fare"]), ("cat", OneHotEncoder(), ["zone"])])
    >>> rtml.from_sklearn(ct).steps
    (rtml.standard_scale('fare'), rtml.one_hot('zone'))
    >>> rtml.from_sklearn(ColumnTransformer([("c", OneHotEncoder(drop="first"), ["zone"])]))
    Traceback (most recent call last):
        ...
    rtml.exceptions.SpecError: from_sklearn: c/OneHotEncoder on 'zone': drop='first' has no rtml equivalent (rtml keeps every category); use drop=None
    """
    kind = type(column_transformer).__name__
    if not hasattr(column_transformer, "transformers"):
        raise SpecError(f"from_sklearn: expected a ColumnTransformer, got {kind}")
    p = column_transformer.get_params(deep=False)
    if p.get("transformer_weights") is not None:
        raise _refuse(
            kind, "transformer_weights", p["transformer_weights"], "has no rtml equivalent"
        )
    entries: list[tuple[str, Any, list[str]]] = []
    used: dict[str, int] = {}
    for tname, est, cols in column_transformer.transformers:
        if isinstance(cols, str):
            cols = [cols]
        try:
            cols = list(cols)
        except TypeError:
            cols = [cols]
        if not all(isinstance(c, str) for c in cols):
            raise SpecError(
                f"from_sklearn: {tname}: columns must be named by strings (got {cols!r}); "
                "select columns by name"
            )
        if isinstance(est, str) and est == "drop":
            continue
        entries.append((tname, est, cols))
        for c in cols:
            used[c] = used.get(c, 0) + 1
    remainder = p.get("remainder", "drop")
    if not (isinstance(remainder, str) and remainder == "drop"):
        if not (isinstance(remainder, str) and remainder == "passthrough"):
            raise _refuse(kind, "remainder", remainder, "has no rtml equivalent; use 'drop'")
        names_in = getattr(column_transformer, "feature_names_in_", None)
        if names_in is None:
            raise _refuse(
                kind,
                "remainder",
                "passthrough",
                "needs the remainder's columns: fit the ColumnTransformer first, or list them "
                "in a ('rest', 'passthrough', [...]) entry",
            )
        mentioned = {
            c
            for _, _, cols in column_transformer.transformers
            for c in ([cols] if isinstance(cols, str) else list(cols))
        }
        rest = [str(c) for c in names_in if c not in mentioned]
        if rest:
            entries.append(("remainder", "passthrough", rest))
            for c in rest:
                used[c] = used.get(c, 0) + 1

    steps: list[Step] = []
    for tname, est, cols in entries:
        chain = [s for _, s in est.steps] if hasattr(est, "steps") else [est]
        for j, c in enumerate(cols):
            out = f"{tname}__{c}" if used[c] > 1 else None
            src = c
            for k, s in enumerate(chain):
                if s is None or (isinstance(s, str) and s == "passthrough"):
                    step = passthrough(src, name=out if k == 0 else None)
                else:
                    step = _step_from_sklearn(s, src, j, target, f"{tname}/{type(s).__name__}")
                    if out is not None and k == 0:
                        step = Step(step.op, step.column, out, step.params)
                steps.append(step)
                if out is not None:
                    src = out if step.op != "target_encode" else f"{out}"
    if not steps:
        raise SpecError("from_sklearn: no supported transformers found")
    return Transforms(steps)


def _step_from_sklearn(est: Any, col: str, j: int, target: str | None, where0: str) -> Step:
    kind = type(est).__name__
    where = f"{where0} on '{col}'"
    if not hasattr(est, "get_params"):
        raise SpecError(f"from_sklearn: {where} has no rtml equivalent")
    p = est.get_params(deep=False)

    def need(param: str, ok: Any, hint: str) -> None:
        v = p.get(param)
        good = ok(v) if callable(ok) else v == ok
        if not good:
            raise _refuse(where, param, v, f"has no rtml equivalent; {hint}")

    if kind == "StandardScaler":
        need("with_mean", True, "use with_mean=True")
        need("with_std", True, "use with_std=True")
        return standard_scale(col)
    if kind == "MinMaxScaler":
        need("feature_range", lambda v: tuple(v) == (0, 1), "use feature_range=(0, 1)")
        need("clip", False, "use clip=False")
        return min_max_scale(col)
    if kind == "RobustScaler":
        need("with_centering", True, "use with_centering=True")
        need("with_scaling", True, "use with_scaling=True")
        need(
            "quantile_range",
            lambda v: tuple(float(x) for x in v) == (25.0, 75.0),
            "use (25.0, 75.0)",
        )
        need("unit_variance", False, "use unit_variance=False")
        return robust_scale(col)
    if kind == "SimpleImputer":
        need(
            "missing_values",
            _is_nan,
            "rtml imputes nulls (NaN in pandas): use missing_values=np.nan",
        )
        need("add_indicator", False, "add rtml.is_null(column) before the imputer instead")
        strategy = p.get("strategy", "mean")
        if strategy not in ("mean", "median", "most_frequent", "constant"):
            raise _refuse(where, "strategy", strategy, "has no rtml equivalent")
        if strategy == "constant":
            fv = p.get("fill_value")
            if fv is None:
                fv = 0.0
            if isinstance(fv, bool) or not isinstance(fv, (int, float)):
                raise _refuse(where, "fill_value", fv, "is not a number (rtml imputes numbers)")
            return impute(col, "constant", value=float(fv))
        return impute(col, strategy)
    if kind in ("OneHotEncoder", "OrdinalEncoder"):
        need("categories", "auto", "rtml learns the categories in fit (categories='auto')")
        mf = p.get("min_frequency")
        if mf is not None and (isinstance(mf, bool) or not isinstance(mf, int)):
            raise _refuse(
                where,
                "min_frequency",
                mf,
                "is not an integer (a fraction of rows has no rtml equivalent)",
            )
        if kind == "OneHotEncoder":
            drop = p.get("drop")
            if drop is not None:
                shown = drop if isinstance(drop, str) else list(drop)
                raise _refuse(
                    where,
                    "drop",
                    shown,
                    "has no rtml equivalent (rtml keeps every category); use drop=None",
                )
            return one_hot(col, min_frequency=mf or 1, max_categories=p.get("max_categories"))
        need(
            "handle_unknown",
            "error",
            "rtml gives unseen values len(categories); use handle_unknown='error'",
        )
        need("encoded_missing_value", _is_nan, "rtml keeps missing values null (NaN)")
        return ordinal(col, min_frequency=mf or 1, max_categories=p.get("max_categories"))
    if kind == "KBinsDiscretizer":
        need("strategy", "quantile", "rtml.quantile_bucketize is strategy='quantile'")
        need("encode", "ordinal", "use encode='ordinal' (then rtml.one_hot if needed)")
        if "quantile_method" in p:
            need(
                "quantile_method", lambda v: v in ("linear", "warn"), "use quantile_method='linear'"
            )
        need("subsample", None, "rtml fits on every row: use subsample=None")
        n_bins = p.get("n_bins", 5)
        if not isinstance(n_bins, int):
            n_bins = list(n_bins)[j]
        return quantile_bucketize(col, int(n_bins))
    if kind == "TargetEncoder":
        if target is None:
            raise SpecError(f"from_sklearn: {where} needs target=<label column>")
        need("categories", "auto", "rtml learns the categories in fit")
        need(
            "target_type",
            "continuous",
            "rtml encodes a numeric target: use target_type='continuous'",
        )
        smooth = p.get("smooth", "auto")
        if isinstance(smooth, (str, bool)):
            raise _refuse(where, "smooth", smooth, "has no rtml equivalent; pass a number")
        cv = p.get("cv", 5)
        if isinstance(cv, int) and not isinstance(cv, bool):
            # an int cv folds with KFold(shuffle=shuffle); a splitter object ignores `shuffle`
            need(
                "shuffle",
                False,
                f"rtml's out-of-fold encoding uses contiguous folds: pass cv=KFold({cv}, shuffle=False)",
            )
        else:
            if type(cv).__name__ == "KFold" and not cv.shuffle:
                cv = int(cv.n_splits)
            else:
                raise _refuse(
                    where, "cv", cv, "has no rtml equivalent; use an int or KFold(shuffle=False)"
                )
        return target_encode(col, target, smooth=float(smooth), folds=int(cv))
    if kind == "FunctionTransformer":
        func = p.get("func")
        if getattr(func, "__name__", "") != "log1p" or type(func).__module__ != "numpy":
            raise _refuse(where, "func", func, "has no rtml equivalent (numpy.log1p translates)")
        need("kw_args", lambda v: not v, "rtml.log1p takes no arguments")
        return log1p(col)
    raise SpecError(f"from_sklearn: {where} has no rtml equivalent")
