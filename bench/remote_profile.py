"""RemoteEngine.get_many of 100 keys, for callgrind instruction counts (issue 14: the cost of a
batch read, independent of the machine's load). Two steps against a redis-server you started:

    redis-server --port 6399 --save '' --daemonize yes
    python bench/remote_profile.py --port 6399 --setup            # a runner publishes the state
    PY=$(python -c 'import sys; print(sys.executable)')            # not a pyenv shim: valgrind
    # the whole process (every thread), as the difference of two runs, per get_many:
    #   (Ir(--loops 100) - Ir(--loops 0)) / 100
    RTML_NUM_THREADS=1 valgrind --tool=callgrind $PY bench/remote_profile.py --port 6399 --loops 100
    RTML_NUM_THREADS=1 valgrind --tool=callgrind $PY bench/remote_profile.py --port 6399 --loops 0
    # the calling thread only (round trip, reply parsing, keys, the table; the values are
    # decoded and evaluated on the pool's threads from 32 keys), over loops + 1 calls:
    RTML_NUM_THREADS=1 valgrind --tool=callgrind --collect-atstart=no \
        --toggle-collect='*__pymethod_fetch_get_many__*' $PY bench/remote_profile.py --port 6399

The setup publishes the benchmark workload (bench/common.py: the 18-feature set, 200k events
over 20k keys) under the prefix ``prof``; the read step runs `--loops` batches of 100 random
keys (seeded) after one more batch (the connection and the info record).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

import common  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--loops", type=int, default=50)
    args = ap.parse_args()

    import rtml
    import rtml.sources
    from rtml.runner import Runner

    url = f"redis://127.0.0.1:{args.port}/0"
    fs = common.feature_set()
    if args.setup:
        events = common.make_events(args.events, args.keys, seed=0)
        pub = rtml.RedisPublisher(url, prefix="prof")
        with tempfile.TemporaryDirectory() as d:
            runner = Runner(fs, rtml.sources.replay(events, partitions=2), d,
                            checkpoint_every="1h", publish=pub)
            runner.run_until_idle()
            wm = min(e.watermark for e in runner.engines.values())
        print(f"published {pub.metrics()['values']} values, watermark {wm}")
        return 0
    remote = rtml.RemoteEngine(fs, url, prefix="prof", timeout=5.0)
    wm = remote.stats()["watermark"]
    at = np.datetime64(wm, "ns")
    rng = np.random.default_rng(7)
    batches = [[int(k) for k in rng.integers(0, args.keys, 100)] for _ in range(args.loops + 1)]
    remote.get_many(batches[0], at=at)  # connect, learn the info record
    rows = 0
    for b in batches[1:]:
        rows += remote.get_many(b, at=at).num_rows
    print(f"{args.loops} get_many of 100 keys: {rows} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
