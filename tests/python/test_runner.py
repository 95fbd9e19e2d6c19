"""rtml.Runner over replay sources: parity with backfill, checkpoints (atomic, checksummed,
state and position together), restart and SIGKILL recovery, bad checkpoints, dead letters."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rtml
import rtml.sources
from rtml.runner import CheckpointError, Runner, load_checkpoints, read_checkpoint

from stream_helpers import (
    LATENESS_S,
    NS,
    answers,
    env_with_rtml,
    kill_and_restart,
    assert_matches_backfill,
    assert_same_answers,
    feature_set,
    instants,
    partition_keys,
    workload,
)



def test_runner_matches_backfill_per_partition(tmp_path):
    fs = feature_set()
    events = workload(6000, 300, seed=1)
    src = rtml.sources.replay(events, partitions=3, max_delay=f"{LATENESS_S // 2}s", seed=5)
    r = Runner(fs, src, tmp_path, max_batch=700)
    assert r.run_until_idle() == events.num_rows
    m = r.metrics()
    assert m["events_in"] == events.num_rows and m["late"] == 0 and m["malformed"] == 0
    assert sorted(r.engines) == [0, 1, 2]
    assert sum(e.stats()["events_ingested"] for e in r.engines.values()) == events.num_rows
    assert assert_matches_backfill(fs, events, r.engines, 3, n_instants=6) > 0
    # the engine of a key holds it, the others do not
    k = events.column("user")[0].as_py()
    p = rtml.sources.partition_of(k, 3)
    assert r.engine_for(k) is r.engines[p]
    at = pd.Timestamp(max(e.watermark for e in r.engines.values()) + NS, unit="ns", tz="UTC")
    assert r.get(k, at=at)["count_1h"] == r.engines[p].get(k, at=at)["count_1h"]
    with pytest.raises(rtml.RtmlError, match="3 partitions"):
        _ = r.engine


def test_restart_from_checkpoint_equals_uninterrupted(tmp_path):
    fs = feature_set()
    events = workload(4000, 200, seed=2)
    mk = lambda: rtml.sources.replay(events, partitions=2, max_delay="300s", seed=9)  # noqa: E731
    whole = Runner(fs, mk(), tmp_path / "whole", max_batch=300)
    whole.run_until_idle()
    # stop part way (after a checkpoint), then resume in a new runner from the files
    a = Runner(fs, mk(), tmp_path / "parts", checkpoint_every="1h", max_batch=300)
    for _ in range(4):
        a.step()
    a.checkpoint()
    pos = a.positions
    for _ in range(2):
        a.step()  # events read after the checkpoint are lost with the process...
    del a
    b = Runner(fs, mk(), tmp_path / "parts", max_batch=300)
    b._open()
    assert b.positions == pos  # ...and read again from the checkpoint's positions
    b.run_until_idle()
    keys = partition_keys(events, 2)
    ats = instants(whole.engines)
    assert_same_answers(answers(whole.engines, keys, ats), answers(b.engines, keys, ats), fs.feature_names)
    for p in (0, 1):
        sw, sb = whole.engines[p].stats(), b.engines[p].stats()
        for k in ("keys", "events_ingested", "late_events_dropped", "watermark"):
            assert sw[k] == sb[k], (p, k)
    assert b.metrics()["events_in"] == events.num_rows


def test_checkpoint_file_holds_state_and_position(tmp_path):
    fs = feature_set()
    events = workload(500, 20, seed=3)
    r = Runner(fs, rtml.sources.replay(events), tmp_path)
    r.run_until_idle()
    meta, snap = read_checkpoint(tmp_path / "partition-0.ckpt", 0)
    assert meta["position"] == events.num_rows and meta["partition"] == 0
    assert meta["source"] == "replay" and meta["events_in"] == events.num_rows
    assert snap[:8] == b"RTMLSNAP"
    eng = rtml.OnlineEngine.restore(_write(tmp_path / "x.snap", snap))
    assert eng.stats()["events_ingested"] == events.num_rows
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "version"])
def test_corrupted_checkpoint_is_a_typed_error_and_nothing_is_overwritten(tmp_path, damage):
    fs = feature_set()
    events = workload(400, 10, seed=4)
    Runner(fs, rtml.sources.replay(events, partitions=2), tmp_path).run_until_idle()
    f = tmp_path / "partition-1.ckpt"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) - 7]
    elif damage == "magic":
        data[0:8] = b"NOTACKPT"
    else:
        data[8:12] = (99).to_bytes(4, "little")
    f.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    r = Runner(fs, rtml.sources.replay(events, partitions=2), tmp_path)
    with pytest.raises(CheckpointError) as ei:
        r.run_until_idle()
    assert ei.value.partition == 1 and "partition-1.ckpt" in str(ei.value)
    assert isinstance(ei.value, rtml.SnapshotError)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before


def test_checkpoint_of_another_feature_set_or_stream_is_refused(tmp_path):
    events = workload(300, 10, seed=5)
    Runner(feature_set(), rtml.sources.replay(events), tmp_path).run_until_idle()
    before = (tmp_path / "partition-0.ckpt").read_bytes()
    other = rtml.FeatureSet(entity="user", timestamp="ts", features=[rtml.count(window="1h")],
                            allowed_lateness=f"{LATENESS_S}s")
    with pytest.raises(CheckpointError, match="another feature set") as ei:
        Runner(other, rtml.sources.replay(events), tmp_path).run_until_idle()
    assert ei.value.partition == 0
    with pytest.raises(CheckpointError, match="source 'replay'"):
        Runner(feature_set(), rtml.sources.replay(events, name="other"), tmp_path).run_until_idle()
    assert (tmp_path / "partition-0.ckpt").read_bytes() == before


def test_bad_events_go_to_the_dead_letter_file_and_never_block(tmp_path):
    fs = feature_set()
    events = workload(1000, 30, seed=6)
    amount = events.column("amount").to_pylist()
    bad = [17, 400, 401, 999]
    for i in bad:
        amount[i] = float("nan")  # on_nonfinite="error": the engine refuses the event
    events = events.set_column(2, "amount", pa.array(amount, pa.float64()))
    r = Runner(fs, rtml.sources.replay(events), tmp_path, max_batch=128)
    r.run_until_idle()
    m = r.metrics()
    assert m["malformed"] == len(bad) and m["events_in"] == events.num_rows
    dl = pq.read_table(tmp_path / "dead_letters").sort_by("offset")
    assert dl.column("partition").to_pylist() == [0] * len(bad)
    assert sorted(int(x) for x in dl.column("offset").to_pylist()) == bad  # replay position = row (in order)
    assert all("amount" in r for r in dl.column("reason").to_pylist())
    good = events.filter(pa.array([i not in bad for i in range(events.num_rows)]))
    assert_matches_backfill(fs, good, r.engines, 1, n_instants=4)


def test_background_thread_with_concurrent_reads(tmp_path):
    fs = feature_set()
    events = workload(5000, 50, seed=7)
    r = Runner(fs, rtml.sources.replay(events, partitions=2), tmp_path, checkpoint_every="50ms", max_batch=50)
    r.start()
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = r.metrics()
        seen.append(m["events_in"])
        if m["events_in"] == events.num_rows:
            break
        for e in r.engines.values():
            e.stats()
    r.stop()
    assert seen[-1] == events.num_rows
    assert seen == sorted(seen)
    m = r.metrics()
    assert m["checkpoints"] >= 1 and m["last_checkpoint_duration_s"] is not None
    assert m["lag"] == {0: 0, 1: 0}
    text = r.prometheus()
    assert f'rtml_runner_events_in_total{{partition="0"}} {m["partitions"][0]["events_in"]}' in text
    assert "rtml_runner_last_checkpoint_age_seconds" in text


def _spawn(spec: Path, source: str, ckpt: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rtml.runner", "--spec", str(spec), "--source", source, "--checkpoint", str(ckpt),
         "--until-idle", "--checkpoint-every", "0s", "--max-batch", "250", "--progress", "never"],
        env=env_with_rtml(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def test_sigkill_at_random_points_then_restart_is_exact(tmp_path):
    """SIGKILL the runner process (ingesting or writing a checkpoint: it checkpoints after every
    poll) several times, restart it each time, drain: the same state as an uninterrupted run and
    as backfill, bit for bit."""
    fs = feature_set()
    events = workload(60_000, 2000, seed=8)
    path = tmp_path / "events.parquet"
    pq.write_table(events, path)
    spec = tmp_path / "features.json"
    spec.write_text(fs.to_json())
    source = f"{path}?partitions=3&max_delay=300s&seed=11"
    ckpt = tmp_path / "ckpt"
    seen = kill_and_restart(lambda: _spawn(spec, source, ckpt), ckpt, range(3), kills=5, rnd=random.Random(1234))
    assert len(seen) == 5, seen
    assert len(set(seen)) >= 3 and max(seen) < events.num_rows  # killed at different points
    # temp files of the killed writers were removed by the next start
    assert not [f for f in ckpt.rglob("*") if ".tmp-" in f.name]
    restored = Runner(fs, rtml.sources.replay(path, partitions=3, max_delay="300s", seed=11), ckpt)
    restored._open()
    assert restored.metrics()["events_in"] == events.num_rows
    whole = Runner(fs, rtml.sources.replay(path, partitions=3, max_delay="300s", seed=11), tmp_path / "whole")
    whole.run_until_idle()
    keys = partition_keys(events, 3)
    ats = instants(whole.engines, 6)
    assert_same_answers(answers(whole.engines, keys, ats), answers(restored.engines, keys, ats), fs.feature_names)
    for p in range(3):
        a, b = whole.engines[p].stats(), restored.engines[p].stats()
        assert (a["events_ingested"], a["keys"], a["watermark"]) == (b["events_ingested"], b["keys"], b["watermark"])
    assert_matches_backfill(fs, events, restored.engines, 3, n_instants=4)


def test_cli_serves_prometheus_and_stops_cleanly_on_sigterm(tmp_path):
    from services import free_port, wait_port

    fs = feature_set()
    events = workload(3000, 50, seed=9)
    path = tmp_path / "events.parquet"
    pq.write_table(events, path)
    spec = tmp_path / "features.json"
    spec.write_text(fs.to_json())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtml.runner", "--spec", str(spec), "--source", f"{path}?partitions=2",
         "--checkpoint", str(tmp_path / "ckpt"), "--metrics-port", str(port), "--progress", "always"],
        env=env_with_rtml(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, proc, 30, "rtml run")
        deadline = time.monotonic() + 30
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            done = [ln for ln in text.splitlines() if ln.startswith("rtml_runner_events_in_total")]
            if sum(int(ln.rsplit(" ", 1)[1]) for ln in done) == events.num_rows:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert 'rtml_runner_lag_events{partition="0"} 0' in text
        time.sleep(1.2)  # one progress line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert f"{events.num_rows:,} events" in err.decode()
    engines = {p: e for p, (e, _) in load_checkpoints(fs, tmp_path / "ckpt").items()}
    assert sum(e.stats()["events_ingested"] for e in engines.values()) == events.num_rows


def test_dead_letters_of_an_interval_whose_checkpoint_never_landed_are_not_duplicated(tmp_path, monkeypatch):
    """A crash after the dead-letter file of an interval is written but before its checkpoint
    renames into place: the restarted runner reads the interval again; each bad event ends up
    in the dead-letter files exactly once."""
    import rtml.runner as rr

    fs = feature_set()
    events = workload(2000, 30, seed=10)
    amount = events.column("amount").to_pylist()
    bad = [3, 700, 1500, 1999]
    for i in bad:
        amount[i] = float("inf")
    events = events.set_column(2, "amount", pa.array(amount, pa.float64()))
    mk = lambda: rtml.sources.replay(events, partitions=2)  # noqa: E731
    # (steps before each checkpoint, batch size, which checkpoint write crashes): partition 1
    # holds bad events at its positions 2, 395 and 816; write 1 is partition 0's, 2 partition 1's
    scenarios = {
        "first checkpoint ever": ([3], 300, 2),  # p1's file 2--816 written, its checkpoint not
        "a later checkpoint": ([1, 6], 150, 4),  # p1 committed at 150, file 395--816 not
    }
    for name, (steps, batch, crash_call) in scenarios.items():
        d = tmp_path / name.replace(" ", "_")
        r = Runner(fs, mk(), d, checkpoint_every="1h", max_batch=batch)
        r._open()
        calls = {"n": 0}
        real = rr._atomic_write

        def crashing(path, chunks, real=real, calls=calls, crash_call=crash_call):
            calls["n"] += 1
            if calls["n"] == crash_call:
                raise RuntimeError("crash before the rename")
            return real(path, chunks)

        monkeypatch.setattr(rr, "_atomic_write", crashing)
        with pytest.raises(RuntimeError, match="crash"):
            for k in steps:
                for _ in range(k):
                    r.step()
                r.checkpoint()
        monkeypatch.setattr(rr, "_atomic_write", real)
        assert list((d / "dead_letters").glob("*.parquet"))  # the interval's file was written
        r2 = Runner(fs, mk(), d, checkpoint_every="0s", max_batch=50)  # other intervals, other file names
        r2.run_until_idle()
        dl = pq.read_table(d / "dead_letters")
        rows = sorted(zip(dl.column("partition").to_pylist(), dl.column("offset").to_pylist()))
        assert len(rows) == len(set(rows)) == len(bad), rows
        assert r2.metrics()["malformed"] == len(bad)


def test_dead_letters_argument_is_checked(tmp_path):
    """`dead_letters`: None (Parquet), a kafka:// or redis://...?stream= URL, or a sink; anything
    else is a SpecError naming the forms. Building a sink connects to nothing."""
    import rtml.dead_letters as dl

    fs = feature_set()
    src = rtml.sources.replay(workload(10, 3, seed=0), "ts", key="user")
    for bad in (123, "ftp://host/x", "kafka://host:9092/", "redis://host:6379/0"):
        with pytest.raises(rtml.SpecError, match="dead_letters"):
            Runner(fs, src, tmp_path / "a", dead_letters=bad)
    r = Runner(fs, src, tmp_path / "b", dead_letters="kafka://127.0.0.1:9/bad")
    assert isinstance(r.dead_letters, dl.KafkaDeadLetters) and r.dead_letters.topic == "bad"
    assert r.dead_letters.source == src.name and r.dead_letters.spec_sha256 == r._hash
    sink = dl.dead_letter_sink("redis://127.0.0.1:9/2?stream=bad", timeout="2s")
    assert isinstance(sink, dl.RedisDeadLetters) and (sink.url, sink.stream, sink.timeout) == (
        "redis://127.0.0.1:9/2", "bad", 2.0)
    assert Runner(fs, src, tmp_path / "c", dead_letters=sink).dead_letters is sink
    assert dl.idempotency_key(1, "42") == "1:42"
