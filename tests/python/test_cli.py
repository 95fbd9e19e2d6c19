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
