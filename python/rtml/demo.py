"""`rtml demo`: generate events, backfill, replay them online out of order, check parity."""

from __future__ import annotations

import struct
import time
from typing import Any

import numpy as np
import pyarrow as pa

import rtml

MINUTE = 60 * 10**9


def make_events(n_events: int, n_keys: int, seed: int = 0) -> pa.Table:
    """Synthetic ride events over 7 days, in time order: Zipf-like hot keys, ~2% null fares,
    20 zones. Returns a pyarrow.Table (driver_id int64, ts timestamp[ns], fare, zone).

    >>> from rtml import demo
    >>> demo.make_events(1_000, 10, seed=1).column_names
    ['driver_id', 'ts', 'fare', 'zone']
    """
    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-03-01T00:00:00", "ns").astype(np.int64)
    ts = start + np.sort(rng.integers(0, 7 * 24 * 60 * MINUTE, n_events))
    ranks = rng.zipf(1.3, n_events) % n_keys
    fare = np.round(rng.lognormal(2.5, 0.6, n_events), 2)
    mask = rng.random(n_events) < 0.02
    zones = np.array([f"zone_{i:02d}" for i in range(20)])
    return pa.table(
        {
            "driver_id": pa.array(ranks.astype(np.int64)),
            "ts": pa.array(ts, pa.timestamp("ns")),
            "fare": pa.array(fare, mask=mask),
            "zone": pa.array(zones[rng.integers(0, 20, n_events)]),
        }
    )


def feature_set() -> rtml.FeatureSet:
    """The demo's feature set (10 features of `driver_id`, 5 minutes of allowed lateness).

    >>> from rtml import demo
    >>> demo.feature_set().feature_names[:3]
    ['count_1h', 'fare_sum_1h', 'fare_mean_24h']
    """
    return rtml.FeatureSet(
        entity="driver_id",
        timestamp="ts",
        features=[
            rtml.count(window="1h"),
            rtml.sum("fare", window="1h"),
            rtml.mean("fare", window="24h"),
            rtml.std("fare", window="24h"),
            rtml.max("fare", window="24h"),
            rtml.distinct_count("zone", window="24h"),
            rtml.quantile("fare", 0.9, window="24h"),
            rtml.decayed_sum("fare", half_life="1h", window="24h"),
            rtml.last("fare"),
            rtml.time_since_last(),
        ],
        allowed_lateness="5m",
    )


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return struct.pack("<d", float(a)) == struct.pack("<d", float(b))
    return bool(a == b)


def run(n_events: int = 200_000, n_keys: int = 5_000, n_spine: int = 20_000, seed: int = 0) -> bool:
    """Generate events, backfill a spine, replay the events online out of order (within the
    allowed lateness), ask the engine at every spine row and compare with the backfill bit for
    bit. Prints timings and the verdict; returns True when every row matches and no event was
    dropped as late. Raises ValueError for counts below 1."""
    for name, v in (("n_events", n_events), ("n_keys", n_keys), ("n_spine", n_spine)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"demo.run: {name} must be a whole number >= 1, got {v!r}")
    print(
        f"rtml {rtml.__version__} demo: {n_events:,} events, {n_keys:,} drivers, {n_spine:,} spine rows"
    )
    events = make_events(n_events, n_keys, seed)
    rng = np.random.default_rng(seed + 1)
    ts = events.column("ts").to_numpy().astype(np.int64)
    pick = rng.integers(0, n_events, n_spine)
    spine = pa.table(
        {
            "driver_id": events.column("driver_id").take(pa.array(pick)),
            # query 0-30 minutes after a real event, sometimes exactly at it
            "ts": pa.array(ts[pick] + rng.integers(0, 30, n_spine) * MINUTE, pa.timestamp("ns")),
            "label": pa.array(rng.integers(0, 2, n_spine)),
        }
    )
    fs = feature_set()

    t0 = time.perf_counter()
    train = fs.backfill(events, spine, progress=False)
    t_backfill = time.perf_counter() - t0

    # Online replay: arrival = event time + up to 5 minutes of jitter (within allowed lateness).
    arrival = np.argsort(ts + rng.integers(0, 5 * MINUTE + 1, n_events), kind="stable")
    arrived_at = np.empty(n_events, np.int64)
    arrived_at[arrival] = np.arange(n_events)
    need = np.maximum.accumulate(arrived_at)  # events 0..i (time order) all in after need[i]+1
    q_order = np.argsort(spine.column("ts").to_numpy().astype(np.int64), kind="stable")
    q_ts = spine.column("ts").to_numpy().astype(np.int64)
    q_keys = spine.column("driver_id").to_pylist()
    shuffled = events.take(pa.array(arrival))
    eng = fs.online()
    names = fs.feature_names
    cols = {n: train.column(n).to_pylist() for n in names}
    ingested = 0
    t_ingest = 0.0
    t_get = 0.0
    mismatches = 0
    for qi in q_order:
        t = int(q_ts[qi])
        j = int(np.searchsorted(ts, t, side="left"))
        upto = int(need[j - 1]) + 1 if j > 0 else 0
        if upto > ingested:
            t1 = time.perf_counter()
            eng.ingest(shuffled.slice(ingested, upto - ingested))
            t_ingest += time.perf_counter() - t1
            ingested = upto
        t1 = time.perf_counter()
        got = eng.get(q_keys[qi], at=np.datetime64(t, "ns"))
        t_get += time.perf_counter() - t1
        if not all(_same(got[n], cols[n][qi]) for n in names):
            mismatches += 1
    stats = eng.stats()
    ok = mismatches == 0 and stats["late_events_dropped"] == 0
    print(
        f"  backfill        {t_backfill * 1e3:8.1f} ms  ({n_events / t_backfill / 1e6:.2f} M events/s)"
    )
    print(
        f"  online ingest   {t_ingest * 1e3:8.1f} ms  ({ingested / max(t_ingest, 1e-9) / 1e6:.2f} M events/s, "
        f"out of order within 5m)"
    )
    print(f"  online get      {t_get / n_spine * 1e6:8.2f} us per call")
    print(f"  state           {stats['keys']:,} keys, {stats['state_bytes'] / 1e6:.1f} MB")
    print(
        f"  parity          {n_spine - mismatches:,} / {n_spine:,} rows identical to the backfill, "
        f"bit for bit ({len(names)} features)"
    )
    print("OK" if ok else "PARITY FAILURE")
    return ok
