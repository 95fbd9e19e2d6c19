"""Streams in: JSON decode + ingest without a broker, and broker -> engine state through
rtml.Runner next to the raw client on the same broker in the same run (tansu for Kafka,
redis-server for Redis Streams). Issue 13's targets: runner >= 80% of the raw batched
consume rate of confluent-kafka; decode + ingest >= 1M events/s on two cores.

    python bench/bench_streams.py                      # 1M events, no broker + tansu + redis
    python bench/bench_streams.py --events 300000 --no-redis
    python bench/bench_streams.py --no-broker          # the no-broker rows and checkpoints only
    python bench/bench_streams.py --json bench/results/streams.json

JSON keys of "no_broker": decode_only_per_s, decode_ingest_per_s (decode then ingest, one
thread), decode_ingest_overlap_per_s (chunk n+1 decoded while chunk n is ingested on a second
thread, as the Runner does), runner_{1,2}p_per_s (Runner.run_until_idle over
sources.replay_messages, its final checkpoint included), runner_{1,2}p_drain_per_s (the same
runner until the last batch is applied, no checkpoint), runner_{1,2}p_checkpoint_s. Of
"kafka": raw_consume_per_s (confluent-kafka's batched consume, the client's defaults),
raw_consume_fetch_config_per_s (the same with rtml.sources.kafka's fetch settings,
RUNNER_FETCH_CONFIG), runner_per_s (Runner.run_until_idle, final checkpoint included),
runner_vs_raw (against the faster raw); every clock starts when the first batch is in.

The workload: bench/common.py's events (Zipf keys, out of order within the 5 min lateness) as
~50-byte JSON messages `{"key":123,"ts":1709251200000,"v":12.34,"cat":"c07"}` (epoch ms), and
its 18-feature set. Needs a release build (a debug build is refused unless --allow-debug).
"""

from __future__ import annotations

import argparse
import json
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


