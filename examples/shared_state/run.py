"""One writer, N reader replicas, one Redis: shared online state end to end.

    python examples/shared_state/run.py                 # starts its own redis-server
    python examples/shared_state/run.py --readers 4 --events 200000
    python examples/shared_state/run.py --url redis://127.0.0.1:6379/0

The writer is an `rtml.Runner` over a replay of synthetic events (2 partitions), publishing every
changed key's state to Redis every 100 ms (`rtml.RedisPublisher`). Each reader is a separate
process with an `rtml.RemoteEngine`: while the writer runs it answers random queries (and
counts them); once the writer has drained the stream, every reader answers the same fixed
queries, and this script checks each answer against the writer's in-process engines, bit for
bit. docs/shared-state.md explains the layout and the guarantees.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import rtml
import rtml.sources
from rtml.runner import Runner

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def feature_set() -> rtml.FeatureSet:
    return rtml.FeatureSet(
        entity="user",
        timestamp="ts",
        features=[
            rtml.count(window="1h"),
            rtml.sum("amount", window="1h"),
            rtml.mean("amount", window="24h"),
            rtml.max("amount", window="1h"),
            rtml.distinct_count("shop", window="24h"),
            rtml.time_since_last(),
        ],
        allowed_lateness="5m",
        ttl="3d",
    )


def events(n: int, keys: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, 2 * 86400 * NS, n))
    return pa.table({
        "user": pa.array(np.minimum(rng.zipf(1.3, n), keys) - 1, pa.int64()),
        "ts": pa.array(ts, pa.timestamp("ns", "UTC")),
        "amount": pa.array(np.round(rng.lognormal(2, 1, n), 2)),
        "shop": pa.array([f"s{i}" for i in rng.integers(0, 30, n)]),
    })


def enc(row: dict) -> dict:
    return {k: (v.hex() if isinstance(v, float) else v) for k, v in row.items()}


def reader(url: str, queries: str, done: str, out: str) -> int:
    """A replica: random reads while the writer runs, then the fixed queries."""
    fs = feature_set()
    remote = fs.remote(url, timeout=0.05)
    qs = json.loads(Path(queries).read_text())
    rng = np.random.default_rng(os.getpid())
    lat, errors = [], {}
    Path(out + ".ready").write_text("")
    while not Path(done).exists():
        k, t = qs[int(rng.integers(0, len(qs)))]
        t0 = time.perf_counter_ns()
        try:
            remote.get(k, at=pd.Timestamp(t, unit="ns", tz="UTC"))
            lat.append(time.perf_counter_ns() - t0)
        except rtml.RtmlError as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    answers = [enc(remote.get(k, at=pd.Timestamp(t, unit="ns", tz="UTC"))) for k, t in qs]
    p50, p99 = (np.percentile(lat, [50, 99]) / 1e3).tolist() if lat else (None, None)
    Path(out).write_text(json.dumps({"answers": answers, "reads": len(lat), "errors": errors,
                                     "p50_us": p50, "p99_us": p99}))
    return 0


def start_redis(d: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found (apt-get install redis-server), or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(d)], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None, help="an existing Redis (default: start one)")
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=5_000)
    ap.add_argument("--reader", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reader:
        return reader(args.url, *args.reader)

    work = Path(tempfile.mkdtemp(prefix="rtml-shared-"))
    server = None
    url = args.url
    if url is None:
        server, url = start_redis(work)
    fs = feature_set()
    ev = events(args.events, args.keys)
    end = int(ev.column("ts").cast(pa.int64())[-1].as_py())
    rng = np.random.default_rng(1)
    keys = sorted(set(ev.column("user").to_pylist()))
    queries = [[int(keys[i]), end + int(s) * NS]
               for i, s in zip(rng.integers(0, len(keys), 500), rng.integers(0, 3600, 500))]
    (work / "queries.json").write_text(json.dumps(queries))
    done = work / "drained"
    procs = [subprocess.Popen([sys.executable, __file__, "--url", url, "--reader",
                               str(work / "queries.json"), str(done), str(work / f"r{i}.json")])
             for i in range(args.readers)]
    try:
        while not all((work / f"r{i}.json.ready").exists() for i in range(args.readers)):
            time.sleep(0.05)
        pub = rtml.RedisPublisher(url, publish_every="100ms")
        runner = Runner(fs, rtml.sources.replay(ev, partitions=2, max_delay="2m", seed=0),
                        work / "ckpt", checkpoint_every="2s", max_batch=5_000, publish=pub)
        t0 = time.perf_counter()
        n = runner.run_until_idle()
        dt = time.perf_counter() - t0
        print(f"writer: {n:,} events in {dt:.2f}s ({n / dt:,.0f}/s), "
              f"publish {runner.metrics()['publish']}")
        done.write_text("")
        for p in procs:
            p.wait(120)
        want = [enc(runner.get(k, at=pd.Timestamp(t, unit="ns", tz="UTC"))) for k, t in queries]
        ok = True
        for i in range(args.readers):
            got = json.loads((work / f"r{i}.json").read_text())
            same = got["answers"] == want
            ok &= same
            print(f"reader {i}: {got['reads']:,} reads while writing (p50 {got['p50_us']:.0f} us, "
                  f"p99 {got['p99_us']:.0f} us), errors {got['errors']}; "
                  f"{len(want)} answers after draining {'== writer, bit for bit' if same else 'DIFFER'}")
        print("stats:", json.dumps(fs.remote(url).stats()["partitions"]))
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if server is not None:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
