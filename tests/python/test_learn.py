"""rtml.learn: learners against a slow reference, determinism, documents, the label join,
progressive metrics against scikit-learn."""

from __future__ import annotations

import json
import datetime as dt
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

import rtml
import rtml.learn as rl

sys.path.insert(0, str(Path(__file__).parent))
from learn_reference import RefLinear  # noqa: E402

CONFIGS = [
    ("ftrl", dict(alpha=0.3, beta=1.0, l1=0.0, l2=0.0)),
    ("ftrl", dict(alpha=0.1, beta=0.5, l1=0.05, l2=0.2)),
    ("sgd", dict(eta0=0.05, schedule="constant", l1=0.0, l2=0.0)),
    ("sgd", dict(eta0=0.2, schedule="inv_scaling", power_t=0.5, l1=0.01, l2=0.05)),
]


def _opt_doc(opt: str, kw: dict) -> dict:
    if opt == "ftrl":
        return {"kind": "ftrl", **kw}
    sch = {"kind": kw["schedule"], "eta0": kw["eta0"]}
    if kw["schedule"] == "inv_scaling":
        sch["power_t"] = kw["power_t"]
    return {"kind": "sgd", "schedule": sch, "l1": kw["l1"], "l2": kw["l2"]}


def _data(rng: np.random.Generator, n: int, k: int, logistic: bool):
    X = rng.normal(size=(n, k))
    X[rng.random(size=(n, k)) < 0.2] = 0.0
    w = rng.normal(size=k)
    m = X @ w
    y = (
        (rng.random(n) < 1 / (1 + np.exp(-m))).astype(float)
        if logistic
        else m + rng.normal(scale=0.1, size=n)
    )
    return X, y


@pytest.mark.parametrize("logistic", [True, False])
@pytest.mark.parametrize("opt,kw", CONFIGS)
def test_learners_equal_the_reference_bit_for_bit(opt, kw, logistic):
    rng = np.random.default_rng(7)
    X, y = _data(rng, 400, 5, logistic)
    model = (rl.Logistic if logistic else rl.LinearRegression)(5, opt, **kw)
    ref = RefLinear("logistic" if logistic else "squared", 5, _opt_doc(opt, kw))
    for i in range(len(y)):
        x = X[i].tolist()
        assert model.predict_one(X[i]) == ref.predict(x)
        assert model.learn_one(X[i], y[i]) == ref.learn(x, float(y[i]))
    assert model.weights.tolist() == ref._weights()
    state = json.loads(model.to_json())
    if opt == "ftrl":
        assert (state["z"], state["n"]) == (ref.z, ref.n)
    else:
        assert state["w"] == ref.w
    assert state["updates"] == ref.t == len(y)


def test_the_learner_learns():
    rng = np.random.default_rng(1)
    X, y = _data(rng, 3000, 4, True)
    m = rl.Logistic(4, "ftrl", alpha=0.2)
    m.learn_many(X[:2000], y[:2000])
    assert roc_auc_score(y[2000:], m.predict_many(X[2000:])) > 0.75


@settings(max_examples=40, deadline=None)
@given(
    cfg=st.sampled_from(CONFIGS),
    logistic=st.booleans(),
    rows=st.lists(
        st.tuples(st.lists(st.floats(-5, 5), min_size=3, max_size=3), st.booleans()),
        min_size=1,
        max_size=30,
    ),
)
def test_learn_many_is_the_loop_of_learn_one(cfg, logistic, rows):
    opt, kw = cfg
    cls = rl.Logistic if logistic else rl.LinearRegression
    X = np.array([r[0] for r in rows])
    y = np.array([float(r[1]) for r in rows])
    a, b = cls(3, opt, **kw), cls(3, opt, **kw)
    pa = a.learn_many(X, y)
    pb = [b.learn_one(X[i], y[i]) for i in range(len(y))]
    assert a.same_state(b)
    assert pa.tolist() == pb
    assert a.to_json() == b.to_json()


