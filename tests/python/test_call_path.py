"""The per-request call path of `OnlineEngine.get` / `vector` (issue 18): an engine's `get` is
the compiled engine's own method (no Python frame per call) and answers exactly what the
documented Python method answers, errors included, as `vector` does; and a read never takes
away the answers at earlier instants (the settle-on-read bug of session 12)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import rtml


def _engine(keys: list, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 3_000
    ks = [keys[i] for i in rng.integers(0, len(keys), n)]
    ts = np.sort(rng.integers(0, 6 * 3600, n)).astype(np.int64)
    fare = rng.lognormal(2, 1, n)
    fare[rng.random(n) < 0.1] = np.nan
    events = pa.table(
        {
            "k": ks,
            "ts": ts,
            "fare": pa.array(fare, from_pandas=True),
            "zone": [["a", "b", "c"][i] for i in rng.integers(0, 3, n)],
        }
    )
    fs = rtml.FeatureSet(
        "k",
        "ts",
        [
            rtml.count(window="1h"),
            rtml.sum("fare", window="1h"),
            rtml.mean("fare", window="30m"),
            rtml.max("fare", window="1h"),
            rtml.distinct_count("zone", window="1h"),
            rtml.last("zone"),
            rtml.time_since_last(),
        ],
        timestamp_unit="s",
        allowed_lateness="10m",
        string_columns=["zone"],
    )
    eng = fs.online()
    eng.ingest(events)
    feats = eng.get_many(keys, int(ts.max()))
    fit = feats.append_column("amount", pa.array(rng.lognormal(2, 1, feats.num_rows)))
    tf = rtml.Transforms(
        [
            rtml.ratio("fare_sum_1h", "count_1h", name="avg_1h"),
            rtml.fill_null("fare_mean_30m", 0.0),
            rtml.standard_scale("fare_max_1h"),
            rtml.log1p("amount"),
            rtml.one_hot("zone_last"),
            rtml.passthrough("zone_distinct_count_1h"),
        ]
    ).fit(fit)
    return eng, int(ts.max()), tf


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("keys", [[1, 2, 3, 40, 2**40], ["a", "b", "ζ", "a long key " * 4]])
def test_get_is_the_engines_own_method_and_answers_as_the_python_one(keys):
    eng, end, tf = _engine(keys)
    # bound to the compiled engine: no Python frame per call
    assert type(eng.get) is type(eng._engine.get)
    fields = {"amount": 12.5}
    unknown = -7 if isinstance(keys[0], int) else "nobody"
    for k in keys + [unknown]:
        for at in (end + 1, end - 300, end + 7200):
            want = rtml.OnlineEngine.get(eng, k, at)  # the documented Python method
            got = eng.get(k, at)
            assert _same(got, want), (k, at)
            assert _same(eng.get(k, at=at), want)
            # the masked read of `vector` (only the features the transforms use) against the
            # full read of `with_features=True`, and both against the one-row driver
            v_want, d = eng.vector(k, tf, fields, at, with_features=True)
            assert _same(d, want)
            row = tf.transform_one({**want, **fields})
            assert (
                v_want.tobytes()
                == np.array(
                    [np.nan if row[n] is None else row[n] for n in tf.feature_names],
                    dtype=np.float64,
                ).tobytes()
            )
            assert eng.vector(k, tf, fields, at).tobytes() == v_want.tobytes()
            assert eng.vector(k, tf, fields=fields, at=at).tobytes() == v_want.tobytes()
            assert eng._engine.vector(k, tf._t, fields, at).tobytes() == v_want.tobytes()


def test_the_bound_get_refuses_what_the_python_one_refuses():
    eng, end, tf = _engine([1, 2, 3])
    for call in (eng.get, lambda *a: rtml.OnlineEngine.get(eng, *a)):
        with pytest.raises(rtml.SchemaError):
            call(1.5, end)
        with pytest.raises(rtml.QueryError):
            call(1, 0)
        with pytest.raises(rtml.SchemaError):
            call(1, "not a time")


def test_a_subclass_that_overrides_get_or_vector_keeps_its_methods():
    class Logged(rtml.OnlineEngine):
        def get(self, key, at=None):  # type: ignore[no-untyped-def]
            return {"logged": super().get(key, at)}

    fs = rtml.FeatureSet("k", "ts", [rtml.count()], timestamp_unit="s")
    eng = Logged(fs)
    eng.ingest({"k": 1, "ts": 5})
    assert eng.get(1, 10) == {"logged": {"count": 1}}


def test_a_read_takes_away_no_earlier_answer():
    # one key with 300 events, ~120 of them within the lateness of its last (more than the 64
    # rows past which a read settled a key), then silence while another key moves the watermark:
    # reads at the watermark must leave every earlier instant the key answered answered, and
    # answered as backfill answers (a read that settled the key refused them afterwards)
    n = 300
    events = pa.table(
        {
            "k": [0] * n + [1] * 20,
            "ts": [i * 15 for i in range(n)] + [4800 + i * 180 for i in range(20)],
            "v": [float(i % 9) for i in range(n)] + [None] * 20,
        }
    )
    fs = rtml.FeatureSet(
        "k",
        "ts",
        [rtml.count(window="1h"), rtml.sum("v", window="1h"), rtml.max("v", window="30m")],
        timestamp_unit="s",
        allowed_lateness="30m",
    )
    eng = fs.online()
    eng.ingest(events)
    times = list(range(2760, 8600, 60))
    want = fs.backfill(events, pa.table({"k": [0] * len(times), "ts": times})).to_pylist()
    before = [eng.get(0, t) for t in times]  # every instant from the key's settled point on
    for t in (8401, 5000, 8401):
        eng.get(0, t)
        eng.vector(0, rtml.Transforms([rtml.passthrough("count_1h")]), {}, t)
    for t, b, w in zip(times, before, want):
        got = eng.get(0, t)
        assert got == b == {k: v for k, v in w.items() if k not in ("k", "ts")}, t


def test_an_unknown_attribute_is_still_refused():
    # OnlineEngine has a __dict__ only to hold the bound `get`: a typo must not pass silently
    fs = rtml.FeatureSet("k", "ts", [rtml.count()], timestamp_unit="s")
    eng = fs.online()
    with pytest.raises(AttributeError, match="watermak"):
        eng.watermak = 5  # type: ignore[attr-defined]
    assert "watermak" not in eng.__dict__

    class Sub(rtml.OnlineEngine):
        pass

    sub = Sub(fs)
    sub.note = "a subclass may add attributes"
    assert sub.note == "a subclass may add attributes"
