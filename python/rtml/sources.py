"""Event sources for `rtml.Runner`: a replay of files / tables, Kafka, Redis Streams.

Every source delivers *batches*: the events of one partition, in that partition's order, with
the position of each event and the position to resume from after the batch. Partitions are
explicit; positions are plain numbers (Kafka offsets, replay row positions) or Redis entry
IDs, and the runner stores them inside its checkpoints (the broker's committed offsets are
informational only). docs/streaming.md describes the contract.

>>> import rtml, rtml.sources, pyarrow as pa
>>> events = pa.table({"user": [1, 2, 1], "ts": pa.array([3, 1, 2], pa.timestamp("s")),
...                    "amount": [1.0, 2.0, 3.0]})
>>> src = rtml.sources.replay(events, "ts", partitions=3, key="user")
>>> [rtml.sources.partition_of(k, 3) for k in (1, 2)]
[2, 1]
>>> [o.tolist() for o in src.arrival_order()]   # row indices per partition, in arrival order
[[], [1], [2, 0]]
"""

from __future__ import annotations

import bisect
import datetime as _dt
import itertools
import logging
import operator
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import _io
from .exceptions import RtmlError, SchemaError, SpecError

__all__ = [
    "Batch",
    "Source",
    "SourceError",
    "RetentionError",
    "replay",
    "replay_messages",
    "kafka",
    "redis_stream",
    "partition_of",
    "message_key",
    "ReplaySource",
    "KafkaSource",
    "RedisStreamSource",
    "wal",
    "WalSource",
]

Position = Union[int, str]


class SourceError(RtmlError):
    """A source that cannot deliver: broker unreachable past the retries, an offset older than
    the broker's retention, a stream that does not exist (names the partition)."""


def message_key(key: Any) -> bytes:
    """The message key a producer gives an event of entity `key` so that it lands where
    `partition_of` (and so `replay`, `Runner.get`) expects it: ``str(key)`` in UTF-8 for an int
    or str key; for a composite key (a tuple with one int or str per key column, as
    ``entity=["driver_id", "zone"]`` takes) the engine's encoding of the tuple (src/key.rs,
    through ``rtml._core.encode_keys``).

    >>> message_key("driver-7"), message_key(("d7", 3))
    (b'driver-7', b's2:d7i3;')
    """
    if isinstance(key, (tuple, list)):
        from ._keyhash import encode_key

        return encode_key(key).encode("utf-8")
    return str(key).encode("utf-8")


class RetentionError(SourceError):
    """A checkpoint's position that the stream no longer holds: the events after it were
    deleted (Kafka retention, a trimmed Redis stream, a truncated write-ahead log), so the
    checkpoint cannot be resumed exactly. Names the partition, the position and (once the
    runner adds it) the checkpoint file; nothing is written.

    >>> e = RetentionError("partition 2: stream 'ev' lost entries", 2, "17-0")
    >>> e.with_path("ckpt/partition-2.ckpt").path
    'ckpt/partition-2.ckpt'
    """

    def __init__(
        self,
        message: str,
        partition: int,
        position: Optional[Position],
        path: Optional[str] = None,
    ) -> None:
        self.message = message
        self.partition = partition
        self.position = position
        self.path = path
        where = "" if path is None else f" (checkpoint {path}; nothing was written)"
        super().__init__(message + where)

    def with_path(self, path: Any) -> "RetentionError":
        """The same error naming the checkpoint file."""
        return RetentionError(self.message, self.partition, self.position, str(path))


def partition_of(key: Any, partitions: int) -> int:
    """The partition of an entity key: CRC-32 of ``message_key(key)`` (``str(key)`` in UTF-8;
    a composite key's encoding for a tuple), modulo `partitions`.

    This is librdkafka's default ("consistent_random") partitioner for a message whose key
    is ``message_key(key)``, so producers using confluent-kafka / librdkafka with that message
    key put each entity where `replay` and `Runner.get` expect it.

    >>> partition_of("driver-7", 4) == partition_of("driver-7", 4)
    True
    """
    if partitions <= 1:
        return 0
    return zlib.crc32(message_key(key)) % partitions


@dataclass
class Batch:
    """Events of one partition, in order.

    `events`: a pyarrow Table of event rows (replay), or None when `payloads` holds the raw
    message bytes (Kafka, Redis) for the runner's decoder. `positions`: the position of each
    event / payload. `end`: the position to resume from after this batch.
    """

    partition: int
    positions: list[Position]
    end: Position
    events: Optional[pa.Table] = None
    payloads: Optional[list[Optional[bytes]]] = None

    def __len__(self) -> int:
        return len(self.positions)


AssignFn = Callable[[list[int]], dict[int, Optional[Position]]]
RevokeFn = Callable[[list[int]], None]


class Source:
    """What a runner reads. Subclasses: ReplaySource, KafkaSource, RedisStreamSource."""

    #: identifies the stream in checkpoints (a checkpoint of another stream is refused)
    name: str = "source"
    #: whether batches carry raw payloads (to decode) rather than event tables
    raw: bool = False

    def bind(self, feature_set: Any) -> None:
        """Called once by the runner with its feature set (defaults for key / timestamp)."""

    def open(self, on_assign: AssignFn, on_revoke: RevokeFn) -> None:
        """Start reading. `on_assign(partitions)` returns each partition's resume position
        (None: from the beginning); `on_revoke(partitions)` is called before partitions go."""
        raise NotImplementedError

    def poll(self, max_records: int, timeout: float) -> list[Batch]:
        raise NotImplementedError

    def idle(self) -> bool:
        """Whether everything available now has been delivered."""
        raise NotImplementedError

    def lag(self) -> dict[int, Optional[int]]:
        """Events available but not yet delivered, per assigned partition (None: unknown)."""
        return {}

    def commit(self, positions: dict[int, Position]) -> None:
        """Tell the broker how far the runner got (informational; never read back)."""

    def partition_of(self, key: Any) -> Optional[int]:
        """The partition holding `key`, if the source knows the partitioning."""
        return None

    def errors(self) -> dict[str, int]:
        """Counters of transient source errors (retries)."""
        return {}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------