def test_bad_input_is_typed_and_changes_nothing():
    m = rl.Logistic(3, "ftrl")
    m.learn_one([1.0, 2.0, 3.0], 1)
    before = pickle.loads(pickle.dumps(m))
    X = np.ones((4, 3))
    X[2, 1] = np.nan
    with pytest.raises(rtml.SchemaError, match=r"x\[1\].*row 2|row 2.*x\[1\]|x\[1\]"):
        m.learn_many(X, [0, 1, 0, 1])
    with pytest.raises(rtml.SchemaError, match="row 3"):
        m.learn_many(np.ones((4, 3)), [0, 1, 0, 0.5])
    with pytest.raises(rtml.SchemaError, match="3 features"):
        m.learn_one([1.0, 2.0], 1)
    with pytest.raises(rtml.SchemaError, match="finite"):
        m.learn_one([1.0, np.inf, 0.0], 1)
    with pytest.raises(rtml.SchemaError, match="finite"):
        rl.LinearRegression(1).learn_one([1.0], float("nan"))
    with pytest.raises(rtml.SchemaError, match="4 labels|expected 4"):
        m.learn_many(np.ones((4, 3)), [0, 1])
    assert m.same_state(before)
    with pytest.raises(rtml.SpecError, match="alpha"):
        rl.Logistic(2, "ftrl", alpha=0.0)
    with pytest.raises(rtml.SpecError, match="optimizer"):
        rl.Logistic(2, "adam")


def test_document_pickle_and_refusals():
    rng = np.random.default_rng(3)
    X, y = _data(rng, 50, 3, True)
    for opt, kw in CONFIGS:
        m = rl.Logistic(3, opt, **kw)
        m.learn_many(X, y)
        text = m.to_json()
        back = rl.load_model(text)
        assert isinstance(back, rl.Logistic) and back.same_state(m)
        p = pickle.loads(pickle.dumps(m))
        assert p.same_state(m)
        # learning continues identically from a restored model
        m.learn_many(X, y)
        p.learn_many(X, y)
        assert p.same_state(m)
    doc = json.loads(text)
    with pytest.raises(rtml.SpecError, match="newer"):
        rl.load_model(json.dumps({**doc, "version": rl.MODEL_VERSION + 1, "new_field": 1}))
    with pytest.raises(rtml.SpecError, match="surprise"):
        rl.load_model(json.dumps({**doc, "surprise": 1}))
    with pytest.raises(rtml.SpecError, match="format"):
        rl.load_model(json.dumps({**doc, "format": "other"}))
    with pytest.raises(rtml.SpecError, match="expected 4 values"):
        rl.load_model(json.dumps({**doc, "w": [0.0]}))
    assert isinstance(rl.load_model(rl.LinearRegression(2).to_json()), rl.LinearRegression)


def test_progressive_is_predict_then_learn_and_metrics_match_sklearn():
    rng = np.random.default_rng(11)
    X, y = _data(rng, 1500, 4, True)
    t = np.arange(len(y), dtype=np.int64) * 1_000_000_000
    a, b = rl.Logistic(4, "ftrl", alpha=0.2), rl.Logistic(4, "ftrl", alpha=0.2)
    everything = rl.Metrics()
    preds = a.progressive(X, y, t, everything)
    loop = []
    for i in range(len(y)):
        loop.append(b.predict_one(X[i]))
        b.learn_one(X[i], y[i])
    assert preds.tolist() == loop
    assert a.same_state(b)
    assert everything.auc() == pytest.approx(roc_auc_score(y, loop), rel=1e-12)
    assert everything.log_loss() == pytest.approx(log_loss(y, loop), rel=1e-12)
    # a rolling window by event time: the last 300 s are the rows with t > t_last - 300 s
    rolling = rl.Metrics(window="300s")
    rolling.add_many(t, preds, y)
    last = t > t[-1] - 300 * 10**9
    assert rolling.count == int(last.sum()) == 300
    assert rolling.auc() == pytest.approx(roc_auc_score(y[last], preds[last]), rel=1e-12)
    assert rolling.log_loss() == pytest.approx(
        log_loss(y[last], preds[last], labels=[0, 1]), rel=1e-12
    )
    assert rolling.mse() == pytest.approx(float(np.mean((preds[last] - y[last]) ** 2)), rel=1e-12)
    # calibration: bins of the prediction
    table = everything.calibration(bins=5)
    p = np.asarray(loop)
    b_of = np.minimum((p * 5).astype(int), 4)
    for i, row in enumerate(table):
        sel = b_of == i
        assert row["count"] == int(sel.sum())
        if sel.any():
            assert row["mean_prediction"] == pytest.approx(p[sel].mean(), rel=1e-12)
            assert row["mean_label"] == pytest.approx(y[sel].mean(), rel=1e-12)


