"""What the watermark guard and deduplication cost at ingest (issue 12).

    PYTHONPATH=python python bench/bench_guards.py [n_events]

Ingests the same stream (time order, 1,000 keys, 8 features) into engines that differ only in
`max_ahead` (None = guard off, the default guard) and `dedupe_on` (int ids, str ids), as Arrow
tables of 10,000 rows and as single row dicts, and prints events per second (best of 3).
Relative numbers only on a debug build (`rtml._core.debug_build()`)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa

import rtml

S = 10**9


def feature_set(**kw):
    return rtml.FeatureSet(
        "k",
        "ts",
        [
            rtml.count(window="1h"),
            rtml.sum("x", window="1h"),
            rtml.mean("x", window="10m"),
            rtml.max("x", window="1h"),
            rtml.std("x", window="1h"),
            rtml.last("x"),
            rtml.count(),
            rtml.time_since_last(),
        ],
        allowed_lateness="5m",
        timestamp_unit="ns",
        **kw,
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = np.random.default_rng(1)
    ts = 1_700_000_000 * S + np.sort(rng.integers(0, 3 * 24 * 3600 * S, n))
    table = pa.table(
        {
            "k": rng.integers(0, 1000, n),
            "ts": ts,
            "x": rng.standard_normal(n),
            "id": np.arange(n),
            "sid": pa.array([f"event-{i:012d}" for i in range(n)]),
        }
    )
    rows = table.slice(0, min(n, 100_000)).to_pylist()
    cases = {
        "guard off (max_ahead=None)": feature_set(max_ahead=None),
        "default guard": feature_set(),
        "guard + dedupe_on int": feature_set(dedupe_on="id"),
        "guard + dedupe_on str": feature_set(dedupe_on="sid"),
    }
    print(f"rtml debug build: {rtml._core.debug_build()}; {n:,} events")
    for name, fs in cases.items():
        best_t = best_r = float("inf")
        for _ in range(3):
            eng = fs.online()
            t0 = time.perf_counter()
            for i in range(0, n, 10_000):
                eng.ingest(table.slice(i, 10_000))
            best_t = min(best_t, time.perf_counter() - t0)
            assert eng.stats()["events_ingested"] == n
            eng = fs.online()
            t0 = time.perf_counter()
            for r in rows:
                eng.ingest(r)
            best_r = min(best_r, time.perf_counter() - t0)
        print(
            f"{name:30s} tables: {n / best_t / 1e6:6.2f} M events/s   "
            f"row dicts: {len(rows) / best_r / 1e3:7.1f} k events/s"
        )


if __name__ == "__main__":
    main()
