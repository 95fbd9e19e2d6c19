"""Shared online state in a real redis-server (docs/shared-state.md): a runner publishes every
changed key's exact state, reader replicas (other processes) evaluate queries over it with the
in-process engine's code. After the stream is drained every reader answer equals the
in-process engine's and `fs.backfill`'s, bit for bit; Redis killed / paused / restarted; keys
expiring per ttl; values that must be refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import rtml
import rtml.sources
from rtml.remote import namespace_of
from rtml.runner import Runner

from services import Service, free_port, redis_server, require_module, unavailable, wait_port  # noqa: F401
from stream_helpers import LATENESS_S, NS, env_with_rtml, feature_set, instants, workload

redis = require_module("redis")

HERE = Path(__file__).resolve().parent


def enc(row: dict) -> dict:
    """A row with floats as hex text: equal iff bit-identical."""
    return {k: (v.hex() if isinstance(v, float) else v) for k, v in row.items()}


def ts(t: int) -> pd.Timestamp:
    return pd.Timestamp(t, unit="ns", tz="UTC")


def replay(events: pa.Table, partitions: int = 2, seed: int = 0):
    return rtml.sources.replay(
        events, partitions=partitions, max_delay=f"{LATENESS_S // 2}s", seed=seed
    )


def start_redis_on(port: int, d: Path) -> Service:
    """A redis-server on a given port (to restart one where the clients expect it)."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server not found on PATH (apt-get install redis-server)")
    log = d / f"redis-{port}-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(d), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    wait_port(port, proc, 10, "redis-server")
    return Service(proc, port, log)


# ------------------------------------------------------------------------------------------


def test_two_reader_processes_match_the_engine_and_backfill(redis_server, tmp_path):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    fs = feature_set()
    events = workload(30_000, 300, seed=11)
    # the queries: random keys (and two unknown ones) at instants every partition answers
    # exactly once drained (the final watermarks, from a dry run of the same replay)
    dry = Runner(fs, replay(events), tmp_path / "dry")
    dry.run_until_idle()
    ats = instants(dry.engines, 6)
    rnd = random.Random(5)
    keys = sorted(set(events.column("user").to_pylist()))
    queries = [(rnd.choice(keys), rnd.choice(ats)) for _ in range(400)]
    queries += [(10**9, ats[0]), (10**9 + 1, ats[-1])]
    (tmp_path / "spec.json").write_text(fs.to_json())
    (tmp_path / "queries.json").write_text(json.dumps(queries))
    done = tmp_path / "drained"
    readers = [
        subprocess.Popen(
            [sys.executable, str(HERE / "shared_state_reader.py"), str(tmp_path / "spec.json"),
             url, prefix, str(tmp_path / "queries.json"), str(done), str(tmp_path / f"out{i}.json")],
            env=env_with_rtml(),
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"out{i}.json.ready").exists() for i in range(2)):
            assert all(r.poll() is None for r in readers) and time.monotonic() < deadline
            time.sleep(0.02)
        pub = rtml.RedisPublisher(url, prefix=prefix, publish_every="20ms")
        runner = Runner(fs, replay(events), tmp_path / "ckpt", checkpoint_every="1s",
                        max_batch=500, publish=pub)
        runner.run_until_idle()
        done.write_text("1")
        for r in readers:
            assert r.wait(60) == 0
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
    m = runner.metrics()["publish"]
    assert m["errors"] == 0 and m["publishes"] > 2, m

    # the in-process engine (of the key's partition) and the backfill of the same events
    local = [enc(runner.get(k, at=ts(t))) for k, t in queries]
    spine = pa.table({
        "user": pa.array([k for k, _ in queries], pa.int64()),
        "ts": pa.array([t for _, t in queries], pa.timestamp("ns", "UTC")),
    })
    off = fs.backfill(events, spine, progress=False).select(fs.feature_names).to_pylist()
    assert local == [enc(r) for r in off]
    for i in range(2):
        got = json.loads((tmp_path / f"out{i}.json").read_text())
        assert got["answers"] == local
        for t, rows in got["many"].items():
            want = [a for (k, tt), a in zip(queries, local) if tt == int(t)]
            assert rows == want
        # the readers answered while the runner was writing
        assert got["counts"]["ok"] > 0, got["counts"]
        assert got["counts"]["unavailable"] == 0, got["counts"]


