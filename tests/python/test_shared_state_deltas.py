"""Published values as a base plus appended delta segments (docs/shared-state.md, format 3): a
reader replays the segments with the writer's own function, so every answer equals the
in-process engine's and a single whole publish's, bit for bit, whatever the publish intervals;
segments never outgrow their base (compaction); a value whose base vanished reads as no value
until the writer, which checks the length each APPEND answers, rewrites it; APPEND keeps the
expiry current."""

from __future__ import annotations

import random
import struct
import uuid

import pandas as pd
import pyarrow as pa
import pytest

import rtml
from rtml.remote import namespace_of
from services import redis_server, require_module  # noqa: F401
from stream_helpers import LATENESS_S, NS, feature_set, workload

redis = require_module("redis")

HEADER = 40


def enc(row: dict) -> dict:
    """A row with floats as hex text: equal iff bit-identical."""
    return {k: (v.hex() if isinstance(v, float) else v) for k, v in row.items()}


def ts(t: int) -> pd.Timestamp:
    return pd.Timestamp(t, unit="ns", tz="UTC")


def segments(value: bytes) -> int:
    """Delta segments after the base of a stored value."""
    (plen,) = struct.unpack_from("<I", value, 32)
    at, n = HEADER + plen, 0
    while at < len(value):
        assert value[at:at + 4] == b"RTKD"
        (p,) = struct.unpack_from("<I", value, at + 12)
        at += 36 + p
        n += 1
    assert at == len(value)
    return n


def publisher(url: str, fs: rtml.FeatureSet, engine: rtml.OnlineEngine, **kw) -> rtml.RedisPublisher:
    pub = rtml.RedisPublisher(url, prefix=f"t{uuid.uuid4().hex[:8]}", **kw)
    pub.bind(fs)
    pub.attach(0, engine)
    return pub


def instants_of(engine: rtml.OnlineEngine) -> list[int]:
    wm = engine.watermark
    return [wm - LATENESS_S * NS + NS, wm, wm + 17 * 60 * NS, wm + 2 * 3600 * NS]


def same_answers(remote: rtml.RemoteEngine, engine: rtml.OnlineEngine, keys: list, ats: list[int]) -> None:
    for t in ats:
        want = [enc(engine.get(k, at=ts(t))) for k in keys]
        assert [enc(remote.get(k, at=ts(t))) for k in keys] == want
        many = remote.get_many(keys, at=ts(t)).to_pylist()
        assert [enc({f: r[f] for f in remote.feature_names}) for r in many] == want


