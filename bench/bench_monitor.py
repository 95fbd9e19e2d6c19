"""Benchmark of rtml.monitor (issue 16): fitting a reference, the batch report of N rows x 12
columns (10 numeric, 2 categorical) against an N-row reference, by day and as one period, and
the online monitor's update cost per column per row.

    python3 bench/bench_monitor.py [--rows 1000000]

(with the rtml to measure importable, e.g. PYTHONPATH pointing at a release build). A debug
build warns and is many times slower. Timing is wall clock, best of 3; peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pyarrow as pa

import rtml
import rtml.monitor as rm

DAY = 86_400 * 10**9


def table(n: int, seed: int, shift: float) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {
        "ts": pa.array(
            np.sort(rng.integers(0, 30 * DAY, size=n)).astype("datetime64[ns]"),
            type=pa.timestamp("ns"),
        )
    }
    for i in range(10):
        cols[f"x{i}"] = rng.normal(shift * (i % 3), 1.0 + i / 10, size=n)
    cats = np.array([f"c{i}" for i in range(20)])
    for i in range(2):
        codes = rng.zipf(1.5 + shift, size=n) % 20
        cols[f"k{i}"] = pa.array(cats[codes]).dictionary_encode()
    return pa.table(cols)


def best(f, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def false_alarms(windows: int = 2000, per_window: int = 1000) -> dict:
    """A long stable replay: `windows` windows of `per_window` rows drawn from the reference's
    own distribution (column x0 ~ N(0, 1)); how often each usual trigger would enter."""
    rng = np.random.default_rng(42)
    triggers = {
        "psi>0.1": rm.Trigger("psi", "x0", above=0.1),
        "psi>0.2": rm.Trigger("psi", "x0", above=0.2),
        "js>0.1": rm.Trigger("js", "x0", above=0.1),
        "ks>0.1": rm.Trigger("ks", "x0", above=0.1),
        "ks_pvalue<0.05": rm.Trigger("ks_pvalue", "x0", below=0.05),
        "ks_pvalue<0.001": rm.Trigger("ks_pvalue", "x0", below=0.001),
        "ks_pvalue<1e-6": rm.Trigger("ks_pvalue", "x0", below=1e-6),
    }
    one = rm.Reference.fit(pa.table({"x0": rng.normal(size=1_000_000)}))
    mon = rm.Monitor(one, window=1000, timestamp="t", triggers=list(triggers.values()))
    psis, pvals = [], []
    for w in range(windows):
        t = w * 1000 + np.arange(per_window) * (1000 // per_window)
        mon.update({"t": t, "x0": rng.normal(size=per_window)})
        if w:
            v = mon.values(at=w * 1000)["x0"]
            psis.append(v["psi"])
            pvals.append(v["ks_pvalue"])
    mon.advance(windows * 1000 + 1000)
    return {
        "windows": windows,
        "rows_per_window": per_window,
        "entered": {k: t.counters["entered"] for k, t in triggers.items()},
        "psi_p50_p99_max": [round(float(np.quantile(psis, q)), 4) for q in (0.5, 0.99, 1.0)],
        "share_ks_pvalue_below_0.05": round(float(np.mean(np.array(pvals) < 0.05)), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.rows
    if rtml._debug_build():
        print("WARNING: debug build of rtml: numbers are not representative")
    train, live = table(n, 1, 0.0), table(n, 2, 0.2)
    cols = [c for c in train.column_names if c != "ts"]
    t_fit, ref = best(lambda: rm.Reference.fit(train, cols))
    t_day, rep = best(lambda: rm.report(ref, live, by="1d", timestamp="ts"))
    t_one, _ = best(lambda: rm.report(ref, live))
    # online: arrivals of 1000 rows, 1 h windows
    mon = rm.Monitor(ref, window="1h", allowed_lateness="5m", timestamp="ts")
    chunk = 1000
    parts = [live.slice(i, chunk) for i in range(0, min(n, 200_000), chunk)]
    t0 = time.perf_counter()
    for p in parts:
        mon.update(p)
    t_online = time.perf_counter() - t0
    online_rows = sum(p.num_rows for p in parts)
    alarms = false_alarms()
    out = {
        "rows": n,
        "columns": len(cols),
        "fit_s": round(t_fit, 3),
        "report_by_day_s": round(t_day, 3),
        "report_rows": rep.num_rows,  # type: ignore[union-attr]
        "report_one_period_s": round(t_one, 3),
        "online_us_per_row_per_column": round(t_online / online_rows / len(cols) * 1e6, 4),
        "online_rows": online_rows,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stable_replay": alarms,
        "debug_build": rtml._debug_build(),
        "threads": rtml.num_threads(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
