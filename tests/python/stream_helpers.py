"""Shared helpers of the streaming tests: a workload, its feature set, and bit-for-bit
comparisons of per-partition engines against each other and against `fs.backfill`."""

from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pyarrow as pa

import rtml
import rtml.sources

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
LATENESS_S = 600


def env_with_rtml() -> dict:
    """The environment of a child process that imports the rtml this test process imported (an
    installed wheel in CI, a source tree with a built extension on PYTHONPATH locally)."""
    import os
    from pathlib import Path

    env = dict(os.environ)
    home = Path(rtml.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(home), env.get("PYTHONPATH", "")])
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def feature_set() -> rtml.FeatureSet:
    return rtml.FeatureSet(
        entity="user",
        timestamp="ts",
        features=[
            rtml.count(window="1h"),
            rtml.sum("amount", window="1h"),
            rtml.mean("amount", window="30m"),
            rtml.max("amount", window="1h"),
            rtml.std("amount", window="2h"),
            rtml.last("amount", window="1h"),
            rtml.distinct_count("shop", window="1h"),
            rtml.time_since_last(window="1h"),
        ],
        allowed_lateness=f"{LATENESS_S}s",
    )


def workload(n: int, keys: int, seed: int, span_s: int = 6 * 3600, str_keys: bool = False) -> pa.Table:
    """`n` events in time order over `span_s` seconds, Zipf-ish keys, float amounts with
    awkward bits, some null amounts, string shops."""
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, span_s * NS, n))
    k = np.minimum(rng.zipf(1.3, n), keys) - 1
    amount = np.round(rng.lognormal(2.0, 1.0, n), 3) * (1 + 1e-9 * rng.standard_normal(n))
    amount_nulls = rng.random(n) < 0.05
    shop = rng.integers(0, 20, n)
    return pa.table({
        "user": pa.array([f"u{x}" for x in k]) if str_keys else pa.array(k, pa.int64()),
        "ts": pa.array(ts, pa.timestamp("ns", "UTC")),
        "amount": pa.array(amount, mask=amount_nulls),
        "shop": pa.array([f"s{x}" for x in shop]),
    })


def bits_equal(a: pa.Array, b: pa.Array) -> bool:
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    b = b.combine_chunks() if isinstance(b, pa.ChunkedArray) else b
    if a.type != b.type or len(a) != len(b):
        return False
    if not a.is_null().equals(b.is_null()):
        return False
    if pa.types.is_floating(a.type):
        av = a.fill_null(0.0).to_numpy(zero_copy_only=False).view(np.uint64)
        bv = b.fill_null(0.0).to_numpy(zero_copy_only=False).view(np.uint64)
        return bool((av == bv).all())
    return a.equals(b)


def partition_keys(events: pa.Table, partitions: int) -> dict[int, list]:
    out: dict[int, list] = {p: [] for p in range(partitions)}
    for k in sorted(set(events.column("user").to_pylist()), key=str):
        out[rtml.sources.partition_of(k, partitions)].append(k)
    return out


def instants(engines: dict, n: int = 8) -> list[int]:
    """`n` instants every engine can answer exactly: from the latest watermark minus the
    lateness to two hours past it."""
    wm = max(e.watermark for e in engines.values() if e.watermark is not None)
    lo = wm - LATENESS_S * NS + NS
    hi = wm + 2 * 3600 * NS
    return [int(lo + (hi - lo) * i // (n - 1)) for i in range(n)]


def answers(engines: dict, keys_of: dict[int, list], ats: list[int]) -> dict:
    """Every key's features at every instant, from the engine of its partition."""
    out = {}
    for p, eng in engines.items():
        keys = keys_of.get(p, [])
        if not keys:
            continue
        for t in ats:
            out[(p, t)] = eng.get_many(keys, at=pd.Timestamp(t, unit="ns", tz="UTC"))
    return out


def assert_same_answers(a: dict, b: dict, names: list[str]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        for name in names:
            assert bits_equal(a[k].column(name), b[k].column(name)), (k, name)


def assert_matches_backfill(fs, events: pa.Table, engines: dict, partitions: int, n_instants: int = 8) -> int:
    """Every key at `n_instants` instants, online (per partition) == backfill, bit for bit.
    Returns the number of (key, instant) pairs compared."""
    keys_of = partition_keys(events, partitions)
    ats = instants(engines, n_instants)
    compared = 0
    for p, eng in engines.items():
        keys = keys_of[p]
        if not keys:
            continue
        spine = pa.table({
            "user": pa.array([k for t in ats for k in keys], events.column("user").type),
            "ts": pa.array([t for t in ats for _ in keys], pa.timestamp("ns", "UTC")),
        })
        off = fs.backfill(events, spine, progress=False)
        on = eng.get_many(spine.column("user").to_pylist(), at=[pd.Timestamp(t, unit="ns", tz="UTC") for t in ats for _ in keys])
        for name in fs.feature_names:
            assert bits_equal(on.column(name), off.column(name)), (p, name)
        compared += spine.num_rows
    return compared


def to_json_messages(events: pa.Table) -> list[bytes]:
    """One JSON object per event: RFC 3339 time with nanoseconds, floats by repr (exact)."""
    out = []
    ts_ns = events.column("ts").cast(pa.int64()).to_pylist()
    for row, t in zip(events.drop_columns(["ts"]).to_pylist(), ts_ns):
        d = {"user": row["user"], "ts": rfc3339(t), "shop": row["shop"]}
        if row["amount"] is not None:
            d["amount"] = row["amount"]
        out.append(json.dumps(d).encode())
    return out


def rfc3339(ns: int) -> str:
    import datetime as dt

    s, frac = divmod(ns, NS)
    base = dt.datetime.fromtimestamp(s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def f64_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def checkpointed_total(ckpt, partitions) -> int:
    """Events covered by the checkpoints in `ckpt` (0 when none)."""
    from rtml.runner import CheckpointError, read_checkpoint

    total = 0
    for p in partitions:
        f = ckpt / f"partition-{p}.ckpt"
        try:
            total += read_checkpoint(f, p)[0]["events_in"]
        except (FileNotFoundError, CheckpointError):
            pass
    return total


def kill_and_restart(spawn, ckpt, partitions, kills: int, rnd, max_wait: float = 120.0):
    """Start the runner process with `spawn()`; `kills` times, wait until its checkpoints have
    advanced past the previous kill's, let it run a random 0-50 ms more (mid-ingest or
    mid-checkpoint: it checkpoints after every poll) and SIGKILL it; then let the last process
    drain and exit. Returns the checkpointed event counts seen at each kill."""
    import signal
    import subprocess
    import time

    seen = []
    last = 0  # every kill after some progress (the first: after a first checkpoint with events)
    while len(seen) < kills:
        proc = spawn()
        deadline = time.monotonic() + max_wait
        while proc.poll() is None and checkpointed_total(ckpt, partitions) <= last:
            assert time.monotonic() < deadline, "the runner made no progress"
            time.sleep(0.005)
        time.sleep(rnd.uniform(0.0, 0.05))
        if proc.poll() is not None:
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()[-3000:]
            break  # finished before the kill: the remaining kills are moot
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        last = checkpointed_total(ckpt, partitions)
        seen.append(last)
    proc = spawn()
    try:
        _, err = proc.communicate(timeout=max_wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err.decode()[-3000:]
    return seen