# replay


def _ns_of(table: pa.Table, column: str, unit: Optional[str]) -> np.ndarray:
    if column not in table.column_names:
        raise SchemaError(f"column '{column}': not in the events (columns: {table.column_names})")
    col = table.column(column)
    t = col.type
    if pa.types.is_timestamp(t):
        factor = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}[t.unit]
        v = pc.cast(col, pa.int64())
    elif pa.types.is_date(t):
        v = pc.cast(pc.cast(col, pa.timestamp("ms")), pa.int64())
        factor = 1_000_000
    elif pa.types.is_integer(t):
        if unit is None:
            raise SchemaError(
                f"column '{column}': integer times need a unit (timestamp_unit='s'|'ms'|'us'|'ns')"
            )
        factor = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}[unit]
        v = pc.cast(col, pa.int64())
    else:
        raise SchemaError(
            f"column '{column}': expected a timestamp, date or integer column, got {t}"
        )
    if v.null_count:
        raise SchemaError(f"column '{column}': null times cannot be ordered for replay")
    out: np.ndarray = v.to_numpy() * np.int64(factor)
    return out


def _duration_ns(value: Any, what: str) -> int:
    """'250ms', '5s', '2m', '1h', '1d', a timedelta, or seconds as a number."""
    if value is None:
        return 0
    if isinstance(value, _dt.timedelta):
        return int(round(value.total_seconds() * 1e9))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise SpecError(f"{what}: must not be negative, got {value!r}")
        return int(round(value * 1e9))
    if isinstance(value, str):
        s = value.strip()
        for suffix, mult in (
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
            ("s", 10**9),
            ("m", 60 * 10**9),
            ("h", 3600 * 10**9),
            ("d", 86400 * 10**9),
        ):
            if s.endswith(suffix):
                num = s[: -len(suffix)]
                try:
                    x = float(num)
                except ValueError:
                    break
                if x < 0:
                    break
                return int(round(x * mult))
    raise SpecError(
        f"{what}: expected a duration such as '500ms', '5s', '1m' or a timedelta, got {value!r}"
    )


class ReplaySource(Source):
    """A finite, deterministic stream from a table (see `replay`)."""

    raw = False

    def __init__(
        self,
        data: Any,
        timestamp: Optional[str],
        arrival: Optional[str],
        partitions: int,
        key: Union[str, Sequence[str], None],
        seed: int,
        max_delay: Any,
        timestamp_unit: Optional[str],
        name: Optional[str],
    ) -> None:
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise SpecError(f"replay.partitions: expected a positive int, got {partitions!r}")
        if arrival is not None and max_delay is not None:
            raise SpecError(
                "replay: give either arrival= (a column) or max_delay= (a random delay), not both"
            )
        self._table = _io.to_table(data, "replay")
        self._timestamp = timestamp
        self._arrival = arrival
        self.partitions = partitions
        self._key = key
        self._seed = seed
        self._max_delay = _duration_ns(max_delay, "replay.max_delay")
        self._unit = timestamp_unit
        self.name = name or "replay"
        self._order: Optional[list[np.ndarray]] = None
        self._pos: dict[int, int] = {}
        self._rr = 0

    def bind(self, feature_set: Any) -> None:
        if self._timestamp is None:
            self._timestamp = feature_set.timestamp
        if self._key is None:
            self._key = feature_set.entity
        if self._unit is None:
            self._unit = feature_set._spec.timestamp_unit

    def arrival_order(self) -> list[np.ndarray]:
        """Row indices of the input, per partition, in delivery order."""
        if self._order is not None:
            return self._order
        if self._timestamp is None or self._key is None:
            raise SpecError(
                "replay: name the timestamp and key columns (or give the source to a Runner)"
            )
        t = self._table
        n = t.num_rows
        if self._arrival is not None:
            when = _ns_of(t, self._arrival, self._unit)
        else:
            when = _ns_of(t, self._timestamp, self._unit)
            if self._max_delay:
                rng = np.random.default_rng(self._seed)
                when = when + rng.integers(
                    0, self._max_delay, size=n, endpoint=True, dtype=np.int64
                )
        order = np.argsort(when, kind="stable")
        cols = [self._key] if isinstance(self._key, str) else list(self._key)
        for c in cols:
            if c not in t.column_names:
                raise SchemaError(f"column '{c}': not in the events (columns: {t.column_names})")
        if self.partitions == 1:
            parts = np.zeros(n, dtype=np.int64)
        else:
            for c in cols:
                if t.column(c).null_count:
                    raise SchemaError(f"column '{c}': null keys cannot be partitioned")
            from ._keyhash import entity_keys

            # a composite key is partitioned by its encoding: message_key of the tuple
            enc = pc.dictionary_encode(entity_keys(t, cols))
            if isinstance(enc, pa.ChunkedArray):
                enc = enc.combine_chunks()
            uniq = enc.dictionary.to_pylist()
            part_of_uniq = np.array(
                [partition_of(k, self.partitions) for k in uniq], dtype=np.int64
            )
            idx = enc.indices
            if idx.null_count:
                raise SchemaError(f"column '{self._key}': null keys cannot be partitioned")
            parts = part_of_uniq[idx.to_numpy()]
        ordered_parts = parts[order]
        self._order = [order[ordered_parts == p] for p in range(self.partitions)]
        return self._order

    def open(self, on_assign: AssignFn, on_revoke: RevokeFn) -> None:
        self.arrival_order()
        start = on_assign(list(range(self.partitions)))
        self._pos = {p: int(start.get(p) or 0) for p in range(self.partitions)}
        for p, pos in self._pos.items():
            if pos < 0 or pos > len(self._order[p]):  # type: ignore[index]
                raise SourceError(
                    f"partition {p}: position {pos} is outside the replay (0..{len(self._order[p])})"  # type: ignore[index]
                )

    def poll(self, max_records: int, timeout: float) -> list[Batch]:
        assert self._order is not None, "open() first"
        out = []
        for p in range(self.partitions):
            pos = self._pos[p]
            idx = self._order[p][pos : pos + max_records]
            if len(idx) == 0:
                continue
            events = self._table.take(pa.array(idx))
            end = pos + len(idx)
            out.append(Batch(p, list(range(pos, end)), end, events=events))
            self._pos[p] = end
        return out

    def idle(self) -> bool:
        return self._order is not None and all(
            self._pos[p] >= len(o) for p, o in enumerate(self._order)
        )

    def lag(self) -> dict[int, Optional[int]]:
        if self._order is None:
            return {}
        return {p: len(o) - self._pos.get(p, 0) for p, o in enumerate(self._order)}

    def partition_of(self, key: Any) -> Optional[int]:
        return partition_of(key, self.partitions)


