"""Metrics.add_many with a rolling window, rows in time order: seconds for n rows."""

import sys
import time

import numpy as np

import rtml.learn as rl

n = int(sys.argv[1])
t = np.arange(n, dtype=np.int64) * 1_000_000_000
p = np.random.default_rng(0).random(n)
y = (p > 0.5).astype(float)
m = rl.Metrics(window=f"{n // 2}s")  # the window holds up to n/2 rows
t0 = time.perf_counter()
for s in range(0, n, 1000):
    m.add_many(t[s : s + 1000], p[s : s + 1000], y[s : s + 1000])
print(f"{n} rows, window {n // 2} rows: {time.perf_counter() - t0:.3f} s, auc {m.auc():.6f}")
