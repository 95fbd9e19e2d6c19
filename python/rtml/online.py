"""`rtml.OnlineEngine`: the online feature engine, a thin Python layer over `rtml._core.Engine`.

This layer turns whatever the caller has into one of the engine's typed inputs (a row dict, a
list of row dicts, an Arrow table, a `_core.Transforms`), and adds what belongs to Python:
warnings, `in` / `len`, ISO 8601 times, a readable repr. The compiled engine never reads the
package's private attributes nor calls back into it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from typing import (
    TYPE_CHECKING,
    Any,
    Iterable,
    Literal,
    NamedTuple,
    Optional,
    Sequence,
    Union,
    overload,
)

import numpy as np
import pyarrow as pa

from . import _core, _io, _nullkeys
from .exceptions import AheadEventsWarning, LateEventsWarning, SnapshotError

if TYPE_CHECKING:
    from .features import FeatureSet
    from .transforms import Transforms

__all__ = ["OnlineEngine", "IngestReport", "LATE_WARNING_SHARE"]

#: `ingest` warns (`rtml.LateEventsWarning`, once per engine) when one call drops more than this
#: share of its events as late.
LATE_WARNING_SHARE = 0.10

#: an entity key: an int or a str, or for a composite entity (``entity=["driver_id", "zone"]``) a
#: tuple with one int or str per key column, in key order
Key = Union[int, str, tuple[Union[int, str], ...]]
#: datetime / pandas.Timestamp / numpy.datetime64 / date / ISO 8601 str, or an int in the feature
#: set's `timestamp_unit`. Naive and tz-aware times never mix (docs/api.md, "Times").
Instant = Union[_dt.datetime, _dt.date, np.datetime64, str, int]
PathLike = Union[str, "os.PathLike[str]"]


class IngestReport(NamedTuple):
    """What one ``OnlineEngine.ingest(data, report=True)`` call did.

    `accepted`: events applied; `late`: dropped as late; `ahead`: rejected as too far ahead of
    the watermark (``max_ahead``); `duplicates`: dropped because their id was applied before
    (``dedupe_on``); `rejected`: the input rows (0-based positions in `data`) rejected as
    ahead, ascending: send them to a dead-letter store.
    """

    accepted: int
    late: int
    ahead: int
    duplicates: int
    rejected: list[int]


def iso_ns(ns: Optional[int]) -> Optional[str]:
    """An int of nanoseconds since the epoch as ISO 8601 UTC text (None stays None).

    >>> iso_ns(1_700_000_000_123_456_789)
    '2023-11-14T22:13:20.123456789+00:00'
    >>> iso_ns(0)
    '1970-01-01T00:00:00+00:00'
    """
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    t = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(seconds=seconds)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if rest:
        text += f".{rest // 1000:06d}" if rest % 1000 == 0 else f".{rest:09d}"
    return text + "+00:00"


def _spec_of(feature_set: Any) -> _core.Spec:
    """The typed engine document of a FeatureSet, a `_core.Spec` or a JSON document."""
    from .features import FeatureSet

    if isinstance(feature_set, FeatureSet):
        return feature_set._spec
    if isinstance(feature_set, _core.Spec):
        return feature_set
    if isinstance(feature_set, str):
        return _core.Spec.from_json(feature_set)
    raise TypeError(
        "OnlineEngine(feature_set): expected an rtml.FeatureSet or its JSON document, "
        f"got {type(feature_set).__name__}"
    )


_SCALAR_TYPES = (int, str, float, type(None))


def _is_scalar(value: Any) -> bool:
    """Whether a dict's key field holds one value (a row) rather than a column."""
    return value is None or isinstance(value, (int, str, float)) or not hasattr(value, "__len__")


