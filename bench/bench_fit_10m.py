"""Transforms fit on 10M rows (not a test): time and peak RSS. python bench/bench_fit_10m.py"""
import resource, time, numpy as np, pyarrow as pa, rtml
n = 10_000_000
rng = np.random.default_rng(0)
cols = {}
for i in range(6):
    x = rng.lognormal(1, 1, n); m = rng.random(n) < 0.02
    cols[f"x{i}"] = pa.array(x, mask=m)
for i in range(3):
    cols[f"c{i}"] = pa.array(np.array([f"v{j}" for j in range(30)])[rng.integers(0, 30, n)])
t = pa.table(cols)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(f"table {t.nbytes/1e9:.2f} GB, RSS after building it {base:.2f} GB")
steps = []
for i in range(6):
    steps += [rtml.impute(f"x{i}", "median"), rtml.robust_scale(f"x{i}"), rtml.quantile_bucketize(f"x{i}", 10, name=f"x{i}_q")]
steps += [rtml.one_hot(f"c{i}", min_frequency=100) for i in range(3)]
tf = rtml.Transforms(steps)
t0 = time.perf_counter(); tf.fit(t); dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(f"fit {n:,} rows x {len(cols)} columns ({len(tf.feature_names)} outputs): {dt:.1f} s, peak RSS {peak:.2f} GB")