def replay(
    data: Any,
    timestamp: Optional[str] = None,
    arrival: Optional[str] = None,
    partitions: int = 1,
    *,
    key: Union[str, Sequence[str], None] = None,
    seed: int = 0,
    max_delay: Any = None,
    timestamp_unit: Optional[str] = None,
    name: Optional[str] = None,
) -> ReplaySource:
    """Replay events (Parquet / CSV / Feather paths, pyarrow, pandas, polars) as a stream.

    Delivery order: by the `arrival` column if given; else by event time plus a random delay
    drawn uniformly from ``[0, max_delay]`` with `seed` (so events arrive out of order by at
    most `max_delay`, deterministically); else by event time. Ties keep the input order.
    Each event goes to partition ``partition_of(key, partitions)``; a partition's position is
    the number of its events delivered so far. `key` / `timestamp` default to the runner's
    feature set's entity and timestamp (`key`: a list of columns for a composite entity, whose
    rows are partitioned by the encoded key, as ``partition_of`` of the tuple).

    >>> import rtml, rtml.sources, pyarrow as pa
    >>> t = pa.table({"k": [1, 1, 1], "ts": pa.array([0, 10, 20], pa.timestamp("s"))})
    >>> src = rtml.sources.replay(t, "ts", key="k", max_delay="15s", seed=1)
    >>> [o.tolist() for o in src.arrival_order()]
    [[0, 2, 1]]
    """
    return ReplaySource(
        data, timestamp, arrival, partitions, key, seed, max_delay, timestamp_unit, name
    )


class MessageReplaySource(Source):
    """Raw message payloads replayed from memory (see `replay_messages`)."""

    raw = True

    def __init__(
        self,
        payloads: Sequence[Optional[bytes]],
        keys: Optional[Sequence[Any]],
        partitions: int,
        fields: Optional[dict[str, str]],
        decode: Optional[Callable[[bytes], dict[str, Any]]],
        timestamp_unit: Optional[str],
        types: Optional[dict[str, str]],
        name: Optional[str],
    ) -> None:
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise SpecError(
                f"replay_messages.partitions: expected a positive int, got {partitions!r}"
            )
        if keys is not None and len(keys) != len(payloads):
            raise SpecError(f"replay_messages.keys: {len(keys)} keys for {len(payloads)} payloads")
        if keys is None and partitions > 1:
            raise SpecError("replay_messages: give keys= to spread payloads over partitions")
        self.partitions = partitions
        self.fields = dict(fields or {})
        self.decode = decode
        self.timestamp_unit = timestamp_unit
        self.types = dict(types or {})
        self.name = name or "messages"
        self._by_part: list[list[Optional[bytes]]] = [[] for _ in range(partitions)]
        if keys is None:
            self._by_part[0] = list(payloads)
        else:
            cache: dict[Any, int] = {}
            for k, m in zip(keys, payloads):
                p = cache.get(k)
                if p is None:
                    p = cache[k] = partition_of(k, partitions)
                self._by_part[p].append(m)
        self._pos: dict[int, int] = {}

    def open(self, on_assign: AssignFn, on_revoke: RevokeFn) -> None:
        start = on_assign(list(range(self.partitions)))
        self._pos = {p: int(start.get(p) or 0) for p in range(self.partitions)}

    def poll(self, max_records: int, timeout: float) -> list[Batch]:
        out = []
        for p, msgs in enumerate(self._by_part):
            pos = self._pos[p]
            chunk = msgs[pos : pos + max_records]
            if chunk:
                end = pos + len(chunk)
                out.append(Batch(p, list(range(pos, end)), end, payloads=chunk))
                self._pos[p] = end
        return out

    def idle(self) -> bool:
        return all(self._pos.get(p, 0) >= len(m) for p, m in enumerate(self._by_part))

    def lag(self) -> dict[int, Optional[int]]:
        return {p: len(m) - self._pos.get(p, 0) for p, m in enumerate(self._by_part)}

    def partition_of(self, key: Any) -> Optional[int]:
        return partition_of(key, self.partitions)


def replay_messages(
    payloads: Sequence[Optional[bytes]],
    keys: Optional[Sequence[Any]] = None,
    partitions: int = 1,
    *,
    fields: Optional[dict[str, str]] = None,
    decode: Optional[Callable[[bytes], dict[str, Any]]] = None,
    timestamp_unit: Optional[str] = None,
    types: Optional[dict[str, str]] = None,
    name: Optional[str] = None,
) -> MessageReplaySource:
    """Raw message payloads (JSON bytes, as a broker would deliver them) replayed from memory,
    in the given order; message ``i`` goes to partition ``partition_of(keys[i], partitions)``.
    Decoded like `kafka` payloads (`fields`, `timestamp_unit`, `types`, `decode`).

    >>> import rtml.sources
    >>> src = rtml.sources.replay_messages([b'{"user": 1, "ts": 5}'], timestamp_unit="s")
    >>> src.lag()
    {0: 1}
    """
    return MessageReplaySource(
        payloads, keys, partitions, fields, decode, timestamp_unit, types, name
    )


