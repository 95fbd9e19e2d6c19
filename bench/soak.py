"""Soak run of the online engine: a long event stream over simulated days, with keys that
appear, get hot, and go idle forever, a ttl and bounded-memory (tiled) windows. Samples the
process's resident memory, the C heap in use (glibc mallinfo2: the engine's allocations; pyarrow
allocates from its own pool, not from malloc) and `engine.stats()` over time, and reports
whether memory plateaus and how `state_bytes` tracks the real allocation.

Not a test (tests/python/test_soak_short.py runs the --short form with loose assertions).

    python bench/soak.py                      # 50M events, 30 simulated days (release build!)
    python bench/soak.py --short              # 2M events, 2 simulated days
    python bench/soak.py --json out.json      # also write every sample

Key model: at simulated time t the active keys are ids [start(t), start(t) + pool), with
start(t) sliding by `--slide` ids per day; an event's key is start(t) + r, r drawn from a
Zipf(1.1) over the pool's ranks. A key therefore enters the pool cold (high rank), gets hotter
as the pool slides over it, is hottest at rank 0, and then is never seen again: after `ttl`
of silence the engine may evict it. Distinct keys over the run: pool + slide * days.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

import rtml

SEC = 10**9
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = int(np.datetime64("2024-03-01T00:00:00", "ns").astype(np.int64))

# (events, days, pool of active keys, keys slid per day, batch size, ttl)
CONFIGS = {
    "long": dict(events=50_000_000, days=30, pool=1_000_000, slide=150_000, batch=250_000, ttl="1d"),
    "short": dict(events=2_000_000, days=2, pool=200_000, slide=400_000, batch=100_000, ttl="8h"),
}


def feature_set(ttl: str):
    # Every windowed feature is tiled (bounded memory per key whatever the event rate);
    # lifetime features keep O(1) state. ttl >= largest window + hop + allowed lateness.
    return rtml.FeatureSet(
        entity="user",
        timestamp="ts",
        timestamp_unit="ns",
        allowed_lateness="5m",
        ttl=ttl,
        features=[
            rtml.count(window="1h", hop="5m"),
            rtml.sum("amount", window="1h", hop="5m"),
            rtml.mean("amount", window="6h", hop="30m"),
            rtml.max("amount", window="6h", hop="30m"),
            rtml.std("amount", window="6h", hop="30m"),
            rtml.quantile("amount", 0.9, window="6h", hop="30m"),
            rtml.last("amount"),
            rtml.count(name="events_lifetime"),
            rtml.time_since_last(),
        ],
    )


class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
try:
    _mallinfo2 = _libc.mallinfo2
    _mallinfo2.restype = Mallinfo2
except AttributeError:  # glibc < 2.33
    _mallinfo2 = None


def heap_in_use() -> int:
    """Bytes allocated through malloc and not freed (small-block arenas + mmapped blocks)."""
    if _mallinfo2 is None:
        return -1
    m = _mallinfo2()
    return m.uordblks + m.hblkhd


def malloc_held() -> int:
    """Bytes glibc malloc holds from the system (in use + free in its arenas + mmapped)."""
    if _mallinfo2 is None:
        return -1
    m = _mallinfo2()
    return m.arena + m.hblkhd


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def zipf_cdf(pool: int, s: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, pool + 1, dtype=np.float64) ** s
    c = np.cumsum(p)
    return c / c[-1]


def batches(cfg, seed: int):
    """Yield (batch_index, pa.Table) over cfg['days'] of simulated time, in time order with
    events shuffled within the allowed lateness (up to 4 minutes out of order)."""
    rng = np.random.default_rng(seed)
    cdf = zipf_cdf(cfg["pool"])
    n_batches = -(-cfg["events"] // cfg["batch"])
    span = cfg["days"] * DAY
    per_batch = span / n_batches
    for b in range(n_batches):
        n = min(cfg["batch"], cfg["events"] - b * cfg["batch"])
        lo = T0 + int(b * per_batch)
        ts = lo + np.sort(rng.integers(0, max(1, int(per_batch)), n))
        ts = ts - rng.integers(0, 4 * MIN, n) * (rng.random(n) < 0.2)  # some late-ish arrivals
        start = ((ts - T0) // SEC) * cfg["slide"] // (DAY // SEC)
        ranks = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), cfg["pool"] - 1)
        keys = start + ranks
        amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
        yield b, pa.table({"user": keys, "ts": ts, "amount": amount})


def run(cfg, sample_every: int, seed: int = 1, log=print):
    fs = feature_set(cfg["ttl"])
    gc.collect()
    eng = fs.online()
    base_rss, base_heap = rss(), heap_in_use()
    samples = []
    t_start = time.perf_counter()
    ingest_s = 0.0
    n_batches = -(-cfg["events"] // cfg["batch"])
    for b, table in batches(cfg, seed):
        t = time.perf_counter()
        eng.ingest(table)
        ingest_s += time.perf_counter() - t
        del table
        if b % sample_every == sample_every - 1 or b == n_batches - 1:
            st = eng.stats()
            s = {
                "batch": b + 1,
                "events": st["events_ingested"] + st["late_events_dropped"],
                "sim_day": (st["watermark"] - T0) / DAY,
                "keys": st["keys"],
                "keys_evicted": st["keys_evicted"],
                "late": st["late_events_dropped"],
                "state_bytes": st["state_bytes"],
                "rss": rss() - base_rss,
                "heap": heap_in_use() - base_heap,
                "malloc_held": malloc_held(),
                "arrow_allocated": pa.total_allocated_bytes(),
                "wall_s": time.perf_counter() - t_start,
            }
            samples.append(s)
            log(
                f"day {s['sim_day']:6.2f}  events {s['events']:>11,}  keys {s['keys']:>9,}  "
                f"evicted {s['keys_evicted']:>10,}  state {s['state_bytes'] / 2**20:8.1f} MiB  "
                f"heap {s['heap'] / 2**20:8.1f} MiB  rss {s['rss'] / 2**20:8.1f} MiB  "
                f"{s['wall_s']:7.1f} s"
            )
    return eng, samples, ingest_s, base_rss, base_heap


def ttl_days(ttl: str) -> float:
    units = {"h": 1 / 24, "d": 1.0}
    return float(ttl[:-1]) * units[ttl[-1]]


def summarize(samples, cfg):
    """Plateau and tracking figures over the samples after warm-up (twice the ttl plus the
    largest window, 6h, of simulated time: by then keys are evicted as fast as they appear)."""
    warm = 2 * ttl_days(cfg["ttl"]) + 0.25
    after = [s for s in samples if s["sim_day"] >= warm]
    if len(after) < 4:
        after = samples[len(samples) // 2:]
    half = len(after) // 2
    first, second = after[:half], after[half:]

    def peak(xs, k):
        return max(s[k] for s in xs)

    ratios = [s["state_bytes"] / s["heap"] for s in after if s["heap"] > 0]
    return {
        "warm_up_days": warm,
        "samples_after_warm_up": len(after),
        "keys_max_after_warm_up": peak(after, "keys"),
        "keys_min_after_warm_up": min(s["keys"] for s in after),
        "state_bytes_peak_first_half": peak(first, "state_bytes"),
        "state_bytes_peak_second_half": peak(second, "state_bytes"),
        "heap_peak_first_half": peak(first, "heap"),
        "heap_peak_second_half": peak(second, "heap"),
        "rss_peak_first_half": peak(first, "rss"),
        "rss_peak_second_half": peak(second, "rss"),
        "state_growth_second_vs_first": peak(second, "state_bytes") / peak(first, "state_bytes") - 1,
        "heap_growth_second_vs_first": peak(second, "heap") / peak(first, "heap") - 1,
        "rss_growth_second_vs_first": peak(second, "rss") / peak(first, "rss") - 1,
        "state_over_heap_min": min(ratios) if ratios else None,
        "state_over_heap_max": max(ratios) if ratios else None,
        "state_over_heap_last": ratios[-1] if ratios else None,
        "state_over_rss_last": after[-1]["state_bytes"] / after[-1]["rss"] if after[-1]["rss"] > 0 else None,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="2M events over 2 simulated days")
    ap.add_argument("--events", type=int)
    ap.add_argument("--days", type=int)
    ap.add_argument("--pool", type=int)
    ap.add_argument("--slide", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--ttl")
    ap.add_argument("--samples", type=int, default=60, help="about this many samples over the run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the configuration, samples and summary here")
    args = ap.parse_args(argv)
    cfg = dict(CONFIGS["short" if args.short else "long"])
    for k in ("events", "days", "pool", "slide", "batch", "ttl"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    n_batches = -(-cfg["events"] // cfg["batch"])
    sample_every = max(1, n_batches // args.samples)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "?"
    header = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "commit": commit,
        "rtml": rtml.__version__,
        "debug_build": rtml._core.debug_build(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "config": cfg,
    }
    print(json.dumps(header))
    eng, samples, ingest_s, base_rss, base_heap = run(cfg, sample_every, args.seed)
    summary = summarize(samples, cfg)
    summary["ingest_seconds"] = ingest_s
    summary["events_per_second"] = cfg["events"] / ingest_s
    summary["distinct_keys_approx"] = cfg["pool"] + cfg["slide"] * cfg["days"]
    summary["base_rss"] = base_rss
    summary["base_heap"] = base_heap
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "samples": samples, "summary": summary}, f, indent=1)
    return header, samples, summary


if __name__ == "__main__":
    main()
