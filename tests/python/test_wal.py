"""The embedded write-ahead log (`rtml.Wal`), the `rtml.sources.wal` source and the runner on it:
durable appends, crash recovery (torn tail cut, corruption refused naming file and offset),
checkpoints that record the log position and truncate covered segments, periodic checkpoints,
and a SIGKILL at random points with every acknowledged batch applied exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import rtml
import rtml.sources
from rtml.runner import Runner, read_checkpoint
from rtml.sources import SourceError
from stream_helpers import (
    LATENESS_S,
    NS,
    answers,
    assert_same_answers,
    env_with_rtml,
    feature_set,
    workload,
)


def _batches(events: pa.Table, size: int, seed: int) -> list[pa.Table]:
    """Arrivals: slices of `size` events, shuffled within each slice (out of order, within the
    lateness since a slice spans far less)."""
    rng = random.Random(seed)
    out = []
    for i in range(0, events.num_rows, size):
        b = events.slice(i, size)
        idx = list(range(b.num_rows))
        rng.shuffle(idx)
        out.append(b.take(pa.array(idx)))
    return out


def _reference(fs, batches) -> rtml.OnlineEngine:
    eng = fs.online()
    for b in batches:
        eng.ingest(b)  # one batch = one arrival, as the runner applies one record
    return eng


def _same_state(fs, a, b, events) -> None:
    keys = {0: sorted(set(events.column("user").to_pylist()))}
    wm = max(a.watermark, b.watermark)
    ats = [wm - LATENESS_S * NS + NS + i * 1200 * NS for i in range(5)]
    assert_same_answers(answers({0: a}, keys, ats), answers({0: b}, keys, ats), fs.feature_names)
    sa, sb = a.stats(), b.stats()
    for k in ("events_ingested", "late_events_dropped", "keys", "watermark"):
        assert sa[k] == sb[k], k


def test_append_returns_durable_positions_and_reads_back(tmp_path):
    log = rtml.Wal(tmp_path / "wal")
    t1 = pa.table({"user": [1, 2], "x": [0.5, None]})
    df = pd.DataFrame({"user": [3], "x": [1.25]})
    p1 = log.append(t1, kind="a")
    p2, p3 = log.append_many([(df, "b"), (t1, None)])
    assert p1 == 0 < p2 < p3 < log.durable_position
    got = log.read(0)
    assert [(p, n) for p, n, _ in got] == [(p1, p2), (p2, p3), (p3, log.durable_position)]
    assert got[0][2].equals(t1.replace_schema_metadata({b"rtml.kind": b"a"}))
    assert got[1][2].column("x").to_pylist() == [1.25]
    assert log.read(p2, max_records=1)[0][0] == p2
    assert log.counters() == {"appends": 3, "fsyncs": 2}
    log.close()
    again = rtml.Wal(tmp_path / "wal")
    assert again.durable_position == got[-1][1] and again.recovery()["truncated_bytes"] == 0


def test_second_open_of_a_log_is_refused(tmp_path):
    log = rtml.Wal(tmp_path / "wal")
    with pytest.raises(rtml.SnapshotError, match="LOCK"):
        rtml.Wal(tmp_path / "wal")
    log.close()


def test_torn_tail_is_cut_and_corrupt_middle_is_a_typed_error(tmp_path):
    d = tmp_path / "wal"
    log = rtml.Wal(d)
    positions = [log.append(pa.table({"user": [i], "x": [float(i)]})) for i in range(4)]
    end = log.durable_position
    (seg,) = [Path(p) for _, p in log.segments()]
    log.close()
    clean = seg.read_bytes()
    # a torn tail: half of a fifth record
    seg.write_bytes(clean + clean[24 : 24 + 100])
    log = rtml.Wal(d)
    assert log.recovery() == {"truncated_bytes": 100, "truncated_at": end, "tail_records": 4}
    assert [p for p, _, _ in log.read(0)] == positions
    log.close()
    # a flipped byte in the second record, valid records after it: refused, nothing changed
    data = bytearray(clean)
    data[24 + positions[1] + 20] ^= 0x40
    seg.write_bytes(bytes(data))
    with pytest.raises(rtml.SnapshotError) as e:
        rtml.Wal(d)
    assert str(seg) in str(e.value) and f"offset {24 + positions[1]}" in str(e.value)
    assert seg.read_bytes() == bytes(data)


def test_runner_embedded_default_checkpoints_the_log_position(tmp_path):
    fs = feature_set()
    events = workload(3_000, 50, seed=3)
    batches = _batches(events, 200, seed=3)
    r = Runner(fs, checkpoint_dir=tmp_path / "ckpt", checkpoint_every="1h")
    assert isinstance(r.source, rtml.sources.WalSource)
    pos = [r.append(b) for b in batches]
    assert r.step_until(pos[4]) == 5 * 200  # up to and including the record at pos[4], no more
    assert r.positions[0] == pos[5]
    r.run_until_idle()
    end = r.source.log.durable_position
    meta, _ = read_checkpoint(tmp_path / "ckpt" / "partition-0.ckpt", 0)
    assert meta["position"] == end and meta["source"] == "wal" and meta["events_in"] == events.num_rows
    _same_state(fs, r.engine, _reference(fs, batches), events)
    r.close()  # releases the log it opened: a new runner on the directory resumes at its end
    again = Runner(fs, checkpoint_dir=tmp_path / "ckpt")
    assert again.run_until_idle() == 0 and again.positions[0] == end
    again.close()


def test_background_runner_follows_appends_and_cli_url(tmp_path):
    import time

    from rtml.runner import source_from_url

    fs = feature_set()
    events = workload(1_000, 20, seed=9)
    batches = _batches(events, 100, seed=9)
    r = Runner(fs, checkpoint_dir=tmp_path / "ckpt", checkpoint_every="50ms").start()
    try:
        last = [r.append(b) for b in batches][-1]
        deadline = time.monotonic() + 30
        while (r.positions.get(0) or 0) <= last:
            assert time.monotonic() < deadline, "the background runner did not follow the log"
            time.sleep(0.01)
    finally:
        r.stop()
    assert r.metrics()["checkpoints"] >= 1
    _same_state(fs, r.engine, _reference(fs, batches), events)
    r.close()
    src = source_from_url(f"wal:{tmp_path / 'ckpt' / 'wal'}?kind=x")
    assert isinstance(src, rtml.sources.WalSource) and src.kind == "x" and src.name == "wal:x"
    src.log.close()


def test_cli_runs_a_wal_source(tmp_path):
    from rtml.runner import main_run

    fs = feature_set()
    events = workload(600, 10, seed=13)
    batches = _batches(events, 200, seed=13)
    log = rtml.Wal(tmp_path / "wal")
    for b in batches:
        log.append(b)
    end = log.durable_position
    log.close()
    (tmp_path / "fs.json").write_text(fs.to_json())
    argv = ["--spec", str(tmp_path / "fs.json"), "--source", f"wal:{tmp_path / 'wal'}", "--checkpoint",
            str(tmp_path / "ckpt"), "--checkpoint-events", "200", "--until-idle", "--progress", "never"]
    assert main_run(argv) == 0
    meta, _ = read_checkpoint(tmp_path / "ckpt" / "partition-0.ckpt", 0)
    assert meta["position"] == end and meta["events_in"] == 600 and meta["source"] == "wal"


def test_periodic_checkpoints_truncate_covered_segments_and_restart_resumes(tmp_path):
    fs = feature_set()
    events = workload(6_000, 80, seed=4)
    batches = _batches(events, 100, seed=4)
    ckpt = tmp_path / "ckpt"
    log = rtml.Wal(tmp_path / "wal", segment_bytes=8_192)
    r = Runner(fs, rtml.sources.wal(log), ckpt, checkpoint_every="1h", checkpoint_events=500, pipeline=False)
    first_half = len(batches) // 2
    for b in batches[:first_half]:
        r.step_until(log.append(b))
    # checkpoints every 500 events, not only at the end: each one truncated what it covers
    assert r.metrics()["checkpoints"] == first_half * 100 // 500
    covered = r.checkpointed_positions[0]
    assert 0 < covered <= r.positions[0]
    assert log.first_position > 0 and log.first_position <= covered
    assert all(base >= log.first_position for base, _ in log.segments())
    assert len(log.segments()) < 6  # the log holds what the last checkpoint does not cover, not everything
    # a crash: no final checkpoint; the restart restores the last one and replays the log after it
    del r
    log.close()
    log = rtml.Wal(tmp_path / "wal", segment_bytes=8_192)
    r2 = Runner(fs, rtml.sources.wal(log), ckpt, checkpoint_every="1h", checkpoint_events=500, pipeline=False)
    for b in batches[first_half:]:
        log.append(b)
    r2.run_until_idle()
    _same_state(fs, r2.engine, _reference(fs, batches), events)
    assert r2.metrics()["events_in"] == events.num_rows
    log.close()


def test_checkpoint_older_than_the_log_or_of_another_log_is_refused(tmp_path):
    fs = feature_set()
    batches = _batches(workload(2_000, 30, seed=5), 100, seed=5)
    log = rtml.Wal(tmp_path / "wal", segment_bytes=4_096)
    r = Runner(fs, rtml.sources.wal(log), tmp_path / "ckpt", checkpoint_every="1h", pipeline=False)
    for b in batches:
        log.append(b)
    r.run_until_idle()
    assert log.first_position > 0
    # a fresh checkpoint directory on a truncated log: the start of the stream is gone
    with pytest.raises(SourceError, match="no checkpoint"):
        Runner(fs, rtml.sources.wal(log), tmp_path / "other", pipeline=False).run_until_idle()
    log.close()
    # the checkpoint on another (shorter) log: its position is past that log's end
    other = rtml.Wal(tmp_path / "wal2")
    other.append(batches[0])
    with pytest.raises(SourceError, match="beyond the end"):
        Runner(fs, rtml.sources.wal(other), tmp_path / "ckpt", pipeline=False).run_until_idle()
    other.close()


def test_concurrent_appenders_are_applied_in_log_order(tmp_path):
    """Writers append from several threads (group commit); each then applies the log up to its
    batch with step_until: the state is that of the batches applied in log-position order."""
    import threading

    fs = feature_set()
    events = workload(4_000, 60, seed=12)
    batches = _batches(events, 50, seed=12)
    log = rtml.Wal(tmp_path / "wal")
    r = Runner(fs, rtml.sources.wal(log), tmp_path / "ckpt", checkpoint_every="1h", pipeline=False, poll_timeout=0)
    acked: list[tuple[int, int]] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(k, len(batches), 8):
            p = log.append(batches[i])
            with lock:
                acked.append((p, i))
                r.step_until(p)  # (a later writer may already have applied it)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked.sort()
    assert len(acked) == len(batches) and r.positions[0] == log.durable_position
    assert log.counters()["appends"] == len(batches)
    _same_state(fs, r.engine, _reference(fs, [batches[i] for _, i in acked]), events)
    log.close()


CHILD = textwrap.dedent("""
    import sys, pyarrow as pa, pyarrow.parquet as pq
    import rtml, rtml.sources
    from rtml.runner import Runner
    from rtml.wal import encode_batch
    d, every = sys.argv[1], int(sys.argv[2])
    fs = rtml.FeatureSet.from_json(open(d + "/fs.json").read())
    table = pq.read_table(d + "/batches.parquet")
    batches = [table.filter(pa.compute.equal(table.column("batch"), i)).drop_columns(["batch"])
               for i in range(int(pa.compute.max(table.column("batch")).as_py()) + 1)]
    ends, pos = {}, 0
    for i, b in enumerate(batches):
        pos += 8 + len(encode_batch(b))
        ends[pos] = i
    log = rtml.Wal(d + "/wal", segment_bytes=16_384)
    r = Runner(fs, rtml.sources.wal(log), d + "/ckpt", checkpoint_every="1h", checkpoint_events=every,
               pipeline=False, poll_timeout=0)
    r.run_until_idle()                      # restore + replay what was acknowledged
    at = log.durable_position
    start = 0 if at == 0 else ends[at] + 1  # the log holds exactly batches[:start]
    print("resume", start, flush=True)
    for i in range(start, len(batches)):
        p = log.append(batches[i])
        print("ack", i, p, flush=True)      # acknowledged: durable
        r.step_until(p)
    r.checkpoint()
    print("done", flush=True)
