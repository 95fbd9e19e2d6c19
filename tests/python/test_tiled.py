"""Tiled (hop=) windows: against a plain-Python reference, and online == backfill bit for bit."""

from __future__ import annotations

import math
import random
import struct

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

import rtml

MIN = 60 * 10**9


def _fs():
    return rtml.FeatureSet(
        entity="k", timestamp="ts", timestamp_unit="ns", allowed_lateness="10m",
        features=[
            rtml.count(window="1h", hop="15m"),
            rtml.sum("v", window="1h", hop="15m"),
            rtml.mean("v", window="1h", hop="15m"),
            rtml.max("v", window="1h", hop="15m"),
            rtml.last("v", window="1h", hop="15m"),
            rtml.distinct_count("v", window="1h", hop="15m"),
            rtml.quantile("v", 0.5, window="1h", hop="15m"),
        ],
    )


def _ref(events, k, t):
    start = (t // (15 * MIN)) * (15 * MIN) - 60 * MIN
    win = [e for e in events if e[0] == k and start <= e[1] < t]
    vals = [e[2] for e in win if e[2] is not None]
    last = max(((e[1], e[2]) for e in win if e[2] is not None), default=None)
    return {
        "count_1h_hop15m": len(win),
        "v_sum_1h_hop15m": math.fsum(vals),
        "v_max_1h_hop15m": max(vals) if vals else None,
        "v_last_1h_hop15m": last[1] if last else None,
        "v_distinct_count_1h_hop15m": len(set(vals)),
    }


events_st = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 300), st.one_of(st.none(), st.integers(-50, 50))),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(events_st, st.lists(st.tuples(st.integers(0, 2), st.integers(0, 330)), min_size=1, max_size=15),
       st.randoms(use_true_random=False))
def test_tiled_matches_reference_and_online(raw, queries, rnd: random.Random):
    events = [(k, m * MIN, None if v is None else v / 4) for k, m, v in raw]
    qs = sorted(((k, m * MIN) for k, m in queries), key=lambda q: q[1])
    fs = _fs()
    ev = pa.table({"k": [e[0] for e in events], "ts": [e[1] for e in events],
                   "v": pa.array([e[2] for e in events], pa.float64())},
                  schema=pa.schema([("k", pa.int64()), ("ts", pa.int64()), ("v", pa.float64())]))
    sp = pa.table({"k": [q[0] for q in qs], "ts": [q[1] for q in qs]},
                  schema=pa.schema([("k", pa.int64()), ("ts", pa.int64())]))
    out = fs.backfill(ev, sp).to_pylist()
    for q, row in zip(qs, out):
        for name, want in _ref(events, *q).items():
            assert row[name] == want, (q, name, row[name], want)
    # online: arrival jittered within the allowed lateness
    arrival = sorted(events, key=lambda e: e[1] + rnd.randint(0, 10) * MIN)
    eng = fs.online()
    i = 0
    for q, row in zip(qs, out):
        while any(e[1] < q[1] for e in arrival[i:]):
            eng.ingest({"k": arrival[i][0], "ts": arrival[i][1], "v": arrival[i][2]})
            i += 1
        got = eng.get(q[0], at=q[1])
        for name in fs.feature_names:
            a, b = got[name], row[name]
            assert (a is None and b is None) or struct.pack("<d", a) == struct.pack("<d", b), (q, name, a, b)
