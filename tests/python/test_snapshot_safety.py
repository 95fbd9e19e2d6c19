"""Snapshots under crashes and across format versions (public API only).

* SIGKILL at random moments during `engine.snapshot(path)`: the file at `path` is always a
  whole snapshot, the previous one or the new one, and restores to an engine that answers
  like the one that wrote it; leftover temporary files are never taken for the snapshot and
  do not stop later snapshots.
* Corruption of a sizable snapshot anywhere in the file is refused with SnapshotError naming
  the file (test_errors.py covers a small engine's header and edges; here: a large, feature-rich
  state, and corruption that keeps the checksum valid, which must not crash the process).
* Format versions: a committed snapshot of format version 1 (tests/data, with the script that
  made it and the answers it must give) loads in this build and answers as recorded, also
  after more events; a file claiming a newer version is refused, naming both versions."""

from __future__ import annotations

import json
import math
import os
import sys
import random
import signal
import struct
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pytest

import rtml
from helpers import raises

S = 10**9
MIN = 60 * S
BASE = 1_700_000_000 * S
DATA = Path(__file__).resolve().parent.parent / "data"
HEADER = 24  # magic (8) + version (4) + payload length (8) + CRC-32 (4), see src/snapshot.rs


def _fs():
    return rtml.FeatureSet(
        entity="k",
        timestamp="ts",
        timestamp_unit="ns",
        allowed_lateness="5m",
        features=[
            rtml.count(window="1h", name="n"),
            rtml.sum("v", window="6h", name="s"),
            rtml.mean("v", name="m"),
            rtml.quantile("v", 0.5, window="6h", name="p50"),
            rtml.distinct_count("c", window="1d", name="dc"),
            rtml.max("v", window="2h", hop="10m", name="mx"),
            rtml.decayed_sum("v", half_life="1h", window="1d", name="ds"),
            rtml.last("v", name="last"),
        ],
    )


def _events(seed: int, n: int, n_keys: int, t0: int, span: int) -> pa.Table:
    import numpy as np

    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "k": rng.integers(0, n_keys, n),
            "ts": np.sort(t0 + rng.integers(0, span, n)),
            "v": rng.integers(-1000, 1000, n) / 8,
            "c": rng.integers(0, 50, n),
        }
    )


def _answers(eng, keys, t):
    return eng.get_many(keys, at=t).to_pylist()


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """Engine A, and engine B = A plus more events, with their answers."""
    n_keys = 10_000
    a = _fs().online()
    a.ingest(_events(1, 50_000, n_keys, BASE, 6 * 3600 * S))
    b = _fs().online()
    b.ingest(_events(1, 50_000, n_keys, BASE, 6 * 3600 * S))
    b.ingest(_events(2, 10_000, n_keys, BASE + 6 * 3600 * S, 600 * S))
    t = BASE + 7 * 3600 * S
    keys = list(range(0, n_keys, 97)) + [n_keys + 1]
    ans_a, ans_b = _answers(a, keys, t), _answers(b, keys, t)
    assert ans_a != ans_b
    d = tmp_path_factory.mktemp("snap_states")
    a.snapshot(d / "a.snap")
    b.snapshot(d / "b.snap")
    st = {"a": a, "b": b, "t": t, "keys": keys, "ans_a": ans_a, "ans_b": ans_b}
    st["a_bytes"], st["b_bytes"] = (d / "a.snap").read_bytes(), (d / "b.snap").read_bytes()
    # the files restore to engines answering like A and B
    assert _which(d / "a.snap", st) == "a" and _which(d / "b.snap", st) == "b"
    return st


def _outcome(path: Path, st) -> str:
    """Which whole snapshot `path` holds: byte-equal to A's or B's file (a forked child
    writes B's bytes exactly), else judged by restoring it."""
    data = path.read_bytes()
    if data == st["a_bytes"]:
        return "a"
    if data == st["b_bytes"]:
        return "b"
    return _which(path, st)


def _which(path: Path, st) -> str:
    eng = rtml.OnlineEngine.restore(path)  # must never raise
    ans = _answers(eng, st["keys"], st["t"])
    if ans == st["ans_a"]:
        return "a"
    if ans == st["ans_b"]:
        return "b"
    raise AssertionError(f"{path} restores to an engine that is neither the old nor the new state")


