"""`rtml.learn`: real-time learning (docs/learning.md).

* Online learners in Rust, deterministic: :class:`Logistic`, :class:`LinearRegression` and
  :class:`Softmax` (multiclass), trained with FTRL-Proximal or plain SGD. ``learn_many`` is the loop of ``learn_one`` bit for
  bit; ``to_json`` / :func:`load_model` / pickle carry the exact state.
* :class:`LabelJoin`: served rows wait for their labels by event time and are released as
  training examples in (release time, request id) order.
* :class:`Metrics`: progressive validation (test-then-train) by event time: log loss, AUC,
  MSE, calibration; :class:`MulticlassMetrics`: log loss and accuracy. Both checkpoint
  (``to_bytes`` / pickle), so metrics survive restarts.
* :class:`ServedLog`: what each prediction used, buffered and written to Parquet.
* :func:`replay`: reproduce offline what a service served, joined and learned.
* :func:`to_river` / :func:`to_sklearn`: feed joined examples to your own learner (outside the
  bit-exact promise).

Times are epoch nanoseconds (int) or datetime / pandas.Timestamp / numpy.datetime64; naive
datetimes are read as UTC wall-clock times, and one object never mixes naive and tz-aware ones.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import re
import threading
import weakref
from typing import Any, Literal, NamedTuple, Optional, Sequence, TypeVar, Union

import numpy as np
import pyarrow as pa

from . import _core
from .exceptions import SchemaError, SnapshotError, SpecError

__all__ = [
    "Logistic",
    "LinearRegression",
    "Softmax",
    "load_model",
    "Metrics",
    "MulticlassMetrics",
    "LabelJoin",
    "Examples",
    "ServedLog",
    "replay",
    "Replay",
    "to_river",
    "to_sklearn",
    "MODEL_VERSION",
    "SOFTMAX_VERSION",
]

#: Version of the model document this rtml writes (newer ones are refused).
MODEL_VERSION: int = _core.MODEL_VERSION
#: Version of the softmax model document this rtml writes (newer ones are refused).
SOFTMAX_VERSION: int = _core.SOFTMAX_VERSION

Instant = Union[int, _dt.datetime, np.datetime64, str]
Duration = Union[int, str, _dt.timedelta]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_UNITS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
}


def _duration_ns(value: Duration, field: str) -> int:
    """A duration as nanoseconds: an int (ns), a timedelta, or text such as '90s', '15m', '1h'.

    >>> _duration_ns("1h", "wait"), _duration_ns(_dt.timedelta(seconds=2), "wait"), _duration_ns(5, "wait")
    (3600000000000, 2000000000, 5)
    """
    if isinstance(value, bool):
        raise SpecError(f"{field}: expected a duration, got bool")
    if isinstance(value, (int, np.integer)):
        ns = int(value)
    elif isinstance(value, _dt.timedelta):
        ns = (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(ns|us|ms|s|m|h|d)\s*", value)
        if not m:
            raise SpecError(
                f"{field}: expected a duration such as '30s', '15m', '1h', '7d', got {value!r}"
            )
        ns = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise SpecError(
            f"{field}: expected a duration (int ns, str, timedelta), got {type(value).__name__}"
        )
    if ns < 0:
        raise SpecError(f"{field}: must be >= 0, got {value!r}")
    return ns


class _Clock:
    """Times -> epoch ns, refusing to mix naive and tz-aware datetimes within one object."""

    __slots__ = ("kind",)

    def __init__(self) -> None:
        self.kind: Optional[str] = None

    def _note(self, kind: str, field: str) -> None:
        if self.kind is None:
            self.kind = kind
        elif self.kind != kind:
            raise SchemaError(
                f"column '{field}': a {kind} time after {self.kind} ones: naive and tz-aware times never mix"
            )

    def ns(self, t: Any, field: str) -> int:
        if isinstance(t, bool):
            raise SchemaError(f"column '{field}': expected a time, got bool")
        if isinstance(t, (int, np.integer)):
            return int(t)
        value = getattr(t, "value", None)  # pandas.Timestamp
        if isinstance(t, _dt.datetime) and isinstance(value, (int, np.integer)):
            self._note("aware" if t.tzinfo is not None else "naive", field)
            return int(value)
        if isinstance(t, _dt.datetime):
            self._note("aware" if t.tzinfo is not None else "naive", field)
            d = t if t.tzinfo is not None else t.replace(tzinfo=_dt.timezone.utc)
            delta = d - _EPOCH
            return (
                delta.days * 86_400 + delta.seconds
            ) * 1_000_000_000 + delta.microseconds * 1_000
        if isinstance(t, np.datetime64):
            self._note("naive", field)
            return int(t.astype("datetime64[ns]").astype(np.int64))
        if isinstance(t, str):
            return self.ns(_dt.datetime.fromisoformat(t), field)
        raise SchemaError(
            f"column '{field}': expected a time (int ns, datetime, datetime64), got {type(t).__name__}"
        )

    def many(self, ts: Any, field: str) -> np.ndarray:
        """A column of times as a contiguous int64 ns array."""
        if isinstance(ts, (pa.Array, pa.ChunkedArray)):
            typ = ts.type
            if pa.types.is_timestamp(typ):
                self._note("aware" if typ.tz is not None else "naive", field)
                ts = ts.cast(pa.timestamp("ns", tz=typ.tz))
                arr = (
                    ts.to_numpy(zero_copy_only=False) if isinstance(ts, pa.Array) else ts.to_numpy()
                )
                return np.ascontiguousarray(arr.astype("datetime64[ns]").astype(np.int64))
            if pa.types.is_integer(typ):
                return np.ascontiguousarray(np.asarray(ts, dtype=np.int64))
            raise SchemaError(f"column '{field}': expected timestamps or int64 ns, got {typ}")
        arr = np.asarray(ts)
        if arr.dtype.kind == "M":
            self._note("naive", field)
            return np.ascontiguousarray(arr.astype("datetime64[ns]").astype(np.int64))
        if arr.dtype.kind in "iu":
            return np.ascontiguousarray(arr.astype(np.int64))
        return np.fromiter((self.ns(t, field) for t in ts), dtype=np.int64)


def _vec(x: Any) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise SchemaError(f"column 'x': expected one feature vector (1-D), got shape {a.shape}")
    return a


def _mat(X: Any, k: Optional[int] = None) -> np.ndarray:
    a = np.ascontiguousarray(X, dtype=np.float64)
    if a.ndim == 1 and k is not None and a.size == 0:
        a = a.reshape(0, k)
    if a.ndim != 2:
        raise SchemaError(
            f"column 'x': expected a 2-D array (rows x features), got shape {a.shape}"
        )
    return a


# ---------------------------------------------------------------------------------- learners


def _n_features(n: Any) -> int:
    """A learner's feature count, checked: an int >= 0 (not a bool)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise SpecError(f"n_features: expected an int >= 0, got {n!r}")
    return int(n)


