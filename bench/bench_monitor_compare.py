"""Side by side (issue 16): the batch drift report of N rows x 12 columns (10 numeric, 2
categorical) against an N-row reference, with rtml.monitor, Evidently, NannyML and whylogs on the
same data; wall time and peak memory of each, one child process per tool.

    python3 bench/bench_monitor_compare.py [--rows 1000000] [--tools rtml,evidently,nannyml,whylogs]
        [--python evidently=/path/to/venv/bin/python ...]

(with the rtml to measure importable, e.g. PYTHONPATH pointing at a release build; the other
tools from the `bench` extra). The data is the one of bench/bench_monitor.py (reference: seed 1,
no shift; current: seed 2, shift 0.2), written once to Parquet; every child reads both files into
memory first (pyarrow for rtml, pandas for the others, as each tool takes them), then:

* memory: the child's resident set size right before the report (the two tables loaded) and its
  peak during the report (Linux VmHWM, reset through /proc/self/clear_refs just before), so
  `peak - before` is what the report itself adds on top of the data;
* time: wall clock of the report (fitting the reference's summary + comparing), one run (these
  tools take tens of seconds; the first run is what a notebook user waits for).

What each tool computes (as close to "PSI, JS, Wasserstein, KS, chi2 per column" as each
offers): rtml: every metric of rtml.monitor.METRICS on 20 quantile bins. Evidently
(``ValueDrift``): PSI, Jensen-Shannon, Wasserstein (normed), KS on numeric columns; PSI,
Jensen-Shannon, chi-square on categorical ones, on the raw values. NannyML
(``UnivariateDriftCalculator``, one chunk): KS, Jensen-Shannon, Wasserstein on numeric; chi2,
Jensen-Shannon on categorical (it has no PSI). whylogs: profiles of both tables, then
``calculate_drift_scores`` (KS on KLL sketches for numeric, chi-square on frequent items for
categorical, Hellinger): whylogs has no PSI, JS or Wasserstein.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
NUMERIC = [f"x{i}" for i in range(10)]
CATEGORICAL = ["k0", "k1"]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measured(run: Callable[[], Any]) -> dict[str, Any]:
    """RSS before, peak RSS during `run` (VmHWM after a reset), wall time."""
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to now
        reset = True
    except OSError:
        reset = False
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return {
        "seconds": round(seconds, 3),
        "rss_before_mb": round(before / 1024, 1),
        "peak_mb": round(peak / 1024, 1),
        "report_peak_mb": round((peak - before) / 1024, 1) if reset else None,
        "result": out,
    }


# ---------------------------------------------------------------------------------- the tools


def run_rtml(ref_path: str, cur_path: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    import rtml
    import rtml.monitor as rm

    ref_t, cur_t = pq.read_table(ref_path), pq.read_table(cur_path)
    cols = NUMERIC + CATEGORICAL

    def report() -> Any:
        t0 = time.perf_counter()
        ref = rm.Reference.fit(ref_t, cols)
        t1 = time.perf_counter()
        rep = rm.report(ref, cur_t)
        t2 = time.perf_counter()
        return {
            "fit_s": round(t1 - t0, 3),
            "report_s": round(t2 - t1, 3),
            "rows": rep.num_rows,
            "psi_x0": round(rep.column("psi")[0].as_py(), 4),
        }

    out = measured(report)
    out["version"] = rtml.__version__ + (" (debug build)" if rtml._debug_build() else "")
    out["threads"] = rtml.num_threads()
    return out


def run_evidently(ref_path: str, cur_path: str) -> dict[str, Any]:
    import evidently
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    ref_df, cur_df = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    for df in (ref_df, cur_df):
        for c in CATEGORICAL:
            df[c] = df[c].astype(str)
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)

    def report() -> Any:
        metrics = [
            ValueDrift(column=c, method=m)
            for c in NUMERIC
            for m in ("psi", "jensenshannon", "wasserstein", "ks")
        ] + [
            ValueDrift(column=c, method=m)
            for c in CATEGORICAL
            for m in ("psi", "jensenshannon", "chisquare")
        ]
        snap = Report(metrics).run(
            current_data=Dataset.from_pandas(cur_df, data_definition=definition),
            reference_data=Dataset.from_pandas(ref_df, data_definition=definition),
        )
        return {"metrics": len(snap.dict()["metrics"])}

    out = measured(report)
    out["version"] = evidently.__version__
    return out


def run_nannyml(ref_path: str, cur_path: str) -> dict[str, Any]:
    import nannyml as nml
    import pandas as pd

    ref_df, cur_df = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    for df in (ref_df, cur_df):
        for c in CATEGORICAL:
            df[c] = df[c].astype(str)

    def report() -> Any:
        calc = nml.UnivariateDriftCalculator(
            column_names=NUMERIC + CATEGORICAL,
            continuous_methods=["kolmogorov_smirnov", "jensen_shannon", "wasserstein"],
            categorical_methods=["chi2", "jensen_shannon"],
            chunk_number=1,
        )
        calc.fit(ref_df)
        res = calc.calculate(cur_df).to_df()
        return {"result_shape": list(res.shape)}

    out = measured(report)
    out["version"] = nml.__version__
    return out


def run_whylogs(ref_path: str, cur_path: str) -> dict[str, Any]:
    import pandas as pd
    import whylogs as why
    from whylogs.viz.drift.column_drift_algorithms import calculate_drift_scores  # type: ignore

    ref_df, cur_df = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    for df in (ref_df, cur_df):
        for c in CATEGORICAL:
            df[c] = df[c].astype(str)

    def report() -> Any:
        ref_view = why.log(pandas=ref_df).view()
        cur_view = why.log(pandas=cur_df).view()
        scores = calculate_drift_scores(
            target_view=cur_view, reference_view=ref_view, with_thresholds=True
        )
        return {"columns": len(scores)}

    out = measured(report)
    out["version"] = why.package_version() if hasattr(why, "package_version") else "?"
    return out


TOOLS = {
    "rtml": run_rtml,
    "evidently": run_evidently,
    "nannyml": run_nannyml,
    "whylogs": run_whylogs,
}


# ---------------------------------------------------------------------------------- driver


def write_data(n: int, folder: Path) -> tuple[str, str]:
    import pyarrow.parquet as pq

    sys.path.insert(0, str(HERE))
    from bench_monitor import table

    paths = []
    for name, seed, shift in (("reference", 1, 0.0), ("current", 2, 0.2)):
        t = table(n, seed, shift).drop(["ts"])
        p = folder / f"{name}.parquet"
        pq.write_table(t, p)
        paths.append(str(p))
    return paths[0], paths[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="TOOL=PATH",
        help="run TOOL's child with another interpreter (e.g. a venv where it imports)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--cur", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(TOOLS[args.child](args.ref, args.cur)))
        return
    pythons = dict(x.split("=", 1) for x in args.python)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        ref, cur = write_data(args.rows, Path(d))
        for tool in args.tools.split(","):
            p = subprocess.run(
                [
                    pythons.get(tool, sys.executable),
                    __file__,
                    "--child",
                    tool,
                    "--ref",
                    ref,
                    "--cur",
                    cur,
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            if p.returncode != 0:
                results[tool] = {"error": p.stderr.strip().splitlines()[-1:]}
            else:
                results[tool] = json.loads(p.stdout.strip().splitlines()[-1])
            print(tool, json.dumps(results[tool]), flush=True)
    print()
    print(f"{args.rows:,} rows x 12 columns against a {args.rows:,}-row reference")
    print(
        "| tool | version | time (s) | RSS with both tables (MB) | peak RSS (MB) | peak added by the report (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for tool, r in results.items():
        if "error" in r:
            print(f"| {tool} | - | failed: {r['error']} | | | |")
            continue
        print(
            f"| {tool} | {r['version']} | {r['seconds']} | {r['rss_before_mb']} | {r['peak_mb']} "
            f"| {r['report_peak_mb']} |"
        )


if __name__ == "__main__":
    main()
