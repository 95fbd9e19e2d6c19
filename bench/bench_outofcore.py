"""Out-of-core backfill (issue 17): time and peak RSS of `rtml.outofcore.backfill` on Parquet
input larger than its memory limit, against the in-memory backfill of the same data, and the
check that both give the same bits. Not a test (timings); docs/scale.md has results.

    python bench/bench_outofcore.py --events 10000000 --memory-limit 300MB
    python bench/bench_outofcore.py --events 10000000 --memory-limit 300MB --skip-memory
    python bench/bench_outofcore.py --events 100000000 --memory-limit 4GB --skip-memory
    python bench/bench_outofcore.py --calibrate            # the MEMORY_MODEL constants

Data (generated once, cached under bench/.data/ooc_e{N}/, generation not timed): N events with
N/10 keys (bench/common.py: Zipf keys, 7 days, rows in arrival order), N/10 spine rows, written
as Parquet parts of 1M events (row groups of 128k rows); the 18-feature set of issue 4. Every
run is its own subprocess, so "peak RSS" (getrusage ru_maxrss) is that run's alone, Python,
pyarrow and the reading of the input included.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def generate(n: int) -> Path:
    import pyarrow.parquet as pq
    from common import DATA_DIR, make_events, make_spine

    root = DATA_DIR / f"ooc_e{n}"
    if (root / "done").exists():
        return root
    (root / "events").mkdir(parents=True, exist_ok=True)
    (root / "spine").mkdir(parents=True, exist_ok=True)
    chunk = 1_000_000
    n_keys = max(1, n // 10)
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        ev = make_events(m, n_keys, seed=1000 + i)
        sp = make_spine(ev, m // 10, seed=2000 + i)
        pq.write_table(ev, root / "events" / f"part-{i:04d}.parquet", row_group_size=128_000)
        pq.write_table(sp, root / "spine" / f"part-{i:04d}.parquet", row_group_size=128_000)
        print(f"generated {start + m:,} / {n:,} events", file=sys.stderr)
    (root / "done").write_text("ok")
    return root


def run_one(mode: str, root: str, out: str, limit: str, workers: str) -> None:
    """One measured run (in its own process): prints a JSON line."""
    import os
    import warnings

    from common import feature_set

    import rtml

    fs = feature_set()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    hot: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", rtml.HotKeyWarning)
        if mode == "memory":
            import pyarrow.parquet as pq

            table = fs.backfill(f"{root}/events", f"{root}/spine", output="arrow", progress=False)
            pq.write_table(table, out)
            rows, extra = table.num_rows, {}
        else:
            res = rtml.outofcore.backfill(
                fs,
                f"{root}/events",
                f"{root}/spine",
                out,
                memory_limit=limit,
                progress=False,
                workers=int(workers),
            )
            rows = res.rows
            extra = {
                "workers": int(workers),
                "partitions": res.partitions,
                "units": res.units,
                "budget": res.budget,
                "seconds": res.seconds,
                "hot_keys": [[str(k), c] for k, c in res.hot_keys],
            }
        hot = [str(w.message) for w in caught if issubclass(w.category, rtml.HotKeyWarning)]
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_after = os.getloadavg()
    print(
        json.dumps(
            {
                "mode": mode,
                "wall_s": wall,
                "peak_rss": peak,
                "rows": rows,
                "warnings": hot,
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                **extra,
            }
        )
    )


def check_same(memory_out: str, ooc_out: str) -> dict:
    """Same bits: the out-of-core rows sorted by spine_row against the in-memory rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = pq.read_table(memory_out)
    got = pq.read_table(ooc_out).sort_by("spine_row")
    assert got.column("spine_row").to_pylist() == list(range(want.num_rows))
    got = got.drop_columns(["spine_row"])
    assert got.column_names == want.column_names
    for name in want.column_names:
        g, w = got.column(name), want.column(name)
        assert g.is_null().equals(w.is_null()), name
        if pa.types.is_floating(w.type):
            assert np.array_equal(
                g.fill_null(0.0).to_numpy().view(np.uint64),
                w.fill_null(0.0).to_numpy().view(np.uint64),
            ), name
        else:
            assert g.equals(w), name
    return {"rows": want.num_rows, "columns": len(want.column_names), "identical": True}


def calibrate() -> None:
    """How far the in-memory backfill rises above its starting RSS, for slices of the 1M-event
    data (all spine rows of the slice's keys): the MEMORY_MODEL constants."""
    root = generate(1_000_000)
    code = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from common import feature_set
import rtml
n = int(sys.argv[3])
ev = pq.read_table(sys.argv[2] + "/events").slice(0, n).combine_chunks()
sp = pq.read_table(sys.argv[2] + "/spine")
sp = sp.filter(pc.is_in(sp.column("key"), ev.column("key").unique())).combine_chunks()
fs = feature_set()
pa.default_memory_pool().release_unused()
base = int(open("/proc/self/statm").read().split()[1]) * 4096
out = fs.backfill(ev, sp, output="arrow", progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"events": n, "event_bytes": ev.nbytes, "spine_rows": sp.num_rows,
                  "spine_bytes": sp.nbytes, "features": len(fs.feature_names),
                  "rise_MB": round((peak - base) / 1e6, 1)}))
"""
    for n in (125_000, 250_000, 500_000, 1_000_000):
        subprocess.run([sys.executable, "-c", code, str(HERE), str(root), str(n)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--memory-limit", default="300MB")
    ap.add_argument("--skip-memory", action="store_true", help="no in-memory run (nor check)")
    ap.add_argument(
        "--workers",
        default="1",
        help="out-of-core units run at once; a comma list runs one out-of-core run per value",
    )
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--json", help="append the results to this JSON-lines file")
    ap.add_argument("--_run", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        run_one(*args._run)
        return
    if args.calibrate:
        calibrate()
        return
    root = generate(args.events)
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="ooc-bench-", dir=root))
    results = []
    try:
        workers = [w.strip() for w in args.workers.split(",")]
        modes = ([] if args.skip_memory else [("memory", "1")]) + [("ooc", w) for w in workers]
        outs = {"memory": str(work / "memory.parquet")}
        for i, (mode, w) in enumerate(modes):
            out = outs["memory"] if mode == "memory" else str(work / f"ooc-{i}-w{w}")
            cmd = [
                sys.executable,
                __file__,
                "--_run",
                mode,
                str(root),
                out,
                args.memory_limit,
                w,
            ]
            p = subprocess.run(cmd, check=True, capture_output=True, text=True)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(events=args.events, memory_limit=args.memory_limit)
            r["us_per_event"] = r["wall_s"] / args.events * 1e6
            results.append(r)
            print(json.dumps(r), flush=True)
            if mode == "ooc" and not args.skip_memory:
                c = check_same(outs["memory"], out)
                print(json.dumps({"check": c, "workers": w}), flush=True)
            if mode == "ooc":
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
