"""The notebook's figures, drawn from its own plotting code on a small table: the rolling-feature
plot draws its step lines in time order (the training table is in spine order, not time order,
and drawing it as given zigzags back and forth across the day)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "flight_delays.ipynb"
TZ = "America/New_York"


def _plot_function():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    src = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    (code,) = [s for s in src if s.startswith("def plot_rolling_delay(")]
    ns = {"pd": pd, "plt": plt, "mdates": mdates, "np": np, "TZ": TZ}
    exec(compile(code, str(NOTEBOOK), "exec"), ns)  # noqa: S102
    return ns["plot_rolling_delay"]


def _tables(seed=0, n=300):
    rng = np.random.default_rng(seed)
    day = pd.Timestamp("2013-07-22 05:00", tz=TZ).tz_convert("UTC")
    sched = day + pd.to_timedelta(rng.integers(0, 18 * 60, n), unit="m")
    delay = rng.gamma(1.5, 20.0, n) - 5
    df = pd.DataFrame({
        "origin": rng.choice(["EWR", "JFK"], n),
        "sched_dep": sched,
        "origin_delay_mean_1h": rng.normal(20, 10, n),
        "origin_delay_mean_3h": rng.normal(20, 5, n),
        "origin_delay_p90_1h": rng.normal(60, 10, n),
    })
    dep = pd.DataFrame({"origin": df.origin, "ts": sched + pd.to_timedelta(np.clip(delay, 0, None), unit="m"),
                        "dep_delay": delay})
    return df.sample(frac=1.0, random_state=seed), dep.sample(frac=1.0, random_state=seed + 1)


def test_rolling_delay_lines_are_drawn_in_time_order():
    plot = _plot_function()
    df, dep = _tables()
    assert not df.sched_dep.is_monotonic_increasing  # the input is shuffled, as the spine order is
    fig = plot(df, dep, "EWR", "2013-07-22")
    try:
        (ax,) = fig.axes
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == ["origin_delay_mean_1h", "origin_delay_mean_3h",
                                                    "origin_delay_p90_1h"]
        want = df[df.origin == "EWR"].sort_values("sched_dep", kind="stable")
        for ln in lines:
            x = mdates.date2num(ln.get_xdata()) if not np.issubdtype(np.asarray(ln.get_xdata()).dtype, np.number) \
                else np.asarray(ln.get_xdata(), float)
            assert len(x) == len(want)
            assert np.all(np.diff(x) >= 0), f"{ln.get_label()}: x goes backwards"
            # and each y belongs to its own x (the sort moved whole rows)
            np.testing.assert_array_equal(np.asarray(ln.get_ydata(), float), want[ln.get_label()].to_numpy())
        assert "EWR" in ax.get_title() and ax.get_xlabel().startswith("local time")
    finally:
        plt.close(fig)
