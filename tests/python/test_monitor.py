"""rtml.monitor (issue 16): every metric against an independent computation (scipy.stats /
scipy.spatial on the same binned representation, PSI by hand), the report against per-period
comparisons, the online monitor == the batch report bit for bit in any arrival order within the
lateness, triggers that fire once on a shift and never on a stable replay, typed errors."""

from __future__ import annotations

import datetime as dt
import json
import math
import pickle

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

import rtml
import rtml.monitor as rm

DAY = 86_400 * 10**9


# ------------------------------------------------------------------ independent computations


def ref_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """The documented rule: values at ranks floor(i n / bins), above the minimum, no repeats."""
    v = np.sort(values[~np.isnan(values)])
    n = len(v)
    out: list[float] = []
    for i in range(1, bins):
        e = float(v[(i * n) // bins])
        if e > v[0] and (not out or e > out[-1]):
            out.append(e)
    return np.array(out)


def binned(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    x = x[~np.isnan(x)]
    return np.searchsorted(edges, x, side="right")


def counts_of(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.bincount(binned(edges, x), minlength=len(edges) + 1).astype(float)


def psi_by_hand(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    total = 0.0
    for a, b in zip(p / p.sum(), q / q.sum()):
        a, b = max(a, eps), max(b, eps)
        total += (b - a) * math.log(b / a)
    return total


def representatives(edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    bounds = np.concatenate([[lo], edges, [hi]])
    return (bounds[:-1] + bounds[1:]) / 2


def chi2_scipy(p: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    keep = (p + q) > 0
    table = np.vstack([p[keep], q[keep]])
    if table.shape[1] < 2:
        return 0.0, 1.0
    res = stats.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue)


def close(a: float, b: float, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


# ------------------------------------------------------------------ reference


def test_reference_fit_numeric_categorical_and_inputs() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    x[::50] = np.nan
    k = rng.integers(0, 6, size=5000).astype(float)  # discrete: fewer bins remain
    c = rng.choice(["a", "b", "c", "d"], p=[0.5, 0.3, 0.15, 0.05], size=5000).astype(object)
    c[::100] = None
    t = pa.table({"x": x, "k": k, "c": pa.array(list(c), type=pa.string()), "s": ["z"] * 5000})
    ref = rm.Reference.fit(t, ["x", "k", "c"], max_categories=3)
    assert ref.kinds == {"x": "numeric", "k": "numeric", "c": "categorical"}
    assert ref.rows == 5000
    col = ref.column("x")
    np.testing.assert_array_equal(col["edges"], ref_edges(x, 20))
    np.testing.assert_array_equal(col["counts"], counts_of(ref_edges(x, 20), x))
    assert col["nulls"] == 100
    assert (col["min"], col["max"]) == (np.nanmin(x), np.nanmax(x))
    assert ref.column("k")["edges"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    cc = ref.column("c")
    assert cc["categories"] == ["a", "b", "c"]
    vals = pd.Series(c).dropna()
    assert cc["counts"] == [*(int((vals == v).sum()) for v in "abc"), int((vals == "d").sum())]
    assert cc["nulls"] == 50
    # pandas / polars / dictionary-encoded input: the same reference
    df = t.to_pandas()
    assert rm.Reference.fit(df, ["x", "k", "c"], max_categories=3) == ref
    assert rm.Reference.fit(pl.from_arrow(t), ["x", "k", "c"], max_categories=3) == ref
    dict_t = t.set_column(2, "c", t.column("c").dictionary_encode())
    assert rm.Reference.fit(dict_t, ["x", "k", "c"], max_categories=3) == ref
    # default columns: every number and string column except `exclude`
    assert rm.Reference.fit(t, exclude=["s"]).columns == ["x", "k", "c"]


def test_reference_document_round_trip_and_refusals() -> None:
    fs = rtml.FeatureSet("k", "ts", [rtml.count(window="1h")])
    other = rtml.FeatureSet("k", "ts", [rtml.count(window="2h")])
    ref = rm.Reference.fit(pa.table({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]}), feature_set=fs)
    text = ref.to_json()
    doc = json.loads(text)
    assert doc["version"] == rm.REFERENCE_VERSION == 1
    assert rm.Reference.from_json(text, feature_set=fs) == ref
    assert pickle.loads(pickle.dumps(ref)) == ref
    with pytest.raises(rtml.SpecError, match="feature_set"):
        rm.Reference.from_json(text, feature_set=other)
    doc["version"] = 2
    with pytest.raises(rtml.SpecError, match="newer"):
        rm.Reference.from_json(json.dumps(doc))
    doc["version"] = 1
    doc["columns"][0]["counts"].append(1)
    with pytest.raises(rtml.SpecError, match="counts"):
        rm.Reference.from_json(json.dumps(doc))
    with pytest.raises(rtml.SpecError):
        rm.Reference.from_json("{")


def test_reference_bad_input_is_typed() -> None:
    with pytest.raises(rtml.SchemaError, match="'x'.*finite"):
        rm.Reference.fit(pa.table({"x": [1.0, math.inf]}))
    with pytest.raises(rtml.SchemaError, match="'y'"):
        rm.Reference.fit(pa.table({"x": [1.0]}), ["y"])
    with pytest.raises(rtml.SchemaError, match="'d'"):
        rm.Reference.fit(pa.table({"d": pa.array([dt.date(2024, 1, 1)])}), ["d"])
    with pytest.raises(rtml.SpecError, match="bins"):
        rm.Reference.fit(pa.table({"x": [1.0]}), bins=0)
    ref = rm.Reference.fit(pa.table({"x": [1.0, 2.0], "c": ["a", "b"]}))
    with pytest.raises(rtml.SchemaError, match="'x'.*numbers"):
        ref.compare(pa.table({"x": ["a"], "c": ["a"]}))
    with pytest.raises(rtml.SchemaError, match="'c'.*strings"):
        ref.compare(pa.table({"x": [1.0], "c": [1.0]}))
    with pytest.raises(rtml.SchemaError, match="'c'.*missing"):
        ref.compare(pa.table({"x": [1.0]}))


# ------------------------------------------------------------------ metrics vs scipy


@pytest.mark.parametrize(
    "shift, scale, n_cur, seed",
    [
        (0.0, 1.0, 4000, 1),
        (0.3, 1.0, 2000, 2),
        (1.5, 2.0, 3000, 3),
        (0.0, 0.2, 500, 4),
        (-4, 1, 300, 5),
    ],
)
def test_numeric_metrics_against_scipy_and_psi_by_hand(
    shift: float, scale: float, n_cur: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    xr = rng.normal(size=20_000)
    xc = rng.normal(shift, scale, size=n_cur)
    xc[::7] = np.nan
    ref = rm.Reference.fit(pa.table({"x": xr}))
    m = ref.compare(pa.table({"x": xc}))["x"]
    edges = ref_edges(xr, 20)
    p, q = counts_of(edges, xr), counts_of(edges, xc)
    assert m["rows"] == n_cur and m["non_null"] == q.sum()
    assert m["null_rate"] == np.isnan(xc).sum() / n_cur
    valid = xc[~np.isnan(xc)]
    assert m["out_of_range_rate"] == ((valid < xr.min()) | (valid > xr.max())).mean()
    assert m["unseen_rate"] is None
    assert close(m["psi"], psi_by_hand(p, q))
    assert close(m["js"], float(jensenshannon(p, q, base=2)), atol=1e-7)
    r = representatives(edges, xr.min(), xr.max())
    assert close(m["wasserstein"], stats.wasserstein_distance(r, r, p, q))
    ks = stats.ks_2samp(binned(edges, xr), binned(edges, xc))
    assert close(m["ks"], float(ks.statistic))
    en = p.sum() * q.sum() / (p.sum() + q.sum())
    assert close(m["ks_pvalue"], float(stats.kstwobign.sf(math.sqrt(en) * m["ks"])), atol=1e-14)
    chi2, pv = chi2_scipy(p, q)
    assert close(m["chi2"], chi2)
    assert close(m["chi2_pvalue"], pv, atol=1e-14)


def test_categorical_metrics_against_scipy() -> None:
    rng = np.random.default_rng(9)
    cats = np.array(["a", "b", "c", "d", "e"])
    cr = rng.choice(cats, p=[0.4, 0.3, 0.2, 0.1, 0.0], size=10_000)
    cc = rng.choice(np.array([*cats, "new"]), p=[0.2, 0.3, 0.2, 0.1, 0.0, 0.2], size=3000)
    ref = rm.Reference.fit(pa.table({"c": cr}))
    vocab = ref.column("c")["categories"]
    assert vocab == ["a", "b", "c", "d"]
    m = ref.compare(pa.table({"c": cc}))["c"]

    def cnt(v: np.ndarray) -> np.ndarray:
        return np.array(
            [*(float((v == c).sum()) for c in vocab), float((~np.isin(v, vocab)).sum())]
        )

    p, q = cnt(cr), cnt(cc)
    assert m["unseen_rate"] == (cc == "new").mean()
    assert m["out_of_range_rate"] is None and m["ks"] is None and m["wasserstein"] is None
    assert close(m["psi"], psi_by_hand(p, q))
    assert close(m["js"], float(jensenshannon(p, q, base=2)), atol=1e-7)
    chi2, pv = chi2_scipy(p, q)
    assert close(m["chi2"], chi2) and close(m["chi2_pvalue"], pv, atol=1e-14)


def test_null_metrics() -> None:
    ref = rm.Reference.fit(pa.table({"x": [1.0, 2.0, 3.0]}))
    m = ref.compare(pa.table({"x": pa.array([None, None], type=pa.float64())}))["x"]
    assert m["null_rate"] == 1.0
    assert all(m[k] is None for k in rm.METRICS if k != "null_rate")
    m = ref.compare(pa.table({"x": pa.array([], type=pa.float64())}))["x"]
    assert m["rows"] == 0 and all(m[k] is None for k in rm.METRICS)


# ------------------------------------------------------------------ batch report


def frame(n: int, seed: int, tz: str | None = "UTC") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2024-03-01", tz=tz)
    return pd.DataFrame(
        {
            "ts": t0 + pd.to_timedelta(rng.integers(0, 5 * DAY, size=n), unit="ns"),
            "x": rng.normal(size=n) + np.linspace(0, 2, n),
            "c": rng.choice(["a", "b", "c", None], size=n),
        }
    )


def test_report_by_day_equals_compare_per_day() -> None:
    train, live = frame(5000, 1), frame(3000, 2)
    ref = rm.Reference.fit(train, exclude=["ts"])
    rep = rm.report(ref, live, by="1d", timestamp="ts")
    assert rep.schema.field("period_start").type == pa.timestamp("ns", tz="UTC")
    assert rep.column_names[:5] == ["period_start", "column", "kind", "rows", "non_null"]
    df = rep.to_pandas()
    days = live["ts"].dt.floor("1D")
    assert sorted(df["period_start"].unique()) == sorted(days.unique())
    for _, row in df.iterrows():
        part = live[days == row["period_start"]]
        want = ref.compare(part)[row["column"]]
        for k in rm.METRICS:
            got = row[k]
            assert (want[k] is None and pd.isna(got)) or want[k] == got, (k, want[k], got)
    # one period of every row without by=
    whole = rm.report(ref, live).to_pylist()
    assert [r["column"] for r in whole] == ["x", "c"]
    assert whole[0]["psi"] == ref.compare(live)["x"]["psi"]
    with pytest.raises(rtml.SpecError, match="by"):
        rm.report(ref, live, by="1d")


def test_plot_heatmap() -> None:
    import matplotlib

    matplotlib.use("Agg")
    ref = rm.Reference.fit(frame(2000, 1), exclude=["ts"])
    ax = rm.plot(rm.report(ref, frame(2000, 2), by="1d", timestamp="ts"), "psi")
    assert ax.get_title() == "psi by column and period"
    assert ax.images[0].get_array().shape == (2, 5)


# ------------------------------------------------------------------ online == batch


def _eq(a: object, b: object) -> bool:
    return a == b or (
        isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    )


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 500),
            st.one_of(st.none(), st.floats(-3, 13, allow_nan=False)),
            st.sampled_from(["a", "b", "q", None]),
        ),
        min_size=1,
        max_size=200,
    ),
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 30),
)
def test_online_equals_report_in_any_order_within_lateness(
    rows: list[tuple[int, float | None, str | None]], seed: int, batch: int
) -> None:
    rng = np.random.default_rng(seed)
    ref = rm.Reference.fit(
        pa.table({"x": np.arange(100) / 10.0, "c": ["a", "b", "a", "c"] * 25}), bins=8
    )
    lateness, window = 40, 50
    rows.sort(key=lambda r: r[0])
    key = [r[0] + rng.random() * (lateness - 1) for r in rows]
    arrived = [rows[i] for i in np.argsort(key, kind="stable")]

    def table(part: list[tuple[int, float | None, str | None]]) -> pa.Table:
        return pa.table(
            {
                "t": pa.array([r[0] for r in part], type=pa.int64()),
                "x": pa.array([r[1] for r in part], type=pa.float64()),
                "c": pa.array([r[2] for r in part], type=pa.string()),
            }
        )

    def run(
        order: list[tuple[int, float | None, str | None]], late: int
    ) -> tuple[rm.Monitor, list[tuple[str, int, float]]]:
        trig = rm.Trigger("psi", "x", above=0.5, below=0.2)
        mon = rm.Monitor(ref, window=window, allowed_lateness=late, timestamp="t", triggers=[trig])
        events = []
        for i in range(0, len(order), batch):
            events += mon.update(table(order[i : i + batch]))
        events += mon.advance(10**6)
        return mon, [(e.kind, e.window_end, e.value) for e in events]

    mon, shuffled = run(arrived, lateness)
    assert mon.stats()["rows_late"] == 0
    assert run(rows, lateness)[1] == shuffled
    # a monitor that closes nothing holds every window: each equals its report period
    held, _ = run(arrived, 10**9)
    rep = rm.report(ref, table(rows), by=window, timestamp="t").to_pylist()
    assert rep
    for row in rep:
        online = held.values(at=row["period_start"] + window)[row["column"]]
        for k in ("rows", "non_null", *rm.METRICS):
            want = float("nan") if row[k] is None else row[k]
            got = float("nan") if online[k] is None else online[k]
            assert _eq(got, want), (k, got, want)


def test_online_state_is_bounded_and_late_rows_are_counted() -> None:
    ref = rm.Reference.fit(pa.table({"x": np.arange(1000.0)}))
    mon = rm.Monitor(ref, window="1h", step="10m", allowed_lateness="5m", timestamp="t")
    t0 = 1_700_000_000 * 10**9
    panes = 0
    for k in range(300):  # 300 arrivals, one every 2 minutes: 10 hours
        ts = t0 + k * 120 * 10**9 + np.arange(100) * 10**9
        mon.update({"t": ts, "x": np.arange(100.0)})
        panes = max(panes, mon.stats()["panes"])
    assert panes <= (60 + 5) // 10 + 2
    mon.update({"t": [t0], "x": [1.0]})
    assert mon.stats()["rows_late"] == 1


# ------------------------------------------------------------------ triggers


def _replay(shift_at: int | None, n_steps: int = 600) -> tuple[list[rm.TriggerEvent], rm.Trigger]:
    rng = np.random.default_rng(5)
    ref = rm.Reference.fit(pa.table({"x": rng.normal(size=50_000)}))
    calls: list[rm.TriggerEvent] = []
    trig = rm.Trigger(
        "psi",
        "x",
        above=0.25,
        below=0.1,
        for_="10m",
        cooldown="1h",
        min_samples=200,
        callback=calls.append,
    )
    mon = rm.Monitor(
        ref, window="30m", step="5m", allowed_lateness="1m", timestamp="t", triggers=[trig]
    )
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    events = []
    for k in range(n_steps):  # one arrival per minute, 100 rows
        shifted = shift_at is not None and k >= shift_at
        x = rng.normal(1.0 if shifted else 0.0, size=100)
        ts = t0 + pd.Timedelta(minutes=k) + pd.to_timedelta(np.arange(100) * 600, unit="ms")
        events += mon.update(pd.DataFrame({"t": ts, "x": x}))
    events += mon.advance(t0 + pd.Timedelta(days=1))
    assert events == calls
    return events, trig


def test_trigger_fires_once_on_a_shift_and_never_on_a_stable_replay() -> None:
    stable, trig = _replay(None)
    assert stable == []
    assert trig.counters["evaluated"] >= 100 and trig.counters["entered"] == 0
    shifted, trig = _replay(300)
    assert [e.kind for e in shifted] == ["enter"]
    e = shifted[0]
    start = pd.Timestamp("2024-01-01", tz="UTC").value + 300 * 60 * 10**9
    assert start < e.window_end <= start + 40 * 60 * 10**9
    assert e.window_end - e.window_start == 30 * 60 * 10**9
    assert e.value > 0.25 and e.column == "x" and e.metric == "psi"
    assert trig.alerting and trig.counters["entered"] == 1


def test_trigger_leaves_once_and_null_windows_never_reach_it() -> None:
    ref = rm.Reference.fit(pa.table({"x": np.arange(100.0)}))
    seen: list[tuple[str, int]] = []
    trig = rm.Trigger(
        "out_of_range_rate", "x", above=0.5, callback=lambda e: seen.append((e.kind, e.window_end))
    )
    mon = rm.Monitor(ref, window=10, timestamp="t", triggers=[trig])
    mon.update({"t": [0, 1], "x": [500.0, 600.0]})  # window [0, 10): all out of range
    mon.update({"t": [10, 11], "x": [None, None]})  # [10, 20): only nulls: a null metric
    mon.update({"t": [20], "x": [5.0]})  # [20, 30): back in range
    assert mon.values(at=20)["x"]["out_of_range_rate"] is None
    assert mon.values(at=20)["x"]["null_rate"] == 1.0
    mon.update({"t": [35], "x": [5.0]})
    assert seen == [("enter", 10), ("leave", 30)]
    assert trig.counters == {"evaluated": 2, "skipped": 1, "entered": 1, "left": 1, "suppressed": 0}


def test_monitor_bad_input_is_typed_and_changes_nothing() -> None:
    ref = rm.Reference.fit(pa.table({"x": np.arange(10.0)}))
    mon = rm.Monitor(ref, window="1h", timestamp="t")
    with pytest.raises(rtml.SpecError, match="metric"):
        rm.Trigger("nope", "x", above=1)
    with pytest.raises(rtml.SpecError, match="column"):
        mon.add_trigger(rm.Trigger("psi", "y", above=1))
    with pytest.raises(rtml.SpecError, match="step"):
        rm.Monitor(ref, window="1h", step="7m")
    with pytest.raises(rtml.SpecError, match="at most 10000"):
        rm.Monitor(ref, window="1d", step="1s")
    with pytest.raises(rtml.SchemaError, match="'x'"):
        mon.update({"t": [dt.datetime(2024, 1, 1)], "y": [1.0]})
    assert mon.stats()["rows_applied"] == 0 and mon.watermark is None
    mon.update({"t": [dt.datetime(2024, 1, 1)], "x": [1.0]})
    with pytest.raises(rtml.SchemaError, match="naive and tz-aware"):
        mon.update({"t": [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)], "x": [1.0]})
    with pytest.raises(rtml.QueryError, match="multiples"):
        mon.values(at=dt.datetime(2024, 1, 1, 0, 30))
    assert mon.values(at=dt.datetime(2024, 1, 1, 1))["x"]["rows"] == 1


def test_checkpoint_continues_exactly_and_refuses_foreign_bytes() -> None:
    rng = np.random.default_rng(8)
    ref = rm.Reference.fit(
        pa.table({"x": rng.normal(size=5000), "c": rng.choice(["a", "b"], size=5000)})
    )

    def monitor() -> rm.Monitor:
        trig = rm.Trigger("psi", "x", above=0.3, below=0.1, for_=20, cooldown=100, min_samples=20)
        return rm.Monitor(
            ref, window=40, step=10, allowed_lateness=15, timestamp="t", triggers=[trig]
        )

    batches = []
    for k in range(60):
        shift = 2.0 if 20 <= k < 40 else 0.0
        t = pa.array(k * 5 + rng.integers(0, 12, size=50), type=pa.timestamp("ns", tz="UTC"))
        batches.append(
            pa.table(
                {
                    "t": t,
                    "x": rng.normal(shift, 1, size=50),
                    "c": rng.choice(["a", "b", "z"], size=50),
                }
            )
        )
    a = monitor()
    for b in batches[:30]:
        a.update(b)
    b_ = rm.Monitor.from_bytes(a.to_bytes())
    c = pickle.loads(pickle.dumps(a))
    assert (
        b_.triggers[0].counters == a.triggers[0].counters
        and b_.triggers[0].alerting == a.triggers[0].alerting
    )
    got = {"a": [], "b": [], "c": []}
    for b in batches[30:]:
        for name, m in (("a", a), ("b", b_), ("c", c)):
            got[name] += [(e.kind, e.window_end, e.value) for e in m.update(b)]
    assert got["a"] == got["b"] == got["c"]
    assert [k for k, _, _ in got["a"]] == ["leave"]  # entered before the checkpoint
    assert a.stats() == b_.stats() == c.stats()
    end = a.stats()["closed_until"]
    assert a.values(at=end) == b_.values(at=end)
    assert b_.triggers[0].counters == a.triggers[0].counters
    with pytest.raises(rtml.SchemaError, match="naive and tz-aware"):  # the clock is restored
        b_.update({"t": [dt.datetime(2024, 1, 1)], "x": [1.0], "c": ["a"]})
    data = a.to_bytes()
    for bad in (b"", data[:-5], data.replace(b'"version":1', b'"version":9'), b"x" + data):
        with pytest.raises(rtml.SnapshotError):
            rm.Monitor.from_bytes(bad)