def test_auc_with_ties_matches_sklearn():
    rng = np.random.default_rng(5)
    p = rng.integers(0, 5, size=500) / 4.0
    y = (rng.random(500) < 0.3 + 0.1 * p).astype(float)
    m = rl.Metrics()
    m.add_many(np.zeros(500, dtype=np.int64), p, y)
    assert m.auc() == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    assert rl.Metrics().auc() is None


# ---------------------------------------------------------------------------------- label join


def test_label_join_bad_input_is_typed_counted_and_changes_nothing():
    j = rl.LabelJoin(wait="10s", on_timeout="drop", allowed_lateness="1s")
    s = 10**9
    assert j.serve(1, 0, [1.0, 2.0]) == "accepted"
    assert j.serve("a", 1 * s, [3.0, 4.0]) == "accepted"
    with pytest.raises(rtml.SchemaError, match="request id 1 was already served"):
        j.serve(1, 2 * s, [0.0, 0.0])
    with pytest.raises(rtml.SchemaError, match="unknown"):
        j.label(99, 2 * s, 1.0)
    with pytest.raises(rtml.SchemaError, match="finite"):
        j.label(1, 2 * s, float("nan"))
    with pytest.raises(rtml.SchemaError, match="expected a number"):
        j.label(1, 2 * s, "yes")
    with pytest.raises(rtml.SchemaError, match="request_id"):
        j.label(1.5, 2 * s, 1.0)
    with pytest.raises(rtml.SchemaError, match="2 features"):
        j.serve(3, 2 * s, [1.0])
    assert j.watermark is None and j.pending == 2
    assert j.label(1, 3 * s, True) == "accepted"
    with pytest.raises(rtml.SchemaError, match="already has a label"):
        j.label(1, 3 * s, 0.0)
    j.advance(5 * s)  # settled point 4 s: row 1 (released at 3 s) comes out
    ex = j.drain()
    assert ex.request_id == [1] and ex.X.tolist() == [[1.0, 2.0]] and ex.release.tolist() == [3 * s]
    with pytest.raises(rtml.SchemaError, match="already released"):
        j.label(1, 5 * s, 1.0)
    assert j.label("a", 30 * s, 1.0) == "after_wait"  # 30 s > 1 s + 10 s: "a" times out (dropped)
    assert j.drain().request_id == []
    assert j.label(1, 0, 1.0) == "late"
    st_ = j.stats()
    assert {
        k: st_[k]
        for k in (
            "reused_ids",
            "unknown_labels",
            "bad_labels",
            "duplicate_labels",
            "labels_after_wait",
            "labels_for_released",
            "late_labels",
            "released_labeled",
            "timeouts_dropped",
        )
    } == {
        "reused_ids": 1,
        "unknown_labels": 1,
        "bad_labels": 2,
        "duplicate_labels": 1,
        "labels_after_wait": 1,
        "labels_for_released": 1,
        "late_labels": 1,
        "released_labeled": 1,
        "timeouts_dropped": 1,
    }
    # a stream of labels: bad ones are counted, not raised
    j2 = rl.LabelJoin(wait=100, on_timeout=0.5)
    j2.serve_many(np.arange(5, dtype=np.int64), np.arange(5, dtype=np.int64) * 10, np.eye(5))
    assert j2.labels([0, 1, 1, 77, 3], [5, 15, 16, 17, 35], [1.0, 0.0, 1.0, 1.0, float("nan")]) == 2
    st2 = j2.stats()
    assert (st2["duplicate_labels"], st2["unknown_labels"], st2["bad_labels"]) == (1, 1, 1)
    j2.flush()
    ex = j2.drain()
    assert ex.request_id == [0, 1, 2, 3, 4]
    assert ex.y.tolist() == [1.0, 0.0, 0.5, 0.5, 0.5]
    assert ex.timed_out.tolist() == [False, False, True, True, True]


