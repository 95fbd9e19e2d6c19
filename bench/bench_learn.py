"""Benchmark of rtml.learn (issue 15): transform + predict + learn per example over a Parquet
stream, replay (join + learn) examples/s, label join labels/s, against River's
LogisticRegression (learn_one + predict_proba_one) and scikit-learn's
SGDClassifier.partial_fit (one row per call) on the same data.

    python3 bench/bench_learn.py [--rows 500000] [--features 8]

(with the rtml to measure importable, e.g. PYTHONPATH pointing at a release build).

Run on a release build (`maturin develop --release` or `pip install .`): a debug build warns
and is many times slower. Timing is wall clock, best of 3 for the rtml parts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import rtml
import rtml.learn as rl


def best(f, repeat=3):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--river-rows", type=int, default=20_000)
    ap.add_argument("--sklearn-rows", type=int, default=2_000)
    a = ap.parse_args()
    n, k = a.rows, a.features
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(n, k)) * 3 + 1
    w = rng.normal(size=k)
    y = (rng.random(n) < 1 / (1 + np.exp(-((raw - 1) / 3) @ w))).astype(float)
    names = [f"f{i}" for i in range(k)]
    t_ns = np.arange(n, dtype=np.int64) * 1_000_000_000
    res: dict[str, object] = {"rows": n, "features": k, "debug_build": rtml._core.debug_build()}

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "stream.parquet")
        pq.write_table(
            pa.table({**{c: raw[:, i] for i, c in enumerate(names)}, "y": y}),
            path,
            row_group_size=65536,
        )
        tf = rtml.Transforms([rtml.standard_scale(c) for c in names]).fit(pq.read_table(path))

        def pipeline():
            m = rl.Logistic(k, "ftrl", alpha=0.1)
            met = rl.Metrics()
            for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
                X = tf.transform_numpy(batch)
                off = met.seen
                m.progressive(X, batch.column("y").to_numpy(), t_ns[off : off + len(X)], met)
            return m, met

        s, (m, met) = best(pipeline)
        res["transform_predict_learn_us_per_example"] = s / n * 1e6
        res["rtml_progressive_auc"] = met.auc()
        res["rtml_progressive_log_loss"] = met.log_loss()
        X = tf.transform_numpy(pq.read_table(path))

    s, _ = best(lambda: rl.Logistic(k, "ftrl", alpha=0.1).learn_many(X, y))
    res["learn_many_ftrl_us_per_example"] = s / n * 1e6
    s, _ = best(lambda: rl.Logistic(k, "sgd", eta0=0.01).learn_many(X, y))
    res["learn_many_sgd_us_per_example"] = s / n * 1e6

    # label join: n served rows, labels for 90% of them, 0-60 s after serving, in time order
    ids = np.arange(n, dtype=np.int64)
    has = rng.random(n) < 0.9
    lab_t = t_ns + rng.integers(0, 60, n) * 1_000_000_000
    order = np.argsort(lab_t[has], kind="stable")
    lab_ids, lab_tt, lab_y = ids[has][order], lab_t[has][order], y[has][order]

    def join_run():
        j = rl.LabelJoin(wait="120s", on_timeout=0.0)
        j.serve_many(ids, t_ns, X)
        t = time.perf_counter()
        j.labels(lab_ids, lab_tt, lab_y)
        j.flush()
        ex = j.drain()
        return time.perf_counter() - t, len(ex)

    runs = [join_run() for _ in range(3)]
    res["label_join_labels_per_s"] = len(lab_ids) / min(r[0] for r in runs)

    def replay_run():
        j = rl.LabelJoin(wait="120s", on_timeout=0.0)
        m = rl.Logistic(k, "ftrl", alpha=0.1)
        met = rl.Metrics()
        chunk = 50_000
        for s0 in range(0, n, chunk):
            j.serve_many(ids[s0 : s0 + chunk], t_ns[s0 : s0 + chunk], X[s0 : s0 + chunk])
            sel = (lab_tt >= t_ns[s0]) & (
                lab_tt < (t_ns[s0 + chunk - 1] if s0 + chunk <= n else 2**62)
            )
            j.labels(lab_ids[sel], lab_tt[sel], lab_y[sel])
            ex = j.drain()
            m.progressive(ex.X, ex.y, ex.release, met)
        j.flush()
        ex = j.drain()
        m.progressive(ex.X, ex.y, ex.release, met)
        return met.seen

    s, seen = best(replay_run)
    res["replay_examples_per_s"] = seen / s

    # River: scaler + logistic regression, predict then learn, per example
    from river import linear_model, preprocessing

    nr = min(a.river_rows, n)
    rows = [dict(zip(names, r, strict=True)) for r in raw[:nr].tolist()]
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    t = time.perf_counter()
    for r, yy in zip(rows, y[:nr].tolist(), strict=True):
        model.predict_proba_one(r)
        model.learn_one(r, bool(yy))
    res["river_scaler_logreg_us_per_example"] = (time.perf_counter() - t) / nr * 1e6

    from sklearn.linear_model import SGDClassifier

    ns = min(a.sklearn_rows, n)
    clf = SGDClassifier(loss="log_loss")
    classes = np.array([0.0, 1.0])
    t = time.perf_counter()
    for i in range(ns):
        clf.partial_fit(X[i : i + 1], y[i : i + 1], classes=classes)
    res["sklearn_partial_fit_us_per_row"] = (time.perf_counter() - t) / ns * 1e6

    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
