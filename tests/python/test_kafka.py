"""rtml.sources.kafka + Runner against a real Kafka-protocol broker (tansu): SIGKILL and
restart, a two-member rebalance, dead letters, broker errors. Needs tansu (services.py)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rtml
import rtml.dead_letters
import rtml.sources
from rtml.runner import CheckpointError, Runner, load_checkpoints

from services import require_module, tansu  # noqa: F401 (fixture)
from stream_helpers import (
    LATENESS_S,
    answers,
    env_with_rtml,
    assert_matches_backfill,
    assert_same_answers,
    feature_set,
    instants,
    kill_and_restart,
    partition_keys,
    to_json_messages,
    workload,
)

require_module("confluent_kafka")

def create_topic(bootstrap: str, partitions: int) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"t-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=20)
    return name


MALFORMED = [
    b"{not json",
    b'{"user": 1}',
    b'{"user": 2, "ts": "not a time"}',
    b'{"user": 3, "ts": "2023-11-14T22:13:20Z", "amount": "ten"}',
    b"[]",
]


def produce(bootstrap: str, topic: str, events: pa.Table, seed: int, bad_every: int = 0):
    """Produce `events` keyed by str(user), in a shuffled arrival order within the lateness
    (the replay order with a random delay), plus malformed messages every `bad_every`.
    Returns (good events, [(partition, offset) of each malformed message])."""
    from confluent_kafka import Producer

    order = rtml.sources.replay(events, "ts", key="user", max_delay=f"{LATENESS_S // 2}s", seed=seed).arrival_order()[0]
    ordered = events.take(pa.array(order))
    msgs = to_json_messages(ordered)
    keys = ordered.column("user").to_pylist()
    rnd = random.Random(seed)
    # One message per record batch: tansu 0.6.0 answers a fetch at an offset inside a record
    # batch from the *next* batch (the rest of the batch is skipped), so a resume from a
    # checkpoint in the middle of a producer batch would lose events; with one-message batches
    # every offset is a batch boundary. (A real Kafka broker returns the containing batch and
    # the client drops the records before the offset.)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "batch.num.messages": 1, "acks": "all"})
    bad, placed = [], []

    def report(err, msg, is_bad):
        assert err is None, err
        (bad if is_bad else placed).append((msg.partition(), msg.offset(), msg.key()))

    for i, (k, m) in enumerate(zip(keys, msgs)):
        p.produce(topic, m, key=str(k).encode(), on_delivery=lambda e, msg: report(e, msg, False))
        if bad_every and i % bad_every == bad_every - 1:
            p.produce(topic, rnd.choice(MALFORMED), key=str(k).encode(), on_delivery=lambda e, msg: report(e, msg, True))
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    return ordered, bad, placed


def test_produced_keys_land_where_partition_of_says(tansu):
    bootstrap = f"127.0.0.1:{tansu.port}"
    topic = create_topic(bootstrap, 3)
    events = workload(300, 40, seed=1)
    _, _, placed = produce(bootstrap, topic, events, seed=1)
    assert all(rtml.sources.partition_of(k.decode(), 3) == p for p, _, k in placed)


def _spawn(spec, bootstrap, topic, group, ckpt):
    return subprocess.Popen(
        [sys.executable, "-m", "rtml.runner", "--spec", str(spec), "--source",
         f"kafka://{bootstrap}/{topic}?group={group}", "--checkpoint", str(ckpt), "--until-idle",
         "--checkpoint-every", "0s", "--max-batch", "500", "--progress", "never"],
        env=env_with_rtml(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def test_sigkill_restart_against_the_broker_is_exact(tansu, tmp_path):
    bootstrap = f"127.0.0.1:{tansu.port}"
    topic = create_topic(bootstrap, 2)
    fs = feature_set()
    events = workload(20_000, 1000, seed=2)
    good, bad, _ = produce(bootstrap, topic, events, seed=2, bad_every=499)
    spec = tmp_path / "features.json"
    spec.write_text(fs.to_json())
    ckpt = tmp_path / "ckpt"
    n = iter(range(100))
    # a new group per process: the positions come from the checkpoints, not the group
    seen = kill_and_restart(lambda: _spawn(spec, bootstrap, topic, f"kill-{next(n)}", ckpt), ckpt, range(2),
                            kills=3, rnd=random.Random(7))
    assert len(seen) == 3 and len(set(seen)) == 3, seen
    loaded = load_checkpoints(fs, ckpt)
    assert sorted(loaded) == [0, 1]
    engines = {p: e for p, (e, _) in loaded.items()}
    metas = {p: m for p, (_, m) in loaded.items()}
    assert all(m["skipped"] == 0 for m in metas.values())
    assert sum(m["events_in"] for m in metas.values()) == events.num_rows + len(bad)
    assert sum(m["malformed"] for m in metas.values()) == len(bad)
    assert sum(e.stats()["events_ingested"] for e in engines.values()) == events.num_rows
    # against backfill, bit for bit
    assert_matches_backfill(fs, good, engines, 2, n_instants=5)
    # against an uninterrupted in-process run
    whole = Runner(fs, rtml.sources.kafka(bootstrap, topic, "whole"), tmp_path / "whole", max_batch=2000)
    whole.run_until_idle(timeout=120)
    keys = partition_keys(events, 2)
    ats = instants(whole.engines, 5)
    assert_same_answers(answers(whole.engines, keys, ats), answers(engines, keys, ats), fs.feature_names)
    whole.close()
    # the dead-letter files: each malformed message exactly once, with partition, offset, reason
    dl = pq.read_table(ckpt / "dead_letters")
    got = sorted(zip(dl.column("partition").to_pylist(), map(int, dl.column("offset").to_pylist())))
    assert got == sorted((p, o) for p, o, _ in bad)
    assert all(dl.column("reason").to_pylist())


def test_two_runners_in_one_group_with_a_rebalance_in_the_middle(tansu, tmp_path):
    bootstrap = f"127.0.0.1:{tansu.port}"
    topic = create_topic(bootstrap, 4)
    fs = feature_set()
    events = workload(12_000, 600, seed=3)
    half = events.num_rows // 2
    first, second = events.slice(0, half), events.slice(half)
    g1, _, placed1 = produce(bootstrap, topic, first, seed=3)
    ckpt = tmp_path / "shared"
    group = f"grp-{uuid.uuid4().hex[:6]}"
    a = Runner(fs, rtml.sources.kafka(bootstrap, topic, group), ckpt, checkpoint_every="200ms", max_batch=500)
    b = Runner(fs, rtml.sources.kafka(bootstrap, topic, group), ckpt, checkpoint_every="200ms", max_batch=500)
    a.start()
    deadline = time.monotonic() + 60
    while a.metrics()["events_in"] < half and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a.metrics()["events_in"] == half and sorted(a.engines) == [0, 1, 2, 3]
    b.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (a.engines and b.engines and len(a.engines) + len(b.engines) == 4):
        time.sleep(0.1)
    held_a, held_b = sorted(a.engines), sorted(b.engines)
    assert held_a and held_b and sorted(held_a + held_b) == [0, 1, 2, 3], (held_a, held_b)
    g2, _, placed2 = produce(bootstrap, topic, second, seed=4)
    # wait until every partition's position reaches the end of the topic (from the delivery
    # reports: tansu's reported high watermarks lag behind)
    ends = {p: 1 + max(o for q, o, _ in placed1 + placed2 if q == p) for p in range(4)}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        pos = {**a.positions, **b.positions}
        if all(pos.get(p) == ends[p] for p in range(4)):
            break
        time.sleep(0.1)
    a.close()
    b.close()
    loaded = load_checkpoints(fs, ckpt)
    assert {p: m["position"] for p, (_, m) in loaded.items()} == ends
    engines = {p: e for p, (e, _) in loaded.items()}
    assert sum(e.stats()["events_ingested"] for e in engines.values()) == events.num_rows
    both = pa.concat_tables([g1, g2])
    assert_matches_backfill(fs, both, engines, 4, n_instants=4)


def test_broker_unavailable_retries_and_checkpoints_nothing(tmp_path):
    from services import free_port

    src = rtml.sources.kafka(f"127.0.0.1:{free_port()}", "nowhere", "g",
                             config={"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 200})
    r = Runner(feature_set(), src, tmp_path)
    with pytest.raises(rtml.sources.SourceError, match="not drained"):
        r.run_until_idle(timeout=3)
    assert r.metrics()["source_errors"]["broker_errors"] > 0
    assert not list(tmp_path.glob("partition-*.ckpt"))
    r.close()


def test_corrupted_checkpoint_under_a_broker_is_a_typed_error(tansu, tmp_path):
    """Raised from the group's assignment callback, surfaced by the runner, file untouched.
    (An offset older than the retention cannot be produced on tansu 0.6.0: it has no
    DeleteRecords and no retention on the memory engine; see docs/streaming.md.)"""
    bootstrap = f"127.0.0.1:{tansu.port}"
    topic = create_topic(bootstrap, 1)
    fs = feature_set()
    produce(bootstrap, topic, workload(50, 5, seed=5), seed=5)
    Runner(fs, rtml.sources.kafka(bootstrap, topic, "a"), tmp_path).run_until_idle(timeout=30)
    f = tmp_path / "partition-0.ckpt"
    damaged = f.read_bytes()[:-3]
    f.write_bytes(damaged)
    r = Runner(fs, rtml.sources.kafka(bootstrap, topic, "b"), tmp_path)
    with pytest.raises(CheckpointError, match="partition-0.ckpt") as ei:
        r.run_until_idle(timeout=30)
    assert ei.value.partition == 0
    r.source.close()
    assert f.read_bytes() == damaged


def test_composite_keys_through_the_broker(tansu, tmp_path):
    """entity=["driver", "zone"] over a real broker: produced with message_key(tuple), every
    message lands where partition_of(tuple) says; a Runner on the topic decodes one JSON field
    per key part (a missing / wrong-typed part is a dead letter naming its field), finds a
    tuple's partition from the tuple, and answers bit for bit as the backfill."""
    import json

    import pandas as pd
    from confluent_kafka import Producer

    bootstrap = f"127.0.0.1:{tansu.port}"
    topic = create_topic(bootstrap, 3)
    base = feature_set()
    fs = rtml.FeatureSet(["driver", "zone"], "ts", base.features, allowed_lateness=f"{LATENESS_S}s")
    ev = workload(3_000, 60, seed=9)
    users = ev.column("user").to_pylist()
    drivers = ["a", "a1", "b", "ü", ""]
    events = pa.table({
        "driver": [drivers[u % len(drivers)] for u in users],
        "zone": pa.array([(u * 7) % 3 * 5 + 2 for u in users], pa.int64()),  # 2, 7, 12
        "ts": ev["ts"], "amount": ev["amount"], "shop": ev["shop"],
    })
    msgs = []
    for m, d, z in zip(to_json_messages(ev), events["driver"].to_pylist(), events["zone"].to_pylist()):
        row = json.loads(m)
        del row["user"]
        row.update(drv=d, zone=z)
        msgs.append(((d, z), json.dumps(row).encode()))
    bad = [b'{"drv": "a", "ts": "2023-11-14T22:13:20Z"}', b'{"drv": "a", "zone": 2.5, "ts": "2023-11-14T22:13:20Z"}']
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "batch.num.messages": 1, "acks": "all"})
    placed = []
    for i, (k, m) in enumerate(msgs):
        p.produce(topic, m, key=rtml.sources.message_key(k), on_delivery=lambda e, msg, k=k: placed.append((k, msg.partition())))
        if i in (100, 2000):
            p.produce(topic, bad[i // 2000], key=rtml.sources.message_key(("a", 2)))
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    assert len(placed) == len(msgs)
    assert all(rtml.sources.partition_of(k, 3) == part for k, part in placed)
    assert len({part for _, part in placed}) > 1
    r = Runner(fs, rtml.sources.kafka(bootstrap, topic, f"c-{uuid.uuid4().hex[:6]}", fields={"driver": "drv"}),
               tmp_path / "ckpt", max_batch=1000)
    r.run_until_idle(timeout=120)
    assert r.metrics()["malformed"] == 2
    dl = pq.read_table(tmp_path / "ckpt" / "dead_letters").to_pylist()
    assert all("'zone'" in d["reason"] for d in dl), dl
    tuples = sorted(set(k for k, _ in msgs), key=str)
    wm = max(e.watermark for e in r.engines.values() if e.watermark is not None)
    at = pd.Timestamp(wm + 60 * 10**9, unit="ns", tz="UTC")
    spine = pa.table({"driver": [t[0] for t in tuples], "zone": pa.array([t[1] for t in tuples]),
                      "ts": pa.array([at.value] * len(tuples), pa.timestamp("ns", "UTC"))})
    off = fs.backfill(events, spine, output="arrow")
    on = [r.get(t, at=at) for t in tuples]
    for n in fs.feature_names:
        want = [None if v is None else struct_bits(v) for v in off[n].to_pylist()]
        assert [None if x[n] is None else struct_bits(x[n]) for x in on] == want, n
    r.close()


def struct_bits(v):
    import struct

    return struct.pack("<d", float(v)) if isinstance(v, float) else v


def _crash_checkpoint_writes(monkeypatch) -> dict:
    """A crash after the dead letters were acknowledged and before the checkpoint landed:
    while ``state["crash"]`` is true, every checkpoint file write raises (nothing is written)."""
    import rtml.runner as rr

    real, state = rr._atomic_write, {"crash": True}

    def write(path, chunks):
        if state["crash"]:
            raise OSError("simulated crash before the checkpoint write")
        return real(path, chunks)

    monkeypatch.setattr(rr, "_atomic_write", write)
    return state


def _read_topic(bootstrap: str, topic: str) -> list:
    from confluent_kafka import Consumer, KafkaError

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    n = len(c.list_topics(topic, timeout=10).topics[topic].partitions)
    c.subscribe([topic])
    out, at_end, deadline = [], set(), time.monotonic() + 60
    while len(at_end) < n:
        assert time.monotonic() < deadline, f"{topic}: no end of partitions {set(range(n)) - at_end}"
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error() is not None:
            if m.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(m.partition())
                continue
            raise AssertionError(m.error())
        out.append(m)
    c.close()
    return out


def test_dead_letters_to_a_topic_are_acknowledged_before_the_checkpoint(tansu, tmp_path, monkeypatch):
    """dead_letters="kafka://host:port/topic": each malformed message goes to the dead-letter
    topic with its payload, partition, offset and reason; a crash between the (acknowledged)
    dead letters and the checkpoint re-sends them after the restart, under the same
    idempotency key <partition>:<offset>: deduplicated on it, the topic holds each malformed
    message exactly once. No Parquet dead-letter files are written."""
    bootstrap = f"127.0.0.1:{tansu.port}"
    topic, dl_topic = create_topic(bootstrap, 2), create_topic(bootstrap, 1)
    fs = feature_set()
    good, bad, _ = produce(bootstrap, topic, workload(3000, 100, seed=11), seed=11, bad_every=97)
    payload_of = {(m.partition(), m.offset()): m.value() for m in _read_topic(bootstrap, topic)}
    sink = f"kafka://{bootstrap}/{dl_topic}"
    ckpt = tmp_path / "ckpt"
    crash = _crash_checkpoint_writes(monkeypatch)
    r = Runner(fs, rtml.sources.kafka(bootstrap, topic, "dl-1"), ckpt, checkpoint_every="1h", dead_letters=sink)
    with pytest.raises(OSError, match="simulated crash"):
        r.run_until_idle(timeout=60)
    r.close()  # (its revocation's checkpoint fails too)
    crash["crash"] = False
    assert not list(ckpt.glob("partition-*.ckpt"))
    sent_before_crash = len(_read_topic(bootstrap, dl_topic))
    assert sent_before_crash > 0  # (the first partition's, acknowledged before its checkpoint failed)
    again = Runner(fs, rtml.sources.kafka(bootstrap, topic, "dl-2"), ckpt, checkpoint_every="1h", dead_letters=sink)
    again.run_until_idle(timeout=60)
    again.close()
    letters = _read_topic(bootstrap, dl_topic)
    assert len(letters) == sent_before_crash + len(bad)  # re-sent after the crash: at least once
    by_key: dict[bytes, list] = {}
    for m in letters:
        h = {k: v.decode() for k, v in m.headers()}
        p, o = int(h["rtml.partition"]), int(h["rtml.offset"])
        assert m.key().decode() == rtml.dead_letters.idempotency_key(p, str(o)) == f"{p}:{o}"
        assert m.value() == payload_of[(p, o)] and h["rtml.reason"]
        assert h["rtml.source"] == f"kafka:{topic}" and len(h["rtml.spec_sha256"]) == 64
        by_key.setdefault(m.key(), []).append((m.value(), h["rtml.reason"]))
    # deduplicated on the key: every malformed message once; copies are identical
    assert sorted(by_key) == sorted(f"{p}:{o}".encode() for p, o, _ in bad)
    assert all(len(set(copies)) == 1 for copies in by_key.values())
    assert not (ckpt / "dead_letters").exists()
    engines = {p: e for p, (e, _) in load_checkpoints(fs, ckpt).items()}
    assert_matches_backfill(fs, good, engines, 2, n_instants=3)