def _snapshot_forever(eng, path: Path) -> None:
    """In a forked child: snapshot in a loop until killed."""
    try:
        while True:
            eng.snapshot(path)
    finally:
        os._exit(3)


def _kill_during_snapshot(eng, path: Path, rng: random.Random, write_time: float, mode: str):
    """Fork a child that snapshots `eng` to `path` in a loop and SIGKILL it: after a random
    delay ("random"), as soon as a new file appears next to `path` (the snapshot being written)
    plus up to 5 ms ("new_file"), or once `path` has been replaced (a snapshot completed) plus a
    random delay ("after_rename"; on a loaded machine the child may be slower than the parent's
    timing run, so random delays alone need not reach a completed write). Returns the names of
    the files the child left behind."""
    before = set(os.listdir(path.parent))
    inode = path.stat().st_ino if path.exists() else None
    pid = os.fork()
    if pid == 0:
        _snapshot_forever(eng, path)
    if mode == "after_rename":
        deadline = time.monotonic() + 20 * write_time + 10
        while time.monotonic() < deadline and (not path.exists() or path.stat().st_ino == inode):
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 1.5 * write_time))
    elif mode == "new_file":
        deadline = time.monotonic() + 10 * write_time + 5
        while time.monotonic() < deadline and not (set(os.listdir(path.parent)) - before - {path.name}):
            pass
        time.sleep(rng.uniform(0, 0.005))
    else:
        # anywhere in the first ~1.5 snapshot writes (encode, write, fsync, rename)
        time.sleep(rng.uniform(0, 1.5 * write_time))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    return set(os.listdir(path.parent)) - before - {path.name}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_sigkill_during_snapshot_keeps_previous(states, tmp_path):
    """Kill a process (SIGKILL) at random moments while it writes a snapshot of B over an
    existing snapshot of A: the file then holds A or B, whole, never anything else; both
    outcomes occur, and kills land mid-write (the child leaves its unfinished file behind).
    Leftover files are never read as the snapshot and do not block later snapshots."""
    path = tmp_path / "state.snap"
    t0 = time.perf_counter()
    states["b"].snapshot(tmp_path / "timing.snap")
    write_time = time.perf_counter() - t0
    (tmp_path / "timing.snap").unlink()
    rng = random.Random(5)
    seen = {"a": 0, "b": 0}
    mid_write = 0
    for i in range(24):
        # the previous snapshot: A, put in place atomically
        tmp = tmp_path / "a.tmp"
        tmp.write_bytes(states["a_bytes"])
        os.replace(tmp, path)
        mode = ("random", "new_file", "after_rename")[i % 3]
        left = _kill_during_snapshot(states["b"], path, rng, write_time, mode)
        mid_write += bool(left)
        seen[_outcome(path, states)] += 1
    assert seen["a"] > 0 and seen["b"] > 0, (seen, write_time)
    assert mid_write > 0, ("no kill landed mid-write; the test proves nothing", seen)
    # Leftover files do not block a new snapshot, and `path` is the new one.
    states["a"].snapshot(path)
    assert _outcome(path, states) == "a"
    states["b"].snapshot(path)
    assert _outcome(path, states) == "b"
    # ... and a completed snapshot removes the temporary files of writers that died.
    if sys.platform.startswith("linux"):
        stale = [f for f in os.listdir(tmp_path) if f.startswith(f".{path.name}.tmp-")]
        assert stale == [], stale


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_sigkill_during_first_snapshot(states, tmp_path):
    """With no previous file: after a kill, `path` is either absent or a whole snapshot."""
    rng = random.Random(9)
    t0 = time.perf_counter()
    states["b"].snapshot(tmp_path / "timing.snap")
    write_time = time.perf_counter() - t0
    for i in range(8):
        path = tmp_path / f"first{i}.snap"
        _kill_during_snapshot(states["b"], path, rng, write_time, ("random", "new_file")[i % 2])
        if path.exists():
            assert _outcome(path, states) == "b"


# --------------------------------------------------------------------------
# corruption of a sizable snapshot


