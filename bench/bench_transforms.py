"""Transform benchmark (not a test): rtml Transforms vs a scikit-learn ColumnTransformer with the
same steps on 20 input columns, fit on 1M rows, single-row latency and batch throughput.

    python bench/bench_transforms.py [--rows 1000000] [--single 2000] [--repeat 3] [--json]

Batch: rtml `Transforms.transform_numpy(table)` (a 2-D float64 numpy array, rows x outputs)
against scikit-learn `ColumnTransformer.transform(df)` (dense output: a 2-D float64 numpy
array), the best of `--repeat` runs each, interleaved; rtml `Transforms.transform(table)` (a
pyarrow.Table of float64 columns) is reported too. Inputs are each library's native form: a
pyarrow.Table for rtml, a pandas DataFrame for scikit-learn; conversions are not timed.

The pipeline (20 inputs -> 136 rtml outputs / 132 scikit-learn outputs):
* x0..x9  (2% null): median impute, then standard scale    SimpleImputer(median) + StandardScaler
* q0..q3:            10 quantile buckets                   KBinsDiscretizer(10, ordinal, quantile, linear)
* m0..m1:            min-max scale                         MinMaxScaler
* c0..c3  (30 values): one-hot                             OneHotEncoder(handle_unknown="ignore")
rtml's one-hot always has a `{col}=__other__` column (unseen values); scikit-learn's has none
with handle_unknown="ignore". tests/python/test_baselines.py checks that every scikit-learn
output equals rtml's on 3,000 rows.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import pyarrow as pa

import rtml

N_NUM, N_Q, N_MM, N_CAT = 10, 4, 2, 4
NUM = [f"x{i}" for i in range(N_NUM)]
QS = [f"q{i}" for i in range(N_Q)]
MMS = [f"m{i}" for i in range(N_MM)]
CATS = [f"c{i}" for i in range(N_CAT)]


def make(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {}
    for c in NUM:
        x = rng.lognormal(1.0, 1.0, rows)
        x[rng.random(rows) < 0.02] = np.nan
        data[c] = x
    for c in QS:
        data[c] = rng.normal(0.0, 1.0, rows)
    for c in MMS:
        data[c] = rng.uniform(-5.0, 5.0, rows)
    for c in CATS:
        data[c] = rng.choice([f"v{j}" for j in range(30)], rows)
    return pd.DataFrame(data)


def pipelines():
    """(rtml Transforms, scikit-learn ColumnTransformer), unfitted, the same steps."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import KBinsDiscretizer, MinMaxScaler, OneHotEncoder, StandardScaler

    steps = []
    for c in NUM:
        steps += [rtml.impute(c, "median"), rtml.standard_scale(c)]
    steps += [rtml.quantile_bucketize(c, 10) for c in QS]
    steps += [rtml.min_max_scale(c) for c in MMS]
    steps += [rtml.one_hot(c) for c in CATS]
    tf = rtml.Transforms(steps)
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUM),
        ("q", KBinsDiscretizer(n_bins=10, encode="ordinal", strategy="quantile",
                               quantile_method="linear", subsample=None), QS),
        ("mm", MinMaxScaler(), MMS),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATS),
    ], verbose_feature_names_out=False)
    return tf, ct


def sklearn_to_rtml_name(name: str) -> str:
    """'c0_v3' -> 'c0=v3'; numeric names are the same."""
    for c in CATS:
        if name.startswith(c + "_"):
            return f"{c}={name[len(c) + 1:]}"
    return name


def pct(lat_ns: np.ndarray) -> dict[str, float]:
    p50, p99, p999 = np.percentile(lat_ns, [50, 99, 99.9]) / 1e3
    return {"p50_us": float(p50), "p99_us": float(p99), "p999_us": float(p999)}


