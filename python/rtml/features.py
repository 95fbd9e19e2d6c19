"""Feature definitions: the feature constructors and FeatureSet."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

import pyarrow as pa

from . import _core, _io
from .exceptions import SchemaError, SpecError

if TYPE_CHECKING:
    from .online import OnlineEngine

__all__ = [
    "Feature",
    "FeatureSet",
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "var",
    "std",
    "first",
    "last",
    "distinct_count",
    "quantile",
    "decayed_sum",
    "time_since_last",
]

Duration = Union[str, _dt.timedelta, None]


def _duration(value: Duration, field: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        ns = (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
        if ns <= 0:
            raise SpecError(f"{field}: must be positive, got {value!r}")
        return f"{ns}ns"
    if isinstance(value, str):
        return value
    raise SpecError(
        f"{field}: expected a duration string such as '30s', '5m', '1h', '7d' or a timedelta, "
        f"got {type(value).__name__}"
    )


@dataclass(frozen=True)
class Feature:
    """One feature: an aggregation of a column over a window. Build with the constructors
    (`rtml.sum("fare", window="1h")`), not directly."""

    agg: str
    column: Optional[str] = None
    window: Optional[str] = None
    name: Optional[str] = None
    q: Optional[float] = None
    half_life: Optional[str] = None
    hop: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"agg": self.agg, "window": self.window}
        if self.hop is not None:
            d["hop"] = self.hop
        if self.column is not None:
            d["column"] = self.column
        if self.name is not None:
            d["name"] = self.name
        if self.q is not None:
            d["q"] = self.q
        if self.half_life is not None:
            d["half_life"] = self.half_life
        return d


def _make(
    agg: str, column: Optional[str], window: Duration, name: Optional[str], hop: Duration = None, **extra: Any
) -> Feature:
    if column is not None and not isinstance(column, str):
        raise SpecError(f"{agg}: column must be a column name (str), got {type(column).__name__}")
    if name is not None and not isinstance(name, str):
        raise SpecError(f"{agg}: name must be a str, got {type(name).__name__}")
    return Feature(
        agg=agg,
        column=column,
        window=_duration(window, f"{agg}.window"),
        name=name,
        hop=_duration(hop, f"{agg}.hop"),
        **extra,
    )


def count(column: Optional[str] = None, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Number of events in the window; with a column, number of its non-null values.

    >>> rtml.count(window="1h").agg
    'count'
    """
    return _make("count", column, window, name, hop)


