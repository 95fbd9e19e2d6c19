"""Feature definitions: the feature constructors and FeatureSet.

Durations (``window=``, ``hop=``, ``half_life=``, ``allowed_lateness=``, ``ttl=``) are given as

* a string: a whole or decimal number and a unit, optionally repeated and separated by spaces:
  ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1 hour"``, ``"1.5h"`` (= ``"90m"``), ``"2 days"``; units
  ``ns us ms s m h d w`` or their English names (``second(s)``, ``sec``, ``minute(s)``,
  ``min``, ``hour(s)``, ``hr``, ``day(s)``, ``week(s)``, ``millisecond(s)`` ...). A month or
  a year is not a fixed duration and is refused; so is a fraction that is not a whole number of
  nanoseconds;
* a ``datetime.timedelta``, a ``pandas.Timedelta`` or a ``numpy.timedelta64`` (any unit);
* ``None``: no window (the entity's whole history), no lateness, no TTL.

A string already in the engine's compact form (``"24h"``, ``"1h30m"``) is kept as written; any
other accepted form is stored in its shortest exact spelling (``"1.5h"`` and ``"90 minutes"`` ->
``"90m"``, ``timedelta(hours=24)`` -> ``"1d"``). That spelling is the one in default feature
names (``fare_sum_90m``) and in the JSON document.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import html
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, Union

import pyarrow as pa

from . import _core, _frames, _io, _nullkeys
from .exceptions import NullKeysWarning, SchemaError, SpecError

if TYPE_CHECKING:
    import numpy as np

    from .online import OnlineEngine
    from .remote import RemoteEngine

__all__ = [
    "Feature",
    "FeatureSet",
    "count",
    "decayed_sum",
    "distinct_count",
    "first",
    "last",
    "max",
    "mean",
    "min",
    "quantile",
    "std",
    "sum",
    "time_since_last",
    "var",
]

Duration = Union[str, _dt.timedelta, "np.timedelta64", None]
"""A duration: ``"1h"``, ``"1.5 hours"``, ``timedelta``, ``pandas.Timedelta``, ``numpy.timedelta64``."""

Agg = Literal[
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
OnNonfinite = Literal["error", "skip"]
TimestampUnit = Literal["s", "ms", "us", "ns"]

_NS = {
    "w": 7 * 86_400 * 10**9,
    "d": 86_400 * 10**9,
    "h": 3_600 * 10**9,
    "m": 60 * 10**9,
    "s": 10**9,
    "ms": 10**6,
    "us": 10**3,
    "ns": 1,
}
_UNIT_NAMES = {
    "w": "w", "wk": "w", "week": "w", "weeks": "w",
    "d": "d", "day": "d", "days": "d",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "m": "m", "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "ms": "ms", "msec": "ms", "millisecond": "ms", "milliseconds": "ms",
    "us": "us", "\u00b5s": "us", "usec": "us", "microsecond": "us", "microseconds": "us",
    "ns": "ns", "nsec": "ns", "nanosecond": "ns", "nanoseconds": "ns",
}  # fmt: skip
_NOT_FIXED = {"mo", "mon", "month", "months", "y", "yr", "year", "years", "q", "quarter"}
_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([^\s0-9.]*)\s*")
_CANONICAL = re.compile(r"(?:[0-9]+(?:ns|us|ms|s|m|h|d|w))+")
_HINT = "e.g. '30s', '5m', '1h30m', '1.5h', '1 hour', '7d'"


def _format_ns(ns: int) -> str:
    for unit, factor in _NS.items():
        if ns % factor == 0:
            return f"{ns // factor}{unit}"
    return f"{ns}ns"  # unreachable: every whole ns is a multiple of 1ns


def _parse_duration_text(text: str, field: str) -> str:
    s = text.strip()
    if not s:
        raise SpecError(f"{field}: invalid duration {text!r}: empty ({_HINT})")
    if s.startswith("-"):
        raise SpecError(f"{field}: invalid duration {text!r}: must be positive")
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None or m.end() == pos:
            raise SpecError(
                f"{field}: invalid duration {text!r}: each part must be a number and a unit ({_HINT})"
            )
        number, unit = m.group(1), m.group(2).lower()
        if not unit:
            raise SpecError(
                f"{field}: invalid duration {text!r}: {number} has no unit (units: ns us ms s m h d w)"
            )
        if unit in _NOT_FIXED:
            raise SpecError(
                f"{field}: invalid duration {text!r}: a {unit!r} is not a fixed length of time; "
                "use days or weeks (e.g. '30d')"
            )
        if unit not in _UNIT_NAMES:
            raise SpecError(
                f"{field}: invalid duration {text!r}: unknown unit {unit!r} (units: ns us ms s m h d w)"
            )
        total += Fraction(number) * _NS[_UNIT_NAMES[unit]]
        pos = m.end()
    if total.denominator != 1:
        raise SpecError(f"{field}: invalid duration {text!r}: not a whole number of nanoseconds")
    if total <= 0:
        raise SpecError(f"{field}: invalid duration {text!r}: must be positive")
    if _CANONICAL.fullmatch(s):
        return s  # already the engine's spelling: leave the document as written
    return _format_ns(int(total))


def _duration(value: Any, field: str) -> str | None:
    """The engine spelling of a duration given as a string, timedelta, pandas.Timedelta or
    numpy.timedelta64 (see the module docstring); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_duration_text(value, field)
    ns: int | None = None
    module = type(value).__module__.split(".")[0]
    if module == "numpy" and type(value).__name__ == "timedelta64":
        import numpy as np

        if np.isnat(value):
            raise SpecError(f"{field}: got NaT, not a duration")
        if np.datetime_data(value.dtype)[0] in ("Y", "M"):
            raise SpecError(f"{field}: {value!r}: months and years are not a fixed length of time")
        ns = int(value.astype("timedelta64[ns]").astype("int64"))
    elif module == "pandas" and hasattr(value, "value") and isinstance(value, _dt.timedelta):
        ns = int(getattr(value, "value"))  # noqa: B009 (pandas.Timedelta: nanoseconds)
    elif isinstance(value, _dt.timedelta):
        ns = (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    if ns is None:
        raise SpecError(
            f"{field}: expected a duration ({_HINT}, a timedelta, pandas.Timedelta or "
            f"numpy.timedelta64), got {type(value).__name__}"
        )
    if ns <= 0:
        raise SpecError(f"{field}: must be positive, got {value!r}")
    return _format_ns(ns)


@dataclass(frozen=True)
class Feature:
    """One feature: an aggregation of a column over a window. Build it with the constructors
    (``rtml.sum("fare", window="1h")``), not directly.

    Attributes: ``agg`` (the aggregation), ``column`` (None for ``count()`` and
    ``time_since_last()``), ``window`` / ``hop`` / ``half_life`` (engine spelling, e.g.
    ``"90m"``; None = lifetime / none), ``name`` (None = the default name, filled in by a
    FeatureSet), ``q`` (``quantile`` only).

    >>> import rtml
    >>> rtml.sum("fare", window="1.5h")
    rtml.sum('fare', window='90m')
    """

    agg: str
    column: str | None = None
    window: str | None = None
    name: str | None = None
    q: float | None = None
    half_life: str | None = None
    hop: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The feature as it appears in a FeatureSet document.

        >>> import rtml
        >>> rtml.count(window="1h").to_dict()
        {'agg': 'count', 'window': '1h'}
        """
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

    def __repr__(self) -> str:
        args = [] if self.column is None else [repr(self.column)]
        if self.q is not None:
            args.append(repr(self.q))
        for key in ("half_life", "window", "hop", "name"):
            v = getattr(self, key)
            if v is not None:
                args.append(f"{key}={v!r}")
        return f"rtml.{self.agg}({', '.join(args)})"


def _make(
    agg: str,
    column: str | None,
    window: Duration,
    name: str | None,
    hop: Duration = None,
    **extra: Any,
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


_COMMON = """
    `window`: a duration (``"1h"``, ``"1.5 hours"``, timedelta, numpy.timedelta64) or None
    for the entity's whole history; the window at time t holds events with
    ``t - window <= ts < t`` (t itself excluded). `hop`: a tiled window (bounded memory):
    ``floor(t / hop) * hop - window <= ts < t``. `name`: the output column (default
    ``{column}_{agg}_{window}``). Returns a :class:`Feature`; raises :class:`rtml.SpecError` for
    a malformed duration or a non-string column / name.
"""


def count(
    column: str | None = None,
    *,
    window: Duration = None,
    hop: Duration = None,
    name: str | None = None,
) -> Feature:
    """Number of events in the window; with a column, the number of its non-null values.

    >>> import rtml
    >>> rtml.FeatureSet("k", "ts", [rtml.count(window="1h"), rtml.count("fare")]).feature_names
    ['count_1h', 'fare_count']
    """
    return _make("count", column, window, name, hop)


def sum(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Exact (correctly rounded) sum of the column's non-null values; 0.0 on an empty window.

    >>> import rtml
    >>> rtml.sum("fare", window="1 hour")
    rtml.sum('fare', window='1h')
    """
    return _make("sum", column, window, name, hop)


def mean(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Mean of the non-null values; null on an empty window.

    >>> import rtml
    >>> rtml.mean("fare", window="24h", name="avg_fare")
    rtml.mean('fare', window='24h', name='avg_fare')
    """
    return _make("mean", column, window, name, hop)


def min(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Smallest non-null value; null on an empty window. The column: a number column, or a string column declared in
    ``FeatureSet(string_columns=[...])`` (then a string, strings compared by their UTF-8 bytes;
    sliding or lifetime windows, not tiled).

    >>> import rtml
    >>> rtml.min("fare", window="30m").agg
    'min'
    """
    return _make("min", column, window, name, hop)


def max(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Largest non-null value; null on an empty window. The column: a number column, or a string column declared in
    ``FeatureSet(string_columns=[...])`` (then a string, strings compared by their UTF-8 bytes;
    sliding or lifetime windows, not tiled).

    >>> import rtml
    >>> rtml.max("fare", window="30m").agg
    'max'
    """
    return _make("max", column, window, name, hop)


def var(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Sample variance (ddof=1); null below two values.

    >>> import rtml
    >>> rtml.var("fare", window="1d").window
    '1d'
    """
    return _make("var", column, window, name, hop)


def std(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Sample standard deviation (ddof=1); null below two values.

    >>> import rtml
    >>> rtml.std("fare", window="1d").window
    '1d'
    """
    return _make("std", column, window, name, hop)


def first(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Value of the earliest non-null event in the window (ties: the smallest value); null on an
    empty window. The column: a number column, or a string column declared in
    ``FeatureSet(string_columns=[...])`` (then a string, strings compared by their UTF-8 bytes;
    sliding or lifetime windows, not tiled).

    >>> import rtml
    >>> rtml.first("zone", window="1h")
    rtml.first('zone', window='1h')
    """
    return _make("first", column, window, name, hop)


def last(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Value of the latest non-null event in the window (ties: the largest value); null on an
    empty window. The column: a number column, or a string column declared in
    ``FeatureSet(string_columns=[...])`` (then a string, strings compared by their UTF-8 bytes;
    sliding or lifetime windows, not tiled).

    >>> import rtml
    >>> rtml.last("fare")
    rtml.last('fare')

    A driver's latest status (a lifetime string feature):

    >>> from datetime import datetime, timezone
    >>> def at(minute):
    ...     return datetime(2026, 1, 1, 8, minute, tzinfo=timezone.utc)
    >>> fs = rtml.FeatureSet("driver", "ts", [rtml.last("status", name="status")],
    ...                      string_columns=["status"])
    >>> eng = fs.online()
    >>> eng.ingest([{"driver": 7, "ts": at(0), "status": "idle"},
    ...             {"driver": 7, "ts": at(1), "status": "busy"}])  # events accepted
    2
    >>> eng.get(7, at=at(2))["status"]
    'busy'
    """
    return _make("last", column, window, name, hop)


def distinct_count(
    column: str, *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Number of distinct non-null values (numbers or strings); 0 on an empty window.

    >>> import rtml
    >>> rtml.distinct_count("zone", window="24h")
    rtml.distinct_count('zone', window='24h')
    """
    return _make("distinct_count", column, window, name, hop)


def quantile(
    column: str,
    q: float,
    *,
    window: Duration = None,
    hop: Duration = None,
    name: str | None = None,
) -> Feature:
    """Nearest-rank q-quantile (0 <= q <= 1), within 2^-8 relative error (deterministic; see
    docs/semantics.md). Raises SpecError for a q that is not a number.

    >>> import rtml
    >>> rtml.quantile("fare", 0.9, window="1h").q
    0.9
    """
    if isinstance(q, bool) or not isinstance(q, (int, float)):
        raise SpecError(f"quantile.q: expected a number in [0, 1], got {q!r}")
    return _make("quantile", column, window, name, hop, q=float(q))


def decayed_sum(
    column: str,
    *,
    half_life: Duration,
    window: Duration = None,
    hop: Duration = None,
    name: str | None = None,
) -> Feature:
    """Sum of ``v * 2 ** (-(t - ts) / half_life)`` over the window (`half_life` required).

    >>> import rtml
    >>> rtml.decayed_sum("fare", half_life="30 minutes", window="1d")
    rtml.decayed_sum('fare', half_life='30m', window='1d')
    """
    if half_life is None:
        raise SpecError("decayed_sum.half_life: required, e.g. half_life='1h'")
    return _make(
        "decayed_sum",
        column,
        window,
        name,
        hop,
        half_life=_duration(half_life, "decayed_sum.half_life"),
    )


def time_since_last(
    *, window: Duration = None, hop: Duration = None, name: str | None = None
) -> Feature:
    """Seconds (float) since the entity's latest event in the window (null if none).

    >>> import rtml
    >>> rtml.time_since_last()
    rtml.time_since_last()
    """
    return _make("time_since_last", None, window, name, hop)


for _f in (count, sum, mean, min, max, var, std, first, last, distinct_count, quantile):
    _f.__doc__ = (_f.__doc__ or "").replace("\n\n    >>>", "\n" + _COMMON + "\n    >>>", 1)
decayed_sum.__doc__ = (decayed_sum.__doc__ or "").replace(
    "\n\n    >>>", "\n" + _COMMON + "\n    >>>", 1
)
time_since_last.__doc__ = (time_since_last.__doc__ or "").replace(
    "\n\n    >>>", "\n" + _COMMON + "\n    >>>", 1
)

Progress = Union[bool, None, Callable[[int, int], Any]]  # noqa: UP007 (a runtime alias)


def _progress_callback(
    progress: Progress, total_hint: int
) -> tuple[Callable[[int, int], Any] | None, Any]:
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


def _entity_doc(entity: Any) -> Any:
    """The document's `entity`: a str, or the list of a composite key's columns."""
    if isinstance(entity, (list, tuple)):
        for i, c in enumerate(entity):
            if not isinstance(c, str):
                raise SpecError(
                    f"entity[{i}]: expected a column name (str), got {type(c).__name__}"
                )
        return list(entity)
    if not isinstance(entity, str):
        raise SpecError(
            "entity: expected a column name (str) or a list of them (a composite key), "
            f"got {type(entity).__name__}"
        )
    return entity


def _names(columns: list[str]) -> str:
    """Key columns as messages show them: `k`, or `a, b` for a composite key."""
    return ", ".join(columns)


def _check_key_column(table: pa.Table, column: str, what: str) -> None:
    """Refuse float keys with a hint to cast (1.0 and 1 would be different keys otherwise)."""
    if column not in table.column_names:
        return
    typ = table.schema.field(column).type
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        import pyarrow.compute as pc

        col = table.column(column).drop_null()
        whole = len(col) == 0 or bool(
            pc.all(pc.equal(pc.floor(col.cast(pa.float64())), col.cast(pa.float64()))).as_py()
        )
        hint = (
            f"every value is a whole number: cast it, e.g. df['{column}'].astype('int64')"
            if whole
            else f"it holds fractions: cast it to strings if they are ids, e.g. df['{column}'].astype(str)"
        )
        raise SchemaError(
            f"{what} column '{column}': entity keys must be integers or strings, got {typ} "
            f"(pandas turns an integer column with nulls into floats); {hint}"
        )


def _check_time_column(table: pa.Table, column: str, what: str) -> None:
    """Refuse a time column of strings with a hint to parse it (rtml never guesses formats)."""
    if column not in table.column_names:
        return  # the engine names the missing column
    typ = table.schema.field(column).type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        col = table.column(column).drop_null()
        sample = col[0].as_py() if len(col) else None
        raise SchemaError(
            f"{what} column '{column}': holds strings (e.g. {sample!r}), not timestamps; rtml does "
            "not guess date formats: parse it first, e.g. pandas.to_datetime(df['"
            f"{column}'], utc=True), polars pl.col('{column}').str.to_datetime(time_zone='UTC'), "
            f"or pyarrow.compute.cast(table['{column}'], pa.timestamp('ns', 'UTC'))"
        )


class FeatureSet:
    """Window features of one entity, defined once and computed by one engine offline
    (`backfill`) and online (`online()`), bit for bit.

    Parameters: `entity` (the key column: integers or strings; or a list of such columns, a
    composite key such as ``["driver_id", "zone"]``: rows with equal values in every one of them
    are one entity, and ``get`` takes a tuple; see docs/api.md, "Composite keys"), `timestamp` (the event-time
    column: timestamps of any unit, naive ones read as UTC; integers need `timestamp_unit`),
    `features` (from the constructors: ``rtml.count``, ``rtml.sum`` ...), `allowed_lateness`
    (how late an event may arrive online and still count; default 0), `ttl` (forget an entity
    idle this long; must cover the longest window plus the lateness), `timestamp_unit`
    (``"s"``, ``"ms"``, ``"us"``, ``"ns"`` for integer timestamps), `on_nonfinite` (``"error"``:
    NaN / inf values are refused; ``"skip"``: read as null), `max_ahead` (the watermark guard:
    an event further ahead of the watermark than this is not applied online, never moves the
    watermark, and is counted and reported; default ``"auto"``:
    ``max(2 * longest window, 1 day) + allowed_lateness``; None disables it), `dedupe_on` (a
    column of event ids, integers or strings: an event whose id was already applied is dropped,
    first arrival wins; online and in `backfill`). See docs/semantics.md, "Guards".
    `string_columns` (value columns that hold strings: ``min`` / ``max`` / ``first`` / ``last``
    of them are strings, compared by their UTF-8 bytes; sliding or lifetime windows, not tiled; see
    docs/semantics.md, "String columns"). Durations: see the module docstring.

    Raises :class:`rtml.SpecError` naming the field for anything invalid (duplicate feature
    names, a ttl shorter than a window, an unknown unit ...). Every parameter is readable back as
    an attribute; equal definitions compare equal and pickle as their JSON document.

    >>> import rtml
    >>> fs = rtml.FeatureSet(entity="driver_id", timestamp="ts", allowed_lateness="5m",
    ...                      features=[rtml.count(window="1h"), rtml.sum("fare", window="1h")])
    >>> fs.feature_names
    ['count_1h', 'fare_sum_1h']
    >>> fs.allowed_lateness, fs.ttl
    ('5m', None)
    >>> fs
    FeatureSet(entity='driver_id', timestamp='ts', allowed_lateness='5m', features=[
        count_1h     rtml.count(window='1h'),
        fare_sum_1h  rtml.sum('fare', window='1h'),
    ])
    """

    _spec: _core.Spec

    def __init__(
        self,
        entity: str | Sequence[str],
        timestamp: str,
        features: Iterable[Feature],
        *,
        allowed_lateness: Duration = None,
        ttl: Duration = None,
        timestamp_unit: TimestampUnit | None = None,
        on_nonfinite: OnNonfinite = "error",
        max_ahead: Duration | Literal["auto"] = "auto",
        dedupe_on: str | None = None,
        string_columns: Sequence[str] | None = None,
    ) -> None:
        if isinstance(features, Feature):
            raise SpecError(
                "features: expected a list of features, got one Feature; wrap it in [...]"
            )
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
            "entity": _entity_doc(entity),
            "timestamp": timestamp,
            "timestamp_unit": timestamp_unit,
            "allowed_lateness": _duration(allowed_lateness, "allowed_lateness"),
            "ttl": _duration(ttl, "ttl"),
            "on_nonfinite": on_nonfinite,
            "features": [f.to_dict() for f in feats],
        }
        # stated only when set: a document without them (and its hash) stays as it was
        if not (isinstance(max_ahead, str) and max_ahead == "auto"):
            doc["max_ahead"] = _duration(max_ahead, "max_ahead")
        if dedupe_on is not None:
            if not isinstance(dedupe_on, str):
                raise SpecError(
                    f"dedupe_on: expected a column name (str), got {type(dedupe_on).__name__}"
                )
            doc["dedupe_on"] = dedupe_on
        if string_columns:
            if isinstance(string_columns, str):
                raise SpecError(
                    "string_columns: expected a list of column names, got one str; wrap it in [...]"
                )
            doc["string_columns"] = list(string_columns)
        self._spec = _core.Spec.from_json(json.dumps(doc))

    @classmethod
    def from_json(cls, text: str) -> FeatureSet:
        """Load a document written by `to_json`. Raises SpecError for an invalid document or
        one of a newer version (naming the field).

        >>> import rtml
        >>> fs = rtml.FeatureSet("k", "ts", [rtml.count(window="1h")])
        >>> rtml.FeatureSet.from_json(fs.to_json()) == fs
        True
        """
        fs = cls.__new__(cls)
        fs._spec = _core.Spec.from_json(text)
        return fs

    def to_json(self) -> str:
        """The versioned JSON document (str): save it in the notebook, load it in the service
        with `from_json`.

        >>> import rtml, json
        >>> json.loads(rtml.FeatureSet("k", "ts", [rtml.count(window="1h")]).to_json())["entity"]
        'k'
        """
        return self._spec.to_json()

    def _doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self._spec.to_json())
        return doc

    @property
    def feature_names(self) -> list[str]:
        """Output column names, in definition order (list of str)."""
        return list(self._spec.feature_names)

    @property
    def entity(self) -> str | list[str]:
        """The entity (key) column (a str), or the columns of a composite key (a list of str,
        in key order)."""
        entity: str | list[str] = self._spec.entity
        return entity

    @property
    def entity_columns(self) -> list[str]:
        """The key columns, in key order: ``[entity]`` for a single key.

        >>> import rtml
        >>> rtml.FeatureSet(["driver_id", "zone"], "ts", [rtml.count()]).entity_columns
        ['driver_id', 'zone']
        """
        return list(self._spec.entity_columns)

    @property
    def is_composite(self) -> bool:
        """Whether the key has several columns (``entity=["driver_id", "zone"]``)."""
        return len(self._spec.entity_columns) > 1

    @property
    def timestamp(self) -> str:
        """The event-time column."""
        return self._spec.timestamp

    @property
    def timestamp_unit(self) -> str | None:
        """Unit of integer timestamps (``"s"``, ``"ms"``, ``"us"``, ``"ns"``) or None."""
        return self._spec.timestamp_unit

    @property
    def allowed_lateness(self) -> str | None:
        """How late an event may arrive online and still count (e.g. ``"5m"``); None = 0."""
        v = self._doc().get("allowed_lateness")
        # the engine writes a zero duration in its largest unit ("0s"): zero is None
        return None if v is None or re.fullmatch(r"0+[a-z]+", str(v)) else str(v)

    @property
    def ttl(self) -> str | None:
        """Idle time after which an entity's online state is forgotten, or None."""
        v = self._doc().get("ttl")
        return None if v is None else str(v)

    @property
    def max_ahead(self) -> str | None:
        """The watermark guard's bound in force (e.g. ``"1d"``; the default ``"auto"`` shows
        its value), or None when the guard is off.

        >>> import rtml
        >>> rtml.FeatureSet("k", "ts", [rtml.count(window="30d")]).max_ahead
        '60d'
        >>> rtml.FeatureSet("k", "ts", [rtml.count(window="1h")], max_ahead="6h").max_ahead
        '6h'
        >>> rtml.FeatureSet("k", "ts", [rtml.count(window="1h")], max_ahead=None).max_ahead is None
        True
        """
        ns = self._spec.max_ahead_ns
        return None if ns is None else _format_ns(ns)

    @property
    def dedupe_on(self) -> str | None:
        """The event-id column duplicates are dropped by, or None."""
        v = self._doc().get("dedupe_on")
        return None if v is None else str(v)

    @property
    def dedupe_horizon(self) -> str | None:
        """How far behind the watermark an applied event id is remembered (``dedupe_on``):
        the allowed lateness plus the longest window (its hop added for a tiled window), the
        span in which a copy could still change an answer. None without ``dedupe_on``.

        >>> import rtml
        >>> rtml.FeatureSet("k", "ts", [rtml.count(window="1h")], allowed_lateness="10m",
        ...                 dedupe_on="id").dedupe_horizon
        '70m'
        >>> rtml.FeatureSet("k", "ts", [rtml.count(window="1h")]).dedupe_horizon is None
        True
        """
        ns = self._spec.dedupe_horizon_ns
        return None if ns is None else _format_ns(ns)

    @property
    def string_columns(self) -> list[str]:
        """The value columns declared to hold strings (list of str; empty by default).

        >>> import rtml
        >>> rtml.FeatureSet("k", "ts", [rtml.last("status", window="1h")],
        ...                 string_columns=["status"]).string_columns
        ['status']
        """
        return [str(c) for c in self._doc().get("string_columns", [])]

    @property
    def on_nonfinite(self) -> str:
        """``"error"`` (NaN / inf values refused) or ``"skip"`` (read as null)."""
        return str(self._doc().get("on_nonfinite", "error"))

    @property
    def features(self) -> list[Feature]:
        """The features, with their names filled in (list of :class:`Feature`).

        >>> import rtml
        >>> rtml.FeatureSet("k", "ts", [rtml.sum("fare", window="1h")]).features
        [rtml.sum('fare', window='1h', name='fare_sum_1h')]
        """
        out = []
        for f in self._doc()["features"]:
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
        key: str | Sequence[str] | None = None,
        time: str | None = None,
        progress: Progress = None,
        output: _frames.Output = "auto",
        arrival: str | None = None,
        null_keys: str = "error",
        out: str | os.PathLike[str] | None = None,
        memory_limit: int | str | None = None,
        workers: int = 1,
    ) -> Any:
        """Point-in-time-correct features for every spine row.

        `events`: the history (pyarrow Table / RecordBatch / RecordBatchReader / dataset, pandas
        DataFrame, polars DataFrame or LazyFrame, Parquet / CSV / Feather path(s), a dict of
        columns); `spine`: the (key, time) rows to compute features for, in any of those forms.
        `key` / `time` name the spine's key and time columns (default: the feature set's
        `entity` and `timestamp`; for a composite entity `key` is a list naming one spine column
        per key column, in key order). Timestamps of any unit are accepted, time-zone aware or naive;
        naive ones are read as UTC wall time, and mixing naive with aware times (events vs spine)
        is refused with a SchemaError rather than guessed. A time column of strings is refused
        with a hint to parse it; Decimal value columns are cast to float64.

        Each feature of spine row (k, t) is computed from the events of entity k with
        ``t - window <= ts < t``: the instant t itself is excluded (an event at exactly t is
        not yet known when the question is asked at t).

        Returns the spine's columns (in spine order, unchanged) followed by one column per
        feature. `output` chooses the kind: ``"auto"`` (default) follows the spine: a pandas
        spine gives a pandas DataFrame **with the spine's index** (so ``spine["f"] = out["f"]``
        aligns), a polars spine a polars DataFrame, anything else a pyarrow.Table; or
        ``"arrow"``, ``"pandas"``, ``"polars"`` explicitly.

        With ``dedupe_on``, events whose id occurs earlier are dropped first (one table has no
        arrival order: the first in time order is kept, ties by value). `arrival`: an events
        column numbering the ``OnlineEngine.ingest`` calls the events arrived in (integers, or
        arrival timestamps; equal values: one call; calls in ascending order): the events an
        online engine fed those calls would drop (late, ahead of the watermark, duplicates) are
        dropped here too, so the result equals that engine's answers (`verdicts` lists them).

        `progress`: None shows a bar for large spines when tqdm is installed, True always,
        False never, or a callable ``f(done, total)`` (an exception it raises stops the
        backfill and propagates; so does Ctrl-C).

        `null_keys`: ``"error"`` (default) refuses null entity keys (None, NaN, Arrow null) in
        events or spine; ``"skip"`` leaves such events out, gives such spine rows null features
        (no entity, no history: null even for counts), and reports both numbers in one
        :class:`rtml.NullKeysWarning`.

        `out` / `memory_limit`: beyond memory. With `out` (a ``.parquet`` path or a directory),
        the inputs are streamed (Parquet datasets: a directory, a glob, hive partitions),
        partitioned by entity on disk and backfilled partition by partition within
        `memory_limit` (default ``"4GB"``), and the rows are written to `out` with a
        ``spine_row`` column; returns an :class:`rtml.outofcore.OutOfCoreResult`. Same bits as
        the in-memory call; see :func:`rtml.outofcore.backfill` and docs/scale.md. `workers`:
        how many partitions run at once within `memory_limit` (default 1; with `out` only).

        Raises :class:`rtml.SchemaError` naming the column for missing columns, wrong types,
        null keys or times, or a spine column named like a feature; TypeError for an input
        that is not a table; ValueError for an unknown `output` or `null_keys`.

        >>> import rtml, pandas as pd
        >>> fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h"), rtml.sum("fare", window="1h")])
        >>> events = pd.DataFrame({"driver": [1, 1, 2],
        ...                        "ts": pd.to_datetime(["2024-01-01 10:00", "2024-01-01 10:30",
        ...                                              "2024-01-01 10:10"], utc=True),
        ...                        "fare": [10.0, 5.0, 7.0]})
        >>> spine = pd.DataFrame({"driver": [1, 1, 2],
        ...                       "ts": pd.to_datetime(["2024-01-01 10:30", "2024-01-01 10:31",
        ...                                             "2024-01-01 12:00"], utc=True)},
        ...                      index=[7, 8, 9])
        >>> fs.backfill(events, spine)
           driver                        ts  count_1h  fare_sum_1h
        7       1 2024-01-01 10:30:00+00:00         1         10.0
        8       1 2024-01-01 10:31:00+00:00         2         15.0
        9       2 2024-01-01 12:00:00+00:00         0          0.0
        """
        if out is not None or memory_limit is not None or workers != 1:
            if out is None:
                what = "memory_limit=" if memory_limit is not None else "workers="
                raise ValueError(
                    f"backfill: {what} needs out= (a .parquet path or a directory): a "
                    "result beyond memory is written to disk, not returned"
                )
            if arrival is not None or null_keys != "error":
                raise ValueError(
                    "backfill: out= (beyond memory) does not take arrival= or "
                    "null_keys='skip' yet; filter the inputs first"
                )
            from . import outofcore

            return outofcore.backfill(
                self, events, spine, out, memory_limit=memory_limit or "4GB",
                key=self._spine_key(key), time=time, progress=progress, workers=workers,
            )  # fmt: skip
        kind = _frames.resolve_output(
            output, spine, allowed=("arrow", "pandas", "polars"), what="backfill"
        )
        skip_null_keys = _nullkeys.skips(null_keys, "backfill")
        spine_in = _frames.prepare(spine)
        ev = _frames.decimals_to_float(_io.to_table(_frames.prepare(events), "events"))
        sp = _io.to_table(spine_in, "spine")
        keys = self._spine_key(key)
        time = time or self.timestamp
        if skip_null_keys:
            return self._backfill_skipping_null_keys(
                ev, sp, spine_in, keys, time, progress, kind, arrival
            )
        _check_time_column(ev, self.timestamp, "events")
        _check_time_column(sp, time, "spine")
        for c in self.entity_columns:
            _check_key_column(ev, c, "events")
        for c in keys:
            _check_key_column(sp, c, "spine")
        for name in self.feature_names:
            if name in sp.column_names:
                raise SchemaError(
                    f"column '{name}': the spine already has a column named like this feature; "
                    "rename one of them (feature name=...)"
                )
        feats = self._features_for(ev, sp, keys, time, progress, arrival)
        return _join_features(spine_in, sp, feats, kind)

    def _spine_key(self, key: str | Sequence[str] | None) -> list[str]:
        """The spine's key column(s), one per key column of the entity."""
        if key is None:
            return self.entity_columns
        keys = [key] if isinstance(key, str) else list(key)
        n = len(self.entity_columns)
        if len(keys) != n or not all(isinstance(k, str) for k in keys):
            raise SchemaError(
                f"column '{key}': key= names the spine's key column(s), one str per key column "
                f"of the entity {self.entity!r} ({n}), got {key!r}"
            )
        return keys

    def _features_for(
        self,
        ev: pa.Table,
        sp: pa.Table,
        key: list[str],
        time: str,
        progress: Progress,
        arrival: str | None,
    ) -> pa.Table:
        """The feature columns (only) for every row of `sp`."""
        callback, bar = _progress_callback(progress, sp.num_rows)
        try:
            return pa.Table.from_batches(
                [self._spec.backfill(ev, sp, key, time, callback, arrival)]
            )
        finally:
            if bar is not None:
                bar.close()

    def _backfill_skipping_null_keys(
        self,
        ev: pa.Table,
        sp: pa.Table,
        spine_in: Any,
        key: list[str],
        time: str,
        progress: Progress,
        kind: str,
        arrival: str | None,
    ) -> Any:
        """`backfill(..., null_keys="skip")`: null-key events left out, null-key spine rows
        answered with null features, both counted in one NullKeysWarning. A composite key is
        null when any of its parts is."""
        ev, skipped_events = _nullkeys.drop_from_table(ev, self.entity_columns)
        import numpy as np

        n = sp.num_rows
        valid = _nullkeys.valid_rows(sp, key)
        kept = np.flatnonzero(valid)
        null_rows = n - len(kept)
        feats = self._features_for(
            ev, sp.take(kept) if null_rows else sp, key, time, progress, arrival
        )
        if null_rows:
            # spine row i takes feature row where[i] (its place among the kept rows), or a null
            # row: pyarrow's take gives one for a null index
            where = np.zeros(n, dtype=np.int64)
            where[kept] = np.arange(len(kept), dtype=np.int64)
            feats = feats.take(pa.array(where, mask=~valid))
        if skipped_events or null_rows:
            warnings.warn(
                f"backfill(null_keys='skip'): left out {skipped_events} event(s) with a null "
                f"'{_names(self.entity_columns)}' and gave {null_rows} spine row(s) with a null "
                f"'{_names(key)}' null features",
                NullKeysWarning,
                stacklevel=3,
            )
        return _join_features(spine_in, sp, feats, kind)

    def verdicts(self, events: Any, *, arrival: str | None = None) -> list[str]:
        """What an online engine does with each event, in event row order: ``"applied"``,
        ``"late"``, ``"ahead"`` (beyond ``max_ahead``) or ``"duplicate"`` (``dedupe_on``), when
        the events arrive in the ``ingest`` calls numbered by the column `arrival` (integers or
        arrival timestamps, ascending; equal values: one call; a new engine). Without `arrival` the events are one table with no arrival order: only
        duplicates are dropped. The same rule as ``backfill(..., arrival=...)``: the parity
        report of a stream.

        >>> import rtml
        >>> fs = rtml.FeatureSet("k", "ts", [rtml.count()], timestamp_unit="s", dedupe_on="id")
        >>> fs.verdicts({"k": [1, 1, 1, 1], "ts": [10, 10, 4_000_000_000, 20],
        ...              "id": ["a", "a", "b", "c"], "batch": [0, 0, 1, 1]}, arrival="batch")
        ['applied', 'duplicate', 'ahead', 'applied']
        """
        ev = _frames.decimals_to_float(_io.to_table(_frames.prepare(events), "events"))
        _check_time_column(ev, self.timestamp, "events")
        for c in self.entity_columns:
            _check_key_column(ev, c, "events")
        return list(self._spec.verdicts(ev, arrival))

    def online(self, history: Any = None) -> "OnlineEngine":
        """A new online engine (:class:`rtml.OnlineEngine`) for this feature set, optionally
        bootstrapped from `history` (events in any form `backfill` takes; sorted by time and
        ingested as one batch, trusted: the watermark guard does not apply to it, so a gap
        wider than ``max_ahead`` in the history is kept, as backfill keeps it).

        Read it with ``eng.get(key, at=...)``: `at` is a ``datetime``, ``pandas.Timestamp``,
        ``numpy.datetime64``, an ISO 8601 string, or an epoch number in the feature set's
        `timestamp_unit`; naive instants are UTC, as everywhere in rtml. The window at `at`
        excludes `at` itself.

        >>> import rtml, datetime as dt
        >>> fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h")])
        >>> t = dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone.utc)
        >>> eng = fs.online(history=[{"driver": 1, "ts": t}])
        >>> eng.get(1, at=t + dt.timedelta(minutes=5))["count_1h"]
        1
        """
        from .online import OnlineEngine

        eng = OnlineEngine(self)
        if history is not None:
            table = _frames.decimals_to_float(_io.to_table(_frames.prepare(history), "history"))
            if table.num_rows:
                table = table.sort_by(self.timestamp)
            # history is trusted: no watermark guard (as backfill applies none), lateness and
            # dedupe_on as usual
            eng._engine.ingest_table(_io.events_table(table, self.timestamp), trusted=True)
        return eng

    def remote(self, url: "str | None" = None, **options: Any) -> "RemoteEngine":
        """A reader of this feature set's shared state in Redis (:class:`rtml.RemoteEngine`;
        `options`: ``prefix``, ``timeout``, ``client``, ``fallback``). See docs/shared-state.md."""
        from .remote import RemoteEngine

        return RemoteEngine(self, url, **options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSet) and other.to_json() == self.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __getstate__(self) -> str:
        return self.to_json()

    def __setstate__(self, state: str) -> None:
        self._spec = _core.Spec.from_json(state)

    def _params(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("entity", self.entity), ("timestamp", self.timestamp)]
        for k in ("timestamp_unit", "allowed_lateness", "ttl"):
            v = getattr(self, k)
            if v is not None:
                out.append((k, v))
        if self.on_nonfinite != "error":
            out.append(("on_nonfinite", self.on_nonfinite))
        doc = self._doc()
        if "max_ahead" in doc:
            out.append(("max_ahead", doc["max_ahead"]))
        if self.dedupe_on is not None:
            out.append(("dedupe_on", self.dedupe_on))
        if self.string_columns:
            out.append(("string_columns", self.string_columns))
        return out

    def __repr__(self) -> str:
        head = ", ".join(f"{k}={v!r}" for k, v in self._params())
        feats = self.features
        w = _maxlen([str(f.name) for f in feats])
        lines = [f"FeatureSet({head}, features=["]
        for f in feats:
            shown = Feature(f.agg, f.column, f.window, None, f.q, f.half_life, f.hop)
            if not _default_name(self, f):
                shown = f
            lines.append(f"    {f.name!s:<{w}}  {shown!r},")
        lines.append("])")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        params = "".join(
            f"<tr><th style='text-align:left'>{e(k)}</th><td>{e(str(v))}</td></tr>"
            for k, v in self._params()
        )
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{e('' if v is None else str(v))}</td>"
                for v in (f.name, f.agg, f.column, f.window or "lifetime", f.hop, _extra(f))
            )
            + "</tr>"
            for f in self.features
        )
        return (
            f"<div><b>rtml.FeatureSet</b> ({len(self.feature_names)} features)"
            f"<table>{params}</table>"
            "<table><thead><tr><th>name</th><th>agg</th><th>column</th><th>window</th>"
            f"<th>hop</th><th>other</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )


def _extra(f: Feature) -> str:
    if f.q is not None:
        return f"q={f.q}"
    if f.half_life is not None:
        return f"half_life={f.half_life}"
    return ""


def _maxlen(names: list[str]) -> int:
    return builtins.max((len(s) for s in names), default=0)


def _default_name(fs: FeatureSet, f: Feature) -> bool:
    """Whether `f`'s name is the one the engine gives it without `name=`."""
    bare = Feature(f.agg, f.column, f.window, None, f.q, f.half_life, f.hop)
    doc = {
        "format": "rtml.FeatureSet",
        "version": _core.SPEC_VERSION,
        "entity": fs.entity,
        "timestamp": fs.timestamp,
        "timestamp_unit": fs.timestamp_unit,
        "features": [bare.to_dict()],
    }
    try:
        return _core.Spec.from_json(json.dumps(doc)).feature_names == [f.name]
    except SpecError:
        return False


def _join_features(spine_in: Any, sp: pa.Table, feats: pa.Table, kind: str) -> Any:
    """The spine followed by the feature columns, as `kind`; a pandas / polars spine's own
    columns (dtypes, index) are kept as they were."""
    source = _frames.kind_of(spine_in)
    if kind == "pandas" and source == "pandas":
        import pandas as pd

        frame = feats.to_pandas()
        frame.index = spine_in.index
        return pd.concat([spine_in, frame], axis=1)
    if kind == "polars" and source == "polars":
        import polars as pl

        pl_feats: Any = pl.from_arrow(feats)
        return spine_in.hstack(pl_feats.get_columns())
    out = sp
    for i, field in enumerate(feats.schema):
        out = out.append_column(field, feats.column(i))
    return _frames.deliver(out, kind)
