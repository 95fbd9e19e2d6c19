"""`rtml.monitor`: drift monitors and triggers (docs/monitoring.md).

* :class:`Reference`: a training table's distribution per column, fitted once (numeric
  columns: quantile bins, exact min / max, null rate; string columns: category frequencies
  with an "other / unseen" bucket), and optionally the model's prediction on those rows
  (recorded and reported as the column ``"prediction"``, :data:`PREDICTION`), saved as
  versioned JSON.
* :func:`report`: every drift metric of every column per period of a table (a notebook's
  batch report), and :func:`plot` (a heatmap of one metric by column and period).
* :class:`Monitor`: the same metrics online, over event-time windows ``[t - W, t)`` with
  allowed lateness, in O(bins) memory per column per window, with :class:`Trigger` s that fire
  Python callbacks once on entering and once on leaving an alert state (high-is-bad metrics
  with ``above=``, p-values with ``below=``).
* :class:`Skew`: the sampled continuous train/serve skew check (served vectors recomputed from
  the event stream by an online engine, compared bit for bit).

Both paths run one Rust implementation on binned counts: for the same rows, the online
monitor's window and the report's period hold the same numbers, bit for bit.

Metrics (per column, ``None`` / null when they cannot be computed, e.g. an empty window):
``psi``, ``js`` (Jensen-Shannon distance, base 2), ``wasserstein`` (on the bins), ``ks`` and
``ks_pvalue`` (on the bins), ``chi2`` and ``chi2_pvalue``, ``null_rate``, ``out_of_range_rate``
(numeric), ``unseen_rate`` (categorical).

>>> import pyarrow as pa, rtml.monitor as rm
>>> ref = rm.Reference.fit(pa.table({"x": [float(i) for i in range(100)]}), bins=4)
>>> ref.column("x")["edges"]
[25.0, 50.0, 75.0]
>>> m = ref.compare(pa.table({"x": [float(i) for i in range(50, 150)]}))["x"]
>>> round(m["ks"], 2), m["out_of_range_rate"]
(0.5, 0.5)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from . import _core
from ._skew import Skew, SkewMismatch, sampled
from .exceptions import NotFittedError, QueryError, SchemaError, SnapshotError, SpecError
from .learn import Duration, Instant, _Clock, _duration_ns
from .transforms import _table

__all__ = [
    "Reference",
    "Skew",
    "SkewMismatch",
    "sampled",
    "report",
    "plot",
    "Monitor",
    "Trigger",
    "TriggerEvent",
    "METRICS",
    "PREDICTION",
    "REFERENCE_VERSION",
]

#: Version of the reference document this rtml writes (newer ones are refused).
REFERENCE_VERSION: int = _core.REFERENCE_VERSION

#: The name under which a reference records the model's prediction: its column in
#: :meth:`Reference.column`, :func:`report`, :meth:`Monitor.values` and :class:`Trigger`.
PREDICTION: str = "prediction"

#: Every metric name, in report order.
METRICS: tuple[str, ...] = (
    "psi",
    "js",
    "wasserstein",
    "ks",
    "ks_pvalue",
    "chi2",
    "chi2_pvalue",
    "null_rate",
    "out_of_range_rate",
    "unseen_rate",
)


def _feature_set_id(feature_set: Any) -> Optional[str]:
    """A feature set's identity: the hash of its JSON document (a str is taken as given)."""
    if feature_set is None:
        return None
    if isinstance(feature_set, str):
        return feature_set
    to_json = getattr(feature_set, "to_json", None)
    if not callable(to_json):
        raise SpecError(
            f"feature_set: expected a FeatureSet (or its id), got {type(feature_set).__name__}"
        )
    return "sha256:" + hashlib.sha256(str(to_json()).encode()).hexdigest()[:16]


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _vocabularies(transforms: Any, columns: Sequence[str]) -> dict[str, list[str]]:
    """``{input column: vocabulary}`` of the fitted one_hot / ordinal steps of `transforms`
    that encode one of `columns`."""
    if transforms is None:
        return {}
    from .transforms import Transforms

    if not isinstance(transforms, Transforms):
        raise SpecError(f"transforms: expected a rtml.Transforms, got {type(transforms).__name__}")
    if not transforms.is_fitted:
        raise NotFittedError("transforms: not fitted: call fit(table) first")
    wanted = set(columns)
    out: dict[str, list[str]] = {}
    for step in json.loads(transforms.to_json())["steps"]:
        if step.get("op") not in ("one_hot", "ordinal") or step.get("column") not in wanted:
            continue
        vocab = [str(v) for v in step["vocabulary"]]
        col = step["column"]
        if col in out and out[col] != vocab:
            raise SpecError(
                f"transforms: column '{col}' is encoded by two steps with different "
                "vocabularies; monitor one of them (fit a reference per encoder)"
            )
        out[col] = vocab
    return out


