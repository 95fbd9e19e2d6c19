"""`rtml.Runner`: a source's partitions into online engines, checkpointed exactly once.

Each partition has its own `OnlineEngine` (its own watermark) and its own checkpoint file,
``<checkpoint_dir>/partition-<p>.ckpt``, holding the engine's state *and* the partition's source
position together, written atomically (temp file, fsync, rename, directory fsync) and
checksummed. On start (and when a rebalance hands it a partition) the runner loads the file and
resumes the source from the position inside it. docs/streaming.md has the format and the
exactly-once argument.

>>> import rtml, rtml.sources, pyarrow as pa, tempfile
>>> from rtml.runner import Runner
>>> fs = rtml.FeatureSet(entity="user", timestamp="ts", features=[rtml.count(window="1h")])
>>> events = pa.table({"user": [1, 2, 1], "ts": pa.array([1, 2, 3], pa.timestamp("s", tz="UTC"))})
>>> r = Runner(fs, rtml.sources.replay(events), tempfile.mkdtemp())
>>> r.run_until_idle()
3
>>> r.get(1, at="1970-01-01T00:00:04Z")["count_1h"]
2
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import pyarrow as pa

from . import _core
from .exceptions import RtmlError, SnapshotError, SpecError
from .online import OnlineEngine
from .sources import (
    Batch,
    Position,
    RedisStreamSource,
    RetentionError,
    Source,
    SourceError,
    _decoder_config,
    _duration_ns,
)

__all__ = [
    "Runner",
    "CheckpointError",
    "read_checkpoint",
    "load_checkpoints",
    "CHECKPOINT_VERSION",
    "main_run",
]

MAGIC = b"RTMLCKPT"
#: checkpoint container format version (the embedded engine snapshot has its own)
CHECKPOINT_VERSION = 1
#: The dead-letter reason of an event the engine's watermark guard rejected (`max_ahead`).
AHEAD_REASON = "ahead of watermark"
_HEADER = struct.Struct("<8sIIQI")  # magic, version, meta length, snapshot length, CRC-32
#: Partitions checkpointed at the same time (each holds its snapshot in memory meanwhile).
_CHECKPOINT_THREADS = 4


class CheckpointError(SnapshotError):
    """A checkpoint file that is truncated, corrupted, of an unknown version, or written for
    another feature set, stream or partition. Names the partition and the file; the runner
    stops without writing anything."""

    def __init__(
        self, partition: Optional[int], path: Union[str, os.PathLike[str]], message: str
    ) -> None:
        self.partition = partition
        self.path = os.fspath(path)
        super().__init__(f"checkpoint of partition {partition} ({self.path}): {message}")


def _spec_hash(spec_json: str) -> str:
    return hashlib.sha256(spec_json.encode()).hexdigest()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(d: Path, only_rtml: bool) -> None:
    """Temp files of runners killed mid-write (`...rtml-snap-<pid>-...`, `.<file>.tmp-<pid>`)."""
    import re

    pat = re.compile(r"(?:rtml-(?:snap|restore)-(\d+)-|\.tmp-(\d+)$)")
    try:
        entries = list(d.iterdir())
    except OSError:
        return
    for f in entries:
        if not f.name.startswith(".") or (only_rtml and "rtml-" not in f.name):
            continue
        m = pat.search(f.name)
        if m is None:
            continue
        pid = int(m.group(1) or m.group(2))
        if pid != os.getpid() and not _pid_alive(pid):
            try:
                f.unlink()
            except OSError:
                pass


def _time_order(events: Any, ts: str, n: int) -> list[int]:
    """Indices of `events` (an Arrow table or a list of row dicts) in event-time order (stable);
    the given order where the times cannot be ordered."""
    import pyarrow.compute as pc

    try:
        if isinstance(events, list):
            times = pa.array([row.get(ts) if isinstance(row, dict) else None for row in events])
        else:
            times = events.column(ts)
        if times.null_count:
            return list(range(n))
        idx: list[int] = pc.sort_indices(times, options=None).to_pylist()
        return idx
    except (pa.ArrowException, TypeError, ValueError, KeyError, OverflowError):
        return list(range(n))


def encode_checkpoint(meta: dict[str, Any], snapshot: bytes) -> list[bytes]:
    m = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    crc = zlib.crc32(snapshot, zlib.crc32(m))
    return [_HEADER.pack(MAGIC, CHECKPOINT_VERSION, len(m), len(snapshot), crc), m, snapshot]


def read_checkpoint(
    path: Union[str, os.PathLike[str]], partition: Optional[int] = None
) -> tuple[dict[str, Any], bytes]:
    """(metadata, engine snapshot bytes) of a checkpoint file, verified (CheckpointError)."""
    p = Path(path)
    data = p.read_bytes()

    def bad(m: str) -> CheckpointError:
        return CheckpointError(partition, p, m)

    if len(data) < _HEADER.size or data[:8] != MAGIC:
        raise bad("not an rtml checkpoint (bad magic bytes or file too short)")
    _, version, mlen, slen, crc = _HEADER.unpack_from(data)
    if version > CHECKPOINT_VERSION:
        raise bad(
            f"format version {version} was written by a newer rtml (this one reads up to {CHECKPOINT_VERSION})"
        )
    if version == 0:
        raise bad("format version 0 does not exist")
    if _HEADER.size + mlen + slen != len(data):
        raise bad(
            f"truncated or extended: header says {_HEADER.size + mlen + slen} bytes, file has {len(data)}"
        )
    m = data[_HEADER.size : _HEADER.size + mlen]
    snap = data[_HEADER.size + mlen :]
    if zlib.crc32(snap, zlib.crc32(m)) != crc:
        raise bad("checksum mismatch: the file is corrupted")
    try:
        meta = json.loads(m)
    except ValueError as e:
        raise bad(f"metadata is not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise bad("metadata is not a JSON object")
    return meta, snap


def load_checkpoints(
    feature_set: Any, checkpoint_dir: Union[str, os.PathLike[str]]
) -> dict[int, tuple[Any, dict[str, Any]]]:
    """Every partition's (engine, checkpoint metadata) from a checkpoint directory, verified
    against `feature_set` (CheckpointError otherwise): read-only, e.g. for a serving process.

    >>> engines = {p: e for p, (e, meta) in load_checkpoints(fs, "ckpt").items()}  # doctest: +SKIP
    """
    d = Path(checkpoint_dir)
    spec_json = feature_set.to_json()
    out = {}
    for f in sorted(d.glob("partition-*.ckpt")):
        try:
            p = int(f.stem.split("-", 1)[1])
        except ValueError:
            continue
        meta, snap = read_checkpoint(f, p)
        if meta.get("partition") != p:
            raise CheckpointError(p, f, f"written for partition {meta.get('partition')}")
        if meta.get("spec_sha256") != _spec_hash(spec_json):
            raise CheckpointError(p, f, "written by another feature set (its spec hash differs)")
        try:
            engine = OnlineEngine.from_bytes(snap)
        except SnapshotError as e:
            raise CheckpointError(p, f, f"embedded engine state: {e}") from None
        out[p] = (engine, meta)
    return out


def _pos_key(pos: Position) -> Any:
    """Order of positions (ints, or Redis 'ms-seq' IDs)."""
    if isinstance(pos, int):
        return pos
    a, _, b = str(pos).partition("-")
    return (int(a), int(b or 0))


def _pos_name(pos: Position) -> str:
    return f"{pos:020d}" if isinstance(pos, int) else str(pos)


class _Partition:
    """One partition's engine, position and counters."""

    __slots__ = (
        "engine",
        "position",
        "events_in",
        "malformed",
        "skipped",
        "key_is_int",
        "dead",
        "dirty",
        "checkpointed",
    )

    def __init__(
        self,
        engine: Any,
        position: Optional[Position],
        events_in: int = 0,
        malformed: int = 0,
        key_is_int: Optional[Union[bool, list[bool]]] = None,
        skipped: int = 0,
    ) -> None:
        self.engine = engine
        self.position = position
        self.events_in = events_in
        self.malformed = malformed
        self.skipped = skipped
        self.key_is_int = key_is_int
        self.dead: list[tuple[str, str, Optional[bytes]]] = []
        self.dirty = False
        self.checkpointed = position


