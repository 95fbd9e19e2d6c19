"""Write-ahead log throughput: append + fsync of Arrow batches (`rtml.Wal`), with and without
group commit, from 1 to N concurrent appenders, for a few batch sizes. Not a test.

    python bench/bench_wal.py [--seconds 3] [--dir /path/on/the/disk/to/measure] [--json out.json]

(the rtml it imports: the installed one, or PYTHONPATH=python after a release build)

Each configuration appends for `--seconds` (after a short warm-up) into a fresh log and reports
batches/s (= acknowledgements/s), events/s, MB/s of log, fsyncs and the group-commit factor
(appends per fsync). The batch is encoded once per append (Arrow IPC), as the serving example
does. `fsync=False` rows show the cost without the disk flush (nothing durable).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import rtml


def batch(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "key": pa.array(rng.integers(0, 100_000, n), pa.int64()),
        "ts": pa.array(1_700_000_000_000_000_000 + np.sort(rng.integers(0, 10**12, n)), pa.timestamp("ns", "UTC")),
        "v": rng.standard_normal(n),
        "cat": pa.array([f"c{x}" for x in rng.integers(0, 20, n)]),
    })


def run(root: Path, events: int, threads: int, group_commit: bool, fsync: bool, seconds: float) -> dict:
    d = Path(tempfile.mkdtemp(prefix="walbench-", dir=root))
    log = rtml.Wal(d, group_commit=group_commit, fsync=fsync)
    t = batch(events)
    stop = threading.Event()
    counts = [0] * threads

    def worker(i: int) -> None:
        while not stop.is_set():
            log.append(t)
            counts[i] += 1

    for _ in range(3):  # warm-up
        log.append(t)
    c0 = log.counters()
    pos0 = log.durable_position
    ws = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for w in ws:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in ws:
        w.join()
    dt = time.perf_counter() - t0
    c1 = log.counters()
    n = sum(counts)
    appends, fsyncs = c1["appends"] - c0["appends"], c1["fsyncs"] - c0["fsyncs"]
    out = {
        "events_per_batch": events, "threads": threads, "group_commit": group_commit, "fsync": fsync,
        "batches_per_s": n / dt, "events_per_s": n * events / dt,
        "mb_per_s": (log.durable_position - pos0) / dt / 1e6,
        "fsyncs_per_s": fsyncs / dt, "appends_per_fsync": (appends / fsyncs) if fsyncs else None,
        "mean_ack_ms": 1000 * dt * threads / n if n else None,
    }
    log.close()
    shutil.rmtree(d, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--dir", default=None, help="where the logs go (default: a temp dir under ./bench/.data)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", default="1,4,16")
    ap.add_argument("--events", default="1,100,1000")
    args = ap.parse_args()
    root = Path(args.dir) if args.dir else Path(__file__).resolve().parent / ".data"
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"rtml {rtml.__version__} (debug build: {bool(rtml._core.debug_build())}); logs under {root}")
    print(f"{'events':>7} {'threads':>7} {'group':>5} {'fsync':>5} {'batches/s':>10} {'events/s':>11} {'MB/s':>7} "
          f"{'fsyncs/s':>9} {'appends/fsync':>13} {'ack ms':>7}")
    for events in [int(x) for x in args.events.split(",")]:
        configs = [(th, gc, True) for th in [int(x) for x in args.threads.split(",")] for gc in (False, True)]
        configs.append((1, True, False))
        for threads, gc, fs in configs:
            r = run(root, events, threads, gc, fs, args.seconds)
            rows.append(r)
            apf = r["appends_per_fsync"]
            print(f"{events:>7} {threads:>7} {str(gc):>5} {str(fs):>5} {r['batches_per_s']:>10,.0f} "
                  f"{r['events_per_s']:>11,.0f} {r['mb_per_s']:>7.1f} {r['fsyncs_per_s']:>9,.0f} "
                  f"{(f'{apf:.1f}' if apf else '-'):>13} {r['mean_ack_ms']:>7.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                        "load_avg": os.getloadavg()},
            "dir": str(root), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