def _prediction_values(t: pa.Table, prediction: Any, what: str) -> tuple[Optional[str], pa.Array]:
    """The prediction given as a column name of `t` or as an array of `t`'s length: (its column
    name or None, its values as a numeric Arrow array). A missing column, a wrong length or
    values that are not numbers raise ``rtml.SchemaError`` naming it."""
    if isinstance(prediction, str):
        if prediction not in t.column_names:
            raise SchemaError(f"column '{prediction}' (the prediction): missing from the {what}")
        col: Any = t.column(prediction)
        name: Optional[str] = prediction
        label = f"column '{prediction}' (the prediction)"
    else:
        name, label = None, "prediction"
        if isinstance(prediction, (pa.Array, pa.ChunkedArray)):
            col = prediction
        else:
            try:
                arr = np.asarray(prediction)
                col = pa.array(arr, from_pandas=True) if arr.ndim == 1 else None
            except (pa.ArrowException, TypeError, ValueError) as e:
                raise SchemaError(f"prediction: expected numbers, got {e}") from None
            if col is None:
                raise SchemaError(f"prediction: expected one value per row, got shape {arr.shape}")
        if len(col) != t.num_rows:
            raise SchemaError(
                f"prediction: {len(col)} values for the {t.num_rows} rows of the {what}"
            )
    if not (_is_number(col.type) or pa.types.is_null(col.type)):
        raise SchemaError(f"{label}: expected numbers, got {col.type}")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return name, col


def _with_prediction(reference: "Reference", t: pa.Table, prediction: Any, what: str) -> pa.Table:
    """`t` with the prediction (a column name of `t` or an array) as the column
    :data:`PREDICTION`, when `reference` records one; `t` unchanged otherwise."""
    if not reference.has_prediction:
        if not (isinstance(prediction, str) and prediction == PREDICTION):
            raise SpecError(
                "prediction: this reference records no prediction (fit it with prediction=)"
            )
        return t
    if isinstance(prediction, str) and prediction == PREDICTION:
        _prediction_values(t, prediction, what)  # present and numeric
        return t
    _, col = _prediction_values(t, prediction, what)
    if PREDICTION in t.column_names:
        t = t.drop_columns([PREDICTION])
    return t.append_column(PREDICTION, col)


