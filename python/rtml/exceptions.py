"""The rtml exception and warning classes. Every error rtml raises on bad input is one of these."""

from __future__ import annotations

__all__ = [
    "RtmlError",
    "SpecError",
    "SchemaError",
    "QueryError",
    "SnapshotError",
    "PoisonedError",
    "RtmlWarning",
    "LateEventsWarning",
    "HotKeyWarning",
]


class RtmlError(Exception):
    """Base class of every rtml error."""


class SpecError(RtmlError, ValueError):
    """An invalid feature-set definition or document (names the field)."""


class SchemaError(RtmlError, ValueError):
    """Input data that does not fit the feature set (names the column or argument)."""


class QueryError(RtmlError, ValueError):
    """A query the online state cannot answer exactly (e.g. `at` before the settled point)."""


class SnapshotError(RtmlError):
    """A snapshot file that is truncated, corrupted, foreign, of an unknown version, or written
    for another feature set than the one given to `OnlineEngine.restore(feature_set=...)`."""


class PoisonedError(RtmlError):
    """An engine that hit an internal error (a bug in rtml) refuses every later call: its state
    may be half-updated. Restore it from a snapshot or rebuild it from its events."""


class RtmlWarning(UserWarning):
    """Base class of the warnings rtml issues."""


class LateEventsWarning(RtmlWarning):
    """One `OnlineEngine.ingest` call dropped more than `LATE_WARNING_SHARE` of its events as late
    (older than the watermark minus `allowed_lateness`). Issued once per engine."""


class HotKeyWarning(RtmlWarning):
    """One entity holds more events than a partition of a scaled-out backfill can take: out of
    core, more than the memory budget (`rtml.outofcore.backfill`); on Spark, more than an average
    bucket (`rtml.spark.backfill`). The message names the key and its event count."""
