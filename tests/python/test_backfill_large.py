"""A backfill large enough for every parallel path of the serial phases (key numbering, spine
lookup, bucketing, empty-history fill, output validity bitmaps: 65,536+ rows) gives the same
bits and nulls as backfills of one key at a time, which stay on the sequential paths."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import rtml

N_EVENTS = 70_000
N_SPINE = 70_000
N_KEYS = 40
HOUR = 3_600_000_000_000


def _tables(strings: bool) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(5)
    keys = rng.integers(0, N_KEYS, N_EVENTS)
    ts = rng.integers(0, 48 * HOUR, N_EVENTS)
    v = rng.normal(size=N_EVENTS)
    v_null = rng.random(N_EVENTS) < 0.05
    # spine: keys with events, and 3% keys that have none (empty-history rows)
    sk = rng.integers(0, N_KEYS, N_SPINE)
    sk[rng.random(N_SPINE) < 0.03] = N_KEYS + 7
    st = rng.integers(0, 50 * HOUR, N_SPINE)

    def key_col(k: np.ndarray) -> pa.Array:
        return pa.array([f"key{x}" for x in k]) if strings else pa.array(k)

    events = pa.table(
        {
            "k": key_col(keys),
            "ts": pa.array(ts, pa.timestamp("ns")),
            "v": pa.array(v, mask=v_null),
        }
    )
    spine = pa.table({"k": key_col(sk), "ts": pa.array(st, pa.timestamp("ns"))})
    return events, spine


@pytest.mark.parametrize("strings", [False, True])
def test_large_backfill_equals_one_key_at_a_time(strings: bool) -> None:
    fs = rtml.FeatureSet(
        "k",
        "ts",
        [
            rtml.count(window="1h"),
            rtml.mean("v", window="1h"),
            rtml.max("v", window="30m"),
            rtml.last("v"),
        ],
    )
    events, spine = _tables(strings)
    big = fs.backfill(events, spine, progress=False, output="arrow")
    assert big.num_rows == N_SPINE
    ev_keys = events.column("k").to_numpy(zero_copy_only=False)
    sp_keys = spine.column("k").to_numpy(zero_copy_only=False)
    for name in fs.feature_names:
        want_vals = np.empty(N_SPINE, dtype=object)
        want_null = np.zeros(N_SPINE, dtype=bool)
        got = big.column(name)
        for key in np.unique(sp_keys):
            rows = np.flatnonzero(sp_keys == key)
            small = fs.backfill(
                events.filter(pa.array(ev_keys == key)),
                spine.take(pa.array(rows)),
                progress=False,
                output="arrow",
            ).column(name)
            want_vals[rows] = small.to_pylist()
            want_null[rows] = np.asarray(small.is_null())
        assert np.array_equal(np.asarray(got.is_null()), want_null), name
        assert want_null.any() and not want_null.all() or name.startswith("count"), name
        got_vals = got.to_pylist()
        for i in range(N_SPINE):
            g, w = got_vals[i], want_vals[i]
            assert (g is None and w is None) or (
                np.float64(g).tobytes() == np.float64(w).tobytes()
            ), (name, i, g, w)
