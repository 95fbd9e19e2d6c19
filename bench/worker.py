"""One measurement per process (so peak RSS is that run's alone); prints one JSON line.

    python bench/worker.py backfill --tool rtml|polars|duckdb|pandas --data 1m --threads 2
    python bench/worker.py online --data 1m
    python bench/worker.py memory --keys 1000000 --per-key 8 [--hop 5m]

Thread counts: set RAYON_NUM_THREADS / POLARS_MAX_THREADS in the environment (run_all.py does);
DuckDB gets `SET threads`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import warnings

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.simplefilter("ignore", RuntimeWarning)

import common  # noqa: E402
from common import HOUR, KEY, LATENESS_NS, TS, VAL, peak_rss_bytes, percentiles_us, rss_bytes  # noqa: E402


def backfill(args) -> dict:
    import baselines as B

    events, spine = common.dataset(args.data)
    rss_in = rss_bytes()
    if args.tool == "rtml":
        fs = common.feature_set()
        fn = lambda: B.rtml_backfill(events, spine, fs)  # noqa: E731
    elif args.tool == "duckdb":
        fn = lambda: B.duckdb_backfill(events, spine, threads=args.threads)  # noqa: E731
    else:
        fn = lambda: getattr(B, f"{args.tool}_backfill")(events, spine)  # noqa: E731
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    best = min(times)
    return {"wall_s": best, "times": times, "events": len(events), "spine": len(spine),
            "events_per_s": len(events) / best, "peak_rss": peak_rss_bytes(), "rss_input": rss_in}


def _fs_ns(hop=None):
    import rtml

    return rtml.FeatureSet.from_json(
        common.feature_set(hop).to_json().replace('"timestamp_unit": null', '"timestamp_unit": "ns"'))


def online(args) -> dict:
    """rtml ingest (one row dict per call, Arrow batches of 1k / 100k; in timestamp order and in
    arrival order = shuffled within the 5m lateness), get / vector latency; River and a dict of
    deques on count/sum/mean over 1h."""
    import rtml

    import baselines as B

    events, _ = common.dataset(args.data)
    events = events.set_column(1, TS, events.column(TS).cast(pa.int64()))
    n = len(events)
    ts = events.column(TS).to_numpy()
    in_order = events.take(pa.array(np.argsort(ts, kind="stable")))
    orders = {"ordered": in_order, "shuffled": events}
    fs = _fs_ns()
    res: dict = {"events": n}
    for oname, tab in orders.items():
        for batch in (100_000, 1_000):
            eng = fs.online()
            t0 = time.perf_counter()
            for start in range(0, n, batch):
                eng.ingest(tab.slice(start, batch))
            res[f"rtml_batch{batch}_{oname}_eps"] = n / (time.perf_counter() - t0)
            assert eng.stats()["late_events_dropped"] == 0
        rows = tab.slice(0, args.rows).to_pylist()
        eng1 = fs.online()
        ing = eng1.ingest
        t0 = time.perf_counter()
        for r in rows:
            ing(r)
        res[f"rtml_row_{oname}_eps"] = len(rows) / (time.perf_counter() - t0)

    # get / vector latency on the full stream's state, at the stream's end
    eng = fs.online()
    eng.ingest(in_order)
    at = int(ts.max()) + 1
    rng = np.random.default_rng(3)
    keys = events.column(KEY).to_numpy()[rng.integers(0, n, args.gets)].tolist()
    # the same number of reads cycling over 100 keys: their state stays in the caches, so the
    # difference to the draws above is what reaching a cold key's state in memory costs
    hot = (keys[:100] * (len(keys) // 100 + 1))[: len(keys)]

    def latency(fn, ks, *rest) -> dict:
        for k in ks[:1000]:
            fn(k, *rest)
        lat = np.empty(len(ks))
        for i, k in enumerate(ks):
            t0 = time.perf_counter_ns(); fn(k, *rest); lat[i] = time.perf_counter_ns() - t0
        return percentiles_us(lat)

    def noop(k, at):  # the loop and the timer alone
        return None

    res["loop_floor"] = latency(noop, keys, at)
    get = eng.get
    res["rtml_get"] = latency(get, keys, at)
    res["rtml_get_hot"] = latency(get, hot, at)
    # model-ready vector: window features + 2 request fields through a fitted 8-step pipeline
    feats = eng.get_many(keys[:20_000], at)
    fit_tab = feats.append_column("amount", pa.array(rng.lognormal(2, 1, feats.num_rows)))
    fit_tab = fit_tab.append_column("channel", pa.array(rng.choice(["web", "app", "pos"], feats.num_rows)))
    tf = rtml.Transforms([
        rtml.ratio(f"{VAL}_sum_1h", "count_1h", name="avg_1h"),
        rtml.impute(f"{VAL}_mean_24h", "median"), rtml.standard_scale(f"{VAL}_mean_24h"),
        rtml.fill_null(f"{VAL}_std_24h", 0.0), rtml.log1p("amount"), rtml.standard_scale("amount"),
        rtml.one_hot("channel"), rtml.passthrough("count_24h"),
    ]).fit(fit_tab)
    vec = eng.vector
    fields = {"amount": 12.5, "channel": "app"}
    res["rtml_vector"] = latency(vec, keys, tf, fields, at)
    res["rtml_vector_hot"] = latency(vec, hot, tf, fields, at)
    res["rtml_vector_outputs"] = len(tf.feature_names)

    # baselines: count / sum / mean over 1h, rows as Python values (the cost a service pays)
    m = min(args.rows, n)
    cols = [in_order.column(c).slice(0, m).to_pylist() for c in (KEY, TS, VAL)]
    for oname, tab in (("ordered", in_order), ("shuffled", events)):
        kk, tt, vv = (tab.column(c).slice(0, m).to_pylist() for c in (KEY, TS, VAL))
        dq = B.DequeWindows(HOUR)
        ing = dq.ingest
        t0 = time.perf_counter()
        for k, t, v in zip(kk, tt, vv):
            ing(k, t, v)
        res[f"deque_{oname}_eps"] = m / (time.perf_counter() - t0)
        if oname == "ordered":
            dq_ord = dq
        aggs = B.river_agg(HOUR)
        epoch = dt.datetime(1970, 1, 1)
        t0 = time.perf_counter()
        for k, t, v in zip(kk, tt, vv):
            if v is None:
                continue
            x = {KEY: k, VAL: v, "_one": 1.0}
            tdt = epoch + dt.timedelta(microseconds=t // 1000)
            for a in aggs:
                a.learn_one(x, t=tdt)
        res[f"river_{oname}_eps"] = m / (time.perf_counter() - t0)
        if oname == "ordered":
            river_ord = aggs
    at_m = max(cols[1]) + 1
    kq = [cols[0][i] for i in rng.integers(0, m, args.gets)]
    g = dq_ord.get
    lat = np.empty(len(kq))
    for i, k in enumerate(kq):
        t0 = time.perf_counter_ns(); g(k, at_m); lat[i] = time.perf_counter_ns() - t0
    res["deque_get"] = percentiles_us(lat)
    lat = np.empty(len(kq))
    for i, k in enumerate(kq):
        x = {KEY: k}
        t0 = time.perf_counter_ns()
        for a in river_ord:
            a.transform_one(x)
        lat[i] = time.perf_counter_ns() - t0
    res["river_get"] = percentiles_us(lat)
    res["baseline_events"] = m
    res["peak_rss"] = peak_rss_bytes()
    return res


def memory(args) -> dict:
    """Steady-state online state: `keys` keys, each with `per_key` events spread uniformly over
    48h (so the 24h windows are full), ingested in time order; state_bytes and RSS growth."""
    rng = np.random.default_rng(11)
    n = args.keys * args.per_key
    keys = np.repeat(np.arange(args.keys, dtype=np.int64), args.per_key)
    ts = common.START + rng.integers(0, 48 * 3600, n) * common.SEC
    order = np.argsort(ts, kind="stable")
    cats = np.array([f"c{i:02d}" for i in range(50)])
    tab = pa.table({KEY: keys[order], TS: ts[order],
                    VAL: np.round(rng.lognormal(2.5, 0.6, n), 2), CAT: cats[rng.integers(0, 50, n)]})
    fs = _fs_ns(args.hop)
    rss0 = rss_bytes()
    eng = fs.online()
    for start in range(0, n, 1_000_000):
        eng.ingest(tab.slice(start, 1_000_000))
    st = eng.stats()
    rss1 = rss_bytes()
    in_24h = int((ts >= ts.max() - 24 * HOUR - LATENESS_NS).sum())
    # raw bytes of one event: key 8 + ts 8 + value 8 + category (3 bytes + 4-byte offset)
    raw_event = 8 + 8 + 8 + 3 + 4
    return {"keys": st["keys"], "events": n, "hop": args.hop, "state_bytes": st["state_bytes"],
            "state_per_key": st["state_bytes"] / st["keys"], "rss_growth": rss1 - rss0,
            "rss_per_key": (rss1 - rss0) / st["keys"],
            "raw_24h_per_key": in_24h * raw_event / args.keys, "events_24h_per_key": in_24h / args.keys,
            "peak_rss": peak_rss_bytes()}


CAT = common.CAT


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backfill")
    b.add_argument("--tool", required=True, choices=["rtml", "polars", "duckdb", "pandas"])
    b.add_argument("--data", default="1m")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--repeat", type=int, default=1)
    o = sub.add_parser("online")
    o.add_argument("--data", default="1m")
    o.add_argument("--rows", type=int, default=200_000, help="events for one-row ingest and the Python baselines")
    o.add_argument("--gets", type=int, default=100_000)
    m = sub.add_parser("memory")
    m.add_argument("--keys", type=int, default=1_000_000)
    m.add_argument("--per-key", type=int, default=8)
    m.add_argument("--hop", default=None)
    args = ap.parse_args()
    res = {"backfill": backfill, "online": online, "memory": memory}[args.cmd](args)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
