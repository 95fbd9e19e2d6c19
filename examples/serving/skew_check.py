"""The flights service's continuous train/serve skew check (issue 16; docs/monitoring.md, "Skew
in the flights service"): the streaming form of `rtml parity`, run by the service's log follower.

Per feature set, a second engine (the *skew engine*) follows the write-ahead log's events in log
order, exactly as the serving engine does (one record = one arrival), and an `rtml.monitor.Skew`
takes the served rows of the log. A row is sampled by whole keys (``hash(key) % 100 < rate``);
once the skew engine's watermark passes ``at + allowed_lateness`` (the serving feature set's: no
event before `at` can change the row any more), the row is recomputed with
``engine.get(key, at)`` and compared with what was served, feature by feature, bit for bit.

The skew engine starts where the serving engines start: the notebook's warm state, i.e. the
events before the split (``departures_history.parquet`` / ``weather_history.parquet``, checked
against the warm snapshot's event count and watermark), but with a longer allowed lateness: the
serving lateness plus the service's max-ahead bound. The door refuses an event further ahead of
the watermark than that bound, so one log record moves the watermark at most that far, and a
row that became final in that record is still answerable (`get(key, at)` needs ``at >=
watermark - allowed_lateness``). The skew engines and the monitors' state (counters, pending
rows, the sample of mismatches) are part of the follower's checkpoint (state/follower.json):
a restart, SIGKILL included, replays the log after it, so no pending row is lost and none is
counted twice.

Test-only: ``RTML_TEST_PERTURB_FEATURE=<feature>`` makes the serving path answer that feature
one ulp above the engine's value (a deliberately skewed serving path, for the end-to-end test of
the check); never set it in production.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

import rtml
import rtml.monitor as rm
from rtml.learn import _duration_ns

log = logging.getLogger("rtml.serving.skew")

PERTURB_VAR = "RTML_TEST_PERTURB_FEATURE"


def perturb(raw: dict[str, Any]) -> dict[str, Any]:
    """The serving path's features with the test-only perturbation applied (see the module
    docstring); unchanged without ``RTML_TEST_PERTURB_FEATURE``."""
    name = os.environ.get(PERTURB_VAR)
    if not name or raw.get(name) is None:
        return raw
    return {**raw, name: math.nextafter(float(raw[name]), math.inf)}


def _lateness_ns(fs: rtml.FeatureSet) -> int:
    return _duration_ns(fs.allowed_lateness or 0, "allowed_lateness")


class _Check:
    def __init__(self, name: str, events: str, engine: rtml.OnlineEngine, skew: rm.Skew) -> None:
        self.name, self.events, self.engine, self.skew = name, events, engine, skew
        self.ingest_errors = 0
        self.observe_errors = 0  # (counts of this process, not checkpointed)


class SkewCheck:
    """One skew engine and one `rtml.monitor.Skew` per feature set, fed in log order by the
    service's follower (`events`, `served`); `checkpoint()` / `state` for the follower's
    checkpoint; `summary()` for GET /monitor/skew; `prometheus()` for /metrics.

    `feature_sets`: ``[(name, FeatureSet, events kind)]``; `rate`: percent of keys checked;
    `max_ahead_ns`: the service's bound on how far ahead of the watermark an event may be
    (the skew engines' extra lateness); `state`: the follower checkpoint's ``"skew"`` entry
    (None: start from the notebook's warm state)."""

    def __init__(self, artifacts: Path, feature_sets: list[tuple[str, rtml.FeatureSet, str]], rate: int,
                 max_ahead_ns: int, state: Optional[dict] = None) -> None:
        self.rate = rate
        self.checks: dict[str, _Check] = {}
        self.restored_pending: Optional[int] = None
        for name, fs, events in feature_sets:
            lateness = _lateness_ns(fs)
            doc = json.loads(fs.to_json())
            doc["allowed_lateness"] = f"{lateness + max_ahead_ns}ns"
            skew_fs = rtml.FeatureSet.from_json(json.dumps(doc))
            if state is not None:
                engine = rtml.OnlineEngine.from_bytes(base64.b64decode(state[name]["engine"]), feature_set=skew_fs)
                skew = rm.Skew.from_state(engine, state[name]["skew"])
                if skew.rate != rate:
                    log.info("skew check %s: rate %d%% (was %d%%) from now on", name, rate, skew.rate)
                    skew.rate = rate
            else:
                engine = self._warm(artifacts, name, events, skew_fs)
                skew = rm.Skew(engine, rate=rate, lateness=lateness, sample_size=20)
            self.checks[name] = _Check(name, events, engine, skew)
        if state is not None:
            self.restored_pending = sum(c.skew.pending for c in self.checks.values())

    @staticmethod
    def _warm(artifacts: Path, name: str, events: str, skew_fs: rtml.FeatureSet) -> rtml.OnlineEngine:
        """The notebook's warm state with the skew engine's lateness: the history the warm
        snapshot was built from (checked against the snapshot), or empty without a snapshot."""
        snap = artifacts / "warm" / f"{name}.snap"
        if not snap.exists():
            return skew_fs.online()
        history = artifacts / f"{events}_history.parquet"
        if not history.exists():
            raise SystemExit(f"skew check: {history} not found (the events behind {snap}); run the notebook "
                             "again or start with --skew-rate 0")
        engine = skew_fs.online(history=pq.read_table(history))
        want = rtml.OnlineEngine.restore(str(snap)).stats()
        got = engine.stats()
        for k in ("events_ingested", "late_events_dropped", "keys", "watermark"):
            if want[k] != got[k]:
                raise SystemExit(f"skew check: {history} is not the history of {snap} ({k}: {got[k]} != {want[k]}); "
                                 "run the notebook again or start with --skew-rate 0")
        return engine

    # -- fed by the follower, in log order
    def events(self, kind: str, table: pa.Table) -> None:
        """One log record of events (one arrival), as the serving engines applied it."""
        for c in self.checks.values():
            if c.events != kind:
                continue
            try:
                c.engine.ingest(table)
            except rtml.RtmlError:  # (never stop the follower; counted, this process only)
                c.ingest_errors += 1
                log.exception("skew check %s: ingest failed", c.name)
            c.skew.poll()

    def served(self, table: pa.Table) -> None:
        """One served record: a row per feature set (key, at, names, values)."""
        ats = table.column("at").combine_chunks()  # timestamp[ns, UTC]
        for i, (name, key, names, values) in enumerate(zip(
                table.column("feature_set").to_pylist(), table.column("key").to_pylist(),
                table.column("names").to_pylist(), table.column("values").to_pylist())):
            c = self.checks.get(name)
            if c is None:
                continue
            before = c.skew.mismatched
            try:
                c.skew.observe(pa.table({"key": pa.array([key], pa.string()), "at": ats.slice(i, 1),
                                         **{n: pa.array([v], pa.float64()) for n, v in zip(names, values)}}))
            except rtml.RtmlError:  # (a row the check cannot read; never stop the follower)
                c.observe_errors += 1
                log.exception("skew check %s: a served row could not be checked", c.name)
            self._warn(c, before)

    def _warn(self, c: _Check, before: int) -> None:
        if c.skew.mismatched > before and c.skew.mismatches:
            m = c.skew.mismatches[-1]
            log.warning("skew: %s key %r at %s served %s", c.name, m.key, m.at, m.features)

    # -- checkpoint (the follower's), state
    def checkpoint(self) -> dict:
        return {name: {"engine": base64.b64encode(c.engine.to_bytes()).decode(), "skew": c.skew.to_state()}
                for name, c in self.checks.items()}

    def summary(self) -> dict:
        """GET /monitor/skew: per feature set, the monitor's counters and the latest mismatches."""
        out: dict[str, Any] = {"rate": self.rate, "restored_pending": self.restored_pending, "feature_sets": {}}
        for name, c in self.checks.items():
            s = c.skew.stats()
            s["mismatched"] = c.skew.mismatched
            s["ingest_errors"] = c.ingest_errors
            s["observe_errors"] = c.observe_errors
            s["watermark"] = c.engine.watermark
            s["mismatches"] = [{"key": m.key, "at": m.at, "features": m.features} for m in c.skew.mismatches]
            out["feature_sets"][name] = s
        out["checked"] = sum(c.skew.rows_checked for c in self.checks.values())
        out["mismatched"] = sum(c.skew.mismatched for c in self.checks.values())
        return out

    def prometheus(self) -> list[str]:
        """rtml_skew_* samples labelled by feature set (and feature)."""
        out = ["# HELP rtml_skew_rows_total Served rows seen / sampled / checked / expired / dropped by the skew check.",
               "# TYPE rtml_skew_rows_total counter"]
        for name, c in self.checks.items():
            for st in ("seen", "sampled", "checked", "expired", "dropped"):
                out.append(f'rtml_skew_rows_total{{feature_set="{name}",state="{st}"}} {getattr(c.skew, "rows_" + st)}')
        out += ["# HELP rtml_skew_pending Sampled served rows waiting for the watermark (at + allowed_lateness).",
                "# TYPE rtml_skew_pending gauge"]
        out += [f'rtml_skew_pending{{feature_set="{name}"}} {c.skew.pending}' for name, c in self.checks.items()]
        for what in ("checked", "mismatched"):
            out += [f"# HELP rtml_skew_{what}_total Served feature values {what} against the recomputation "
                    "from the event stream.", f"# TYPE rtml_skew_{what}_total counter"]
            for name, c in self.checks.items():
                for f in c.engine.feature_names:  # every feature, 0 before its first check
                    v = c.skew.features.get(f, {}).get(what, 0)
                    out.append(f'rtml_skew_{what}_total{{feature_set="{name}",feature="{f}"}} {v}')
        return out


def factory(artifacts: Path, feature_sets: list[tuple[str, rtml.FeatureSet, str]], rate: int,
            max_ahead_ns: int) -> Any:
    """The follower's skew check from its checkpoint (None on a first start): None when the
    rate is 0, or when the checkpoint was written without a skew check (its engines would have
    missed the events before it: start on a fresh state directory to check)."""
    if not 0 <= rate <= 100:
        raise SystemExit(f"--skew-rate / RTML_SKEW_RATE: expected a percentage 0..100, got {rate}")

    def make(checkpoint: Optional[dict]) -> Optional[SkewCheck]:
        if rate == 0:
            return None
        if checkpoint is not None and checkpoint.get("skew") is None:
            log.warning("skew check off: the follower's checkpoint has none (written with --skew-rate 0 or by "
                        "an older version); its engines would miss the events before it")
            return None
        return SkewCheck(artifacts, feature_sets, rate, max_ahead_ns,
                         None if checkpoint is None else checkpoint["skew"])

    return make
