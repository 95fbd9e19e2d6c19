"""Shared online state in Redis (issue 14): reader latency of rtml.RemoteEngine (get, get_many of
100 keys, vector) on loopback, writer throughput of a Runner publishing to Redis every 100 ms,
and bytes per key, side by side with a Feast-style read of precomputed values (one Redis hash
per entity, HGETALL + decoding in Python) for the same 18 features.

    python bench/bench_shared_state.py                       # 1M events, 100k keys
    python bench/bench_shared_state.py --events 200000 --keys 20000
    python bench/bench_shared_state.py --json bench/results/shared_state.json

Starts its own redis-server on a free port (tests/python/services.py). Needs a release build
(a debug build is refused unless --allow-debug).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

import common  # noqa: E402


def lat(fn, n: int) -> dict:
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        out[i] = time.perf_counter_ns() - t0
    return common.percentiles_us(out)


def writer(fs, events, url: str, partitions: int, publish_every: str) -> dict:
    import rtml
    import rtml.sources
    from rtml.runner import Runner

    out = {}
    for label, pub in [
        ("no_publish", None),
        # delta segments appended (the default)
        ("publish", rtml.RedisPublisher(url, prefix=f"w{uuid.uuid4().hex[:6]}",
                                        publish_every=publish_every)),
        # every changed key's whole state each time (deltas=False)
        ("publish_whole", rtml.RedisPublisher(url, prefix=f"w{uuid.uuid4().hex[:6]}",
                                              publish_every=publish_every, deltas=False)),
    ]:
        src = rtml.sources.replay(events, partitions=partitions)
        with tempfile.TemporaryDirectory() as d:
            r = Runner(fs, src, d, checkpoint_every="1h", publish=pub)
            t0 = time.perf_counter()
            n = r.run_until_idle()
            dt = time.perf_counter() - t0
            out[label] = {"events": n, "seconds": round(dt, 3), "events_per_s": round(n / dt)}
            if pub is not None:
                out[label]["publish"] = pub.metrics()
    out["publish_every"] = publish_every
    out["partitions"] = partitions
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--allow-debug", action="store_true")
    ap.add_argument("--read-timeout", type=float, default=0.05,
                    help="RemoteEngine timeout (s); raise it on a loaded machine, where a "
                         "preempted read can pass 50 ms")
    args = ap.parse_args()

    import redis

    import rtml
    import rtml.sources
    from rtml.runner import Runner
    from services import start_redis

    build = common.rtml_build()
    if build != "release" and not args.allow_debug:
        print("refusing to time a debug build (pass --allow-debug)", file=sys.stderr)
        return 2
    svc = start_redis()
    url = f"redis://127.0.0.1:{svc.port}/0"
    res: dict = {"build": build, "machine": common.machine(), "events": args.events,
                 "keys": args.keys, "redis_py": redis.__version__,
                 "read_timeout_s": args.read_timeout}
    try:
        import hiredis  # noqa: F401

        res["hiredis"] = True
    except ImportError:
        res["hiredis"] = False
    try:
        fs = common.feature_set()
        events = common.make_events(args.events, args.keys, seed=0)

        # ---- writer throughput -----------------------------------------------------------
        res["loadavg_before_writer"] = [round(x, 2) for x in os.getloadavg()]
        res["writer"] = writer(fs, events, url, args.partitions, "100ms")
        res["loadavg_after_writer"] = [round(x, 2) for x in os.getloadavg()]
        print("writer", json.dumps(res["writer"]))

        # ---- state for the readers: one runner that publishes ----------------------------
        pub = rtml.RedisPublisher(url, prefix="bench")
        d = tempfile.mkdtemp()
        runner = Runner(fs, rtml.sources.replay(events, partitions=args.partitions), d,
                        checkpoint_every="1h", publish=pub)
        runner.run_until_idle()
        c = redis.Redis.from_url(url)
        remote = rtml.RemoteEngine(fs, url, prefix="bench", timeout=args.read_timeout)
        keys = sorted(set(events.column(common.KEY).to_pylist()))
        wm = min(e.watermark for e in runner.engines.values())
        at = np.datetime64(wm, "ns")
        rng = np.random.default_rng(7)
        q = [keys[i] for i in rng.integers(0, len(keys), args.queries)]

        # bytes per key (value length, and Redis' own accounting of a sample of keys)
        names = [remote._reader.store_key(k) for k in keys[:: max(1, len(keys) // 2000)]]
        vlen = [c.strlen(n) for n in names]
        mem = [c.memory_usage(n, samples=0) for n in names]
        res["bytes_per_key"] = {
            "value_mean": round(float(np.mean(vlen))),
            "value_p50": int(np.percentile(vlen, 50)),
            "value_p99": int(np.percentile(vlen, 99)),
            "redis_memory_usage_mean": round(float(np.mean(mem))),
            "sampled_keys": len(names),
            "redis_used_memory_bytes": int(c.info("memory")["used_memory"]),
            "keys_total": len(keys),
        }
        print("bytes", json.dumps(res["bytes_per_key"]))

        # parity of a sample before timing (what is timed is right)
        sample = q[:200]
        for k in sample:
            assert remote.get(k, at=at) == runner.get(k, at=at)

        tf = rtml.Transforms([
            rtml.log1p(f"{common.VAL}_sum_1h"),
            rtml.passthrough("count_24h"),
            rtml.passthrough(f"{common.VAL}_mean_24h"),
            rtml.passthrough("time_since_last"),
        ])
        batches = [[keys[i] for i in rng.integers(0, len(keys), 100)] for _ in range(1000)]
        res["rtml_remote"] = {
            "get": lat(lambda i: remote.get(q[i], at=at), len(q)),
            "get_many_100": lat(lambda i: remote.get_many(batches[i], at=at), len(batches)),
            "vector": lat(lambda i: remote.vector(q[i], tf, None, at=at), len(q)),
            # the vector and get's dict from one fetched value (a replica's /predict)
            "vector_with_features": lat(
                lambda i: remote.vector(q[i], tf, None, at=at, with_features=True), len(q)),
        }
        engines = runner.engines
        of = {k: engines[rtml.sources.partition_of(k, args.partitions)] for k in set(q)}
        by_part = [
            {p: [k for k in b if rtml.sources.partition_of(k, args.partitions) == p]
             for p in engines}
            for b in batches
        ]
        res["rtml_in_process"] = {
            "get": lat(lambda i: of[q[i]].get(q[i], at=at), len(q)),
            # the same batches, one get_many per partition's engine (the noise floor of the
            # machine for get_many: no network, no decoding)
            "get_many_100": lat(
                lambda i: [engines[p].get_many(ks, at=at) for p, ks in by_part[i].items() if ks],
                len(batches),
            ),
            "vector": lat(lambda i: of[q[i]].vector(q[i], tf, None, at=at), len(q)),
        }
        print("rtml remote", json.dumps(res["rtml_remote"]))
        print("rtml in-process", json.dumps(res["rtml_in_process"]))

        # ---- Feast-style: precomputed values, one hash per entity, decoded in Python ------
        feats = fs.feature_names
        rows = {}
        for p, e in engines.items():
            ks = [k for k in keys if rtml.sources.partition_of(k, args.partitions) == p]
            t = e.get_many(ks, at=at)
            cols = [t.column(f).to_pylist() for f in feats]
            for i, k in enumerate(ks):
                rows[k] = [col[i] for col in cols]
        pipe = c.pipeline(transaction=False)
        t0 = time.perf_counter()
        for j, (k, vals) in enumerate(rows.items()):
            pipe.hset(f"feast:{k}", mapping={
                f: (b"" if v is None else struct.pack("<d", float(v))) for f, v in zip(feats, vals)
            })
            if j % 2000 == 1999:
                pipe.execute()
        pipe.execute()
        feast_write = time.perf_counter() - t0

        def decode(h: dict) -> dict:
            return {f.decode(): (struct.unpack("<d", v)[0] if v else None) for f, v in h.items()}

        def feast_get(k):
            return decode(c.hgetall(f"feast:{k}"))

        def feast_many(ks):
            p = c.pipeline(transaction=False)
            for k in ks:
                p.hgetall(f"feast:{k}")
            return [decode(h) for h in p.execute()]

        fmem = [c.memory_usage(f"feast:{k}", samples=0) for k in keys[:: max(1, len(keys) // 2000)]]
        res["feast_style"] = {
            "get": lat(lambda i: feast_get(q[i]), len(q)),
            "get_many_100": lat(lambda i: feast_many(batches[i]), len(batches)),
            "write_seconds_all_keys": round(feast_write, 3),
            "redis_memory_usage_mean": round(float(np.mean(fmem))),
        }
        print("feast-style", json.dumps(res["feast_style"]))
        res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        svc.stop()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
