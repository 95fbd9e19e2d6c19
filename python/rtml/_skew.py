"""`rtml.monitor.Skew`: the continuous, sampled train/serve skew check (the streaming form of
``rtml parity``, python/rtml/parity.py). See docs/monitoring.md, "The skew monitor".

A service logs what it served: (key, at, feature values). The skew monitor takes a sample of
those rows, whole keys at a time (``hash(key) % 100 < rate``, the stable key hash of
``rtml._keyhash``: the same keys on every process and every run), and an online engine that
follows the same event stream. Once the engine's watermark has passed ``at + lateness`` (no
event before `at` can be applied any more, so the recomputed vector is final), it recomputes the
row's features at `at` and compares them with the served ones bit for bit (float64 bits; null,
None and NaN are one value). It counts checked and mismatched values per feature and keeps the
last mismatching rows in a bounded sample.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._keyhash import hash_keys, is_string_key
from .exceptions import QueryError, SchemaError, SpecError
from .learn import Duration, _duration_ns
from .online import OnlineEngine
from .transforms import _table

__all__ = ["Skew", "SkewMismatch", "sampled"]


def sampled(keys: Any, rate: int) -> Any:
    """Whether each key is in the skew sample: ``hash(key) % 100 < rate`` (a NumPy bool array),
    with the stable 64-bit key hash of ``rtml._keyhash.hash_keys`` (integers of any width hash
    as int64; strings by their UTF-8 bytes).

    >>> import pyarrow as pa
    >>> from rtml.monitor import sampled
    >>> sampled(pa.array([1, 2, 3, 4]), 100).tolist(), sampled(pa.array(["a"]), 0).tolist()
    ([True, True, True, True], [False])
    """
    if not isinstance(keys, (pa.Array, pa.ChunkedArray)):
        keys = pa.array(keys)
    return (hash_keys(keys) % np.uint64(100)) < np.uint64(rate)


class SkewMismatch(NamedTuple):
    """One checked row with at least one mismatching feature (in :attr:`Skew.mismatches`)."""

    key: Any
    #: the served instant, epoch ns
    at: int
    #: ``{feature: (served, recomputed)}`` of the mismatching features (None = null)
    features: dict[str, tuple[Optional[float], Optional[float]]]


def _bits(v: Any) -> Optional[bytes]:
    """A value's float64 bits (None for null, None and NaN alike)."""
    if v is None:
        return None
    f = float(v)
    if math.isnan(f):
        return None
    return struct.pack("<d", f)


def _plain(v: Any) -> Optional[float]:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