def test_base_plus_deltas_answer_like_the_engine_and_compact(redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    fs = feature_set()
    events = workload(12_000, 40, seed=21)
    engine = rtml.OnlineEngine(fs)
    pub = publisher(url, fs, engine)
    remote = rtml.RemoteEngine(fs, url, prefix=pub.prefix)
    c = redis.Redis.from_url(url)
    keys = sorted(set(events.column("user").to_pylist()))
    seen_segments = 0
    for i in range(0, events.num_rows, 300):
        engine.ingest(events.slice(i, 300))
        pub.publish(0, engine)
        seen_segments = max(
            [seen_segments] + [segments(c.get(remote._reader.store_key(k)) or b"RTKS" + bytes(36)) for k in keys[:5]]
        )
        if i % 3000 == 0:
            same_answers(remote, engine, keys, instants_of(engine))
    same_answers(remote, engine, keys, instants_of(engine))
    m = pub.metrics()
    assert m["errors"] == 0 and m["rewrites"] == 0, m
    # most values went as delta segments; hot keys carried several at once
    assert m["deltas"] > m["values"] // 2, m
    assert seen_segments >= 2
    # compaction: no stored value's segments outgrow its base, and hot keys were rewritten
    # whole after their first publish (more whole values than keys)
    assert m["values"] - m["deltas"] > len(keys), m
    for k in keys:
        v = c.get(remote._reader.store_key(k))
        (plen,) = struct.unpack_from("<I", v, 32)
        assert len(v) - HEADER - plen <= HEADER + plen


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_any_publish_intervals_equal_one_whole_publish(redis_server, seed):
    """Property: the same stream published with deltas at random cuts, and published once
    whole at the end (deltas=False), is read back with the same bits, equal to the engine's."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    fs = feature_set()
    rnd = random.Random(seed)
    events = workload(rnd.randrange(2_000, 8_000), rnd.choice([5, 30, 200]), seed=seed,
                      str_keys=seed % 2 == 0)
    a = rtml.OnlineEngine(fs)
    b = rtml.OnlineEngine(fs)
    pa_ = publisher(url, fs, a)
    pb = publisher(url, fs, b, deltas=False)
    at = 0
    while at < events.num_rows:
        n = rnd.choice([1, 7, 50, 400, 1500])
        batch = events.slice(at, n)
        a.ingest(batch)
        b.ingest(batch)
        if rnd.random() < 0.7:
            pa_.publish(0, a)
        at += n
    pa_.publish(0, a)
    pb.publish(0, b)
    assert pa_.metrics()["deltas"] > 0 and pb.metrics()["deltas"] == 0
    ra = rtml.RemoteEngine(fs, url, prefix=pa_.prefix)
    rb = rtml.RemoteEngine(fs, url, prefix=pb.prefix)
    keys = sorted(set(events.column("user").to_pylist()), key=str)
    for t in instants_of(a):
        want = [enc(a.get(k, at=ts(t))) for k in keys]
        assert [enc(rb.get(k, at=ts(t))) for k in keys] == want
        assert [enc(ra.get(k, at=ts(t))) for k in keys] == want
        assert ra.get_many(keys, at=ts(t)).equals(rb.get_many(keys, at=ts(t)))


def test_a_value_whose_base_vanished_reads_as_no_value_then_is_rewritten(redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    fs = feature_set()
    events = workload(3_000, 10, seed=5)
    engine = rtml.OnlineEngine(fs)
    pub = publisher(url, fs, engine)
    remote = rtml.RemoteEngine(fs, url, prefix=pub.prefix)
    c = redis.Redis.from_url(url)
    engine.ingest(events.slice(0, 2_000))
    pub.publish(0, engine)
    name = remote._reader.store_key(0)
    c.delete(name)  # evicted by Redis (maxmemory), deleted by an operator, expired...
    engine.ingest(events.slice(2_000))
    pub.publish(0, engine)
    assert c.get(name)[:4] == b"RTKD"  # the APPEND recreated the key with a segment alone
    assert pub.metrics()["rewrites"] == 1
    # no stored state: answered like an unknown key, no watermark (never a wrong state)
    t = ts(engine.watermark)
    row, wm = remote.get(0, at=t, with_watermark=True)
    assert wm is None and enc(row) == enc(engine.get(10**9, at=t))
    # the next publish writes it whole, without any new event
    assert pub.publish(0, engine) == 1
    assert segments(c.get(name)) == 0
    same_answers(remote, engine, [0, 1, 2], instants_of(engine))


def test_appends_keep_the_expiry_current(redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    fs = rtml.FeatureSet(entity="user", timestamp="ts", features=[rtml.count(window="1h")],
                         allowed_lateness="10m", ttl="2h", max_ahead=None)
    engine = rtml.OnlineEngine(fs)
    pub = publisher(url, fs, engine)
    c = redis.Redis.from_url(url)
    name = rtml.RemoteEngine(fs, url, prefix=pub.prefix)._reader.store_key(1)
    t0 = 1_700_000_000 * NS

    def one(user: int, t: int) -> None:
        engine.ingest(pa.table({"user": [user], "ts": pa.array([t], pa.timestamp("ns", "UTC"))}))

    one(1, t0)
    pub.publish(0, engine)
    first = c.pexpiretime(name)
    # key 1 gets an event 30 min later (appended); the stream moves on with key 2
    one(1, t0 + 1800 * NS)
    one(2, t0 + 1800 * NS)
    pub.publish(0, engine)
    assert segments(c.get(name)) == 1
    meta = rtml.RemoteEngine(fs, url, prefix=pub.prefix).stats()["partitions"][0]
    # PEXPIREAT after the APPEND: publish wall time + (last event + ttl - watermark)
    assert c.pexpiretime(name) == meta["published_at_ms"] + 2 * 3600 * 1000
    assert c.pexpiretime(name) > first
    ns, _ = namespace_of(fs, pub.prefix)
    assert name.decode().startswith(ns)