def _optimizer(
    optimizer: str,
    alpha: float,
    beta: float,
    l1: float,
    l2: float,
    eta0: float,
    schedule: str,
    power_t: float,
) -> str:
    if optimizer == "ftrl":
        doc: dict[str, Any] = {"kind": "ftrl", "alpha": alpha, "beta": beta, "l1": l1, "l2": l2}
    elif optimizer == "sgd":
        if schedule == "constant":
            sched: dict[str, Any] = {"kind": "constant", "eta0": eta0}
        elif schedule in ("inv_scaling", "invscaling"):
            sched = {"kind": "inv_scaling", "eta0": eta0, "power_t": power_t}
        else:
            raise SpecError(f"schedule: expected 'constant' or 'inv_scaling', got {schedule!r}")
        doc = {"kind": "sgd", "schedule": sched, "l1": l1, "l2": l2}
    else:
        raise SpecError(f"optimizer: expected 'ftrl' or 'sgd', got {optimizer!r}")
    for name in ("alpha", "beta", "l1", "l2", "eta0", "power_t"):
        v = locals()[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{name}: expected a number, got {type(v).__name__}")
    return json.dumps(doc)


class _Linear:
    """Shared by :class:`Logistic` and :class:`LinearRegression`."""

    __slots__ = ("_m",)
    _loss: Literal["logistic", "squared"] = "logistic"

    def __init__(
        self,
        n_features: int,
        optimizer: str = "ftrl",
        *,
        alpha: float = 0.1,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 0.0,
        eta0: float = 0.01,
        schedule: str = "constant",
        power_t: float = 0.5,
    ) -> None:
        n_features = _n_features(n_features)
        doc = _optimizer(optimizer, alpha, beta, l1, l2, eta0, schedule, power_t)
        self._m = _core.Linear(self._loss, doc, int(n_features))

    @classmethod
    def _wrap(cls, m: _core.Linear) -> Any:
        self = cls.__new__(cls)
        self._m = m
        return self

    @property
    def n_features(self) -> int:
        return self._m.n_features

    @property
    def updates(self) -> int:
        """Examples learned so far."""
        return self._m.updates

    @property
    def weights(self) -> np.ndarray:
        """The weights, the intercept last."""
        return self._m.weights()

    def predict_one(self, x: Any) -> float:
        return self._m.predict_one(_vec(x))

    def predict_many(self, X: Any) -> np.ndarray:
        return self._m.predict_many(_mat(X, self.n_features))

    def learn_one(self, x: Any, y: float) -> float:
        """Learn one example; returns the prediction made before the update. Bad input (wrong
        length, NaN / inf, a logistic label other than 0 / 1) raises ``rtml.SchemaError`` and
        leaves the model unchanged."""
        return self._m.learn_one(_vec(x), float(y))

    def learn_many(self, X: Any, y: Any) -> np.ndarray:
        """Learn the rows in order: bit for bit the loop of ``learn_one``. The whole batch is
        checked first (on error nothing is learned). Returns the predictions made before each
        update."""
        return self._m.learn_many(
            _mat(X, self.n_features), np.ascontiguousarray(y, dtype=np.float64)
        )

    def progressive(self, X: Any, y: Any, t: Any, metrics: "Metrics") -> np.ndarray:
        """Test-then-train: score each row, record (t, score, y) in `metrics`, then learn it
        (the same model as ``learn_many``)."""
        ts = metrics._clock.many(t, "t")
        return self._m.progressive(
            _mat(X, self.n_features), np.ascontiguousarray(y, dtype=np.float64), ts, metrics._m
        )

    def to_json(self) -> str:
        """The versioned model document (the saved artifact and the pickle state)."""
        return self._m.to_json()

    def same_state(self, other: "_Linear") -> bool:
        """Whether two models hold the same state, bit for bit."""
        return self._m.same_state(other._m)

    def __getstate__(self) -> str:
        return self._m.to_json()

    def __setstate__(self, state: str) -> None:
        self._m = _core.Linear.from_json(state)

    def __repr__(self) -> str:
        opt = json.loads(self._m.to_json())["optimizer"]
        return f"{type(self).__name__}(n_features={self.n_features}, optimizer={opt}, updates={self.updates})"


class Logistic(_Linear):
    """Online logistic regression (labels 0 / 1; predictions are P(y = 1)).

    >>> import rtml.learn as rl
    >>> m = rl.Logistic(2, "ftrl", alpha=0.5)
    >>> m.predict_one([1.0, 0.0])
    0.5
    >>> p = m.learn_many([[1.0, 0.0], [0.0, 1.0]], [1, 0])  # scores before each update
    >>> float(p[0]), bool(p[1] > 0.5)  # the intercept learned from the first example
    (0.5, True)
    >>> m.predict_one([1.0, 0.0]) > 0.5 > m.predict_one([0.0, 1.0])
    True
    """

    __slots__ = ()
    _loss: Literal["logistic", "squared"] = "logistic"


class LinearRegression(_Linear):
    """Online linear regression (squared loss).

    >>> import rtml.learn as rl
    >>> m = rl.LinearRegression(1, "sgd", eta0=0.1)
    >>> _ = m.learn_many([[1.0]] * 50, [2.0] * 50)
    >>> round(m.predict_one([1.0]), 3)
    2.0
    """

    __slots__ = ()
    _loss: Literal["logistic", "squared"] = "squared"


def _class_labels(classes: Any) -> list[Union[int, str]]:
    """`classes` as :class:`Softmax` takes them (a number of classes, or a list of ints /
    strs) -> the list of class labels; anything else raises ``rtml.SpecError``. (Distinct and
    at least 2: checked by the Rust model.)"""
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        return list(range(int(classes)))
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise SpecError(
            f"classes: expected a number of classes or a list of ints / strs, got {classes!r}"
        )
    labels: list[Union[int, str]] = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer, str)):
            raise SpecError(f"classes: expected ints or strs, got {c!r}")
        labels.append(int(c) if isinstance(c, (int, np.integer)) else str(c))
    return labels


