"""Real services for the streaming tests: a tansu Kafka-protocol broker and a redis-server,
each started on a free loopback port by a session fixture and stopped at the end.

Where the binaries come from (`.ci/setup-services` provides them): tansu from
``$RTML_TANSU``, ``<repo>/../shared/bin/tansu``, ``~/.cache/rtml/tansu/bin/tansu`` or PATH;
redis-server from PATH. With ``CI=true`` a service that cannot start FAILS the tests that need
it; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def unavailable(reason: str):
    if in_ci():
        pytest.fail(f"CI=true: {reason} (run .ci/setup-services)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str):
    """Import a client library; missing: fail under CI=true, else skip with the reason."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        reason = f"python package {name!r} is not installed ({e}); pip install confluent-kafka redis"
        if in_ci():
            pytest.fail(f"CI=true: {reason} (run .ci/setup-services)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def find_tansu() -> str | None:
    candidates = [
        os.environ.get("RTML_TANSU"),
        str(REPO.parent / "shared" / "bin" / "tansu"),
        str(Path.home() / ".cache" / "rtml" / "tansu" / "bin" / "tansu"),
        shutil.which("tansu"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


class Service:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_tansu() -> Service:
    binary = find_tansu()
    if binary is None:
        unavailable("tansu broker not found (RTML_TANSU, ../shared/bin/tansu, ~/.cache/rtml/tansu)")
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="rtml-tansu-")) / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc, 20, "tansu")
        from confluent_kafka.admin import AdminClient

        AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
    except Exception as e:
        proc.kill()
        unavailable(f"tansu did not start: {e}; log: {log.read_text()[-2000:] if log.exists() else ''}")
    return Service(proc, port, log)


def start_redis(port: int | None = None) -> Service:
    """A fresh, empty redis-server (no persistence) on `port` (default: a free one); a test
    that kills it can start another on the same port."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server not found on PATH (apt-get install redis-server)")
    port = free_port() if port is None else port
    d = Path(tempfile.mkdtemp(prefix="rtml-redis-"))
    log = d / "redis.log"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(d), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc, 10, "redis-server")
    except Exception as e:
        proc.kill()
        unavailable(f"redis-server did not start: {e}")
    return Service(proc, port, log)


@pytest.fixture(scope="session")
def tansu():
    s = start_tansu()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def redis_server():
    s = start_redis()
    yield s
    s.stop()
