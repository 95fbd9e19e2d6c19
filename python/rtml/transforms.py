"""Feature transforms: fit once, apply bit-identically to a table and to one request row."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from . import _core, _io
from .exceptions import SpecError

__all__ = [
    "Step",
    "Transforms",
    "TransformsEstimator",
    "log1p",
    "abs",
    "clip",
    "power",
    "add",
    "sub",
    "mul",
    "ratio",
    "is_null",
    "fill_null",
    "hash_bucket",
    "hour_of_day",
    "day_of_week",
    "day_of_month",
    "month",
    "standard_scale",
    "min_max_scale",
    "robust_scale",
    "bucketize",
    "quantile_bucketize",
    "one_hot",
    "ordinal",
    "impute",
    "target_encode",
    "passthrough",
    "from_sklearn",
]


@dataclass(frozen=True)
class Step:
    """One transform step; build with the constructors (`rtml.standard_scale("fare")`)."""

    op: str
    column: str
    name: Optional[str] = None
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "column": self.column, **self.params}
        if self.name is not None:
            d["name"] = self.name
        return d


def _step(op: str, column: str, name: Optional[str], **params: Any) -> Step:
    if not isinstance(column, str):
        raise SpecError(f"{op}: column must be a column name (str), got {type(column).__name__}")
    return Step(op, column, name, {k: v for k, v in params.items() if v is not None})


def log1p(column: str, *, name: Optional[str] = None) -> Step:
    """log(1 + x); null for x <= -1."""
    return _step("log1p", column, name)


def abs(column: str, *, name: Optional[str] = None) -> Step:  # noqa: A001
    return _step("abs", column, name)


def clip(column: str, lo: float, hi: float, *, name: Optional[str] = None) -> Step:
    return _step("clip", column, name, lo=float(lo), hi=float(hi))


def power(column: str, p: float, *, name: Optional[str] = None) -> Step:
    """x ** p; null where undefined (negative base, fractional p)."""
    return _step("power", column, name, p=float(p))


def add(a: str, b: str, *, name: Optional[str] = None) -> Step:
    return _step("add", a, name, other=b)


def sub(a: str, b: str, *, name: Optional[str] = None) -> Step:
    return _step("sub", a, name, other=b)


def mul(a: str, b: str, *, name: Optional[str] = None) -> Step:
    return _step("mul", a, name, other=b)


def ratio(a: str, b: str, *, on_zero: Optional[float] = None, name: Optional[str] = None) -> Step:
    """a / b; where b == 0 the result is `on_zero` (default null)."""
    return _step("ratio", a, name, other=b, on_zero=None if on_zero is None else float(on_zero))


def is_null(column: str, *, name: Optional[str] = None) -> Step:
    return _step("is_null", column, name)


def fill_null(column: str, value: float, *, name: Optional[str] = None) -> Step:
    return _step("fill_null", column, name, value=float(value))


def hash_bucket(column: str, n: int, *, name: Optional[str] = None) -> Step:
    """xxh3-64 of the value's UTF-8 string form, modulo n: stable across machines and versions."""
    return _step("hash_bucket", column, name, n=int(n))


def _time(op: str, column: str, tz: str, cyclical: bool, name: Optional[str]) -> Step:
    if not isinstance(tz, str) or not tz:
        raise SpecError(f"{op}: tz is required, e.g. tz='UTC' or tz='America/New_York'")
    return _step(op, column, name, tz=tz, cyclical=bool(cyclical))


def hour_of_day(column: str, *, tz: str, cyclical: bool = False, name: Optional[str] = None) -> Step:
    return _time("hour_of_day", column, tz, cyclical, name)


def day_of_week(column: str, *, tz: str, cyclical: bool = False, name: Optional[str] = None) -> Step:
    """Monday = 0."""
    return _time("day_of_week", column, tz, cyclical, name)


def day_of_month(column: str, *, tz: str, cyclical: bool = False, name: Optional[str] = None) -> Step:
    return _time("day_of_month", column, tz, cyclical, name)


def month(column: str, *, tz: str, cyclical: bool = False, name: Optional[str] = None) -> Step:
    return _time("month", column, tz, cyclical, name)


def standard_scale(column: str, *, name: Optional[str] = None) -> Step:
    """(x - mean) / std (population std; exact sums). Like sklearn StandardScaler."""
    return _step("standard_scale", column, name)


def min_max_scale(column: str, *, name: Optional[str] = None) -> Step:
    return _step("min_max_scale", column, name)


def robust_scale(column: str, *, name: Optional[str] = None) -> Step:
    """(x - median) / IQR. Like sklearn RobustScaler."""
    return _step("robust_scale", column, name)


