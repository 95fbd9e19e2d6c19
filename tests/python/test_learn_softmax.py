"""rtml.learn.Softmax: the multiclass learner against a slow reference, determinism across
batch forms, bad input, documents; MulticlassMetrics against scikit-learn."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, log_loss

import rtml
import rtml.learn as rl

sys.path.insert(0, str(Path(__file__).parent))
from learn_reference import RefSoftmax  # noqa: E402
from test_learn import CONFIGS, _opt_doc  # noqa: E402


def _data(rng: np.random.Generator, n: int, k: int, c: int):
    X = rng.normal(size=(n, k))
    X[rng.random(size=(n, k)) < 0.2] = 0.0
    W = rng.normal(size=(c, k)) * 1.5
    m = X @ W.T
    p = np.exp(m - m.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p])
    return X, y


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("opt,kw", CONFIGS)
def test_softmax_equals_the_reference_bit_for_bit(opt, kw, n_classes):
    rng = np.random.default_rng(17)
    X, y = _data(rng, 300, 5, n_classes)
    model = rl.Softmax(5, n_classes, opt, **kw)
    ref = RefSoftmax(n_classes, 5, _opt_doc(opt, kw))
    for i in range(len(y)):
        x = X[i].tolist()
        assert model.predict_one(X[i]).tolist() == ref.predict(x)
        assert model.learn_one(X[i], int(y[i])).tolist() == ref.learn(x, int(y[i]))
    state = json.loads(model.to_json())
    for name, values in ref.state().items():
        assert state[name] == values, name
    assert state["updates"] == ref.t == len(y)
    weights = model.weights
    assert weights.shape == (n_classes, 6)
    assert weights.ravel().tolist() == [w for lin in ref.lin for w in lin._weights()]


def test_softmax_learns_three_classes():
    rng = np.random.default_rng(2)
    X, y = _data(rng, 4000, 4, 3)
    m = rl.Softmax(4, ["a", "b", "c"], "ftrl", alpha=0.3)
    labels = np.array(["a", "b", "c"])[y]
    m.learn_many(X[:3000], labels[:3000])
    pred = m.predict_class(X[3000:])
    # the generating model's own (Bayes) accuracy on this data is about 0.75
    assert accuracy_score(labels[3000:], pred) > 0.65


@settings(max_examples=40, deadline=None)
@given(
    cfg=st.sampled_from(CONFIGS),
    n_classes=st.integers(2, 4),
    rows=st.lists(
        st.tuples(st.lists(st.floats(-5, 5), min_size=3, max_size=3), st.integers(0, 3)),
        min_size=1,
        max_size=30,
    ),
    cuts=st.lists(st.integers(0, 30), max_size=3),
)
def test_softmax_learn_many_is_the_loop_of_learn_one_in_any_batch_form(cfg, n_classes, rows, cuts):
    """The same stream as one batch, as batches split anywhere (ints, floats, str labels), and
    one example at a time: the same probabilities and the same model, bit for bit."""
    opt, kw = cfg
    X = np.array([r[0] for r in rows])
    y = np.array([r[1] % n_classes for r in rows])
    names = [f"c{i}" for i in range(n_classes)]
    whole = rl.Softmax(3, n_classes, opt, **kw)
    p_whole = whole.learn_many(X, y)
    loop = rl.Softmax(3, n_classes, opt, **kw)
    p_loop = [loop.learn_one(X[i], int(y[i])).tolist() for i in range(len(y))]
    split = rl.Softmax(3, names, opt, **kw)
    bounds = sorted({0, len(y), *[c % (len(y) + 1) for c in cuts]})
    p_split = []
    for a, b in zip(bounds, bounds[1:]):
        labels = [names[v] for v in y[a:b]]
        p_split.extend(split.learn_many(X[a:b].tolist(), labels).tolist())
        split = pickle.loads(pickle.dumps(split))  # a checkpoint between batches
    floats = rl.Softmax(3, n_classes, opt, **kw)
    p_floats = floats.learn_many(X, y.astype(float))
    assert p_whole.tolist() == p_loop == p_split == p_floats.tolist()
    assert whole.same_state(loop) and whole.same_state(floats)
    doc, split_doc = json.loads(whole.to_json()), json.loads(split.to_json())
    assert {k: v for k, v in doc.items() if k != "classes"} == {
        k: v for k, v in split_doc.items() if k != "classes"
    }


def test_softmax_bad_input_is_typed_and_changes_nothing():
    m = rl.Softmax(3, ["x", "y", "z"], "sgd", eta0=0.1)
    m.learn_one([1.0, 2.0, 3.0], "y")
    before = pickle.loads(pickle.dumps(m))
    X = np.ones((4, 3))
    with pytest.raises(rtml.SchemaError, match=r"row 2: unknown class 'w'"):
        m.learn_many(X, ["x", "y", "w", "z"])
    with pytest.raises(rtml.SchemaError, match="unknown class"):
        m.learn_one([1.0, 2.0, 3.0], 0)  # an index is not a class label here
    X[3, 1] = np.nan
    with pytest.raises(rtml.SchemaError, match=r"x\[1\]"):
        m.learn_many(X, ["x", "y", "z", "z"])
    with pytest.raises(rtml.SchemaError, match="3 features"):
        m.learn_one([1.0, 2.0], "x")
    with pytest.raises(rtml.SchemaError, match="4 labels"):
        m.learn_many(np.ones((4, 3)), ["x", "y"])
    assert m.same_state(before)
    n = rl.Softmax(2, 3)
    n.learn_one([0.5, 0.5], 2)
    before = pickle.loads(pickle.dumps(n))
    for bad in ([0, 1, 3], [0, -1, 1], [0.0, 1.5, 2.0], [0.0, np.nan, 1.0], [True, 0, 1]):
        with pytest.raises(rtml.SchemaError, match=r"row \d|class index"):
            n.learn_many(np.ones((3, 2)), np.asarray(bad) if bad[0] is not True else bad)
    with pytest.raises(rtml.SchemaError, match="unknown class"):
        n.learn_one([0.0, 0.0], True)
    assert n.same_state(before)
    with pytest.raises(rtml.SpecError, match="at least 2 classes"):
        rl.Softmax(2, 1)
    with pytest.raises(rtml.SpecError, match="twice"):
        rl.Softmax(2, ["a", "a"])
    with pytest.raises(rtml.SpecError, match="classes"):
        rl.Softmax(2, [1.5, 2.5])  # type: ignore[list-item]
    with pytest.raises(rtml.SpecError, match="alpha"):
        rl.Softmax(2, 3, "ftrl", alpha=-1.0)


def test_softmax_document_pickle_and_refusals():
    rng = np.random.default_rng(4)
    X, y = _data(rng, 60, 3, 3)
    for opt, kw in CONFIGS:
        m = rl.Softmax(3, [10, "ten", -3], opt, **kw)
        labels = [[10, "ten", -3][v] for v in y]
        m.learn_many(X, labels)
        text = m.to_json()
        back = rl.load_model(text)
        assert isinstance(back, rl.Softmax) and back.same_state(m)
        assert back.classes == [10, "ten", -3]
        p = pickle.loads(pickle.dumps(m))
        assert p.same_state(m)
        m.learn_many(X, labels)
        p.learn_many(X, labels)
        back.learn_many(X, labels)
        assert p.same_state(m) and back.same_state(m)
    doc = json.loads(text)
    assert doc["format"] == "rtml.softmax" and doc["version"] == rl.SOFTMAX_VERSION
    with pytest.raises(rtml.SpecError, match="newer"):
        rl.load_model(json.dumps({**doc, "version": rl.SOFTMAX_VERSION + 1}))
    with pytest.raises(rtml.SpecError, match="surprise"):
        rl.load_model(json.dumps({**doc, "surprise": 1}))
    with pytest.raises(rtml.SpecError, match="expected 12 values"):
        rl.load_model(json.dumps({**doc, "w": [0.0] * 4}))
    with pytest.raises(rtml.SpecError, match="twice"):
        rl.load_model(json.dumps({**doc, "classes": [1, 1, 2]}))


def test_softmax_progressive_and_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(9)
    X, y = _data(rng, 1200, 4, 3)
    t = np.arange(len(y), dtype=np.int64) * 1_000_000_000
    a, b = rl.Softmax(4, 3, "ftrl", alpha=0.2), rl.Softmax(4, 3, "ftrl", alpha=0.2)
    everything = rl.MulticlassMetrics()
    probs = a.progressive(X, y, t, everything)
    loop = np.array([b.learn_one(X[i], int(y[i])) for i in range(len(y))])
    assert probs.tolist() == loop.tolist()
    assert a.same_state(b)
    assert everything.count == everything.seen == len(y)
    assert everything.log_loss() == pytest.approx(log_loss(y, loop, labels=[0, 1, 2]), rel=1e-12)
    assert everything.accuracy() == accuracy_score(y, loop.argmax(axis=1))
    rolling = rl.MulticlassMetrics(window="200s")
    rolling.add_many(t, probs, y)
    last = t > t[-1] - 200 * 10**9
    assert rolling.count == int(last.sum()) == 200
    assert rolling.log_loss() == pytest.approx(
        log_loss(y[last], probs[last], labels=[0, 1, 2]), rel=1e-12
    )
    assert rolling.accuracy() == accuracy_score(y[last], probs[last].argmax(axis=1))
    with pytest.raises(rtml.SchemaError, match="out of range"):
        rolling.add_many([1], [[0.5, 0.5]], [2])
    with pytest.raises(rtml.SchemaError, match="finite"):
        rolling.add_many([1], [[np.nan, 0.5]], [0])
