"""rtml.sources.redis_stream + Runner against a real redis-server: N streams as N partitions,
SIGKILL and restart, dead letters, trimmed streams, scale-out by assignment, outages."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rtml
import rtml.dead_letters
import rtml.sources
from rtml.runner import Runner, load_checkpoints

from services import free_port, redis_server, require_module  # noqa: F401 (fixture)
from stream_helpers import (
    LATENESS_S,
    answers,
    env_with_rtml,
    assert_matches_backfill,
    assert_same_answers,
    feature_set,
    instants,
    kill_and_restart,
    partition_keys,
    to_json_messages,
    workload,
)

require_module("redis")

BAD = [b"{oops", b'{"user": 5, "ts": 12}', b'{"ts": "2023-11-14T22:13:20Z"}']


def fill(url: str, n_streams: int, events: pa.Table, seed: int, bad_every: int = 0):
    """XADD every event (arrival order within the lateness) to the stream of its key.
    Returns (stream names, ordered good events, [(partition, entry id)] of malformed ones)."""
    import redis

    c = redis.Redis.from_url(url)
    base = f"ev-{uuid.uuid4().hex[:8]}"
    streams = [f"{base}:{i}" for i in range(n_streams)]
    order = rtml.sources.replay(events, "ts", key="user", max_delay=f"{LATENESS_S // 2}s", seed=seed).arrival_order()[0]
    ordered = events.take(pa.array(order))
    rnd = random.Random(seed)
    bad = []
    pipe = c.pipeline(transaction=False)
    for i, (k, m) in enumerate(zip(ordered.column("user").to_pylist(), to_json_messages(ordered))):
        p = rtml.sources.partition_of(k, n_streams)
        pipe.xadd(streams[p], {"data": m})
        if bad_every and i % bad_every == bad_every - 1:
            pipe.execute()
            eid = c.xadd(streams[p], {"data": rnd.choice(BAD)})
            bad.append((p, eid.decode()))
        if i % 2000 == 0:
            pipe.execute()
    pipe.execute()
    c.close()
    return streams, ordered, bad


def test_redis_streams_kill_restart_exact(redis_server, tmp_path):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    fs = feature_set()
    events = workload(30_000, 1000, seed=1)
    streams, good, bad = fill(url, 3, events, seed=1, bad_every=499)
    spec = tmp_path / "features.json"
    spec.write_text(fs.to_json())
    ckpt = tmp_path / "ckpt"
    seen = kill_and_restart(
        lambda: subprocess.Popen(
            [sys.executable, "-m", "rtml.runner", "--spec", str(spec), "--source",
             f"{url}?streams={','.join(streams)}&group=rtml", "--checkpoint", str(ckpt), "--until-idle",
             "--checkpoint-every", "0s", "--max-batch", "400", "--progress", "never"],
            env=env_with_rtml(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ),
        ckpt, range(3), kills=3, rnd=random.Random(3),
    )
    assert len(seen) == 3 and len(set(seen)) == 3, seen
    loaded = load_checkpoints(fs, ckpt)
    engines = {p: e for p, (e, _) in loaded.items()}
    assert sorted(engines) == [0, 1, 2]
    assert sum(e.stats()["events_ingested"] for e in engines.values()) == events.num_rows
    assert_matches_backfill(fs, good, engines, 3, n_instants=5)
    whole = Runner(fs, rtml.sources.redis_stream(url, streams), tmp_path / "whole", max_batch=5000)
    whole.run_until_idle()
    keys = partition_keys(events, 3)
    ats = instants(whole.engines, 5)
    assert_same_answers(answers(whole.engines, keys, ats), answers(engines, keys, ats), fs.feature_names)
    dl = pq.read_table(ckpt / "dead_letters")
    assert sorted(zip(dl.column("partition").to_pylist(), dl.column("offset").to_pylist())) == sorted(bad)
    # the consumer group's last-delivered id follows the checkpoints (informational)
    import redis

    c = redis.Redis.from_url(url)
    for p, s in enumerate(streams):
        g = {x["name"].decode(): x for x in c.xinfo_groups(s)}["rtml"]
        assert g["last-delivered-id"].decode() == loaded[p][1]["position"]
    c.close()


def test_scale_out_by_assignment_shares_one_checkpoint_dir(redis_server, tmp_path):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    fs = feature_set()
    events = workload(6000, 300, seed=2)
    streams, good, _ = fill(url, 3, events, seed=2)
    a = Runner(fs, rtml.sources.redis_stream(url, streams, assign=[0, 1]), tmp_path)
    b = Runner(fs, rtml.sources.redis_stream(url, streams, assign=[2]), tmp_path)
    a.run_until_idle()
    b.run_until_idle()
    assert sorted(a.engines) == [0, 1] and sorted(b.engines) == [2]
    k = next(k for k in events.column("user").to_pylist() if rtml.sources.partition_of(k, 3) == 2)
    assert b.engine_for(k) is b.engines[2]
    with pytest.raises(rtml.RtmlError, match="held by another runner"):
        a.engine_for(k)
    engines = {p: e for p, (e, _) in load_checkpoints(fs, tmp_path).items()}
    assert_matches_backfill(fs, good, engines, 3, n_instants=4)


def test_trimmed_past_the_checkpoint_is_a_typed_error(redis_server, tmp_path):
    import redis

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    fs = feature_set()
    streams, _, _ = fill(url, 1, workload(200, 5, seed=3), seed=3)
    r = Runner(fs, rtml.sources.redis_stream(url, streams), tmp_path, max_batch=50)
    r._open()
    r.step()
    r.checkpoint()
    pos = r.positions[0]
    c = redis.Redis.from_url(url)
    c.xtrim(streams[0], maxlen=200 - 50, approximate=False)  # only entries already read: fine
    ok = Runner(fs, rtml.sources.redis_stream(url, streams), tmp_path)
    ok._open()
    assert ok.positions[0] == pos
    ok.source.close()
    c.xtrim(streams[0], maxlen=10, approximate=False)  # unread entries gone
    c.close()
    before = (tmp_path / "partition-0.ckpt").read_bytes()
    r2 = Runner(fs, rtml.sources.redis_stream(url, streams), tmp_path)
    with pytest.raises(rtml.sources.RetentionError, match=f"partition 0.*{pos}.*partition-0.ckpt") as ei:
        r2.run_until_idle()
    assert isinstance(ei.value, rtml.sources.SourceError)
    assert (ei.value.partition, ei.value.position) == (0, pos)
    assert ei.value.path == str(tmp_path / "partition-0.ckpt")
    assert (tmp_path / "partition-0.ckpt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partition-0.ckpt"]  # nothing else written


def test_redis_unavailable_is_retried_then_a_typed_error(tmp_path):
    src = rtml.sources.redis_stream(f"redis://127.0.0.1:{free_port()}/0", ["s"], socket_timeout=0.2)
    r = Runner(feature_set(), src, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(rtml.sources.SourceError, match="unavailable after retries"):
        r.run_until_idle()
    assert time.monotonic() - t0 < 30
    assert src.errors()["retries"] >= 3
    assert not list(tmp_path.glob("partition-*.ckpt"))


def test_dead_letters_to_a_stream_are_acknowledged_before_the_checkpoint(redis_server, tmp_path, monkeypatch):
    """dead_letters="redis://host:port/db?stream=NAME": each malformed entry goes to the stream
    with its payload, partition, entry ID and reason; a crash between the (acknowledged) dead
    letters and the checkpoint re-sends them after the restart under the same idempotency key
    <partition>:<entry id>: deduplicated on it, each malformed entry is there exactly once."""
    import redis

    import rtml.runner as rr

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    fs = feature_set()
    streams, good, bad = fill(url, 2, workload(2000, 60, seed=12), seed=12, bad_every=89)
    dl = f"dead-{uuid.uuid4().hex[:8]}"
    real, crash = rr._atomic_write, {"on": True}

    def write(path, chunks):  # a crash after the dead letters, before the checkpoint file
        if crash["on"]:
            raise OSError("simulated crash before the checkpoint write")
        return real(path, chunks)

    monkeypatch.setattr(rr, "_atomic_write", write)
    ckpt = tmp_path / "ckpt"
    sink = f"{url}?stream={dl}"
    r = Runner(fs, rtml.sources.redis_stream(url, streams), ckpt, checkpoint_every="1h", dead_letters=sink)
    with pytest.raises(OSError, match="simulated crash"):
        r.run_until_idle()
    r.close()
    crash["on"] = False
    c = redis.Redis.from_url(url)
    sent_before_crash = c.xlen(dl)
    assert sent_before_crash > 0 and not list(ckpt.glob("partition-*.ckpt"))
    again = Runner(fs, rtml.sources.redis_stream(url, streams), ckpt, checkpoint_every="1h", dead_letters=sink)
    again.run_until_idle()
    again.close()
    entries = c.xrange(dl)
    assert len(entries) == sent_before_crash + len(bad)  # re-sent after the crash: at least once
    payload_of = {}
    for p, s in enumerate(streams):
        for eid, fields in c.xrange(s):
            payload_of[(p, eid.decode())] = fields[b"data"]
    c.close()
    by_key: dict[str, set] = {}
    for _, f in entries:
        f = {k.decode(): v for k, v in f.items()}
        p, off = int(f["partition"]), f["offset"].decode()
        assert f["key"].decode() == rtml.dead_letters.idempotency_key(p, off) == f"{p}:{off}"
        assert f["payload"] == payload_of[(p, off)] and f["reason"]
        assert f["source"].decode() == "redis:" + ",".join(streams) and len(f["spec_sha256"]) == 64
        by_key.setdefault(f["key"].decode(), set()).add((f["payload"], f["reason"]))
    assert sorted(by_key) == sorted(f"{p}:{e}" for p, e in bad)
    assert all(len(copies) == 1 for copies in by_key.values())
    assert not (ckpt / "dead_letters").exists()
    engines = {p: e for p, (e, _) in load_checkpoints(fs, ckpt).items()}
    assert_matches_backfill(fs, good, engines, 2, n_instants=3)