def _rewrite_crc(data: bytearray) -> None:
    data[20:24] = struct.pack("<I", zlib.crc32(bytes(data[HEADER:])) & 0xFFFFFFFF)


def test_random_bit_flips_in_large_snapshot(states, tmp_path):
    """Single-bit flips at 100 random places of a multi-MB snapshot: all refused, naming the file."""
    data = states["a_bytes"]
    assert len(data) > 1_000_000, len(data)
    rng = random.Random(1)
    p = tmp_path / "flipped.snap"
    for _ in range(100):
        bad = bytearray(data)
        pos = rng.randrange(len(bad))
        bad[pos] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(bad))
        with raises(rtml.SnapshotError, str(p)):
            rtml.OnlineEngine.restore(p)


def test_truncated_large_snapshot(states, tmp_path):
    data = states["a_bytes"]
    rng = random.Random(2)
    p = tmp_path / "short.snap"
    for n in [HEADER, HEADER + 1] + sorted(rng.sample(range(HEADER + 2, len(data)), 20)):
        p.write_bytes(data[:n])
        with raises(rtml.SnapshotError, str(p)):
            rtml.OnlineEngine.restore(p)


def test_corruption_with_valid_checksum_is_refused_or_consistent(tmp_path):
    """Corruption the checksum cannot see (payload edited, CRC recomputed, as a buggy writer
    would produce): restore raises SnapshotError or yields an engine that answers without
    crashing; never a panic or a crash of the process."""
    eng = _fs().online()
    eng.ingest(_events(3, 400, 20, BASE, 3600 * S))
    good = tmp_path / "good.snap"
    eng.snapshot(good)
    data = good.read_bytes()
    rng = random.Random(3)
    p = tmp_path / "edited.snap"
    refused = loaded = 0
    for i in range(300):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(HEADER, len(bad))
            bad[pos] = rng.randrange(256) if i % 2 else bad[pos] ^ (1 << rng.randrange(8))
        _rewrite_crc(bad)
        p.write_bytes(bytes(bad))
        try:
            restored = rtml.OnlineEngine.restore(p)
        except rtml.SnapshotError as e:
            assert str(p) in str(e)
            refused += 1
            continue
        loaded += 1
        for k in range(0, 22, 3):
            try:
                restored.get(k, at=BASE + 2 * 3600 * S)
            except (rtml.QueryError, rtml.SchemaError):
                # a typed refusal is fine; an internal error (a panic: bare RtmlError or a
                # poisoned engine) is not, and fails the test
                pass
        restored.stats()
    assert refused > 0


# --------------------------------------------------------------------------
# format versions


def _with_version(data: bytes, version: int) -> bytes:
    return data[:8] + struct.pack("<I", version) + data[12:]


def test_future_version_is_refused(states, tmp_path):
    data = states["a_bytes"]
    current = rtml._core.SNAPSHOT_VERSION
    assert struct.unpack("<I", data[8:12])[0] == current
    for v in (current + 1, current + 7, 2**32 - 1):
        p = tmp_path / f"v{v}.snap"
        p.write_bytes(_with_version(data, v))
        with raises(rtml.SnapshotError, str(p), f"version {v}", "newer", str(current)):
            rtml.OnlineEngine.restore(p)
    p = tmp_path / "v0.snap"
    p.write_bytes(_with_version(data, 0))
    with raises(rtml.SnapshotError, str(p)):
        rtml.OnlineEngine.restore(p)


def _fixtures():
    return sorted(DATA.glob("snapshot_v*.json"))


def _clean(d):
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _rows_table(rows):
    return pa.table(
        {
            "user": pa.array([r["user"] for r in rows], pa.int64()),
            "ts": pa.array([r["ts"] for r in rows], pa.int64()),
            "amount": pa.array([r["amount"] for r in rows], pa.float64()),
            "merchant": pa.array([r["merchant"] for r in rows], pa.string()),
        }
    )


def test_fixture_present():
    assert [p.name for p in _fixtures()][:1] == ["snapshot_v1.json"]