class _Predecoded(NamedTuple):
    """A batch's payloads decoded ahead of its ingest (`Runner._predecode`)."""

    kinds: Any  # the partition's key kinds given to the decoder
    table: pa.Table
    rejected: list[tuple[int, str]]
    kind: Any  # the key kinds after the batch


def _accepted(n: int, rejected: list[tuple[int, str]]) -> Optional[list[int]]:
    """Index in the batch of each decoded event row (None: every message was accepted)."""
    if not rejected:
        return None
    bad = {i for i, _ in rejected}
    return [i for i in range(n) if i not in bad]


class Runner:
    """Feeds a source's partitions into online engines, with exactly-once checkpoints.

    `feature_set`: an `rtml.FeatureSet`. `source`: from `rtml.sources`; None (the default):
    the embedded write-ahead log ``<checkpoint_dir>/wal`` (`rtml.sources.wal`), fed with
    `append`. `checkpoint_dir`: one ``partition-<p>.ckpt`` per partition (shared by every
    runner of the group) and the dead-letter files (``dead_letters/``). `checkpoint_every`: a
    duration ('5s', '500ms', a timedelta, seconds); '0s' checkpoints after every poll.
    `checkpoint_events`: also checkpoint as soon as this many events were read since the last
    checkpoint. `initial`: the engine of a partition without a checkpoint (a snapshot path or
    ``f(partition) -> OnlineEngine``; default empty). `max_batch`: events per poll.
    `dead_letters`: where malformed events go: None (Parquet files in ``dead_letters/``), or a
    topic / stream, ``kafka://host:port/topic`` or ``redis://host:port/db?stream=NAME``
    (`rtml.dead_letters`: sent and acknowledged before each checkpoint; re-sent after a crash,
    with the idempotency key ``<partition>:<offset>``).

    Read the features with `get(key, at)` (it finds the partition holding the key), the
    per-partition engines with `engines`, or `engine` when there is one partition. For a
    composite entity (``entity=["driver_id", "zone"]``) a key is a tuple with one int or str
    per key column; its partition is ``rtml.sources.partition_of`` of the tuple (the CRC-32 of
    its encoding, ``rtml.sources.message_key``), and a JSON source maps one field per key
    column (`fields=`), each part's kind checked like the table path.

    >>> import rtml, pyarrow as pa, tempfile
    >>> fs = rtml.FeatureSet(entity="user", timestamp="ts", features=[rtml.count(window="1h")])
    >>> r = Runner(fs, checkpoint_dir=tempfile.mkdtemp(), checkpoint_events=1000)
    >>> pos = r.append(pa.table({"user": [7], "ts": pa.array([5], pa.timestamp("s", tz="UTC"))}))
    >>> r.step_until(pos)      # durable first, then applied
    1
    >>> r.get(7, at="1970-01-01T00:00:06Z")["count_1h"]
    1
    """

    def __init__(
        self,
        feature_set: Any,
        source: Optional[Source] = None,
        checkpoint_dir: Optional[Union[str, os.PathLike[str]]] = None,
        checkpoint_every: Any = "5s",
        *,
        checkpoint_events: Optional[int] = None,
        initial: Any = None,
        max_batch: int = 10_000,
        poll_timeout: float = 0.2,
        pipeline: bool = True,
        publish: Any = None,
        dead_letters: Any = None,
    ) -> None:
        if not hasattr(feature_set, "_spec"):
            raise SpecError(
                f"Runner.feature_set: expected an rtml.FeatureSet, got {type(feature_set).__name__}"
            )
        if checkpoint_dir is None:
            raise SpecError("Runner.checkpoint_dir: required (where checkpoints are written)")
        if source is None:
            # the embedded default: a write-ahead log next to the checkpoints (Runner.append)
            from .sources import wal as _wal_source

            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            source = _wal_source(Path(checkpoint_dir) / "wal")
        if checkpoint_events is not None and (
            not isinstance(checkpoint_events, int)
            or isinstance(checkpoint_events, bool)
            or checkpoint_events < 1
        ):
            raise SpecError(
                f"Runner.checkpoint_events: expected a positive int, got {checkpoint_events!r}"
            )
        if not isinstance(source, Source):
            raise SpecError(
                f"Runner.source: expected a source from rtml.sources, got {type(source).__name__}"
            )
        self.feature_set = feature_set
        self.source = source
        self.dir = Path(checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dead_letter_dir = self.dir / "dead_letters"
        self.checkpoint_every = _duration_ns(checkpoint_every, "Runner.checkpoint_every") / 1e9
        self.checkpoint_events = checkpoint_events
        self._since_ckpt = 0
        self._initial = initial
        self.max_batch = int(max_batch)
        self.poll_timeout = float(poll_timeout)
        self._spec_json = feature_set.to_json()
        self._hash = _spec_hash(self._spec_json)
        _remove_stale_temps(self.dir, only_rtml=False)
        _remove_stale_temps(self.dead_letter_dir, only_rtml=False)
        self._parts: dict[int, _Partition] = {}
        self._lock = threading.RLock()
        # pipelining, three stages: the runner's thread polls batch n+2 while a decode thread
        # parses the payloads of batch n+1 and an ingest thread applies batch n (decode and
        # ingest release the GIL for their heavy parts); every checkpoint, assignment and
        # revocation first waits for the batch in flight
        self.pipeline = bool(pipeline)
        self._pool: Any = None
        self._decode_pool: Any = None
        self._inflight: Any = None
        self._opened = False
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._last_ckpt_wall: Optional[float] = None
        self._last_ckpt_mono = time.monotonic()
        self._last_ckpt_duration: Optional[float] = None
        self._checkpoints = 0
        self._started = time.monotonic()
        source.bind(feature_set)
        # shared state (docs/shared-state.md): an rtml.RedisPublisher, or None
        self.publisher = publish
        self._last_publish = time.monotonic()
        if publish is not None:
            publish.bind(feature_set)
        # dead letters: Parquet files in dead_letters/ (None), or a topic / stream
        # (rtml.dead_letters: a URL or a DeadLetterSink), sent before each checkpoint
        from .dead_letters import DeadLetterSink, dead_letter_sink

        if dead_letters is not None and not isinstance(dead_letters, DeadLetterSink):
            if not isinstance(dead_letters, str):
                raise SpecError(
                    "Runner.dead_letters: expected None, a URL (kafka://host:port/topic, "
                    "redis://host:port/db?stream=NAME) or an rtml.dead_letters.DeadLetterSink, "
                    f"got {type(dead_letters).__name__}"
                )
            dead_letters = dead_letter_sink(dead_letters)
        self.dead_letters: Optional[DeadLetterSink] = dead_letters
        if dead_letters is not None:
            dead_letters.bind(source.name, self._hash)
        self._decoder: Any = None
        if source.raw and getattr(source, "decode", None) is None:
            ent, ts, vals, unit = _decoder_config(source, feature_set)
            ids = feature_set.dedupe_on  # the event-id column (int or str ids in the JSON)
            if ids is not None and ids not in (c for c, _, _ in vals):
                event_id = (ids, dict(getattr(source, "fields", None) or {}).get(ids, ids))
                self._decoder = _core.JsonDecoder(ent, ts, vals, unit, event_id)
            else:
                self._decoder = _core.JsonDecoder(ent, ts, vals, unit)

    # ---- partitions ------------------------------------------------------------------

    def checkpoint_path(self, partition: int) -> Path:
        return self.dir / f"partition-{partition}.ckpt"

    def _load(self, p: int) -> _Partition:
        path = self.checkpoint_path(p)
        if not path.exists():
            # dead letters written before a first checkpoint that never landed are read again
            self._drop_uncommitted_dead_letters(p, None)
            return _Partition(self._initial_engine(p), None)
        meta, snap = read_checkpoint(path, p)
        if meta.get("partition") != p:
            raise CheckpointError(p, path, f"written for partition {meta.get('partition')}")
        if meta.get("spec_sha256") != self._hash:
            raise CheckpointError(
                p,
                path,
                "written by another feature set (its spec hash differs); "
                "use a new checkpoint directory for a new feature set",
            )
        if meta.get("source") != self.source.name:
            raise CheckpointError(
                p, path, f"written for source {meta.get('source')!r}, not {self.source.name!r}"
            )
        try:
            engine = OnlineEngine.from_bytes(snap)
        except SnapshotError as e:
            raise CheckpointError(p, path, f"embedded engine state: {e}") from None
        if engine.spec_json != self._spec_json:
            raise CheckpointError(p, path, "embedded engine state is of another feature set")
        part = _Partition(
            engine,
            meta.get("position"),
            int(meta.get("events_in", 0)),
            int(meta.get("malformed", 0)),
            meta.get("key_is_int"),
            int(meta.get("skipped", 0)),
        )
        self._drop_uncommitted_dead_letters(p, part.position)
        # the age of the state after a restart: the checkpoint's, until a new one is written
        try:
            written = _dt.datetime.fromisoformat(str(meta["written_at"])).timestamp()
        except (KeyError, ValueError):
            written = None
        if written is not None and (self._last_ckpt_wall is None or written < self._last_ckpt_wall):
            self._last_ckpt_wall = written
        return part

    def _initial_engine(self, p: int) -> Any:
        """The engine of a partition without a checkpoint: empty, or `initial` (a snapshot path,
        or a callable `f(partition)` returning an engine), e.g. a warm start."""
        init = self._initial
        if init is None:
            return self.feature_set.online()
        if callable(init):
            engine = init(p)
        else:
            engine = OnlineEngine.restore(os.fspath(init))
        if engine.spec_json != self._spec_json:
            raise CheckpointError(
                p, self.checkpoint_path(p), "Runner.initial: an engine of another feature set"
            )
        return engine

    def _drop_uncommitted_dead_letters(self, p: int, position: Optional[Position]) -> None:
        """Dead-letter files written after the last checkpoint that landed: their events will be
        read again, so the files would be duplicates."""
        if not self.dead_letter_dir.is_dir():
            return
        for f in self.dead_letter_dir.glob(f"partition-{p}-*.parquet"):
            first = f.stem.split("-", 2)[2].rsplit("--", 1)[0]
            try:
                first_pos: Position = int(first)
            except ValueError:
                first_pos = first
            if position is None or _pos_key(first_pos) >= _pos_key(position):
                f.unlink(missing_ok=True)

    def _drain(self) -> None:
        """Wait for the batch in flight (re-raising its error)."""
        f, self._inflight = self._inflight, None
        if f is not None:
            f.result()

    def _apply_all(self, batches: list[Batch], ahead: Any = None) -> int:
        """Apply `batches` in order; `ahead`: a future of their payloads decoded ahead of time
        (`_decode_ahead`), used where still valid."""
        pre: list[Optional[_Predecoded]] = [None] * len(batches)
        if ahead is not None:
            try:
                pre = ahead.result()
            except Exception:  # decoded again below, where the error belongs to a batch
                pass
        return sum(self._apply(b, d) for b, d in zip(batches, pre))

    def _decode_ahead(self, batches: list[Batch]) -> Any:
        """A future of `_predecode` of `batches` on the decode thread (None: nothing to decode)."""
        if self._decoder is None or not any(b.payloads for b in batches):
            return None
        if self._decode_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._decode_pool = ThreadPoolExecutor(1, thread_name_prefix="rtml-decode")
        return self._decode_pool.submit(lambda: [self._predecode(b) for b in batches])

    def _predecode(self, batch: Batch) -> Optional["_Predecoded"]:
        """A batch's payloads decoded with its partition's key kinds as they are now: `_apply`
        uses the result only if those kinds are still the partition's then and no payload was
        delivered already (else it decodes again: the result is the same as decoding there)."""
        part = self._parts.get(batch.partition)
        if part is None or not batch.payloads:
            return None
        kinds = part.key_is_int
        batch_, rejected, kind = self._decoder.decode(batch.payloads, kinds)
        return _Predecoded(kinds, pa.Table.from_batches([batch_]), rejected, kind)

    def _on_assign(self, parts: list[int]) -> dict[int, Optional[Position]]:
        self._drain()
        out: dict[int, Optional[Position]] = {}
        loaded = {p: self._load(p) for p in parts}  # all or nothing
        with self._lock:
            for p, part in loaded.items():
                self._parts[p] = part
                out[p] = part.position
        if self.publisher is not None:
            for p, part in loaded.items():
                self.publisher.attach(p, part.engine)
        return out

    def _on_revoke(self, parts: list[int]) -> None:
        self._drain()
        self._checkpoint_partitions(parts)
        self._publish(parts)
        with self._lock:
            for p in parts:
                self._parts.pop(p, None)

    def _open(self) -> None:
        if not self._opened:
            try:
                if isinstance(self.source, RedisStreamSource):
                    # entries read so far per partition (the trimming check counts them)
                    self.source.open(
                        self._on_assign, self._on_revoke, lambda p: self._parts[p].events_in
                    )
                else:
                    self.source.open(self._on_assign, self._on_revoke)
            except RetentionError as e:
                raise self._retention(e) from None
            self._opened = True

    def _retention(self, e: RetentionError) -> RetentionError:
        """A retention error naming the checkpoint file its position came from."""
        return e if e.path is not None else e.with_path(self.checkpoint_path(e.partition))

    # ---- ingest ----------------------------------------------------------------------

    def _apply(self, batch: Batch, pre: Optional["_Predecoded"] = None) -> int:
        part = self._parts.get(batch.partition)
        if part is None:
            return 0
        if not len(batch):
            # nothing to apply, but the source moved past something (a WAL record of another
            # kind): the position follows, so checkpoints and truncation do too
            if batch.end is not None and (
                part.position is None or _pos_key(batch.end) > _pos_key(part.position)
            ):
                part.position = batch.end
                part.dirty = True
            return 0
        positions = batch.positions
        payloads = batch.payloads
        events = batch.events
        start = 0
        if part.position is not None:
            cur = _pos_key(part.position)
            while start < len(positions) and _pos_key(positions[start]) < cur:
                start += 1  # delivered again (a broker re-delivery): applied already
        if start:
            positions = positions[start:]
            if payloads is not None:
                payloads = payloads[start:]
            if events is not None:
                events = events.slice(start)
        if not positions:
            return 0
        if isinstance(batch.end, int) and isinstance(part.position, int):
            # offsets the source jumped over (Kafka: compaction, transaction markers)
            part.skipped += batch.end - part.position - len(positions)
        rejected: list[tuple[int, str]] = []
        # (row of the events -> index in the batch; None: the same)
        accepted_idx: Optional[list[int]] = None
        if payloads is not None:
            if pre is not None and not start and pre.kinds == part.key_is_int:
                part.key_is_int = pre.kind
                events, rejected = pre.table, list(pre.rejected)
                accepted_idx = _accepted(len(payloads), rejected)
            else:
                events, rejected, accepted_idx = self._decode(part, payloads)
        assert events is not None

        def index(j: int) -> int:
            return j if accepted_idx is None else accepted_idx[j]

        bad_input = (RtmlError, TypeError, ValueError, OverflowError)
        try:
            report = part.engine.ingest(events, report=True)
            # events too far ahead of the watermark (max_ahead): not applied, dead letters
            rejected.extend((index(j), AHEAD_REASON) for j in report.rejected)
        except bad_input:
            # one bad event: find it. A batch is one arrival (applied in event-time order, late
            # against the watermark before it), so the events go one by one in time order, which
            # gives the same state as the batch. Rows from a `decode=` hook that cannot be
            # ordered (a bad time) go in their given order (docs/streaming.md).
            n = len(events) if isinstance(events, list) else events.num_rows
            order = _time_order(events, self.feature_set.timestamp, n)
            for j in order:
                try:
                    one = events[j] if isinstance(events, list) else events.slice(j, 1)
                    if part.engine.ingest(one, report=True).ahead:
                        rejected.append((index(j), AHEAD_REASON))
                except bad_input as e:
                    rejected.append((index(j), f"{type(e).__name__}: {e}"))
        for i, reason in sorted(rejected):
            payload = payloads[i] if payloads is not None else None
            part.dead.append((str(positions[i]), reason, payload))
        part.malformed += sum(1 for _, reason in rejected if reason != AHEAD_REASON)
        part.events_in += len(positions)
        part.position = batch.end
        part.dirty = True
        return len(positions)

    def _decode(
        self, part: _Partition, payloads: list[Optional[bytes]]
    ) -> tuple[Any, list[tuple[int, str]], Optional[list[int]]]:
        if self._decoder is not None:
            batch, rejected, kind = self._decoder.decode(payloads, part.key_is_int)
            part.key_is_int = kind
            table = pa.Table.from_batches([batch])
        else:
            decode = self.source.decode  # type: ignore[attr-defined]
            rows, rejected = [], []
            for i, raw in enumerate(payloads):
                try:
                    row = decode(raw)
                    if not isinstance(row, dict):
                        raise TypeError(f"decode returned {type(row).__name__}, not a dict")
                    rows.append(row)
                except Exception as e:  # the user's hook: any failure marks the message
                    rejected.append((i, f"decode: {type(e).__name__}: {e}"))
            # row dicts go to the engine as such (no Arrow type inference per batch)
            table = rows if rows else self._empty_events()
        return table, rejected, _accepted(len(payloads), rejected)

    def _empty_events(self) -> pa.Table:
        spec = self.feature_set._spec
        cols = {c: pa.array([], pa.int64()) for c in spec.entity_columns}
        cols[spec.timestamp] = pa.array([], pa.timestamp("ns", "UTC"))
        for c, _ in spec.value_columns:
            cols[c] = pa.array([], pa.float64())
        return pa.table(cols)

    # ---- checkpoints -----------------------------------------------------------------

    def _flush_dead_letters(self, p: int, part: _Partition) -> None:
        if not part.dead:
            return
        if self.dead_letters is not None:
            # acknowledged by the broker before the checkpoint covering them is written
            self.dead_letters.send(p, part.dead)
            part.dead = []
            return
        import pyarrow.parquet as pq

        self.dead_letter_dir.mkdir(exist_ok=True)
        first, last = part.dead[0][0], part.dead[-1][0]

        def fmt(s: str) -> str:
            return _pos_name(int(s)) if s.isdigit() else s

        path = self.dead_letter_dir / f"partition-{p}-{fmt(first)}--{fmt(last)}.parquet"
        table = pa.table(
            {
                "partition": pa.array([p] * len(part.dead), pa.int32()),
                "offset": pa.array([d[0] for d in part.dead], pa.string()),
                "reason": pa.array([d[1] for d in part.dead], pa.string()),
                "payload": pa.array([d[2] for d in part.dead], pa.binary()),
            }
        )
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        part.dead = []

    def _checkpoint_partitions(self, parts: list[int]) -> None:
        """Checkpoint each of `parts` that has new events (or no checkpoint yet). Several are
        written in parallel (up to `_CHECKPOINT_THREADS` at a time: the snapshot and the write
        release the GIL), after the dead letters of every one of them are durable."""
        due = [
            p
            for p in parts
            if p in self._parts and (self._parts[p].dirty or not self.checkpoint_path(p).exists())
        ]
        for p in due:
            self._flush_dead_letters(p, self._parts[p])
        workers = min(len(due), os.cpu_count() or 1, _CHECKPOINT_THREADS)
        if workers < 2:
            for p in due:
                self._write_checkpoint(p)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="rtml-checkpoint") as pool:
            done = [pool.submit(self._write_checkpoint, p) for p in due]
        for f in done:
            f.result()  # (the first error, once every write has finished)

    def _write_checkpoint(self, p: int) -> None:
        part = self._parts[p]
        snap = part.engine.to_bytes()
        meta = {
            "format": "rtml.Checkpoint",
            "partition": p,
            "position": part.position,
            "source": self.source.name,
            "spec_sha256": self._hash,
            "events_in": part.events_in,
            "malformed": part.malformed,
            "skipped": part.skipped,
            "key_is_int": part.key_is_int,
            "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "rtml_version": _core.__version__,
        }
        _atomic_write(self.checkpoint_path(p), encode_checkpoint(meta, snap))
        part.dirty = False
        part.checkpointed = part.position

    def checkpoint(self) -> None:
        """Checkpoint every partition with new events now (also done every `checkpoint_every`)."""
        self._drain()
        t0 = time.monotonic()
        with self._lock:
            parts = list(self._parts)
        self._checkpoint_partitions(parts)
        done: dict[int, Position] = {
            p: part.position for p, part in self._parts.items() if part.position is not None
        }
        self.source.commit(done)
        self._last_ckpt_duration = time.monotonic() - t0
        self._last_ckpt_mono = time.monotonic()
        self._last_ckpt_wall = time.time()
        self._since_ckpt = 0
        self._checkpoints += 1
        self._publish()

    def _publish(self, parts: Optional[list[int]] = None) -> None:
        """Publish the changed keys of `parts` (default: every partition held) to the shared
        store. A failure is counted (``metrics()["publish"]``), never raised: the partition is
        published in full at the next attempt."""
        if self.publisher is None:
            return
        from .exceptions import RemoteUnavailableError

        self._last_publish = time.monotonic()
        with self._lock:
            held = [(p, self._parts[p]) for p in (parts or list(self._parts)) if p in self._parts]
        for p, part in held:
            try:
                self.publisher.publish(p, part.engine, part.position)
            except RemoteUnavailableError:
                pass

    # ---- loops -----------------------------------------------------------------------

    def step(self) -> int:
        """One poll of the source: apply what came, checkpoint if due. Returns events read."""
        self._open()
        try:
            batches = self.source.poll(self.max_batch, self.poll_timeout)
        except RetentionError as e:  # (Kafka: found at assignment, or by the fetch)
            raise self._retention(e) from None
        n = sum(len(b) for b in batches)
        if batches:
            if self.pipeline:
                from concurrent.futures import ThreadPoolExecutor

                ahead = self._decode_ahead(batches)  # overlaps the batch in flight
                self._drain()
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="rtml-ingest")
                self._inflight = self._pool.submit(self._apply_all, batches, ahead)
            else:
                self._apply_all(batches)
        self._since_ckpt += n
        if time.monotonic() - self._last_ckpt_mono >= self.checkpoint_every or (
            self.checkpoint_events is not None and self._since_ckpt >= self.checkpoint_events
        ):
            self.checkpoint()
        elif (
            self.publisher is not None
            and time.monotonic() - self._last_publish >= self.publisher.publish_every
        ):
            self._publish()
        return n

    # ---- the embedded write-ahead log ----------------------------------------------------

    def _wal_source(self) -> Any:
        from .sources import WalSource

        if not isinstance(self.source, WalSource):
            raise RtmlError(
                f"Runner.append: the runner reads {self.source.name!r}, not a write-ahead log "
                "(give no source, or rtml.sources.wal(...))"
            )
        return self.source

    def append(self, events: Any, kind: Optional[str] = None) -> int:
        """Append a batch of events to the runner's write-ahead log; its position, returned once
        it is on disk. The runner applies it when it reads that far (`step_until(position)`,
        or its background thread)."""
        pos: int = self._wal_source().log.append(events, kind)
        return pos

    def step_until(self, position: int) -> int:
        """Apply the write-ahead log up to and including the record at `position` (not the
        records appended after it), in log order; returns the events read. For a runner that
        is not running in the background (`start()`)."""
        src = self._wal_source()
        self._open()
        total = 0
        src.limit = int(position) + 1
        try:
            while True:
                cur = self.positions.get(0)
                if cur is not None and _pos_key(cur) > position:
                    break
                if src.idle():
                    raise RtmlError(
                        f"Runner.step_until({position}): no record at that position "
                        f"(the log's durable end is {src.log.durable_position})"
                    )
                total += self.step()
                self._drain()
        finally:
            src.limit = None
        self._drain()
        return total

    def run_until_idle(self, timeout: Optional[float] = None) -> int:
        """Drain what the source has now, then checkpoint. Returns events read.
        `timeout` (seconds) bounds the wait for a broker (SourceError when exceeded)."""
        self._open()
        deadline = None if timeout is None else time.monotonic() + timeout
        total = 0
        while True:
            n = self.step()
            total += n
            # (idle after a poll that read events: they were the last ones, no need to poll
            # again to find out)
            if self.source.idle():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise SourceError(
                    f"run_until_idle: the source was not drained within {timeout}s "
                    f"(lag {self.source.lag()})"
                )
        self.checkpoint()
        return total

    def run(self) -> None:
        """Read until `stop()` (from another thread) or a signal; checkpoint on the way out."""
        self._open()
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            if self._opened:
                self.checkpoint()

    def start(self) -> "Runner":
        """Run in a background thread (`stop()` ends it; reads work meanwhile)."""
        if self._thread is not None:
            raise RtmlError("Runner.start: already running")
        self._stop.clear()
        self._error = None

        def body() -> None:
            try:
                self.run()
            except BaseException as e:  # handed to stop()
                self._error = e

        self._thread = threading.Thread(target=body, name="rtml-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the background thread (after a final checkpoint); re-raises its error."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    @property
    def running(self) -> bool:
        """Whether the background thread (`start()`) is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> Optional[BaseException]:
        """The exception that ended the background thread, else None (`stop()` re-raises it).

        >>> import rtml, tempfile
        >>> fs = rtml.FeatureSet(entity="user", timestamp="ts", features=[rtml.count(window="1h")])
        >>> Runner(fs, checkpoint_dir=tempfile.mkdtemp()).error is None
        True
        """
        return self._error

    def close(self) -> None:
        """Stop, then close the source (a Kafka consumer leaves its group)."""
        try:
            self.stop()
        finally:
            try:
                self._drain()
            finally:
                self.source.close()
                if self.dead_letters is not None:
                    self.dead_letters.close()
                self._opened = False
                for pool in (self._pool, self._decode_pool):
                    if pool is not None:
                        pool.shutdown()
                self._pool = self._decode_pool = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- reads -----------------------------------------------------------------------

    @property
    def engines(self) -> dict[int, Any]:
        """The engine of every partition this runner holds."""
        with self._lock:
            return {p: part.engine for p, part in sorted(self._parts.items())}

    @property
    def positions(self) -> dict[int, Optional[Position]]:
        with self._lock:
            return {p: part.position for p, part in sorted(self._parts.items())}

    @property
    def checkpointed_positions(self) -> dict[int, Optional[Position]]:
        """`{partition: position}` of the last checkpoint written (or loaded)."""
        with self._lock:
            return {p: part.checkpointed for p, part in sorted(self._parts.items())}

    @property
    def engine(self) -> Any:
        """The engine, when the runner holds exactly one partition."""
        engines = self.engines
        if len(engines) != 1:
            raise RtmlError(
                f"Runner.engine: the runner holds {len(engines)} partitions; use engines[p], "
                "engine_for(key) or get(key, at)"
            )
        return next(iter(engines.values()))

    def engine_for(self, key: Any) -> Any:
        """The engine holding `key` (found from the source's partitioning, no scan)."""
        p = self.source.partition_of(key)
        if p is None:
            raise RtmlError(
                "Runner.engine_for: the source does not know which partition holds a key; "
                "give it partitioner="
            )
        with self._lock:
            part = self._parts.get(p)
        if part is None:
            raise RtmlError(
                f"Runner.engine_for({key!r}): partition {p} is held by another runner of the group"
            )
        return part.engine

    def get(self, key: Any, at: Any = None) -> dict[str, Any]:
        """Features of one entity at `at`, from the engine of its partition."""
        result: dict[str, Any] = self.engine_for(key).get(key, at)
        return result

    def metrics(self, *, lag: bool = True) -> dict[str, Any]:
        """events_in, late, malformed, per-partition lag / position / watermark, checkpoints.

        `lag=False` leaves the lag out (None): asking a Kafka broker for it is a round trip,
        which waits behind the consumer's fetch in flight (up to ``fetch.wait.max.ms``)."""
        with self._lock:
            parts = dict(self._parts)
        lag_of = self.source.lag() if self._opened and lag else {}
        per = {}
        for p, part in sorted(parts.items()):
            st = part.engine.stats()
            per[p] = {
                "events_in": part.events_in,
                "late": st["late_events_dropped"],
                "ahead": st["ahead_events_rejected"],
                "duplicates": st["duplicates_dropped"],
                "malformed": part.malformed,
                "skipped_offsets": part.skipped,
                "keys": st["keys"],
                "lag": lag_of.get(p),
                "position": part.position,
                "watermark": st["watermark"],
            }
        age = None if self._last_ckpt_wall is None else time.time() - self._last_ckpt_wall
        return {
            "events_in": sum(v["events_in"] for v in per.values()),
            "late": sum(v["late"] for v in per.values()),
            "ahead": sum(v["ahead"] for v in per.values()),
            "duplicates": sum(v["duplicates"] for v in per.values()),
            "malformed": sum(v["malformed"] for v in per.values()),
            "partitions": per,
            "lag": {p: v["lag"] for p, v in per.items()},
            "checkpoints": self._checkpoints,
            "last_checkpoint_age_s": age,
            "last_checkpoint_duration_s": self._last_ckpt_duration,
            "source_errors": self.source.errors(),
            "publish": None if self.publisher is None else self.publisher.metrics(),
        }

    def prometheus(self) -> str:
        """`metrics()` in the Prometheus text format."""
        m = self.metrics()
        lines = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, Any]]) -> None:
            lines.append(f"# HELP rtml_runner_{name} {help_}")
            lines.append(f"# TYPE rtml_runner_{name} {kind}")
            for labels, v in samples:
                if v is not None:
                    lines.append(f"rtml_runner_{name}{labels} {v}")

        per = m["partitions"]
        metric(
            "events_in_total",
            "counter",
            "Events read from the source (incl. late and malformed).",
            [(f'{{partition="{p}"}}', v["events_in"]) for p, v in per.items()],
        )
        metric(
            "late_events_total",
            "counter",
            "Events dropped as later than allowed_lateness.",
            [(f'{{partition="{p}"}}', v["late"]) for p, v in per.items()],
        )
        metric(
            "ahead_events_total",
            "counter",
            "Events too far ahead of the watermark (max_ahead): not applied, sent to the "
            "dead-letter file.",
            [(f'{{partition="{p}"}}', v["ahead"]) for p, v in per.items()],
        )
        metric(
            "duplicate_events_total",
            "counter",
            "Events dropped as duplicates of an applied event id (dedupe_on).",
            [(f'{{partition="{p}"}}', v["duplicates"]) for p, v in per.items()],
        )
        metric(
            "malformed_events_total",
            "counter",
            "Malformed events (bad input) sent to the dead-letter file.",
            [(f'{{partition="{p}"}}', v["malformed"]) for p, v in per.items()],
        )
        metric(
            "skipped_offsets_total",
            "counter",
            "Offsets the source jumped over (compaction, markers).",
            [(f'{{partition="{p}"}}', v["skipped_offsets"]) for p, v in per.items()],
        )
        metric(
            "lag_events",
            "gauge",
            "Events available on the source but not yet read.",
            [(f'{{partition="{p}"}}', v["lag"]) for p, v in per.items()],
        )
        metric(
            "keys",
            "gauge",
            "Keys held in the partition's engine.",
            [(f'{{partition="{p}"}}', v["keys"]) for p, v in per.items()],
        )
        metric("checkpoints_total", "counter", "Checkpoints written.", [("", m["checkpoints"])])
        metric(
            "last_checkpoint_age_seconds",
            "gauge",
            "Seconds since the last checkpoint.",
            [("", m["last_checkpoint_age_s"])],
        )
        metric(
            "last_checkpoint_duration_seconds",
            "gauge",
            "Duration of the last checkpoint.",
            [("", m["last_checkpoint_duration_s"])],
        )
        metric(
            "source_errors_total",
            "counter",
            "Transient source errors (retried).",
            [(f'{{kind="{k}"}}', v) for k, v in m["source_errors"].items()],
        )
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# CLI: rtml run


