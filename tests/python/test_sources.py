"""rtml.sources.replay (deterministic arrival order, partitions, inputs) and the Rust JSON
payload decoder (mapping, timestamps, rejects)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rtml
import rtml.sources
from rtml import _core
from rtml.runner import Runner

from stream_helpers import NS, T0, assert_matches_backfill, feature_set, rfc3339, to_json_messages, workload


def delivered(src):
    src.open(lambda parts: {p: None for p in parts}, lambda parts: None)
    out = {p: [] for p in range(src.partitions)}
    while not src.idle():
        for b in src.poll(97, 0):
            assert b.positions == list(range(b.positions[0], b.end))
            assert sum(t.num_rows for t in out[b.partition]) == b.positions[0]
            out[b.partition].append(b.events)
    return {p: pa.concat_tables(ts) if ts else None for p, ts in out.items()}


def test_replay_partitions_and_delay_bound():
    events = workload(3000, 100, seed=1)
    bound = 120
    src = rtml.sources.replay(events, "ts", partitions=4, key="user", max_delay=f"{bound}s", seed=3)
    got = delivered(src)
    assert sum(t.num_rows for t in got.values()) == events.num_rows
    out_of_order = 0
    for p, t in got.items():
        assert all(rtml.sources.partition_of(k, 4) == p for k in set(t.column("user").to_pylist()))
        ts = t.column("ts").cast(pa.int64()).to_numpy()
        behind = np.maximum.accumulate(ts) - ts
        assert behind.max() <= bound * NS  # late by at most the delay bound
        out_of_order += int((behind > 0).sum())
    assert out_of_order > 100  # and really out of order
    # deterministic: same seed, same order; another seed, another order
    again = rtml.sources.replay(events, "ts", partitions=4, key="user", max_delay=f"{bound}s", seed=3)
    assert [o.tolist() for o in again.arrival_order()] == [o.tolist() for o in src.arrival_order()]
    other = rtml.sources.replay(events, "ts", partitions=4, key="user", max_delay=f"{bound}s", seed=4)
    assert [o.tolist() for o in other.arrival_order()] != [o.tolist() for o in src.arrival_order()]


def test_replay_arrival_column_and_input_kinds(tmp_path):
    events = workload(500, 10, seed=2)
    rng = np.random.default_rng(0)
    arrival = events.column("ts").cast(pa.int64()).to_numpy() + rng.integers(0, 60 * NS, events.num_rows)
    events = events.append_column("arrived", pa.array(arrival, pa.timestamp("ns", "UTC")))
    path = tmp_path / "e.parquet"
    pq.write_table(events, path)
    ref = rtml.sources.replay(events, "ts", arrival="arrived", partitions=2, key="user").arrival_order()
    for data in (path, [path], events.to_pandas(), pl.from_arrow(events), events.to_batches()[0]):
        order = rtml.sources.replay(data, "ts", arrival="arrived", partitions=2, key="user").arrival_order()
        assert [o.tolist() for o in order] == [o.tolist() for o in ref]
    for p, o in enumerate(ref):
        arr = arrival[o]
        assert (np.diff(arr) >= 0).all()


def test_partition_of_is_librdkafka_consistent_crc32():
    import zlib

    for k in (0, 7, -3, "a", "driver-42", "ü"):
        assert rtml.sources.partition_of(k, 6) == zlib.crc32(str(k).encode()) % 6
    assert rtml.sources.partition_of("x", 1) == 0


def test_replay_bad_arguments():
    events = workload(10, 2, seed=0)
    with pytest.raises(rtml.SpecError, match="partitions"):
        rtml.sources.replay(events, "ts", partitions=0)
    with pytest.raises(rtml.SpecError, match="max_delay"):
        rtml.sources.replay(events, "ts", max_delay="soon")
    with pytest.raises(rtml.SchemaError, match="column 'when'"):
        rtml.sources.replay(events, "when", key="user").arrival_order()


# ---- the JSON decoder -------------------------------------------------------------------


def decoder(unit=None, fields=None, fs=None):
    fs = fs or feature_set()
    src = rtml.sources.kafka("127.0.0.1:1", "t", "g", fields=fields, timestamp_unit=unit)
    from rtml.sources import _decoder_config

    return _core.JsonDecoder(*_decoder_config(src, fs))


def test_decoder_round_trips_the_workload_exactly():
    events = workload(2000, 50, seed=3)
    batch, rejected, kind = decoder().decode(to_json_messages(events))
    assert rejected == [] and kind is True
    t = pa.Table.from_batches([batch])
    assert t.column("user").to_pylist() == events.column("user").to_pylist()
    assert t.column("ts").cast(pa.int64()).equals(events.column("ts").cast(pa.int64()))
    a, b = t.column("amount").to_pylist(), events.column("amount").to_pylist()
    assert all((x is None and y is None) or json.dumps(x) == json.dumps(y) for x, y in zip(a, b))
    assert t.column("shop").to_pylist() == events.column("shop").to_pylist()


def test_decoder_timestamps():
    msgs = [
        b'{"user": 1, "ts": "2024-05-01T12:00:00Z"}',
        b'{"user": 1, "ts": "2024-05-01T14:00:00.123456789+02:00"}',
        b'{"user": 1, "ts": 1714564800000}',
        b'{"user": 1, "ts": 1714564800000.5}',
    ]
    batch, rejected, _ = decoder(unit="ms").decode(msgs)
    assert rejected == []
    base = 1714564800 * NS
    assert batch.column(1).cast(pa.int64()).to_pylist() == [base, base + 123456789, base, base + 500_000]
    # without a unit, numbers are rejected (strings still work)
    batch, rejected, _ = decoder().decode(msgs)
    assert [i for i, _ in rejected] == [2, 3] and "unit" in rejected[0][1]
    assert batch.num_rows == 2


def test_decoder_rejects_with_reasons():
    msgs = [
        b'not json',
        b'[1, 2]',
        b'{"ts": "2024-05-01T12:00:00Z"}',
        b'{"user": 1}',
        b'{"user": 1, "ts": "yesterday"}',
        b'{"user": 1, "ts": "2024-05-01T12:00:00Z", "amount": "12"}',
        b'{"user": 1, "ts": "2024-05-01T12:00:00Z", "shop": 5}',
        b'{"user": [1], "ts": "2024-05-01T12:00:00Z"}',
        b'{"user": "a", "ts": "2024-05-01T12:00:00Z"}',
        b'{"user": 1, "ts": "2300-01-01T00:00:00Z"}',
        b'{"user": 1, "ts": "2024-05-01T12:00:00Z"} trailing',
        None,
        b'{"user": 2, "ts": "2024-05-01T12:00:01Z", "amount": true, "extra": {"a": [1, {"b": null}]}}',
    ]
    batch, rejected, kind = decoder().decode(msgs, True)  # integer keys (as decided earlier)
    reasons = dict(rejected)
    assert sorted(reasons) == list(range(12))
    assert "invalid JSON" in reasons[0]
    assert "not a JSON object" in reasons[1]
    assert "missing field 'user'" in reasons[2]
    assert "missing field 'ts'" in reasons[3]
    assert "field 'ts'" in reasons[4] and "RFC 3339" in reasons[4]
    assert "field 'amount'" in reasons[5] and "a string" in reasons[5]
    assert "field 'shop'" in reasons[6] and "a number" in reasons[6]
    assert "field 'user'" in reasons[7]
    assert "integer key" in reasons[8]
    assert "out of range" in reasons[9]
    assert "trailing" in reasons[10]
    assert kind is True and batch.num_rows == 1
    assert batch.column(2).to_pylist() == [1.0]  # true -> 1.0, unread fields skipped


def test_decoder_field_mapping_and_string_keys():
    fs = feature_set()
    dec = decoder(fields={"user": "u", "ts": "time", "amount": "a.b"}, fs=fs)
    batch, rejected, kind = dec.decode([b'{"u": "x", "time": "2024-05-01T00:00:00Z", "a.b": 2.5, "user": 9}'])
    assert rejected == [] and kind is False
    assert batch.column(0).to_pylist() == ["x"] and batch.column(2).to_pylist() == [2.5]
    # the key kind is carried over between batches (as the runner does per partition)
    _, rejected, _ = dec.decode([b'{"u": 3, "time": "2024-05-01T00:00:00Z"}'], False)
    assert "string key" in rejected[0][1]
    with pytest.raises(rtml.SpecError, match="not a column"):
        decoder(fields={"nope": "x"})


def test_decoder_type_errors_are_typed():
    with pytest.raises(TypeError, match=r"messages\[1\]"):
        decoder().decode([b"{}", "text"])
    with pytest.raises(rtml.SpecError, match="unit"):
        decoder(unit="minutes")


def test_python_decode_hook_is_the_slow_path(tmp_path):
    """decode= replaces the Rust decoder; its exceptions become dead letters."""
    fs = feature_set()
    events = workload(300, 10, seed=4)

    class Fake(rtml.sources.Source):  # a raw source over in-memory payloads
        raw = True
        name = "mem"
        fields: dict = {}
        types: dict = {}
        timestamp_unit = None

        def __init__(self, payloads, decode):
            self.payloads, self.decode, self.done = payloads, decode, False

        def open(self, on_assign, on_revoke):
            start = on_assign([0])[0] or 0
            self.pos = start

        def poll(self, n, timeout):
            if self.pos >= len(self.payloads):
                self.done = True
                return []
            chunk = self.payloads[self.pos : self.pos + n]
            b = rtml.sources.Batch(0, list(range(self.pos, self.pos + len(chunk))), self.pos + len(chunk),
                                   payloads=chunk)
            self.pos += len(chunk)
            return [b]

        def idle(self):
            return self.done

    rows = events.to_pylist()
    payloads = [repr((r["user"], events.column("ts")[i].cast(pa.int64()).as_py(), r["amount"], r["shop"])).encode()
                for i, r in enumerate(rows)]
    payloads[5] = b"garbage"
    u, t, _, sh = eval(payloads[9].decode(), {})  # noqa: S307
    payloads[9] = repr((u, t, "not a number", sh)).encode()  # decodes, but the engine refuses it

    def decode(raw):
        u, t, a, s = eval(raw.decode(), {})  # noqa: S307 (test data)
        return {"user": u, "ts": pd.Timestamp(t, unit="ns", tz="UTC"), "amount": a, "shop": s}

    r = Runner(fs, Fake(payloads, decode), tmp_path, max_batch=64)
    r.run_until_idle()
    assert r.metrics()["malformed"] == 2
    dl = pq.read_table(tmp_path / "dead_letters").sort_by("offset")
    assert dl.column("offset").to_pylist() == ["5", "9"] and dl.column("payload").to_pylist()[0] == b"garbage"
    assert "amount" in dl.column("reason").to_pylist()[1]
    assert r.engine.stats()["events_ingested"] == events.num_rows - 2
    good = events.filter(pa.array([i not in (5, 9) for i in range(events.num_rows)]))
    assert_matches_backfill(fs, good, r.engines, 1, n_instants=3)


def test_rfc3339_helper_matches_pandas():
    for ns in (T0, T0 + 1, T0 + 999_999_999):
        assert pd.Timestamp(rfc3339(ns)).value == ns


def test_docstring_examples_run():
    import doctest

    import rtml.runner

    for mod in (rtml.sources, rtml.runner):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0 and res.attempted > 0, mod.__name__


def _fmt_time(ns: int, style: str, offset_min: int) -> object:
    import datetime as dt

    if style == "ms":
        return ns // 1_000_000  # generated on whole ms for this style
    s, frac = divmod(ns, NS)
    tz = dt.timezone(dt.timedelta(minutes=offset_min))
    base = dt.datetime.fromtimestamp(s, tz).strftime("%Y-%m-%dT%H:%M:%S")
    off = "Z" if offset_min == 0 else dt.datetime.fromtimestamp(s, tz).strftime("%z")
    if off != "Z":
        off = off[:3] + ":" + off[3:]
    return f"{base}.{frac:09d}{off}" if frac else f"{base}{off}"


def test_decoder_property_against_python_json():
    """Random events, random field order, extra fields, time styles: the Rust decoder gives
    exactly what json.loads + an independent conversion gives."""
    from hypothesis import given
    from hypothesis import strategies as st

    event = st.fixed_dictionaries({
        "user": st.integers(-(2**63), 2**63 - 1),
        "ns": st.integers(-(2**62), 2**62),
        "style": st.sampled_from(["rfc", "ms"]),
        "offset": st.sampled_from([0, 60, -330, 840]),
        "amount": st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
        "shop": st.none() | st.text(max_size=5),
        "extra": st.dictionaries(st.text(max_size=3).filter(lambda k: k not in ("user", "ts", "amount", "shop")),
                                 st.none() | st.integers() | st.lists(st.integers(), max_size=2), max_size=2),
        "order": st.randoms(use_true_random=False),
    })

    dec = decoder(unit="ms")

    @given(st.lists(event, min_size=1, max_size=20))
    def check(evs):
        msgs, want = [], []
        for e in evs:
            ns = e["ns"] - e["ns"] % 1_000_000 if e["style"] == "ms" else e["ns"]
            if e["style"] == "rfc" and not (-62135596800 * NS < ns < 253402300799 * NS):
                continue
            d = {"user": e["user"], "ts": _fmt_time(ns, e["style"], e["offset"]), **e["extra"]}
            if e["amount"] is not None:
                d["amount"] = e["amount"]
            if e["shop"] is not None:
                d["shop"] = e["shop"]
            items = list(d.items())
            e["order"].shuffle(items)
            msgs.append(json.dumps(dict(items)).encode())
            want.append((e["user"], ns, None if e["amount"] is None else float(e["amount"]), e["shop"]))
        batch, rejected, _ = dec.decode(msgs, True)
        assert rejected == []
        got = list(zip(batch.column(0).to_pylist(), batch.column(1).cast(pa.int64()).to_pylist(),
                       batch.column(2).to_pylist(), batch.column(3).to_pylist()))
        for g, w in zip(got, want):
            assert g[:2] == w[:2] and g[3] == w[3]
            assert (g[2] is None and w[2] is None) or json.dumps(g[2]) == json.dumps(w[2])
        assert len(got) == len(want)

    check()
