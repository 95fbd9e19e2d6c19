"""Backfill beyond memory on one machine: stream, partition by entity, backfill partition by partition.

``rtml.outofcore.backfill(fs, events, spine, out, memory_limit="4GB")`` (also reached as
``fs.backfill(events, spine, out=..., memory_limit=...)``) computes exactly what
``fs.backfill(events, spine)`` computes, bit for bit, for inputs larger than memory:

1. **Partition pass.** The events and the spine are read as streams of record batches (Parquet
   datasets: a file, a directory, possibly hive-partitioned, a glob or a list of files; Arrow
   IPC / Feather files; pyarrow datasets and RecordBatchReaders; or any in-memory table
   ``backfill`` takes). Every row goes to spill partition ``hash(entity) % n`` (a stable hash,
   ``rtml._keyhash``), written as Arrow IPC streams under a temporary directory. A spine row
   carries its position in the spine (the `row_index` column).
2. **Backfill pass.** The spill partitions are grouped into units that fit the memory budget and
   each unit is backfilled by the in-memory engine (parallel across entities on rtml's thread
   pool), its rows written to the Parquet output as they are done; with ``workers=N``, up to N
   units at once while their estimated costs together fit the budget, written in unit order.
   An entity's features only depend on its own events, and each entity's events and spine rows
   are all in one partition, so every row equals the in-memory answer.

The temporary directory is removed at the end, on error, and on Ctrl-C; the output appears only
when the call succeeded (written under a temporary name, then renamed).

Memory model and measurements: docs/scale.md.

>>> import rtml, pandas as pd, pyarrow.parquet as pq, tempfile, os
>>> fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h"), rtml.sum("fare", window="1h")])
>>> events = pd.DataFrame({"driver": [1, 1, 2],
...                        "ts": pd.to_datetime(["2024-01-01 10:00", "2024-01-01 10:30",
...                                              "2024-01-01 10:10"], utc=True),
...                        "fare": [10.0, 5.0, 7.0]})
>>> spine = pd.DataFrame({"driver": [1, 2, 1],
...                       "ts": pd.to_datetime(["2024-01-01 10:31", "2024-01-01 12:00",
...                                             "2024-01-01 10:30"], utc=True)})
>>> out = os.path.join(tempfile.mkdtemp(), "train.parquet")
>>> result = rtml.outofcore.backfill(fs, events, spine, out, memory_limit="1GB")
>>> result.rows
3
>>> pq.read_table(out).sort_by("spine_row").to_pandas()[["driver", "count_1h", "fare_sum_1h", "spine_row"]]
   driver  count_1h  fare_sum_1h  spine_row
0       1         2         15.0          0
1       2         0          0.0          1
2       1         1         10.0          2
"""

from __future__ import annotations

import glob as _glob
import itertools
import math
import os
import re
import shutil
import tempfile
import threading
import time as _time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import _frames, _io, _keyhash
from .exceptions import HotKeyWarning, SchemaError, SpecError

if TYPE_CHECKING:
    from .features import FeatureSet, Progress

__all__ = ["backfill", "OutOfCoreResult", "parse_memory", "MEMORY_MODEL"]

# Bytes of process memory the in-memory backfill of a unit needs, per byte of its input as Arrow
# data (events + spine, the engine's converted columns, sort and group indices, the output), and
# per output feature value. Measured by bench/bench_outofcore.py --calibrate (see
# docs/scale.md); rounded up.
MEMORY_MODEL = {"per_input_byte": 3.0, "per_feature_value": 24.0}
_SLACK = 0.2  # share of the limit kept free: allocator fragmentation, pyarrow pool slack, and
# large units costing more than MEMORY_MODEL says (0.15 let a 30M-event run at
# memory_limit="1GB" peak at 1.015 GB; 0.2: 0.995 GB; bench/bench_outofcore.py)
# what reading Parquet costs beyond its libraries: the scanner's buffers (read-ahead of one
# batch and one file) and the pages pyarrow's allocator keeps; measured 45-65 MB with mimalloc
_READER_RESERVE = 48 << 20
_MAX_PARTITIONS = 4096
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
}


def parse_memory(value: int | str) -> int:
    """Bytes from ``"4GB"`` (10^9), ``"4GiB"`` (2^30), ``"300MB"``, ``"512 MiB"`` or an int.

    >>> from rtml.outofcore import parse_memory
    >>> parse_memory("4GB"), parse_memory("1.5 GiB"), parse_memory(1000)
    (4000000000, 1610612736, 1000)
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SpecError(f"memory_limit: expected bytes (int) or e.g. '4GB', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", value)
        if m is None or m.group(2).lower() not in _UNITS:
            raise SpecError(
                f"memory_limit: invalid size {value!r} (e.g. '4GB', '300MB', '2GiB', or bytes)"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise SpecError(f"memory_limit: must be positive, got {value!r}")
    return n


def _rss() -> int:
    """This process's resident memory now (bytes); 0 where /proc is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover (not Linux)
        return 0