def clients(url: str, path: str) -> dict:
    """How the writer and the reader reach Redis: rtml's Rust client (a redis:// URL) or a
    redis-py client given as client= (TLS, cluster, ...)."""
    if path == "rust":
        return {"url": url}
    from rtml.remote import _client

    return {"client": _client(url, 0.05)}


@pytest.mark.parametrize("path", ["rust", "redis-py"])
def test_reads_report_watermarks_and_refuse_what_the_engine_refuses(redis_server, tmp_path, path):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    fs = feature_set()
    events = workload(5_000, 50, seed=3)
    pub = rtml.RedisPublisher(prefix=prefix, **clients(url, path))
    assert (pub._conn is not None) == (path == "rust")
    runner = Runner(fs, replay(events), tmp_path, publish=pub)
    runner.run_until_idle()
    remote = rtml.RemoteEngine(fs, prefix=prefix, **clients(url, path))
    assert (remote._conn is not None) == (path == "rust")
    eng = runner.engine_for(0)
    wm = eng.watermark
    # freshness: the watermark of the partition when the key's value was published
    row, w = remote.get(0, at=ts(wm), with_watermark=True)
    assert w == wm and row == eng.get(0, at=ts(wm))
    st = remote.stats()
    assert st["partitions"][rtml.sources.partition_of(0, 2)]["watermark"] == wm
    assert st["keys"] == sum(len(e) for e in runner.engines.values())
    assert st["watermark"] == min(e.watermark for e in runner.engines.values())
    # an unknown key: the empty-history values, no watermark; `in` tells it apart
    row, w = remote.get(123456, at=ts(wm), with_watermark=True)
    assert w is None and row == eng.get(123456, at=ts(wm))
    assert 0 in remote and 123456 not in remote
    # what the engine refuses, the reader refuses with the same type and message
    cases = [
        dict(key=0, at=ts(wm - 10 * 3600 * NS)),  # before the key's settled point
        dict(key="zero", at=ts(wm)),  # a string key where the writers hold integers
        dict(key=0, at=pd.Timestamp(wm, unit="ns").to_pydatetime()),  # naive vs tz-aware events
        dict(key=0, at=12),  # an integer instant without timestamp_unit
        dict(key=None, at=ts(wm)),
    ]
    for c in cases:
        with pytest.raises(rtml.RtmlError) as local:
            eng.get(c["key"], at=c["at"])
        with pytest.raises(type(local.value)) as rem:
            remote.get(c["key"], at=c["at"])
        assert str(rem.value) == str(local.value)
    # get_many: one instant per key, with watermarks, equal to the engine
    keys = [0, 1, 2, 987654]
    at = [ts(wm - NS), ts(wm), ts(wm + 60 * NS), ts(wm)]
    table, wms = remote.get_many(keys, at=at, with_watermark=True)
    want = pa.concat_tables([runner.engine_for(k).get_many([k], at=[a]) for k, a in zip(keys, at)])
    assert table.equals(want)
    assert wms[-1] is None and all(w is not None for w in wms[:-1])
    with pytest.raises(rtml.QueryError):
        remote.get_many(keys, at=at[:2])
    # vector: the same transforms over the stored state == the in-process vector
    tf = rtml.Transforms([
        rtml.log1p("amount_sum_1h"),
        rtml.passthrough("count_1h"),
        rtml.mul("amount_mean_30m", "x"),
    ])
    for k in [0, 1, 987654]:
        a = runner.engine_for(k).vector(k, tf, {"x": 0.3}, at=ts(wm + NS))
        b, w = remote.vector(k, tf, {"x": 0.3}, at=ts(wm + NS), with_watermark=True)
        assert a.tobytes() == b.tobytes()
    with pytest.raises(rtml.SchemaError) as e:
        remote.vector(0, tf, {}, at=ts(wm))
    assert "'x'" in str(e.value)


