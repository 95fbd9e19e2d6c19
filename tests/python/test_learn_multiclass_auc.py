"""`MulticlassMetrics.auc()` (issue 15): the one-vs-rest macro ROC AUC of the event-time window,
against scikit-learn's `roc_auc_score(multi_class="ovr", average="macro")` on the rows the
window holds; snapshots keep it, and version 1 snapshots (written before session 9, without the
class probabilities) are still read."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import rtml
import rtml.learn as rl


def probabilities(rng, n, c, ties):
    p = rng.dirichlet(np.ones(c), n)
    if ties:  # coarse scores: many ties within each class's column
        p = np.round(p, 1) + 1e-3
        p /= p.sum(axis=1, keepdims=True)
    return p


def sklearn_window(t, p, y, window):
    """The rows the window keeps: `(last - window, last]` by event time."""
    keep = np.ones(len(t), bool) if window is None else t > t.max() - window
    return roc_auc_score(y[keep], p[keep], multi_class="ovr", average="macro")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [None, 300])
def test_auc_equals_scikit_learn_over_the_window(seed, window):
    rng = np.random.default_rng(seed)
    c, n = int(rng.integers(2, 6)), 400
    t = np.sort(rng.integers(0, 1000, n))
    if seed % 2:  # some rows out of time order
        t = t + rng.integers(-50, 50, n)
    p = probabilities(rng, n, c, ties=seed % 3 == 0)
    y = np.array([rng.choice(c, p=row) for row in p])
    m = rl.MulticlassMetrics(window=window)
    for lo in range(0, n, 97):  # several batches: the window cuts between them too
        m.add_many(t[lo : lo + 97], p[lo : lo + 97], y[lo : lo + 97])
    assert m.auc() == pytest.approx(sklearn_window(t, p, y, window), rel=1e-12, abs=1e-12)
    assert m.summary()["auc"] == m.auc()


def test_auc_is_none_unless_every_class_is_in_the_window():
    m = rl.MulticlassMetrics(window=10)
    assert m.auc() is None
    m.add_many([1, 2], [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]], [0, 1])
    assert m.auc() is None  # class 2 never seen (scikit-learn raises here)
    m.add_many([3], [[0.1, 0.1, 0.8]], [2])
    assert m.auc() == 1.0
    m.add_many([12], [[0.4, 0.3, 0.3]], [2])  # the window (2, 12] lost class 0
    assert m.auc() is None


def test_softmax_progressive_auc_equals_scikit_learn():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 4))
    y = np.argmax(X[:, :3] + rng.normal(scale=0.5, size=(300, 3)), axis=1)
    m, metrics = rl.Softmax(4, 3, "ftrl", alpha=0.3), rl.MulticlassMetrics()
    p = m.progressive(X, y, np.arange(300), metrics)
    want = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert metrics.auc() == pytest.approx(want, rel=1e-12)


def test_auc_survives_a_snapshot_exactly():
    rng = np.random.default_rng(3)
    t, p = np.arange(200), probabilities(rng, 200, 4, ties=False)
    y = rng.integers(0, 4, 200)
    a, b = rl.MulticlassMetrics(window=80), rl.MulticlassMetrics(window=80)
    a.add_many(t, p, y)
    b.add_many(t[:120], p[:120], y[:120])
    b = rl.MulticlassMetrics.from_bytes(b.to_bytes())
    b.add_many(t[120:], p[120:], y[120:])
    assert b.auc() == a.auc() and b.summary() == a.summary()


# Written by main 6ade37a (format version 1): window 100, rows at 10, 20, 30, 40 with
# probabilities [[.7, .2, .1], [.2, .5, .3], [.1, .1, .8], [.3, .4, .3]] and classes [0, 2, 2, 1].
_MULTICLASS_V1 = (
    "cnRtbC5NdWx0aWNsYXNzTWV0cmljcy8xCnsiY2xvY2siOiBudWxsfQpSVFBDAQAAAKG00ytmAAAAAAAAAAFkAAAAAAAA"
    "AAQAAAAAAAAACgAAAAAAAABmZmZmZmbmPwEUAAAAAAAAADMzMzMzM9M/AB4AAAAAAAAAmpmZmZmZ6T8BKAAAAAAAAACa"
    "mZmZmZnZPwEBKAAAAAAAAAAEAAAAAAAAAA=="
)


def test_version_1_snapshots_are_read_without_an_auc_until_their_rows_leave():
    m = rl.MulticlassMetrics.from_bytes(base64.b64decode(_MULTICLASS_V1))
    # what main 6ade37a reported for these bytes
    assert m.summary() == {
        "count": 4,
        "seen": 4,
        "log_loss": 0.6750205078632583,
        "accuracy": 0.75,
        "auc": None,  # the version 1 rows kept no class probabilities
    }
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3]])
    y = np.array([0, 1, 2, 1])
    m.add_many([100, 110, 120, 130], p, y)
    assert m.count == 5 and m.auc() is None  # (30, 130] still holds the old row at 40
    m.add_many([145], [[0.3, 0.3, 0.4]], [2])  # (45, 145]: the old rows are gone
    want = roc_auc_score(
        np.r_[y, 2], np.r_[p, [[0.3, 0.3, 0.4]]], multi_class="ovr", average="macro"
    )
    assert m.count == 5 and m.auc() == pytest.approx(want, rel=1e-12)
    # and a newer format is refused
    newer = bytearray(m.to_bytes())
    at = newer.index(b"RTPC") + 4
    newer[at] = 3
    with pytest.raises(rtml.SnapshotError, match="upgrade"):
        rl.MulticlassMetrics.from_bytes(bytes(newer))