def bucketize(column: str, boundaries: Sequence[float], *, name: Optional[str] = None) -> Step:
    """Index i with boundaries[i-1] <= x < boundaries[i] (like numpy.digitize)."""
    return _step("bucketize", column, name, boundaries=[float(b) for b in boundaries])


def quantile_bucketize(column: str, n: int, *, name: Optional[str] = None) -> Step:
    """n buckets with edges at the fitted quantiles (like KBinsDiscretizer(strategy='quantile'))."""
    return _step("quantile_bucketize", column, name, n=int(n))


def one_hot(
    column: str, *, min_frequency: int = 1, max_categories: Optional[int] = None, name: Optional[str] = None
) -> Step:
    """One column `{name}={value}` per kept category, plus `{name}=__other__`."""
    return _step("one_hot", column, name, min_frequency=int(min_frequency), max_categories=max_categories)


def ordinal(
    column: str, *, min_frequency: int = 1, max_categories: Optional[int] = None, name: Optional[str] = None
) -> Step:
    return _step("ordinal", column, name, min_frequency=int(min_frequency), max_categories=max_categories)


def impute(column: str, strategy: str = "mean", *, value: Optional[float] = None, name: Optional[str] = None) -> Step:
    """Fill nulls with the fitted mean / median / most_frequent, or a constant `value`."""
    return _step("impute", column, name, strategy=strategy, value=None if value is None else float(value))


def target_encode(
    column: str, target: str, *, smooth: float = 10.0, folds: int = 5, name: Optional[str] = None
) -> Step:
    """Smoothed mean of `target` per category; out of fold in `fit_transform`."""
    return _step("target_encode", column, name, target=target, smooth=float(smooth), folds=int(folds))


def passthrough(column: str, *, name: Optional[str] = None) -> Step:
    return _step("passthrough", column, name)


class Transforms:
    """An ordered transform pipeline, fitted on a table and applied identically to a table
    (`transform`) and to one request row (`transform_one`, `vector`).

    >>> import rtml, pyarrow as pa
    >>> tf = rtml.Transforms([rtml.standard_scale("x")]).fit(pa.table({"x": [1.0, 3.0]}))
    >>> tf.transform_one({"x": 3.0})
    {'x': 1.0}
    """

    def __init__(self, steps: Sequence[Step]) -> None:
        steps = list(steps)
        for i, s in enumerate(steps):
            if not isinstance(s, Step):
                raise SpecError(f"steps[{i}]: expected a transform step such as rtml.standard_scale('x'), got {type(s).__name__}")
        doc = {"format": "rtml.Transforms", "version": 1, "steps": [s.to_dict() for s in steps]}
        self._t = _core.Transforms.from_json(json.dumps(doc))

    @classmethod
    def from_json(cls, text: str) -> "Transforms":
        """Load a document written by `to_json` (fitted state included)."""
        obj = cls.__new__(cls)
        obj._t = _core.Transforms.from_json(text)
        return obj

    def to_json(self) -> str:
        return self._t.to_json()

    @property
    def feature_names(self) -> list[str]:
        """Output columns, in the order of `transform` columns and `vector` entries."""
        return list(self._t.feature_names)

    @property
    def required_inputs(self) -> list[str]:
        return list(self._t.required_inputs)

    @property
    def is_fitted(self) -> bool:
        return self._t.is_fitted

    def fit(self, table: Any) -> "Transforms":
        self._t.fit(_io.to_table(table, "table"))
        return self

    def fit_transform(self, table: Any) -> pa.Table:
        """Fit, then transform; target encodings of the training rows are out of fold."""
        return pa.Table.from_batches([self._t.fit_transform(_io.to_table(table, "table"))])

    def transform(self, table: Any) -> pa.Table:
        """Apply to a table: a pyarrow.Table of float64 columns in `feature_names` order."""
        return pa.Table.from_batches([self._t.transform(_io.to_table(table, "table"))])

    def transform_numpy(self, table: Any, *, order: str = "C") -> np.ndarray:
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
        return self._t.transform_numpy(_io.to_table(table, "table"), order)

    def transform_one(self, row: dict) -> dict:
        return self._t.transform_one(row)

    def vector(self, row: dict) -> np.ndarray:
        return self._t.vector(row)

    def __getstate__(self) -> str:
        return self.to_json()

    def __setstate__(self, state: str) -> None:
        self._t = _core.Transforms.from_json(state)

    def __repr__(self) -> str:
        return f"Transforms(fitted={self.is_fitted}, features={self.feature_names!r})"


