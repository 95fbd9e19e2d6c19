"""rtml: real-time ML features.

Define window features once, in Python; one Rust engine computes them offline
(`FeatureSet.backfill`, point-in-time correct) and online (`FeatureSet.online()`),
bit for bit.
"""

from __future__ import annotations

import warnings as _warnings

from . import _core
from ._core import __version__, num_threads
from ._core import debug_build as _debug_build
from .exceptions import (
    AheadEventsWarning,
    HotKeyWarning,
    KeyStateError,
    LateEventsWarning,
    NotFittedError,
    NullKeysWarning,
    PoisonedError,
    QueryError,
    RemoteError,
    RemoteUnavailableError,
    RtmlError,
    RtmlWarning,
    SchemaError,
    SnapshotError,
    SpecError,
)

# The engine raises the package's exception classes: hand them down once (the compiled layer
# never imports the package).
_core._init_exceptions(RtmlError, SpecError, SchemaError, QueryError, SnapshotError, PoisonedError)

from . import (
    dead_letters,  # noqa: E402  (rtml.dead_letters: Runner(dead_letters=...) sinks)
    learn,  # noqa: E402
    monitor,  # noqa: E402  (rtml.monitor after `import rtml`: about 7 ms of the import)
    outofcore,  # noqa: E402  (rtml.outofcore.backfill; rtml.spark is imported on use)
    parity,  # noqa: E402  (rtml.parity.check after `import rtml`)
    sources,  # noqa: E402
)
from .features import (
    Feature,
    FeatureSet,
    count,
    decayed_sum,
    distinct_count,
    first,
    last,
    max,
    mean,
    min,
    quantile,
    std,
    sum,
    time_since_last,
    var,
)
from .join import backfill  # noqa: E402
from .online import LATE_WARNING_SHARE, IngestReport, OnlineEngine  # noqa: E402
from .remote import RedisPublisher, RemoteEngine  # noqa: E402
from .runner import CheckpointError, Runner  # noqa: E402
from .transforms import (
    Step,
    Transforms,
    TransformsEstimator,
    abs,  # noqa: A004
    add,
    bucketize,
    clip,
    day_of_month,
    day_of_week,
    fill_null,
    from_sklearn,
    hash_bucket,
    hour_of_day,
    impute,
    is_null,
    log1p,
    min_max_scale,
    month,
    mul,
    one_hot,
    ordinal,
    passthrough,
    power,
    quantile_bucketize,
    ratio,
    robust_scale,
    standard_scale,
    sub,
    target_encode,
)
from .wal import Wal  # noqa: E402

# A literal list: type checkers (mypy, pyright) read __all__ without running code, so a `*` of another
# module's __all__ hides those names from them (tests/python/test_boundary.py checks the lists agree).
__all__ = [
    "FeatureSet",
    "backfill",
    "Runner",
    "Wal",
    "CheckpointError",
    "sources",
    "dead_letters",
    "learn",
    "parity",
    "monitor",
    "Feature",
    "OnlineEngine",
    "IngestReport",
    "RemoteEngine",
    "RedisPublisher",
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
    # transforms (rtml.transforms.__all__)
    "Step",
    "Transforms",
    "TransformsEstimator",
    "abs",
    "add",
    "bucketize",
    "clip",
    "day_of_month",
    "day_of_week",
    "fill_null",
    "from_sklearn",
    "hash_bucket",
    "hour_of_day",
    "impute",
    "is_null",
    "log1p",
    "min_max_scale",
    "month",
    "mul",
    "one_hot",
    "ordinal",
    "passthrough",
    "power",
    "quantile_bucketize",
    "ratio",
    "robust_scale",
    "standard_scale",
    "sub",
    "target_encode",
    # exceptions (rtml.exceptions.__all__)
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
    "outofcore",
    "LATE_WARNING_SHARE",
    "num_threads",
    "__version__",
]

if _debug_build():
    _warnings.warn(
        "rtml was built without optimizations (debug build): expect it to be much slower. "
        "Build with `maturin develop --release` or `pip install .`.",
        RuntimeWarning,
        stacklevel=2,
    )