class Skew:
    """Sampled continuous train/serve skew check against an online engine.

    `engine`: an ``rtml.OnlineEngine`` of the served feature set that the caller feeds with the
    same event stream as the service (``engine.ingest(...)``), single-key entity. `rate`: the
    percentage of keys checked (0..100; whole keys: every served row of a sampled key).
    `lateness`: how long after `at` a row's features are final (default: the feature set's
    ``allowed_lateness``): a row is checked once ``engine.watermark >= at + lateness``.
    `key` / `at`: the served rows' key and instant columns; the other columns named like a
    feature of the engine are the served values (``features=`` restricts them).
    `sample_size`: how many mismatching rows :attr:`mismatches` keeps (the latest);
    `max_pending`: sampled rows waiting for the watermark beyond this are dropped (oldest
    first) and counted.

    A row whose instant the engine can no longer answer (its state is settled past `at`:
    the watermark jumped far beyond ``at + lateness`` between two calls) is counted as
    ``expired``, not checked: call :meth:`poll` after each ``engine.ingest``, or give the
    engine a larger ``allowed_lateness`` than `lateness`.

    >>> import rtml, rtml.monitor as rm
    >>> fs = rtml.FeatureSet("k", "ts", [rtml.sum("v", window="10s", name="s")], timestamp_unit="s")
    >>> eng = fs.online()
    >>> skew = rm.Skew(eng, rate=100)
    >>> eng.ingest({"k": [1, 1], "ts": [1, 2], "v": [1.0, 2.0]})
    2
    >>> skew.observe({"key": [1, 1], "at": [3, 3], "s": [3.0, 4.0]})  # the second is wrong
    2
    >>> _ = eng.ingest({"k": [2], "ts": [5], "v": [0.0]}); skew.poll()
    2
    >>> skew.features["s"], [m.features for m in skew.mismatches]
    ({'checked': 2, 'mismatched': 1}, [{'s': (4.0, 3.0)}])
    """

    def __init__(
        self,
        engine: OnlineEngine,
        *,
        rate: int = 10,
        lateness: Optional[Duration] = None,
        key: str = "key",
        at: str = "at",
        features: Optional[Sequence[str]] = None,
        sample_size: int = 100,
        max_pending: int = 100_000,
    ) -> None:
        if not isinstance(engine, OnlineEngine):
            raise SpecError(f"engine: expected a rtml.OnlineEngine, got {type(engine).__name__}")
        fs = engine.feature_set
        if len(fs.entity_columns) != 1:
            raise SpecError(
                "engine: the skew monitor samples single-column keys; this feature set's "
                f"entity is {fs.entity_columns}"
            )
        for name, v, lo, hi in (
            ("rate", rate, 0, 100),
            ("sample_size", sample_size, 0, None),
            ("max_pending", max_pending, 1, None),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi and v > hi):
                bound = f"an int in {lo}..{hi}" if hi else f"an int >= {lo}"
                raise SpecError(f"{name}: expected {bound}, got {v!r}")
        names = engine.feature_names
        if features is not None:
            features = [features] if isinstance(features, str) else list(features)
            unknown = [f for f in features if f not in names]
            if unknown:
                raise SpecError(f"features: not features of the engine: {unknown}")
        self.engine = engine
        self.rate = rate
        if lateness is None:
            lateness = fs.allowed_lateness or 0
        self.lateness = _duration_ns(lateness, "lateness")
        self.key = key
        self.at = at
        self.checked_features: Optional[list[str]] = features
        self.sample_size = sample_size
        self.max_pending = max_pending
        self._unit_ns = _unit_ns(fs.timestamp_unit)
        self._pending: list[tuple[int, int, Any, Any, dict[str, Any]]] = []
        self._seq = 0
        self._clock: Optional[str] = None
        self.rows_seen = 0
        self.rows_sampled = 0
        self.rows_checked = 0
        self.rows_expired = 0
        self.rows_dropped = 0
        self.features: dict[str, dict[str, int]] = {}
        self.mismatches: deque[SkewMismatch] = deque(maxlen=sample_size)

    # ------------------------------------------------------------------ input

    def observe(self, rows: Any) -> int:
        """Take served rows (a table, a dict of columns, a list of row dicts or one row dict)
        with the key column, the instant column and served feature values; keeps the sampled
        ones and checks every pending row that is final (:meth:`poll`). Returns the number of
        rows sampled. Bad input raises ``rtml.SchemaError`` and changes nothing."""
        if isinstance(rows, Mapping) and not any(
            isinstance(v, (list, tuple, np.ndarray, pa.Array, pa.ChunkedArray))
            for v in rows.values()
        ):
            rows = [dict(rows)]
        t = _table(rows, "rows")
        for c in (self.key, self.at):
            if c not in t.column_names:
                raise SchemaError(f"column '{c}': missing from the served rows")
        names = self.engine.feature_names
        feats = [c for c in (self.checked_features or names) if c in t.column_names and c in names]
        if not feats:
            raise SchemaError(f"rows: no served feature column (expected some of {names})")
        keys = t.column(self.key)
        kt = keys.type
        if not (is_string_key(kt) or pa.types.is_integer(kt)):
            raise SchemaError(f"column '{self.key}': expected integer or string keys, got {kt}")
        if keys.null_count:
            raise SchemaError(f"column '{self.key}': null keys cannot be checked")
        ns, clock = self._times(t.column(self.at))
        values: dict[str, list[Any]] = {}
        for f in feats:
            col = t.column(f)
            try:
                values[f] = pc.cast(col, pa.float64()).to_pylist()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(f"column '{f}': expected numbers ({e})") from None
        take = sampled(keys, self.rate)
        key_list = keys.to_pylist()
        if key_list:
            # the engine refuses a key of the wrong type or an instant of the other clock kind
            # (naive / tz-aware): ask it once now, before anything changes
            try:
                self.engine.get(key_list[0], at=self._arg(ns[0], clock))
            except QueryError:
                pass  # a valid query the state can no longer answer
        # everything checked: now change state
        if clock is not None:
            self._clock = clock
        self.rows_seen += t.num_rows
        n = 0
        for i in np.flatnonzero(take).tolist():
            self._seq += 1
            row = {f: values[f][i] for f in feats}
            heapq.heappush(
                self._pending, (ns[i], self._seq, key_list[i], self._arg(ns[i], clock), row)
            )
            n += 1
        self.rows_sampled += n
        while len(self._pending) > self.max_pending:
            heapq.heappop(self._pending)
            self.rows_dropped += 1
        self.poll()
        return n

    def _times(self, col: Any) -> tuple[list[int], Optional[str]]:
        typ = col.type
        if col.null_count:
            raise SchemaError(f"column '{self.at}': null instants cannot be checked")
        if pa.types.is_timestamp(typ):
            clock = "aware" if typ.tz is not None else "naive"
            if self._clock is not None and clock != self._clock:
                raise SchemaError(
                    f"column '{self.at}': {clock} times after {self._clock} ones: naive and "
                    "tz-aware times never mix"
                )
            ns = pc.cast(col, pa.timestamp("ns", tz=typ.tz)).cast(pa.int64()).to_pylist()
            return ns, clock
        if pa.types.is_integer(typ):
            if self._unit_ns is None:
                raise SchemaError(
                    f"column '{self.at}': integer instants need FeatureSet(timestamp_unit=...)"
                )
            return [int(v) * self._unit_ns for v in col.to_pylist()], None
        raise SchemaError(f"column '{self.at}': expected timestamps or integers, got {typ}")

    def _arg(self, ns: int, clock: Optional[str]) -> Any:
        """The instant as the engine reads it (exact ns; the clock kind of the served rows)."""
        if clock == "aware":
            return str(np.datetime_as_string(np.datetime64(ns, "ns"), unit="ns")) + "+00:00"
        if clock == "naive":
            return np.datetime64(ns, "ns")
        return ns // (self._unit_ns or 1)

    # ------------------------------------------------------------------ checking

    def poll(self) -> int:
        """Check every pending row that is final (``at + lateness <= engine.watermark``);
        returns the number of rows checked. Call it after ``engine.ingest`` (``observe`` calls
        it too)."""
        wm = self.engine.watermark
        if wm is None:
            return 0
        done = 0
        while self._pending and self._pending[0][0] + self.lateness <= wm:
            ns, _, key, arg, served = heapq.heappop(self._pending)
            try:
                again = self.engine.get(key, at=arg)
            except QueryError:
                self.rows_expired += 1
                continue
            bad: dict[str, tuple[Optional[float], Optional[float]]] = {}
            for f, s in served.items():
                c = self.features.setdefault(f, {"checked": 0, "mismatched": 0})
                c["checked"] += 1
                r = again.get(f)
                if _bits(s) != _bits(r):
                    c["mismatched"] += 1
                    bad[f] = (_plain(s), _plain(r))
            self.rows_checked += 1
            done += 1
            if bad and self.sample_size:
                self.mismatches.append(SkewMismatch(key, ns, bad))
        return done

    @property
    def pending(self) -> int:
        """Sampled rows waiting for the watermark."""
        return len(self._pending)

    @property
    def mismatched(self) -> int:
        """Mismatching values over every feature."""
        return sum(c["mismatched"] for c in self.features.values())

    def stats(self) -> dict[str, Any]:
        """``rows_seen``, ``rows_sampled``, ``rows_checked``, ``rows_expired``,
        ``rows_dropped``, ``pending`` and ``features`` (``{feature: {checked, mismatched}}``)."""
        return {
            "rows_seen": self.rows_seen,
            "rows_sampled": self.rows_sampled,
            "rows_checked": self.rows_checked,
            "rows_expired": self.rows_expired,
            "rows_dropped": self.rows_dropped,
            "pending": self.pending,
            "features": {f: dict(c) for f, c in self.features.items()},
        }

    def prometheus(self, prefix: str = "rtml_skew") -> str:
        """The counters in the Prometheus text format: ``{prefix}_rows_total{state=...}``
        (seen, sampled, checked, expired, dropped), ``{prefix}_pending``, and per feature
        ``{prefix}_checked_total`` / ``{prefix}_mismatched_total{feature=...}``."""
        lines = [
            f"# HELP {prefix}_rows_total Served rows seen / sampled / checked / expired / "
            "dropped by the skew monitor.",
            f"# TYPE {prefix}_rows_total counter",
        ]
        for state in ("seen", "sampled", "checked", "expired", "dropped"):
            lines.append(f'{prefix}_rows_total{{state="{state}"}} {getattr(self, "rows_" + state)}')
        lines += [
            f"# HELP {prefix}_pending Sampled rows waiting for the watermark.",
            f"# TYPE {prefix}_pending gauge",
            f"{prefix}_pending {self.pending}",
        ]
        for what in ("checked", "mismatched"):
            lines += [
                f"# HELP {prefix}_{what}_total Served values {what} against the recomputation.",
                f"# TYPE {prefix}_{what}_total counter",
            ]
            for f, c in sorted(self.features.items()):
                label = f.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{prefix}_{what}_total{{feature="{label}"}} {c[what]}')
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ state

    def to_state(self) -> dict[str, Any]:
        """The monitor's state as plain JSON-able data (settings, counters, the pending rows,
        the sample of mismatches), for a checkpoint written next to the engine's
        (``engine.to_bytes()``); :meth:`from_state` restores it. Served values are kept as
        floats (JSON round-trips them exactly) and NaN as None, the value it compares as.

        >>> import json, rtml, rtml.monitor as rm
        >>> fs = rtml.FeatureSet("k", "ts", [rtml.sum("v", window="10s", name="s")], timestamp_unit="s")
        >>> eng = fs.online()
        >>> skew = rm.Skew(eng, rate=100)
        >>> _ = eng.ingest({"k": [1], "ts": [1], "v": [1.0]})
        >>> skew.observe({"key": [1], "at": [3], "s": [1.0]})  # pending: the watermark is 1
        1
        >>> again = rm.Skew.from_state(rtml.OnlineEngine.from_bytes(eng.to_bytes()),
        ...                            json.loads(json.dumps(skew.to_state())))
        >>> _ = again.engine.ingest({"k": [2], "ts": [9], "v": [0.0]}); again.poll(), again.features
        (1, {'s': {'checked': 1, 'mismatched': 0}})
        """
        return {
            "format": "rtml.monitor.Skew",
            "version": 1,
            "rate": self.rate,
            "lateness": self.lateness,
            "key": self.key,
            "at": self.at,
            "features": self.checked_features,
            "sample_size": self.sample_size,
            "max_pending": self.max_pending,
            "clock": self._clock,
            "seq": self._seq,
            "pending": [
                [ns, seq, key, {f: _plain(v) for f, v in row.items()}]
                for ns, seq, key, _, row in sorted(self._pending)
            ],
            "counters": {
                "rows_seen": self.rows_seen,
                "rows_sampled": self.rows_sampled,
                "rows_checked": self.rows_checked,
                "rows_expired": self.rows_expired,
                "rows_dropped": self.rows_dropped,
            },
            "per_feature": {f: dict(c) for f, c in self.features.items()},
            "mismatches": [
                [m.key, m.at, {f: list(v) for f, v in m.features.items()}] for m in self.mismatches
            ],
        }

    @classmethod
    def from_state(cls, engine: OnlineEngine, state: Mapping[str, Any]) -> "Skew":
        """A monitor from :meth:`to_state` over `engine` (the engine restored from the same
        checkpoint). Raises ``rtml.SpecError`` for another format or version."""
        if not isinstance(state, Mapping) or state.get("format") != "rtml.monitor.Skew":
            raise SpecError("state: not a rtml.monitor.Skew state (to_state())")
        if state.get("version") != 1:
            raise SpecError(f"state: version {state.get('version')!r} of a newer rtml; expected 1")
        skew = cls(
            engine,
            rate=int(state["rate"]),
            lateness=int(state["lateness"]),
            key=str(state["key"]),
            at=str(state["at"]),
            features=state["features"],
            sample_size=int(state["sample_size"]),
            max_pending=int(state["max_pending"]),
        )
        clock = state["clock"]
        skew._clock = clock
        skew._seq = int(state["seq"])
        skew._pending = [
            (int(ns), int(seq), key, skew._arg(int(ns), clock), dict(row))
            for ns, seq, key, row in state["pending"]
        ]
        heapq.heapify(skew._pending)
        for name, v in state["counters"].items():
            setattr(skew, name, int(v))
        skew.features = {
            f: {"checked": int(c["checked"]), "mismatched": int(c["mismatched"])}
            for f, c in state["per_feature"].items()
        }
        for key, at, feats in state["mismatches"]:
            skew.mismatches.append(
                SkewMismatch(key, int(at), {f: (v[0], v[1]) for f, v in feats.items()})
            )
        return skew

    def __repr__(self) -> str:
        return (
            f"Skew(rate={self.rate}, lateness={self.lateness}, checked={self.rows_checked}, "
            f"mismatched={self.mismatched}, pending={self.pending})"
        )


def _unit_ns(unit: Optional[str]) -> Optional[int]:
    if unit is None:
        return None
    table = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
    if unit not in table:
        raise SpecError(f"timestamp_unit: unsupported {unit!r}")
    return table[unit]
