"""The parallel workload of the fork tests (imported by scripts that test_fork.py runs in a
fresh interpreter): a backfill and a Transforms fit/transform large enough to use every
parallel section of rtml, each checked against an expectation computed here with numpy,
independently of rtml."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

import rtml

S = 10**9
BASE = 1_700_000_000 * S
WINDOW = 3600 * S


def feature_set():
    return rtml.FeatureSet(
        entity="k",
        timestamp="ts",
        timestamp_unit="ns",
        features=[rtml.count(window="1h", name="n"), rtml.sum("v", window="1h", name="s")],
    )


def data(seed: int, n_events: int = 8_000, n_keys: int = 200, n_spine: int = 1_500):
    rng = np.random.default_rng(seed)
    ek = rng.integers(0, n_keys, n_events)
    ets = BASE + rng.integers(0, 6 * 3600, n_events) * S
    ev = rng.integers(-100, 100, n_events).astype(np.float64)  # integers: sums are exact
    sk = rng.integers(0, n_keys + 20, n_spine)  # some spine keys have no events
    sts = BASE + rng.integers(0, 7 * 3600, n_spine) * S
    events = pa.table({"k": ek, "ts": ets, "v": ev})
    spine = pa.table({"k": sk, "ts": sts})
    return events, spine


def expected_backfill(events: pa.Table, spine: pa.Table):
    ek = events["k"].to_numpy()
    ets = events["ts"].to_numpy()
    ev = events["v"].to_numpy()
    n, s = [], []
    for k, t in zip(spine["k"].to_numpy(), spine["ts"].to_numpy()):
        m = (ek == k) & (ets >= t - WINDOW) & (ets < t)
        n.append(int(m.sum()))
        s.append(float(ev[m].sum()))
    return n, s


def check_backfill(seed: int) -> None:
    events, spine = data(seed)
    out = feature_set().backfill(events, spine, progress=False)
    n, s = expected_backfill(events, spine)
    assert out["n"].to_pylist() == n, "count mismatch"
    assert out["s"].to_pylist() == s, "sum mismatch"


def transforms():
    return rtml.Transforms(
        [
            rtml.standard_scale("a"),  # parallel exact moments
            rtml.min_max_scale("b"),  # parallel min / max
            rtml.impute("c", "median", name="c_imputed"),  # parallel sort
        ]
    )


def check_transforms(seed: int, rows: int = 40_000) -> None:
    """fit (parallel statistics) and transform of more than 32768 rows (parallel chunks)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(5.0, 2.0, rows)
    b = rng.uniform(-3.0, 9.0, rows)
    c = rng.integers(0, 1000, rows).astype(np.float64)
    c_nulls = rng.random(rows) < 0.1
    table = pa.table({"a": a, "b": b, "c": pa.array(c, mask=c_nulls)})
    tf = transforms().fit(table)
    out = tf.transform(table)
    got_a = out["a"].to_numpy()
    exp_a = (a - a.mean()) / a.std()
    assert np.allclose(got_a, exp_a, rtol=1e-12, atol=1e-12), "standard_scale mismatch"
    exp_b = (b - b.min()) / (b.max() - b.min())
    assert np.allclose(out["b"].to_numpy(), exp_b, rtol=1e-12, atol=1e-15), "min_max_scale mismatch"
    med = float(np.median(c[~c_nulls]))
    exp_c = np.where(c_nulls, med, c)
    assert out["c_imputed"].to_pylist() == exp_c.tolist(), "impute median mismatch"


def check_all(seed: int) -> None:
    check_backfill(seed)
    check_transforms(seed)


def pool_threads() -> int:
    """Threads of this process named by rtml's pool (rtml-<i>)."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("rtml-"):
                    n += 1
        except OSError:
            pass
    return n
