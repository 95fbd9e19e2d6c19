"""Transform benchmark (not a test): rtml Transforms vs a scikit-learn ColumnTransformer with the
same steps (median impute + standard scale on numeric columns, one-hot on categoricals),
single-row latency and batch throughput.

    python bench/bench_transforms.py [--rows 1000000] [--numeric 15] [--categorical 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import pyarrow as pa

import rtml


def make(rows: int, n_num: int, n_cat: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {}
    for i in range(n_num):
        x = rng.lognormal(1.0, 1.0, rows)
        x[rng.random(rows) < 0.02] = np.nan
        data[f"x{i}"] = x
    for i in range(n_cat):
        data[f"c{i}"] = rng.choice([f"v{j}" for j in range(30)], rows)
    return pd.DataFrame(data)


def pct(lat_ns: np.ndarray) -> str:
    p50, p99 = np.percentile(lat_ns, [50, 99]) / 1e3
    return f"p50 {p50:8.2f} us, p99 {p99:8.2f} us"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--numeric", type=int, default=15)
    ap.add_argument("--categorical", type=int, default=5)
    ap.add_argument("--single", type=int, default=2_000)
    args = ap.parse_args()
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = make(args.rows, args.numeric, args.categorical)
    num = [f"x{i}" for i in range(args.numeric)]
    cat = [f"c{i}" for i in range(args.categorical)]
    table = pa.Table.from_pandas(df, preserve_index=False)

    steps = []
    for c in num:
        steps += [rtml.impute(c, "median"), rtml.standard_scale(c)]
    steps += [rtml.one_hot(c) for c in cat]
    tf = rtml.Transforms(steps)
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cat),
    ])
    t0 = time.perf_counter(); tf.fit(table); t_fit = time.perf_counter() - t0
    print(f"{args.rows:,} rows, {args.numeric} numeric + {args.categorical} categorical columns "
          f"-> {len(tf.feature_names)} outputs")
    t0 = time.perf_counter(); ct.fit(df); s_fit = time.perf_counter() - t0
    print(f"fit        rtml {t_fit:7.3f} s   sklearn {s_fit:7.3f} s   ({s_fit / t_fit:5.1f}x)")

    t0 = time.perf_counter(); tf.transform(table); t_tr = time.perf_counter() - t0
    t0 = time.perf_counter(); ct.transform(df); s_tr = time.perf_counter() - t0
    print(f"batch      rtml {args.rows / t_tr / 1e6:7.2f} M rows/s   sklearn {args.rows / s_tr / 1e6:7.2f} M rows/s   "
          f"({s_tr / t_tr:5.1f}x)")

    # request rows as a service receives them: missing values are None (rtml rejects NaN)
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in df.head(args.single).to_dict("records")]
    lat = np.empty(len(rows))
    vec = tf.vector
    for i, r in enumerate(rows):
        t0 = time.perf_counter_ns(); vec(r); lat[i] = time.perf_counter_ns() - t0
    print(f"one row    rtml vector        {pct(lat)}")
    n_sk = min(300, len(rows))
    lat_sk = np.empty(n_sk)
    for i in range(n_sk):
        one = df.iloc[[i]]
        t0 = time.perf_counter_ns(); ct.transform(one); lat_sk[i] = time.perf_counter_ns() - t0
    print(f"one row    sklearn transform  {pct(lat_sk)}   "
          f"(p50 ratio {np.median(lat_sk) / np.median(lat):.0f}x)")


if __name__ == "__main__":
    main()