def _feed(rows, labels, order, lateness):
    j = rl.LabelJoin(wait=100, on_timeout=0.0, allowed_lateness=lateness)
    for kind, i in order:
        if kind == 0:
            j.serve(i, rows[i][0], rows[i][1])
        else:
            # a stream of labels: a label after the wait of a row already forgotten counts as
            # unknown (docs/learning.md) instead of raising
            j.labels([i], [labels[i][0]], [labels[i][1]])
    j.flush()
    assert j.stats()["late_labels"] == 0
    return j.drain()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_label_join_sequence_does_not_depend_on_arrival_order_within_lateness(seed):
    rng = np.random.default_rng(seed)
    n = 40
    at = rng.integers(0, 500, n)
    rows = {i: (int(at[i]), [float(i), float(at[i])]) for i in range(n)}
    labels = {
        i: (int(at[i] + rng.integers(0, 150)), float(rng.integers(0, 2)))
        for i in range(n)
        if rng.random() < 0.8
    }

    def order(delays):
        arr = [(rows[i][0], 0, i) for i in rows] + [
            (labels[i][0] + delays[i], 1, i) for i in labels
        ]
        arr.sort()
        return [(kind, i) for _, kind, i in arr]

    in_time = _feed(rows, labels, order({i: 0 for i in labels}), 50)
    shuffled = _feed(rows, labels, order({i: int(rng.integers(0, 50)) for i in labels}), 50)
    assert shuffled.request_id == in_time.request_id
    assert shuffled.release.tolist() == in_time.release.tolist()
    assert shuffled.X.tolist() == in_time.X.tolist() and shuffled.y.tolist() == in_time.y.tolist()
    keys = list(zip(in_time.release.tolist(), in_time.request_id, strict=False))
    assert keys == sorted(keys) and len(keys) == n


def test_label_join_max_pending_evicts_and_counts():
    j = rl.LabelJoin(wait=1000, max_pending=3)
    for i in range(5):
        j.serve(i, i, [0.0])
    assert j.pending == 3 and j.stats()["evicted"] == 2
    with pytest.raises(rtml.SchemaError, match="evicted"):
        j.label(0, 10, 1.0)


def test_label_join_times_and_durations():
    import datetime as dt

    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    j = rl.LabelJoin(wait=dt.timedelta(minutes=15), on_timeout="drop")
    j.serve("r", t0, [1.0])
    j.label("r", t0 + dt.timedelta(minutes=5), 1.0)
    j.advance(t0 + dt.timedelta(hours=1))
    ex = j.drain()
    assert ex.release.tolist() == [int((t0 + dt.timedelta(minutes=5)).timestamp()) * 10**9]
    with pytest.raises(rtml.SchemaError, match="never mix"):
        j.advance(dt.datetime(2024, 1, 2))
    with pytest.raises(rtml.SpecError, match="wait"):
        rl.LabelJoin(wait="soon")
    with pytest.raises(rtml.SpecError, match="on_timeout"):
        rl.LabelJoin(wait=1, on_timeout="keep")


def test_label_join_batches_are_all_or_nothing():
    j = rl.LabelJoin(wait=100)
    j.serve(5, 0, [1.0])
    with pytest.raises(rtml.SchemaError, match="request id 5 was already served"):
        j.serve_many(
            np.array([1, 2, 5], dtype=np.int64),
            np.array([1, 2, 3], dtype=np.int64),
            np.ones((3, 1)),
        )
    with pytest.raises(rtml.SchemaError, match="request id 7 was already served"):
        j.serve_many([7, 7], [1, 2], np.ones((2, 1)))
    assert j.pending == 1 and j.stats()["reused_ids"] == 2
    # the compiled join refuses to drain vectors of different lengths, and keeps them
    core = rtml._core.LabelJoin(10, 0.0, 10, 0)
    core.serve(1, 0, np.ones(2))
    core.serve(2, 0, np.ones(3))
    core.flush()
    with pytest.raises(rtml.SchemaError, match="differ in length"):
        core.drain()
    assert core.stats()["ready"] == 2


