"""Type stubs for the compiled engine (rtml._core). Checked against the module by
`python -m mypy.stubtest rtml._core` (`make stubtest`). Use the `rtml` package, not this module:
`rtml.FeatureSet`, `rtml.OnlineEngine` and `rtml.Transforms` wrap these classes."""

import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = [
    "Spec",
    "Engine",
    "Transforms",
    "JsonDecoder",
    "debug_build",
    "num_threads",
    "encode_keys",
    "_init_exceptions",
    "__version__",
    "SNAPSHOT_VERSION",
    "SPEC_VERSION",
]

__version__: str
SNAPSHOT_VERSION: int
SPEC_VERSION: int

_Key = int | str | tuple[int | str, ...] | list[int | str]
#: An instant: a datetime (naive or tz-aware; pandas.Timestamp is one), a date, a
#: numpy.datetime64, an ISO 8601 string, or an int in the feature set's timestamp_unit.
_Instant = datetime.datetime | datetime.date | np.datetime64 | str | int
#: Anything with `__arrow_c_stream__` (a pyarrow Table / RecordBatch / RecordBatchReader, ...).
_ArrowStream = Any
_PathLike = str | os.PathLike[str]

def debug_build() -> bool:
    """Whether the extension was built without optimizations."""

def num_threads() -> int:
    """Threads of rtml's parallel pool in this process: RTML_NUM_THREADS, else
    RAYON_NUM_THREADS, else the CPU count. Built on first use; rebuilt in a forked child."""

def encode_keys(table: _ArrowStream, columns: list[str]) -> pa.RecordBatch:
    """The composite-key encoding (src/key.rs) of the parts in `columns` for every row of
    `table`: a one-column batch (`key`, large_string, null where a part is null); the bytes an
    engine of a composite entity with these columns holds as its key."""

def _init_exceptions(
    rtml: type[Exception],
    spec: type[Exception],
    schema: type[Exception],
    query: type[Exception],
    snapshot: type[Exception],
    poisoned: type[Exception],
) -> None:
    """Called once by `rtml/__init__.py`: the exception classes the engine raises."""

@final
class Spec:
    """A validated feature-set document (the engine side of rtml.FeatureSet)."""

    @staticmethod
    def from_json(text: str) -> Spec: ...
    def to_json(self) -> str: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def feature_dtypes(self) -> list[Literal["int64", "float64", "string"]]: ...
    @property
    def entity(self) -> str | list[str]: ...
    @property
    def entity_columns(self) -> list[str]: ...
    @property
    def timestamp(self) -> str: ...
    @property
    def timestamp_unit(self) -> str | None: ...
    @property
    def value_columns(self) -> list[tuple[str, bool]]: ...
    def backfill(
        self,
        events: _ArrowStream,
        spine: _ArrowStream,
        key: list[str],
        time: str,
        progress: Callable[[int, int], object] | None = None,
        arrival: str | None = None,
    ) -> pa.RecordBatch:
        """`arrival`: an integer events column numbering the online arrival batches: the events
        an online engine fed those batches drops (late, ahead, duplicate) are dropped here."""
    def verdicts(
        self, events: _ArrowStream, arrival: str | None = None
    ) -> list[Literal["applied", "late", "ahead", "duplicate"]]:
        """Per event (row order), what an online engine fed the `arrival` batches does."""
    @property
    def max_ahead_ns(self) -> int | None:
        """The watermark guard's bound in force, ns (None: off)."""
    @property
    def dedupe_horizon_ns(self) -> int | None:
        """How far behind the watermark an applied event id is remembered, ns (None: no dedupe_on)."""

_Counts = tuple[int, int, int, int, list[int]]