def run(rows: int, single: int, repeat: int = 3) -> dict:
    df = make(rows)
    table = pa.Table.from_pandas(df, preserve_index=False)
    tf, ct = pipelines()
    res: dict = {"rows": rows}
    t0 = time.perf_counter(); tf.fit(table); res["rtml_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter(); ct.fit(df); res["sklearn_fit_s"] = time.perf_counter() - t0
    res["rtml_outputs"], res["sklearn_outputs"] = len(tf.feature_names), len(ct.get_feature_names_out())

    # interleaved, so that load from other processes hits every contender alike
    calls = {
        "rtml_numpy": lambda: tf.transform_numpy(table),
        "rtml_table": lambda: tf.transform(table),
        "sklearn": lambda: ct.transform(df),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}  # CPU seconds of all threads
    for _ in range(repeat):
        for k, f in calls.items():
            c0, t0 = time.process_time(), time.perf_counter()
            out = f()
            times[k].append(time.perf_counter() - t0); cpu[k].append(time.process_time() - c0)
            del out  # free the 1 GB result before the next call
    res["rtml_batch_call"] = "Transforms.transform_numpy(pyarrow.Table) -> numpy (rows x outputs)"
    res["sklearn_batch_call"] = "ColumnTransformer.transform(pandas.DataFrame) -> numpy (dense)"
    res["rtml_batch_rows_s"] = rows / min(times["rtml_numpy"])
    res["rtml_table_rows_s"] = rows / min(times["rtml_table"])
    res["sklearn_batch_rows_s"] = rows / min(times["sklearn"])
    res["batch_times_s"] = times
    res["batch_cpu_s"] = cpu

    # request rows as a service receives them: missing values are None (rtml rejects NaN)
    rows_d = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
              for r in df.head(single).to_dict("records")]
    vec = tf.vector
    for r in rows_d[:200]:
        vec(r)  # warm up
    lat = np.empty(len(rows_d))
    for i, r in enumerate(rows_d):
        t0 = time.perf_counter_ns(); vec(r); lat[i] = time.perf_counter_ns() - t0
    res["rtml_one_row"] = pct(lat)
    n_sk = min(500, single)
    lat_sk = np.empty(n_sk)
    for i in range(n_sk):
        one = df.iloc[[i]]
        t0 = time.perf_counter_ns(); ct.transform(one); lat_sk[i] = time.perf_counter_ns() - t0
    res["sklearn_one_row"] = pct(lat_sk)
    # the cheapest scikit-learn single-row call: a one-row numpy object array, no DataFrame
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--single", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3, help="batch runs per contender (best is reported)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    res = run(args.rows, args.single, args.repeat)
    if args.json:
        print(json.dumps(res))
        return
    print(f"{args.rows:,} rows, 20 input columns -> {res['rtml_outputs']} rtml / "
          f"{res['sklearn_outputs']} scikit-learn outputs")
    print(f"fit        rtml {res['rtml_fit_s']:7.3f} s   sklearn {res['sklearn_fit_s']:7.3f} s   "
          f"({res['sklearn_fit_s'] / res['rtml_fit_s']:5.1f}x)")
    sk = res["sklearn_batch_rows_s"]
    print(f"batch      rtml {res['rtml_batch_rows_s'] / 1e6:7.2f} M rows/s   sklearn "
          f"{sk / 1e6:7.2f} M rows/s   ({res['rtml_batch_rows_s'] / sk:5.1f}x)   "
          f"[best of {args.repeat}: rtml transform_numpy -> numpy vs ColumnTransformer.transform -> numpy]")
    print(f"batch      rtml transform -> pyarrow.Table {res['rtml_table_rows_s'] / 1e6:7.2f} M rows/s   "
          f"({res['rtml_table_rows_s'] / sk:5.1f}x sklearn)")
    ts, cs = res["batch_times_s"], res["batch_cpu_s"]
    print("batch runs, wall s: " + "; ".join(f"{k} " + " ".join(f"{t:.3f}" for t in v) for k, v in ts.items()))
    print("batch runs, CPU s:  " + "; ".join(f"{k} " + " ".join(f"{t:.3f}" for t in v) for k, v in cs.items()))
    r, s = res["rtml_one_row"], res["sklearn_one_row"]
    print(f"one row    rtml vector        p50 {r['p50_us']:8.2f} us, p99 {r['p99_us']:8.2f} us")
    print(f"one row    sklearn transform  p50 {s['p50_us']:8.2f} us, p99 {s['p99_us']:8.2f} us   "
          f"(p50 ratio {s['p50_us'] / r['p50_us']:.0f}x)")


if __name__ == "__main__":
    main()