class OnlineEngine:
    """The online feature engine: ingest a live event stream, read features at request time.

    Create one with ``FeatureSet.online()``, ``OnlineEngine(feature_set)`` or
    ``OnlineEngine.restore(path, feature_set=fs)``. Safe to share between threads: reads run
    concurrently with each other and with an ingest.

    >>> import datetime as dt, rtml
    >>> fs = rtml.FeatureSet(entity="driver", timestamp="ts",
    ...                      features=[rtml.count(window="1h", name="n")])
    >>> eng = rtml.OnlineEngine(fs)
    >>> t0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    >>> eng.ingest({"driver": 7, "ts": t0})
    1
    >>> eng.get(7, at=t0 + dt.timedelta(minutes=5))
    {'n': 1}
    >>> 7 in eng, 8 in eng, len(eng)
    (True, False, 1)
    """

    __slots__ = (
        "_engine",
        "_spec",
        "_entity",
        "_key_columns",
        "_timestamp",
        "_warned_late",
        "_null_keys_skipped",
        "_warned_ahead",
        "__weakref__",
        # holds `get` bound to the compiled engine (`_attach`)
        "__dict__",
    )

    def __init__(self, feature_set: Union["FeatureSet", str]) -> None:
        self._attach(_core.Engine(_spec_of(feature_set)))

    def __setattr__(self, name: str, value: Any) -> None:
        # the `__dict__` above is for the bound `get` only: a misspelled attribute stays an
        # error, as with the slots alone (a subclass keeps Python's usual rules)
        if type(self) is OnlineEngine and name not in OnlineEngine.__slots__:
            raise AttributeError(f"'OnlineEngine' object has no attribute {name!r}")
        object.__setattr__(self, name, value)

    @classmethod
    def _wrap(cls, engine: _core.Engine) -> "OnlineEngine":
        self = cls.__new__(cls)
        self._attach(engine)
        return self

    def _attach(self, engine: _core.Engine) -> None:
        self._engine = engine
        self._spec = engine.spec
        # plain str attributes: `ingest` reads them on every call (`_entity`: the first key
        # column, which tells one row dict from a dict of columns)
        self._key_columns = list(self._spec.entity_columns)
        self._entity = self._key_columns[0]
        self._timestamp = self._spec.timestamp
        self._warned_late = False
        self._null_keys_skipped = 0
        self._warned_ahead = False
        # `get` below only forwards its arguments (the engine's method takes the same ones and
        # makes the same checks): the instance holds the engine's bound method, which shadows
        # it, so a read runs no Python frame (~1,400 instructions of a `get`'s ~14,000,
        # docs/benchmarks.md "Session 12, the call path"). Not for a subclass that overrides
        # it. (`vector` unwraps an rtml.Transforms first, which the compiled layer never does.)
        if type(self).get is OnlineEngine.get:
            self.__dict__["get"] = engine.get

    # ------------------------------------------------------------------ ingest

    @overload
    def ingest(self, data: Any, *, report: Literal[False] = ..., null_keys: str = ...) -> int: ...

    @overload
    def ingest(self, data: Any, *, report: Literal[True], null_keys: str = ...) -> IngestReport: ...

    def ingest(
        self, data: Any, *, report: bool = False, null_keys: str = "error"
    ) -> Union[int, IngestReport]:
        """Ingest events; returns the number accepted (with ``report=True``, an
        :class:`IngestReport`: accepted, late, ahead, duplicates and the rows rejected as ahead).

        `data`: one row dict (``{entity: key, timestamp: time, column: value, ...}``), a list of
        row dicts, a dict of columns, or anything ``FeatureSet.backfill`` takes as events
        (pyarrow, pandas, polars, Parquet / CSV / Feather paths). The whole input is validated
        first: on error (``rtml.SchemaError`` naming the column) nothing is applied.

        Events older than the watermark minus ``allowed_lateness`` are dropped as late and
        counted in ``stats()["late_events_dropped"]``. When one call drops more than
        ``LATE_WARNING_SHARE`` (10%) of its events, the first such call warns with
        ``rtml.LateEventsWarning`` (once per engine): usually a table not in time order.

        Events further ahead of the watermark than the feature set's ``max_ahead`` are not
        applied (they never move the watermark), counted in ``stats()["ahead_events_rejected"]``
        and listed in the report's `rejected`; with ``dedupe_on``, an event whose id was already
        applied is dropped and counted in ``stats()["duplicates_dropped"]`` (docs/semantics.md,
        "Guards").

        Times: naive and tz-aware times never mix; the first ingested datetimes fix the
        engine's clock (see docs/api.md, "Times").

        `null_keys`: ``"error"`` (default) refuses an input holding a null entity key (None,
        NaN or an Arrow null) with ``rtml.SchemaError``; ``"skip"`` leaves those events out and
        counts them in ``stats()["null_keys_skipped"]``.

        >>> import rtml
        >>> fs = rtml.FeatureSet(entity="k", timestamp="ts", timestamp_unit="s",
        ...                      features=[rtml.sum("x", window="1h")])
        >>> eng = fs.online()
        >>> eng.ingest([{"k": "a", "ts": 10, "x": 1.5}, {"k": "a", "ts": 20, "x": None}])
        2
        >>> eng.ingest({"k": ["a", "b"], "ts": [30, 40], "x": [2.0, 3.0]})
        2
        >>> eng.ingest([{"k": "a", "ts": 50, "x": 1.0}, {"k": "a", "ts": 4_000_000_000, "x": 9.0}],
        ...            report=True)
        IngestReport(accepted=1, late=0, ahead=1, duplicates=0, rejected=[1])
        """
        engine = self._engine
        kept: Any = None
        if _nullkeys.skips(null_keys, "ingest"):
            data, kept = self._drop_null_keys(data)
            if data is None:
                return IngestReport(0, 0, 0, 0, []) if report else 0
        # one row: the common case first (an exact dict whose key is a plain scalar)
        if type(data) is dict and type(data.get(self._entity)) in _SCALAR_TYPES:
            accepted, late, ahead, dups, rejected = engine.ingest_row(data)
        elif isinstance(data, dict) and _is_scalar(data.get(self._entity)):
            accepted, late, ahead, dups, rejected = engine.ingest_row(data)
        elif isinstance(data, (list, tuple)) and (not data or isinstance(data[0], dict)):
            accepted, late, ahead, dups, rejected = engine.ingest_rows(data)
        else:
            accepted, late, ahead, dups, rejected = engine.ingest_table(
                _io.events_table(data, self._timestamp)
            )
        if late and not self._warned_late and late > LATE_WARNING_SHARE * (accepted + late):
            self._warned_late = True
            warnings.warn(
                f"OnlineEngine.ingest dropped {late} of {accepted + late} events as late (older "
                "than the watermark before this call minus allowed_lateness): events re-sent or "
                "replayed, or a source behind the engine? Within one call order does not matter "
                "(a call is one arrival); raise allowed_lateness if such delays are expected. "
                "Late events are counted in stats()['late_events_dropped']; this warning is "
                "issued once per engine.",
                LateEventsWarning,
                stacklevel=2,
            )
        if ahead and not self._warned_ahead:
            self._warned_ahead = True
            warnings.warn(
                f"OnlineEngine.ingest rejected {ahead} event(s) further ahead of the watermark "
                f"than max_ahead ({self.feature_set.max_ahead}): not applied, the watermark did "
                "not move. Counted in stats()['ahead_events_rejected']; ingest(data, "
                "report=True).rejected names them. A stream that really jumped is followed once "
                "16 such events agree, or at once with advance_watermark(t); history to "
                "bootstrap from goes through FeatureSet.online(history=...), which trusts it. "
                "This warning is issued once per engine.",
                AheadEventsWarning,
                stacklevel=2,
            )
        if report:
            if kept is not None:
                # rows are numbered as the caller passed them, null-key rows included
                rejected = [int(kept[i]) for i in rejected]
            return IngestReport(accepted, late, ahead, dups, rejected)
        return accepted

    def _drop_null_keys(self, data: Any) -> tuple[Any, Any]:
        """`data` without its null-key events (counted; None when nothing is left of one row),
        and the caller's row number of each row kept (None when nothing was dropped)."""
        cols = self._key_columns

        def null_row(r: Any) -> bool:
            # a composite key is null when any of its parts is
            return isinstance(r, dict) and any(c in r and _nullkeys.is_null_key(r[c]) for c in cols)

        if isinstance(data, dict) and _is_scalar(data.get(self._entity)):
            if null_row(data):
                self._null_keys_skipped += 1
                return None, None
            return data, None
        kept: Any
        if isinstance(data, (list, tuple)) and (not data or isinstance(data[0], dict)):
            kept = [i for i, r in enumerate(data) if not null_row(r)]
            rows: Any = [data[i] for i in kept]
            n = len(data) - len(kept)
        else:
            table = _io.events_table(data, self._timestamp)
            if not any(c in table.column_names for c in cols):
                return table, None  # the engine names the missing column
            kept = np.flatnonzero(_nullkeys.valid_rows(table, cols))
            n = table.num_rows - len(kept)
            rows = table.take(kept) if n else table
        self._null_keys_skipped += n
        return rows, (kept if n else None)

    def advance_watermark(self, t: Instant) -> int:
        """Move the watermark forward to `t` (no change if it is already later); returns the
        watermark (int ns). The explicit way to tell the watermark guard where the stream is:
        seed a new engine with the wall clock before its first event (so a lone far-future
        first event is rejected), or follow a stream that jumped ahead at once. Events older
        than ``t - allowed_lateness`` are late from then on.

        >>> import rtml
        >>> fs = rtml.FeatureSet("k", "ts", [rtml.count()], timestamp_unit="s")
        >>> eng = fs.online()
        >>> eng.advance_watermark(1_000)
        1000000000000
        >>> eng.ingest({"k": 1, "ts": 10**9}, report=True).ahead
        1
        """
        return int(self._engine.advance_watermark(t))

    # ------------------------------------------------------------------ reads

    def get(self, key: Key, at: Optional[Instant] = None) -> dict[str, Any]:
        """All features of one entity at instant `at` (default: now) as a dict (None = null).

        `key`: an int or str; for a composite entity a tuple with one int or str per key
        column, in key order (``eng.get(("d7", 3))``; a tuple of another length, or a part of
        another type, raises ``rtml.SchemaError``).

        >>> import rtml
        >>> fs = rtml.FeatureSet(["driver", "zone"], "ts", [rtml.count()], timestamp_unit="s")
        >>> eng = fs.online({"driver": ["d7", "d7", "d7"], "zone": [3, 4, 3], "ts": [1, 2, 3]})
        >>> eng.get(("d7", 3), at=10)
        {'count': 2}
        >>> eng.get_many([("d7", 3), ("d7", 4)], at=10).to_pydict()
        {'driver': ['d7', 'd7'], 'zone': [3, 4], 'count': [2, 1]}

        An unknown key gets the empty-history values (0 for counts, None for a mean); tell it
        apart from a known key with ``key in eng``. Raises ``rtml.QueryError`` for an `at` the
        state cannot answer exactly, ``rtml.SchemaError`` for a key or `at` of the wrong kind
        (a naive `at` against tz-aware events, or the reverse).
        """
        return self._engine.get(key, at)

    def get_many(
        self, keys: Iterable[Key], at: Union[Instant, Sequence[Instant], None] = None
    ) -> pa.Table:
        """Features of many entities as a pyarrow.Table: the key column, then the features.
        For a composite entity `keys` is a list of tuples and the table starts with one column
        per key column, named as in the feature set.

        `at`: one instant for all keys, or a list / tuple with one instant per key (another
        length raises ``rtml.QueryError``).
        """
        return self._engine.get_many(keys, at)

    @overload
    def vector(
        self,
        key: Key,
        transforms: Union["Transforms", _core.Transforms],
        fields: Optional[dict[str, Any]] = ...,
        at: Optional[Instant] = ...,
        *,
        with_features: Literal[False] = ...,
    ) -> np.ndarray[Any, np.dtype[np.float64]]: ...

    @overload
    def vector(
        self,
        key: Key,
        transforms: Union["Transforms", _core.Transforms],
        fields: Optional[dict[str, Any]] = ...,
        at: Optional[Instant] = ...,
        *,
        with_features: Literal[True],
    ) -> tuple[np.ndarray[Any, np.dtype[np.float64]], dict[str, Any]]: ...

    def vector(
        self,
        key: Key,
        transforms: Union["Transforms", _core.Transforms],
        fields: Optional[dict[str, Any]] = None,
        at: Optional[Instant] = None,
        *,
        with_features: bool = False,
    ) -> Any:
        """The model-ready float64 vector for one request: the entity's window features at
        `at`, plus the request-time `fields`, through the fitted `transforms`, in
        ``transforms.feature_names`` order (NaN = null).

        ``with_features=True`` answers ``(vector, features)``: the vector and `get`'s dict
        from one read of the key's state (one lock, the same instant: an ingest running in
        another thread cannot fall between them, as it can between two calls).

        >>> import rtml
        >>> fs = rtml.FeatureSet("u", "ts", [rtml.count(), rtml.sum("x")], timestamp_unit="s")
        >>> eng = fs.online({"u": [1, 1], "ts": [1, 2], "x": [2.0, 3.0]})
        >>> tf = rtml.Transforms([rtml.log1p("x_sum"), rtml.passthrough("count")])
        >>> vec, row = eng.vector(1, tf, {}, at=10, with_features=True)
        >>> row
        {'count': 2, 'x_sum': 5.0}
        >>> vec.tobytes() == eng.vector(1, tf, {}, at=10).tobytes()
        True
        """
        core = getattr(transforms, "_t", transforms)
        if not isinstance(core, _core.Transforms):
            raise TypeError(
                f"transforms: expected an rtml.Transforms, got {type(transforms).__name__}"
            )
        if with_features:
            return self._engine.vector_get(key, core, fields, at)
        return self._engine.vector(key, core, fields, at)

    def predict(
        self,
        key: Key,
        transforms: Union["Transforms", _core.Transforms],
        model: Any,
        fields: Optional[dict[str, Any]] = None,
        at: Optional[Instant] = None,
    ) -> Any:
        """The model's prediction for one request, from the entity's features in one call:
        ``model.predict_one(engine.vector(key, transforms, fields, at))``, bit for bit, with the
        vector handed from the engine to the model inside rtml (no Python round trip). `model`
        is an ``rtml.learn`` model: ``Logistic`` / ``LinearRegression`` answer a float,
        ``Softmax`` the class probabilities. The errors are those of `vector` and of
        ``predict_one`` (a model whose ``n_features`` differs from the vector's length raises
        ``rtml.SchemaError``); another kind of model raises ``TypeError``.

        >>> import rtml
        >>> import rtml.learn as rl
        >>> fs = rtml.FeatureSet("u", "ts", [rtml.count(), rtml.sum("x")], timestamp_unit="s")
        >>> eng = fs.online({"u": [1, 1], "ts": [1, 2], "x": [2.0, 3.0]})
        >>> tf = rtml.Transforms([rtml.log1p("x_sum"), rtml.passthrough("count")])
        >>> model = rl.Logistic(n_features=2)
        >>> _ = model.learn_one([1.0, 2.0], 1)
        >>> p = eng.predict(1, tf, model, at=10)
        >>> p == model.predict_one(eng.vector(1, tf, at=10))
        True
        """
        core = getattr(transforms, "_t", transforms)
        if not isinstance(core, _core.Transforms):
            raise TypeError(
                f"transforms: expected an rtml.Transforms, got {type(transforms).__name__}"
            )
        m = getattr(model, "_m", model)
        if not isinstance(m, (_core.Linear, _core.Softmax)):
            raise TypeError(
                "model: expected an rtml.learn model (Logistic, LinearRegression, Softmax), "
                f"got {type(model).__name__}"
            )
        return self._engine.predict(key, core, m, fields, at)

    def __contains__(self, key: object) -> bool:
        """Whether the engine holds state for `key` (seen, and not evicted by ttl)."""
        return self._engine.contains(key)

    def __len__(self) -> int:
        """Number of keys with state (seen, and not evicted by ttl)."""
        return len(self._engine)

    # ------------------------------------------------------------------ state

    def snapshot(self, path: PathLike) -> None:
        """Write the whole state to `path` atomically (temporary file, fsync, rename), with a
        checksum."""
        self._engine.snapshot(path)

    @classmethod
    def restore(
        cls, path: PathLike, *, feature_set: Optional["FeatureSet"] = None
    ) -> "OnlineEngine":
        """Load an engine written by ``snapshot``. Raises ``rtml.SnapshotError`` for a truncated,
        corrupted or foreign file, and, when `feature_set` is given, for a snapshot written for
        another feature set (the message names the fields that differ).

        The engine's clock (naive or tz-aware times) is not part of a snapshot: the first times
        given after a restore fix it again.
        """
        engine = cls._wrap(_core.Engine.restore(path))
        engine._check_written_for(feature_set, os.fspath(path))
        return engine

    def to_bytes(self) -> bytes:
        """The snapshot's bytes without a file (the same checksummed format as ``snapshot``):
        for a checkpoint that stores state next to other data, or a process that sends it.

        >>> import rtml
        >>> fs = rtml.FeatureSet("k", "ts", [rtml.count(window="1h")], timestamp_unit="s")
        >>> eng = fs.online()
        >>> eng.ingest({"k": 1, "ts": 10})
        1
        >>> rtml.OnlineEngine.from_bytes(eng.to_bytes(), feature_set=fs).get(1, at=20)
        {'count_1h': 1}
        """
        return bytes(self._engine.to_bytes())

    @classmethod
    def from_bytes(
        cls, data: bytes, *, feature_set: Optional["FeatureSet"] = None
    ) -> "OnlineEngine":
        """An engine from ``to_bytes`` (or a snapshot file's bytes); errors as ``restore``."""
        engine = cls._wrap(_core.Engine.from_bytes(data))
        engine._check_written_for(feature_set, "snapshot bytes")
        return engine

    def _check_written_for(self, feature_set: Optional["FeatureSet"], where: str) -> None:
        if feature_set is None:
            return
        want = _spec_of(feature_set).to_json()
        got = self._spec.to_json()
        if want != got:
            a, b = json.loads(got), json.loads(want)
            fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise SnapshotError(
                f"{where}: written for another feature set (differs in: "
                f"{', '.join(fields)}); snapshot: {got}; expected: {want}"
            )

    def stats(self) -> dict[str, Any]:
        """Counters and sizes: ``keys``, ``events_ingested``, ``late_events_dropped``,
        ``keys_evicted``, ``ahead_events_rejected`` (``max_ahead``), ``duplicates_dropped``
        (``dedupe_on``), ``state_bytes`` (approximate), ``watermark`` (int ns since the epoch,
        or None before any event), ``watermark_iso`` (the same as ISO 8601 UTC text) and
        ``null_keys_skipped`` (events left out by ``ingest(..., null_keys="skip")`` through
        this object)."""
        s: dict[str, Any] = self._engine.stats()
        s["null_keys_skipped"] = self._null_keys_skipped
        s["watermark_iso"] = iso_ns(s["watermark"])
        return s

    def evict_idle(self) -> int:
        """Evict keys idle longer than the feature set's ttl now (it also happens during
        ingest); returns how many."""
        return self._engine.evict_idle()

    @property
    def feature_names(self) -> list[str]:
        """Output feature names, in order."""
        return self._engine.feature_names

    @property
    def spec_json(self) -> str:
        """The feature-set document this engine computes."""
        return self._engine.spec_json

    @property
    def feature_set(self) -> "FeatureSet":
        """The FeatureSet this engine computes."""
        from .features import FeatureSet

        return FeatureSet.from_json(self._engine.spec_json)

    @property
    def watermark(self) -> Optional[int]:
        """Largest event time seen, as int nanoseconds since the epoch (None before any event)."""
        return self._engine.watermark

    def __repr__(self) -> str:
        doc = json.loads(self._engine.spec_json)
        s = self._engine.stats()
        return (
            f"OnlineEngine(entity={doc['entity']!r}, features={self._engine.feature_names!r}, "
            f"allowed_lateness={doc.get('allowed_lateness')!r}, ttl={doc.get('ttl')!r}, "
            f"keys={s['keys']}, events_ingested={s['events_ingested']}, "
            f"watermark={iso_ns(s['watermark'])!r})"
        )