@final
class Engine:
    """The online engine (the engine side of rtml.OnlineEngine)."""

    def __new__(cls, spec: Spec) -> Engine: ...
    def ingest_row(self, row: dict[str, Any]) -> _Counts:
        """One event row; returns (accepted, late, ahead, duplicates, rows rejected as ahead)."""
    def ingest_rows(self, rows: Sequence[dict[str, Any]]) -> _Counts:
        """A list of event rows, all checked first; returns (accepted, late, ahead,
        duplicates, rows rejected as ahead)."""
    def ingest_table(self, table: _ArrowStream, trusted: bool = False) -> _Counts:
        """Events as an Arrow table, all checked first; returns (accepted, late, ahead,
        duplicates, rows rejected as ahead). `trusted`: no watermark guard (a history)."""
    def advance_watermark(self, t: _Instant) -> int:
        """Move the watermark forward to `t`; returns the watermark (ns)."""
    def get(self, key: _Key, at: _Instant | None = None) -> dict[str, Any]: ...
    def get_many(
        self, keys: Iterable[_Key], at: _Instant | Sequence[_Instant] | None = None
    ) -> pa.Table: ...
    def vector(
        self,
        key: _Key,
        transforms: Transforms,
        fields: dict[str, Any] | None = None,
        at: _Instant | None = None,
    ) -> npt.NDArray[np.float64]: ...
    def vector_get(
        self,
        key: _Key,
        transforms: Transforms,
        fields: dict[str, Any] | None = None,
        at: _Instant | None = None,
    ) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
        """`vector` and `get` from one read of the key's state."""
    def predict(
        self,
        key: _Key,
        transforms: Transforms,
        model: Linear | Softmax,
        fields: dict[str, Any] | None = None,
        at: _Instant | None = None,
    ) -> Any:
        """`model.predict_one(vector(...))` in one call."""
    def contains(self, key: object) -> bool: ...
    def __len__(self) -> int: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> Engine: ...
    def snapshot(self, path: _PathLike) -> None: ...
    @staticmethod
    def restore(path: _PathLike) -> Engine: ...
    def stats(self) -> dict[str, Any]: ...
    def evict_idle(self) -> int: ...
    @property
    def spec(self) -> Spec: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def spec_json(self) -> str: ...
    @property
    def watermark(self) -> int | None: ...
    @property
    def time_zone_kind(self) -> Literal["naive", "aware"] | None: ...
    @property
    def poisoned(self) -> bool: ...
    def _panic_for_test(self) -> None:
        """Test hook: panics inside the guarded path, which poisons this engine."""

@final
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
    def fit(self, table: _ArrowStream) -> None: ...
    def fit_transform(self, table: _ArrowStream) -> pa.RecordBatch: ...
    def transform(self, table: _ArrowStream) -> pa.RecordBatch: ...
    def transform_numpy(
        self, table: _ArrowStream, order: Literal["C", "F"] = "C"
    ) -> npt.NDArray[np.float64]:
        """The table driver into one 2-D float64 array (rows x feature_names, NaN = null),
        C order (or "F"); the same bits as `transform` and, row by row, as `vector`.

        >>> import rtml, pyarrow as pa
        >>> t = rtml.Transforms([rtml.min_max_scale("x")]).fit(pa.table({"x": [0.0, 4.0]}))._t
        >>> t.transform_numpy(pa.table({"x": [1.0, None]}))
        array([[0.25],
               [ nan]])
        """
    def transform_one(self, row: dict[str, Any]) -> dict[str, float | None]: ...
    def vector(self, row: dict[str, Any]) -> npt.NDArray[np.float64]: ...

@final
class JsonDecoder:
    """Parses JSON message payloads straight into a feature set's event columns (src/decode.rs)."""

    def __new__(
        cls,
        entity: tuple[str, str] | list[tuple[str, str]],
        timestamp: tuple[str, str],
        values: list[tuple[str, str, bool]],
        timestamp_unit: str | None = None,
        event_id: tuple[str, str] | None = None,
    ) -> JsonDecoder:
        """`entity`: (column, JSON field), or a list of them (one per key column) for a
        composite key. `event_id`: (column, JSON field) of the `dedupe_on` ids: a string or an
        integer (read as its decimal text); a message without one is rejected."""
    def decode(
        self, messages: list[bytes | None], key_is_int: bool | list[bool] | None = None
    ) -> tuple[pa.RecordBatch, list[tuple[int, str]], bool | list[bool] | None]:
        """`key_is_int`: the key kind (a list of bools, one per part, for a composite key)."""

# ---------------------------------------------------------------------------------------------
# The write-ahead log (issue 12): src/python/wal.rs over src/wal.rs. Wrapped by python/rtml/wal.py
# (rtml.Wal), which stores one Arrow IPC stream per record.
# ---------------------------------------------------------------------------------------------

__all__ += ["Wal"]