class Softmax:
    """Online multiclass logistic (softmax) regression: predictions are the probabilities of
    `classes` (ints or strs, in that order), labels are class labels.

    Same optimizers and parameters as :class:`Logistic`, same promises: ``learn_many`` is the
    loop of ``learn_one`` bit for bit, ``to_json`` / :func:`load_model` / pickle carry the exact
    state, bad input (an unknown class, a NaN feature, a wrong length) raises
    ``rtml.SchemaError`` and changes nothing.

    >>> import rtml.learn as rl
    >>> m = rl.Softmax(2, ["cat", "dog", "fish"], "ftrl", alpha=0.5)
    >>> m.predict_one([1.0, 0.0]).round(4).tolist()
    [0.3333, 0.3333, 0.3333]
    >>> _ = m.learn_many([[1.0, 0.0], [0.0, 1.0]] * 20, ["dog", "fish"] * 20)
    >>> m.predict_class([[1.0, 0.0], [0.0, 1.0]])
    ['dog', 'fish']
    """

    __slots__ = ("_m", "_classes", "_index", "_range")

    def __init__(
        self,
        n_features: int,
        classes: Union[int, Sequence[Union[int, str]]],
        optimizer: str = "ftrl",
        *,
        alpha: float = 0.1,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 0.0,
        eta0: float = 0.01,
        schedule: str = "constant",
        power_t: float = 0.5,
    ) -> None:
        n_features = _n_features(n_features)
        labels = _class_labels(classes)
        doc = _optimizer(optimizer, alpha, beta, l1, l2, eta0, schedule, power_t)
        self._set(_core.Softmax(json.dumps(labels), doc, int(n_features)))

    def _set(self, m: _core.Softmax) -> None:
        self._m = m
        self._classes: list[Union[int, str]] = json.loads(m.classes_json())
        self._index = {c: i for i, c in enumerate(self._classes)}
        self._range = self._classes == list(range(len(self._classes)))

    @classmethod
    def _wrap(cls, m: _core.Softmax) -> "Softmax":
        self = cls.__new__(cls)
        self._set(m)
        return self

    @property
    def n_features(self) -> int:
        return self._m.n_features

    @property
    def classes(self) -> list[Union[int, str]]:
        """The class labels, in the order of the probabilities."""
        return list(self._classes)

    @property
    def updates(self) -> int:
        """Examples learned so far."""
        return self._m.updates

    @property
    def weights(self) -> np.ndarray:
        """The weights, one row per class, each class's intercept last."""
        return self._m.weights()

    def _label(self, y: Any, row: Optional[int]) -> int:
        i = None if isinstance(y, (bool, np.bool_)) else self._index.get(y)
        if i is None:
            at = f"row {row}: " if row is not None else ""
            raise SchemaError(f"column 'y': {at}unknown class {y!r} (classes: {self._classes})")
        return i

    def _labels(self, y: Any) -> np.ndarray:
        """Class labels -> class indices (int64); an unknown class raises, naming the row."""
        if isinstance(y, np.ndarray):
            a = y
            if a.ndim != 1:
                raise SchemaError(
                    f"column 'y': expected one label per row (1-D), got shape {a.shape}"
                )
            if a.dtype.kind == "b" and len(a):
                self._label(bool(a[0]), 0)  # a bool is never a class label (raises)
        else:
            items = list(y)
            for r, v in enumerate(items):
                if isinstance(v, (bool, np.bool_)):
                    self._label(v, r)  # raises
            if not self._range:
                return np.fromiter(
                    (self._label(v, r) for r, v in enumerate(items)),
                    dtype=np.int64,
                    count=len(items),
                )
            a = np.asarray(items) if items else np.zeros(0, np.int64)
        if self._range and a.dtype.kind in "iu":
            return np.ascontiguousarray(a, dtype=np.int64)  # class i is index i (range: Rust)
        if self._range and a.dtype.kind == "f":
            bad = ~np.isfinite(a) | (a != np.round(a)) | (a < 0) | (a >= len(self._classes))
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                self._label(float(a[r]), r)
            return np.ascontiguousarray(a, dtype=np.int64)
        return np.fromiter(
            (self._label(v, r) for r, v in enumerate(a.tolist())), dtype=np.int64, count=len(a)
        )

    def predict_one(self, x: Any) -> np.ndarray:
        """The class probabilities for `x` (in the order of :attr:`classes`)."""
        return self._m.predict_one(_vec(x))

    def predict_many(self, X: Any) -> np.ndarray:
        """Probabilities, one row per vector."""
        return self._m.predict_many(_mat(X, self.n_features))

    def predict_class(self, X: Any) -> list[Union[int, str]]:
        """The most probable class of each row (the first in :attr:`classes` on ties)."""
        p = self.predict_many(X)
        return [self._classes[int(i)] for i in np.argmax(p, axis=1)] if len(p) else []

    def learn_one(self, x: Any, y: Any) -> np.ndarray:
        """Learn one example (`y`: a class label); returns the probabilities before the update.
        Bad input raises ``rtml.SchemaError`` and leaves the model unchanged."""
        return self._m.learn_one(_vec(x), self._label(y, None))

    def learn_many(self, X: Any, y: Any) -> np.ndarray:
        """Learn the rows in order: bit for bit the loop of ``learn_one``. The whole batch is
        checked first (on error nothing is learned). Returns the probabilities before each
        update (rows x classes)."""
        return self._m.learn_many(_mat(X, self.n_features), self._labels(y))

    def progressive(self, X: Any, y: Any, t: Any, metrics: "MulticlassMetrics") -> np.ndarray:
        """Test-then-train: score each row, record it in `metrics`, then learn it (the same
        model as ``learn_many``)."""
        ts = metrics._clock.many(t, "t")
        return self._m.progressive(_mat(X, self.n_features), self._labels(y), ts, metrics._m)

    def to_json(self) -> str:
        """The versioned model document (``{"format": "rtml.softmax", ...}``)."""
        return self._m.to_json()

    def same_state(self, other: "Softmax") -> bool:
        """Whether two models hold the same state, bit for bit."""
        return self._m.same_state(other._m)

    def __getstate__(self) -> str:
        return self._m.to_json()

    def __setstate__(self, state: str) -> None:
        self._set(_core.Softmax.from_json(state))

    def __repr__(self) -> str:
        opt = json.loads(self._m.to_json())["optimizer"]
        return (
            f"Softmax(n_features={self.n_features}, classes={self._classes}, optimizer={opt}, "
            f"updates={self.updates})"
        )


