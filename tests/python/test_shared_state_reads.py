"""RemoteEngine reads against a real redis-server (docs/shared-state.md, "Reader"):
`vector(..., with_features=True)` answers the vector and `get`'s dict from one fetched value
(one Redis command, counted by the server's INFO commandstats), equal to `get` and `vector`
called separately and to the in-process engine, bit for bit; feature sets with string features
(min / max / first / last of a `string_columns` column) read through Redis equal the engine."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import rtml
import rtml.sources
from rtml.runner import Runner
from services import free_port, redis_server, require_module  # noqa: F401
from stream_helpers import LATENESS_S, NS, T0, feature_set, workload

redis = require_module("redis")


def enc(row: dict) -> dict:
    """A row with floats as hex text: equal iff bit-identical."""
    return {k: (v.hex() if isinstance(v, float) else v) for k, v in row.items()}


def ts(t: int) -> pd.Timestamp:
    return pd.Timestamp(t, unit="ns", tz="UTC")


def clients(url: str, path: str) -> dict:
    if path == "rust":
        return {"url": url}
    from rtml.remote import _client

    return {"client": _client(url, 1.0)}


def commands(r) -> int:
    """Commands the server ran since the last CONFIG RESETSTAT, INFO and CONFIG not counted."""
    stats = r.info("commandstats")
    return sum(
        v["calls"]
        for k, v in stats.items()
        if not (k.startswith("cmdstat_info") or k.startswith("cmdstat_config"))
    )


def published(redis_server, tmp_path, fs, events, path, seed):
    """`events` run through a 2-partition runner that publishes to the test's Redis under a
    fresh prefix; returns (runner, publisher metrics, a RemoteEngine over that prefix)."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    pub = rtml.RedisPublisher(url, prefix=prefix)  # delta segments on (the default)
    runner = Runner(
        fs,
        rtml.sources.replay(events, partitions=2, max_delay=f"{LATENESS_S // 2}s", seed=seed),
        tmp_path,
        publish=pub,
    )
    runner.run_until_idle()
    return runner, pub.metrics(), rtml.RemoteEngine(fs, prefix=prefix, **clients(url, path))


@pytest.mark.parametrize("path", ["rust", "redis-py"])
def test_vector_with_features_is_one_fetch_equal_to_get_vector_and_the_engine(
    redis_server, tmp_path, path
):
    fs = feature_set()
    events = workload(4_000, 40, seed=11)
    runner, m, remote = published(redis_server, tmp_path, fs, events, path, seed=1)
    assert m["errors"] == 0
    tf = rtml.Transforms([
        rtml.log1p("amount_sum_1h"),
        rtml.passthrough("count_1h"),
        rtml.mul("amount_mean_30m", "x"),
        rtml.passthrough("shop_distinct_count_1h"),
    ])
    wm = max(e.watermark for e in runner.engines.values())
    keys = sorted(set(events.column("user").to_pylist()))[:12] + [987654]
    ats = [ts(wm - NS), ts(wm + 60 * NS), ts(wm + 3 * 3600 * NS)]
    fields = {"x": 0.3}
    remote.get(keys[0], at=ats[0])  # the first read also learns the info record
    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    n = 0
    r.config_resetstat()
    for k in keys:
        for at in ats:
            vec, row, w = remote.vector(k, tf, fields, at=at, with_features=True,
                                        with_watermark=True)
            n += 1
    assert commands(r) == n, "one Redis command per vector(with_features=True)"
    seen_wm = 0
    for k in keys:
        eng = runner.engine_for(k)
        for at in ats:
            vec, row, w = remote.vector(k, tf, fields, at=at, with_features=True,
                                        with_watermark=True)
            vec2, row2 = remote.vector(k, tf, fields, at=at, with_features=True)
            # separately, through the same reader
            alone, w_alone = remote.vector(k, tf, fields, at=at, with_watermark=True)
            got, w_get = remote.get(k, at=at, with_watermark=True)
            assert vec.tobytes() == alone.tobytes() == vec2.tobytes()
            assert enc(row) == enc(got) == enc(row2)
            assert w == w_alone == w_get
            # the in-process engine, and its own vector(with_features=True)
            want = eng.vector(k, tf, fields, at=at)
            evec, erow = eng.vector(k, tf, fields, at=at, with_features=True)
            assert vec.tobytes() == want.tobytes() == evec.tobytes()
            assert enc(row) == enc(eng.get(k, at=at)) == enc(erow)
            if k == 987654:
                assert w is None and row["count_1h"] == 0
            else:
                assert w is not None
                seen_wm += 1
    assert seen_wm > 0
    # what the engine refuses, the combined call refuses with the same type and message
    k0 = keys[0]
    eng = runner.engine_for(k0)
    for key, at, fl in [
        (k0, ts(wm - 10 * 3600 * NS), fields),  # before the key's settled point
        (k0, ts(wm), {}),  # a request field missing
        ("zero", ts(wm), fields),  # a string key where the writers hold integers
    ]:
        with pytest.raises(rtml.RtmlError) as local:
            eng.vector(key, tf, fl, at=at, with_features=True)
        with pytest.raises(type(local.value)) as rem:
            remote.vector(key, tf, fl, at=at, with_features=True)
        assert str(rem.value) == str(local.value)
    remote.close()