@final
class Wal:
    """An append-only, checksummed, fsynced log of byte records in segment files."""

    def __new__(
        cls,
        path: str | os.PathLike[str],
        segment_bytes: int = ...,
        group_commit: bool = True,
        fsync: bool = True,
    ) -> Wal: ...
    def append(self, payload: bytes) -> int:
        """Append one record; its position once on disk (releases the GIL)."""
    def append_many(self, payloads: list[bytes]) -> list[int]: ...
    def read(
        self, position: int, max_records: int = 1024, max_bytes: int = ...
    ) -> list[tuple[int, int, bytes]]: ...
    def truncate_before(self, position: int) -> int: ...
    def roll(self) -> None: ...
    @property
    def durable_position(self) -> int: ...
    @property
    def first_position(self) -> int: ...
    @property
    def path(self) -> str: ...
    def segments(self) -> list[tuple[int, str]]: ...
    def recovery(self) -> tuple[int, int | None, int]: ...
    def counters(self) -> tuple[int, int]: ...

# ---------------------------------------------------------------------------------------------
# rtml.learn (issue 15): src/python/learn.rs. Wrapped by python/rtml/learn.py. Times are epoch
# nanoseconds; vectors are contiguous float64 arrays.
# ---------------------------------------------------------------------------------------------

__all__ += [
    "Linear",
    "Softmax",
    "Metrics",
    "MulticlassMetrics",
    "LabelJoin",
    "MODEL_VERSION",
    "SOFTMAX_VERSION",
]

MODEL_VERSION: int
SOFTMAX_VERSION: int

@final
class Linear:
    """An online linear model (rtml.learn.Logistic / rtml.learn.LinearRegression wrap it)."""

    def __new__(
        cls, loss: Literal["logistic", "squared"], optimizer: str, n_features: int
    ) -> Linear: ...
    @staticmethod
    def from_json(text: str) -> Linear: ...
    def to_json(self) -> str: ...
    def predict_one(self, x: npt.NDArray[np.float64]) -> float: ...
    def predict_many(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
    def learn_one(self, x: npt.NDArray[np.float64], y: float) -> float: ...
    def learn_many(
        self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]: ...
    def progressive(
        self,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.float64],
        t: npt.NDArray[np.int64],
        metrics: Metrics,
    ) -> npt.NDArray[np.float64]: ...
    def weights(self) -> npt.NDArray[np.float64]: ...
    @property
    def n_features(self) -> int: ...
    @property
    def updates(self) -> int: ...
    def same_state(self, other: Linear) -> bool: ...

@final
class Softmax:
    """An online softmax model (rtml.learn.Softmax wraps it); labels are class indices."""

    def __new__(cls, classes: str, optimizer: str, n_features: int) -> Softmax: ...
    @staticmethod
    def from_json(text: str) -> Softmax: ...
    def to_json(self) -> str: ...
    def classes_json(self) -> str: ...
    def predict_one(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
    def predict_many(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
    def learn_one(self, x: npt.NDArray[np.float64], y: int) -> npt.NDArray[np.float64]: ...
    def learn_many(
        self, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]: ...
    def progressive(
        self,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.int64],
        t: npt.NDArray[np.int64],
        metrics: MulticlassMetrics,
    ) -> npt.NDArray[np.float64]: ...
    def weights(self) -> npt.NDArray[np.float64]: ...
    @property
    def n_features(self) -> int: ...
    @property
    def n_classes(self) -> int: ...
    @property
    def updates(self) -> int: ...
    def same_state(self, other: Softmax) -> bool: ...

@final
class MulticlassMetrics:
    """Progressive-validation metrics of a multiclass model (rtml.learn.MulticlassMetrics)."""

    def __new__(cls, window: int | None = None) -> MulticlassMetrics: ...
    def add_many(
        self, t: npt.NDArray[np.int64], p: npt.NDArray[np.float64], y: npt.NDArray[np.int64]
    ) -> None: ...
    def log_loss(self) -> float | None: ...
    def accuracy(self) -> float | None: ...
    def auc(self) -> float | None: ...
    @property
    def count(self) -> int: ...
    @property
    def seen(self) -> int: ...
    @property
    def last_time(self) -> int | None: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> MulticlassMetrics: ...

@final
class Metrics:
    """Progressive-validation metrics by event time (rtml.learn.Metrics wraps it)."""

    def __new__(cls, window: int | None = None) -> Metrics: ...
    def add_many(
        self, t: npt.NDArray[np.int64], p: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
    ) -> None: ...
    def log_loss(self) -> float | None: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> Metrics: ...
    def auc(self) -> float | None: ...
    def mse(self) -> float | None: ...
    @property
    def count(self) -> int: ...
    @property
    def seen(self) -> int: ...
    @property
    def last_time(self) -> int | None: ...
    def calibration(self, bins: int = 10) -> list[dict[str, float]]: ...

@final
class LabelJoin:
    """The label join (rtml.learn.LabelJoin wraps it)."""

    def __new__(
        cls, wait: int, on_timeout: float | None, max_pending: int, allowed_lateness: int
    ) -> LabelJoin: ...
    def serve(self, request_id: int | str, at: int, x: npt.NDArray[np.float64]) -> str: ...
    def serve_many(
        self,
        request_ids: npt.NDArray[np.int64] | Sequence[int | str],
        at: npt.NDArray[np.int64],
        x: npt.NDArray[np.float64],
    ) -> tuple[int, int]: ...
    def label(self, request_id: int | str, t: int, y: float) -> str: ...
    def labels(
        self,
        request_ids: npt.NDArray[np.int64] | Sequence[int | str],
        t: npt.NDArray[np.int64],
        y: npt.NDArray[np.float64],
    ) -> int: ...
    def advance(self, t: int) -> None: ...
    def flush(self) -> None: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> LabelJoin: ...
    def drain(
        self,
    ) -> tuple[
        list[int | str],
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.bool_],
    ]: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def pending(self) -> int: ...
    @property
    def watermark(self) -> int | None: ...