def source_from_url(url: str) -> Source:
    """kafka://host:port/topic?group=g, redis://host:port/db?streams=a,b&group=g,
    wal:DIR[?kind=K] (an embedded write-ahead log), or a path (Parquet / CSV / Feather;
    ?partitions=N&max_delay=5s&seed=0&arrival=col)."""
    from urllib.parse import parse_qs, urlparse

    from . import sources

    u = urlparse(url)
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    if u.scheme == "kafka":
        topic = u.path.lstrip("/")
        if not topic or "group" not in q:
            raise SpecError(f"--source {url!r}: expected kafka://host:port/topic?group=NAME")
        return sources.kafka(u.netloc, topic, q["group"], timestamp_unit=q.get("timestamp_unit"))
    if u.scheme in ("redis", "rediss"):
        streams = q.get("streams", "")
        if not streams:
            raise SpecError(
                f"--source {url!r}: expected redis://host:port/db?streams=s1,s2[&group=NAME]"
            )
        base = f"{u.scheme}://{u.netloc}{u.path}"
        assign = [int(x) for x in q["assign"].split(",")] if "assign" in q else None
        return sources.redis_stream(
            base,
            streams.split(","),
            q.get("group"),
            field=q.get("field", "data"),
            timestamp_unit=q.get("timestamp_unit"),
            assign=assign,
        )
    if u.scheme == "wal":
        # wal:///abs/dir or wal:rel/dir, ?kind=K: an embedded write-ahead log directory
        path = (u.netloc + u.path) or url[len("wal:") :].split("?", 1)[0]
        return sources.wal(path, kind=q.get("kind"))
    path = u.path if u.scheme == "file" else url.split("?", 1)[0]
    return sources.replay(
        path,
        arrival=q.get("arrival"),
        partitions=int(q.get("partitions", 1)),
        seed=int(q.get("seed", 0)),
        max_delay=q.get("max_delay"),
    )