def test_label_join_checkpoint_continues_exactly_and_refuses_bad_bytes():
    rng = np.random.default_rng(7)
    n = 400
    ids = [f"r{i}" for i in range(n)]
    at = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.integers(0, 3600, n)), "s"
    )
    X = rng.random((n, 3))
    lab = rng.random(n) < 0.8
    lt = at + pd.to_timedelta(rng.integers(0, 120, n), "s")

    def run(cut=None):
        j = rl.LabelJoin(wait="90s", on_timeout=0.0, allowed_lateness="30s")
        out = []
        for i in range(n):
            if cut is not None and i == cut:
                out.append(j.drain())
                j = pickle.loads(pickle.dumps(j))  # what a service checkpoint does
            j.serve(ids[i], at[i], X[i])
            if lab[i]:
                j.label(ids[i], lt[i], float(i % 2))
        j.flush()
        out.append(j.drain())
        return (
            [r for e in out for r in e.request_id],
            np.concatenate([e.X for e in out]),
            np.concatenate([e.y for e in out]),
            j.stats(),
        )

    want = run()
    got = run(cut=173)
    assert got[0] == want[0] and got[3] == want[3]
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])
    j = rl.LabelJoin(wait="90s")
    j.serve("a", at[0], X[0])
    good = j.to_bytes()
    with pytest.raises(rtml.SchemaError):  # the restored join keeps its clock: aware times
        rl.LabelJoin.from_bytes(good).serve("b", dt.datetime(2024, 1, 1), X[1])
    for bad in (
        good[:-1],
        good[:-5] + b"xxxxx",
        b"rtml.LabelJoin/1\n{}\n" + good[-30:],
        b"",
        b"junk",
    ):
        with pytest.raises(rtml.SnapshotError):
            rl.LabelJoin.from_bytes(bad)


def test_metrics_lost_before_are_now_part_of_the_checkpoint():
    """A service checkpoint (join, model and metrics pickled at a cut point, then restored)
    gives the uninterrupted run's progressive metrics bit for bit: the same window rows, the
    same AUC / log loss / MSE floats, the same counts. Binary and multiclass."""
    rng = np.random.default_rng(21)
    n = 600
    ids = list(range(n))
    at = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(
        np.sort(rng.integers(0, 7200, n)), "s"
    )
    X = rng.normal(size=(n, 3))
    lt = at + pd.to_timedelta(rng.integers(0, 200, n), "s")
    y = (X[:, 0] + rng.normal(scale=0.5, size=n) > 0).astype(float)

    def run(cut=None, multiclass=False):
        j = rl.LabelJoin(wait="5m", on_timeout=0.0, allowed_lateness="1m")
        if multiclass:
            m, met = rl.Softmax(3, 2, "sgd", eta0=0.05), rl.MulticlassMetrics(window="30m")
        else:
            m, met = rl.Logistic(3, "ftrl", alpha=0.2), rl.Metrics(window="30m")
        for i in range(n):
            if cut is not None and i == cut:
                j, m, met = pickle.loads(pickle.dumps((j, m, met)))
            j.serve(ids[i], at[i], X[i])
            if i % 5:
                j.label(ids[i], lt[i], y[i])
            ex = j.drain()
            if len(ex):
                m.progressive(ex.X, ex.y.astype(int) if multiclass else ex.y, ex.release, met)
        return m, met

    for multiclass in (False, True):
        m0, want = run(multiclass=multiclass)
        assert want.seen > 300
        for cut in (1, 250, 599):
            m1, got = run(cut, multiclass)
            assert m1.same_state(m0)
            assert got.to_bytes() == want.to_bytes()
            assert json.dumps(got.summary()) == json.dumps(want.summary())


