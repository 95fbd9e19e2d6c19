"""`OnlineEngine.predict`: features -> vector -> model prediction in one call (issue 15), equal
bit for bit to `model.predict_one(engine.vector(...))` and to the batch path
(`model.predict_many(transforms.transform(fs.backfill(...)))`)."""

from __future__ import annotations

import numpy as np
import pytest

import rtml
import rtml.learn as rl
from serving_helpers import bits as _bits
from serving_helpers import events_and_requests


def _setup(seed: int):
    events, spine = events_and_requests(seed, 3_000, 40, 200)
    fs = rtml.FeatureSet(
        entity="driver_id", timestamp="ts",
        features=[rtml.count(window="1h"), rtml.sum("fare", window="1h"),
                  rtml.mean("fare", window="24h"), rtml.time_since_last()],
    )
    tf = rtml.Transforms([
        rtml.ratio("fare_sum_1h", "count_1h", name="avg_fare_1h"),
        rtml.fill_null("avg_fare_1h", 0.0),
        rtml.fill_null("fare_mean_24h", 0.0),
        rtml.standard_scale("fare_mean_24h"),
        rtml.log1p("distance"),
        rtml.passthrough("count_1h"),
        rtml.fill_null("time_since_last", 0.0),
    ])
    return events, spine, fs, tf


def _models(X: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random(len(X)) < 0.4).astype(np.float64)
    logistic = rl.Logistic(n_features=X.shape[1])
    logistic.learn_many(X, y)
    linear = rl.LinearRegression(n_features=X.shape[1], optimizer="sgd", eta0=0.001)
    linear.learn_many(X, rng.normal(size=len(X)))
    softmax = rl.Softmax(n_features=X.shape[1], classes=["a", "b", "c"])
    softmax.learn_many(X, rng.choice(["a", "b", "c"], len(X)).tolist())
    return logistic, linear, softmax


@pytest.mark.parametrize("seed", [0, 1])
def test_predict_equals_vector_then_model_and_the_batch_path(seed):
    events, spine, fs, tf = _setup(seed)
    train = fs.backfill(events, spine)
    tf.fit(train)
    X = np.nan_to_num(tf.transform_numpy(train))
    models = _models(X, seed)
    batch = [m.predict_many(tf.transform_numpy(train)) for m in models]

    eng = fs.online()
    ev_ts = events.column("ts").to_numpy().astype(np.int64)  # sorted
    at_ns = spine.column("ts").to_numpy()
    order = np.argsort(at_ns.astype(np.int64), kind="stable")
    rows = spine.to_pylist()
    done = checked = 0
    for i in order:
        upto = int(np.searchsorted(ev_ts, int(at_ns[i].astype(np.int64)), side="left"))
        if upto > done:
            eng.ingest(events.slice(done, upto - done))
            done = upto
        r = rows[i]
        fields = {"distance": r["distance"]}
        vec = eng.vector(r["driver_id"], tf, fields, at=at_ns[i])
        for m, want_batch in zip(models, batch):
            got = eng.predict(r["driver_id"], tf, m, fields, at=at_ns[i])
            two_calls = m.predict_one(vec)
            if isinstance(m, rl.Softmax):
                assert isinstance(got, np.ndarray) and got.dtype == np.float64
                assert got.tobytes() == two_calls.tobytes()
                assert got.tobytes() == np.ascontiguousarray(want_batch[int(i)]).tobytes()
            else:
                assert isinstance(got, float)
                assert _bits(got) == _bits(two_calls)
                assert _bits(got) == _bits(float(want_batch[int(i)]))
        checked += 1
    assert checked == spine.num_rows


def test_predict_refuses_what_vector_and_predict_one_refuse():
    events, spine, fs, tf = _setup(3)
    tf.fit(fs.backfill(events, spine))
    eng = fs.online(events)
    key = events.column("driver_id")[0].as_py()
    fields = {"distance": 2.0}
    n = len(tf.feature_names)
    at = events.column("ts")[-1].as_py()

    # another kind of model, or none: TypeError naming the model
    with pytest.raises(TypeError, match="model"):
        eng.predict(key, tf, object(), fields, at=at)
    # a model of another width: the error predict_one raises on that vector
    narrow = rl.Logistic(n_features=n - 1)
    with pytest.raises(rtml.SchemaError) as want:
        narrow.predict_one(eng.vector(key, tf, fields, at=at))
    with pytest.raises(rtml.SchemaError) as got:
        eng.predict(key, tf, narrow, fields, at=at)
    assert str(got.value) == str(want.value)
    # a missing request field: the error vector raises
    model = rl.Logistic(n_features=n)
    with pytest.raises(Exception) as want_v:
        eng.vector(key, tf, {}, at=at)
    with pytest.raises(type(want_v.value)) as got_v:
        eng.predict(key, tf, model, {}, at=at)
    assert str(got_v.value) == str(want_v.value)
    # a failed call changed nothing: the model answers as before
    assert model.updates == 0
    p = eng.predict(key, tf, model, fields, at=at)
    assert _bits(p) == _bits(model.predict_one(eng.vector(key, tf, fields, at=at)))
