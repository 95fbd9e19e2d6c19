"""rtml on Spark against the same features written as Spark SQL window functions, and local rtml
(issue 17). Not a test (timings); the results and the command go to docs/scale.md.

    python bench/bench_spark.py --data 1m            # 1M events / 100k keys / 100k spine rows
    python bench/bench_spark.py --data small --compare-only
    python bench/bench_spark.py --data 1m --no-compare         # timings only

What runs, on the same data (bench/common.py, cached Parquet with microsecond timestamps so Spark
reads them exactly), with Spark in local mode (local[2], the 2-core machine):

* **local rtml**: ``fs.backfill(events, spine)`` in this process;
* **rtml on Spark**: ``rtml.spark.backfill(fs, events_df, spine_df, partitions=N)`` written to
  Spark's ``noop`` sink (everything computed, nothing stored), with and without the check job;
* **Spark SQL**: the feature set as window functions over the union of events and spine rows,
  ``RANGE BETWEEN <W> PRECEDING AND 1 PRECEDING`` on integer microseconds (rtml's ``[t - W, t)``),
  written to ``noop`` as well; and the version most people write first,
  ``RANGE BETWEEN INTERVAL 1 HOURS PRECEDING AND CURRENT ROW`` on the timestamp, whose window is
  ``[t - W, t]``: it counts the events at the instant t itself (the label's own event leaks).

The feature set: for 1h and 24h, count, sum / mean / min / max / var / std of v; the lifetime
last v (ties: largest); time since the last event; distinct count of cat over 24h. (rtml's
quantile and decayed sum have no Spark SQL window equivalent and are left out.) Then the answers
are compared row by row: equal bits, or the largest relative difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WINDOWS = {"1h": 3600 * 10**6, "24h": 86400 * 10**6}  # microseconds
AGGS = {
    "sum": "sum",
    "mean": "avg",
    "min": "min",
    "max": "max",
    "var": "var_samp",
    "std": "stddev_samp",
}


def feature_set():
    import rtml

    feats = []
    for w in WINDOWS:
        feats.append(rtml.count(window=w))
        for a in AGGS:
            feats.append(getattr(rtml, a)("v", window=w))
    feats += [rtml.last("v"), rtml.time_since_last(), rtml.distinct_count("cat", window="24h")]
    return rtml.FeatureSet("key", "ts", feats)


def spark_sql(exact: bool) -> str:
    """The feature set as Spark SQL window functions over `u` (events and spine rows, is_spine
    = 1 for spine rows, whose v and cat are null)."""
    cols = []
    for w, us in WINDOWS.items():
        if exact:
            # rtml: t - W <= ts < t. Integer microseconds: 1 PRECEDING ends just before t
            frame = f"(PARTITION BY key ORDER BY t_us RANGE BETWEEN {us} PRECEDING AND 1 PRECEDING)"
        else:
            # what is usually written: [t - W, t], the instant t itself included
            frame = f"(PARTITION BY key ORDER BY ts RANGE BETWEEN INTERVAL {us // 3_600_000_000} HOURS PRECEDING AND CURRENT ROW)"
        cols.append(f"coalesce(sum(1 - is_spine) OVER {frame}, 0) AS count_{w}")
        for a, fn in AGGS.items():
            expr = f"{fn}(v) OVER {frame}"
            if a == "sum":
                expr = f"coalesce({expr}, 0D)"
            cols.append(f"{expr} AS v_{a}_{w}")
    life = (
        "(PARTITION BY key ORDER BY t_us RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
        if exact
        else "(PARTITION BY key ORDER BY t_us RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )
    # last: the latest non-null value, ties on time broken by the largest value (as rtml)
    cols.append(f"max(CASE WHEN v IS NOT NULL THEN struct(t_us, v) END) OVER {life}.v AS v_last")
    cols.append(
        f"(t_us - max(CASE WHEN is_spine = 0 THEN t_us END) OVER {life}) / 1e6 AS time_since_last"
    )
    frame24 = (
        f"(PARTITION BY key ORDER BY t_us RANGE BETWEEN {WINDOWS['24h']} PRECEDING AND 1 PRECEDING)"
        if exact
        else "(PARTITION BY key ORDER BY ts RANGE BETWEEN INTERVAL 24 HOURS PRECEDING AND CURRENT ROW)"
    )
    # COUNT(DISTINCT ...) OVER is not supported by Spark: the size of the set instead
    cols.append(f"size(collect_set(cat) OVER {frame24}) AS cat_distinct_count_24h")
    return "SELECT id, key, ts, " + ",\n       ".join(cols) + "\nFROM u"


def prepare(name: str) -> tuple[str, str]:
    """Events and spine with microsecond timestamps (Spark's unit) and a spine id."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from common import DATA_DIR, dataset

    root = DATA_DIR / f"spark_{name}"
    ev_p, sp_p = root / "events.parquet", root / "spine.parquet"
    if not sp_p.exists():
        root.mkdir(parents=True, exist_ok=True)
        ev, sp = dataset(name)
        ev = ev.set_column(1, "ts", ev.column("ts").cast(pa.timestamp("us")))
        sp = sp.set_column(1, "ts", sp.column("ts").cast(pa.timestamp("us")))
        sp = sp.append_column("id", pa.array(np.arange(sp.num_rows)))
        pq.write_table(ev, ev_p)
        pq.write_table(sp, sp_p)
    return str(ev_p), str(sp_p)


def compare(got, want, names) -> dict:
    import numpy as np
    import pyarrow as pa

    got = got.sort_by("id")
    want = want.sort_by("id")
    report = {}
    for n in names:
        g, w = got.column(n), want.column(n)
        if g.type != w.type and pa.types.is_integer(w.type):
            g = g.cast(w.type)
        gn = np.asarray(g.is_null())
        wn = np.asarray(w.is_null())
        both = ~gn & ~wn
        gv = g.cast(pa.float64()).fill_null(0.0).to_numpy()
        wv = w.cast(pa.float64()).fill_null(0.0).to_numpy()
        bits = (gv.view(np.uint64) == wv.view(np.uint64)) & both
        rel = np.abs(gv - wv) / np.maximum(np.abs(wv), 1e-300)
        report[n] = {
            "rows": len(wv),
            "null_mismatch": int((gn != wn).sum()),
            "bit_equal": int(bits.sum() + (gn & wn).sum()),
            "max_rel_diff": float(rel[both].max()) if both.any() else 0.0,
        }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default="1m")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--compare-only", action="store_true", help="no timing, only the answers")
    ap.add_argument("--no-compare", action="store_true", help="timings only (no answer check)")
    ap.add_argument(
        "--sql-timeout",
        type=float,
        default=900,
        help="cancel the Spark SQL run after this many seconds (reported as a lower bound)",
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import pyarrow.parquet as pq
    from pyspark.sql import SparkSession

    import rtml
    import rtml.spark

    ev_p, sp_p = prepare(args.data)
    fs = feature_set()
    names = fs.feature_names
    results: dict = {
        "data": args.data,
        "partitions": args.partitions,
        "command": " ".join(["python", *sys.argv]),
    }

    events, spine = pq.read_table(ev_p), pq.read_table(sp_p)
    results["events"], results["spine"] = events.num_rows, spine.num_rows
    t0 = time.perf_counter()
    local = fs.backfill(events, spine, output="arrow", progress=False)
    results["local_rtml_s"] = time.perf_counter() - t0

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("rtml-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "6g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    ev_df = spark.read.parquet(ev_p)
    sp_df = spark.read.parquet(sp_p)

    def timed_noop(df) -> float:
        t = time.perf_counter()
        df.write.format("noop").mode("overwrite").save()
        return time.perf_counter() - t

    # warm-up: JVM, Python workers
    timed_noop(ev_df.limit(1000))

    u = (
        ev_df.selectExpr("key", "ts", "v", "cat", "0 AS is_spine", "CAST(NULL AS BIGINT) AS id")
        .unionByName(
            sp_df.selectExpr(
                "key",
                "ts",
                "CAST(NULL AS DOUBLE) AS v",
                "CAST(NULL AS STRING) AS cat",
                "1 AS is_spine",
                "id",
            )
        )
        .selectExpr("*", "unix_micros(CAST(ts AS TIMESTAMP)) AS t_us")
    )
    u.createOrReplaceTempView("u")
    sql_exact = spark.sql(spark_sql(exact=True)).where("id IS NOT NULL")
    sql_naive = spark.sql(spark_sql(exact=False)).where("id IS NOT NULL")
    results["spark_sql_exact_query"] = spark_sql(exact=True)

    if not args.compare_only:
        import warnings

        # twice: the first run also starts the Python workers and imports rtml in them
        for label in ("rtml_on_spark_first_s", "rtml_on_spark_s"):
            t = time.perf_counter()
            on_spark = rtml.spark.backfill(
                fs, ev_df, sp_df, partitions=args.partitions, check=False
            )
            timed_noop(on_spark)
            results[label] = time.perf_counter() - t
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", rtml.HotKeyWarning)
            checked = rtml.spark.backfill(fs, ev_df, sp_df, partitions=args.partitions)
        timed_noop(checked)
        results["rtml_on_spark_with_check_s"] = time.perf_counter() - t
        results["hot_key_warnings"] = [
            str(w.message) for w in caught if issubclass(w.category, rtml.HotKeyWarning)
        ]
        print(
            json.dumps(
                {
                    k: results[k]
                    for k in (
                        "local_rtml_s",
                        "rtml_on_spark_first_s",
                        "rtml_on_spark_s",
                        "rtml_on_spark_with_check_s",
                    )
                }
            ),
            flush=True,
        )
        import threading

        sc = spark.sparkContext
        sc.setJobGroup("rtml-bench-sql", "Spark SQL windows")
        timer = threading.Timer(args.sql_timeout, lambda: sc.cancelJobGroup("rtml-bench-sql"))
        timer.start()
        t = time.perf_counter()
        try:
            timed_noop(sql_exact)
            results["spark_sql_s"] = time.perf_counter() - t
            results["spark_sql_speedup"] = results["spark_sql_s"] / results["rtml_on_spark_s"]
        except Exception as e:  # cancelled: report the lower bound
            results["spark_sql_s"] = None
            results["spark_sql_cancelled_after_s"] = time.perf_counter() - t
            results["spark_sql_speedup_at_least"] = (time.perf_counter() - t) / results[
                "rtml_on_spark_s"
            ]
            print(f"Spark SQL cancelled: {type(e).__name__}", file=sys.stderr)
        finally:
            timer.cancel()
            sc.setJobGroup("rtml-bench", "")
        results["spark_overhead_per_event_us"] = (
            (results["rtml_on_spark_s"] - results["local_rtml_s"]) / events.num_rows * 1e6
        )
        print(
            json.dumps({k: v for k, v in results.items() if k != "spark_sql_exact_query"}, indent=1)
        )

    if args.no_compare:
        spark.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return
    got_rtml = (
        rtml.spark.backfill(fs, ev_df, sp_df, partitions=args.partitions, check=False)
        .select("id", *names)
        .toArrow()
    )
    results["rtml_on_spark_vs_local"] = compare(got_rtml, local, names)
    results["spark_sql_exact_vs_rtml"] = compare(
        sql_exact.select("id", *names).toArrow(), local, names
    )
    results["spark_sql_naive_vs_rtml"] = compare(
        sql_naive.select("id", *names).toArrow(), local, names
    )
    summary = {
        k: {
            n: (r["bit_equal"], r["rows"], r["null_mismatch"], r["max_rel_diff"])
            for n, r in results[k].items()
        }
        for k in ("rtml_on_spark_vs_local", "spark_sql_exact_vs_rtml", "spark_sql_naive_vs_rtml")
    }
    print(json.dumps(summary, indent=1))
    spark.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
