"""scikit-learn interop: the Pipeline adapter and the ColumnTransformer translation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import rtml

import sklearn  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 3, n)
    x[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({
        "x": x,
        "z": rng.gamma(2.0, 2.0, n),
        "c": rng.choice(["a", "b", "c", "rare"], n, p=[0.4, 0.3, 0.28, 0.02]),
        "y": (rng.random(n) < 0.3).astype(int),
    })


def test_column_transformer_translates_and_agrees():
    df = _frame()
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["x", "z"]),
        ("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, sparse_output=False), ["c"]),
    ])
    want = ct.fit_transform(df)
    tf = rtml.from_sklearn(ct).fit(df)
    assert tf.feature_names == ["x", "z", "c=a", "c=b", "c=c", "c=__other__"]
    got = tf.transform(df)
    names = list(ct.get_feature_names_out())
    for ours, theirs in [("x", "num__x"), ("z", "num__z"), ("c=a", "cat__c_a"), ("c=b", "cat__c_b"),
                         ("c=c", "cat__c_c"), ("c=__other__", "cat__c_infrequent_sklearn")]:
        # float statistics may differ in the last bits (sklearn sums in float, rtml exactly)
        np.testing.assert_allclose(got.column(ours).to_numpy(), want[:, names.index(theirs)], rtol=1e-12, atol=1e-12)


def test_unsupported_step_names_itself():
    ct = ColumnTransformer([("n", StandardScaler(with_mean=False), ["x"])])
    with pytest.raises(rtml.SpecError, match="StandardScaler"):
        rtml.from_sklearn(ct)


def test_estimator_adapter_in_a_pipeline():
    df = _frame()
    est = rtml.TransformsEstimator([rtml.impute("x", "mean"), rtml.standard_scale("x"), rtml.one_hot("c")])
    pipe = make_pipeline(est, LogisticRegression())
    pipe.fit(df, df["y"])
    proba = pipe.predict_proba(df)[:, 1]
    assert proba.shape == (len(df),) and np.all((proba > 0) & (proba < 1))
    assert list(est.get_feature_names_out()) == ["x", "c=a", "c=b", "c=c", "c=rare", "c=__other__"]
    # the fitted rtml pipeline inside gives the same matrix as using it directly
    direct = rtml.Transforms([rtml.impute("x", "mean"), rtml.standard_scale("x"), rtml.one_hot("c")]).fit(df)
    np.testing.assert_array_equal(est.transform(df), np.column_stack(
        [direct.transform(df).column(n).to_numpy(zero_copy_only=False) for n in direct.feature_names]))
