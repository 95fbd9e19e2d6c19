"""Reader latency while the engine ingests: how long `get` / `vector` calls from reader
threads take (p50 / p99 / max) when nothing else runs, during one big ingest call, and during
a stream of small ingests. This is the timing side of tests/python/test_threads.py (which
checks correctness only; timing is never asserted in tests).

    python bench/bench_threads.py                    # defaults: 200k keys, a 2M-event ingest
    python bench/bench_threads.py --readers 4 --big 5000000

Run it on a release build (`make develop`); a debug build reports itself in the header.
Each reader blocked behind an ingest records one long call, so look at `max_us` (the longest
stall, compared with `action_seconds`) and `calls_over_10ms` rather than the percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
import pyarrow as pa

import rtml

SEC = 10**9
MIN = 60 * SEC
T0 = 1_700_000_000 * SEC


def feature_set():
    return rtml.FeatureSet(
        entity="k",
        timestamp="ts",
        timestamp_unit="ns",
        allowed_lateness="5m",
        features=[
            rtml.count(window="1h"),
            rtml.sum("v", window="1h"),
            rtml.mean("v", window="24h"),
            rtml.quantile("v", 0.9, window="24h"),
            rtml.last("v"),
            rtml.time_since_last(),
        ],
    )


def events(rng, n, n_keys, t_lo, t_hi):
    return pa.table(
        {
            "k": rng.integers(0, n_keys, n),
            "ts": np.sort(rng.integers(t_lo, t_hi, n)),
            "v": rng.normal(10, 3, n),
        }
    )


def readers(eng, n_threads, n_keys, at, stop, tf, out):
    def loop(r):
        rng = np.random.default_rng(r)
        lat = []
        fields = {"x": 1.0}
        while not stop.is_set():
            k = int(rng.integers(0, n_keys))
            t = time.perf_counter_ns()
            if r % 2:
                eng.vector(k, tf, fields, at=at)
            else:
                eng.get(k, at=at)
            lat.append(time.perf_counter_ns() - t)
        out.extend(lat)

    ths = [threading.Thread(target=loop, args=(r,)) for r in range(n_threads)]
    for th in ths:
        th.start()
    return ths


def pct(xs):
    a = np.array(xs, dtype=np.float64) / 1e3
    if len(a) == 0:
        return {"calls": 0}
    return {
        "calls": int(len(a)),
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "p99.9_us": round(float(np.percentile(a, 99.9)), 1),
        "calls_over_10ms": int((a > 10_000).sum()),
        "max_us": round(float(a.max()), 1),
    }


def phase(eng, args, at, tf, action):
    stop = threading.Event()
    lat: list = []
    ths = readers(eng, args.readers, args.keys, at, stop, tf, lat)
    time.sleep(0.2)  # readers running
    lat.clear()
    t = time.perf_counter()
    action()
    dur = time.perf_counter() - t
    stop.set()
    for th in ths:
        th.join()
    return {"action_seconds": round(dur, 3), **pct(lat)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--warm", type=int, default=2_000_000, help="events ingested before measuring")
    ap.add_argument("--big", type=int, default=2_000_000, help="events in the one big ingest call")
    ap.add_argument("--small-batches", type=int, default=400, help="small ingests of 1,000 events")
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    fs = feature_set()
    eng = fs.online()
    span = 24 * 3600 * SEC
    eng.ingest(events(rng, args.warm, args.keys, T0, T0 + span))
    at = T0 + 2 * span  # after every event of the run: every query is exact and cheap
    tf = rtml.Transforms([rtml.ratio("v_sum_1h", "count_1h", name="avg"), rtml.log1p("x")])
    tf.fit(pa.table({"v_sum_1h": [1.0, 2.0], "count_1h": [1, 2], "x": [1.0, 2.0]}))
    big = events(rng, args.big, args.keys, T0 + span, T0 + span + 3600 * SEC)
    smalls = [
        events(rng, 1000, args.keys, T0 + span + 3600 * SEC + i * SEC, T0 + span + 3600 * SEC + (i + 1) * SEC)
        for i in range(args.small_batches)
    ]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "debug_build": rtml._core.debug_build(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "rtml_threads": rtml.num_threads(),
        "args": vars(args),
    }
    result["idle"] = phase(eng, args, at, tf, lambda: time.sleep(1.0))
    result["during_big_ingest"] = phase(eng, args, at, tf, lambda: eng.ingest(big))

    def stream():
        for b in smalls:
            eng.ingest(b)

    result["during_small_ingests"] = phase(eng, args, at, tf, stream)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