# ---------------------------------------------------------------------------------------------
# Shared online state (issue 14): src/python/remote.rs. Wrapped by python/rtml/remote.py
# (rtml.RedisPublisher, rtml.RemoteEngine); docs/shared-state.md.
# ---------------------------------------------------------------------------------------------

__all__ += [
    "RemoteReader",
    "RedisConn",
    "RedisIoError",
    "publish_redis",
    "track_changes",
    "changed_keys",
    "publish_changes",
    "KEYSTATE_VERSION",
]

KEYSTATE_VERSION: int

def track_changes(engine: Engine, on: bool) -> None:
    """Start (or stop) tracking the keys `engine` changes; starting counts every held key."""

def changed_keys(engine: Engine) -> int:
    """Keys changed since the last publish (0 when not tracking)."""

def publish_changes(
    engine: Engine, ns: str, spec_id: int, all: bool = False
) -> tuple[
    int | None, int | None, int, int, bool | None, list[tuple[bytes, bytes, int]], int | None
]:
    """(watermark, settle_point, keys held, bytes, key_is_int, [(store key, value, last event
    time ns)], key_kind) for every key changed since the last call (every key with `all`);
    `key_kind`: the exact key kind (src/key.rs; a composite key's part kinds)."""

@final
class RemoteReader:
    """Decodes stored key states of one feature set and answers queries over them with the
    in-process engine's code (the engine side of rtml.RemoteEngine)."""

    def __new__(cls, spec: Spec, ns: str, spec_id: int) -> RemoteReader: ...
    def set_info(
        self, key_is_int: bool | None, zone: str | None, key_kind: int | None = None
    ) -> None: ...
    def store_key(self, key: object) -> bytes: ...
    def prepare(self, key: object, at: _Instant | None = None) -> tuple[bytes, int, int]: ...
    def prepare_many(
        self, keys: Iterable[object], at: _Instant | Sequence[_Instant] | None = None
    ) -> tuple[list[bytes], list[int], list[int]]: ...
    def get(
        self, key: object, t: int, zone: int, value: bytes | None
    ) -> tuple[dict[str, Any], int | None]: ...
    def get_many(
        self,
        keys: Iterable[object],
        times: Sequence[int],
        zones: Sequence[int],
        values: Sequence[bytes | None],
    ) -> tuple[pa.Table, list[int | None]]: ...
    def vector(
        self,
        key: object,
        t: int,
        zone: int,
        value: bytes | None,
        transforms: Transforms,
        fields: dict[str, Any] | None = None,
        with_features: bool = False,
    ) -> tuple[npt.NDArray[np.float64], dict[str, Any] | None, int | None]: ...
    def fetch_get(
        self, conn: RedisConn, key: object, at: _Instant | None = None
    ) -> tuple[dict[str, Any], int | None]:
        """`get` through the Rust client: one round trip (GIL released), decode, evaluate."""
    def fetch_get_many(
        self,
        conn: RedisConn,
        keys: Iterable[object],
        at: _Instant | Sequence[_Instant] | None = None,
    ) -> tuple[pa.Table, list[int | None]]: ...
    def fetch_vector(
        self,
        conn: RedisConn,
        key: object,
        transforms: Transforms,
        fields: dict[str, Any] | None = None,
        at: _Instant | None = None,
        with_features: bool = False,
    ) -> tuple[npt.NDArray[np.float64], dict[str, Any] | None, int | None]:
        """`vector` through the Rust client: one round trip, the value decoded once; with
        `with_features` the features dict from the same state."""
    def fetch_exists(self, conn: RedisConn, key: object) -> bool: ...
    @property
    def ns(self) -> str: ...
    @property
    def feature_names(self) -> list[str]: ...

