"""Load benchmark of the example service (not a test): POST /predict requests/s and latency
percentiles from a load generator on loopback, at a few concurrency levels, with a bounded
number of requests.

    python examples/serving/bench_load.py --artifacts artifacts            # starts the service itself
    python examples/serving/bench_load.py --url http://127.0.0.1:8000      # or measures a running one

The flights asked for are test flights (Oct-Dec) from artifacts/test_rows.parquet, each at its
scheduled departure. The service runs one uvicorn worker (one process), access log off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def flights(artifacts: Path, n: int) -> list[dict]:
    rows = pq.read_table(artifacts / "test_rows.parquet",
                         columns=["tailnum", "origin", "carrier", "dest", "distance", "sched_dep"]).to_pandas()
    rows = rows.iloc[np.linspace(0, len(rows) - 1, n).astype(int)]
    return [{"tailnum": r.tailnum, "origin": r.origin, "carrier": r.carrier, "dest": r.dest,
             "distance": int(r.distance), "sched_dep": pd.Timestamp(r.sched_dep).isoformat()}
            for r in rows.itertuples(index=False)]


async def run(url: str, payloads: list[dict], concurrency: int) -> tuple[float, np.ndarray]:
    lat = np.zeros(len(payloads))
    queue = iter(range(len(payloads)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            for i in queue:
                t = time.perf_counter()
                r = await client.post("/predict", json=payloads[i])
                lat[i] = time.perf_counter() - t
                if r.status_code != 200:
                    raise RuntimeError(r.text)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default=os.environ.get("RTML_ARTIFACTS", "artifacts"))
    ap.add_argument("--url", default=None, help="a running service (default: start one on a free port)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    artifacts = Path(args.artifacts)
    payloads = flights(artifacts, args.requests)

    proc, tmp = None, None
    url = args.url
    if url is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tmp = tempfile.TemporaryDirectory()
        env = {**os.environ, "RTML_ARTIFACTS": str(artifacts), "RTML_STATE_DIR": f"{tmp.name}/state",
               "RTML_SERVED_LOG": f"{tmp.name}/log"}
        proc = subprocess.Popen([sys.executable, str(HERE / "app.py"), "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit("service did not start")
    try:
        asyncio.run(run(url, payloads[:200], 4))  # warm-up
        results = []
        print(f"{'concurrency':>11}  {'requests':>8}  {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'max ms':>7}")
        for c in [int(x) for x in args.concurrency.split(",")]:
            wall, lat = asyncio.run(run(url, payloads, c))
            res = {"concurrency": c, "requests": len(payloads), "rps": len(payloads) / wall,
                   "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
                   "max_ms": float(lat.max() * 1e3)}
            results.append(res)
            print(f"{c:>11}  {len(payloads):>8}  {res['rps']:>8.0f}  {res['p50_ms']:>7.2f}  {res['p99_ms']:>7.2f}  "
                  f"{res['max_ms']:>7.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            tmp.cleanup()


if __name__ == "__main__":
    main()