def test_redis_killed_paused_and_restarted(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="rtml-redis-"))
    port = free_port()
    server = start_redis_on(port, d)
    url = f"redis://127.0.0.1:{port}/0"
    fs = feature_set()
    events = workload(12_000, 120, seed=21)
    pub = rtml.RedisPublisher(url, publish_every="0s", timeout=0.5)
    runner = Runner(fs, replay(events, partitions=1), tmp_path, checkpoint_every="1h",
                    max_batch=400, publish=pub, pipeline=False)
    remote = rtml.RemoteEngine(fs, url, timeout=0.05)
    remote_py = rtml.RemoteEngine(fs, **clients(url, "redis-py"))
    local = rtml.OnlineEngine(fs)
    fallback = rtml.RemoteEngine(fs, url, timeout=0.05, fallback=local)
    try:
        for _ in range(8):
            runner.step()
        assert pub.metrics()["publishes"] >= 8 and pub.errors == 0
        wm = runner.engine.watermark
        before = remote.get(0, at=ts(wm))
        assert before == runner.get(0, at=ts(wm))

        # paused (slow): the reader errors, bounded by its timeout, and answers no stale value
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(rtml.RemoteUnavailableError):
                remote.get(0, at=ts(wm))
            with pytest.raises(rtml.RemoteUnavailableError):
                remote.get_many([0, 1], at=ts(wm))
            with pytest.raises(rtml.RemoteUnavailableError):
                remote_py.get(0, at=ts(wm))
            # a generous bound (not a benchmark): three calls at 50 ms each, far below a second
            assert time.monotonic() - t0 < 1.0
            # the documented fallback answers instead, only when asked for
            assert fallback.get(0, at=ts(wm)) == local.get(0, at=ts(wm))
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        # a paused request may leave its reply in the socket: the next call must not read it
        assert remote.get(0, at=ts(wm)) == before
        assert remote_py.get(0, at=ts(wm)) == before
        assert remote.get(1, at=ts(wm)) == runner.get(1, at=ts(wm))

        # killed: readers error; the writer keeps ingesting, counts its failed publishes
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(rtml.RemoteUnavailableError):
            remote.get(0, at=ts(wm))
        with pytest.raises(rtml.RemoteUnavailableError):
            remote_py.get(0, at=ts(wm))
        for _ in range(5):
            runner.step()
        assert pub.errors >= 1
        assert runner.metrics()["publish"]["errors"] == pub.errors

        # restarted empty: the writer republishes every key (not only those changed since)
        server = start_redis_on(port, d)
        runner.run_until_idle()
        wm = runner.engine.watermark
        keys = sorted(set(events.column("user").to_pylist()))
        table = remote.get_many(keys, at=ts(wm))
        assert table.equals(runner.engine.get_many(keys, at=ts(wm)))
        assert remote_py.get_many(keys, at=ts(wm)).equals(table)
        assert remote.stats()["keys"] == len(keys)
        # a restart while the writer was idle (no failed publish): the lost meta record is
        # noticed at the next publish, which writes everything again
        server.proc.kill()
        server.proc.wait()
        server = start_redis_on(port, d)
        runner.checkpoint()
        assert remote.get_many(keys, at=ts(wm)).equals(runner.engine.get_many(keys, at=ts(wm)))
    finally:
        server.stop()