def test_metrics_snapshot_keeps_the_clock_and_refuses_bad_bytes():
    m = rl.Metrics(window="1h")
    m.add(pd.Timestamp("2024-01-01", tz="UTC"), 0.3, 1.0)
    good = m.to_bytes()
    back = rl.Metrics.from_bytes(good)
    assert back.summary() == m.summary()
    with pytest.raises(rtml.SchemaError):  # aware times before: a naive one is refused
        back.add(dt.datetime(2024, 1, 1, 1), 0.5, 0.0)
    for bad in (
        good[:-1],
        good[:-5] + b"xxxxx",
        b"rtml.Metrics/1\n{}\n" + good[-30:],
        b"",
        b"junk",
    ):
        with pytest.raises(rtml.SnapshotError):
            rl.Metrics.from_bytes(bad)
    with pytest.raises(rtml.SnapshotError):
        rl.MulticlassMetrics.from_bytes(good)
    newer = bytearray(good)
    core = good.index(b"RTPM")
    newer[core + 4] = 2
    with pytest.raises(rtml.SnapshotError, match="upgrade"):
        rl.Metrics.from_bytes(bytes(newer))


# A join snapshot written by rtml before session 8 (format version 1: pending and gone ids in
# two maps), by _v1_prefix below on main 0ea8156's build.
_JOIN_V1 = (
    "cnRtbC5MYWJlbEpvaW4vMQp7ImNsb2NrIjogbnVsbCwgIm5fZmVhdHVyZXMiOiAyfQpSVExKAQAAAP/VKmBfAwAA"
    "AAAAAGQAAAAAAAAAAQAAAAAAAAAAAPC/BgAAAAAAAAA8AAAAAAAAAAQAAAAAAAAAAQAAAAIAAAAAAAAAczIUAAAA"
    "AAAAAAIAAAAAAAAAAAAAAAAAAEAAAAAAAAAAwAB4AAAAAAAAAAAAAAAFAAAAAAAAADIAAAAAAAAAAgAAAAAAAAAA"
    "AAAAAAAUQAAAAAAAABTAAJYAAAAAAAAAAQAAAAIAAAAAAAAAczY8AAAAAAAAAAIAAAAAAAAAAAAAAAAAGEAAAAAA"
    "AAAYwACgAAAAAAAAAAAAAAAHAAAAAAAAAEYAAAAAAAAAAgAAAAAAAAAAAAAAAAAcQAAAAAAAABzAAKoAAAAAAAAA"
    "BgAAAAAAAAB4AAAAAAAAAAEAAAACAAAAAAAAAHMyggAAAAAAAAAAAAAAAwAAAAAAAACMAAAAAAAAAAEAAAACAAAA"
    "AAAAAHM0lgAAAAAAAAAAAAAABQAAAAAAAACgAAAAAAAAAAEAAAACAAAAAAAAAHM2qgAAAAAAAAAAAAAABwAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAABAAAAAAAAAABAAAAAgAAAAAAAABzMGQAAAAAAAAAAgAAAAAAAAADAAAAAAAAAIIA"
    "AAAAAAAAAAAAAAEAAAACAAAAAAAAAHM0jAAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAbgAAAAAAAAACAAAABAAAAAAA"
    "AABkAAAAAAAAAAEAAAACAAAAAAAAAHMwbgAAAAAAAAAAAAAAAQAAAAAAAACCAAAAAAAAAAAAAAADAAAAAAAAAIwA"
    "AAAAAAAAAQAAAAIAAAAAAAAAczQBmwAAAAAAAAACAAAAAAAAAAAAAAADAAAAAAAAAB4AAAAAAAAAKAAAAAAAAAAC"
    "AAAAAAAAAAAAAAAAAAhAAAAAAAAACMAAAAAAAADwPwABAAAAAgAAAAAAAABzNCgAAAAAAAAALQAAAAAAAAACAAAA"
    "AAAAAAAAAAAAABBAAAAAAAAAEMAAAAAAAAAAAAAIAAAAAAAAAAMAAAAAAAAAAgAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAIAAAAAAAAA"
)