def sum(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:  # noqa: A001
    """Exact (correctly rounded) sum of the column's non-null values; 0.0 on an empty window."""
    return _make("sum", column, window, name, hop)


def mean(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Mean of non-null values; null on an empty window."""
    return _make("mean", column, window, name, hop)


def min(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:  # noqa: A001
    """Smallest non-null value; null on an empty window."""
    return _make("min", column, window, name, hop)


def max(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:  # noqa: A001
    """Largest non-null value; null on an empty window."""
    return _make("max", column, window, name, hop)


def var(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Sample variance (ddof=1); null below two values."""
    return _make("var", column, window, name, hop)


def std(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Sample standard deviation (ddof=1); null below two values."""
    return _make("std", column, window, name, hop)


def first(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Value of the earliest non-null event in the window (ties: the smallest value)."""
    return _make("first", column, window, name, hop)


def last(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Value of the latest non-null event in the window (ties: the largest value)."""
    return _make("last", column, window, name, hop)


def distinct_count(column: str, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Number of distinct non-null values (numbers or strings); 0 on an empty window."""
    return _make("distinct_count", column, window, name, hop)


def quantile(column: str, q: float, *, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Nearest-rank q-quantile, within 2^-8 relative error (deterministic; see docs/semantics.md).

    >>> rtml.quantile("fare", 0.9, window="1h").q
    0.9
    """
    if isinstance(q, bool) or not isinstance(q, (int, float)):
        raise SpecError(f"quantile.q: expected a number in [0, 1], got {q!r}")
    return _make("quantile", column, window, name, hop, q=float(q))


def decayed_sum(
    column: str, *, half_life: Duration, window: Duration = None, hop: Duration = None, name: Optional[str] = None
) -> Feature:
    """Sum of v * 2^(-(t - ts) / half_life) over the window."""
    if half_life is None:
        raise SpecError("decayed_sum.half_life: required, e.g. half_life='1h'")
    return _make("decayed_sum", column, window, name, hop, half_life=_duration(half_life, "decayed_sum.half_life"))


def time_since_last(*, window: Duration = None, hop: Duration = None, name: Optional[str] = None) -> Feature:
    """Seconds since the entity's latest event in the window (null if none)."""
    return _make("time_since_last", None, window, name, hop)


Progress = Union[bool, None, Callable[[int, int], Any]]


def _progress_callback(progress: Progress, total_hint: int) -> tuple[Optional[Callable[[int, int], Any]], Any]:
    if callable(progress):
        return progress, None
    if progress is False or (progress is None and total_hint < 200_000):
        return None, None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, None
    bar = tqdm(total=total_hint, desc="backfill", unit="rows", unit_scale=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar


class FeatureSet:
    """Window features of one entity, defined once and computed by one engine offline
    (`backfill`) and online (`online()`), bit for bit.

    >>> import rtml
    >>> fs = rtml.FeatureSet(entity="driver_id", timestamp="ts",
    ...                      features=[rtml.count(window="1h"), rtml.sum("fare", window="1h")])
    >>> fs.feature_names
    ['count_1h', 'fare_sum_1h']
    """

    def __init__(
        self,
        entity: str,
        timestamp: str,
        features: Iterable[Feature],
        *,
        allowed_lateness: Duration = None,
        ttl: Duration = None,
        timestamp_unit: Optional[str] = None,
        on_nonfinite: str = "error",
    ) -> None:
        feats = list(features)
        for i, f in enumerate(feats):
            if not isinstance(f, Feature):
                raise SpecError(
                    f"features[{i}]: expected a feature such as rtml.sum('fare', window='1h'), "
                    f"got {type(f).__name__}"
                )
        doc = {
            "format": "rtml.FeatureSet",
            "version": _core.SPEC_VERSION,
            "entity": entity,
            "timestamp": timestamp,
            "timestamp_unit": timestamp_unit,
            "allowed_lateness": _duration(allowed_lateness, "allowed_lateness"),
            "ttl": _duration(ttl, "ttl"),
            "on_nonfinite": on_nonfinite,
            "features": [f.to_dict() for f in feats],
        }
        self._spec = _core.Spec.from_json(json.dumps(doc))

    @classmethod
    def from_json(cls, text: str) -> "FeatureSet":
        """Load a document written by `to_json` (refuses newer versions with SpecError)."""
        fs = cls.__new__(cls)
        fs._spec = _core.Spec.from_json(text)
        return fs

    def to_json(self) -> str:
        """The versioned JSON document: save it in the notebook, load it in the service."""
        return self._spec.to_json()

    @property
    def feature_names(self) -> list[str]:
        return list(self._spec.feature_names)

    @property
    def entity(self) -> str:
        return self._spec.entity

    @property
    def timestamp(self) -> str:
        return self._spec.timestamp

    @property
    def features(self) -> list[Feature]:
        out = []
        for f in json.loads(self.to_json())["features"]:
            out.append(
                Feature(
                    agg=f["agg"],
                    column=f.get("column"),
                    window=f.get("window"),
                    name=f["name"],
                    q=f.get("q"),
                    half_life=f.get("half_life"),
                    hop=f.get("hop"),
                )
            )
        return out

    def backfill(
        self,
        events: Any,
        spine: Any,
        *,
        key: Optional[str] = None,
        time: Optional[str] = None,
        progress: Progress = None,
    ) -> pa.Table:
        """Point-in-time-correct features for every spine row.

        Returns the spine's columns (in spine order, unchanged) followed by one column per
        feature, each computed from the entity's events with ``time - window <= ts < time``.
        `key` / `time` name the spine's key and time columns (default: the feature set's
        entity and timestamp names). `progress`: None shows a bar for large spines when tqdm is
        installed, True always, False never, or a callable ``f(done, total)``.
        """
        ev = _io.to_table(events, "events")
        sp = _io.to_table(spine, "spine")
        key = key or self.entity
        time = time or self.timestamp
        for name in self.feature_names:
            if name in sp.column_names:
                raise SchemaError(
                    f"column '{name}': the spine already has a column named like this feature; "
                    "rename one of them (feature name=...)"
                )
        callback, bar = _progress_callback(progress, sp.num_rows)
        try:
            feats = self._spec.backfill(ev, sp, key, time, callback)
        finally:
            if bar is not None:
                bar.close()
        out = sp
        for i, field in enumerate(feats.schema):
            out = out.append_column(field, feats.column(i))
        return out

    def online(self, history: Any = None) -> "OnlineEngine":
        """A new online engine for this feature set, optionally bootstrapped from `history`
        (events, ingested in time order)."""
        from .online import OnlineEngine

        eng = OnlineEngine(self)
        if history is not None:
            table = _io.to_table(history, "history")
            if table.num_rows:
                table = table.sort_by(self.timestamp)
            eng.ingest(table)
        return eng

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSet) and other.to_json() == self.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __getstate__(self) -> str:
        return self.to_json()

    def __setstate__(self, state: str) -> None:
        self._spec = _core.Spec.from_json(state)

    def __repr__(self) -> str:
        return f"FeatureSet(entity={self.entity!r}, timestamp={self.timestamp!r}, features={self.feature_names!r})"