def messages(n: int, keys: int) -> tuple[list[bytes], list[int]]:
    ev = common.make_events(n, keys, seed=0)
    k = ev.column(common.KEY).to_numpy()
    ts = ev.column(common.TS).cast("int64").to_numpy() // 1_000_000
    v = ev.column(common.VAL).to_pylist()
    cat = ev.column(common.CAT).to_pylist()
    out = []
    for i in range(n):
        d = {"key": int(k[i]), "ts": int(ts[i])}
        if v[i] is not None:
            d["v"] = v[i]
        if cat[i] is not None:
            d["cat"] = cat[i]
        out.append(json.dumps(d, separators=(",", ":")).encode())
    return out, [int(x) for x in k]


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_no_broker(msgs: list[bytes], keys: list[int], batch: int) -> dict:
    import rtml
    import rtml.sources
    from rtml.runner import Runner
    from rtml.sources import _decoder_config

    fs = common.feature_set()
    src = rtml.sources.replay_messages(msgs, keys, 1, timestamp_unit="ms")
    dec = rtml._core.JsonDecoder(*_decoder_config(src, fs))
    chunks = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
    out = {"events": len(msgs), "batch": batch, "mean_message_bytes": float(np.mean([len(m) for m in msgs]))}

    t0 = time.perf_counter()
    for c in chunks:
        dec.decode(c, True)
    out["decode_only_per_s"] = rate(len(msgs), time.perf_counter() - t0)

    eng = fs.online()
    import pyarrow as pa

    t0 = time.perf_counter()
    for c in chunks:
        b, _, _ = dec.decode(c, True)
        eng.ingest(pa.Table.from_batches([b]))
    out["decode_ingest_per_s"] = rate(len(msgs), time.perf_counter() - t0)

    # the same, overlapped as the Runner does it: chunk n+1 decoded while chunk n is ingested
    # on another thread (both release the GIL)
    from concurrent.futures import ThreadPoolExecutor

    eng = fs.online()
    with ThreadPoolExecutor(1) as pool:
        t0 = time.perf_counter()
        inflight = None
        for c in chunks:
            b, _, _ = dec.decode(c, True)
            table = pa.Table.from_batches([b])
            if inflight is not None:
                inflight.result()
            inflight = pool.submit(eng.ingest, table)
        if inflight is not None:
            inflight.result()
        out["decode_ingest_overlap_per_s"] = rate(len(msgs), time.perf_counter() - t0)

    t0 = time.perf_counter()
    for c in chunks[: max(1, len(chunks) // 10)]:
        for m in c:
            json.loads(m)
    n_py = sum(len(c) for c in chunks[: max(1, len(chunks) // 10)])
    out["python_json_loads_only_per_s"] = rate(n_py, time.perf_counter() - t0)

    for parts in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            r = Runner(fs, rtml.sources.replay_messages(msgs, keys, parts, timestamp_unit="ms"), d,
                       checkpoint_every="5s", max_batch=batch)
            t0 = time.perf_counter()
            r.run_until_idle()
            out[f"runner_{parts}p_per_s"] = rate(len(msgs), time.perf_counter() - t0)
            # until the last batch is applied, without run_until_idle's final checkpoint (its
            # cost follows the keys held, not the stream: runner_{p}p_checkpoint_s below)
            r2 = Runner(fs, rtml.sources.replay_messages(msgs, keys, parts, timestamp_unit="ms"),
                        tempfile.mkdtemp(dir=d), checkpoint_every="1h", max_batch=batch)
            r2._open()
            t0 = time.perf_counter()
            while r2.step() or not r2.source.idle():
                pass
            r2._drain()
            out[f"runner_{parts}p_drain_per_s"] = rate(len(msgs), time.perf_counter() - t0)
            assert r2.metrics(lag=False)["events_in"] == len(msgs)
            r2.close()
            t0 = time.perf_counter()
            r.checkpoint()  # nothing new: no partition is written
            r._parts[0].dirty = True
            t0 = time.perf_counter()
            r.checkpoint()
            out[f"runner_{parts}p_checkpoint_s"] = time.perf_counter() - t0
            out[f"runner_{parts}p_keys"] = sum(e.stats()["keys"] for e in r.engines.values())
    return out


def bench_checkpoint(key_counts: list[int]) -> list[dict]:
    """Checkpoint write and restore time against live state (keys), stream length fixed per
    key (4 events per key): the cost follows the state, not how long the stream ran."""
    import rtml.sources
    from rtml.runner import Runner

    fs = common.feature_set()
    out = []
    for keys in key_counts:
        ev = common.make_events(4 * keys, keys, seed=1)
        with tempfile.TemporaryDirectory() as d:
            r = Runner(fs, rtml.sources.replay(ev, arrival=None), d, checkpoint_every="1h", max_batch=100_000)
            r.run_until_idle()
            r._parts[0].dirty = True
            t0 = time.perf_counter()
            r.checkpoint()
            write = time.perf_counter() - t0
            size = (Path(d) / "partition-0.ckpt").stat().st_size
            t0 = time.perf_counter()
            r2 = Runner(fs, rtml.sources.replay(ev), d)
            r2._open()
            restore = time.perf_counter() - t0
            out.append({"keys": r.engine.stats()["keys"], "events": ev.num_rows, "checkpoint_s": write,
                        "restore_s": restore, "checkpoint_bytes": size})
    return out


#: The fetch settings rtml.sources.kafka gives its consumer beyond the client's defaults (and
#: the raw consume's second variant): python/rtml/sources.py, KafkaSource.open.
RUNNER_FETCH_CONFIG = {"fetch.queue.backoff.ms": 20, "fetch.wait.max.ms": 100}


def produce_topic(bootstrap: str, msgs: list[bytes], keys: list[int], prefix: str) -> str:
    """A new 2-partition topic on `bootstrap` holding `msgs` (keyed by `keys`); its name."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 2_000_000})
    for m, k in zip(msgs, keys):
        while True:
            try:
                p.produce(topic, m, key=str(k).encode())
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)
    return topic


def bench_kafka(msgs: list[bytes], keys: list[int], batch: int) -> dict:
    from confluent_kafka import Consumer

    import rtml.sources
    from rtml.runner import Runner
    from services import start_tansu

    svc = start_tansu()
    try:
        bootstrap = f"127.0.0.1:{svc.port}"
        t0 = time.perf_counter()
        topic = produce_topic(bootstrap, msgs, keys, "bench")
        out = {"events": len(msgs), "partitions": 2, "produce_per_s": rate(len(msgs), time.perf_counter() - t0)}

        def raw(extra: dict | None = None) -> float:
            c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
                          "auto.offset.reset": "earliest", "enable.auto.commit": False, **(extra or {})})
            c.subscribe([topic])
            n, t0 = 0, None
            while n < len(msgs):
                got = c.consume(batch, 1.0)
                if got and t0 is None:
                    t0 = time.perf_counter()
                for m in got:
                    if m.error() is None:
                        m.value()
                        n += 1
            dt = time.perf_counter() - t0
            c.close()
            return rate(n, dt)

        def runner(pipeline: bool = True) -> float:
            with tempfile.TemporaryDirectory() as d:
                fs = common.feature_set()
                r = Runner(fs, rtml.sources.kafka(bootstrap, topic, f"rtml-{uuid.uuid4().hex[:6]}",
                                                  timestamp_unit="ms"), d, max_batch=batch, pipeline=pipeline)
                r._open()
                while not r.engines:  # the group join, not counted
                    r.step()
                # from the first batch read, as for raw (its clock starts when its first batch
                # is in; that batch is counted, not timed)
                while not r.step():
                    pass
                t0 = time.perf_counter()
                r.run_until_idle(timeout=600)
                dt = time.perf_counter() - t0
                assert r.metrics()["events_in"] == len(msgs), r.metrics()
                r.close()
                return rate(len(msgs), dt)

        # interleaved, best of two each (same broker, same run). The raw consume runs twice per
        # round: with the client's defaults, and with the fetch settings rtml.sources.kafka
        # gives its consumer (session 10); the ratio is against the faster of the two.
        raws, raws_cfg, runs, serial = [], [], [], []
        for _ in range(2):
            raws.append(raw())
            raws_cfg.append(raw(RUNNER_FETCH_CONFIG))
            runs.append(runner())
            serial.append(runner(pipeline=False))
        out["raw_consume_per_s"] = max(raws)
        out["raw_consume_fetch_config_per_s"] = max(raws_cfg)
        out["runner_per_s"] = max(runs)
        out["runner_vs_raw"] = out["runner_per_s"] / max(max(raws), max(raws_cfg))
        out["runner_no_pipeline_per_s"] = max(serial)
        out["all_raw"], out["all_raw_fetch_config"] = raws, raws_cfg
        out["all_runner"], out["all_runner_no_pipeline"] = runs, serial
        return out
    finally:
        svc.stop()


def bench_redis(msgs: list[bytes], keys: list[int], batch: int) -> dict:
    import redis

    import rtml.sources
    from rtml.runner import Runner
    from services import start_redis

    svc = start_redis()
    try:
        url = f"redis://127.0.0.1:{svc.port}/0"
        c = redis.Redis.from_url(url)
        streams = ["bench:0", "bench:1"]
        pipe = c.pipeline(transaction=False)
        for i, (m, k) in enumerate(zip(msgs, keys)):
            pipe.xadd(streams[rtml.sources.partition_of(k, 2)], {"data": m})
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        t0 = time.perf_counter()
        last = {s: "0-0" for s in streams}
        n = 0
        while n < len(msgs):
            for s, entries in c.xread(last, count=batch):
                name = s.decode()
                for eid, f in entries:
                    f[b"data"]
                last[name] = entries[-1][0]
                n += len(entries)
        raw = rate(n, time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as d:
            r = Runner(common.feature_set(), rtml.sources.redis_stream(url, streams, timestamp_unit="ms"), d,
                       max_batch=batch, poll_timeout=0.05)  # (pipelined: XREAD overlaps decode + ingest)
            t0 = time.perf_counter()
            r.run_until_idle()
            run = rate(len(msgs), time.perf_counter() - t0)
        c.close()
        return {"events": len(msgs), "streams": 2, "raw_xread_per_s": raw, "runner_per_s": run,
                "runner_vs_raw": run / raw}
    finally:
        svc.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--no-kafka", action="store_true")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--no-broker", action="store_true", help="neither Kafka nor Redis")
    ap.add_argument("--allow-debug", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.no_broker:
        args.no_kafka = args.no_redis = True
    import rtml

    build = "debug" if rtml._debug_build() else "release"
    if build == "debug" and not args.allow_debug:
        sys.exit("debug build: build with `maturin develop --release` (or pass --allow-debug)")
    msgs, keys = messages(args.events, args.keys)
    res = {"build": build, "machine": common.machine(), "no_broker": bench_no_broker(msgs, keys, args.batch)}
    print(json.dumps(res["no_broker"], indent=1), flush=True)
    res["checkpoint"] = bench_checkpoint([10_000, 100_000, 1_000_000 if args.events >= 1_000_000 else 200_000])
    print(json.dumps(res["checkpoint"], indent=1), flush=True)
    if not args.no_kafka:
        res["kafka"] = bench_kafka(msgs, keys, args.batch)
        print(json.dumps(res["kafka"], indent=1), flush=True)
    if not args.no_redis:
        res["redis"] = bench_redis(msgs, keys, args.batch)
        print(json.dumps(res["redis"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
