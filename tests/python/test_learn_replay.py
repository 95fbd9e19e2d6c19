"""rtml.learn: ServedLog, replay == a live OnlineEngine + LabelJoin + learner fed call by call,
and the River / scikit-learn adapters."""

from __future__ import annotations

import datetime as dt
import gc

import numpy as np
import pyarrow as pa
import pytest

import rtml
import rtml.learn as rl

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
S = 10**9


def _stream(seed: int = 0, n_events: int = 600, n_requests: int = 300):
    rng = np.random.default_rng(seed)
    t0 = int(T0.timestamp()) * S
    ev_t = np.sort(rng.integers(0, 1800, n_events)) * 2 * S + t0  # even seconds
    events = pa.table(
        {
            "driver": rng.integers(0, 8, n_events),
            "ts": pa.array(ev_t, pa.timestamp("ns", tz="UTC")),
            "x": rng.normal(size=n_events),
        }
    )
    rq_t = (np.sort(rng.integers(150, 1800, n_requests)) * 2 + 1) * S + t0  # odd seconds
    requests = pa.table(
        {
            "request_id": [f"r{i}" for i in range(n_requests)],
            "driver": rng.integers(0, 8, n_requests),
            "at": pa.array(rq_t, pa.timestamp("ns", tz="UTC")),
            "dist": rng.exponential(size=n_requests),
        }
    )
    has = rng.random(n_requests) < 0.85
    delay = rng.integers(0, 900, n_requests) * S
    ids = [f"r{i}" for i in range(n_requests) if has[i]]
    lab_t = (rq_t + delay)[has]
    y = (rng.random(n_requests) < 0.4).astype(float)[has]
    labels = pa.table(
        {"request_id": ids, "at": pa.array(lab_t, pa.timestamp("ns", tz="UTC")), "label": y}
    )
    return events, requests, labels


def _feature_set():
    return rtml.FeatureSet(
        entity="driver",
        timestamp="ts",
        features=[rtml.count(window="10m", name="n"), rtml.sum("x", window="30m", name="s")],
    )


def _transforms(fs, events, requests):
    tf = rtml.Transforms(
        [rtml.standard_scale("n"), rtml.impute("s", value=0.0), rtml.passthrough("dist")]
    )
    return tf.fit(fs.backfill(events, requests, time="at", progress=False))


def _live(fs, tf, events, requests, labels, learner, **join_kw):
    """A service, call by call: events ingested in time order, each request served from the
    online engine at its `at`, each label joined as it comes, released examples learned."""
    eng = fs.online()
    join = rl.LabelJoin(**join_kw)
    metrics = rl.Metrics()
    ev = events.to_pylist()
    items = [(r["at"], 0, i, r) for i, r in enumerate(requests.to_pylist())]
    items += [(r["at"], 1, i, r) for i, r in enumerate(labels.to_pylist())]
    items.sort(key=lambda t: (t[0], t[1], t[2]))
    e = 0
    examples, preds, served = [], [], []
    for at, kind, _, row in items:
        if kind == 0:
            while e < len(ev) and ev[e]["ts"] < at:
                eng.ingest(ev[e])
                e += 1
            x = eng.vector(row["driver"], tf, {"dist": row["dist"]}, at=at)
            served.append(x)
            join.serve(row["request_id"], at, x)
        else:
            # labels come from a stream: a label past its row's wait is counted, not raised
            join.labels([row["request_id"]], [row["at"]], [row["label"]])
            ex = join.drain()
            for i in range(len(ex)):  # one example at a time, as a service would
                preds.append(
                    learner.progressive(
                        ex.X[i : i + 1], ex.y[i : i + 1], ex.release[i : i + 1], metrics
                    )[0]
                )
                examples.append(
                    (ex.request_id[i], int(ex.release[i]), ex.X[i].tolist(), float(ex.y[i]))
                )
    join.flush()
    ex = join.drain()
    for i in range(len(ex)):
        preds.append(
            learner.progressive(ex.X[i : i + 1], ex.y[i : i + 1], ex.release[i : i + 1], metrics)[0]
        )
        examples.append((ex.request_id[i], int(ex.release[i]), ex.X[i].tolist(), float(ex.y[i])))
    return examples, preds, metrics, np.array(served), join.stats()


@pytest.mark.parametrize("on_timeout", ["drop", 0.0])
def test_replay_equals_the_live_service_bit_for_bit(on_timeout):
    events, requests, labels = _stream()
    fs = _feature_set()
    tf = _transforms(fs, events, requests)
    kw = dict(wait="10m", on_timeout=on_timeout, allowed_lateness="0s")
    live_model = rl.Logistic(3, "ftrl", alpha=0.2, l1=0.01, l2=0.1)
    live_ex, live_p, live_m, live_served, live_stats = _live(
        fs, tf, events, requests, labels, live_model, **kw
    )
    r = rl.replay(
        fs, tf, events, requests, labels, rl.Logistic(3, "ftrl", alpha=0.2, l1=0.01, l2=0.1), **kw
    )
    assert r.served.tolist() == live_served.tolist()
    got = [
        (
            r.examples.request_id[i],
            int(r.examples.release[i]),
            r.examples.X[i].tolist(),
            float(r.examples.y[i]),
        )
        for i in range(len(r.examples))
    ]
    assert got == live_ex
    assert len(got) > 100
    assert r.predictions.tolist() == live_p
    assert r.model.same_state(live_model)
    assert r.model.to_json() == live_model.to_json()
    assert (r.metrics.log_loss(), r.metrics.auc()) == (live_m.log_loss(), live_m.auc())
    assert r.join_stats == live_stats
    assert live_stats["labels_after_wait"] > 0  # some labels came after the 10-minute wait



