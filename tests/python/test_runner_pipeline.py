"""The runner's pipeline (the polling thread, a decode thread decoding batch n+1 ahead, an
ingest thread applying batch n) against the serial runner (``pipeline=False``): the same
answers, counters, positions and dead letters, bit for bit, whatever the batch sizes,
re-deliveries, malformed messages and key kinds of the stream."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rtml.sources
from rtml.runner import Runner

from stream_helpers import (
    answers,
    assert_same_answers,
    feature_set,
    instants,
    partition_keys,
    to_json_messages,
    workload,
)


class Redelivering(rtml.sources.Source):
    """Raw payloads of one partition in batches of varied sizes, each poll starting a few
    messages back (a broker re-delivering what was applied already)."""

    raw = True
    name = "redelivering"
    fields: dict = {}
    types: dict = {}
    timestamp_unit = None
    decode = None

    def __init__(self, payloads: list, sizes: list[int], backs: list[int]) -> None:
        self.payloads, self.sizes, self.backs = payloads, sizes, backs
        self.polls = 0
        self.pos = 0

    def open(self, on_assign, on_revoke) -> None:
        self.pos = on_assign([0])[0] or 0

    def poll(self, max_records: int, timeout: float) -> list:
        if self.pos >= len(self.payloads):
            return []
        size = self.sizes[self.polls % len(self.sizes)]
        back = min(self.backs[self.polls % len(self.backs)], size - 1, self.pos)
        self.polls += 1
        start = self.pos - back
        chunk = self.payloads[start : start + size]
        end = start + len(chunk)
        self.pos = end
        return [rtml.sources.Batch(0, list(range(start, end)), end, payloads=chunk)]

    def idle(self) -> bool:
        return self.pos >= len(self.payloads)


def run(payloads: list, sizes: list[int], backs: list[int], pipeline: bool, d: Path):
    fs = feature_set()
    r = Runner(fs, Redelivering(payloads, sizes, backs), d, checkpoint_every="1h",
               pipeline=pipeline)
    r.run_until_idle()
    m = r.metrics(lag=False)
    for v in (m, *m["partitions"].values()):
        v.pop("last_checkpoint_age_s", None)
        v.pop("last_checkpoint_duration_s", None)
    dl = d / "dead_letters"
    dead = pq.read_table(dl).sort_by("offset").to_pylist() if dl.exists() else []
    r.close()
    return r, m, dead


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6),
    # (a re-delivered batch is decoded again on the ingest thread: mostly none)
    backs=st.lists(st.sampled_from([0, 0, 0, 1, 7, 40]), min_size=1, max_size=4),
    bad=st.lists(st.integers(0, 599), max_size=12),
    switch=st.one_of(st.none(), st.integers(0, 599)),
    str_first=st.booleans(),
)
def test_pipelined_runner_equals_serial(seed, sizes, backs, bad, switch, str_first):
    events = workload(600, 40, seed=seed, str_keys=str_first)
    payloads = to_json_messages(events)
    if switch is not None:
        # from message `switch` on, keys of the other kind (rejected once the kind is fixed;
        # the first batch decides it)
        other = workload(600, 40, seed=seed, str_keys=not str_first)
        payloads[switch:] = to_json_messages(other)[switch:]
    for i in bad:
        payloads[i] = [b"garbage", b'{"user": 1}', b"", b'{"user": [1], "ts": "x"}'][i % 4]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        r1, m1, dead1 = run(payloads, sizes, backs, True, Path(a))
        r2, m2, dead2 = run(payloads, sizes, backs, False, Path(b))
        assert m1 == m2
        assert dead1 == dead2
        assert m1["events_in"] == len(payloads)
        e1, e2 = r1.engines, r2.engines

        def stats(engines: dict) -> dict:
            # (state_bytes: capacities of hash tables whose hashers are seeded per process run)
            return {p: {k: v for k, v in e.stats().items() if k != "state_bytes"}
                    for p, e in engines.items()}

        assert stats(e1) == stats(e2)
        if e1[0].watermark is None:
            return
        kept = pa.table({"user": pa.array([k for k in set(events.column("user").to_pylist())])})
        keys_of = partition_keys(kept, 1)
        ats = instants(e1, 4)
        names = feature_set().feature_names
        assert_same_answers(answers(e1, keys_of, ats), answers(e2, keys_of, ats), names)


def test_the_decode_ahead_is_used(monkeypatch):
    """From the third batch on (the key kind fixed by the first, applied before the third is
    decoded), a batch without re-deliveries is decoded only ahead, on the decode thread."""
    calls = {"ahead": 0, "again": 0}
    predecode, decode = Runner._predecode, Runner._decode

    def counted(name, f):
        def g(*a):
            calls[name] += 1
            return f(*a)

        return g

    monkeypatch.setattr(Runner, "_predecode", counted("ahead", predecode))
    monkeypatch.setattr(Runner, "_decode", counted("again", decode))
    payloads = to_json_messages(workload(1000, 40, seed=1))
    with tempfile.TemporaryDirectory() as d:
        _, m, _ = run(payloads, [100], [0], True, Path(d))
    assert m["events_in"] == 1000
    assert calls["ahead"] == 10 and calls["again"] <= 2, calls


def test_partitions_checkpointed_in_parallel_hold_what_sequential_ones_do(monkeypatch, tmp_path):
    """Several partitions are checkpointed at once (session 10): each file holds its own
    partition's snapshot, position and counters, the same answers as checkpointing one at a
    time, and the dead letters of each are on disk."""
    import rtml.runner
    from rtml.online import OnlineEngine
    from rtml.runner import read_checkpoint

    fs = feature_set()
    ev = workload(4_000, 300, seed=11)
    payloads = to_json_messages(ev)
    payloads[17] = b"{not json"
    payloads[2_001] = b'{"user": 1}'
    keys = ev.column("user").to_pylist()
    restored, metas, dead = {}, {}, {}
    for name, threads in (("sequential", 1), ("parallel", 4)):
        monkeypatch.setattr(rtml.runner, "_CHECKPOINT_THREADS", threads)
        d = tmp_path / name
        r = Runner(fs, rtml.sources.replay_messages(payloads, keys, 3), d, max_batch=700)
        r.run_until_idle()
        assert sorted(r.engines) == [0, 1, 2]
        restored[name], metas[name] = {}, {}
        for p in r.engines:
            meta, snap = read_checkpoint(r.checkpoint_path(p), p)
            assert meta["position"] == r.positions[p]
            restored[name][p] = OnlineEngine.from_bytes(snap)
            metas[name][p] = {k: v for k, v in meta.items() if k != "written_at"}
        dead[name] = sorted(f.name for f in (d / "dead_letters").glob("*.parquet"))
    assert metas["parallel"] == metas["sequential"]
    assert dead["parallel"] == dead["sequential"] and len(dead["parallel"]) == 2
    engines = restored["parallel"]
    assert_same_answers(
        answers(engines, partition_keys(ev, 3), instants(engines)),
        answers(restored["sequential"], partition_keys(ev, 3), instants(engines)),
        [f.name for f in fs.features],
    )