def test_vector_with_features_falls_back_like_vector_and_get():
    # Redis unreachable: without a fallback the typed error; with one, the fallback's vector
    # and features, watermark None
    fs = feature_set()
    events = workload(500, 10, seed=2)
    eng = fs.online(events)
    tf = rtml.Transforms([rtml.log1p("amount_sum_1h"), rtml.passthrough("count_1h")])
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    at = ts(eng.watermark + NS)
    with pytest.raises(rtml.RemoteUnavailableError):
        rtml.RemoteEngine(fs, url).vector(0, tf, {}, at=at, with_features=True)
    remote = rtml.RemoteEngine(fs, url, fallback=eng)
    vec, row, w = remote.vector(0, tf, {}, at=at, with_features=True, with_watermark=True)
    assert w is None
    assert vec.tobytes() == eng.vector(0, tf, {}, at=at).tobytes()
    assert enc(row) == enc(eng.get(0, at=at))


def string_feature_set() -> rtml.FeatureSet:
    return rtml.FeatureSet(
        entity="user",
        timestamp="ts",
        features=[
            rtml.count(window="1h"),
            rtml.last("shop", window="1h"),
            rtml.min("shop", window="2h"),
            rtml.max("shop", window="30m"),
            rtml.first("shop"),
            rtml.last("shop", name="shop_last_ever"),
            rtml.distinct_count("shop", window="1h"),
            rtml.sum("amount", window="1h"),
        ],
        allowed_lateness=f"{LATENESS_S}s",
        string_columns=["shop"],
    )


def string_workload(n: int, keys: int, seed: int) -> pa.Table:
    """`workload` with shops that are sometimes null, empty or non-ASCII."""
    t = workload(n, keys, seed)
    rng = np.random.default_rng(seed + 1)
    words = ["", "a", "B", "é", "e\u0301", "日本", "\U0001f600", "Zoë"]
    shops = [
        None if rng.random() < 0.05 else (words[rng.integers(len(words))] if rng.random() < 0.3 else s)
        for s in t.column("shop").to_pylist()
    ]
    return t.set_column(t.schema.get_field_index("shop"), "shop", pa.array(shops, pa.string()))


@pytest.mark.parametrize("path", ["rust", "redis-py"])
def test_string_features_read_through_redis_equal_the_engine(redis_server, tmp_path, path):
    fs = string_feature_set()
    events = string_workload(3_000, 30, seed=5)
    runner, m, remote = published(redis_server, tmp_path, fs, events, path, seed=2)
    assert m["errors"] == 0 and m["values"] > 0 and m["deltas"] == 0  # whole values only
    wm = max(e.watermark for e in runner.engines.values())
    keys = sorted(set(events.column("user").to_pylist())) + [987654]
    ats = [ts(wm - NS), ts(wm + 20 * 60 * NS), ts(wm + 90 * 60 * NS), ts(wm + 5 * 3600 * NS)]
    strings = 0
    for at in ats:
        # get: every key, against the engine of its partition
        for k in keys:
            eng = runner.engine_for(k)
            row, w = remote.get(k, at=at, with_watermark=True)
            assert enc(row) == enc(eng.get(k, at=at)), (k, at)
            assert (w is None) == (k == 987654)
            strings += sum(isinstance(v, str) for v in row.values())
        # get_many: the same table as the engines' own get_many, string columns included
        table = remote.get_many(keys, at=at)
        want = pa.concat_tables([runner.engine_for(k).get_many([k], at=at) for k in keys])
        assert table.equals(want)
        assert table.schema.field("shop_last_1h").type == pa.string()
    assert strings > 0
    # vector: a string feature through one_hot, and the combined read
    spine = pa.table({"user": pa.array(keys[:-1], pa.int64()),
                      "ts": pa.array([T0 + 3 * 3600 * NS] * (len(keys) - 1), pa.timestamp("ns", "UTC"))})
    train = fs.backfill(events, spine)
    tf = rtml.Transforms([rtml.one_hot("shop_last_1h"), rtml.passthrough("shop_distinct_count_1h"),
                          rtml.log1p("amount_sum_1h")]).fit(train)
    at = ats[1]
    for k in keys:
        eng = runner.engine_for(k)
        want = eng.vector(k, tf, {}, at=at)
        assert remote.vector(k, tf, {}, at=at).tobytes() == want.tobytes()
        vec, row = remote.vector(k, tf, {}, at=at, with_features=True)
        assert vec.tobytes() == want.tobytes() and enc(row) == enc(eng.get(k, at=at))
    remote.close()


@pytest.mark.parametrize("path", ["rust", "redis-py"])
def test_get_many_is_one_round_trip_equal_to_the_engines(redis_server, tmp_path, path):
    # docs/shared-state.md, "Reader": get_many of many keys is ONE Redis command (an MGET),
    # counted by the server's INFO commandstats; its rows equal each key's in-process engine
    fs = feature_set()
    events = workload(4_000, 60, seed=5)
    runner, m, remote = published(redis_server, tmp_path, fs, events, path, seed=3)
    assert m["errors"] == 0
    wm = max(e.watermark for e in runner.engines.values())
    keys = sorted(set(events.column("user").to_pylist()))[:50] + [987654, 987655]
    at = ts(wm + 60 * NS)
    remote.get(keys[0], at=at)  # the first read also learns the info record
    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    r.config_resetstat()
    table, wms = remote.get_many(keys, at=at, with_watermark=True)
    assert commands(r) == 1, "get_many of 52 keys is one Redis command"
    assert table.num_rows == len(keys)
    assert table.column("user").to_pylist() == keys
    rows = table.to_pylist()
    for k, row, w in zip(keys, rows, wms):
        want = runner.engine_for(k).get(k, at=at)
        got = {name: v for name, v in row.items() if name != "user"}
        assert enc(got) == enc(want), k
        assert (w is None) == (k >= 987654)
    remote.close()