def load_model(text: str) -> Union[Logistic, LinearRegression, Softmax]:
    """A model from its document (``to_json``): :class:`Logistic`, :class:`LinearRegression`
    or :class:`Softmax`. Refuses unknown fields, other formats and newer versions with
    ``rtml.SpecError``."""
    try:
        doc = json.loads(text)
        fmt = doc.get("format") if isinstance(doc, dict) else None
    except ValueError:
        fmt = None
    if fmt == "rtml.softmax":
        return Softmax._wrap(_core.Softmax.from_json(text))
    m = _core.Linear.from_json(text)
    loss = json.loads(text).get("loss")
    model: Union[Logistic, LinearRegression] = (
        Logistic if loss == "logistic" else LinearRegression
    )._wrap(m)
    return model


def _metrics_bytes(magic: bytes, clock: _Clock, core: bytes) -> bytes:
    return magic + json.dumps({"clock": clock.kind}).encode() + b"\n" + core


def _metrics_parts(magic: bytes, data: Any, what: str) -> tuple[Optional[str], bytes]:
    data = bytes(data)
    if not data.startswith(magic) or b"\n" not in data[len(magic) :]:
        raise SnapshotError(f"{what}: not the bytes of {what}.to_bytes")
    head, core = data[len(magic) :].split(b"\n", 1)
    try:
        clock = json.loads(head)["clock"]
        if clock not in (None, "naive", "aware"):
            raise ValueError(clock)
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{what}: unreadable header ({e})") from None
    return clock, core


# ---------------------------------------------------------------------------------- metrics


_M = TypeVar("_M", bound="_WindowMetrics")


class _WindowMetrics:
    """What both metrics classes share: the core object over a rolling event-time window, the
    event-time clock, the counts, and the snapshot (a magic line, the clock, the core's bytes).
    """

    __slots__ = ("_m", "_clock")
    _MAGIC: bytes
    _CORE: Any

    def __init__(self, window: Optional[Duration] = None) -> None:
        self._m = self._CORE(None if window is None else _duration_ns(window, "window"))
        self._clock = _Clock()

    def log_loss(self) -> Optional[float]:
        return self._m.log_loss()  # type: ignore[no-any-return]

    @property
    def count(self) -> int:
        """Rows in the window."""
        return self._m.count  # type: ignore[no-any-return]

    @property
    def seen(self) -> int:
        """Rows ever recorded."""
        return self._m.seen  # type: ignore[no-any-return]

    def to_bytes(self) -> bytes:
        """The whole state (the window's rows, the clock, the counts): a restored object
        continues exactly as the uninterrupted one, bit for bit."""
        return _metrics_bytes(self._MAGIC, self._clock, self._m.to_bytes())

    @classmethod
    def from_bytes(cls: type[_M], data: bytes) -> _M:
        """From :meth:`to_bytes`; anything else (truncated, corrupted, another format, a newer
        version) raises ``rtml.SnapshotError``."""
        clock, core = _metrics_parts(cls._MAGIC, data, cls.__name__)
        self = cls.__new__(cls)
        self._m = cls._CORE.from_bytes(core)
        self._clock = _Clock()
        self._clock.kind = clock
        return self

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        other = type(self).from_bytes(state)
        self._m, self._clock = other._m, other._clock


class Metrics(_WindowMetrics):
    """Progressive-validation metrics over a rolling event-time window (None: everything).

    >>> import rtml.learn as rl
    >>> m = rl.Metrics()
    >>> m.add_many([1, 2, 3, 4], [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    >>> m.auc(), m.count
    (0.75, 4)
    """

    __slots__ = ()
    _MAGIC = b"rtml.Metrics/1\n"
    _CORE = _core.Metrics

    def add(self, t: Instant, p: float, y: float) -> None:
        self.add_many([self._clock.ns(t, "t")], [p], [y])

    def add_many(self, t: Any, p: Any, y: Any) -> None:
        self._m.add_many(
            self._clock.many(t, "t"),
            np.ascontiguousarray(p, dtype=np.float64),
            np.ascontiguousarray(y, dtype=np.float64),
        )

    def auc(self) -> Optional[float]:
        return self._m.auc()  # type: ignore[no-any-return]

    def mse(self) -> Optional[float]:
        return self._m.mse()  # type: ignore[no-any-return]

    def calibration(self, bins: int = 10) -> list[dict[str, float]]:
        return self._m.calibration(bins)  # type: ignore[no-any-return]

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seen": self.seen,
            "log_loss": self.log_loss(),
            "auc": self.auc(),
            "mse": self.mse(),
        }