def test_keys_expire_after_the_ttl_from_their_last_event(redis_server, tmp_path):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    fs = rtml.FeatureSet(entity="user", timestamp="ts", features=[rtml.count(window="1h")],
                         allowed_lateness="10m", ttl="2h")
    ttl = 2 * 3600 * NS
    t_end = 1_700_000_000 * NS
    # key 1: last event 1.2 s short of the ttl before the watermark; key 2: at the watermark
    events = pa.table({
        "user": [1, 2],
        "ts": pa.array([t_end - ttl + 1_200_000_000, t_end], pa.timestamp("ns", "UTC")),
    })
    # published once, by the checkpoint at the end (the expiry is computed at that moment)
    runner = Runner(fs, rtml.sources.replay(events), tmp_path,
                    publish=rtml.RedisPublisher(url, prefix=prefix, publish_every="1h"))
    runner.run_until_idle()
    remote = fs.remote(url, prefix=prefix)
    c = redis.Redis.from_url(url)
    ns, _ = namespace_of(fs, prefix)
    published = remote.stats()["partitions"][0]["published_at_ms"]
    k1, k2 = remote._reader.store_key(1), remote._reader.store_key(2)
    # PXAT = publish wall time + (last event + ttl - watermark)
    assert c.pexpiretime(k1) == published + 1_200
    assert c.pexpiretime(k2) == published + ttl // 1_000_000
    assert 1 in remote and remote.get(1, at=ts(t_end))["count_1h"] == 0  # known, window empty
    deadline = time.monotonic() + 5
    while 1 in remote and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 1 not in remote and 2 in remote
    # an expired key answers like an unknown (or evicted) key of the engine
    assert remote.get(1, at=ts(t_end)) == runner.engine.get(999, at=ts(t_end))
    assert remote.get(2, at=ts(t_end + NS))["count_1h"] == 1
    assert ns in k1.decode()