# ---------------------------------------------------------------------------------------
# Kafka


#: The longest single wait of `KafkaSource.poll` on the consumer (seconds): a poll with a longer
#: timeout waits in slices of this, returning early once every partition is at its end.
_CONSUME_SLICE = 0.02
#: Messages per consume call of `KafkaSource.poll`: fewer than the garbage collector's
#: first threshold (700 allocations), so the Message objects of one call are gone before a
#: collection could find them alive (`KafkaSource._consume`).
_CONSUME_CHUNK = 500


class _Columns:
    """The messages of one `KafkaSource.poll`, column-wise: partition, offset and payload of
    each message (errors and EOF events left out), and where EOF events came."""

    __slots__ = ("parts", "offsets", "values", "eof_after", "read", "ends_with_event")

    def __init__(self) -> None:
        self.parts: list[int] = []
        self.offsets: list[Position] = []  # (ints)
        self.values: list[Optional[bytes]] = []
        #: partition -> messages before its last EOF event (an index into the columns)
        self.eof_after: dict[int, int] = {}
        self.read = 0  # messages and events consumed
        self.ends_with_event = False  # the last thing consumed was an EOF or error event

    def last_at(self) -> dict[int, int]:
        """partition -> index of its last message."""
        return {p: i for i, p in enumerate(self.parts)}

    def drop(self, partitions: set[int]) -> None:
        """Forget the messages and EOF events of `partitions`."""
        keep = [i for i, p in enumerate(self.parts) if p not in partitions]
        if len(keep) == len(self.parts):
            for p in partitions:
                self.eof_after.pop(p, None)
            return
        # an EOF event after n messages comes after those of them that are kept
        eof = {
            p: bisect.bisect_left(keep, n) for p, n in self.eof_after.items() if p not in partitions
        }
        self.parts = [self.parts[i] for i in keep]
        self.offsets = [self.offsets[i] for i in keep]
        self.values = [self.values[i] for i in keep]
        self.eof_after = eof


