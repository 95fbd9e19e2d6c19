"""`rtml.Wal`: an embedded write-ahead log of Arrow record batches.

An append-only directory of checksummed segment files (the engine side is Rust,
``src/wal.rs``). `append` returns a batch's *position* (a byte offset in the log) only once the
batch is on disk (fdatasync); appenders that arrive while an fsync runs share the next one
(group commit). On open, a torn tail left by a crash is cut away (it was never acknowledged);
a damaged record followed by valid ones is refused with `rtml.SnapshotError` naming the file
and the offset, never skipped. `rtml.sources.wal(log)` reads it as a runner source, and the
runner's checkpoints truncate the segments they cover (docs/streaming.md, docs/hardening.md).

>>> import rtml, pyarrow as pa, tempfile
>>> log = rtml.Wal(tempfile.mkdtemp())
>>> log.append(pa.table({"user": [1, 2], "x": [0.5, 1.5]}))
0
>>> p = log.append(pa.table({"user": [3], "x": [2.5]}))
>>> [(pos, t.num_rows) for pos, nxt, t in log.read(0)] == [(0, 2), (p, 1)]
True
>>> log.durable_position > p
True
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Optional, Sequence, Union

import pyarrow as pa

from . import _core, _io
from .exceptions import SpecError

__all__ = ["Wal", "encode_batch", "decode_batch"]

_KIND = b"rtml.kind"


def encode_batch(data: Any, kind: Optional[str] = None) -> bytes:
    """One record's bytes: `data` (anything `rtml` reads as a table) as an Arrow IPC stream;
    `kind` (optional) is stored in the schema metadata (``rtml.kind``)."""
    table = data if isinstance(data, pa.Table) else _io.to_table(data, "Wal.append")
    if kind is not None:
        if not isinstance(kind, str) or not kind:
            raise SpecError(f"Wal.append.kind: expected a non-empty string, got {kind!r}")
        meta = dict(table.schema.metadata or {})
        meta[_KIND] = kind.encode()
        table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    out: bytes = sink.getvalue().to_pybytes()
    return out


def decode_batch(payload: bytes) -> tuple[pa.Table, Optional[str]]:
    """(table, kind) of a record written by `encode_batch`."""
    table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    meta = table.schema.metadata or {}
    kind = meta.get(_KIND)
    return table, (kind.decode() if kind is not None else None)


class Wal:
    """A write-ahead log of Arrow batches in directory `path` (created if missing).

    `segment_bytes`: a new segment file starts when the active one reaches this size (only
    whole segments are deleted by truncation). `group_commit`: concurrent appends share
    fsyncs (False: one fsync per append, appends serialized; for measurements). `fsync=False`
    makes nothing durable (tests of other things, benchmarks).

    One `Wal` object per log and process: the directory is locked while it is open (a second
    open raises `SnapshotError`). Share the object between threads (and sources).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        *,
        segment_bytes: int = 64 << 20,
        group_commit: bool = True,
        fsync: bool = True,
    ) -> None:
        if not isinstance(segment_bytes, int) or isinstance(segment_bytes, bool):
            raise SpecError(f"Wal.segment_bytes: expected an int, got {segment_bytes!r}")
        self.path = os.fspath(path)
        self._w: Any = _core.Wal(self.path, segment_bytes, bool(group_commit), bool(fsync))
        self._readers: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._cond = threading.Condition()
        self._truncate_lock = threading.Lock()

    # ---- writing ----------------------------------------------------------------------

    def append(self, data: Any, kind: Optional[str] = None) -> int:
        """Append one batch (a pyarrow Table / RecordBatch, pandas, polars, dict of columns);
        return its position once it is on disk."""
        pos: int = self._w.append(encode_batch(data, kind))
        self._notify()
        return pos

    def append_many(self, items: Sequence[tuple[Any, Optional[str]]]) -> list[int]:
        """Append several (data, kind) batches in one write and one fsync; their positions."""
        payloads = [encode_batch(d, k) for d, k in items]
        pos: list[int] = self._w.append_many(payloads)
        self._notify()
        return pos

    def append_bytes(self, payload: bytes) -> int:
        """Append one raw record (not readable by `read` unless it is an Arrow IPC stream)."""
        pos: int = self._w.append(payload)
        self._notify()
        return pos

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait(self, position: int, timeout: float) -> bool:
        """Wait until the log holds durable records beyond `position` (True) or `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: self.durable_position > position, timeout)

    # ---- reading ----------------------------------------------------------------------

    def read_raw(
        self, position: int, max_records: int = 1024, max_bytes: int = 64 << 20
    ) -> list[tuple[int, int, bytes]]:
        """Durable records from `position`: [(position, next position, payload bytes)]."""
        out: list[tuple[int, int, bytes]] = self._w.read(position, max_records, max_bytes)
        return out

    def read(
        self, position: int, max_records: int = 1024, max_bytes: int = 64 << 20
    ) -> list[tuple[int, int, pa.Table]]:
        """Durable batches from `position`: [(position, next position, table)]."""
        return [
            (p, n, decode_batch(b)[0])
            for p, n, b in self.read_raw(position, max_records, max_bytes)
        ]

    @property
    def durable_position(self) -> int:
        """The position after the last durable record (every acknowledged batch is before it)."""
        return int(self._w.durable_position)

    @property
    def first_position(self) -> int:
        """The oldest position still in the log (older segments were truncated)."""
        return int(self._w.first_position)

    def segments(self) -> list[tuple[int, str]]:
        """[(base position, path)] of the segment files, oldest first."""
        out: list[tuple[int, str]] = self._w.segments()
        return out

    def recovery(self) -> dict[str, Any]:
        """What open found: ``truncated_bytes`` (a torn tail cut off), ``truncated_at``
        (its position), ``tail_records`` (records in the newest segment)."""
        b, at, n = self._w.recovery()
        return {"truncated_bytes": b, "truncated_at": at, "tail_records": n}

    def counters(self) -> dict[str, int]:
        """``appends`` and ``fsyncs`` since open (appends / fsyncs: the group-commit factor)."""
        a, s = self._w.counters()
        return {"appends": a, "fsyncs": s}

    # ---- truncation -------------------------------------------------------------------

    def roll(self) -> None:
        """Start a new segment now."""
        self._w.roll()

    def truncate_before(self, position: int) -> int:
        """Delete the sealed segments ending at or before `position`; the number deleted."""
        n: int = self._w.truncate_before(position)
        return n

    def _register(self, reader: Any) -> None:
        self._readers.add(reader)

    def _truncate_covered(self) -> int:
        """Delete what every reader (source) on this log has checkpointed past."""
        with self._truncate_lock:
            covered = [r._committed for r in list(self._readers)]
            if not covered or any(c is None for c in covered):
                return 0
            return self.truncate_before(min(covered))

    def close(self) -> None:
        """Release the log (its lock); the object is unusable afterwards."""
        self._w = None
        self._readers = weakref.WeakSet()

    def __repr__(self) -> str:
        if self._w is None:
            return f"Wal({self.path!r}, closed)"
        return f"Wal({self.path!r}, durable_position={self.durable_position})"