class Reference:
    """A fitted reference distribution: what a monitor compares live rows with.

    Fit it with :meth:`fit` on the training table; save it with :meth:`to_json` / :meth:`save`
    next to the feature set and transforms documents.
    """

    __slots__ = ("_r",)

    def __init__(self) -> None:
        raise TypeError("use Reference.fit(table, ...) or Reference.from_json(text)")

    @classmethod
    def _wrap(cls, r: _core.Reference) -> "Reference":
        self = object.__new__(cls)
        self._r = r
        return self

    @classmethod
    def fit(
        cls,
        table: Any,
        columns: Optional[Sequence[str]] = None,
        *,
        bins: int = 20,
        max_categories: int = 1000,
        exclude: Sequence[str] = (),
        feature_set: Any = None,
        transforms: Any = None,
        prediction: Any = None,
        prediction_range: Optional[tuple[float, float]] = None,
    ) -> "Reference":
        """Fit on `table` (pyarrow / pandas / polars / dict of columns / Parquet path).

        `columns`: the columns to monitor (default: every numeric and string column not in
        `exclude`). Numeric columns (int, float, bool): `bins` quantile bins, the edges being
        values of the data (fewer bins remain on discrete data); NaN counts as null; an
        infinite value raises ``rtml.SchemaError``. String columns: the `max_categories` most
        frequent categories, the rest in an "other" bucket. `feature_set`: the
        ``rtml.FeatureSet`` the reference belongs to (checked by :meth:`from_json`).

        `transforms`: a fitted ``rtml.Transforms``. Each monitored column that a ``one_hot`` or
        ``ordinal`` step encodes takes that step's fitted vocabulary as its categories (in the
        vocabulary's order, `max_categories` not applied), so ``unseen_rate`` is the share of
        values the model's encoder has never seen (they fall in its ``__other__`` / last
        index). Two steps with different vocabularies on one column raise ``rtml.SpecError``.

        `prediction`: the model's predictions on the same rows, as the name of a numeric column
        of `table` or as an array with one number per row. The reference records their
        distribution as the numeric column :data:`PREDICTION` (``"prediction"``, placed last;
        the source column is not monitored a second time): `bins` quantile bins, or with
        `prediction_range=(lo, hi)` `bins` equal-width bins over ``[lo, hi]`` (``(0.0, 1.0)``
        for a probability; a value outside it raises ``rtml.SchemaError``). Min / max and the
        out-of-range rate are the data's own, as for any numeric column. A missing or non-numeric
        prediction raises ``rtml.SchemaError`` naming it; a monitored column named
        ``"prediction"`` next to a prediction raises ``rtml.SpecError``.

        >>> import pyarrow as pa, rtml.monitor as rm
        >>> t = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "p": [0.1, 0.2, 0.3, 0.9]})
        >>> ref = rm.Reference.fit(t, prediction="p", bins=2, prediction_range=(0.0, 1.0))
        >>> ref.columns, ref.column("prediction")["edges"], ref.column("prediction")["counts"]
        (['x', 'prediction'], [0.5], [3, 1])

        >>> import rtml, rtml.monitor as rm
        >>> train = {"c": ["a", "a", "b", "rare"]}
        >>> tf = rtml.Transforms([rtml.one_hot("c", min_frequency=2)]).fit(train)
        >>> ref = rm.Reference.fit(train, transforms=tf)
        >>> ref.column("c")["categories"], ref.column("c")["counts"]
        (['a'], [2, 2])
        >>> ref.compare({"c": ["a", "b", "b", "z"]})["c"]["unseen_rate"]
        0.75
        """
        t = _table(table, "reference table")
        if columns is None:
            skip = set(exclude)
            columns = [
                f.name
                for f in t.schema
                if f.name not in skip and (_is_number(f.type) or _is_string(f.type))
            ]
        else:
            if isinstance(columns, str):
                columns = [columns]
            columns = list(columns)
        for name in columns:
            if not isinstance(name, str):
                raise SpecError(f"columns: expected column names, got {name!r}")
        for name, value in (("bins", bins), ("max_categories", max_categories)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{name}: expected an int >= 1, got {value!r}")
        pred: Optional[tuple[Optional[str], Optional[tuple[float, float]]]] = None
        if prediction is None:
            if prediction_range is not None:
                raise SpecError("prediction_range: given without prediction=")
        else:
            source, values = _prediction_values(t, prediction, "reference table")
            columns = [c for c in columns if c != source]
            if PREDICTION in columns:
                raise SpecError(
                    f"columns: '{PREDICTION}' names the model's prediction in a reference; "
                    "rename that column or leave it out"
                )
            if PREDICTION in t.column_names:
                t = t.drop_columns([PREDICTION])
            t = t.append_column(PREDICTION, values)
            rng = None
            if prediction_range is not None:
                try:
                    lo, hi = (float(v) for v in prediction_range)
                except (TypeError, ValueError):
                    raise SpecError(
                        f"prediction_range: expected (lo, hi), got {prediction_range!r}"
                    ) from None
                if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                    raise SpecError(f"prediction_range: expected finite lo < hi, got {(lo, hi)}")
                rng = (lo, hi)
            pred = (source, rng)
        vocabularies = _vocabularies(transforms, columns)
        return cls._wrap(
            _core.Reference.fit(
                t,
                list(columns),
                int(bins),
                int(max_categories),
                _feature_set_id(feature_set),
                vocabularies,
                pred,
            )
        )

    @classmethod
    def from_json(cls, text: str, *, feature_set: Any = None) -> "Reference":
        """A reference from :meth:`to_json`. A newer version, a malformed document, or (with
        `feature_set`) the reference of another feature set raises ``rtml.SpecError``."""
        r = cls._wrap(_core.Reference.from_json(text))
        want = _feature_set_id(feature_set)
        if want is not None and r.feature_set != want:
            raise SpecError(
                f"feature_set: this reference was fitted for feature set {r.feature_set!r}, "
                f"not the given one ({want!r})"
            )
        return r

    def to_json(self) -> str:
        """The versioned JSON document."""
        return self._r.to_json()

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], *, feature_set: Any = None) -> "Reference":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), feature_set=feature_set)

    @property
    def rows(self) -> int:
        """Rows of the reference table."""
        return self._r.rows

    @property
    def feature_set(self) -> Optional[str]:
        """Identity of the feature set it was fitted for (None: any)."""
        return self._r.feature_set

    @property
    def version(self) -> int:
        """The document's version (1: written before references recorded a prediction)."""
        return self._r.version

    @property
    def has_prediction(self) -> bool:
        """Whether the reference records the model's prediction (as the column
        :data:`PREDICTION`; its summary's ``source`` and ``range`` say how it was fitted)."""
        return self._r.prediction is not None

    @property
    def columns(self) -> list[str]:
        """The monitored columns, in order (:data:`PREDICTION` last when recorded)."""
        return [name for name, _ in self._r.columns]

    @property
    def kinds(self) -> dict[str, str]:
        """``{column: "numeric" | "categorical"}``."""
        return dict(self._r.columns)

    def column(self, name: str) -> dict[str, Any]:
        """One column's summary: kind, counts, nulls, and edges / min / max (numeric) or
        categories (categorical; the counts end with the "other" bucket). The prediction's
        also has ``source`` (the column it was fitted from, None for an array) and ``range``
        (``(lo, hi)`` of equal-width bins, None for quantile bins)."""
        return self._r.column(name)

    def compare(self, table: Any, *, prediction: Any = PREDICTION) -> dict[str, dict[str, Any]]:
        """Every metric of `table`'s rows (one period) against the reference: ``{column:
        {metric: value}}`` plus ``rows`` and ``non_null``. `prediction` (a reference with a
        prediction): the column of `table` holding the model's prediction, or an array with
        one per row; reported as ``"prediction"``."""
        t = _table(table, "table")
        return self._r.compare(_with_prediction(self, t, prediction, "table"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __getstate__(self) -> str:
        return self.to_json()

    def __setstate__(self, state: str) -> None:
        self._r = _core.Reference.from_json(state)

    def __repr__(self) -> str:
        return f"Reference(rows={self.rows}, columns={self.kinds})"


def _period_type(t: pa.Table, timestamp: str) -> pa.DataType:
    if timestamp not in t.column_names:
        raise SchemaError(f"column '{timestamp}': missing from the table (the time column)")
    typ = t.schema.field(timestamp).type
    if pa.types.is_timestamp(typ):
        return pa.timestamp("ns", tz=typ.tz)
    if pa.types.is_date(typ):
        return pa.timestamp("ns")
    return pa.int64()


def report(
    reference: Reference,
    table: Any,
    by: Optional[Duration] = None,
    timestamp: Optional[str] = None,
    *,
    prediction: Any = PREDICTION,
) -> pa.Table:
    """Every metric of every reference column per period of `table`, as a pyarrow Table
    (``.to_pandas()`` for pandas).

    `by`: the period (``"1d"``, ``"1h"``, ...; periods ``[k * by, (k + 1) * by)`` since the
    epoch, the windows of ``Monitor(window=by)``), with `timestamp` the time column (timestamps,
    dates or int64 ns). Without `by`: one row per column over all rows. Periods without rows
    are left out. Columns: ``period_start`` (the time column's type; int64 for integer times),
    ``column``, ``kind``, ``rows``, ``non_null``, then every metric of :data:`METRICS` (null
    where it cannot be computed).

    `prediction` (a reference with a prediction): the column of `table` holding the model's
    prediction (default ``"prediction"``), or an array with one per row; its rows have
    ``column == "prediction"``. A missing or non-numeric one raises ``rtml.SchemaError``.

    >>> import pyarrow as pa, rtml.monitor as rm
    >>> ref = rm.Reference.fit(pa.table({"x": [1.0, 2.0, 3.0, 4.0]}))
    >>> day = 86_400 * 10**9
    >>> r = rm.report(ref, pa.table({"x": [1.0, 2.0, 9.0], "t": [0, 1, day]}), by="1d", timestamp="t")
    >>> r.column("period_start").to_pylist(), r.column("out_of_range_rate").to_pylist()
    ([0, 86400000000000], [0.0, 1.0])
    """
    if not isinstance(reference, Reference):
        raise SpecError(
            f"reference: expected a rtml.monitor.Reference, got {type(reference).__name__}"
        )
    t = _with_prediction(reference, _table(table, "table"), prediction, "table")
    if (by is None) != (timestamp is None):
        raise SpecError("by: a report by period needs both by= and timestamp= (the time column)")
    period = None if by is None else _duration_ns(by, "by")
    if period == 0:
        raise SpecError("by: must be > 0")
    ptype = pa.int64() if timestamp is None else _period_type(t, timestamp)
    cols = _core.monitor_report(reference._r, t, timestamp, period)
    arrays: dict[str, Any] = {
        "period_start": pa.array(cols["period_start"], type=pa.int64()).cast(ptype),
        "column": pa.array(cols["column"], type=pa.string()),
        "kind": pa.array(cols["kind"], type=pa.string()),
        "rows": pa.array(cols["rows"], type=pa.int64()),
        "non_null": pa.array(cols["non_null"], type=pa.int64()),
    }
    for m in METRICS:
        arrays[m] = pa.array(cols[m], type=pa.float64(), from_pandas=True)
    return pa.table(arrays)


def plot(report_table: Any, metric: str = "psi", ax: Any = None) -> Any:
    """A heatmap of one metric of a :func:`report` by column (rows) and period (columns), with
    matplotlib (the ``e2e`` extra). Returns the matplotlib Axes."""
    if metric not in METRICS:
        raise SpecError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    import matplotlib.pyplot as plt

    t = _table(report_table, "report")
    periods = t.column("period_start").to_pylist()
    names = t.column("column").to_pylist()
    values = t.column(metric).to_pylist()
    ps = sorted(set(periods), key=lambda p: (p is None, p))
    cs = list(dict.fromkeys(names))
    grid = np.full((len(cs), len(ps)), np.nan)
    pi = {p: i for i, p in enumerate(ps)}
    ci = {c: i for i, c in enumerate(cs)}
    for p, c, v in zip(periods, names, values):
        if v is not None:
            grid[ci[c], pi[p]] = v
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(ps) + 2), max(2.0, 0.4 * len(cs) + 1)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(cs)), labels=cs)
    labels = [str(p)[:10] if p is not None else "all" for p in ps]
    step = max(1, len(ps) // 12)
    ax.set_xticks(range(0, len(ps), step), labels=labels[::step], rotation=45, ha="right")
    ax.set_title(f"{metric} by column and period")
    ax.figure.colorbar(im, ax=ax)
    return ax


class TriggerEvent(NamedTuple):
    """What a :class:`Trigger` passes to its callback."""

    trigger: "Trigger"
    #: "enter" (the alert state starts) or "leave" (it ends)
    kind: str
    column: str
    metric: str
    value: float
    #: the window ``[window_start, window_end)``, epoch ns
    window_start: int
    window_end: int


class Trigger:
    """Fire a callback once on entering an alert state and once on leaving it, on the closed
    windows of a :class:`Monitor`.

    Two directions:

    * **High is bad** (``above=``; drift statistics such as ``psi``, ``js``, ``ks``): a window
      breaches when its value is ``> above`` and clears when it is ``<= clear`` (`clear`
      defaults to `above`; a lower one is a hysteresis band). ``above=a, below=b`` is the same
      as ``above=a, clear=b`` (the band's two edges).
    * **Low is bad** (``below=`` alone; p-values such as ``ks_pvalue``, ``chi2_pvalue``): a
      window breaches when its value is ``< below`` and clears when it is ``>= clear`` (`clear`
      defaults to `below`; a higher one is the band).

    `for_`: the condition must hold on every closed window for at least this much event time
    (from the end of the first window of the run); `cooldown`: no second "enter" within this
    time of the previous one; `min_samples`: windows with fewer non-null values are not
    evaluated, nor are windows whose metric is null (an empty window never fires a p-value
    trigger). `callback(event)` receives a :class:`TriggerEvent`. Durations: ``"10m"``,
    ``"1h"``, int ns or timedelta.

    Attributes: `direction` (``"above"`` or ``"below"``), and the band's edges `above` (the
    larger) and `below` (the smaller): high is bad enters above `above` and leaves at `below`
    or under; low is bad enters under `below` and leaves at `above` or over.

    >>> import pyarrow as pa, rtml.monitor as rm
    >>> ref = rm.Reference.fit(pa.table({"x": [float(i % 10) for i in range(1000)]}))
    >>> t = rm.Trigger("ks_pvalue", "x", below=0.001, clear=0.01)
    >>> t.direction, t.below, t.above
    ('below', 0.001, 0.01)
    >>> mon = rm.Monitor(ref, window=10, timestamp="t", triggers=[t])
    >>> _ = mon.update({"x": [9.0] * 10, "t": list(range(50, 60))})  # nothing before t=50
    >>> [(e.kind, e.window_end) for e in mon.update({"x": [1.0], "t": [70]})]
    [('enter', 60)]
    >>> t.counters["evaluated"]  # the empty windows [0, 50) were never compared
    1
    """

    __slots__ = (
        "metric",
        "column",
        "above",
        "below",
        "direction",
        "for_",
        "cooldown",
        "min_samples",
        "callback",
        "_monitor",
        "_index",
    )

    def __init__(
        self,
        metric: str,
        column: str,
        *,
        above: Optional[float] = None,
        below: Optional[float] = None,
        clear: Optional[float] = None,
        for_: Duration = 0,
        cooldown: Duration = 0,
        min_samples: int = 1,
        callback: Optional[Callable[[TriggerEvent], Any]] = None,
    ) -> None:
        if metric not in METRICS:
            raise SpecError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        for name, v in (("above", above), ("below", below), ("clear", clear)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise SpecError(f"{name}: expected a number, got {type(v).__name__}")
            if v is not None and not math.isfinite(v):
                raise SpecError(f"{name}: expected a finite number, got {v!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
            raise SpecError(f"min_samples: expected an int >= 0, got {min_samples!r}")
        if callback is not None and not callable(callback):
            raise SpecError("callback: expected a callable")
        self.metric = metric
        self.column = column
        if above is not None:
            if below is not None and clear is not None:
                raise SpecError("clear: give below= or clear= with above=, not both")
            leave = below if below is not None else clear
            self.direction = "above"
            self.above = float(above)
            self.below = self.above if leave is None else float(leave)
            if self.below > self.above:
                raise SpecError(
                    f"clear: a high-is-bad trigger leaves at or under a value <= above "
                    f"({self.above}), got {self.below}"
                )
        elif below is not None:
            self.direction = "below"
            self.below = float(below)
            self.above = self.below if clear is None else float(clear)
            if self.above < self.below:
                raise SpecError(
                    f"clear: a low-is-bad trigger leaves at or over a value >= below "
                    f"({self.below}), got {self.above}"
                )
        else:
            raise SpecError(
                "above / below: give above= (high is bad) or below= (low is bad, p-values)"
            )
        self.for_ = _duration_ns(for_, "for_")
        self.cooldown = _duration_ns(cooldown, "cooldown")
        self.min_samples = int(min_samples)
        self.callback = callback
        self._monitor: Optional[Monitor] = None
        self._index = -1

    def _stats(self) -> dict[str, Any]:
        if self._monitor is None:
            return {
                "evaluated": 0,
                "skipped": 0,
                "entered": 0,
                "left": 0,
                "suppressed": 0,
                "alerting": False,
            }
        return self._monitor._m.trigger_stats(self._index)

    @property
    def counters(self) -> dict[str, int]:
        """Windows ``evaluated``, ``skipped`` (null metric or too few samples), times
        ``entered`` and ``left``, windows ``suppressed`` by the cooldown."""
        s = self._stats()
        return {k: int(v) for k, v in s.items() if k != "alerting"}

    @property
    def alerting(self) -> bool:
        """Whether the trigger is in the alert state."""
        return bool(self._stats()["alerting"])

    def __repr__(self) -> str:
        if self.direction == "above":
            band = f"above={self.above}, clear={self.below}"
        else:
            band = f"below={self.below}, clear={self.above}"
        return (
            f"Trigger({self.metric!r}, {self.column!r}, {band}, "
            f"for_={self.for_}, cooldown={self.cooldown}, min_samples={self.min_samples})"
        )


def _rows_table(rows: Any) -> pa.Table:
    if isinstance(rows, Mapping) and not any(
        isinstance(v, (list, tuple, np.ndarray, pa.Array, pa.ChunkedArray)) for v in rows.values()
    ):
        rows = [dict(rows)]
    return _table(rows, "rows")


_MONITOR_MAGIC = b"rtml.Monitor/1\n"


class Monitor:
    """The online drift monitor: rows in any order, metrics over event-time windows
    ``[t - window, t)`` with `t` a multiple of `step` since the epoch (default: `step` =
    `window`, tumbling windows: the periods of ``report(by=window)``).

    Rows older than the watermark (the largest time applied, moved once per :meth:`update`)
    minus `allowed_lateness` are dropped and counted. A window is closed once its end is at or
    before ``watermark - allowed_lateness``; triggers see closed windows only, in order.

    For a reference with a prediction, each update's rows hold it in the column `prediction`
    (default ``"prediction"``; e.g. ``prediction="probability"``); it is monitored, valued and
    watched by triggers as the column ``"prediction"``.

    >>> import pyarrow as pa, rtml.monitor as rm
    >>> ref = rm.Reference.fit(pa.table({"x": [float(i % 10) for i in range(1000)]}))
    >>> fired = []
    >>> mon = rm.Monitor(ref, window=10, timestamp="t",
    ...                  triggers=[rm.Trigger("out_of_range_rate", "x", above=0.5, callback=fired.append)])
    >>> mon.update({"x": [50.0] * 5, "t": [0, 1, 2, 3, 4]})
    []
    >>> [(e.kind, e.window_end, e.value) for e in mon.update({"x": [1.0], "t": [25]})]
    [('enter', 10, 1.0)]
    >>> mon.values(at=30)["x"]["rows"]
    1
    """

    def __init__(
        self,
        reference: Reference,
        window: Duration = "1h",
        *,
        step: Optional[Duration] = None,
        allowed_lateness: Duration = 0,
        timestamp: str = "timestamp",
        triggers: Sequence[Trigger] = (),
        prediction: str = PREDICTION,
    ) -> None:
        if not isinstance(reference, Reference):
            raise SpecError(
                f"reference: expected a rtml.monitor.Reference, got {type(reference).__name__}"
            )
        if not isinstance(prediction, str):
            raise SpecError(
                f"prediction: expected the rows' column name, got {type(prediction).__name__}"
            )
        if prediction != PREDICTION and not reference.has_prediction:
            raise SpecError(
                "prediction: this reference records no prediction (fit it with prediction=)"
            )
        w = _duration_ns(window, "window")
        s = w if step is None else _duration_ns(step, "step")
        self._m = _core.Monitor(
            reference._r, w, s, _duration_ns(allowed_lateness, "allowed_lateness")
        )
        self.reference = reference
        self.window = w
        self.step = s
        self.timestamp = timestamp
        self.prediction = prediction
        self.triggers: list[Trigger] = []
        self._clock = _Clock()
        for t in triggers:
            self.add_trigger(t)

    def add_trigger(self, trigger: Trigger) -> Trigger:
        """Attach a trigger (one monitor per trigger)."""
        if not isinstance(trigger, Trigger):
            raise SpecError(
                f"trigger: expected a rtml.monitor.Trigger, got {type(trigger).__name__}"
            )
        if trigger._monitor is not None:
            raise SpecError("trigger: already attached to a monitor")
        trigger._index = self._m.add_trigger(
            trigger.metric,
            trigger.column,
            trigger.above,
            trigger.below,
            trigger.for_,
            trigger.cooldown,
            trigger.min_samples,
            trigger.direction == "below",
        )
        trigger._monitor = self
        self.triggers.append(trigger)
        return trigger

    def _clock_kind(self, t: pa.Table) -> Optional[str]:
        """The rows' clock ("naive" / "aware" / None for integer times), checked against the
        monitor's (recorded only once the update succeeded)."""
        if self.timestamp not in t.column_names:
            raise SchemaError(f"column '{self.timestamp}': missing from the rows (the time column)")
        typ = t.schema.field(self.timestamp).type
        if not pa.types.is_timestamp(typ):
            return None
        kind = "aware" if typ.tz is not None else "naive"
        probe = _Clock()
        probe.kind = self._clock.kind
        probe._note(kind, self.timestamp)
        return kind

    def _fire(self, fired: list[tuple[int, str, int, float]]) -> list[TriggerEvent]:
        events = []
        for i, kind, end, value in fired:
            trig = self.triggers[i]
            events.append(
                TriggerEvent(trig, kind, trig.column, trig.metric, value, end - self.window, end)
            )
        first: Optional[BaseException] = None
        for e in events:
            if e.trigger.callback is not None:
                try:
                    e.trigger.callback(e)
                except Exception as exc:  # every callback runs; the first error is raised after
                    first = first or exc
        if first is not None:
            raise first
        return events

    def update(self, rows: Any) -> list[TriggerEvent]:
        """Apply one arrival of rows (a table, a dict of columns, a list of row dicts or one row
        dict) holding every reference column and the time column (and, for a reference with
        a prediction, the monitor's `prediction` column). Returns the trigger events of the
        windows it closed (their callbacks already called). Bad input raises
        ``rtml.SchemaError`` and changes nothing."""
        t = _with_prediction(self.reference, _rows_table(rows), self.prediction, "rows")
        kind = self._clock_kind(t)
        fired = self._m.update(t, self.timestamp)
        if kind is not None:
            self._clock._note(kind, self.timestamp)
        return self._fire(fired)

    def advance(self, t: Instant) -> list[TriggerEvent]:
        """Move the watermark forward to `t` (e.g. the wall clock in a quiet period): closes
        the windows ending by ``t - allowed_lateness`` and fires their triggers."""
        return self._fire(self._m.advance(self._clock.ns(t, "t")))

    def values(self, at: Optional[Instant] = None) -> dict[str, dict[str, Any]]:
        """``{column: {metric: value}}`` (plus ``rows``, ``non_null``) over the window
        ``[at - window, at)``; `at` a multiple of `step` since the epoch (default: the last
        closed window). A window not yet closed can still change with late rows."""
        if at is None:
            end = self._m.closed_until
            if end is None:
                raise QueryError("values: no window is closed yet; pass at=")
        else:
            end = self._clock.ns(at, "at")
        return self._m.values(end)

    @property
    def watermark(self) -> Optional[int]:
        """The largest event time applied (epoch ns)."""
        return self._m.watermark

    def to_bytes(self) -> bytes:
        """The whole monitor (reference, the held windows' counts, watermark, triggers with
        their state and counters) as bytes, for a service's checkpoint: :meth:`from_bytes`
        continues exactly as this one would. Callbacks are code, not state: set each restored
        trigger's ``callback`` again.

        >>> import pyarrow as pa, rtml.monitor as rm
        >>> ref = rm.Reference.fit(pa.table({"x": [1.0, 2.0, 3.0]}))
        >>> mon = rm.Monitor(ref, window=10, timestamp="t", triggers=[rm.Trigger("psi", "x", above=1)])
        >>> _ = mon.update({"x": [1.0], "t": [5]})
        >>> again = rm.Monitor.from_bytes(mon.to_bytes())
        >>> again.watermark, again.triggers[0].metric
        (5, 'psi')
        """
        head = json.dumps(
            {"clock": self._clock.kind, "timestamp": self.timestamp, "prediction": self.prediction}
        )
        return _MONITOR_MAGIC + head.encode() + b"\n" + self._m.to_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Monitor":
        """A monitor from :meth:`to_bytes`; anything else (truncated, corrupted, another format,
        a newer version) raises ``rtml.SnapshotError``."""
        data = bytes(data)
        if not data.startswith(_MONITOR_MAGIC) or b"\n" not in data[len(_MONITOR_MAGIC) :]:
            raise SnapshotError("monitor: not the bytes of Monitor.to_bytes")
        head, core = data[len(_MONITOR_MAGIC) :].split(b"\n", 1)
        try:
            meta = json.loads(head)
            clock, timestamp = meta["clock"], meta["timestamp"]
            prediction = meta.get("prediction", PREDICTION)  # (absent before the prediction)
            if (
                clock not in (None, "naive", "aware")
                or not isinstance(timestamp, str)
                or not isinstance(prediction, str)
            ):
                raise ValueError(meta)
            text = core.decode()
        except (ValueError, KeyError, TypeError) as e:
            raise SnapshotError(f"monitor: unreadable header ({e})") from None
        m = _core.Monitor.from_json(text)
        self = cls.__new__(cls)
        self._m = m
        self.reference = Reference._wrap(_core.Reference.from_json(m.reference_json()))
        self.timestamp = timestamp
        self.prediction = prediction
        self._clock = _Clock()
        self._clock.kind = clock
        self.triggers = []
        doc = json.loads(text)["monitor"]
        self.window, self.step = int(doc["window"]), int(doc["step"])
        for i, (metric, column, above, below, for_, cooldown, min_samples, low) in enumerate(
            m.trigger_specs()
        ):
            trig = Trigger(
                metric,
                column,
                above=None if low else above,
                below=below if low else None,
                clear=above if low else below,
                for_=for_,
                cooldown=cooldown,
                min_samples=min_samples,
            )
            trig._monitor, trig._index = self, i
            self.triggers.append(trig)
        return self

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        other = Monitor.from_bytes(state)
        self.__dict__.update(other.__dict__)

    def stats(self) -> dict[str, Any]:
        """``rows_applied``, ``rows_late``, ``windows_closed``, ``panes`` (held in memory),
        ``watermark``, ``closed_until``."""
        return self._m.stats()

    def __repr__(self) -> str:
        return (
            f"Monitor(window={self.window}, step={self.step}, columns={self.reference.columns}, "
            f"triggers={len(self.triggers)})"
        )
