"""Old vs new rtml builds on bench_streams.py's no-broker workload, alternating in one run (a
shared, noisy machine: compare within a run, never across runs). Issue 13.

    python bench/streams_ab.py --side old=/tmp/rtml-main --side new=python \\
        --events 1000000 --reps 4 r1 r2 di dio

Each `--side NAME=DIR` is a directory holding an `rtml` package with its built extension
(e.g. a copy of python/rtml with the release `_core` of another commit). Modes: `decode`
(`_core.JsonDecoder` only), `di` (decode, then `OnlineEngine.ingest`, one thread), `dio` (chunk
n+1 decoded while chunk n is ingested on a second thread), `r1` / `r2` (a `Runner` over
`sources.replay_messages` with 1 / 2 partitions until the last batch is applied, no
checkpoint). Every (side, mode) runs `--reps` times in a fresh process, in rotation; prints the
best and the median events/s of each, and the 1-minute load average seen.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(mode: str, batch: int, path: str) -> None:
    sys.path.insert(0, str(HERE))
    import common

    msgs, keys = pickle.loads(Path(path).read_bytes())
    import pyarrow as pa

    import rtml
    import rtml.sources
    from rtml.runner import Runner
    from rtml.sources import _decoder_config

    fs = common.feature_set()
    src = rtml.sources.replay_messages(msgs, keys, 1, timestamp_unit="ms")
    dec = rtml._core.JsonDecoder(*_decoder_config(src, fs))
    chunks = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
    t0 = time.perf_counter()
    if mode == "decode":
        for c in chunks:
            dec.decode(c, True)
    elif mode == "di":
        eng = fs.online()
        for c in chunks:
            b, _, _ = dec.decode(c, True)
            eng.ingest(pa.Table.from_batches([b]))
    elif mode == "dio":
        from concurrent.futures import ThreadPoolExecutor

        eng = fs.online()
        with ThreadPoolExecutor(1) as pool:
            inflight = None
            for c in chunks:
                b, _, _ = dec.decode(c, True)
                table = pa.Table.from_batches([b])
                if inflight is not None:
                    inflight.result()
                inflight = pool.submit(eng.ingest, table)
            if inflight is not None:
                inflight.result()
    elif mode in ("r1", "r2"):
        parts = int(mode[1:])
        with tempfile.TemporaryDirectory() as d:
            r = Runner(fs, rtml.sources.replay_messages(msgs, keys, parts, timestamp_unit="ms"), d,
                       checkpoint_every="1h", max_batch=batch)
            r._open()
            t0 = time.perf_counter()
            while r.step() or not r.source.idle():
                pass
            r._drain()
            dt = time.perf_counter() - t0
            assert r.metrics(lag=False)["events_in"] == len(msgs)
            r.close()
            print(json.dumps({"rate": len(msgs) / dt}))
            return
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps({"rate": len(msgs) / (time.perf_counter() - t0)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("modes", nargs="+")
    ap.add_argument("--side", action="append", required=True, help="NAME=DIR (DIR holds rtml/)")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, batch, path = args.child
        child(mode, int(batch), path)
        return
    sys.path.insert(0, str(HERE))
    import bench_streams

    sides = dict(s.split("=", 1) for s in args.side)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "msgs.pkl"
        path.write_bytes(pickle.dumps(bench_streams.messages(args.events, args.keys)))
        rates: dict[tuple[str, str], list[float]] = {(s, m): [] for m in args.modes for s in sides}
        loads = []
        for _ in range(args.reps):
            for (side, mode), got in rates.items():
                env = dict(os.environ, PYTHONPATH=os.path.abspath(sides[side]))
                out = subprocess.run(
                    [sys.executable, __file__, "--side", "x=.", "--child", mode, str(args.batch), str(path), mode],
                    env=env, capture_output=True, text=True, check=False)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                got.append(json.loads(out.stdout.strip().splitlines()[-1])["rate"])
                loads.append(os.getloadavg()[0])
    for (side, mode), v in rates.items():
        print(f"{mode:7s} {side:8s} best {max(v) / 1e6:.3f} M/s  median {statistics.median(v) / 1e6:.3f} M/s  "
              f"all {[round(x / 1e6, 3) for x in v]}")
    print(f"load average (1 min) during the run: {min(loads):.2f} - {max(loads):.2f}")


if __name__ == "__main__":
    main()