class KafkaSource(Source):
    """Kafka topic partitions through confluent-kafka (see `kafka`)."""

    raw = True

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        format: str,
        fields: Optional[dict[str, str]],
        decode: Optional[Callable[[bytes], dict[str, Any]]],
        timestamp_unit: Optional[str],
        types: Optional[dict[str, str]],
        config: Optional[dict[str, Any]],
        partitioner: Union[str, Callable[[Any, int], int]],
        retry_backoff: float,
    ) -> None:
        if format != "json" and decode is None:
            raise SpecError(
                f"kafka.format: only 'json' is decoded natively; give decode= for {format!r}"
            )
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.fields = dict(fields or {})
        self.decode = decode
        self.timestamp_unit = timestamp_unit
        self.types = dict(types or {})
        self.name = f"kafka:{topic}"
        self._config = dict(config or {})
        self._partitioner = partitioner
        self._retry_backoff = retry_backoff
        self._consumer: Any = None
        self._assigned: dict[int, Optional[Position]] = {}
        self._eof: dict[int, bool] = {}
        self._next: dict[int, int] = {}
        self._n_partitions: Optional[int] = None
        self._errors = {"broker_errors": 0, "retries": 0}
        self._on_assign: Optional[AssignFn] = None
        self._on_revoke: Optional[RevokeFn] = None
        self._fatal: Optional[BaseException] = None
        # partitions revoked during the current `_consume` call (their messages held are stale)
        self._revoked: set[int] = set()

    def open(self, on_assign: AssignFn, on_revoke: RevokeFn) -> None:
        from confluent_kafka import Consumer

        self._on_assign, self._on_revoke = on_assign, on_revoke
        conf = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # an offset the broker no longer has is an error, never a silent jump
            "auto.offset.reset": "error",
            "enable.partition.eof": True,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "topic.metadata.refresh.interval.ms": 5_000,
            # While the runner is slower than the fetcher (catching up on a backlog), the
            # prefetch queue passes queued.min.messages and librdkafka postpones the partition's
            # next fetch by fetch.queue.backoff.ms: 1 s by default, long enough for the queue to
            # run dry (measured: 0.4 s stalls every ~240k events, docs/benchmarks.md, session 10)
            "fetch.queue.backoff.ms": 20,
            # a partition's end (EOF: `idle()`) is known when a fetch at the end answers, which
            # the broker may hold up to fetch.wait.max.ms (500 ms by default); new events are
            # answered at once either way
            "fetch.wait.max.ms": 100,
            # transport errors (broker down, ...) are retried by librdkafka with backoff; count them
            "error_cb": self._on_error,
            "logger": logging.getLogger("rtml.sources.kafka"),
        }
        conf.update(self._config)
        self._consumer = Consumer(conf)
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._assign_cb,
            on_revoke=self._revoke_cb,
            on_lost=self._revoke_cb,
        )

    def _on_error(self, err: Any) -> None:
        self._errors["broker_errors"] += 1
        try:
            if err.fatal():
                self._fatal = SourceError(f"kafka: fatal error: {err.str()}")
        except AttributeError:
            pass

    def _assign_cb(self, consumer: Any, tps: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        try:
            parts = [tp.partition for tp in tps]
            start = self._on_assign(parts) if self._on_assign else {}
            for p in parts:
                pos = start.get(p)
                if pos is None:
                    continue
                lo, _hi = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=10.0
                )
                if int(pos) < lo:
                    raise RetentionError(
                        f"partition {p} of topic {self.topic!r}: the checkpoint's offset {pos} is older than the "
                        f"broker's retention (first offset {lo}): events in between are gone",
                        p,
                        pos,
                    )
            out = []
            for p in parts:
                pos = start.get(p)
                self._assigned[p] = pos
                self._eof[p] = False
                if pos is not None:
                    self._next[p] = int(pos)
                else:
                    self._next.pop(p, None)
                out.append(
                    TopicPartition(self.topic, p, OFFSET_BEGINNING if pos is None else int(pos))
                )
            consumer.assign(out)
        except (
            BaseException
        ) as e:  # surfaced by the next poll (callbacks cannot raise through librdkafka)
            self._fatal = e
            consumer.assign([])

    def _revoke_cb(self, consumer: Any, tps: list[Any]) -> None:
        self._revoked.update(tp.partition for tp in tps)
        try:
            parts = [tp.partition for tp in tps if tp.partition in self._assigned]
            if parts and self._on_revoke:
                self._on_revoke(parts)
        except BaseException as e:
            self._fatal = e
        finally:
            for tp in tps:
                self._assigned.pop(tp.partition, None)
                self._eof.pop(tp.partition, None)
                self._next.pop(tp.partition, None)
            consumer.unassign()

    def _take(self, chunk: list[Any], cols: "_Columns") -> None:
        """Append the messages of `chunk` to `cols` (partition, offset, payload), noting EOF
        events and raising for errors that stop the runner. Column-wise with list
        comprehensions: a few method calls per message, no per-message branching in Python on
        the common path."""
        from confluent_kafka import KafkaError

        errs = [m.error() for m in chunk]
        if any(map(operator.is_not, errs, itertools.repeat(None))):
            # (not errs.count(None): KafkaError == None raises)
            good = []
            for m, err in zip(chunk, errs):
                if err is None:
                    good.append(m)
                    continue
                p = m.partition()
                if err.code() == KafkaError._PARTITION_EOF:
                    cols.eof_after[p] = len(cols.parts) + len(good)
                    continue
                if err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
                    raise RetentionError(
                        f"partition {p} of topic {self.topic!r}: the checkpoint's offset is no longer "
                        f"on the broker (older than its retention): {err.str()}",
                        p,
                        self._next.get(p),
                    )
                if err.fatal():
                    raise SourceError(f"kafka: fatal error: {err.str()}")
                self._errors["broker_errors"] += 1
            chunk = good
            cols.ends_with_event = errs[-1] is not None
        else:
            cols.ends_with_event = False
        cols.parts += [m.partition() for m in chunk]
        cols.offsets += [m.offset() for m in chunk]
        cols.values += [m.value() for m in chunk]

    def _consume(self, max_records: int, timeout: float) -> "_Columns":
        """Up to `max_records` messages within `timeout` seconds, as one
        ``consume(max_records, timeout)`` would read them, in two ways cheaper:

        * in chunks of at most `_CONSUME_CHUNK` messages, each taken apart into columns and
          dropped before the next: confluent-kafka's Message objects are tracked by Python's
          garbage collector, and 10,000 of them alive at once set off collections of every
          generation (the full ones scan every object of the process);
        * returning as soon as every assigned partition is at its end: librdkafka's batch
          consume waits out the whole timeout for a batch it cannot fill, so the last batch
          of a backlog (and every batch of a quiet stream) would wait `timeout` after its
          last event. With nothing new it waits `timeout`, as before.

        A rebalance inside a later consume call drops what the poll held of a partition it
        revoked (whoever holds that partition now reads it again from its checkpoint)."""
        consume = self._consumer.consume
        deadline = time.monotonic() + timeout
        cols = _Columns()
        wait = min(timeout, _CONSUME_SLICE)
        while True:
            self._revoked.clear()
            want = max_records - cols.read
            chunk = consume(num_messages=min(want, _CONSUME_CHUNK), timeout=wait)
            if self._revoked and cols.parts:
                cols.drop(self._revoked)
            if self._fatal is not None:
                break
            cols.read += len(chunk)
            self._take(chunk, cols)
            del chunk
            if cols.read >= max_records:
                break
            # Something came and its last event is an EOF or an error: every partition may be
            # at its end (else the last event is a message, whose partition is not).
            if cols.ends_with_event and self._at_end(cols):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait = min(left, _CONSUME_SLICE)
        return cols

    def _at_end(self, cols: "_Columns") -> bool:
        """Whether every assigned partition is at its end after `cols` (its last event there
        is an EOF, or it has nothing there and was at its end before)."""
        if not self._assigned:
            return False
        last = cols.last_at()
        for p in self._assigned:
            e = cols.eof_after.get(p)
            if p in last:
                if e is None or e <= last[p]:
                    return False
            elif e is None and not self._eof.get(p, False):
                return False
        return True

    def poll(self, max_records: int, timeout: float) -> list[Batch]:
        cols = self._consume(max_records, timeout)
        if self._fatal is not None:
            e, self._fatal = self._fatal, None
            raise e
        parts, offsets, values, eof_after = cols.parts, cols.offsets, cols.values, cols.eof_after
        out = []
        distinct = set(parts)
        last_at: dict[int, int] = {}
        for p in sorted(distinct):
            if p not in self._assigned:
                continue  # revoked meanwhile: its new owner reads it from the checkpoint
            if len(distinct) == 1:
                offs, vals = offsets, values
                last_at[p] = len(parts) - 1
            else:
                idx = [i for i, q in enumerate(parts) if q == p]
                offs = [offsets[i] for i in idx]
                vals = [values[i] for i in idx]
                last_at[p] = idx[-1]
            out.append(Batch(p, offs, int(offs[-1]) + 1, payloads=vals))
            self._next[p] = int(offs[-1]) + 1
        # at the end of a partition iff its last event here is an EOF after its last message
        for p in last_at:
            self._eof[p] = p in eof_after and eof_after[p] > last_at[p]
        for p in eof_after:
            if p in self._eof and p not in last_at:
                self._eof[p] = True
        if not parts:
            time.sleep(0)  # let rebalance callbacks of other threads run
        return out

    def idle(self) -> bool:
        return bool(self._assigned) and all(self._eof.get(p, False) for p in self._assigned)

    def assigned(self) -> list[int]:
        return sorted(self._assigned)

    def lag(self) -> dict[int, Optional[int]]:
        from confluent_kafka import TopicPartition

        out: dict[int, Optional[int]] = {}
        for p in list(self._assigned):
            try:
                lo, hi = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=1.0, cached=False
                )
                nxt = self._next.get(p, lo)
                out[p] = max(0, hi - max(nxt, lo))
            except Exception:
                out[p] = None
        return out

    def commit(self, positions: dict[int, Position]) -> None:
        from confluent_kafka import TopicPartition

        tps = [
            TopicPartition(self.topic, p, int(pos))
            for p, pos in positions.items()
            if p in self._assigned
        ]
        if not tps:
            return
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except Exception:
            self._errors["broker_errors"] += 1

    def partitions_for_topic(self) -> Optional[int]:
        if self._n_partitions is None and self._consumer is not None:
            try:
                md = self._consumer.list_topics(self.topic, timeout=5.0)
                t = md.topics.get(self.topic)
                if t is not None and t.error is None:
                    self._n_partitions = len(t.partitions)
            except Exception:
                return None
        return self._n_partitions

    def partition_of(self, key: Any) -> Optional[int]:
        n = self.partitions_for_topic()
        if n is None:
            return None
        if callable(self._partitioner):
            return int(self._partitioner(key, n))
        if self._partitioner == "crc32":
            return partition_of(key, n)
        return None

    def errors(self) -> dict[str, int]:
        return dict(self._errors)

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None


