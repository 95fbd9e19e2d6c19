"""`OnlineEngine.get` / `vector` latency and instructions per call, old vs new build (issue 18).

The state of `bench/worker.py online`: the 1M tier (`common.dataset("1m")`) ingested in time
order, read at the stream's end (`at` = largest event time + 1 ns, an int: the feature set's
`timestamp_unit` is "ns"), keys drawn from the events (so hot keys are read most, as in the
worker), the same fitted 8-step transforms for `vector`.

Latency, two builds alternating in fresh processes (a shared, noisy machine: compare within
one run, never across runs):

    python bench/get_ab.py ab --side old=/tmp/rtml-old --side new=python --reps 4 --calls 200000

Each `--side NAME=DIR` is a directory holding an `rtml` package with its built extension (e.g.
a copy of python/rtml with the release `_core` of another commit). Prints p50 / p99 / p99.9 (us)
of every (side, call) run, the median of each over the runs, and the 1-minute load average.

Instructions per call (callgrind; `prep` builds the same state and stops, so `(mode - prep) / N`
is one call's own, Python's call overhead included):

    for m in prep get vector; do
      PYTHONHASHSEED=0 RTML_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=ga.$m.cg \\
        python bench/get_ab.py $m 20000
    done

`digest` prints a hash of every `get` / `vector` / `get_many` answer over 20,000 keys (the
answers of two builds must be bit for bit the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def state():
    sys.path.insert(0, str(HERE))
    import common
    import numpy as np
    import pyarrow as pa
    from common import KEY, TS, VAL

    import rtml

    events, _ = common.dataset("1m")
    events = events.set_column(1, TS, events.column(TS).cast(pa.int64()))
    n = len(events)
    ts = events.column(TS).to_numpy()
    in_order = events.take(pa.array(np.argsort(ts, kind="stable")))
    fs = rtml.FeatureSet.from_json(
        common.feature_set().to_json().replace('"timestamp_unit": null', '"timestamp_unit": "ns"')
    )
    eng = fs.online()
    eng.ingest(in_order)
    at = int(ts.max()) + 1
    rng = np.random.default_rng(3)
    keys = events.column(KEY).to_numpy()[rng.integers(0, n, 200_000)].tolist()
    feats = eng.get_many(keys[:20_000], at)
    fit_tab = feats.append_column("amount", pa.array(rng.lognormal(2, 1, feats.num_rows)))
    fit_tab = fit_tab.append_column(
        "channel", pa.array(rng.choice(["web", "app", "pos"], feats.num_rows))
    )
    tf = rtml.Transforms(
        [
            rtml.ratio(f"{VAL}_sum_1h", "count_1h", name="avg_1h"),
            rtml.impute(f"{VAL}_mean_24h", "median"),
            rtml.standard_scale(f"{VAL}_mean_24h"),
            rtml.fill_null(f"{VAL}_std_24h", 0.0),
            rtml.log1p("amount"),
            rtml.standard_scale("amount"),
            rtml.one_hot("channel"),
            rtml.passthrough("count_24h"),
        ]
    ).fit(fit_tab)
    fields = {"amount": 12.5, "channel": "app"}
    return eng, at, keys, tf, fields


def latency(call: str, calls: int) -> dict:
    import time

    import numpy as np

    eng, at, keys, tf, fields = state()
    keys = (keys * (calls // len(keys) + 1))[:calls]
    if call == "get":
        get = eng.get
        fn = lambda k: get(k, at)  # noqa: E731
    else:
        vec = eng.vector
        fn = lambda k: vec(k, tf, fields, at)  # noqa: E731
    for k in keys[:1000]:
        fn(k)
    lat = np.empty(len(keys))
    clock = time.perf_counter_ns
    if call == "get":
        for i, k in enumerate(keys):
            t0 = clock()
            get(k, at)
            lat[i] = clock() - t0  # noqa: E702
    else:
        for i, k in enumerate(keys):
            t0 = clock()
            vec(k, tf, fields, at)
            lat[i] = clock() - t0  # noqa: E702
    p = np.percentile(lat, [50, 99, 99.9]) / 1000
    return {"p50": float(p[0]), "p99": float(p[1]), "p999": float(p[2])}


def calls_only(mode: str, n: int) -> None:
    eng, at, keys, tf, fields = state()
    keys = keys[:n] if mode != "prep" else []
    if mode == "get":
        get = eng.get
        for k in keys:
            get(k, at)
    elif mode == "vector":
        vec = eng.vector
        for k in keys:
            vec(k, tf, fields, at)
    elif mode == "get_many":
        eng.get_many(keys, at)


def digest() -> None:
    import numpy as np

    eng, at, keys, tf, fields = state()
    h = hashlib.sha256()
    ks = keys[:20_000] + [-1, -2]  # and two unknown keys
    for k in ks:
        h.update(repr(sorted(eng.get(k, at).items())).encode())
        h.update(eng.vector(k, tf, fields, at).tobytes())
        v, d = eng.vector(k, tf, fields, at, with_features=True)
        h.update(v.tobytes() + repr(d).encode())
    for t in (at, at - 120_000_000_000, [at - 1000 * i for i in range(len(ks))]):
        tab = eng.get_many(ks, t)
        for col in tab.columns:
            arr = col.combine_chunks()
            h.update(np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64).tobytes())
            h.update(np.asarray(arr.is_null()).tobytes())
    print(h.hexdigest()[:16])


def ab(args) -> None:
    sys.path.insert(0, str(HERE))
    import common

    common.ab_latency(__file__, args.side, args.reps,
                      [(call, [call, str(args.calls)]) for call in args.call])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        print(json.dumps(latency(sys.argv[2], int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] in ("prep", "get", "vector", "get_many"):
        calls_only(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20_000)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "digest":
        digest()
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["ab"])
    ap.add_argument("--side", action="append", required=True)
    ap.add_argument("--call", action="append", choices=["get", "vector"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200_000)
    args = ap.parse_args()
    args.call = args.call or ["get"]
    ab(args)


if __name__ == "__main__":
    main()
