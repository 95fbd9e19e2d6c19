"""Wall time of many small `FeatureSet.backfill` calls: the fixed cost a notebook pays per call.

Session 14 found the calling thread of a backfill could sleep a whole 100 ms park timeout after
the pool had finished (the worker woke it before its thread had exited, and the caller, reading
"not finished", parked again): 7 of 80 calls on 200,000 events took 110-133 ms instead of
~25 ms (`--events 200000 --calls 40`, twice; 0 of 80 after the fix, max 42 ms). This prints the
distribution so a regression of that kind shows at once:

    python bench/backfill_latency.py --events 1000 --calls 30
    PYTHONPATH=/tmp/rtml-old python bench/backfill_latency.py --events 200000

(compare builds in one run, alternating: the machine is shared and noisy). Answers are not
checked here; the parity and reference tests own them.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

import rtml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.events
    events = pd.DataFrame(
        {
            "k": rng.integers(0, 100, n),
            "ts": pd.to_datetime(rng.integers(0, 10**9, n) * 10**6, utc=True),
            "v": rng.random(n),
        }
    )
    spine = pd.DataFrame(
        {
            "k": rng.integers(0, 100, max(n // 10, 1)),
            "ts": pd.to_datetime(rng.integers(0, 10**9, max(n // 10, 1)) * 10**6, utc=True),
        }
    )
    fs = rtml.FeatureSet(
        entity="k",
        timestamp="ts",
        features=[rtml.sum("v", window="1h"), rtml.count(window="1d")],
    )
    ms = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        fs.backfill(events, spine, progress=False)
        ms.append((time.perf_counter() - t0) * 1e3)
    a = np.array(ms)
    print(
        json.dumps(
            {
                "events": n,
                "calls": args.calls,
                "median_ms": round(float(np.median(a)), 2),
                "p90_ms": round(float(np.percentile(a, 90)), 2),
                "max_ms": round(float(a.max()), 2),
                "calls_over_100ms": int((a >= 100).sum()),
            }
        )
    )


if __name__ == "__main__":
    main()
