"""The rtml exception hierarchy. Every error rtml raises on bad input is one of these."""

from __future__ import annotations

__all__ = ["RtmlError", "SpecError", "SchemaError", "QueryError", "SnapshotError"]


class RtmlError(Exception):
    """Base class of every rtml error."""


class SpecError(RtmlError, ValueError):
    """An invalid feature-set definition or document (names the field)."""


class SchemaError(RtmlError, ValueError):
    """Input data that does not fit the feature set (names the column)."""


class QueryError(RtmlError, ValueError):
    """A query the online state cannot answer exactly (e.g. `at` before the settled point)."""


class SnapshotError(RtmlError):
    """A snapshot file that is truncated, corrupted, foreign or of an unknown version."""