def pd_free_iso(ns):
    """ns since the epoch -> ISO 8601 UTC, computed independently of rtml (numpy)."""
    import numpy as np

    text = str(np.datetime64(ns, "ns"))  # e.g. 2023-11-17T23:13:19.063817114
    if text.endswith(".000000000"):
        text = text[:-10]
    elif text.endswith("000"):
        text = text[:-3]
    return text + "+00:00"


@pytest.mark.parametrize("doc_path", _fixtures(), ids=lambda p: p.stem)
def test_committed_snapshot_loads_and_answers(doc_path, tmp_path):
    """A snapshot written by an earlier build (format version N, committed with the answers
    that build gave) restores in this build and gives the same answers, then ingests the
    recorded later events and answers as recorded. If a format version is ever dropped on
    purpose, this test must be changed to expect a SnapshotError naming that version."""
    doc = json.loads(doc_path.read_text())
    snap = doc_path.with_suffix(".snap")
    assert struct.unpack("<I", snap.read_bytes()[8:12])[0] == doc["snapshot_version"]
    eng = rtml.OnlineEngine.restore(snap)
    assert json.loads(eng.spec_json) == json.loads(doc["spec"])
    full = eng.stats()
    # watermark_iso (added after the fixtures were written) is the watermark as ISO 8601 UTC
    wm = full["watermark"]
    assert full["watermark_iso"] == (
        None if wm is None else pd_free_iso(wm)
    ), full
    # the guard's counters (added in format 3) start at zero for an older snapshot
    new = ("ahead_events_rejected", "duplicates_dropped")
    if doc["snapshot_version"] < 3:
        assert [full[k] for k in new] == [0, 0]
    # null_keys_skipped counts what one OnlineEngine object left out: not snapshot state
    assert full["null_keys_skipped"] == 0
    skip = ("state_bytes", "watermark_iso", "null_keys_skipped") + (
        new if doc["snapshot_version"] < 3 else ()
    )
    stats = {k: v for k, v in full.items() if k not in skip}
    assert stats == doc["stats"]
    keys, instants = doc["keys"], doc["instants"]
    got = [[_clean(eng.get(k, at=t)) for t in instants] for k in keys]
    assert got == doc["answers"]
    # it keeps working: a snapshot of the restored engine round-trips in the current format
    eng.snapshot(tmp_path / "again.snap")
    again = rtml.OnlineEngine.restore(tmp_path / "again.snap")
    assert [[_clean(again.get(k, at=t)) for t in instants] for k in keys] == doc["answers"]
    # later events (some late, some inside the allowed lateness, some new) then the answers
    rows = doc["events_after"]
    for i in range(0, len(rows), 50):
        eng.ingest(_rows_table(rows[i : i + 50]))
    got_after = [[_clean(eng.get(k, at=t)) for t in doc["instants_after"]] for k in keys]
    assert got_after == doc["answers_after"]
    assert {k: v for k, v in eng.stats().items() if k not in skip} == doc["stats_after"]


def test_snapshot_bytes_without_a_file(tmp_path):
    fs = rtml.FeatureSet("k", "ts", [rtml.count(window="1h"), rtml.sum("v", window="1h")],
                         timestamp_unit="s", allowed_lateness="1m")
    eng = fs.online()
    eng.ingest({"k": [1, 2, 1], "ts": [10, 20, 30], "v": [1.5, 2.0, None]})
    data = eng.to_bytes()
    eng.snapshot(tmp_path / "s.snap")
    assert data == (tmp_path / "s.snap").read_bytes()  # the file's exact format
    back = rtml.OnlineEngine.from_bytes(data, feature_set=fs)
    for k in (1, 2, 3):
        assert back.get(k, at=100) == eng.get(k, at=100)
    assert back.stats()["events_ingested"] == 3
    other = rtml.FeatureSet("k", "ts", [rtml.count(window="2h")], timestamp_unit="s")
    with pytest.raises(rtml.SnapshotError, match="another feature set"):
        rtml.OnlineEngine.from_bytes(data, feature_set=other)
    for bad in (data[:-1], data[:30] + bytes([data[30] ^ 1]) + data[31:], b"", b"not a snapshot"):
        with pytest.raises(rtml.SnapshotError):
            rtml.OnlineEngine.from_bytes(bad)