def kafka(
    bootstrap: str,
    topic: str,
    group: str,
    format: str = "json",
    *,
    fields: Optional[dict[str, str]] = None,
    decode: Optional[Callable[[bytes], dict[str, Any]]] = None,
    timestamp_unit: Optional[str] = None,
    types: Optional[dict[str, str]] = None,
    config: Optional[dict[str, Any]] = None,
    partitioner: Union[str, Callable[[Any, int], int]] = "crc32",
    retry_backoff: float = 0.5,
) -> KafkaSource:
    """A Kafka topic as a source (confluent-kafka, batched ``consume``).

    Partitions are assigned by the consumer group `group`; on assignment the runner loads each
    partition's checkpoint and the consumer starts at the offset stored *in it* (the group's
    committed offsets are written after each checkpoint for monitoring, never read).

    Payloads are JSON objects decoded in Rust (`format="json"`): `fields` maps the feature
    set's column names to JSON field names (default: the same names); `timestamp_unit` is the
    unit of numeric timestamps (default: the feature set's; RFC 3339 strings always work);
    `types` declares ``"float"`` or ``"str"`` for columns only counted (default ``"str"``).
    `decode=f` replaces the Rust decoder with ``f(payload: bytes) -> dict`` of one event (the
    slow path, for other formats; an exception marks the message malformed). `partitioner`:
    how producers chose the partition of a key (``"crc32"``: librdkafka's default with
    ``key=str(entity)``; a callable ``f(key, n_partitions)``; ``"unknown"``), used by
    `Runner.get` to find the engine of a key. `config`: extra confluent-kafka settings.
    """
    return KafkaSource(
        bootstrap,
        topic,
        group,
        format,
        fields,
        decode,
        timestamp_unit,
        types,
        config,
        partitioner,
        retry_backoff,
    )


# ---------------------------------------------------------------------------------------
# Redis Streams


def _id_tuple(entry_id: str) -> tuple[int, int]:
    a, _, b = entry_id.partition("-")
    return int(a), int(b or 0)


