"""scikit-learn interop: the Pipeline adapter and the ColumnTransformer translation.

Every parameter `from_sklearn` translates is checked against scikit-learn's own output on
generated data; every parameter it cannot translate exactly must raise SpecError naming it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    KBinsDiscretizer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
    TargetEncoder,
)

import rtml


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 3, n)
    x[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({
        "x": x,
        "z": rng.gamma(2.0, 2.0, n),
        "c": rng.choice(["a", "b", "c", "rare"], n, p=[0.4, 0.3, 0.28, 0.02]),
        "y": (rng.random(n) < 0.3).astype(int),
        "t": rng.normal(0, 1, n),
    })


def _close(got, want, what):
    # float statistics may differ in the last bits (scikit-learn sums in float, rtml exactly)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=what)


def _ours(tf, df, name):
    return tf.transform(df, output="arrow").column(name).to_numpy(zero_copy_only=False).astype(float)


def test_column_transformer_translates_and_agrees():
    df = _frame()
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["x", "z"]),
        ("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, sparse_output=False), ["c"]),
    ])
    want = ct.fit_transform(df)
    tf = rtml.from_sklearn(ct).fit(df)
    assert tf.feature_names == ["x", "z", "c=a", "c=b", "c=c", "c=__other__"]
    names = list(ct.get_feature_names_out())
    for ours, theirs in [("x", "num__x"), ("z", "num__z"), ("c=a", "cat__c_a"), ("c=b", "cat__c_b"),
                         ("c=c", "cat__c_c"), ("c=__other__", "cat__c_infrequent_sklearn")]:
        _close(_ours(tf, df, ours), want[:, names.index(theirs)], ours)


# --- every supported estimator and parameter, against scikit-learn -----------------------

NUMERIC = [
    StandardScaler(),
    StandardScaler(copy=False),
    MinMaxScaler(),
    MinMaxScaler(feature_range=(0, 1), clip=False),
    RobustScaler(),
    RobustScaler(quantile_range=(25.0, 75.0), with_centering=True, with_scaling=True),
    SimpleImputer(),
    SimpleImputer(strategy="median"),
    SimpleImputer(strategy="most_frequent"),
    SimpleImputer(strategy="constant", fill_value=-3.5),
    SimpleImputer(strategy="constant"),
    SimpleImputer(add_indicator=False, keep_empty_features=False),
    FunctionTransformer(np.log1p),
    KBinsDiscretizer(n_bins=4, encode="ordinal", strategy="quantile", quantile_method="linear", subsample=None),
    KBinsDiscretizer(n_bins=[2, 8], encode="ordinal", strategy="quantile", quantile_method="linear",
                     subsample=None),
]


@pytest.mark.parametrize("est", NUMERIC, ids=lambda e: repr(e))
@pytest.mark.parametrize("seed", [0, 1])
def test_numeric_estimator_agrees_with_sklearn(est, seed):
    df = _frame(seed=seed)
    if isinstance(est, (KBinsDiscretizer, FunctionTransformer)):
        df = df.assign(x=df["x"].fillna(1.0))  # KBinsDiscretizer refuses NaN
    if isinstance(est, SimpleImputer) and est.strategy == "most_frequent":
        df = df.assign(x=np.round(df["x"]), z=np.round(df["z"]))  # ties and repeats
    ct = ColumnTransformer([("n", est, ["x", "z"])])
    want = ct.fit_transform(df)
    tf = rtml.from_sklearn(ct).fit(df)
    assert tf.feature_names == ["x", "z"]
    for j, c in enumerate(["x", "z"]):
        _close(_ours(tf, df, c), want[:, j], f"{est!r} {c}")


CATEGORICAL = [
    OneHotEncoder(),
    OneHotEncoder(sparse_output=False, dtype=np.float32),
    OneHotEncoder(handle_unknown="ignore"),
    OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=15),
    OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=3),
    OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, max_categories=4),
]


@pytest.mark.parametrize("est", CATEGORICAL, ids=lambda e: repr(e))
@pytest.mark.parametrize("seed", [0, 3])
def test_one_hot_agrees_with_sklearn(est, seed):
    df = _frame(seed=seed)
    rng = np.random.default_rng(seed)
    df["d"] = rng.choice(["p", "q", "r", "s", "t"], len(df), p=[0.5, 0.2, 0.15, 0.1, 0.05])
    ct = ColumnTransformer([("cat", est, ["c", "d"])])
    want = ct.fit_transform(df)
    want = want.toarray() if hasattr(want, "toarray") else want
    theirs = list(ct.get_feature_names_out())
    tf = rtml.from_sklearn(ct).fit(df)
    got = tf.transform(df, output="arrow")
    for col in ("c", "d"):
        ours = [n for n in tf.feature_names if n.startswith(f"{col}=")]
        mine = [n for n in ours if n != f"{col}=__other__"]
        sk = [n for n in theirs if n.startswith(f"cat__{col}_") and not n.endswith("infrequent_sklearn")]
        assert [f"cat__{n.replace('=', '_')}" for n in mine] == sk
        for o, t in zip(mine, sk):
            _close(got.column(o).to_numpy(), want[:, theirs.index(t)], o)
        other = got.column(f"{col}=__other__").to_numpy()
        if f"cat__{col}_infrequent_sklearn" in theirs:
            _close(other, want[:, theirs.index(f"cat__{col}_infrequent_sklearn")], "other")
        else:
            assert (other == 0).all()  # the documented extra column: 0 on categories seen in fit
    # unseen values: every kept column 0, as with handle_unknown="ignore"; __other__ is 1
    new = df.head(3).assign(c="never", d="seen")
    row = tf.transform(new, output="arrow")
    assert all(row.column(n).to_pylist() == [0.0] * 3 for n in tf.feature_names if "__other__" not in n)
    assert row.column("c=__other__").to_pylist() == [1.0] * 3


@pytest.mark.parametrize("kw", [{}, {"min_frequency": 15}, {"max_categories": 3},
                                {"dtype": np.float32}, {"handle_unknown": "error"}])
def test_ordinal_agrees_with_sklearn(kw):
    df = _frame(seed=5)
    ct = ColumnTransformer([("o", OrdinalEncoder(**kw), ["c"])])
    want = ct.fit_transform(df)[:, 0]
    tf = rtml.from_sklearn(ct).fit(df)
    _close(_ours(tf, df, "c"), want, repr(kw))


@pytest.mark.parametrize("smooth", [0.0, 2.5, 10.0])
@pytest.mark.parametrize("cv", [3, 5, KFold(4, shuffle=False)])
def test_target_encoder_agrees_with_sklearn_in_and_out_of_fold(smooth, cv):
    df = _frame(n=300, seed=7)
    if isinstance(cv, int):
        with warnings.catch_warnings():  # `shuffle` is deprecated in scikit-learn 1.9
            warnings.simplefilter("ignore", FutureWarning)
            te = TargetEncoder(target_type="continuous", smooth=smooth, cv=cv, shuffle=False)
            ct = ColumnTransformer([("te", te, ["c"])])
            oof_want = ct.fit_transform(df, df["t"])[:, 0]
    else:
        te = TargetEncoder(target_type="continuous", smooth=smooth, cv=cv)
        ct = ColumnTransformer([("te", te, ["c"])])
        oof_want = ct.fit_transform(df, df["t"])[:, 0]
    tf = rtml.from_sklearn(ct, target="t")
    oof = tf.fit_transform(df, output="arrow").column("c_te").to_numpy()
    _close(oof, oof_want, "out of fold")
    _close(_ours(tf, df, "c_te"), ct.transform(df)[:, 0], "fitted")


def test_column_used_by_two_transformers_gives_two_outputs():
    df = _frame(seed=2).assign(x=lambda d: d["x"].fillna(0.0))
    ct = ColumnTransformer([("std", StandardScaler(), ["x", "z"]), ("mm", MinMaxScaler(), ["x"]),
                            ("raw", "passthrough", ["x"])])
    want = ct.fit_transform(df)
    tf = rtml.from_sklearn(ct).fit(df)
    assert tf.feature_names == ["std__x", "z", "mm__x", "raw__x"]
    names = list(ct.get_feature_names_out())
    for ours, theirs in [("std__x", "std__x"), ("z", "std__z"), ("mm__x", "mm__x"), ("raw__x", "raw__x")]:
        _close(_ours(tf, df, ours), want[:, names.index(theirs)], ours)


def test_column_used_by_two_pipelines_each_reads_the_input():
    df = _frame(seed=4)
    ct = ColumnTransformer([
        ("a", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["x"]),
        ("b", make_pipeline(SimpleImputer(strategy="mean"), MinMaxScaler()), ["x"]),
    ])
    want = ct.fit_transform(df)
    tf = rtml.from_sklearn(ct).fit(df)
    assert tf.feature_names == ["a__x", "b__x"]
    _close(_ours(tf, df, "a__x"), want[:, 0], "a")
    _close(_ours(tf, df, "b__x"), want[:, 1], "b")


def test_remainder_passthrough_of_a_fitted_column_transformer():
    df = _frame(seed=6).assign(x=lambda d: d["x"].fillna(0.0))[["x", "z", "t"]]
    ct = ColumnTransformer([("s", StandardScaler(), ["x"])], remainder="passthrough").fit(df)
    want = ct.transform(df)
    tf = rtml.from_sklearn(ct).fit(df)
    assert tf.feature_names == ["x", "z", "t"]
    for j, n in enumerate(tf.feature_names):
        _close(_ours(tf, df, n), want[:, j], n)
    with pytest.raises(rtml.SpecError, match="remainder"):
        rtml.from_sklearn(ColumnTransformer([("s", StandardScaler(), ["x"])], remainder="passthrough"))


REFUSED = [
    (StandardScaler(with_mean=False), "with_mean"),
    (StandardScaler(with_std=False), "with_std"),
    (MinMaxScaler(feature_range=(-1, 1)), "feature_range"),
    (MinMaxScaler(clip=True), "clip"),
    (RobustScaler(quantile_range=(10, 90)), "quantile_range"),
    (RobustScaler(with_centering=False), "with_centering"),
    (RobustScaler(with_scaling=False), "with_scaling"),
    (RobustScaler(unit_variance=True), "unit_variance"),
    (SimpleImputer(add_indicator=True), "add_indicator"),
    (SimpleImputer(missing_values=-1), "missing_values"),
    (SimpleImputer(missing_values=None, strategy="most_frequent"), "missing_values"),
    (SimpleImputer(strategy="constant", fill_value="none"), "fill_value"),
    (SimpleImputer(strategy=np.nanmax), "strategy"),
    (OneHotEncoder(drop="first"), "drop"),
    (OneHotEncoder(drop="if_binary"), "drop"),
    (OneHotEncoder(drop=["a"]), "drop"),
    (OneHotEncoder(categories=[["b", "a"]]), "categories"),
    (OneHotEncoder(min_frequency=0.1), "min_frequency"),
    (OrdinalEncoder(categories=[["c", "b", "a", "rare"]]), "categories"),
    (OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), "handle_unknown"),
    (OrdinalEncoder(encoded_missing_value=-1), "encoded_missing_value"),
    (OrdinalEncoder(min_frequency=0.05), "min_frequency"),
    (KBinsDiscretizer(strategy="uniform", encode="ordinal"), "strategy"),
    (KBinsDiscretizer(strategy="kmeans", encode="ordinal"), "strategy"),
    (KBinsDiscretizer(strategy="quantile", encode="onehot"), "encode"),
    (KBinsDiscretizer(strategy="quantile", encode="ordinal", quantile_method="inverted_cdf",
                      subsample=None), "quantile_method"),
    (KBinsDiscretizer(strategy="quantile", encode="ordinal", quantile_method="linear"), "subsample"),
    (TargetEncoder(target_type="auto", smooth=1.0, shuffle=False), "target_type"),
    (TargetEncoder(target_type="binary", smooth=1.0, shuffle=False), "target_type"),
    (TargetEncoder(target_type="continuous", smooth="auto", shuffle=False), "smooth"),
    (TargetEncoder(target_type="continuous", smooth=1.0), "shuffle"),
    (TargetEncoder(target_type="continuous", smooth=1.0, cv=3), "shuffle"),
    (TargetEncoder(target_type="continuous", smooth=1.0, shuffle=False, cv=KFold(3, shuffle=True)), "cv"),
    (TargetEncoder(target_type="continuous", smooth=1.0, shuffle=False, categories=[["a"]]), "categories"),
    (FunctionTransformer(np.log), "func"),
    (FunctionTransformer(np.log1p, kw_args={"out": None}), "kw_args"),
]


@pytest.mark.parametrize("est,param", REFUSED, ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_untranslatable_parameter_is_refused_by_name(est, param):
    ct = ColumnTransformer([("t", est, ["c"] if "Encoder" in type(est).__name__ else ["x"])])
    with pytest.raises(rtml.SpecError, match=rf"{type(est).__name__}.*\b{param}="):
        rtml.from_sklearn(ct, target="y")


def test_column_transformer_level_refusals():
    with pytest.raises(rtml.SpecError, match="transformer_weights="):
        rtml.from_sklearn(ColumnTransformer([("s", StandardScaler(), ["x"])], transformer_weights={"s": 2.0}))
    with pytest.raises(rtml.SpecError, match="remainder="):
        rtml.from_sklearn(ColumnTransformer([("s", StandardScaler(), ["x"])], remainder=StandardScaler()))
    with pytest.raises(rtml.SpecError, match="columns must be named"):
        rtml.from_sklearn(ColumnTransformer([("s", StandardScaler(), [0])]))
    with pytest.raises(rtml.SpecError, match="PCA"):
        from sklearn.decomposition import PCA

        rtml.from_sklearn(ColumnTransformer([("p", PCA(), ["x", "z"])]))
    with pytest.raises(rtml.SpecError, match="target="):
        rtml.from_sklearn(ColumnTransformer([("te", TargetEncoder(target_type="continuous", smooth=1.0,
                                                                  shuffle=False), ["c"])]))


def test_every_parameter_of_every_supported_estimator_is_decided():
    """A new scikit-learn parameter must be looked at: each one is translated, ignored because it
    cannot change the values (copy, dtype, sparse output, names), or refused."""
    decided = {
        "StandardScaler": {"copy", "with_mean", "with_std"},
        "MinMaxScaler": {"feature_range", "copy", "clip"},
        "RobustScaler": {"with_centering", "with_scaling", "quantile_range", "copy", "unit_variance"},
        "SimpleImputer": {"missing_values", "strategy", "fill_value", "copy", "add_indicator",
                          "keep_empty_features"},
        "OneHotEncoder": {"categories", "drop", "sparse_output", "dtype", "handle_unknown",
                          "min_frequency", "max_categories", "feature_name_combiner"},
        "OrdinalEncoder": {"categories", "dtype", "handle_unknown", "unknown_value",
                           "encoded_missing_value", "min_frequency", "max_categories"},
        "KBinsDiscretizer": {"n_bins", "encode", "strategy", "quantile_method", "dtype", "subsample",
                             "random_state"},
        "TargetEncoder": {"categories", "target_type", "smooth", "cv", "shuffle", "random_state"},
        "FunctionTransformer": {"func", "inverse_func", "validate", "accept_sparse", "check_inverse",
                                "feature_names_out", "kw_args", "inv_kw_args"},
    }
    for est in (StandardScaler, MinMaxScaler, RobustScaler, SimpleImputer, OneHotEncoder, OrdinalEncoder,
                KBinsDiscretizer, TargetEncoder, FunctionTransformer):
        assert set(est().get_params()) == decided[est.__name__], est.__name__


def test_unsupported_step_names_itself():
    ct = ColumnTransformer([("n", StandardScaler(with_mean=False), ["x"])])
    with pytest.raises(rtml.SpecError, match="StandardScaler"):
        rtml.from_sklearn(ct)


# --- the Pipeline adapter ---------------------------------------------------------------

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
    np.testing.assert_array_equal(est.transform(df), direct.transform(df, output="numpy"))


def test_estimator_fit_transform_is_out_of_fold_inside_a_pipeline():
    """Pipeline.fit calls fit_transform on the training rows: target encodings there must be out of
    fold (each row encoded without its own label), as Transforms.fit_transform promises."""
    df = _frame(n=200, seed=8)
    steps = [rtml.target_encode("c", "y", smooth=1.0, folds=4)]
    est = rtml.TransformsEstimator(steps)
    seen = {}

    class Spy(LogisticRegression):
        def fit(self, X, y):
            seen["X"] = np.array(X)
            return super().fit(X, y)

    make_pipeline(est, Spy()).fit(df.drop(columns=["y"]), df["y"])
    oof = rtml.Transforms(steps).fit_transform(df, output="numpy")
    in_sample = rtml.Transforms(steps).fit(df).transform(df, output="numpy")
    np.testing.assert_array_equal(seen["X"], oof)
    assert not np.array_equal(oof, in_sample)
    # and by hand: row i's encoding ignores its own fold
    folds = np.array_split(np.arange(len(df)), 4)
    for f in folds[:2]:
        rest = df.drop(index=df.index[f])
        mean_y = rest["y"].mean()
        for i in f[:5]:
            same = rest[rest["c"] == df["c"].iloc[i]]["y"]
            want = (same.sum() + 1.0 * mean_y) / (len(same) + 1.0)
            assert oof[i, 0] == pytest.approx(want, rel=1e-12)


def test_estimator_repr_params_and_set_output():
    from sklearn.base import clone

    est = rtml.TransformsEstimator([rtml.standard_scale("x")])
    assert repr(est) == "TransformsEstimator(steps=[rtml.standard_scale('x')])"
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(ValueError, match="unknown parameter"):
        est.set_params(stepz=[])
    df = _frame().assign(x=lambda d: d["x"].fillna(0.0))
    df.index = df.index + 1000
    out = est.set_output(transform="pandas").fit(df).transform(df)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["x"] and out.index.equals(df.index)


def test_pipeline_passthrough_steps_translate():
    from sklearn.pipeline import Pipeline

    df = _frame(seed=9)
    ct = ColumnTransformer([("n", Pipeline([("p", "passthrough"), ("i", SimpleImputer()), ("s", StandardScaler()),
                                            ("q", None)]), ["x"])])
    want = ct.fit_transform(df)[:, 0]
    tf = rtml.from_sklearn(ct).fit(df)
    _close(_ours(tf, df, "x"), want, "x")