def _v1_prefix():
    j = rl.LabelJoin(wait=100, on_timeout=-1.0, max_pending=6, allowed_lateness=60)
    for i in range(8):  # 8 > max_pending: two evicted
        j.serve(i if i % 2 else f"s{i}", i * 10, np.array([float(i), -float(i)]))
    j.label(3, 40, 1.0)
    j.label("s4", 45, 0.0)
    j.label(5, 155, 1.0)  # after the wait of row 5 (at 50): counted
    j.advance(150)  # S = 90: releases 3 and s4; the evicted s0 and 1 are remembered
    return j


def _v1_suffix(j):
    refused = []
    for i in range(8, 12):
        j.serve(i, 120 + i, np.array([1.0, float(i)]))
    for rid, t, y in (
        (7, 150, 1.0),
        (9, 160, 0.0),
        (3, 160, 1.0),
        ("s0", 160, 1.0),
        (11, 170, 1.0),
    ):
        try:
            j.label(rid, t, y)
        except rtml.SchemaError as e:
            refused.append(str(e))
    j.flush()
    ex = j.drain()
    return ex.request_id, ex.release.tolist(), ex.y.tolist(), ex.X.tolist(), j.stats(), refused


def test_label_join_reads_version_1_snapshots():
    """Format version 2 (one map for pending and gone ids) still reads version 1 bytes: the
    restored join continues as an uninterrupted one, and as main 0ea8156's did."""
    import base64

    old = rl.LabelJoin.from_bytes(base64.b64decode(_JOIN_V1))
    assert old.stats()["pending"] == 4 and old.stats()["ready"] == 2
    got, want = _v1_suffix(old), _v1_suffix(_v1_prefix())
    assert got == want
    # what main 0ea8156 gave for this suffix
    assert got[0] == [3, "s4", 7, 9, "s6", 11, 8, 10]
    assert got[1] == [40, 45, 150, 160, 160, 170, 228, 230]
    assert got[4]["evicted"] == 4 and got[4]["labels_for_released"] == 2
    assert "already released" in got[5][0] and "evicted" in got[5][1]
    # and a version 2 snapshot round-trips
    again = rl.LabelJoin.from_bytes(_v1_prefix().to_bytes())
    assert _v1_suffix(again) == want


# The same prefix's snapshot written by main 6ade37a (format version 2, session 8): the last
# version whose forget queue held an entry for every released id.
_JOIN_V2 = (
    "cnRtbC5MYWJlbEpvaW4vMQp7ImNsb2NrIjogbnVsbCwgIm5fZmVhdHVyZXMiOiAyfQpSVExKAgAAALQX8wl3AwAA"
    "AAAAAGQAAAAAAAAAAQAAAAAAAAAAAPC/BgAAAAAAAAA8AAAAAAAAAAgAAAAAAAAAAQAAAAIAAAAAAAAAczABAAAA"
    "ZAAAAAAAAAACAAAAAAAAAAMAAAAAAAAAAQAAAIIAAAAAAAAAAAAAAAAAAAAHAAAAAAAAAAAAAABGAAAAAAAAAAIA"
    "AAAAAAAAAAAAAAAAHEAAAAAAAAAcwACqAAAAAAAAAAAAAAABAAAAAAAAAAEAAABuAAAAAAAAAAIAAAABAAAAAgAA"
    "AAAAAABzMgAAAAAUAAAAAAAAAAIAAAAAAAAAAAAAAAAAAEAAAAAAAAAAwAB4AAAAAAAAAAEAAAACAAAAAAAAAHM0"
    "AQAAAIwAAAAAAAAAAAAAAAEAAAACAAAAAAAAAHM2AAAAADwAAAAAAAAAAgAAAAAAAAAAAAAAAAAYQAAAAAAAABjA"
    "AKAAAAAAAAAAAAAAAAUAAAAAAAAAAAAAADIAAAAAAAAAAgAAAAAAAAAAAAAAAAAUQAAAAAAAABTAAJYAAAAAAAAA"
    "BgAAAAAAAAB4AAAAAAAAAAEAAAACAAAAAAAAAHMyggAAAAAAAAAAAAAAAwAAAAAAAACMAAAAAAAAAAEAAAACAAAA"
    "AAAAAHM0lgAAAAAAAAAAAAAABQAAAAAAAACgAAAAAAAAAAEAAAACAAAAAAAAAHM2qgAAAAAAAAAAAAAABwAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAABAAAAAAAAABkAAAAAAAAAAEAAAACAAAAAAAAAHMwbgAAAAAAAAAAAAAAAQAAAAAA"
    "AACCAAAAAAAAAAAAAAADAAAAAAAAAIwAAAAAAAAAAQAAAAIAAAAAAAAAczQBmwAAAAAAAAACAAAAAAAAAAAAAAAD"
    "AAAAAAAAAB4AAAAAAAAAKAAAAAAAAAACAAAAAAAAAAAAAAAAAAhAAAAAAAAACMAAAAAAAADwPwABAAAAAgAAAAAA"
    "AABzNCgAAAAAAAAALQAAAAAAAAACAAAAAAAAAAAAAAAAABBAAAAAAAAAEMAAAAAAAAAAAAAIAAAAAAAAAAMAAAAA"
    "AAAAAgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIAAAAAAAAA"
)


