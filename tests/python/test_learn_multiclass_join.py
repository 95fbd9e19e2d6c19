"""A multiclass label join (issue 15): `LabelJoin(classes=..., on_timeout=<class>)` takes class
labels, times out to a class, and drains class labels a `Softmax` learns from; checked against a
slow reference join written out below."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import rtml
import rtml.learn as rl

WAIT = 50


def reference(rows, labels, classes, on_timeout):
    """The join of an in-order label stream, the obvious way: a served row takes the first
    label with a known class that comes within its wait (release: the label's time); without
    one it times out at `at + WAIT` to `on_timeout` (or is dropped). Examples sorted by
    (release time, request id)."""
    out = []
    for rid, at in rows:
        mine = [(t, y) for r, t, y in labels if r == rid and y in classes]
        if mine and mine[0][0] <= at + WAIT:
            out.append((mine[0][0], rid, mine[0][1], False))
        elif on_timeout != "drop":
            out.append((at + WAIT, rid, on_timeout, True))
    return sorted(out, key=lambda e: (e[0], e[1]))


def stream(seed, classes, n=60):
    """Rows served at increasing times; labels (some of an unknown class, some for ids never
    served, some after the wait, some twice) in time order."""
    rng = np.random.default_rng(seed)
    rows = [(f"r{i:03d}", int(t)) for i, t in enumerate(np.sort(rng.integers(0, 400, n)))]
    labels = []
    for rid, at in rows:
        for _ in range(int(rng.integers(0, 3))):
            y = classes[int(rng.integers(0, len(classes)))] if rng.random() < 0.85 else "bird"
            labels.append((rid, at + int(rng.integers(0, 2 * WAIT)), y))
    labels.append(("never-served", 10, classes[0]))
    labels.sort(key=lambda r: r[1])
    X = rng.random((n, 3))
    return rows, labels, X


CLASSES = [["cat", "dog", "fish"], [3, 7, 11], 4]


@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_multiclass_join_equals_the_slow_reference(classes, batch, seed):
    labels_of = list(range(classes)) if isinstance(classes, int) else classes
    on_timeout = labels_of[-1] if seed % 2 == 0 else "drop"
    rows, labels, X = stream(seed, labels_of)
    j = rl.LabelJoin(wait=WAIT, on_timeout=on_timeout, classes=classes)
    j.serve_many([r for r, _ in rows], [at for _, at in rows], X)
    bad = sum(1 for _, _, y in labels if y not in labels_of)
    if batch:
        ys = [y for _, _, y in labels]
        j.labels([r for r, _, _ in labels], [t for _, t, _ in labels], ys)
    else:
        for rid, t, y in labels:
            try:
                j.label(rid, t, y)
            except rtml.SchemaError as e:
                if y not in labels_of:
                    assert "unknown class 'bird'" in str(e) and repr(rid) in str(e)
    j.flush()
    ex = j.drain()
    want = reference(rows, labels, labels_of, on_timeout)
    got = list(zip(ex.release.tolist(), ex.request_id, ex.y.tolist(), ex.timed_out.tolist()))
    assert got == want
    assert j.stats()["bad_labels"] == bad
    row_of = {r: i for i, (r, _) in enumerate(rows)}
    np.testing.assert_array_equal(ex.X, X[[row_of[r] for r in ex.request_id]])
    # class labels as the classes are: int64 for ints, objects for strs
    assert ex.y.dtype == (object if isinstance(labels_of[0], str) else np.int64)
    # ... and a Softmax with the same classes learns from them as from the labels themselves
    m, r = rl.Softmax(3, classes), rl.Softmax(3, classes)
    m.learn_many(ex.X, ex.y)
    for x, (_, _, y, _) in zip(ex.X, want):
        r.learn_one(x, y)
    assert m.same_state(r)


def test_multiclass_join_refuses_bad_classes_and_defaults_with_typed_errors():
    with pytest.raises(rtml.SpecError, match="on_timeout.*one of the classes"):
        rl.LabelJoin(wait=10, on_timeout="bird", classes=["cat", "dog"])
    with pytest.raises(rtml.SpecError, match="on_timeout.*one of the classes"):
        rl.LabelJoin(wait=10, on_timeout=True, classes=[0, 1])  # a bool is never a class
    with pytest.raises(rtml.SpecError, match="on_timeout.*classes="):
        rl.LabelJoin(wait=10, on_timeout="cat")  # a class label needs the classes
    with pytest.raises(rtml.SpecError, match="classes.*listed twice"):
        rl.LabelJoin(wait=10, classes=["cat", "cat"])
    with pytest.raises(rtml.SpecError, match="classes.*at least 2"):
        rl.LabelJoin(wait=10, classes=["cat"])
    with pytest.raises(rtml.SpecError, match="classes"):
        rl.LabelJoin(wait=10, classes=[1.5, 2.5])
    j = rl.LabelJoin(wait=10, on_timeout=1, classes=2)
    j.serve(1, 0, [1.0])
    with pytest.raises(rtml.SchemaError, match="label.*request id 1.*unknown class 2"):
        j.label(1, 5, 2)
    # refused and counted, nothing else changed: the row still takes a good label
    assert j.stats()["bad_labels"] == 1 and j.pending == 1
    assert j.label(1, 5, 0) == "accepted"
    j.flush()
    assert j.drain().y.tolist() == [0]


def test_multiclass_join_snapshot_keeps_the_classes():
    j = rl.LabelJoin(wait=WAIT, on_timeout="other", classes=["cat", "other"])
    j.serve("a", 0, [1.0])
    j.serve("b", 1, [2.0])
    k = rl.LabelJoin.from_bytes(j.to_bytes())
    p = pickle.loads(pickle.dumps(j))
    for join in (k, p):
        assert join.classes == ["cat", "other"]
        assert join.label("a", 3, "cat") == "accepted"
        with pytest.raises(rtml.SchemaError, match="unknown class"):
            join.label("b", 3, "dog")
        join.flush()
        ex = join.drain()
        assert ex.y.tolist() == ["cat", "other"] and ex.timed_out.tolist() == [False, True]
    assert rl.LabelJoin(wait=1).classes is None