class RedisStreamSource(Source):
    """Redis Streams, one stream per partition (see `redis_stream`)."""

    raw = True

    def __init__(
        self,
        url: str,
        streams: Sequence[str],
        group: Optional[str],
        field: str,
        fields: Optional[dict[str, str]],
        decode: Optional[Callable[[bytes], dict[str, Any]]],
        timestamp_unit: Optional[str],
        types: Optional[dict[str, str]],
        assign: Optional[Iterable[int]],
        partitioner: Union[str, Callable[[Any, int], int]],
        socket_timeout: float,
    ) -> None:
        if isinstance(streams, str):
            streams = [streams]
        if not streams:
            raise SpecError("redis_stream.streams: give at least one stream name")
        self.url = url
        self.streams = list(streams)
        self.group = group
        self.field = field
        self.fields = dict(fields or {})
        self.decode = decode
        self.timestamp_unit = timestamp_unit
        self.types = dict(types or {})
        self.name = "redis:" + ",".join(self.streams)
        self._assign = sorted(set(assign)) if assign is not None else list(range(len(self.streams)))
        for p in self._assign:
            if not 0 <= p < len(self.streams):
                raise SpecError(
                    f"redis_stream.assign: partition {p} does not exist ({len(self.streams)} streams)"
                )
        self._partitioner = partitioner
        self._timeout = socket_timeout
        self._client: Any = None
        self._last: dict[int, str] = {}
        self._idle: dict[int, bool] = {}
        self._errors = {"broker_errors": 0, "retries": 0}

    def open(
        self,
        on_assign: AssignFn,
        on_revoke: RevokeFn,
        consumed: Optional[Callable[[int], int]] = None,
    ) -> None:
        import redis

        self._client = redis.Redis.from_url(self.url, socket_timeout=self._timeout)
        start = on_assign(list(self._assign))
        for p in self._assign:
            pos = start.get(p)
            self._last[p] = str(pos) if pos is not None else "0-0"
            self._idle[p] = False
            self._check_retention(p, consumed(p) if consumed is not None else 0)

    def _check_retention(self, p: int, consumed: int) -> None:
        """Refuse a checkpoint position whose successors are gone. Trimming (XTRIM, MAXLEN)
        removes the oldest entries: if the first entry left is after the position, the entries
        removed (entries-added - length) must all be ones this partition had read (`consumed`,
        counted from the stream's start); XDEL after the position is seen in
        max-deleted-entry-id."""
        last = self._last[p]
        if last == "0-0":
            return
        info = self._call(lambda: self._client.xinfo_stream(self.streams[p]), p, missing_ok=True)
        if not info:
            raise RetentionError(
                f"partition {p}: stream {self.streams[p]!r} does not exist but the checkpoint is at {last}",
                p,
                last,
            )

        def dec(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        lost = 0
        first = info.get("first-entry")
        if first is not None and _id_tuple(dec(first[0])) > _id_tuple(last):
            lost = int(info.get("entries-added", 0)) - int(info.get("length", 0)) - consumed
        mdel = info.get("max-deleted-entry-id")
        if lost > 0 or (mdel is not None and _id_tuple(dec(mdel)) > _id_tuple(last)):
            raise RetentionError(
                f"partition {p}: stream {self.streams[p]!r} lost entries after the checkpoint's position "
                f"{last} (trimmed or deleted): the checkpoint cannot be resumed exactly",
                p,
                last,
            )

    def _call(self, f: Callable[[], Any], p: Optional[int] = None, missing_ok: bool = False) -> Any:
        import redis

        delay = 0.05
        for attempt in range(8):
            try:
                return f()
            except redis.ResponseError as e:
                if missing_ok and "no such key" in str(e).lower():
                    return None
                raise SourceError(f"partition {p}: redis: {e}") from e
            except (redis.ConnectionError, redis.TimeoutError) as e:
                self._errors["broker_errors"] += 1
                if attempt == 7:
                    raise SourceError(f"redis at {self.url}: unavailable after retries: {e}") from e
                self._errors["retries"] += 1
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        return None

    def poll(self, max_records: int, timeout: float) -> list[Batch]:
        if not self._assign:
            time.sleep(timeout)
            return []
        req = {self.streams[p]: self._last[p] for p in self._assign}
        block = int(timeout * 1000) if timeout > 0 else None
        res = self._call(lambda: self._client.xread(req, count=max_records, block=block))
        out = []
        got = set()
        index = {s: p for p, s in enumerate(self.streams)}
        for stream, entries in res or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            p = index[name]
            if not entries:
                continue
            got.add(p)
            ids = []
            vals: list[Optional[bytes]] = []
            for eid, fields in entries:
                eid = eid.decode() if isinstance(eid, bytes) else eid
                ids.append(eid)
                v = fields.get(self.field.encode()) if fields else None
                if v is None:
                    v = fields.get(self.field) if fields else None
                vals.append(v if isinstance(v, bytes) or v is None else str(v).encode())
            self._last[p] = ids[-1]
            out.append(Batch(p, ids, ids[-1], payloads=vals))
        for p in self._assign:
            self._idle[p] = p not in got
        return out

    def idle(self) -> bool:
        return all(self._idle.get(p, False) for p in self._assign)

    def lag(self) -> dict[int, Optional[int]]:
        out: dict[int, Optional[int]] = {}
        for p in self._assign:
            try:
                n = self._client.xrange(
                    self.streams[p], min="(" + self._last[p], max="+", count=10_000
                )
                out[p] = len(n)
            except Exception:
                out[p] = None
        return out

    def commit(self, positions: dict[int, Position]) -> None:
        if self.group is None:
            return
        import redis

        for p, pos in positions.items():
            if p not in self._assign:
                continue
            try:
                try:
                    self._client.xgroup_setid(self.streams[p], self.group, str(pos))
                except redis.ResponseError:
                    self._client.xgroup_create(
                        self.streams[p], self.group, id=str(pos), mkstream=True
                    )
            except Exception:
                self._errors["broker_errors"] += 1

    def partition_of(self, key: Any) -> Optional[int]:
        if callable(self._partitioner):
            return int(self._partitioner(key, len(self.streams)))
        if self._partitioner == "crc32":
            return partition_of(key, len(self.streams))
        return None

    def errors(self) -> dict[str, int]:
        return dict(self._errors)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None


def redis_stream(
    url: str,
    streams: Union[str, Sequence[str]],
    group: Optional[str] = None,
    *,
    field: str = "data",
    fields: Optional[dict[str, str]] = None,
    decode: Optional[Callable[[bytes], dict[str, Any]]] = None,
    timestamp_unit: Optional[str] = None,
    types: Optional[dict[str, str]] = None,
    assign: Optional[Iterable[int]] = None,
    partitioner: Union[str, Callable[[Any, int], int]] = "crc32",
    socket_timeout: float = 5.0,
) -> RedisStreamSource:
    """Redis Streams as a source: stream ``streams[i]`` is partition ``i``.

    Each entry carries one event as a JSON object in its `field` (default ``"data"``), decoded
    like Kafka payloads (`fields`, `timestamp_unit`, `types`, `decode` as in `kafka`). The
    runner reads with ``XREAD`` from the entry ID stored in its checkpoint; with `group`, the
    consumer group's last-delivered ID is set after each checkpoint (informational). Scale
    out by giving each runner its own `assign=[partitions]`.
    """
    return RedisStreamSource(
        url,
        streams,
        group,
        field,
        fields,
        decode,
        timestamp_unit,
        types,
        assign,
        partitioner,
        socket_timeout,
    )


# ---------------------------------------------------------------------------------------
# the embedded write-ahead log


class WalSource(Source):
    """An `rtml.Wal` as a source (see `wal`): one partition, positions are log offsets."""

    raw = False
    partitions = 1

    def __init__(
        self, log: Any, kind: Optional[str], name: Optional[str], create: bool = True
    ) -> None:
        from .wal import Wal

        self._owns = False  # opened here (from a path): closed with the source
        if isinstance(log, Wal):
            self.log = log
        elif isinstance(log, (str, bytes)) or hasattr(log, "__fspath__"):
            self.log = Wal(log)
            self._owns = True
        else:
            raise SpecError(f"wal: expected a path or an rtml.Wal, got {type(log).__name__}")
        if kind is not None and (not isinstance(kind, str) or not kind):
            raise SpecError(f"wal.kind: expected a non-empty string, got {kind!r}")
        self.kind = kind
        self.name = name or ("wal" if kind is None else f"wal:{kind}")
        self._pos: Optional[int] = None
        self._committed: Optional[int] = None
        #: read no record at or after this position (None: up to the durable end)
        self.limit: Optional[int] = None
        self.skipped_records = 0
        #: kind and rows of the last record read (whether delivered or skipped)
        self.last_kind: Optional[str] = None
        self.last_rows = 0
        self.log._register(self)

    def open(self, on_assign: AssignFn, on_revoke: RevokeFn) -> None:
        start = on_assign([0]).get(0)
        first, end = self.log.first_position, self.log.durable_position
        if start is None:
            if first != 0:
                raise SourceError(
                    f"partition 0: the log {self.log.path} starts at position {first} (older "
                    "segments were truncated after a checkpoint) but there is no checkpoint: "
                    "the checkpoint directory is not the one this log was checkpointed with"
                )
            start = 0
        start = int(start)
        if start < first:
            raise RetentionError(
                f"partition 0: the checkpoint's position {start} was truncated away from the log "
                f"{self.log.path} (it starts at {first})",
                0,
                start,
            )
        if start > end:
            raise SourceError(
                f"partition 0: the checkpoint's position {start} is beyond the end of the log "
                f"{self.log.path} ({end}): acknowledged records are missing, or this is another log"
            )
        self._pos = self._committed = start

    def poll(self, max_records: int, timeout: float) -> list[Batch]:
        assert self._pos is not None, "open() first"
        from .wal import decode_batch

        if self._available() <= self._pos and timeout > 0:
            self.log.wait(self._pos, timeout)
        out: list[Batch] = []
        events = 0
        while events < max_records:
            stop = self._available()
            if self._pos >= stop:
                break
            recs = self.log.read_raw(self._pos, max_records=256)
            if not recs:
                break
            for pos, nxt, payload in recs:
                if pos >= stop:
                    break
                table, kind = decode_batch(payload)
                self.last_kind, self.last_rows = kind, table.num_rows
                if (self.kind is not None and kind != self.kind) or table.num_rows == 0:
                    # another kind's record: the position moves over it, nothing is applied
                    out.append(Batch(0, [], nxt, events=None))
                    self.skipped_records += 1
                else:
                    # one record = one arrival: one batch, every event at the record's position
                    out.append(Batch(0, [pos] * table.num_rows, nxt, events=table))
                    events += table.num_rows
                self._pos = nxt
                if events >= max_records:
                    break
        return out

    def _available(self) -> int:
        end = self.log.durable_position
        return end if self.limit is None else min(end, self.limit)

    def idle(self) -> bool:
        return self._pos is not None and self._pos >= self._available()

    def lag(self) -> dict[int, Optional[int]]:
        if self._pos is None:
            return {}
        return {0: 0 if self.idle() else None}

    def commit(self, positions: dict[int, Position]) -> None:
        """The runner checkpointed up to `positions[0]`: truncate what every reader covers."""
        pos = positions.get(0)
        if pos is not None:
            self._committed = int(pos)
            self.log._truncate_covered()

    def partition_of(self, key: Any) -> Optional[int]:
        return 0

    def close(self) -> None:
        """Release the log if this source opened it (from a path); a shared `Wal` stays open."""
        if self._owns:
            self.log.close()


def wal(log: Any, *, kind: Optional[str] = None, name: Optional[str] = None) -> WalSource:
    """An embedded write-ahead log (`rtml.Wal`, or the path of one) as a source.

    One partition; a position is a byte offset in the log; each record (one `Wal.append`) is
    delivered as one batch, so the runner applies exactly the arrivals the writers appended.
    `kind`: deliver only records appended with that `kind` (several runners, one per feature
    set, can follow one log). Only durable records are read. After each checkpoint the log
    deletes the segments that every source opened on it has checkpointed past.

    >>> import rtml, rtml.sources, pyarrow as pa, tempfile
    >>> fs = rtml.FeatureSet(entity="user", timestamp="ts", features=[rtml.count(window="1h")])
    >>> log = rtml.Wal(tempfile.mkdtemp())
    >>> pos = log.append(pa.table({"user": [1, 1], "ts": pa.array([1, 2], pa.timestamp("s", tz="UTC"))}))
    >>> r = rtml.Runner(fs, rtml.sources.wal(log), tempfile.mkdtemp())
    >>> r.run_until_idle()
    2
    >>> r.positions[0] == log.durable_position
    True
    """
    return WalSource(log, kind, name)


def _decoder_config(
    source: Any, feature_set: Any
) -> tuple[
    Union[tuple[str, str], list[tuple[str, str]]],
    tuple[str, str],
    list[tuple[str, str, bool]],
    Optional[str],
]:
    """(entity, timestamp, values, unit) for `_core.JsonDecoder` from a raw source's options;
    `entity` is one (column, JSON field) pair, or a list of them (one per key column) for a
    composite entity."""
    spec = feature_set._spec
    ent: list[str] = list(spec.entity_columns)
    f = source.fields
    known = {*ent, spec.timestamp, *(c for c, _ in spec.value_columns)}
    known |= {feature_set.dedupe_on} - {None}  # the event-id column (dedupe_on)
    for name in f:
        if name not in known:
            raise SpecError(
                f"fields: {name!r} is not a column of the feature set (columns: {sorted(known)})"
            )
    values = []
    for col, numeric in spec.value_columns:
        t = source.types.get(col)
        if t is not None and t not in ("float", "str"):
            raise SpecError(f"types[{col!r}]: expected 'float' or 'str', got {t!r}")
        if numeric and t == "str":
            raise SpecError(f"types[{col!r}]: the feature set reads {col!r} as numbers")
        values.append((col, f.get(col, col), bool(numeric or t == "float")))
    unit = source.timestamp_unit or spec.timestamp_unit
    pairs = [(c, f.get(c, c)) for c in ent]
    return (
        pairs[0] if len(pairs) == 1 else pairs,
        (spec.timestamp, f.get(spec.timestamp, spec.timestamp)),
        values,
        unit,
    )