def _serve_metrics(runner: Runner, port: int) -> Any:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = runner.prometheus().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main_run(argv: list[str]) -> int:
    """`rtml run --spec features.json --source URL --checkpoint DIR [--metrics-port N]
    [--checkpoint-every 5s] [--checkpoint-events N] [--until-idle]
    [--publish redis://host:port/db] [--dead-letters URL]`."""
    import argparse
    import signal

    from .features import FeatureSet
    from .remote import RedisPublisher

    ap = argparse.ArgumentParser(
        prog="rtml run", description="Follow a stream into checkpointed online engines."
    )
    ap.add_argument(
        "--spec", required=True, help="feature-set JSON document (FeatureSet.to_json())"
    )
    ap.add_argument(
        "--source",
        required=True,
        help="kafka://host:port/topic?group=g | redis://host:port/0?streams=a,b | wal:DIR | a Parquet path",
    )
    ap.add_argument("--checkpoint", required=True, help="checkpoint directory")
    ap.add_argument("--checkpoint-every", default="5s")
    ap.add_argument(
        "--checkpoint-events",
        type=int,
        default=None,
        help="also checkpoint after this many events since the last checkpoint",
    )
    ap.add_argument("--max-batch", type=int, default=10_000)
    ap.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus text on 127.0.0.1:PORT"
    )
    ap.add_argument(
        "--until-idle", action="store_true", help="drain what is there, checkpoint, exit"
    )
    ap.add_argument("--progress", choices=["auto", "always", "never"], default="auto")
    ap.add_argument(
        "--publish",
        default=None,
        help="redis://host:port/db: publish every changed key's state for rtml.RemoteEngine "
        "readers (docs/shared-state.md)",
    )
    ap.add_argument("--publish-every", default="100ms")
    ap.add_argument(
        "--dead-letters",
        default=None,
        help="kafka://host:port/topic | redis://host:port/db?stream=NAME: send malformed events "
        "there (default: Parquet files in the checkpoint directory)",
    )
    ap.add_argument("--publish-prefix", default="rtml")
    args = ap.parse_args(argv)
    fs = FeatureSet.from_json(Path(args.spec).read_text())
    runner = Runner(
        fs,
        source_from_url(args.source),
        args.checkpoint,
        args.checkpoint_every,
        checkpoint_events=args.checkpoint_events,
        max_batch=args.max_batch,
        dead_letters=args.dead_letters,
        publish=None
        if args.publish is None
        else RedisPublisher(
            args.publish, prefix=args.publish_prefix, publish_every=args.publish_every
        ),
    )
    server = _serve_metrics(runner, args.metrics_port) if args.metrics_port is not None else None
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    last_t, last_n = time.monotonic(), 0
    try:
        runner._open()
        while not stop.is_set():
            runner.step()
            if show and time.monotonic() - last_t >= 1.0:
                m = runner.metrics()
                now = time.monotonic()
                rate = (m["events_in"] - last_n) / (now - last_t)
                lag = sum(v or 0 for v in m["lag"].values())
                sys.stderr.write(
                    f"\r{m['events_in']:,} events  {rate:,.0f}/s  lag {lag:,}  "
                    f"late {m['late']:,}  malformed {m['malformed']:,}  "
                    f"partitions {sorted(m['partitions'])}   "
                )
                sys.stderr.flush()
                last_t, last_n = now, m["events_in"]
            if args.until_idle and runner.source.idle():
                break
        runner.checkpoint()
    finally:
        if show:
            sys.stderr.write("\n")
        runner.source.close()
        if runner.dead_letters is not None:
            runner.dead_letters.close()
        if server is not None:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main_run(sys.argv[1:]))