class MulticlassMetrics(_WindowMetrics):
    """Progressive-validation metrics of a :class:`Softmax` over a rolling event-time window
    (None: everything): log loss (``-ln`` of the probability given to the true class),
    accuracy (the most probable class, the first on ties, is the true one) and the one-vs-rest
    macro AUC (:meth:`auc`).

    >>> import rtml.learn as rl
    >>> m = rl.MulticlassMetrics()
    >>> m.add_many([1, 2], [[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]], [0, 2])
    >>> m.accuracy(), round(m.log_loss(), 4)
    (0.5, 0.8715)
    """

    __slots__ = ()
    _MAGIC = b"rtml.MulticlassMetrics/1\n"
    _CORE = _core.MulticlassMetrics

    def add_many(self, t: Any, p: Any, y: Any) -> None:
        """`p`: class probabilities (rows x classes); `y`: true class indices."""
        self._m.add_many(
            self._clock.many(t, "t"),
            np.ascontiguousarray(p, dtype=np.float64),
            np.ascontiguousarray(y, dtype=np.int64),
        )

    def accuracy(self) -> Optional[float]:
        return self._m.accuracy()  # type: ignore[no-any-return]

    def auc(self) -> Optional[float]:
        """One-vs-rest macro ROC AUC over the window (ties count half), as scikit-learn's
        ``roc_auc_score(y, p, multi_class="ovr", average="macro")``; None unless every class
        occurs in the window (or while rows restored from a snapshot written before session 9,
        which lacks the probabilities, are in it).

        >>> import rtml.learn as rl
        >>> m = rl.MulticlassMetrics()
        >>> p = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3]]
        >>> m.add_many([1, 2, 3, 4], p, [0, 1, 2, 1])
        >>> round(m.auc(), 4)
        0.8333
        """
        return self._m.auc()  # type: ignore[no-any-return]

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seen": self.seen,
            "log_loss": self.log_loss(),
            "accuracy": self.accuracy(),
            "auc": self.auc(),
        }


# ---------------------------------------------------------------------------------- label join


class Examples(NamedTuple):
    """Released training examples, in (release, request_id) order."""

    request_id: list[Any]
    at: np.ndarray
    release: np.ndarray
    X: np.ndarray
    y: np.ndarray
    timed_out: np.ndarray

    def __len__(self) -> int:
        return len(self.request_id)


