"""The serving call: window features + request fields + fitted transforms in one call,
bit-identical to backfill followed by Transforms.transform."""

from __future__ import annotations

import numpy as np
import pytest

import rtml
from serving_helpers import bits as _bits
from serving_helpers import events_and_requests


def _setup(seed: int):
    events, spine = events_and_requests(seed, 4_000, 60, 300, distance_null_rate=0.1, surge=True)
    fs = rtml.FeatureSet(
        entity="driver_id", timestamp="ts",
        features=[rtml.count(window="1h"), rtml.sum("fare", window="1h"), rtml.mean("fare", window="24h"),
                  rtml.quantile("fare", 0.9, window="24h"), rtml.time_since_last()],
    )
    tf = rtml.Transforms([
        rtml.ratio("fare_sum_1h", "count_1h", name="avg_fare_1h"),
        rtml.fill_null("fare_mean_24h", 0.0),
        rtml.standard_scale("fare_mean_24h"),
        rtml.impute("distance", "median"),
        rtml.log1p("distance"),
        rtml.one_hot("surge", min_frequency=10),
        rtml.is_null("time_since_last"),
        rtml.passthrough("fare_p90_24h"),
        rtml.hour_of_day("ts", tz="America/New_York", cyclical=True),
    ])
    return events, spine, fs, tf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vector_equals_backfill_then_transform(seed):
    events, spine, fs, tf = _setup(seed)
    train = fs.backfill(events, spine)
    tf.fit(train)
    offline = tf.transform(train)
    eng = fs.online()
    ev_ts = events.column("ts").to_numpy().astype(np.int64)  # sorted
    order = np.argsort(spine.column("ts").to_numpy().astype(np.int64), kind="stable")
    rows = spine.to_pylist()
    at_ns = spine.column("ts").to_numpy()
    done = 0
    for i in order:
        upto = int(np.searchsorted(ev_ts, int(at_ns[i].astype(np.int64)), side="left"))
        if upto > done:
            eng.ingest(events.slice(done, upto - done))
            done = upto
        r = rows[i]
        vec = eng.vector(r["driver_id"], tf, {"distance": r["distance"], "surge": r["surge"], "ts": at_ns[i]},
                         at=at_ns[i])
        assert vec.dtype == np.float64 and vec.shape == (len(tf.feature_names),)
        for j, name in enumerate(tf.feature_names):
            want = offline.column(name)[int(i)].as_py()
            got = float(vec[j])
            if want is None:
                assert np.isnan(got), (i, name, got)
            else:
                assert _bits(got) == _bits(want), (i, name, got, want)


def test_vector_reports_missing_request_field():
    events, spine, fs, tf = _setup(0)
    tf.fit(fs.backfill(events, spine))
    eng = fs.online()
    eng.ingest(events)
    with pytest.raises(rtml.SchemaError, match="distance"):
        eng.vector(1, tf, {"surge": "low", "ts": np.datetime64("2024-04-01T00:00", "ns")},
                   at=np.datetime64("2024-04-01T00:00", "ns"))
