"""The label join alone, for instruction counts (noisy machines: compare callgrind totals).

    valgrind --tool=callgrind --callgrind-out-file=lj.cg python bench/label_join_profile.py 50000
    callgrind_annotate --inclusive=yes lj.cg | grep -E "__pymethod_(labels|serve_many|drain)__"

n served rows (8 features), labels for 90% of them 0-60 s after serving, in time order: the
workload of bench_learn.py's label-join line.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import rtml.learn as rl


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    rng = np.random.default_rng(0)
    ids = np.arange(n, dtype=np.int64)
    t_ns = np.sort(rng.integers(0, 86_400, n)) * 1_000_000_000 + 1_700_000_000 * 10**9
    X = rng.random((n, 8))
    y = (rng.random(n) < 0.3).astype(float)
    has = rng.random(n) < 0.9
    lab_t = t_ns + rng.integers(0, 60, n) * 1_000_000_000
    order = np.argsort(lab_t[has], kind="stable")
    lab_ids, lab_t, lab_y = ids[has][order], lab_t[has][order], y[has][order]
    j = rl.LabelJoin(wait="120s", on_timeout=0.0)
    t0 = time.perf_counter()
    j.serve_many(ids, t_ns, X)
    t1 = time.perf_counter()
    j.labels(lab_ids, lab_t, lab_y)
    t2 = time.perf_counter()
    j.flush()
    ex = j.drain()
    t3 = time.perf_counter()
    print(
        f"serve {n / (t1 - t0):,.0f} rows/s, labels {len(lab_ids) / (t2 - t1):,.0f} labels/s, "
        f"flush + drain {t3 - t2:.3f} s ({len(ex.y)} examples)"
    )


if __name__ == "__main__":
    main()