class LabelJoin:
    """Served rows wait for their labels (docs/learning.md, "The label join").

    `wait`: how long a served row waits for its label (event time). `on_timeout`: "drop", or a
    default label for rows whose label did not come. `max_pending`: rows held at most (serving
    more evicts the row due first; counted). `allowed_lateness`: how far label times may go
    back behind the label watermark.

    >>> import rtml.learn as rl
    >>> j = rl.LabelJoin(wait=100, on_timeout=0.0)
    >>> j.serve("r1", at=0, x=[1.0, 2.0]); j.serve("r2", at=5, x=[3.0, 4.0])
    'accepted'
    'accepted'
    >>> j.label("r2", at=40, y=1.0)
    'accepted'
    >>> j.advance(200)
    >>> ex = j.drain()
    >>> ex.request_id, ex.release.tolist(), ex.y.tolist(), ex.timed_out.tolist()
    (['r2', 'r1'], [40, 100], [1.0, 0.0], [False, True])

    `classes` (as :class:`Softmax` takes them: a number of classes or a list of ints / strs)
    makes a multiclass join: labels are class labels, `on_timeout` is "drop" or one of the
    classes, and drained examples carry class labels (int64 when every class is an int, else
    an object array), ready for ``Softmax.learn_many``. A label not among the classes is a bad
    label: ``label`` raises ``rtml.SchemaError`` naming it, ``labels`` counts it.

    >>> j = rl.LabelJoin(wait=100, on_timeout="other", classes=["cat", "dog", "other"])
    >>> _ = j.serve_many(["r1", "r2"], [0, 5], [[1.0, 0.0], [0.0, 1.0]])
    >>> j.label("r2", at=40, y="dog")
    'accepted'
    >>> j.advance(200)
    >>> j.drain().y.tolist()
    ['dog', 'other']
    """

    __slots__ = ("_j", "_clock", "_n_features", "_classes", "_index")

    def __init__(
        self,
        wait: Duration,
        on_timeout: Union[str, float, int] = "drop",
        max_pending: int = 1_000_000,
        allowed_lateness: Duration = 0,
        *,
        classes: Union[None, int, Sequence[Union[int, str]]] = None,
    ) -> None:
        self._set_classes(None if classes is None else _class_labels(classes))
        if isinstance(on_timeout, str) and on_timeout == "drop":  # (even if a class is "drop")
            default: Optional[float] = None
        elif self._classes is not None:
            i = self._class_index(on_timeout)
            if i is None:
                raise SpecError(
                    f"on_timeout: expected 'drop' or one of the classes {self._classes}, "
                    f"got {on_timeout!r}"
                )
            default = float(i)
        elif isinstance(on_timeout, (int, float)) and not isinstance(on_timeout, bool):
            default = float(on_timeout)
        else:
            raise SpecError(
                f"on_timeout: expected 'drop' or a default label (number; a class label needs "
                f"classes=...), got {on_timeout!r}"
            )
        if (
            isinstance(max_pending, bool)
            or not isinstance(max_pending, (int, np.integer))
            or max_pending < 1
        ):
            raise SpecError(f"max_pending: expected an int >= 1, got {max_pending!r}")
        self._j = _core.LabelJoin(
            _duration_ns(wait, "wait"),
            default,
            int(max_pending),
            _duration_ns(allowed_lateness, "allowed_lateness"),
        )
        self._clock = _Clock()
        self._n_features: Optional[int] = None

    def _set_classes(self, classes: Optional[list[Union[int, str]]]) -> None:
        if classes is not None:
            if len(classes) < 2:
                raise SpecError(f"classes: expected at least 2 classes, got {len(classes)}")
            if len(set(classes)) != len(classes):
                twice = next(c for i, c in enumerate(classes) if c in classes[:i])
                raise SpecError(f"classes: class {twice!r} is listed twice")
        self._classes = classes
        self._index = None if classes is None else {c: i for i, c in enumerate(classes)}

    def _class_index(self, y: Any) -> Optional[int]:
        """The index of class label `y` (None: not a class; a bool never is one)."""
        if self._index is None or isinstance(y, (bool, np.bool_)):
            return None
        if isinstance(y, np.integer):
            y = int(y)
        try:
            return self._index.get(y)
        except TypeError:  # unhashable
            return None

    @property
    def classes(self) -> Optional[list[Union[int, str]]]:
        """The class labels of a multiclass join (None: labels are numbers)."""
        return None if self._classes is None else list(self._classes)

    def _check_len(self, k: int) -> None:
        if self._n_features is None:
            self._n_features = k
        elif k != self._n_features:
            raise SchemaError(
                f"column 'x': expected vectors of {self._n_features} features, got {k}"
            )

    def serve(self, request_id: Union[int, str], at: Instant, x: Any) -> str:
        """A served row; returns "accepted" or "late" (decided already; counted). A reused
        request id raises ``rtml.SchemaError``."""
        v = _vec(x)
        self._check_len(v.size)
        return self._j.serve(request_id, self._clock.ns(at, "at"), v)

    def serve_many(self, request_ids: Any, at: Any, X: Any) -> tuple[int, int]:
        """Rows in order; returns (accepted, late)."""
        m = _mat(X)
        self._check_len(m.shape[1])
        ids = (
            request_ids
            if isinstance(request_ids, np.ndarray) and request_ids.dtype == np.int64
            else list(request_ids)
        )
        return self._j.serve_many(ids, self._clock.many(at, "at"), m)

    def label(self, request_id: Union[int, str], at: Instant, y: Any) -> str:
        """One label known at event time `at`; returns "accepted", "late" or "after_wait"
        (counted). Bad input (unknown or already released id, second label, NaN, a class not
        among `classes`) raises ``rtml.SchemaError`` naming the request id, is counted, and
        changes nothing else."""
        if self._classes is not None:
            i = self._class_index(y)
            if i is None:
                try:  # counted by the join as a bad label
                    self._j.label(request_id, 0, float("nan"))
                except SchemaError:
                    pass
                raise SchemaError(
                    f"column 'label': request id {request_id!r}: unknown class {y!r} "
                    f"(classes: {self._classes})"
                )
            return self._j.label(request_id, self._clock.ns(at, "at"), float(i))
        if not isinstance(y, (int, float, np.floating, np.integer)):  # bool is an int: 0 / 1
            try:  # counted by the join as a bad label, like a NaN
                self._j.label(request_id, 0, float("nan"))
            except SchemaError:
                pass
            raise SchemaError(
                f"column 'label': request id {request_id!r}: expected a number, got {type(y).__name__}"
            )
        return self._j.label(request_id, self._clock.ns(at, "at"), float(y))

    def labels(self, request_ids: Any, at: Any, y: Any) -> int:
        """Labels from a stream, in order: bad ones are counted in ``stats()``, not raised.
        Returns how many were taken."""
        ids = (
            request_ids
            if isinstance(request_ids, np.ndarray) and request_ids.dtype == np.int64
            else list(request_ids)
        )
        ys = self._class_indices(y) if self._classes is not None else y
        return self._j.labels(
            ids, self._clock.many(at, "at"), np.ascontiguousarray(ys, dtype=np.float64)
        )

    def _class_indices(self, y: Any) -> np.ndarray:
        """Class labels -> their indices as floats, NaN for a label not among the classes (the
        join counts it as a bad label)."""
        assert self._classes is not None
        a = y if isinstance(y, np.ndarray) else np.asarray(list(y), dtype=object)
        n = len(self._classes)
        if a.dtype.kind in "iu" and self._classes == list(range(n)):
            return np.where((a >= 0) & (a < n), a, np.nan).astype(np.float64)
        idx = [self._class_index(v) for v in a.tolist()]
        return np.array([np.nan if i is None else i for i in idx], dtype=np.float64)

    def advance(self, t: Instant) -> None:
        """Move the label watermark to `t` (e.g. "now" in a service whose labels are quiet)."""
        self._j.advance(self._clock.ns(t, "t"))

    def flush(self) -> None:
        """End of stream: release everything pending (unlabeled rows as timeouts)."""
        self._j.flush()

    def drain(self) -> Examples:
        """The examples released so far, in (release time, request id) order."""
        ids, at, rel, X, y, to = self._j.drain()
        if X.shape[0] == 0 and self._n_features:
            X = X.reshape(0, self._n_features)
        if self._classes is not None:
            labels = (
                np.array(self._classes, dtype=np.int64)
                if all(isinstance(c, int) for c in self._classes)
                else np.array(self._classes, dtype=object)
            )
            return Examples(ids, at, rel, X, labels[y.astype(np.int64)], to)
        return Examples(ids, at, rel, X, y, to)

    def stats(self) -> dict[str, Any]:
        return self._j.stats()

    @property
    def pending(self) -> int:
        return self._j.pending

    @property
    def watermark(self) -> Optional[int]:
        return self._j.watermark

    def to_bytes(self) -> bytes:
        """The whole join (rows still waiting for their labels, remembered ids, examples not
        yet drained, counters) as bytes, for a service's checkpoint: :meth:`from_bytes` gives
        back a join that continues exactly as this one would (tested).

        >>> import rtml.learn as rl
        >>> j = rl.LabelJoin(wait=100, on_timeout=0.0)
        >>> j.serve("r1", at=0, x=[1.0]); j.serve("r2", at=5, x=[2.0])
        'accepted'
        'accepted'
        >>> k = rl.LabelJoin.from_bytes(j.to_bytes())
        >>> k.label("r2", at=40, y=1.0), k.pending
        ('accepted', 2)
        """
        meta: dict[str, Any] = {"clock": self._clock.kind, "n_features": self._n_features}
        if self._classes is not None:
            meta["classes"] = self._classes
        head = json.dumps(meta)
        return _JOIN_MAGIC + head.encode() + b"\n" + bytes(self._j.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "LabelJoin":
        """A join from :meth:`to_bytes`; anything else (truncated, corrupted, another format, a
        newer version) raises ``rtml.SnapshotError``."""
        data = bytes(data)
        if not data.startswith(_JOIN_MAGIC) or b"\n" not in data:
            raise SnapshotError("label join: not the bytes of LabelJoin.to_bytes")
        head, core = data[len(_JOIN_MAGIC) :].split(b"\n", 1)
        try:
            meta = json.loads(head)
            clock, n = meta["clock"], meta["n_features"]
            classes = meta.get("classes")  # (absent before session 9, and when None)
            if clock not in (None, "naive", "aware") or not (n is None or isinstance(n, int)):
                raise ValueError(meta)
            if classes is not None and not (
                isinstance(classes, list)
                and all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in classes)
            ):
                raise ValueError(meta)
        except (ValueError, KeyError, TypeError) as e:
            raise SnapshotError(f"label join: unreadable header ({e})") from None
        self = cls.__new__(cls)
        try:
            self._set_classes(classes)
        except SpecError as e:
            raise SnapshotError(f"label join: unreadable header ({e})") from None
        self._j = _core.LabelJoin.from_bytes(core)
        self._clock = _Clock()
        self._clock.kind = clock
        self._n_features = n
        return self

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        other = LabelJoin.from_bytes(state)
        self._j, self._clock, self._n_features = other._j, other._clock, other._n_features
        self._classes, self._index = other._classes, other._index