def _v2_suffix(j):
    """Continue a `_v1_prefix` join through releases, evictions and forgetting: which ids are
    still remembered ("already released") and which forgotten ("unknown") depends on the
    forget bookkeeping that format version 3 changed."""
    told = []

    def label(rid, t, y):
        try:
            told.append(j.label(rid, t, y))
        except rtml.SchemaError as e:
            told.append(str(e).split(": it ")[-1])

    for i in range(8, 14):
        j.serve(i, 120 + i, np.array([1.0, float(i)]))
    label(7, 150, 1.0)
    label(9, 160, 0.0)
    label(3, 160, 1.0)  # released at 40, remembered until S passes 130
    j.advance(195)  # S = 135: 3 and s4 (until 130, 140) -> 3 forgotten
    label(3, 196, 1.0)
    label("s4", 196, 1.0)
    label(12, 197, 1.0)
    j.advance(240)  # S = 180: s4, 7 (170) forgotten; 9 released (labeled)
    for rid in ("s4", 7, 9, "s6"):
        label(rid, 241, 0.0)
    j.advance(400)  # everything settled and forgotten but the rows served at 128 and later
    for rid in (9, 11, 12):
        label(rid, 401, 0.0)
    ex = j.drain()
    return ex.request_id, ex.release.tolist(), ex.y.tolist(), told, j.stats()


def test_label_join_reads_version_2_snapshots():
    """Version 3 (a labeled row's stale deadline entry forgets its id, session 9) reads version
    2 bytes: the restored join releases, remembers and forgets exactly as an uninterrupted one,
    and as main 6ade37a did (its output for this suffix is written out below)."""
    import base64

    old = rl.LabelJoin.from_bytes(base64.b64decode(_JOIN_V2))
    assert old.stats()["pending"] == 4 and old.stats()["ready"] == 2
    got, want = _v2_suffix(old), _v2_suffix(_v1_prefix())
    assert got == want
    ids, release, y, told, stats = got
    assert ids == [3, "s4", 9, 12, 8, 10, 11, 13]
    assert release == [40, 45, 160, 197, 228, 230, 231, 233]
    assert y == [1.0, 0.0, 0.0, 1.0, -1.0, -1.0, -1.0, -1.0]
    released = "was already released with its label"
    unknown = "is unknown (never served, or forgotten after its wait)"
    assert told == [
        "was evicted (max_pending reached)",
        "accepted",
        released,
        unknown,
        released,
        "accepted",
        unknown,
        unknown,
        released,
        unknown,
        unknown,
        unknown,
        unknown,
    ]
    assert (stats["unknown_labels"], stats["labels_for_released"], stats["evicted"]) == (7, 4, 6)
    # and today's snapshot (version 3) round-trips the same way
    assert _v2_suffix(rl.LabelJoin.from_bytes(_v1_prefix().to_bytes())) == want
