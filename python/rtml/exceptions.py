"""The rtml exception and warning classes. Every error rtml raises on bad input is one of these."""

from __future__ import annotations

__all__ = [
    "RtmlError",
    "SpecError",
    "NotFittedError",
    "SchemaError",
    "QueryError",
    "SnapshotError",
    "PoisonedError",
    "RemoteError",
    "RemoteUnavailableError",
    "KeyStateError",
    "RtmlWarning",
    "LateEventsWarning",
    "NullKeysWarning",
    "AheadEventsWarning",
    "HotKeyWarning",
]


class RtmlError(Exception):
    """Base class of every rtml error."""


class SpecError(RtmlError, ValueError):
    """An invalid feature-set definition or document (names the field)."""


class NotFittedError(SpecError, AttributeError):
    """Something asked of a Transforms that only its `fit` can tell (e.g. the output names of
    a ``one_hot`` step). A :class:`rtml.SpecError` (and an ``AttributeError``, as
    scikit-learn's ``NotFittedError`` is, so ``hasattr`` answers False)."""


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


class RemoteError(RtmlError):
    """Base class of the errors of shared online state (`rtml.RemoteEngine`,
    `rtml.RedisPublisher`; docs/shared-state.md)."""


class RemoteUnavailableError(RemoteError):
    """The state store (Redis) did not answer within the timeout, or refused the connection:
    no answer is given rather than a stale or partial one."""


class KeyStateError(RemoteError, SnapshotError):
    """A stored key state that cannot be used: another feature set's, corrupted, truncated, of a
    newer format, or the state of another key. The message names the key."""


class RtmlWarning(UserWarning):
    """Base class of the warnings rtml issues."""


class AheadEventsWarning(RtmlWarning):
    """An `OnlineEngine.ingest` call rejected events further ahead of the watermark than the
    feature set's `max_ahead` (not applied; counted in ``stats()["ahead_events_rejected"]``,
    named by ``ingest(..., report=True).rejected``). Issued once per engine."""


class LateEventsWarning(RtmlWarning):
    """One `OnlineEngine.ingest` call dropped more than `LATE_WARNING_SHARE` of its events as late
    (older than the watermark minus `allowed_lateness`). Issued once per engine."""


class NullKeysWarning(RtmlWarning):
    """``FeatureSet.backfill(..., null_keys="skip")`` left out events with a null entity key or
    gave spine rows with a null key null features: the message has both counts."""


class HotKeyWarning(RtmlWarning):
    """One entity holds more events than a partition of a scaled-out backfill can take: out of
    core, more than the memory budget (`rtml.outofcore.backfill`); on Spark, more than an average
    bucket (`rtml.spark.backfill`). The message names the key and its event count."""