@dataclass
class OutOfCoreResult:
    """What `backfill` did. `path`: the Parquet output (a file, or a directory of one file per
    unit); `rows`: spine rows written; `events`: events read; `partitions`: spill partitions of
    the first pass; `units`: in-memory backfill calls of the second pass; `hot_keys`: entities
    reported as larger than the budget, ``(key, events)``; `budget`: bytes one unit may use
    (the limit minus what the process used at the start, minus slack); `seconds`: wall time of
    ``"partition"`` and ``"backfill"``."""

    path: str
    rows: int
    events: int
    partitions: int
    units: int
    budget: int
    hot_keys: list[tuple[Any, int]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


@dataclass
class _Source:
    schema: pa.Schema
    batches: Callable[[list[str] | None], Iterator[pa.RecordBatch]]
    rows: int | None  # None: unknown before reading (a RecordBatchReader)
    first: pa.Table | None = None  # the first row, when `known` without reading
    known: bool = False

    def head(self, columns: list[str] | None) -> pa.Table | None:
        """The first row (for the schema checks), or None for an empty input."""
        if self.known:
            if self.first is None or columns is None:
                return self.first
            return self.first.select([c for c in columns if c in self.first.column_names])
        it = self.batches(columns)
        try:
            for b in it:
                if b.num_rows:
                    return pa.Table.from_batches([b.slice(0, 1)]).combine_chunks()
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        return None


def _dataset_source(dataset: Any) -> _Source:
    def batches(columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        cols = None if columns is None else [c for c in columns if c in dataset.schema.names]
        # little read-ahead: the scanner's defaults (16 batches, 4 files) would hold hundreds
        # of MB of a wide dataset in memory
        yield from dataset.to_batches(
            columns=cols, batch_size=1 << 16, batch_readahead=1, fragment_readahead=1
        )

    try:
        rows = int(dataset.count_rows())
    except pa.ArrowException as e:
        raise SchemaError(f"cannot read the dataset: {e}") from e
    return _Source(dataset.schema, batches, rows)


def _path_dataset(paths: list[str], what: str) -> Any:
    import pyarrow.dataset as ds

    suffixes = {Path(p).suffix.lower() for p in paths if not os.path.isdir(p)}
    if suffixes & {".csv", ".tsv", ".txt"}:
        raise SchemaError(
            f"{what}: {paths[0]}: CSV is not read out of core (types inferred per block would "
            "not match the in-memory reading); convert it to Parquet first, e.g. "
            "pyarrow.csv.open_csv -> pyarrow.parquet.ParquetWriter"
        )
    fmt = "ipc" if suffixes and suffixes <= {".arrow", ".feather", ".ipc"} else "parquet"
    # as pyarrow.parquet.read_table reads a path (what the in-memory backfill does): hive
    # partition directories become columns, string partition values dictionary-encoded
    partitioning = ds.HivePartitioning.discover(infer_dictionary=True)
    try:
        source: Any = paths[0] if len(paths) == 1 else paths
        return ds.dataset(source, format=fmt, partitioning=partitioning)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise SchemaError(f"{what}: {paths[0]}: cannot be read as a {fmt} dataset: {e}") from e


def _open(data: Any, what: str) -> _Source:
    """Any input `backfill` takes, as a stream of record batches."""
    import pyarrow.dataset as ds

    if isinstance(data, (str, os.PathLike)) or (
        isinstance(data, (list, tuple))
        and data
        and all(isinstance(d, (str, os.PathLike)) for d in data)
    ):
        items = [os.fspath(d) for d in (data if isinstance(data, (list, tuple)) else [data])]
        paths: list[str] = []
        for item in items:
            if not item:
                raise FileNotFoundError(2, "No such file or directory", "")
            if any(c in item for c in "*?[") and not os.path.exists(item):
                found = sorted(_glob.glob(item, recursive=True))
                if not found:
                    raise FileNotFoundError(2, "No file matches the pattern", item)
                paths.extend(found)
            elif not os.path.exists(item):
                raise FileNotFoundError(2, "No such file or directory", item)
            else:
                paths.append(item)
        if len(paths) > 1 and any(os.path.isdir(p) for p in paths):
            # several directories: one dataset each, read one after the other
            parts = [_path_dataset([p], what) for p in paths]
            return _dataset_source(ds.dataset(parts))
        return _dataset_source(_path_dataset(paths, what))
    if isinstance(data, ds.Dataset):
        return _dataset_source(data)
    if isinstance(data, ds.Scanner):
        data = data.to_reader()
    if isinstance(data, pa.RecordBatchReader):
        reader = iter(data)
        first: list[pa.RecordBatch] = []
        for b in reader:  # the first rows are read now (for the checks) and given again below
            first.append(b)
            if b.num_rows:
                break
        used = [False]

        def read_once(columns: list[str] | None) -> Iterator[pa.RecordBatch]:
            if used[0]:
                raise SchemaError(f"{what}: a RecordBatchReader can be read only once")
            used[0] = True
            for b in itertools.chain(first, reader):
                yield (
                    b if columns is None else b.select([c for c in columns if c in b.schema.names])
                )

        head = (
            pa.Table.from_batches([first[-1].slice(0, 1)]) if first and first[-1].num_rows else None
        )
        return _Source(data.schema, read_once, None, head, known=True)
    table = _io.to_table(_frames.prepare(data), what)

    def table_batches(columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        t = (
            table
            if columns is None
            else table.select([c for c in columns if c in table.column_names])
        )
        yield from t.to_batches(max_chunksize=1 << 16)

    return _Source(table.schema, table_batches, table.num_rows)


# ----------------------------------------------------------------------------- checks


def _check_nulls(batch: pa.RecordBatch, column: str, kind: str, offset: int) -> None:
    """The engine's error for a null key / time, with the row number in the whole input."""
    col = batch.column(batch.schema.get_field_index(column))
    if col.null_count:
        row = offset + int(pc.index(pc.is_null(col), True).as_py())
        raise SchemaError(f"column '{column}': null {kind} at row {row}")


def _check_finite(batch: pa.RecordBatch, columns: list[str], offset: int) -> None:
    for name in columns:
        i = batch.schema.get_field_index(name)
        if i < 0:
            continue
        col = batch.column(i)
        if not pa.types.is_floating(col.type):
            continue
        bad = pc.invert(pc.is_finite(col)).fill_null(False)
        if pc.any(bad).as_py():
            j = int(pc.index(bad, True).as_py())
            v = col[j].as_py()
            word = "NaN" if v != v else ("inf" if v > 0 else "-inf")
            raise SchemaError(
                f"column '{name}': {word} at row {offset + j}: NaN and infinite values are "
                "rejected (FeatureSet(on_nonfinite='skip') treats them as null)"
            )


# ----------------------------------------------------------------------------- pass 1


class _Spill:
    """One side (events or spine) of the spill: an IPC stream file per partition."""

    def __init__(self, root: str, side: str, n: int, level: str = "") -> None:
        self.root, self.side, self.n, self.level = root, side, n, level
        self.rows = [0] * n
        self.bytes = [0] * n
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._sinks: dict[int, Any] = {}

    def path(self, p: int) -> str:
        return os.path.join(self.root, f"{self.side}{self.level}-{p:05d}.arrow")

    def write(self, p: int, batch: pa.RecordBatch) -> None:
        w = self._writers.get(p)
        if w is None:
            sink = pa.OSFile(self.path(p), "wb")
            w = pa.ipc.new_stream(sink, batch.schema)
            self._writers[p], self._sinks[p] = w, sink
        w.write_batch(batch)
        self.rows[p] += batch.num_rows
        self.bytes[p] += batch.nbytes

    def close(self) -> None:
        for p, w in self._writers.items():
            w.close()
            self._sinks[p].close()
        self._writers.clear()
        self._sinks.clear()

    def read(self, p: int, schema: pa.Schema) -> pa.Table:
        if self.rows[p] == 0:
            return schema.empty_table()
        # read (not memory-mapped: mapped pages would count as resident twice, once mapped and
        # once as the engine's copy); the engine takes the chunks as they are
        with pa.OSFile(self.path(p), "rb") as src:
            return pa.ipc.open_stream(src).read_all()

    def batches(self, p: int) -> Iterator[pa.RecordBatch]:
        if self.rows[p] == 0:
            return
        with pa.OSFile(self.path(p), "rb") as src:
            yield from pa.ipc.open_stream(src)

    def remove(self, p: int) -> None:
        if os.path.exists(self.path(p)):
            os.remove(self.path(p))


def _scatter(batch: pa.RecordBatch, parts: Any, spill: _Spill) -> None:
    """Write the rows of `batch` to their partitions (rows keep their order within one)."""
    if spill.n == 1:
        spill.write(0, batch)
        return
    order = np.argsort(parts, kind="stable")
    counts = np.bincount(parts, minlength=spill.n)
    taken = batch.take(pa.array(order))
    start = 0
    for p in np.flatnonzero(counts):
        c = int(counts[p])
        spill.write(int(p), taken.slice(start, c))
        start += c


def _chunks(batches: Iterator[pa.RecordBatch], target_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches re-cut to about `target_rows` rows (small Parquet row groups are merged)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for b in batches:
        if b.num_rows == 0:
            continue
        pending.append(b)
        rows += b.num_rows
        if rows >= target_rows:
            yield _concat(pending)
            pending, rows = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


# ----------------------------------------------------------------------------- the call


def _unit_cost(ev_bytes: int, sp_bytes: int, sp_rows: int, n_features: int) -> float:
    return MEMORY_MODEL["per_input_byte"] * (ev_bytes + sp_bytes) + MEMORY_MODEL[
        "per_feature_value"
    ] * sp_rows * max(n_features, 1)


def backfill(
    fs: FeatureSet,
    events: Any,
    spine: Any,
    out: str | os.PathLike[str],
    *,
    memory_limit: int | str = "4GB",
    key: str | Sequence[str] | None = None,
    time: str | None = None,
    row_index: str | None = "spine_row",
    progress: Progress = None,
    spill_dir: str | os.PathLike[str] | None = None,
    partitions: int | None = None,
    workers: int = 1,
) -> OutOfCoreResult:
    """The backfill of `fs` for every spine row, written to Parquet at `out`, in bounded memory.

    `events`, `spine`: Parquet datasets (a file, a directory, possibly hive-partitioned, a glob
    such as ``"events/*.parquet"`` or a list of files), Arrow IPC / Feather files, a
    ``pyarrow.dataset.Dataset`` / ``Scanner`` / ``RecordBatchReader``, or any table
    ``FeatureSet.backfill`` takes. Only the entity, timestamp and value columns of the events
    are read. `key` / `time`: the spine's key and time columns (default: the feature set's; for
    a composite entity `key` is a list with one spine column per key column). Rows are
    partitioned by a stable hash of the entity key (for a composite key, of the engine's
    encoding of its parts), so every row of one key lands in one partition.

    `out`: a path ending in ``.parquet`` (one file) or a directory (created; one
    ``part-NNNNN.parquet`` per unit); it must not exist yet. Columns: the spine's, then the
    features, then `row_index` (int64, the row's 0-based position in the spine; None leaves it
    out). Row order: grouped by partition (an entity's rows are in one unit), in spine order
    within a partition; ``pq.read_table(out).sort_by(row_index)`` is the in-memory result.

    `memory_limit`: the peak resident memory the call aims for (``"4GB"``, ``"300MB"``,
    ``"2GiB"``, bytes), the process's own use at the start included. An entity whose events
    alone exceed the budget cannot be split: it is backfilled anyway, above the limit, and
    reported with :class:`rtml.HotKeyWarning` (key, event count) and in ``result.hot_keys``.

    `spill_dir`: where the temporary spill directory goes (default: beside `out`, on the same
    disk; not /tmp, which may be memory). `partitions`: force the number of spill partitions
    (default: from the input size and the budget). `workers`: how many units are backfilled at
    once (default 1: the engine already uses every core within a unit, and on the 2-core
    benchmark machine 2 workers were not faster, docs/scale.md); their estimated costs together
    stay within the budget (units are packed to ``budget / workers`` each), and the output is
    the same, row for row, whatever `workers` is (units are written in their order; only the
    ``part-NNNNN`` boundaries of a directory output move). `progress`: as in ``FeatureSet.backfill``
    (None: a bar for large inputs when tqdm is installed, True, False, or ``f(done, total)``);
    one bar over both passes, counted in rows: events + spine rows read, then spine rows
    backfilled (with ``workers > 1`` a callable may be called from a worker thread, one call
    at a time).

    Raises what ``FeatureSet.backfill`` raises for the same input (:class:`rtml.SchemaError`
    naming the column for missing columns, wrong types, null keys or times, row numbers counted
    in the whole input), :class:`rtml.SpecError` for a malformed `memory_limit`,
    FileExistsError when `out` exists, FileNotFoundError for a missing input. Nothing is
    written at `out` unless the call succeeds; the spill directory is removed in every case.
    """
    from .features import _check_key_column, _check_time_column, _progress_callback

    limit = parse_memory(memory_limit)
    import pyarrow.dataset  # noqa: F401  (its libraries are part of the base, not the budget)
    import pyarrow.parquet  # noqa: F401

    base = _rss()
    ent = fs.entity_columns
    keys = fs._spine_key(key)
    time = time or fs.timestamp
    out_path = os.fspath(out)
    if not out_path:
        raise FileNotFoundError(2, "No such file or directory", "")
    if os.path.exists(out_path):
        raise FileExistsError(17, "the output already exists (rtml never overwrites)", out_path)
    single_file = out_path.lower().endswith((".parquet", ".pq"))
    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(2, "No such directory for the output", parent)
    if partitions is not None and (
        isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1
    ):
        raise SpecError(f"partitions: expected a positive int, got {partitions!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SpecError(f"workers: expected a positive int, got {workers!r}")

    ev_src = _open(events, "events")
    sp_src = _open(spine, "spine")
    value_cols = [c for c, _ in fs._spec.value_columns]
    ev_cols = list(dict.fromkeys([*ent, fs.timestamp, *value_cols]))

    # the same checks, with the same errors, as the in-memory call: run it on the first rows
    names = fs.feature_names
    for name in [*names, *([row_index] if row_index else [])]:
        if name in sp_src.schema.names:
            raise SchemaError(
                f"column '{name}': the spine already has a column named like this "
                + ("feature" if name in names else "row index")
                + "; rename one of them"
                + (" (feature name=...)" if name in names else " (row_index=...)")
            )
    if row_index and row_index in names:
        raise SchemaError(f"row_index '{row_index}': a feature has this name; choose another")
    ev_head = ev_src.head(None)
    sp_head = sp_src.head(None)
    if sp_head is not None:
        ev_probe = _frames.decimals_to_float(
            ev_head if ev_head is not None else ev_src.schema.empty_table()
        )
        _check_time_column(ev_probe, fs.timestamp, "events")
        _check_time_column(sp_head, time, "spine")
        for c in ent:
            _check_key_column(ev_probe, c, "events")
        for c in keys:
            _check_key_column(sp_head, c, "spine")
        if ev_head is not None:
            fs._spec.backfill(ev_probe, sp_head, keys, time, None)
    for src, cols, what in ((ev_src, ent, "events"), (sp_src, keys, "spine")):
        for col in cols:
            if col not in src.schema.names and (what == "spine" or ev_head is not None):
                raise SchemaError(
                    f"column '{col}': not in the {what} (columns: {src.schema.names})"
                )
    for e_col, key in zip(ent, keys):
        ev_key_type = ev_src.schema.field(e_col).type if e_col in ev_src.schema.names else None
        sp_key_type = sp_src.schema.field(key).type if key in sp_src.schema.names else None
        if ev_key_type is not None and sp_key_type is not None:
            if _keyhash.is_string_key(ev_key_type) != _keyhash.is_string_key(sp_key_type):
                raise SchemaError(
                    f"column '{key}': the spine's key is {sp_key_type} but the events' key "
                    f"'{e_col}' is {ev_key_type}: both must be integers or both strings"
                )

    pa.default_memory_pool().release_unused()
    budget = int(limit * (1 - _SLACK)) - base - _READER_RESERVE
    if budget < (1 << 20):
        raise SpecError(
            f"memory_limit: {limit:,} bytes leaves {max(budget, 0):,} for the backfill: this "
            f"process already uses {base:,} bytes (and reading takes about {_READER_RESERVE:,}); "
            "give a larger limit"
        )

    total_ev = ev_src.rows
    total_sp = sp_src.rows
    total = (total_ev or 0) + 2 * (total_sp or 0)
    callback, bar = _progress_callback(progress, total)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if callback is not None:
            callback(done[0], max(total, done[0]))

    spill_parent = os.fspath(spill_dir) if spill_dir is not None else parent
    tmp = tempfile.mkdtemp(prefix=".rtml-spill-", dir=spill_parent)
    out_tmp = os.path.join(parent, f".{os.path.basename(out_path)}.rtml-tmp-{os.getpid()}")
    result = OutOfCoreResult(path=out_path, rows=0, events=0, partitions=0, units=0, budget=budget)
    writer: Any = None
    try:
        if bar is not None:
            bar.set_description("backfill: partitioning")
        t0 = _time.perf_counter()
        # pass 1 chunk: a small share of the budget as Arrow data
        chunk_bytes = max(budget // 16, 1 << 20)
        ev_width = _row_width(
            None
            if ev_head is None
            else ev_head.select([c for c in ev_cols if c in ev_head.column_names])
        )
        sp_width = _row_width(sp_head)
        if partitions is None:
            est = _unit_cost(
                (total_ev or 0) * ev_width,
                (total_sp or 0) * sp_width,
                total_sp or 0,
                len(names),
            )
            # 4x finer than needed: pass 2 packs small partitions into units again, and an
            # estimate off by 4x still fits
            partitions = min(_MAX_PARTITIONS, max(1, math.ceil(4 * est / budget)))
        n = partitions
        result.partitions = n
        ev_spill = _Spill(tmp, "events", n)
        sp_spill = _Spill(tmp, "spine", n)

        offset = 0
        try:
            for b in _chunks(ev_src.batches(ev_cols), max(1, chunk_bytes // ev_width)):
                b = _frames.decimals_to_float(pa.Table.from_batches([b])).to_batches()[0]
                for c in ent:
                    _check_nulls(b, c, "key", offset)
                _check_nulls(b, fs.timestamp, "timestamp", offset)
                if fs.on_nonfinite == "error":
                    _check_finite(b, value_cols, offset)
                _scatter(b, _keyhash.partition_of(_keyhash.entity_keys(b, ent), n), ev_spill)
                offset += b.num_rows
                tick(b.num_rows)
        finally:
            ev_spill.close()
        result.events = offset
        offset = 0
        try:
            for b in _chunks(sp_src.batches(None), max(1, chunk_bytes // sp_width)):
                b = b.replace_schema_metadata(None)
                for c in keys:
                    _check_nulls(b, c, "key", offset)
                _check_nulls(b, time, "timestamp", offset)
                if row_index:
                    b = b.append_column(
                        row_index, pa.array(np.arange(offset, offset + b.num_rows, dtype=np.int64))
                    )
                _scatter(b, _keyhash.partition_of(_keyhash.entity_keys(b, keys), n), sp_spill)
                offset += b.num_rows
                tick(b.num_rows)
        finally:
            sp_spill.close()
        total = done[0] + offset  # the exact total, now that the inputs are read
        result.seconds["partition"] = _time.perf_counter() - t0

        # pass 2
        t1 = _time.perf_counter()
        if bar is not None:
            bar.set_description("backfill: computing")
        ev_schema = _spill_schema(ev_src.schema, ev_cols)
        sp_schema = _spine_schema(sp_src.schema, row_index)
        ctx = _Ctx(fs, keys, ev_schema, sp_schema, budget, len(names), budget // workers)
        units = _plan(ev_spill, sp_spill, len(names), ctx.unit_budget)
        if not single_file:
            os.mkdir(out_tmp)
        lock = threading.Lock()
        cancel = threading.Event()
        partial: dict[int, int] = {}  # spine rows done so far by each running unit
        finished = [done[0]]

        def report() -> None:  # under `lock`: monotone, one call at a time
            done[0] = max(done[0], finished[0] + sum(partial.values()))
            if callback is not None:
                callback(done[0], max(total, done[0]))

        def compute(idx: int, load: Callable[[], tuple[pa.Table, pa.Table]]) -> pa.Table | None:
            """One unit: read its spill files, backfill, the output table (None: no spine)."""
            if cancel.is_set():
                raise _Cancelled
            ev, sp = load()
            if sp.num_rows == 0:
                return None

            def unit_progress(d: int, _t: int) -> None:
                if cancel.is_set():
                    raise _Cancelled  # another unit failed or Ctrl-C: stop the engine
                with lock:
                    partial[idx] = d
                    report()

            feats = pa.Table.from_batches([fs._spec.backfill(ev, sp, keys, time, unit_progress)])
            with lock:
                partial.pop(idx, None)
                finished[0] += sp.num_rows
                report()
            table = sp
            if row_index:
                table = table.drop_columns([row_index])
            for i, f in enumerate(feats.schema):
                table = table.append_column(f, feats.column(i))
            if row_index:
                table = table.append_column(row_index, sp.column(row_index))
            return table

        part_no = 0

        def emit(table: pa.Table | None) -> None:
            nonlocal writer, part_no
            if table is None:
                return
            import pyarrow.parquet as pq

            if single_file:
                if writer is None:
                    writer = pq.ParquetWriter(out_tmp, table.schema)
                writer.write_table(table)
            else:
                pq.write_table(table, os.path.join(out_tmp, f"part-{part_no:05d}.parquet"))
                part_no += 1
            result.rows += table.num_rows
            result.units += 1

        # units run `workers` at a time while their estimated costs together fit the budget
        # (a unit over the budget, a hot entity, runs alone); outputs are written in unit order,
        # a finished unit keeping its share of the budget until it is written
        pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="rtml-backfill") if workers > 1 else None
        )
        queue: list[tuple[Future[pa.Table | None], float]] = []
        inflight = 0.0
        try:
            for idx, (cost, load) in enumerate(_all_pieces(units, ev_spill, sp_spill, ctx)):
                if pool is None:
                    emit(compute(idx, load))
                    pa.default_memory_pool().release_unused()
                    continue
                while queue and inflight + cost > budget:
                    fut, held = queue.pop(0)
                    emit(fut.result())
                    inflight -= held
                    pa.default_memory_pool().release_unused()
                queue.append((pool.submit(compute, idx, load), cost))
                inflight += cost
            while queue:
                fut, held = queue.pop(0)
                emit(fut.result())
                inflight -= held
        except BaseException:
            cancel.set()
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if single_file:
            if writer is None:
                import pyarrow.parquet as pq

                empty = _output_schema(sp_schema, fs, row_index).empty_table()
                pq.write_table(empty, out_tmp)
            else:
                writer.close()
                writer = None
        elif part_no == 0:
            import pyarrow.parquet as pq

            empty = _output_schema(sp_schema, fs, row_index).empty_table()
            pq.write_table(empty, os.path.join(out_tmp, "part-00000.parquet"))
        os.rename(out_tmp, out_path)
        result.seconds["backfill"] = _time.perf_counter() - t1
        result.hot_keys = ctx.hot
        return result
    except BaseException:
        if writer is not None:
            try:
                writer.close()
            except Exception:  # pragma: no cover (already failing)
                pass
        if os.path.isdir(out_tmp):
            shutil.rmtree(out_tmp, ignore_errors=True)
        elif os.path.exists(out_tmp):
            os.remove(out_tmp)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bar is not None:
            bar.close()


def _row_width(head: pa.Table | None) -> int:
    """Arrow bytes per row, estimated from one row (strings: their length in that row + 8)."""
    if head is None or head.num_rows == 0:
        return 32
    return max(16, int(head.nbytes) + 8)


def _spill_schema(schema: pa.Schema, columns: list[str]) -> pa.Schema:
    fields = [schema.field(c) for c in columns if c in schema.names]
    table = pa.schema(fields).empty_table()
    return _frames.decimals_to_float(table).schema


def _spine_schema(schema: pa.Schema, row_index: str | None) -> pa.Schema:
    s = schema.remove_metadata()
    return s.append(pa.field(row_index, pa.int64())) if row_index else s


def _output_schema(sp_schema: pa.Schema, fs: FeatureSet, row_index: str | None) -> pa.Schema:
    fields = [f for f in sp_schema if f.name != row_index]
    for name, dtype in zip(fs.feature_names, fs._spec.feature_dtypes):
        t = {"int64": pa.int64(), "string": pa.string()}.get(dtype, pa.float64())
        fields.append(pa.field(name, t))
    if row_index:
        fields.append(pa.field(row_index, pa.int64()))
    return pa.schema(fields)


def _plan(ev: _Spill, sp: _Spill, n_features: int, budget: int) -> list[list[int]]:
    """Spill partitions packed, in order, into units whose estimated cost fits the budget."""
    units: list[list[int]] = []
    cur: list[int] = []
    cost = 0.0
    for p in range(ev.n):
        if sp.rows[p] == 0:
            continue  # no spine row: nothing to compute (its events are not needed)
        c = _unit_cost(ev.bytes[p], sp.bytes[p], sp.rows[p], n_features)
        if cur and cost + c > budget:
            units.append(cur)
            cur, cost = [], 0.0
        cur.append(p)
        cost += c
    if cur:
        units.append(cur)
    return units


class _Cancelled(Exception):
    """Stops a unit that is still running when another one failed (or on Ctrl-C)."""


_Piece = tuple[float, Callable[[], tuple[pa.Table, pa.Table]]]


def _all_pieces(units: list[list[int]], ev: _Spill, sp: _Spill, ctx: _Ctx) -> Iterator[_Piece]:
    for unit in units:
        yield from _pieces(unit, ev, sp, ctx)


def _pieces(
    unit: list[int],
    ev: _Spill,
    sp: _Spill,
    ctx: _Ctx,
    depth: int = 0,
) -> Iterator[_Piece]:
    """A unit as (estimated cost, a function reading its (events, spine) tables); a partition
    over the budget is split again by another hash into parts that fit, and an entity that
    cannot fit is reported. The reading happens when the function is called (in a worker)."""
    if len(unit) == 1 and ctx.cost(ev, sp, unit[0]) > ctx.budget:
        q = unit[0]
        k, count = _top_key(ev, q, ctx.fs.entity_columns)
        per_event = ev.bytes[q] / max(ev.rows[q], 1)
        if depth >= 3 or MEMORY_MODEL["per_input_byte"] * count * per_event > ctx.budget:
            # one entity alone is over the budget: it cannot be split; backfill it anyway
            ctx.report(k, count, ctx.cost(ev, sp, q))
        else:
            yield from _split(q, ev, sp, ctx, depth + 1)
            return

    def load() -> tuple[pa.Table, pa.Table]:
        evs = [ev.read(p, ctx.ev_schema) for p in unit]
        sps = [sp.read(p, ctx.sp_schema) for p in unit]
        for p in unit:
            ev.remove(p)
            sp.remove(p)
        return _cat(evs, ctx.ev_schema), _cat(sps, ctx.sp_schema)

    yield sum(ctx.cost(ev, sp, p) for p in unit), load


def _split(p: int, ev: _Spill, sp: _Spill, ctx: _Ctx, depth: int) -> Iterator[_Piece]:
    """Partition `p` re-hashed (seed `depth`) into parts that fit the budget."""
    k = min(_MAX_PARTITIONS, max(2, math.ceil(2 * ctx.cost(ev, sp, p) / ctx.budget)))
    level = f"{ev.level}.{p}"
    sub_ev = _Spill(ev.root, "events", k, level)
    sub_sp = _Spill(sp.root, "spine", k, level)
    try:
        for b in ev.batches(p):
            keys = _keyhash.entity_keys(b, ctx.fs.entity_columns)
            _scatter(b, _keyhash.partition_of(keys, k, seed=depth), sub_ev)
    finally:
        sub_ev.close()
    try:
        for b in sp.batches(p):
            keys = _keyhash.entity_keys(b, ctx.key)
            _scatter(b, _keyhash.partition_of(keys, k, seed=depth), sub_sp)
    finally:
        sub_sp.close()
    ev.remove(p)
    sp.remove(p)
    for unit in _plan(sub_ev, sub_sp, ctx.n_features, ctx.unit_budget):
        yield from _pieces(unit, sub_ev, sub_sp, ctx, depth)


@dataclass
class _Ctx:
    fs: FeatureSet
    key: list[str]
    ev_schema: pa.Schema
    sp_schema: pa.Schema
    budget: int
    n_features: int
    unit_budget: int  # what `_plan` packs a unit to: budget / workers
    hot: list[tuple[Any, int]] = field(default_factory=list)

    def cost(self, ev: _Spill, sp: _Spill, p: int) -> float:
        return _unit_cost(ev.bytes[p], sp.bytes[p], sp.rows[p], self.n_features)

    def report(self, k: Any, count: int, cost: float) -> None:
        self.hot.append((k, count))
        warnings.warn(
            HotKeyWarning(
                f"entity {k!r} of {_columns(self.fs.entity_columns)} has {count:,} events: its "
                f"partition needs about {int(cost):,} bytes, more than the budget of "
                f"{self.budget:,} bytes (memory_limit minus what the process used at the "
                "start); it is backfilled in one piece, above the limit"
            ),
            stacklevel=5,
        )


def _columns(columns: list[str]) -> str:
    """Key columns as a warning names them: ``column 'k'`` or ``columns ('d', 'z')``."""
    if len(columns) == 1:
        return f"column '{columns[0]}'"
    return f"columns {tuple(columns)!r}"


def _top_key(spill: _Spill, p: int, columns: list[str]) -> tuple[Any, int]:
    """The entity with the most rows in partition `p` of `spill`, and its row count; a
    composite key as the tuple of its parts."""
    counts: dict[Any, int] = {}
    for b in spill.batches(p):
        if len(columns) == 1:
            vc = pc.value_counts(b.column(b.schema.get_field_index(columns[0])))
            pairs = zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())
        else:
            g = pa.Table.from_batches([b]).group_by(columns).aggregate([([], "count_all")])
            parts = [g.column(c).to_pylist() for c in columns]
            pairs = zip(zip(*parts), g.column("count_all").to_pylist())
        for v, c in pairs:
            counts[v] = counts.get(v, 0) + c
    if not counts:
        return None, 0
    k = max(counts, key=lambda x: counts[x])
    return k, counts[k]


def _cat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return schema.empty_table()
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables)
