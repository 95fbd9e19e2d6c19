"""Shared set-up of the serving-call tests (test_serving.py, test_predict_call.py): the demo's
ride events, and prediction requests (a driver, an instant shortly after one of its events,
request fields) drawn from them."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

from rtml.demo import make_events

MINUTE = 60 * 10**9


def bits(x: float) -> bytes:
    """A float's bytes: equal iff bit-identical."""
    return struct.pack("<d", x)


def events_and_requests(
    seed: int, n_events: int, n_keys: int, n_requests: int, distance_null_rate: float = 0.0,
    surge: bool = False,
) -> tuple[pa.Table, pa.Table]:
    """(events, requests): `n_requests` rows of driver_id, ts (0-19 minutes after an event of
    that driver), distance (gamma; NaN at `distance_null_rate`) and, with `surge`, a surge level."""
    events = make_events(n_events, n_keys, seed=seed)
    rng = np.random.default_rng(seed)
    ts = events.column("ts").to_numpy().astype(np.int64)
    pick = rng.integers(0, events.num_rows, n_requests)
    cols = {
        "driver_id": events.column("driver_id").take(pa.array(pick)),
        "ts": pa.array(ts[pick] + rng.integers(0, 20, n_requests) * MINUTE, pa.timestamp("ns")),
    }
    if distance_null_rate > 0:
        null = rng.random(n_requests) < distance_null_rate
        cols["distance"] = pa.array(np.where(null, np.nan, rng.gamma(2.0, 3.0, n_requests)),
                                    from_pandas=True)
    else:
        cols["distance"] = pa.array(rng.gamma(2.0, 3.0, n_requests))
    if surge:
        cols["surge"] = pa.array(rng.choice(["none", "low", "high", "extreme"], n_requests))
    return events, pa.table(cols)
