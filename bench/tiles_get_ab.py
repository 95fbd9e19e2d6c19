"""`OnlineEngine.get` of tiled windows (issue 18): latency and instructions per call, old vs new
build.

The state of `bench/worker.py memory --hop 5m`: `keys` keys with `per_key` events each over
48h (`--per-key 800`: 400 events per key per day), in time order, the 18-feature set of
`common.feature_set(hop="5m")`; `get` of random keys at the stream's end + `ahead` seconds
(0: "now"; 3600: an hour ahead, so the tiles of the hour since the settled point leave the
window).

Latency, two builds alternating in fresh processes (compare within one run only):

    python bench/tiles_get_ab.py ab --side old=/tmp/rtml-old --side new=python --reps 3

Instructions per call (callgrind; `prep` builds the same state and stops, so
`(get - prep) / N` is one call's own, Python's call overhead included):

    for m in prep get; do
      PYTHONHASHSEED=0 RTML_NUM_THREADS=1 valgrind --tool=callgrind \\
        --callgrind-out-file=tg.$m.cg python bench/tiles_get_ab.py $m 2000
    done

`--hop none` (child / prep / get): the same features over exact (sliding) windows, for
comparison (`python bench/tiles_get_ab.py child --hop none`: one latency run, JSON).

`digest` prints a hash of the answers of 2,000 keys at several instants (two builds must
print the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def state(keys: int, per_key: int, hop: str | None = "5m"):
    sys.path.insert(0, str(HERE))
    import common
    import numpy as np
    import pyarrow as pa
    from common import KEY, TS, VAL

    import rtml

    rng = np.random.default_rng(11)
    n = keys * per_key
    ks = np.repeat(np.arange(keys, dtype=np.int64), per_key)
    ts = common.START + rng.integers(0, 48 * 3600, n) * common.SEC
    order = np.argsort(ts, kind="stable")
    cats = np.array([f"c{i:02d}" for i in range(50)])
    tab = pa.table(
        {
            KEY: ks[order],
            TS: ts[order],
            VAL: np.round(rng.lognormal(2.5, 0.6, n), 2),
            common.CAT: cats[rng.integers(0, 50, n)],
        }
    )
    fs = rtml.FeatureSet.from_json(
        common.feature_set(hop)
        .to_json()
        .replace('"timestamp_unit": null', '"timestamp_unit": "ns"')
    )
    eng = fs.online()
    for start in range(0, n, 1_000_000):
        eng.ingest(tab.slice(start, 1_000_000))
    at = int(ts.max()) + 1
    q = rng.integers(0, keys, 200_000).tolist()
    return eng, at, q


def latency(args) -> dict:
    import time

    import numpy as np

    eng, at, q = state(args.keys, args.per_key, None if args.hop == "none" else args.hop)
    at += args.ahead * 10**9
    q = (q * (args.calls // len(q) + 1))[: args.calls]
    get = eng.get
    for k in q[:1000]:
        get(k, at)
    lat = np.empty(len(q))
    clock = time.perf_counter_ns
    for i, k in enumerate(q):
        t0 = clock()
        get(k, at)
        lat[i] = clock() - t0  # noqa: E702
    p = np.percentile(lat, [50, 99, 99.9]) / 1000
    return {"p50": float(p[0]), "p99": float(p[1]), "p999": float(p[2])}


def calls_only(mode: str, n: int, args) -> None:
    eng, at, q = state(args.keys, args.per_key, None if args.hop == "none" else args.hop)
    at += args.ahead * 10**9
    if mode == "get":
        get = eng.get
        for k in q[:n]:
            get(k, at)


def digest(args) -> None:
    eng, at, q = state(args.keys, args.per_key)
    h = hashlib.sha256()
    for k in q[:2000] + [-1]:
        for dt in (0, 60, 299, 300, 3600, 3 * 3600, 23 * 3600, 25 * 3600):
            h.update(repr(sorted(eng.get(k, at + dt * 10**9).items())).encode())
    print(h.hexdigest()[:16])


def ab(args) -> None:
    sys.path.insert(0, str(HERE))
    import common

    child = ["--keys", str(args.keys), "--per-key", str(args.per_key), "--ahead", str(args.ahead),
             "--calls", str(args.calls), "--hop", args.hop]
    common.ab_latency(__file__, args.side, args.reps, [("get", child)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["ab", "child", "prep", "get", "digest"])
    ap.add_argument("n", nargs="?", type=int, default=2000)
    ap.add_argument("--side", action="append")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--per-key", type=int, default=800)
    ap.add_argument("--ahead", type=int, default=0, help="seconds past the stream's end")
    ap.add_argument("--hop", default="5m", help='"none": the same features over exact windows')
    args = ap.parse_args()
    if args.cmd == "child":
        print(json.dumps(latency(args)))
    elif args.cmd in ("prep", "get"):
        calls_only(args.cmd, args.n, args)
    elif args.cmd == "digest":
        digest(args)
    else:
        ab(args)


if __name__ == "__main__":
    main()