_JOIN_MAGIC = b"rtml.LabelJoin/1\n"


# ---------------------------------------------------------------------------------- served log

_OPEN_LOGS: "weakref.WeakSet[ServedLog]" = weakref.WeakSet()


@atexit.register
def _close_open_logs() -> None:  # nothing buffered is lost on a clean interpreter exit
    for log in list(_OPEN_LOGS):
        log.close()


class ServedLog:
    """What each prediction used, written to Parquet: one file per flush in `path` (a
    directory), columns ``request_id`` (str), one column per entity key, ``at``, ``x``
    (list<float64>), ``model_version`` (str) and ``prediction`` (float64).

    The buffer holds at most `max_rows` rows (a full buffer is written before the call
    returns: nothing is dropped); a background thread writes it every `flush_interval`
    seconds; ``close()`` (also a ``with`` block's end, and interpreter exit) writes the rest.
    Read it back with ``ServedLog.read(path)``.

    >>> import tempfile, rtml.learn as rl
    >>> d = tempfile.mkdtemp()
    >>> with rl.ServedLog(d) as log:
    ...     log.log("r1", {"driver": 7}, 1_700_000_000_000_000_000, [0.5, 1.0], "v1", 0.73)
    >>> rl.ServedLog.read(d).to_pylist()[0]["x"]
    [0.5, 1.0]
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        max_rows: int = 10_000,
        flush_interval: Optional[float] = 5.0,
    ) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise SpecError(f"max_rows: expected an int >= 1, got {max_rows!r}")
        if flush_interval is not None and not flush_interval > 0:
            raise SpecError(f"flush_interval: expected seconds > 0 or None, got {flush_interval!r}")
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.max_rows = max_rows
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._rows: list[tuple[Any, ...]] = []
        self._keys: Optional[tuple[str, ...]] = None
        self._clock = _Clock()
        self._aware: Optional[bool] = None
        existing = [
            f for f in os.listdir(self.path) if f.startswith("part-") and f.endswith(".parquet")
        ]
        self._seq = len(existing)
        self._closed = False
        self.rows_written = 0
        self.files_written = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if flush_interval is not None:
            self._thread = threading.Thread(target=self._tick, name="rtml-served-log", daemon=True)
            self._thread.start()
        _OPEN_LOGS.add(self)

    def _tick(self) -> None:
        assert self.flush_interval is not None
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def log(
        self,
        request_id: Union[int, str],
        keys: dict[str, Any],
        at: Instant,
        x: Any,
        model_version: str,
        prediction: float,
    ) -> None:
        """Record one served prediction."""
        if self._closed:
            raise SchemaError("ServedLog: the log is closed")
        if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
            raise SchemaError(
                f"column 'request_id': expected int or str, got {type(request_id).__name__}"
            )
        if not isinstance(keys, dict):
            raise SchemaError(
                f"column 'keys': expected a dict of entity keys, got {type(keys).__name__}"
            )
        names = tuple(keys)
        if self._keys is None:
            self._keys = names
        elif names != self._keys:
            raise SchemaError(
                f"column 'keys': expected the keys {list(self._keys)}, got {list(names)}"
            )
        ns = self._clock.ns(at, "at")
        vec = _vec(x).tolist()
        row = (
            str(request_id),
            tuple(keys.values()),
            ns,
            vec,
            str(model_version),
            float(prediction),
        )
        with self._lock:
            self._rows.append(row)
            full = len(self._rows) >= self.max_rows
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (one Parquet file) now."""
        import pyarrow.parquet as pq

        with self._lock:
            rows, self._rows = self._rows, []
            if not rows:
                return
            cols: dict[str, Any] = {"request_id": pa.array([r[0] for r in rows], pa.string())}
            for i, name in enumerate(self._keys or ()):
                cols[name] = pa.array([r[1][i] for r in rows])
            tz = "UTC" if self._clock.kind == "aware" else None
            cols["at"] = pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("ns", tz=tz))
            cols["x"] = pa.array([r[3] for r in rows], pa.list_(pa.float64()))
            cols["model_version"] = pa.array([r[4] for r in rows], pa.string())
            cols["prediction"] = pa.array([r[5] for r in rows], pa.float64())
            table = pa.table(cols)
            name = os.path.join(self.path, f"part-{self._seq:06d}.parquet")
            tmp = name + ".tmp"
            try:
                pq.write_table(table, tmp)
                os.replace(tmp, name)
            except BaseException:
                self._rows[:0] = rows  # keep them for the next flush
                raise
            self._seq += 1
            self.rows_written += len(rows)
            self.files_written += 1

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._rows)

    def close(self) -> None:
        """Write what is buffered and stop the flush thread (idempotent)."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()
        self._closed = True
        _OPEN_LOGS.discard(self)

    def __enter__(self) -> "ServedLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def read(path: Union[str, "os.PathLike[str]"]) -> pa.Table:
        """Every row logged in `path`, in the order written."""
        import pyarrow.parquet as pq

        files = sorted(
            f for f in os.listdir(path) if f.startswith("part-") and f.endswith(".parquet")
        )
        tables = [pq.read_table(os.path.join(path, f)) for f in files]
        return pa.concat_tables(tables) if tables else pa.table({})


# ---------------------------------------------------------------------------------- replay


class Replay(NamedTuple):
    """What :func:`replay` reproduced."""

    model: Any
    examples: Examples
    predictions: np.ndarray  # the progressive (test-then-train) score of each example
    metrics: Metrics
    join_stats: dict[str, Any]
    served: np.ndarray  # the served vectors, one row per request, in request order


def _concat_examples(parts: list[Examples], k: int) -> Examples:
    if not parts:
        return Examples(
            [],
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, k)),
            np.zeros(0),
            np.zeros(0, bool),
        )
    return Examples(
        [i for p in parts for i in p.request_id],
        np.concatenate([p.at for p in parts]),
        np.concatenate([p.release for p in parts]),
        np.concatenate([p.X.reshape(-1, k) for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.timed_out for p in parts]),
    )


def replay(
    feature_set: Any,
    transforms: Any,
    events: Any,
    requests: Any,
    labels: Any,
    learner: Any,
    *,
    vectors: Any = None,
    wait: Duration,
    on_timeout: Union[str, float] = "drop",
    allowed_lateness: Duration = 0,
    max_pending: int = 1_000_000,
    metrics_window: Optional[Duration] = None,
    request_id: str = "request_id",
    at: str = "at",
    label_time: str = "at",
    label: str = "label",
) -> Replay:
    """Reproduce offline what a service served, joined and learned.

    `requests`: one row per prediction (`request_id`, the entity key column, `at`, and any
    request-time fields the `transforms` read). `labels`: `request_id`, `label_time`, `label`.
    The served vectors are ``transforms`` applied to ``feature_set.backfill(events, requests)``
    (the features as of each request's `at`: what an online engine that had ingested the
    events in time order served). Requests and labels then go through a :class:`LabelJoin` in
    time order (requests first on ties), and the released examples train `learner` (a
    :class:`Logistic` / :class:`LinearRegression`, changed in place) test-then-train.

    The examples, their order, the progressive scores and the final model are bit for bit
    those of a live service fed the same stream (see docs/learning.md).

    `vectors`: the served vectors themselves (one row per request, in the requests' order),
    instead of `feature_set` / `transforms` / `events` (pass None for those three): for a
    service whose vector concatenates several feature sets' vectors, computed offline the same
    way (backfill, then each set's transforms), as the flights notebook does.
    """
    from . import _io

    req = _io.to_table(requests, "requests")
    if vectors is not None:
        if feature_set is not None or transforms is not None or events is not None:
            raise SpecError(
                "replay: give either vectors= or feature_set / transforms / events, not both"
            )
        X = np.ascontiguousarray(vectors, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] != req.num_rows:
            raise SchemaError(
                f"vectors: expected a 2-d array with one row per request ({req.num_rows}), "
                f"got shape {X.shape}"
            )
    else:
        t = getattr(transforms, "_t", transforms)
        feats = feature_set.backfill(events, req, time=at, progress=False)
        if not isinstance(t, _core.Transforms):
            raise TypeError(
                f"transforms: expected an rtml.Transforms, got {type(transforms).__name__}"
            )
        X = np.ascontiguousarray(t.transform_numpy(feats), dtype=np.float64)
    lab = _io.to_table(labels, "labels")
    join = LabelJoin(
        wait, on_timeout=on_timeout, max_pending=max_pending, allowed_lateness=allowed_lateness
    )
    metrics = Metrics(metrics_window)
    req_t = join._clock.many(req.column(at), at)
    lab_t = join._clock.many(lab.column(label_time), label_time)
    req_ids = req.column(request_id).to_pylist()
    lab_ids = lab.column(request_id).to_pylist()
    lab_y = np.ascontiguousarray(lab.column(label).to_numpy(zero_copy_only=False), dtype=np.float64)
    # time order, requests before labels at the same instant, each stream's own order kept
    order = np.lexsort(
        (
            np.r_[np.arange(len(req_t)), np.arange(len(lab_t))],
            np.r_[np.zeros(len(req_t)), np.ones(len(lab_t))],
            np.r_[req_t, lab_t],
        )
    )
    is_label = order >= len(req_t)
    idx = np.where(is_label, order - len(req_t), order)
    parts: list[Examples] = []
    preds: list[np.ndarray] = []
    # runs of consecutive requests / labels go through the join in one call each
    bounds = np.flatnonzero(np.diff(is_label.astype(np.int8))) + 1
    for run in np.split(np.arange(len(order)), bounds):
        if not len(run):
            continue
        rows = idx[run]
        if is_label[run[0]]:
            join.labels([lab_ids[i] for i in rows], lab_t[rows], lab_y[rows])
            ex = join.drain()
            if len(ex):
                preds.append(learner.progressive(ex.X, ex.y, ex.release, metrics))
                parts.append(ex)
        else:
            join.serve_many([req_ids[i] for i in rows], req_t[rows], X[rows])
    join.flush()
    ex = join.drain()
    if len(ex):
        preds.append(learner.progressive(ex.X, ex.y, ex.release, metrics))
        parts.append(ex)
    k = X.shape[1]
    return Replay(
        learner,
        _concat_examples(parts, k),
        np.concatenate(preds) if preds else np.zeros(0),
        metrics,
        join.stats(),
        X,
    )


# ---------------------------------------------------------------------------------- adapters


def to_river(model: Any, examples: Examples, feature_names: Optional[Sequence[str]] = None) -> Any:
    """Feed joined examples to a River model (``learn_one(dict, y)``), in order. Outside the
    bit-exact promise (River's arithmetic is its own). Returns the model."""
    names = (
        list(feature_names)
        if feature_names is not None
        else [f"x{i}" for i in range(examples.X.shape[1])]
    )
    for row, y in zip(examples.X.tolist(), examples.y.tolist(), strict=False):
        model.learn_one(dict(zip(names, row, strict=False)), y)
    return model


def to_sklearn(
    model: Any,
    examples: Examples,
    classes: Optional[Sequence[Any]] = (0.0, 1.0),
    batch_size: Optional[int] = None,
) -> Any:
    """Feed joined examples to a scikit-learn estimator's ``partial_fit``, in order (all at
    once, or in batches of `batch_size`). `classes` is passed to classifiers (None for
    regressors). Outside the bit-exact promise. Returns the model."""
    n = len(examples.y)
    step = batch_size or max(n, 1)
    for s in range(0, n, step):
        X, y = examples.X[s : s + step], examples.y[s : s + step]
        if classes is not None:
            model.partial_fit(X, y, classes=np.asarray(classes))
        else:
            model.partial_fit(X, y)
    return model