class TransformsEstimator:
    """scikit-learn adapter: an rtml Transforms as a Pipeline step.

    >>> from sklearn.pipeline import make_pipeline                  # doctest: +SKIP
    >>> make_pipeline(rtml.TransformsEstimator([rtml.standard_scale("x")]), LogisticRegression())  # doctest: +SKIP
    """

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self.steps = steps

    def get_params(self, deep: bool = True) -> dict:
        return {"steps": self.steps}

    def set_params(self, **params: Any) -> "TransformsEstimator":
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, X: Any, y: Any = None) -> "TransformsEstimator":
        self.transforms_ = Transforms(self.steps).fit(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        return self.transforms_.transform_numpy(X)

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X).transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.transforms_.feature_names, dtype=object)


def from_sklearn(column_transformer: Any, *, target: Optional[str] = None) -> Transforms:
    """Translate a scikit-learn ``ColumnTransformer`` built from supported steps into an
    (unfitted) rtml ``Transforms``; fit it on the same training table.

    Supported: ``StandardScaler``, ``MinMaxScaler`` (default range), ``RobustScaler`` (default
    quantile range), ``SimpleImputer``, ``OneHotEncoder``, ``OrdinalEncoder``,
    ``KBinsDiscretizer(strategy="quantile", encode="ordinal")``, ``TargetEncoder`` (pass
    ``target=``, the label column), ``FunctionTransformer(numpy.log1p)``, ``"passthrough"``,
    each alone or inside a ``Pipeline``. Anything else raises ``SpecError`` naming the step.
    Outputs keep the input column names (``fare``, ``zone=z1``) instead of scikit-learn's
    ``num__fare``.
    """
    steps: list[Step] = []
    for tname, est, cols in column_transformer.transformers:
        if isinstance(cols, str):
            cols = [cols]
        if est == "drop":
            continue
        if est == "passthrough":
            steps += [passthrough(c) for c in cols]
            continue
        chain = [s for _, s in est.steps] if hasattr(est, "steps") else [est]
        for c in cols:
            for s in chain:
                steps.append(_step_from_sklearn(s, c, target, tname))
    if not steps:
        raise SpecError("from_sklearn: no supported transformers found")
    return Transforms(steps)


def _step_from_sklearn(est: Any, col: str, target: Optional[str], where: str) -> Step:
    kind = type(est).__name__
    p = est.get_params()
    if kind == "StandardScaler" and p.get("with_mean", True) and p.get("with_std", True):
        return standard_scale(col)
    if kind == "MinMaxScaler" and tuple(p.get("feature_range", (0, 1))) == (0, 1) and not p.get("clip", False):
        return min_max_scale(col)
    if kind == "RobustScaler" and tuple(p.get("quantile_range", (25.0, 75.0))) == (25.0, 75.0) \
            and p.get("with_centering", True) and p.get("with_scaling", True) and not p.get("unit_variance", False):
        return robust_scale(col)
    if kind == "SimpleImputer":
        strategy = p.get("strategy", "mean")
        if strategy == "constant":
            return impute(col, "constant", value=float(p.get("fill_value") or 0.0))
        return impute(col, strategy)
    if kind in ("OneHotEncoder", "OrdinalEncoder"):
        mf = p.get("min_frequency")
        if mf is not None and not isinstance(mf, int):
            raise SpecError(f"from_sklearn: {where}/{kind} on '{col}': only an integer min_frequency translates")
        ctor = one_hot if kind == "OneHotEncoder" else ordinal
        return ctor(col, min_frequency=mf or 1, max_categories=p.get("max_categories"))
    if kind == "KBinsDiscretizer" and p.get("strategy") == "quantile" and p.get("encode") == "ordinal":
        return quantile_bucketize(col, int(p.get("n_bins", 5)))
    if kind == "TargetEncoder":
        if target is None:
            raise SpecError(f"from_sklearn: {where}/TargetEncoder on '{col}' needs target=<label column>")
        smooth = p.get("smooth", "auto")
        if smooth == "auto":
            raise SpecError(f"from_sklearn: {where}/TargetEncoder on '{col}': smooth='auto' has no rtml equivalent; pass a number")
        cv = p.get("cv", 5)
        return target_encode(col, target, smooth=float(smooth), folds=int(cv) if isinstance(cv, int) else 5)
    if kind == "FunctionTransformer" and getattr(p.get("func"), "__name__", "") == "log1p":
        return log1p(col)
    raise SpecError(f"from_sklearn: {where}/{kind} on '{col}' (with these parameters) has no rtml equivalent")
