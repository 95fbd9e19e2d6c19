"""Core benchmark (not a test): backfill on 1M generated events, online ingest and get.

    python bench/bench_core.py [--events 1000000] [--keys 100000] [--spine 100000]

Prints events/s for backfill and ingest, and microseconds per get (p50 / p99 / p99.9).
The comparison against Polars / DuckDB / pandas / River is a separate suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pyarrow as pa

import rtml
from rtml.demo import feature_set, make_events

MINUTE = 60 * 10**9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--spine", type=int, default=100_000)
    p.add_argument("--gets", type=int, default=100_000)
    args = p.parse_args()

    print(f"rtml {rtml.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'all')}")
    events = make_events(args.events, args.keys, seed=0)
    rng = np.random.default_rng(1)
    ts = events.column("ts").to_numpy().astype(np.int64)
    pick = rng.integers(0, args.events, args.spine)
    spine = pa.table({
        "driver_id": events.column("driver_id").take(pa.array(pick)),
        "ts": pa.array(ts[pick] + rng.integers(0, 30, args.spine) * MINUTE, pa.timestamp("ns")),
    })
    fs = feature_set()
    print(f"{len(fs.feature_names)} features: {', '.join(fs.feature_names)}")

    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fs.backfill(events, spine, progress=False)
        best = min(best, time.perf_counter() - t0)
    print(f"backfill   {args.events:>10,} events x {args.spine:,} spine rows: {best:7.3f} s "
          f"= {args.events / best / 1e6:6.2f} M events/s (best of 3)")

    for batch in (100_000, 1_000):
        eng = fs.online()
        t0 = time.perf_counter()
        for start in range(0, args.events, batch):
            eng.ingest(events.slice(start, batch))
        dt = time.perf_counter() - t0
        print(f"ingest     batches of {batch:>7,}: {args.events / dt / 1e6:6.2f} M events/s")

    rows = events.slice(0, 100_000).to_pylist()
    eng1 = fs.online()
    t0 = time.perf_counter()
    for r in rows:
        eng1.ingest(r)
    dt = time.perf_counter() - t0
    print(f"ingest     one dict per call  : {len(rows) / dt / 1e6:6.2f} M events/s")

    keys = events.column("driver_id").to_numpy()[rng.integers(0, args.events, args.gets)].tolist()
    at = int(ts[-1]) + 1
    unit_fs = rtml.FeatureSet.from_json(fs.to_json().replace('"timestamp_unit": null', '"timestamp_unit": "ns"'))
    eng_ns = unit_fs.online()
    eng_ns.ingest(events)
    lat = np.empty(len(keys))
    get = eng_ns.get
    for i, k in enumerate(keys):
        t0 = time.perf_counter_ns()
        get(k, at)
        lat[i] = time.perf_counter_ns() - t0
    p50, p99, p999 = np.percentile(lat, [50, 99, 99.9]) / 1e3
    print(f"get        all {len(fs.feature_names)} features of one key: p50 {p50:.2f} us, p99 {p99:.2f} us, "
          f"p99.9 {p999:.2f} us")
    st = eng_ns.stats()
    print(f"state      {st['keys']:,} keys, {st['state_bytes'] / 1e6:.1f} MB "
          f"({st['state_bytes'] / max(st['keys'], 1):.0f} B/key)")


if __name__ == "__main__":
    main()