class RedisIoError(ConnectionError):
    """Redis did not answer within the timeout, refused the connection, or answered an error."""

@final
class RedisConn:
    """Pooled connections to one Redis through rtml's Rust client (src/resp.rs); every call is
    bounded by `timeout` seconds."""

    def __new__(
        cls,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 0.05,
    ) -> RedisConn: ...
    def command(self, *args: bytes | str) -> Any:
        """One command; its reply as Python values (bytes, int, str, None, lists)."""
    def close(self) -> None: ...
    @property
    def timeout(self) -> float: ...

def publish_redis(
    conn: RedisConn,
    engine: Engine,
    ns: str,
    spec_id: int,
    field: str,
    position_json: str,
    now_ms: int,
    ttl_ns: int | None = None,
    all: bool = False,
    check_meta: bool = False,
    batch: int = 2000,
    deltas: bool = True,
) -> tuple[int, int, bool, int, int]:
    """Publish `engine`'s changed keys (all of them with `all`) through the Rust client, a key
    whose stored value the writer knows as an appended delta segment (with `deltas`), the meta
    and info records with the last batch: (values, bytes, meta_lost (with `check_meta`: the
    partition's meta record was gone, publish every key next time), delta segments, keys whose
    append found another length, rewritten at the next publish)."""

# ---------------------------------------------------------------------------------------------
# rtml.monitor (issue 16): src/python/monitor.rs. Wrapped by python/rtml/monitor.py. Times and
# durations are epoch nanoseconds.
# ---------------------------------------------------------------------------------------------

__all__ += ["Reference", "Monitor", "monitor_report", "REFERENCE_VERSION"]

REFERENCE_VERSION: int

@final
class Reference:
    """A fitted reference distribution (rtml.monitor.Reference wraps it)."""

    @staticmethod
    def fit(
        table: _ArrowStream,
        columns: list[str],
        bins: int = 20,
        max_categories: int = 1000,
        feature_set: str | None = None,
        vocabularies: dict[str, list[str]] | None = None,
        prediction: tuple[str | None, tuple[float, float] | None] | None = None,
    ) -> Reference: ...
    @staticmethod
    def from_json(text: str) -> Reference: ...
    def to_json(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def feature_set(self) -> str | None: ...
    @property
    def version(self) -> int: ...
    @property
    def prediction(self) -> tuple[str | None, tuple[float, float] | None] | None: ...
    @property
    def columns(self) -> list[tuple[str, str]]: ...
    def column(self, name: str) -> dict[str, Any]: ...
    def compare(self, table: _ArrowStream) -> dict[str, dict[str, Any]]: ...

def monitor_report(
    reference: Reference,
    table: _ArrowStream,
    timestamp: str | None = None,
    period: int | None = None,
) -> dict[str, Any]:
    """The batch report as a dict of columns (metrics: float64 arrays, NaN for null)."""

@final
class Monitor:
    """The online drift monitor (rtml.monitor.Monitor wraps it)."""

    def __new__(
        cls, reference: Reference, window: int, step: int, allowed_lateness: int
    ) -> Monitor: ...
    def add_trigger(
        self,
        metric: str,
        column: str,
        above: float,
        below: float,
        for_: int,
        cooldown: int,
        min_samples: int,
        low: bool = False,
    ) -> int: ...
    def update(self, table: _ArrowStream, timestamp: str) -> list[tuple[int, str, int, float]]: ...
    def advance(self, t: int) -> list[tuple[int, str, int, float]]: ...
    def values(self, at: int) -> dict[str, dict[str, Any]]: ...
    def stats(self) -> dict[str, Any]: ...
    def trigger_stats(self, i: int) -> dict[str, Any]: ...
    def to_json(self) -> str: ...
    @staticmethod
    def from_json(text: str) -> Monitor: ...
    def trigger_specs(self) -> list[tuple[str, str, float, float, int, int, int, bool]]: ...
    def reference_json(self) -> str: ...
    @property
    def watermark(self) -> int | None: ...
    @property
    def closed_until(self) -> int | None: ...
