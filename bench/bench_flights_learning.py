"""Online learning on the flights stream: rtml.learn against River, same examples, same order.

Reads the artifacts of notebooks/flight_delays.ipynb (run it first; RTML_ARTIFACTS or
--artifacts): the Oct-Dec test flights (test_rows.parquet), the fitted transforms, the departures
(the labels) and the online configuration of the manifest. Every flight asked about at its
scheduled departure waits for its departure in an `rtml.learn.LabelJoin`; the released examples
(the exact served vectors, in release order) then train, test-then-train, from a cold start:

  * rtml `Logistic` (FTRL-Proximal, the manifest's hyperparameters, Rust),
  * rtml `Logistic` (plain SGD, eta0 0.01),
  * River `linear_model.LogisticRegression` (SGD 0.01, River's default), `predict_proba_one`
    then `learn_one` per example,

and reports progressive AUC / log loss and the time per example (learning only: the join and
the vectors are shared). Usage: python bench/bench_flights_learning.py [--artifacts DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import log_loss, roc_auc_score

import rtml
import rtml.learn as rl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default=os.environ.get("RTML_ARTIFACTS", "artifacts"))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    art = Path(args.artifacts)
    manifest = json.loads((art / "manifest.json").read_text())
    cfg = manifest["online"]
    rows = pq.read_table(art / "test_rows.parquet")
    tfs = [rtml.Transforms.from_json((art / e["transforms"]).read_text()) for e in manifest["feature_sets"]]
    X = np.column_stack([tf.transform(rows).to_pandas().to_numpy(dtype="float64") for tf in tfs])
    X = np.nan_to_num(X, nan=cfg["nan_as"])
    at = rows.column("sched_dep").cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_numpy()
    flight = [f"{t}@{s}" for t, s in zip(rows.column("tailnum").to_pylist(), at.tolist())]
    first = np.flatnonzero(~pa.array(flight).to_pandas().duplicated().to_numpy())
    deps = pq.read_table(art / "departures.parquet")
    labels = pa.table({"request_id": deps.column("event_id"),
                       "at": deps.column("ts").cast(pa.timestamp("ns", "UTC")).cast(pa.int64()),
                       "label": deps.column("late")})
    requests = pa.table({"request_id": [flight[i] for i in first], "at": at[first]})
    join_kw = dict(wait=cfg["wait"], on_timeout=cfg["on_timeout"], allowed_lateness=cfg["allowed_lateness"],
                   max_pending=cfg["max_pending"])
    start = json.loads((art / cfg["model"]).read_text())

    results = {}
    t = time.perf_counter()
    ftrl = rl.Logistic(X.shape[1], "ftrl", **{k: start["optimizer"][k] for k in ("alpha", "beta", "l1", "l2")})
    r = rl.replay(None, None, None, requests, labels, ftrl, vectors=X[first], **join_kw)
    total = time.perf_counter() - t
    ex = r.examples
    n = len(ex)
    print(f"{n:,} examples (Oct-Dec flights asked about at their scheduled departure, joined with their departure)")

    def report(name: str, p: np.ndarray, seconds: float) -> None:
        results[name] = {"auc": roc_auc_score(ex.y, p), "log_loss": log_loss(ex.y, np.clip(p, 1e-15, 1 - 1e-15)),
                         "us_per_example": seconds / n * 1e6}
        v = results[name]
        print(f"{name:44s} AUC {v['auc']:.4f}  log loss {v['log_loss']:.4f}  {v['us_per_example']:8.2f} us/example")

    # learning alone, from a cold start, on the released examples in order
    for name, model in [("rtml Logistic, FTRL (the service's)", rl.Logistic(X.shape[1], "ftrl", alpha=0.05, l2=1.0)),
                        ("rtml Logistic, SGD eta0=0.01", rl.Logistic(X.shape[1], "sgd", eta0=0.01))]:
        t = time.perf_counter()
        p = model.progressive(ex.X, ex.y, ex.release, rl.Metrics())
        report(name, p, time.perf_counter() - t)
    from river import linear_model, optim

    model = linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    names = [f"x{i}" for i in range(X.shape[1])]
    p = np.empty(n)
    t = time.perf_counter()
    for i, (xi, yi) in enumerate(zip(ex.X.tolist(), ex.y.tolist())):
        d = dict(zip(names, xi))
        p[i] = model.predict_proba_one(d).get(True, 0.0)
        model.learn_one(d, bool(yi))
    report("River LogisticRegression, SGD 0.01", p, time.perf_counter() - t)
    print(f"(the label join + replay of the whole stream: {total:.2f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"examples": n, "results": results}, indent=2))


if __name__ == "__main__":
    main()