""")


def test_sigkill_at_random_points_every_acknowledged_batch_applied_exactly_once(tmp_path):
    """A process appends batches to the log (each acknowledged once durable), applies them
    with checkpoints every few hundred events (truncating the log), and is SIGKILLed at random
    points several times; each restart restores the checkpoint, replays the log, and continues
    after the last batch the log holds. No acknowledged batch is missing, none applied twice:
    the state equals one engine fed every batch once."""
    fs = feature_set()
    events = workload(6_000, 300, seed=6)
    batches = _batches(events, 100, seed=6)
    (tmp_path / "fs.json").write_text(fs.to_json())
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables([b.append_column("batch", pa.array([i] * b.num_rows)) for i, b in enumerate(batches)]),
                   tmp_path / "batches.parquet")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rnd = random.Random(77)
    acked = -1
    resumes = []
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(rnd.choice([150, 300, 700]))],
                                env=env_with_rtml(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        kill_after = rnd.randint(3, 20) if attempt < 3 else None
        seen = 0
        for line in proc.stdout:
            word, *rest = line.split()
            if word == "resume":
                start = int(rest[0])
                resumes.append(start)
                # every acknowledged batch survived the kill
                assert start >= acked + 1, (start, acked)
            elif word == "ack":
                acked = max(acked, int(rest[0]))
                seen += 1
                if kill_after is not None and seen >= kill_after:
                    import time

                    time.sleep(rnd.uniform(0, 0.01))  # mid-apply, mid-checkpoint or mid-append
                    proc.send_signal(signal.SIGKILL)
                    break
            elif word == "done":
                break
        proc.wait()
        if kill_after is None or proc.returncode == 0:
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            break
        assert proc.returncode == -signal.SIGKILL
    assert len(resumes) >= 3 and resumes[0] == 0 and resumes == sorted(resumes)
    log = rtml.Wal(tmp_path / "wal", segment_bytes=16_384)
    r = Runner(fs, rtml.sources.wal(log), tmp_path / "ckpt", pipeline=False)
    assert r.run_until_idle() == 0  # the final checkpoint covers the whole log
    _same_state(fs, r.engine, _reference(fs, batches), events)
    assert r.metrics()["events_in"] == events.num_rows
    log.close()