def test_replay_of_given_vectors_equals_the_live_service():
    """`vectors=`: the served vectors given directly (a service whose vector joins several
    feature sets) gives the live service's model too; bad shapes and mixed arguments refused."""
    events, requests, labels = _stream(seed=3)
    fs = _feature_set()
    tf = _transforms(fs, events, requests)
    kw = dict(wait="10m", on_timeout="drop", allowed_lateness="0s")
    live_model = rl.Logistic(3, "sgd", eta0=0.05, l2=0.01)
    live_ex, live_p, _, live_served, live_stats = _live(
        fs, tf, events, requests, labels, live_model, **kw
    )
    # the vectors computed independently of replay: the live engine's answers
    r = rl.replay(
        None, None, None, requests, labels, rl.Logistic(3, "sgd", eta0=0.05, l2=0.01),
        vectors=live_served, **kw,
    )
    assert [(i, int(t)) for i, t in zip(r.examples.request_id, r.examples.release)] == [
        (e[0], e[1]) for e in live_ex
    ]
    assert r.predictions.tolist() == live_p
    assert r.model.to_json() == live_model.to_json()
    assert r.join_stats == live_stats
    with pytest.raises(rtml.SchemaError, match="one row per request"):
        rl.replay(None, None, None, requests, labels, rl.Logistic(3), vectors=live_served[1:], **kw)
    with pytest.raises(rtml.SpecError, match="not both"):
        rl.replay(fs, tf, events, requests, labels, rl.Logistic(3), vectors=live_served, **kw)

def test_served_log_writes_everything_on_close_and_by_size(tmp_path):
    log = rl.ServedLog(tmp_path / "a", max_rows=4, flush_interval=None)
    for i in range(10):
        log.log(i, {"driver": i % 3}, T0 + dt.timedelta(seconds=i), [float(i), 1.0], "v1", i / 10)
    assert log.files_written == 2 and log.buffered == 2  # flushed at 4 and 8 rows
    log.close()
    t = rl.ServedLog.read(tmp_path / "a")
    assert t.column_names == ["request_id", "driver", "at", "x", "model_version", "prediction"]
    assert t.column("request_id").to_pylist() == [str(i) for i in range(10)]
    assert t.column("x").to_pylist() == [[float(i), 1.0] for i in range(10)]
    assert t.column("at").to_pylist() == [T0 + dt.timedelta(seconds=i) for i in range(10)]
    assert t.column("prediction").to_pylist() == [i / 10 for i in range(10)]
    with pytest.raises(rtml.SchemaError, match="closed"):
        log.log(11, {"driver": 1}, T0, [0.0, 0.0], "v1", 0.0)
    with rl.ServedLog(tmp_path / "b", flush_interval=None) as log2:
        log2.log("a", {"k": "x"}, 5, [1.0], "v2", 0.5)
        with pytest.raises(rtml.SchemaError, match="keys"):
            log2.log("b", {"other": 1}, 6, [1.0], "v2", 0.5)
    assert rl.ServedLog.read(tmp_path / "b").column("request_id").to_pylist() == ["a"]


def test_served_log_flush_interval_and_exit_hook(tmp_path):
    import threading

    log = rl.ServedLog(tmp_path, flush_interval=0.05)
    log.log("a", {"k": 1}, 1, [1.0], "v", 0.1)
    done = threading.Event()
    for _ in range(200):  # the background thread writes within a few intervals
        if log.files_written:
            done.set()
            break
        done.wait(0.02)
    assert log.files_written == 1
    log.log("b", {"k": 1}, 2, [1.0], "v", 0.2)
    rl._close_open_logs()  # what atexit runs on interpreter exit
    assert rl.ServedLog.read(tmp_path).column("request_id").to_pylist() == ["a", "b"]
    del log
    gc.collect()


def test_adapters_feed_river_and_sklearn():
    from river import linear_model
    from sklearn.linear_model import SGDClassifier

    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(float)
    ex = rl.Examples(list(range(400)), np.arange(400), np.arange(400), X, y, np.zeros(400, bool))
    river_model = rl.to_river(linear_model.LogisticRegression(), ex, ["a", "b", "c"])
    p = [river_model.predict_proba_one(dict(zip("abc", r, strict=True)))[True] for r in X[-100:]]
    assert np.mean((np.array(p) > 0.5) == y[-100:]) > 0.85
    sk = rl.to_sklearn(SGDClassifier(loss="log_loss", random_state=0), ex, batch_size=50)
    assert sk.score(X[-100:], y[-100:]) > 0.85
