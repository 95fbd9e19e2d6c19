"""Type stubs for the compiled engine (rtml._core)."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

__version__: str
SNAPSHOT_VERSION: int
SPEC_VERSION: int

Key = Union[int, str]
Instant = Any  # datetime | date | pandas.Timestamp | numpy.datetime64 | ISO str | int (timestamp_unit)

def debug_build() -> bool:
    """Whether the extension was built without optimizations."""

def num_threads() -> int:
    """Threads of rtml's parallel pool in this process: RTML_NUM_THREADS, else
    RAYON_NUM_THREADS, else the CPU count. Built on first use; rebuilt in a forked child."""

class Spec:
    """A validated feature-set document (the engine side of rtml.FeatureSet)."""

    @staticmethod
    def from_json(text: str) -> Spec: ...
    def to_json(self) -> str: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def feature_dtypes(self) -> list[str]: ...
    @property
    def entity(self) -> str: ...
    @property
    def timestamp(self) -> str: ...
    @property
    def timestamp_unit(self) -> Optional[str]: ...
    @property
    def value_columns(self) -> list[tuple[str, bool]]: ...
    def backfill(
        self,
        events: Any,
        spine: Any,
        key: str,
        time: str,
        progress: Optional[Callable[[int, int], Any]] = None,
    ) -> pa.RecordBatch: ...

class OnlineEngine:
    """The online feature engine: ingest a live event stream, read features at request time.

    >>> eng = fs.online()                                  # doctest: +SKIP
    >>> eng.ingest({"driver_id": 1, "ts": now, "fare": 9.5})  # doctest: +SKIP
    1
    >>> eng.get(1, at=later)["count_1h"]                  # doctest: +SKIP
    1
    """

    def __init__(self, spec: Any) -> None: ...
    def ingest(self, data: Any) -> int:
        """Ingest a row dict, a list of row dicts, a dict of columns, or any table input.
        Validates everything first (on error nothing is applied); returns events accepted."""
    def get(self, key: Key, at: Instant = None) -> dict[str, Any]:
        """All features of one entity at instant `at` (default: now, UTC)."""
    def get_many(self, keys: Iterable[Key], at: Union[Instant, Sequence[Instant]] = None) -> pa.Table:
        """Features of many entities as a table: the key column, then the features."""
    def vector(
        self, key: Key, transforms: Any, fields: Optional[dict[str, Any]] = None, at: Instant = None
    ) -> Any:
        """Model-ready float64 numpy vector: window features at `at` + request `fields`, through
        the fitted `transforms`, in `transforms.feature_names` order (NaN = null)."""
    def snapshot(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the state atomically (temp file, fsync, rename) with a checksum."""
    @staticmethod
    def restore(path: Union[str, os.PathLike[str]]) -> OnlineEngine:
        """Load a snapshot; rtml.SnapshotError for truncated, corrupted or foreign files."""
    def stats(self) -> dict[str, Any]:
        """keys, events_ingested, late_events_dropped, keys_evicted, state_bytes, watermark."""
    def evict_idle(self) -> int: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def spec_json(self) -> str: ...
    @property
    def watermark(self) -> Optional[int]: ...

class Transforms:
    """The compiled transform pipeline (the engine side of rtml.Transforms)."""

    @staticmethod
    def from_json(text: str) -> Transforms: ...
    def to_json(self) -> str: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def required_inputs(self) -> list[str]: ...
    @property
    def is_fitted(self) -> bool: ...
    def fit(self, table: Any) -> None: ...
    def fit_transform(self, table: Any) -> pa.RecordBatch: ...
    def transform(self, table: Any) -> pa.RecordBatch: ...
    def transform_numpy(self, table: Any, order: str = "C") -> np.ndarray:
        """The table driver into one 2-D float64 array (rows x feature_names, NaN = null),
        C order (or "F"); the same bits as `transform` and, row by row, as `vector`.

        >>> import rtml, pyarrow as pa
        >>> t = rtml.Transforms([rtml.min_max_scale("x")]).fit(pa.table({"x": [0.0, 4.0]}))._t
        >>> t.transform_numpy(pa.table({"x": [1.0, None]}))
        array([[0.25],
               [ nan]])
        """
        ...
    def transform_one(self, row: dict[str, Any]) -> dict[str, Optional[float]]: ...
    def vector(self, row: dict[str, Any]) -> Any: ...
