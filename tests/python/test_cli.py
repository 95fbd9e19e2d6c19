"""The command line and the demo, run for real on small data."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rtml
from rtml import cli, demo


def test_demo_small_run_checks_parity(capsys):
    assert demo.run(n_events=3_000, n_keys=50, n_spine=300, seed=3) is True
    out = capsys.readouterr().out
    assert "300 / 300 rows identical" in out


def test_cli_backfill_writes_the_same_table_as_the_api(tmp_path):
    events = demo.make_events(2_000, 40, seed=5)
    spine = pa.table({
        "driver_id": events.column("driver_id").slice(0, 100),
        "ts": events.column("ts").slice(0, 100),
        "label": pa.array(range(100)),
    })
    fs = demo.feature_set()
    (tmp_path / "spec.json").write_text(fs.to_json())
    pq.write_table(events, tmp_path / "events.parquet")
    pq.write_table(spine, tmp_path / "spine.parquet")
    rc = cli.main([
        "backfill", "--spec", str(tmp_path / "spec.json"), "--events", str(tmp_path / "events.parquet"),
        "--spine", str(tmp_path / "spine.parquet"), "--out", str(tmp_path / "train.parquet"), "--quiet",
    ])
    assert rc == 0
    got = pq.read_table(tmp_path / "train.parquet")
    want = fs.backfill(events, spine)
    assert got.equals(want)


def test_cli_reports_bad_spec_without_traceback(tmp_path, capsys):
    (tmp_path / "spec.json").write_text('{"version": 99, "entity": "k", "timestamp": "t", "features": []}')
    rc = cli.main(["backfill", "--spec", str(tmp_path / "spec.json"), "--events", "x.parquet",
                   "--spine", "y.parquet", "--out", str(tmp_path / "o.parquet"), "--quiet"])
    assert rc == 2
    assert "SpecError" in capsys.readouterr().err


def test_progress_callback_sees_all_rows_and_can_stop_the_backfill():
    events = demo.make_events(5_000, 200, seed=1)
    spine = pa.table({"driver_id": events.column("driver_id"), "ts": events.column("ts")})
    fs = demo.feature_set()
    seen = []
    fs.backfill(events, spine, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop()

    with pytest.raises(Stop):
        fs.backfill(events, spine, progress=stop)


def test_ctrl_c_during_backfill_raises_keyboard_interrupt():
    events = demo.make_events(5_000, 200, seed=1)
    spine = pa.table({"driver_id": events.column("driver_id"), "ts": events.column("ts")})

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.feature_set().backfill(events, spine, progress=interrupt)
    assert isinstance(rtml.__version__, str)


# --- issue 19: CSV in, the format --out names, demo options, parity's late arrivals ------------

import datetime as dt  # noqa: E402

import pyarrow.csv as pacsv  # noqa: E402


def _small(tmp_path):
    events = demo.make_events(2_000, 40, seed=5)
    spine = pa.table({
        "driver_id": events.column("driver_id").slice(0, 100),
        "ts": events.column("ts").slice(0, 100),
    })
    fs = demo.feature_set()
    (tmp_path / "spec.json").write_text(fs.to_json())
    pq.write_table(events, tmp_path / "events.parquet")
    pq.write_table(spine, tmp_path / "spine.parquet")
    return fs, events, spine


def _run(tmp_path, out, events="events.parquet", spine="spine.parquet", extra=()):
    return cli.main(["backfill", "--spec", str(tmp_path / "spec.json"), "--events", str(tmp_path / events),
                     "--spine", str(tmp_path / spine), "--out", str(tmp_path / out), "--quiet", *extra])


@pytest.mark.parametrize("ext", [".csv", ".arrow", ".feather", ".parquet"])
def test_out_extension_picks_the_format(tmp_path, ext):
    fs, events, spine = _small(tmp_path)
    assert _run(tmp_path, "train" + ext) == 0
    want = fs.backfill(events, spine)
    path = tmp_path / ("train" + ext)
    if ext == ".csv":
        head = path.read_text().splitlines()[0]
        assert head.split(",")[:3] == ['"driver_id"', '"ts"', '"count_1h"']
        got = pacsv.read_csv(path)
        assert got.column("count_1h").to_pylist() == want.column("count_1h").to_pylist()
    elif ext == ".parquet":
        assert pq.read_table(path).equals(want)
    else:
        import pyarrow.feather as feather

        assert feather.read_table(path).equals(want)


def test_unknown_out_extension_is_refused_before_the_backfill(tmp_path, capsys):
    _small(tmp_path)
    calls = []
    orig = rtml.FeatureSet.backfill
    try:
        rtml.FeatureSet.backfill = lambda *a, **k: calls.append(1)  # must not be reached
        assert _run(tmp_path, "train.xlsx") == 2
        assert _run(tmp_path, "no_such_dir/train.parquet") == 2
    finally:
        rtml.FeatureSet.backfill = orig
    err = capsys.readouterr().err
    assert "unknown extension '.xlsx'" in err and "does not exist" in err
    assert calls == [] and not (tmp_path / "train.xlsx").exists()


def test_csv_input_empty_is_null_and_times_are_parsed(tmp_path):
    fs = rtml.FeatureSet("driver", "ts", [rtml.count("zone", window="1h"), rtml.distinct_count("zone", window="1h"),
                                          rtml.sum("fare", window="1h")])
    (tmp_path / "spec.json").write_text(fs.to_json())
    (tmp_path / "events.csv").write_text(
        "driver,ts,zone,fare\n"
        "d1,2024-03-01T10:00:00Z,z1,10\n"
        "d1,2024-03-01T11:10:00+01:00,,5\n"        # 10:10 UTC, zone empty = null
        "d1,2024-03-01T10:20:00Z,z2,\n"           # fare empty = null
        "NA,2024-03-01T10:20:00Z,z2,1\n"          # 'NA' is a key, not a null
    )
    (tmp_path / "spine.csv").write_text("driver,ts\nd1,2024-03-01 10:30:00Z\nNA,2024-03-01T10:30:00+00:00\n")
    assert _run(tmp_path, "out.parquet", "events.csv", "spine.csv") == 0
    got = pq.read_table(tmp_path / "out.parquet")
    assert got.column("zone_count_1h").to_pylist() == [2, 1]           # the null zone is not counted
    assert got.column("zone_distinct_count_1h").to_pylist() == [2, 1]  # and is not a category ""
    assert got.column("fare_sum_1h").to_pylist() == [15.0, 1.0]
    assert got.column("ts").type == pa.timestamp("ns", tz="UTC")       # an aware spine stays aware


def test_csv_times_mixing_zones_or_not_iso_are_refused_with_a_hint(tmp_path, capsys):
    fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h")])
    (tmp_path / "spec.json").write_text(fs.to_json())
    (tmp_path / "spine.csv").write_text("driver,ts\nd1,2024-03-01T10:30:00Z\n")
    (tmp_path / "mixed.csv").write_text("driver,ts\nd1,2024-03-01T10:00:00Z\nd1,2024-03-01 10:05:00\n")
    (tmp_path / "us.csv").write_text("driver,ts\nd1,03/01/2024 10:00\n")
    assert _run(tmp_path, "o.parquet", "mixed.csv", "spine.csv") == 2
    assert _run(tmp_path, "o.parquet", "us.csv", "spine.csv") == 2
    err = capsys.readouterr().err
    assert "mixes times with a zone" in err and "'ts'" in err
    assert "not ISO 8601" in err and "2024-03-01T10:15:00Z" in err


@pytest.mark.parametrize("args,msg", [
    (["--events", "0"], "between 1"), (["--keys", "-5"], "between 1"), (["--spine", "many"], "whole number"),
    (["--seed", "-1"], "between 0"),
])
def test_demo_validates_its_options(args, msg, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", *args])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_parity_tells_late_arrivals_from_mismatches(tmp_path, capsys):
    fs = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h"), rtml.sum("fare", window="1h")])
    (tmp_path / "spec.json").write_text(fs.to_json())
    t0 = dt.datetime(2024, 3, 1, 10, tzinfo=dt.timezone.utc)
    m = dt.timedelta(minutes=1)
    # the service sees e1, e2; serves row A (d1 @ 10:30) and B (d2 @ 10:30); e3 (d1, ts 10:20)
    # arrives after A was served; row C is served with a wrong value (a real mismatch)
    events = pa.table({
        "driver": ["d1", "d1", "d1", "d2"],
        "ts": pa.array([t0, t0 + 10 * m, t0 + 20 * m, t0 + 5 * m], pa.timestamp("us", "UTC")),
        "fare": [1.0, 2.0, 4.0, 8.0],
        "arrived": pa.array([None, t0 + 11 * m, t0 + 40 * m, t0 + 6 * m], pa.timestamp("us", "UTC")),
    })
    eng = fs.online()
    for i in (0, 3, 1):  # in arrival order; e3 has not arrived when the rows are served
        assert eng.ingest(events.slice(i, 1).drop_columns(["arrived"])) == 1
    a = eng.get("d1", at=t0 + 30 * m)
    b = eng.get("d2", at=t0 + 30 * m)
    log = pa.table({
        "key": ["d1", "d2", "d2"],
        "at": pa.array([t0 + 30 * m] * 3, pa.timestamp("ns", "UTC")),
        "names": [fs.feature_names] * 3,
        "values": [[float(a["count_1h"]), a["fare_sum_1h"]], [float(b["count_1h"]), b["fare_sum_1h"]],
                   [float(b["count_1h"]), b["fare_sum_1h"] + 1.0]],
        "served_at": pa.array([t0 + 30 * m] * 3, pa.timestamp("us", "UTC")),
    })
    pq.write_table(events, tmp_path / "events.parquet")
    (tmp_path / "log").mkdir()
    pq.write_table(log, tmp_path / "log" / "part-1.parquet")
    base = ["parity", "--spec", str(tmp_path / "spec.json"), "--events", str(tmp_path / "events.parquet"),
            "--log", str(tmp_path / "log")]
    # without arrival times: A's two features and C's sum are mismatches
    r = rtml.parity.check(fs, events, tmp_path / "log")
    assert (r.mismatches, r.arrived_late) == (3, 0)
    # with them: A is 'arrived late', C stays a mismatch
    r = rtml.parity.check(fs, events, tmp_path / "log", arrival="arrived")
    assert (r.mismatches, r.arrived_late) == (1, 2)
    assert r.features["fare_sum_1h"].examples[0]["row"] == 2
    assert cli.main([*base, "--arrival", "arrived", "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "1 served values differ (2 more differ only because an event arrived late)" in out
    # renamed key / at columns
    pq.write_table(log.rename_columns(["driver", "when", "names", "values", "served_at"]),
                   tmp_path / "log" / "part-1.parquet")
    assert cli.main([*base, "--key", "driver", "--at", "when", "--quiet"]) == 1
    assert cli.main([*base, "--quiet"]) == 2
    assert "no column 'key'" in capsys.readouterr().err