@pytest.mark.parametrize("path", ["rust", "redis-py"])
def test_values_that_must_be_refused_name_the_key(redis_server, tmp_path, path):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    fs = feature_set()
    other = rtml.FeatureSet(entity="user", timestamp="ts",
                            features=[rtml.count(window="1h"), rtml.sum("amount", window="1h")],
                            allowed_lateness=f"{LATENESS_S}s")
    events = workload(2_000, 20, seed=4)
    for f, d in [(fs, "a"), (other, "b")]:
        Runner(f, replay(events), tmp_path / d,
               publish=rtml.RedisPublisher(url, prefix=prefix)).run_until_idle()
    remote = rtml.RemoteEngine(fs, prefix=prefix, **clients(url, path))
    remote_other = other.remote(url, prefix=prefix)
    assert remote.ns != remote_other.ns  # two feature sets never share a namespace
    c = redis.Redis.from_url(url)
    at = ts(1_700_000_000 * NS + 6 * 3600 * NS)
    good = remote.get(0, at=at)
    k0, k1 = remote._reader.store_key(0), remote._reader.store_key(1)
    v0 = c.get(k0)

    def refused(value: bytes, *words: str) -> None:
        c.set(k0, value)
        for call in (lambda: remote.get(0, at=at), lambda: remote.get_many([3, 0], at=at)):
            with pytest.raises(rtml.KeyStateError) as e:
                call()
            assert isinstance(e.value, rtml.SnapshotError)
            msg = str(e.value)
            assert "key 0" in msg, msg
            for w in words:
                assert w in msg, msg

    refused(c.get(remote_other._reader.store_key(0)), "another feature set")
    corrupt = bytearray(v0)
    corrupt[len(corrupt) // 2] ^= 0x01
    refused(bytes(corrupt), "checksum")
    newer = bytearray(v0)
    newer[4:6] = (rtml.remote.KEYSTATE_VERSION + 1).to_bytes(2, "little")
    refused(bytes(newer), "newer rtml")
    refused(c.get(k1), "holds the state of key 1")
    refused(v0[:-3], "truncated")
    refused(b'{"feast": "hash"}', "not an rtml key state")
    # restored, the key answers again
    c.set(k0, v0)
    assert remote.get(0, at=at) == good


def start_cluster(d: Path, n: int = 3) -> tuple[list[int], list[subprocess.Popen]]:
    """A Redis Cluster of `n` masters on free ports (redis-server + redis-cli --cluster create)."""
    import shutil
    import socket

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        unavailable("redis-server / redis-cli not found on PATH (apt-get install redis-server)")
    ports: list[int] = []
    procs: list[subprocess.Popen] = []
    while len(ports) < n:
        p = free_port()
        if p + 10000 > 65535:
            continue
        try:  # the cluster bus listens on port + 10000
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        nd = d / str(p)
        nd.mkdir()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(nd / "nodes.conf"), "--save", "", "--appendonly", "no",
             "--dir", str(nd), "--logfile", str(nd / "log")],
            stdout=subprocess.DEVNULL,
        ))
        ports.append(p)
    for p, proc in zip(ports, procs):
        wait_port(p, proc, 10, "redis-server (cluster node)")
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"], check=True,
                   stdout=subprocess.DEVNULL, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = subprocess.run(["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                              capture_output=True, text=True).stdout
        if "cluster_state:ok" in info:
            return ports, procs
        time.sleep(0.1)
    raise RuntimeError("the cluster did not reach cluster_state:ok")


def test_redis_cluster_through_hash_tags(tmp_path):
    """A 3-node Redis Cluster: the writer (a redis-py cluster pipeline) and a reader
    (RedisCluster.mget_nonatomic splits each get_many by the slots of the hash tags)."""
    from redis.cluster import RedisCluster

    ports, procs = start_cluster(Path(tempfile.mkdtemp(prefix="rtml-cluster-")))
    try:
        fs = feature_set()
        events = workload(4_000, 200, seed=8)
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        pub = rtml.RedisPublisher(client=client)
        runner = Runner(fs, replay(events), tmp_path, publish=pub)
        runner.run_until_idle()
        assert pub.errors == 0
        remote = rtml.RemoteEngine(fs, client=RedisCluster(host="127.0.0.1", port=ports[-1]))
        keys = sorted(set(events.column("user").to_pylist())) + [10**9]
        wm = max(e.watermark for e in runner.engines.values())
        table = remote.get_many(keys, at=ts(wm))
        want = pa.concat_tables([runner.engine_for(k).get_many([k], at=ts(wm)) for k in keys])
        assert table.equals(want)
        assert remote.get(keys[0], at=ts(wm)) == runner.get(keys[0], at=ts(wm))
        # the keys are spread over every node (the hash tags pick the slots)
        sizes = [redis.Redis(port=p).dbsize() for p in ports]
        assert all(s > 0 for s in sizes) and sum(sizes) >= len(keys) - 1, sizes
        assert remote.stats()["keys"] == len(keys) - 1
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _child_answers(remote, keys, at, q):
    q.put([enc(remote.get(k, at=at)) for k in keys])


def test_a_forked_reader_does_not_share_its_parents_connections(redis_server, tmp_path):
    """A RemoteEngine made before a fork (gunicorn, multiprocessing) answers correctly in the
    children and in the parent, all reading at once: no process reads another's replies."""
    import multiprocessing as mp

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    fs = feature_set()
    events = workload(3_000, 40, seed=9)
    runner = Runner(fs, replay(events), tmp_path,
                    publish=rtml.RedisPublisher(url, prefix=prefix))
    runner.run_until_idle()
    remote = rtml.RemoteEngine(fs, url, prefix=prefix, timeout=1.0)
    wm = max(e.watermark for e in runner.engines.values())
    keys = sorted(set(events.column("user").to_pylist())) * 5
    want = [enc(runner.get(k, at=ts(wm))) for k in keys]
    assert [enc(remote.get(k, at=ts(wm))) for k in keys[:3]] == want[:3]  # a pooled connection
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    kids = [ctx.Process(target=_child_answers, args=(remote, keys, ts(wm), q)) for _ in range(3)]
    for k in kids:
        k.start()
    mine = [enc(remote.get(k, at=ts(wm))) for k in keys]
    got = [q.get(timeout=60) for _ in kids]
    for k in kids:
        k.join(60)
        assert k.exitcode == 0
    assert mine == want
    assert all(g == want for g in got)


def test_writer_killed_at_random_points_republishes_exactly(redis_server, tmp_path):
    """`rtml run --publish`: SIGKILL the writer (it checkpoints and publishes after every poll)
    several times, restart it, drain; every stored key state then answers like the engines of
    the checkpoints and like backfill, bit for bit."""
    import pyarrow.parquet as pq

    from rtml.runner import load_checkpoints
    from stream_helpers import kill_and_restart

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    fs = feature_set()
    events = workload(20_000, 400, seed=12)
    path = tmp_path / "events.parquet"
    pq.write_table(events, path)
    spec = tmp_path / "features.json"
    spec.write_text(fs.to_json())
    ckpt = tmp_path / "ckpt"

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "rtml.runner", "--spec", str(spec), "--source",
             f"{path}?partitions=2&max_delay=300s&seed=4", "--checkpoint", str(ckpt),
             "--until-idle", "--checkpoint-every", "0s", "--max-batch", "400", "--progress",
             "never", "--publish", url, "--publish-every", "0s", "--publish-prefix", prefix],
            env=env_with_rtml(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    kill_and_restart(spawn, ckpt, range(2), kills=3, rnd=random.Random(77))
    engines = {p: e for p, (e, _) in load_checkpoints(fs, ckpt).items()}
    remote = rtml.RemoteEngine(fs, url, prefix=prefix, timeout=1.0)
    keys = sorted(set(events.column("user").to_pylist()))
    wm = max(e.watermark for e in engines.values())
    ats = [wm - (LATENESS_S - 1) * NS, wm, wm + 3600 * NS]
    spine = pa.table({
        "user": pa.array([k for t in ats for k in keys], pa.int64()),
        "ts": pa.array([t for t in ats for _ in keys], pa.timestamp("ns", "UTC")),
    })
    off = fs.backfill(events, spine, progress=False)
    for i, t in enumerate(ats):
        got = remote.get_many(keys, at=ts(t))
        want = pa.concat_tables([
            engines[rtml.sources.partition_of(k, 2)].get_many([k], at=ts(t)) for k in keys
        ])
        assert got.equals(want), t
        rows = off.slice(i * len(keys), len(keys)).select(fs.feature_names).to_pylist()
        assert [enc(r) for r in got.select(fs.feature_names).to_pylist()] == [enc(r) for r in rows]
    st = remote.stats()
    assert {p: v["watermark"] for p, v in st["partitions"].items()} == {
        p: e.watermark for p, e in engines.items()
    }


def test_one_reader_shared_by_threads(redis_server, tmp_path):
    """Threads sharing one RemoteEngine (its pooled connections) all get the engine's answers."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    fs = feature_set()
    events = workload(3_000, 60, seed=13)
    runner = Runner(fs, replay(events), tmp_path, publish=rtml.RedisPublisher(url, prefix=prefix))
    runner.run_until_idle()
    remote = rtml.RemoteEngine(fs, url, prefix=prefix, timeout=1.0)
    wm = max(e.watermark for e in runner.engines.values())
    keys = sorted(set(events.column("user").to_pylist()))
    want = [enc(runner.get(k, at=ts(wm))) for k in keys]
    want_many = pa.concat_tables([runner.engine_for(k).get_many([k], at=ts(wm)) for k in keys])

    def work(i: int) -> bool:
        if i % 2:
            return [enc(remote.get(k, at=ts(wm))) for k in keys] == want
        return remote.get_many(keys, at=ts(wm)).equals(want_many)

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(work, range(24)))


def composite_workload(n: int, seed: int) -> pa.Table:
    """`workload` keyed by (driver: str, zone: int) instead of user: parts that collide when
    joined without a separator (("a", 12) / ("a1", 2))."""
    import numpy as np

    ev = workload(n, 40, seed=seed)
    rng = np.random.default_rng(seed)
    drivers = np.array(["a", "a1", "b", "ü", ""], dtype=object)
    users = ev.column("user").to_numpy()
    return pa.table({
        "driver": pa.array(drivers[users % len(drivers)].tolist()),
        "zone": pa.array(rng.choice([1, 2, 12], n)),
        "ts": ev["ts"], "amount": ev["amount"], "shop": ev["shop"],
    })


@pytest.mark.parametrize("path", ["rust", "redis-py"])
def test_composite_keys_through_redis_equal_the_engine(redis_server, tmp_path, path):
    """entity=["driver", "zone"]: the runner's publisher names store keys by the encoded key,
    the reader encodes the tuples the same way; get / get_many / vector / `in` equal the
    in-process engine's bit for bit (and so the backfill's), and a tuple of other part kinds is
    refused with the engine's error."""
    import numpy as np

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    base = feature_set()
    fs = rtml.FeatureSet(["driver", "zone"], "ts", base.features, allowed_lateness=f"{LATENESS_S}s")
    events = composite_workload(4_000, seed=21)
    pub = rtml.RedisPublisher(prefix=prefix, **clients(url, path))
    runner = Runner(fs, replay(events, partitions=3), tmp_path, publish=pub)
    runner.run_until_idle()
    remote = rtml.RemoteEngine(fs, prefix=prefix, **clients(url, path))
    tuples = sorted(set(zip(events["driver"].to_pylist(), events["zone"].to_pylist())), key=str)
    wm = max(e.watermark for e in runner.engines.values())
    ats = [ts(wm - 300 * NS), ts(wm), ts(wm + 1800 * NS)]
    local = {(t, a): enc(runner.get(t, at=a)) for t in tuples for a in ats}
    got = {(t, a): enc(remote.get(t, at=a)) for t in tuples for a in ats}
    assert got == local
    # the backfill of the same events agrees (an independent path)
    spine = pa.table({"driver": [t[0] for t in tuples], "zone": pa.array([t[1] for t in tuples]),
                      "ts": pa.array([wm] * len(tuples), pa.timestamp("ns", "UTC"))})
    off = fs.backfill(events, spine, output="arrow").select(fs.feature_names).to_pylist()
    assert [enc(r) for r in off] == [local[(t, ats[1])] for t in tuples]
    # get_many: the part columns then the features, as the engine's
    keys = [*tuples[:6], ("zz", 1)]
    table, wms = remote.get_many(keys, at=ats[1], with_watermark=True)
    assert table.column_names[:2] == ["driver", "zone"]
    want = pa.concat_tables([runner.engine_for(k).get_many([k], at=ats[1]) for k in keys])
    assert table.equals(want)
    assert wms[-1] is None and all(w is not None for w in wms[:-1])
    # vector and membership
    tf = rtml.Transforms([rtml.log1p("amount_sum_1h"), rtml.passthrough("count_1h")])
    for k in keys:
        a = runner.engine_for(k).vector(k, tf, at=ats[2])
        b = remote.vector(k, tf, at=ats[2])
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert tuples[0] in remote and ("zz", 1) not in remote
    # what the engine refuses, the reader refuses with the same type and message
    eng = runner.engine_for(tuples[0])
    for bad in [("a", "1"), ("a",), "a", (1, 1)]:
        with pytest.raises(rtml.RtmlError) as local_err:
            eng.get(bad, at=ats[1])
        with pytest.raises(type(local_err.value)) as rem:
            remote.get(bad, at=ats[1])
        assert str(rem.value) == str(local_err.value)
