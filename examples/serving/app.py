"""Flight-delay model service: rtml online features + fitted transforms + a scikit-learn model.

Loads the artifacts written by notebooks/flight_delays.ipynb (manifest.json, one feature-set
document and one fitted transforms document per entity, model.joblib) and serves

    POST /events    a batch of departure / weather events -> the online engines
    POST /predict   a flight -> probability that it leaves more than 15 minutes late (the batch
                    model; and the online model's, with learning on)
    GET  /learning  the online model, the label join's counters, progressive metrics
    GET  /monitor   drift of the served features and prediction against the training reference, triggers
    GET  /monitor/skew   train/serve skew: sampled served rows recomputed from the event stream
                    (skew_check.py; --skew-rate / RTML_SKEW_RATE percent of keys, default 10, 0: off)
    POST /learning/advance   move the label clock ({"to": time})
    GET  /health    liveness + what is loaded
    GET  /metrics   Prometheus text format

Durability: `POST /events` appends the validated batch to an embedded write-ahead log
(`rtml.Wal`, $RTML_STATE_DIR/wal) and answers 200 only once the batch is on disk (fsync), with
its log position; the batch is then applied, in log order, by one `rtml.Runner` per feature set
reading that log (`rtml.sources.wal`), before the response (so a prediction after it sees it).
The runners checkpoint (engine state + log position, one atomic file each) every
RTML_CHECKPOINT_SECONDS or RTML_CHECKPOINT_EVENTS and on shutdown; the log drops the segments
every checkpoint covers. A restart, even after SIGKILL, restores the checkpoints and replays the
log from their positions: no acknowledged event lost, none applied twice (docs/hardening.md).

Every prediction is appended to the same log (kind "served": feature set, key, at, raw window
features, model-ready vector, probabilities) before it is answered. A follower reads the log in
order behind the runners and writes two Parquet projections of it: the served log (one row per
feature set per prediction) and the events log (events_log/departures/, events_log/weather/,
every accepted event with the time it was received), so `rtml parity` can later recompute the
served rows offline from exactly the events the service had. Neither loses a row to a crash:
parts after the follower's checkpoint (state/follower.json) are written again from the log.
Why not `rtml.learn.ServedLog` (issue 15 first asked the example to switch to it): a ServedLog
buffers rows in memory and writes them every flush interval, so a SIGKILL or a power cut loses
the rows of the last interval (issue 12 measured it on the example's earlier buffered served
log: 232 rows lost to one SIGKILL), and the label join and the learner would then miss examples
the notebook's replay has. Through the log, a prediction is durable before it is answered (it
waits for a group-committed fsync) and the Parquet projection, the join and the learner resume
from the log after any crash. A service that can accept losing the last flush interval on a
crash can use `rl.ServedLog` instead (docs/learning.md, "The served log").

Online learning (when the manifest has an "online" section, written by the notebook): every
flight asked about waits in an `rtml.learn.LabelJoin` for its departure (the label: more than
late_minutes late), and an online logistic regression learns, test-then-train, on exactly the
vector that was served. The join and the model are part of the follower's checkpoint; the log
replays the rest, so the learned model is the notebook's `rtml.learn.replay` of the same stream,
bit for bit. GET /learning shows the model and the join; POST /learning/advance {"to": time}
moves the label clock on a quiet stream (also through the log). Progressive (test-then-train)
metrics over the manifest's metrics_window of event time (7d): GET /learning "progressive"
(rl.Metrics.summary(): count, seen, log_loss, auc, mse) and "calibration"
(rl.Metrics.calibration(): the mean predicted probability and the observed late rate over the
window, and per prediction bin, 10 equal-width bins or the manifest's online.calibration_bins;
null for an empty bin); /metrics has them as serving_learning_progressive_{auc,log_loss,
mean_prediction,observed_rate} and serving_learning_calibration_{examples,mean_prediction,
observed_rate}{bin="0.2-0.3"}.

Topic mode (docs/streaming.md, "The serving example in topic mode"): with a stream per event kind
(--source-departures / --source-weather, or RTML_SOURCE_DEPARTURES / RTML_SOURCE_WEATHER:
kafka://host:port/topic?group=g or redis://host:port/db?streams=s, one partition each), the
engines follow the streams through one rtml.Runner per feature set (consumer group <g>.<name>,
checkpoints in $RTML_STATE_DIR/<name>/, resumed exactly once after a restart, SIGKILL included)
instead of POST /events, which answers 409. /predict reads the runners' engines; /health
("topics") and /metrics (rtml_runner_*{feature_set}) report their lag, events in, late,
malformed and last checkpoint age. Online learning is off in this mode (its label join reads the
departures from the log). RTML_SOURCE_TIMEOUT (60 s: wait at start for the partitions),
RTML_DEAD_LETTERS (a topic / stream for malformed events; default Parquet files in the state dir).
With --publish-state redis://host:port/db (RTML_PUBLISH_STATE; RTML_PUBLISH_EVERY, default
100ms) each runner also publishes its keys' exact window state to Redis (rtml.RedisPublisher,
one namespace per feature set: docs/shared-state.md): this service is then the writer.

Replica mode (docs/shared-state.md, "The serving example: one writer, N replicas"): with
--state-url redis://host:port/db (RTML_STATE_URL) the service keeps no engine and follows no
stream; /predict reads each feature set's key state from Redis (rtml.RemoteEngine) and
evaluates it with the engine's own code (the same bits as the writer's engines), POST /events
answers 409 naming the writer (RTML_WRITER), online learning is off (404), /health ("state")
reports each feature set's published watermark, stream positions, keys and publish age. Redis
unreachable or slower than RTML_STATE_TIMEOUT (0.05 s), or holding no state of a feature set
(restarted, the writer has not republished yet): /predict and /health answer 503 with the
typed error (rtml.RemoteUnavailableError), never a stale or partial answer, and recover by
themselves. Each replica keeps its own log (RTML_STATE_DIR: one per replica, locked) of the
predictions it served: its served log (default $RTML_STATE_DIR/served_log) and drift monitor
cover its own predictions only; its events log stays empty (it reads no events).

Run:  RTML_ARTIFACTS=artifacts python examples/serving/app.py --port 8000
 or:  RTML_ARTIFACTS=artifacts uvicorn app:app --app-dir examples/serving --port 8000

Environment: RTML_ARTIFACTS (default ./artifacts), RTML_STATE_DIR (default $RTML_ARTIFACTS/state),
RTML_SERVED_LOG (default $RTML_ARTIFACTS/served_log), RTML_EVENTS_LOG (default
$RTML_ARTIFACTS/events_log), RTML_LOG_FLUSH_SECONDS (5),
RTML_LOG_FLUSH_ROWS (20000), RTML_MAX_BATCH (10000 events), RTML_MAX_BODY_BYTES (16 MiB),
RTML_CHECKPOINT_SECONDS (30), RTML_CHECKPOINT_EVENTS (100000), RTML_WAL_SEGMENT_BYTES (64 MiB),
RTML_MAX_AHEAD_HOURS (168: an event further ahead of the service's watermark is refused; the
feature sets' own max_ahead, when smaller, wins: an acknowledged event is never guarded away).
"""

from __future__ import annotations

import os

# One-row predictions gain nothing from OpenMP threads, and on a 2-core machine their spinning
# competes with the event loop (py-spy: the model's predict_proba took most of a request). Set
# before scikit-learn loads libgomp: OpenMP reads it once per process, and it then holds in every
# thread. (threadpoolctl's `threadpool_limits(1)` after loading reaches only the calling thread's
# OpenMP settings, not the worker threads that run the handlers.) An explicit setting wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

import rtml
import rtml.learn as rl
import rtml.monitor as rm
import rtml.runner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # skew_check.py, beside this file
import skew_check  # noqa: E402

log = logging.getLogger("rtml.serving")

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
MINUTE_NS = 60 * 10**9

# ---------------------------------------------------------------------------------- settings

# topic mode: the environment variable naming each event kind's stream
SOURCE_VARS = {"departures": "RTML_SOURCE_DEPARTURES", "weather": "RTML_SOURCE_WEATHER"}


@dataclass
class Settings:
    artifacts: Path
    state_dir: Path
    log_dir: Path
    events_log_dir: Optional[Path] = None
    flush_seconds: float = 5.0
    flush_rows: int = 20_000
    max_batch: int = 10_000
    max_body_bytes: int = 16 * 2**20
    checkpoint_seconds: float = 30.0
    checkpoint_events: int = 100_000
    wal_segment_bytes: int = 64 * 2**20
    max_ahead_hours: float = 168.0
    # topic mode: event kind ("departures", "weather") -> the stream the engines follow (an
    # rtml source URL, kafka://host:port/topic?group=g or redis://host:port/db?streams=s)
    sources: dict[str, str] = field(default_factory=dict)
    source_timeout: float = 60.0
    dead_letters: Optional[str] = None  # topic mode: kafka://host:port/topic or redis://...?stream=s
    skew_rate: int = 10  # percent of keys whose served rows the skew check recomputes (0: off)
    # topic mode: publish each runner's key states to this Redis (redis://host:port/db) for
    # replicas (rtml.RedisPublisher, one namespace per feature set), every publish_every
    publish_state: Optional[str] = None
    publish_every: str = "100ms"
    # replica mode: read every feature set's state from this Redis (rtml.RemoteEngine) instead
    # of keeping engines; no stream followed, no POST /events
    state_url: Optional[str] = None
    state_timeout: float = 0.05  # seconds: a Redis read slower than this answers 503
    writer: Optional[str] = None  # replica mode: where the writer is (named by POST /events' 409)

    @classmethod
    def from_env(cls) -> "Settings":
        art = Path(os.environ.get("RTML_ARTIFACTS", "artifacts"))
        state_dir = Path(os.environ.get("RTML_STATE_DIR", art / "state"))
        # a replica's logs default to its own state directory: a log directory shared with the
        # writer or another replica would have its parts rewritten from the wrong log
        logs = state_dir if os.environ.get("RTML_STATE_URL") else art
        return cls(
            artifacts=art,
            state_dir=state_dir,
            log_dir=Path(os.environ.get("RTML_SERVED_LOG", logs / "served_log")),
            events_log_dir=Path(os.environ.get("RTML_EVENTS_LOG", logs / "events_log")),
            flush_seconds=float(os.environ.get("RTML_LOG_FLUSH_SECONDS", 5.0)),
            flush_rows=int(os.environ.get("RTML_LOG_FLUSH_ROWS", 20_000)),
            max_batch=int(os.environ.get("RTML_MAX_BATCH", 10_000)),
            max_body_bytes=int(os.environ.get("RTML_MAX_BODY_BYTES", 16 * 2**20)),
            checkpoint_seconds=float(os.environ.get("RTML_CHECKPOINT_SECONDS", 30.0)),
            checkpoint_events=int(os.environ.get("RTML_CHECKPOINT_EVENTS", 100_000)),
            wal_segment_bytes=int(os.environ.get("RTML_WAL_SEGMENT_BYTES", 64 * 2**20)),
            max_ahead_hours=float(os.environ.get("RTML_MAX_AHEAD_HOURS", 168.0)),
            sources={kind: os.environ[var] for kind, var in SOURCE_VARS.items() if os.environ.get(var)},
            source_timeout=float(os.environ.get("RTML_SOURCE_TIMEOUT", 60.0)),
            dead_letters=os.environ.get("RTML_DEAD_LETTERS") or None,
            skew_rate=int(os.environ.get("RTML_SKEW_RATE", 10)),
            publish_state=os.environ.get("RTML_PUBLISH_STATE") or None,
            publish_every=os.environ.get("RTML_PUBLISH_EVERY") or "100ms",
            state_url=os.environ.get("RTML_STATE_URL") or None,
            state_timeout=float(os.environ.get("RTML_STATE_TIMEOUT", 0.05)),
            writer=os.environ.get("RTML_WRITER") or None,
        )


# ---------------------------------------------------------------------------------- requests

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Code = Annotated[str, Field(strict=True, min_length=1, max_length=16)]


class Departure(BaseModel):
    """A flight left (or, for early departures, reached its scheduled time): its delay is known."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["departure"]
    tailnum: Code
    origin: Code
    carrier: Code
    sched_dep: AwareDatetime
    dep_delay: Number  # minutes; negative = early


class Weather(BaseModel):
    """An hourly weather observation at an airport."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["weather"]
    origin: Code
    ts: AwareDatetime
    temp: Optional[Number] = None
    humid: Optional[Number] = None
    wind_speed: Optional[Number] = None
    precip: Optional[Number] = None
    visib: Optional[Number] = None
    pressure: Optional[Number] = None


Event = Annotated[Union[Departure, Weather], Field(discriminator="type")]
EVENTS = TypeAdapter(list[Event])


class Flight(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tailnum: Code
    origin: Code
    carrier: Code
    dest: Code
    sched_dep: AwareDatetime
    distance: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
    at: Optional[AwareDatetime] = None  # instant of the prediction (default: the scheduled departure)


class BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _ns(t: dt.datetime) -> int:
    d = t - EPOCH
    return (d.days * 86_400 + d.seconds) * 10**9 + d.microseconds * 1_000


# what int64 nanoseconds since 1970 (the engine's clock) can hold
NS_MIN, NS_MAX = -(2**63) + 1, 2**63 - 1
# a departure's delay in minutes: from a day early to a week late
DELAY_MIN, DELAY_MAX = -1440.0, 10080.0
# registration marks: upper-case letters and digits, 2 to 7 (N14228, N0EGMQ, D942DN)
TAILNUM = re.compile(r"[A-Z0-9]{2,7}")


def _time_in_range(t: dt.datetime, field: str) -> int:
    ns = _ns(t)
    if not NS_MIN <= ns <= NS_MAX:
        raise BadRequest(422, f"{field}: {t.isoformat()} is outside the representable range "
                              "(1677-09-21 to 2262-04-11 UTC)")
    return ns


def _duration_ns(text: str) -> int:
    """A feature set's duration text ("1450m", "2d", "90s", ...) in nanoseconds."""
    m = re.fullmatch(r"(\d+)(ns|us|ms|s|m|h|d|w)", text)
    if m is None:
        raise ValueError(f"unexpected duration {text!r}")
    unit = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
            "d": 86400 * 10**9, "w": 7 * 86400 * 10**9}[m.group(2)]
    return int(m.group(1)) * unit


def _check_tailnum(value: str, field: str) -> None:
    if not TAILNUM.fullmatch(value):
        raise BadRequest(422, f"{field}: {json.dumps(value)} is not a tail number "
                              "(2 to 7 upper-case letters and digits, e.g. N14228)")


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


def _explain(e: ValidationError, prefix: str) -> str:
    parts = []
    for err in e.errors()[:10]:
        loc = prefix
        for p in err["loc"]:
            if isinstance(p, int):
                loc += f"[{p}]"
            elif p not in ("departure", "weather"):  # union tags add nothing for a reader
                loc += f".{p}" if loc else str(p)
        got = err.get("input")
        got_s = "" if err["type"] == "missing" else f" (got {json.dumps(got, default=str)[:60]})"
        parts.append(f"{loc}: {err['msg']}{got_s}")
    more = e.error_count() - 10
    return "; ".join(parts) + (f"; and {more} more errors" if more > 0 else "")


def _parse_json(body: bytes, settings: Settings) -> Any:
    if len(body) > settings.max_body_bytes:
        raise BadRequest(413, f"request body of {len(body):,} bytes exceeds the limit of {settings.max_body_bytes:,}")
    try:
        return json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        # json.loads would keep the last one silently: a client bug worth telling
        raise BadRequest(422, f"duplicate key {json.dumps(str(e))} in a JSON object") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(400, f"malformed JSON: {e}") from None


# ---------------------------------------------------------------------------------- metrics

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(BUCKETS) and seconds > BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.total += seconds
        self.n += 1


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        # events of acknowledged requests (durable in the log), by type
        self.events_received: dict[str, int] = {"departure": 0, "weather": 0}
        # events applied to the online state / dropped as later than allowed_lateness, by type
        self.events_applied: dict[str, int] = {"departure": 0, "weather": 0}
        self.events_late: dict[str, int] = {"departure": 0, "weather": 0}
        # events dropped because an event with the same id was applied before (a retried batch)
        self.events_duplicate: dict[str, int] = {"departure": 0, "weather": 0}
        # events of refused requests (4xx), by the field that refused them
        self.events_rejected: dict[str, int] = {}
        self.predictions = 0
        self.log_rows_written = 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
            self.latency.setdefault(path, Histogram()).observe(seconds)


# ---------------------------------------------------------------------------------- service


@dataclass
class Entity:
    name: str
    fs: rtml.FeatureSet
    tf: rtml.Transforms
    key: str
    fields: list[str]
    events: str
    runner: Any  # None in replica mode
    remote: Any = None  # replica mode: the feature set's rtml.RemoteEngine

    @property
    def engine(self) -> Any:
        return self.runner.engine


TYPE_OF = {"departures": "departure", "weather": "weather"}


SERVED_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("feature_set", pa.string()),
    ("key", pa.string()),
    ("at", pa.timestamp("ns", "UTC")),
    ("names", pa.list_(pa.string())),
    ("values", pa.list_(pa.float64())),
    ("vector", pa.list_(pa.float64())),
    ("probability", pa.float64()),
    ("served_at", pa.timestamp("us", "UTC")),
    ("flight", pa.string()),  # <tailnum>@<scheduled departure, ns>: the label join's request id
    ("online_probability", pa.float64()),  # the online learner's prediction (null: learning off)
])


class PartLog:
    """A Parquet projection of some of the write-ahead log's records (the served rows, or one
    kind of event), written by the log follower in log order.

    Rows are buffered and written as part files named by the log positions of their first and
    last record (``<prefix>-<first>-<last>.parquet``, written to a temporary name, then
    renamed). A row is in the log before its request is answered, so a crash loses none: on
    start, the parts at or after the follower's checkpoint are deleted (`drop_from`) and the
    follower writes them again from the log. Every checkpoint flushes first, so no part
    straddles one: nothing is written twice either."""

    def __init__(self, directory: Path, prefix: str, flush_rows: int) -> None:
        self.dir = directory
        self.prefix = prefix
        self.flush_rows = flush_rows
        self.lock = threading.Lock()
        self.parts: list[pa.Table] = []
        self.first: Optional[int] = None
        self.last: Optional[int] = None
        self.rows = 0
        self.written = 0

    def add(self, table: pa.Table, position: int) -> None:
        with self.lock:
            if self.first is None:
                self.first = position
            self.last = position
            self.parts.append(table)
            self.rows += table.num_rows
            full = self.rows >= self.flush_rows
        if full:
            self.flush()

    def flush(self) -> int:
        with self.lock:
            parts, first, last = self.parts, self.first, self.last
            self.parts, self.first, self.last, self.rows = [], None, None, 0
            if not parts:
                return 0
            self.dir.mkdir(parents=True, exist_ok=True)
            name = f"{self.prefix}-{first:016d}-{last:016d}.parquet"
            tmp = self.dir / f".{name}.tmp"
            table = pa.concat_tables(parts, promote_options="permissive")
            pq.write_table(table, tmp)
            os.replace(tmp, self.dir / name)  # readers never see a half-written part
            self.written += table.num_rows
            return table.num_rows

    def drop_from(self, position: int) -> list[str]:
        """Delete the parts whose first record is at or after `position` (the follower writes
        them again from the log), and parts of an older version of this service."""
        gone = []
        for p in sorted(self.dir.glob("*.parquet")) if self.dir.exists() else []:
            m = re.fullmatch(rf"{self.prefix}-(\d{{16}})-(\d{{16}})\.parquet", p.name)
            if m is None or int(m.group(1)) >= position:
                p.unlink()
                gone.append(p.name)
        return gone


class Learning:
    """Online learning on the served vectors (rtml.learn): every served flight waits in a
    label join for its departure (the label: left more than `late_minutes` late, known when the
    plane leaves) and the learner trains, test-then-train, on exactly the vector that was
    served, in the join's (release time, flight) order. A flight is one example: its request id
    is ``<tailnum>@<scheduled departure, ns>``, so a second prediction for the same flight (a
    retry) is served but not learned twice (counted). The notebook replays the same stream
    offline (`rtml.learn.replay`) and gets the same model, bit for bit."""

    def __init__(self, artifacts: Path, manifest: dict, state: Optional[dict]) -> None:
        cfg = manifest["online"]
        self.config = cfg
        self.late_minutes = float(manifest["late_minutes"])
        if state is not None:
            self.model = rl.load_model(state["model"])
            self.join = rl.LabelJoin.from_bytes(base64.b64decode(state["join"]))
            self.counters = dict(state["counters"])
        else:
            self.model = rl.load_model((artifacts / cfg["model"]).read_text())
            self.join = rl.LabelJoin(cfg["wait"], on_timeout=cfg["on_timeout"], max_pending=cfg["max_pending"],
                                     allowed_lateness=cfg["allowed_lateness"])
            self.counters = {"served": 0, "served_again": 0, "examples": 0}
        # progressive validation: part of the checkpoint, so a restart continues the same window
        # (a checkpoint written before the metrics were in it starts them again)
        if state is not None and state.get("metrics") is not None:
            self.metrics = rl.Metrics.from_bytes(base64.b64decode(state["metrics"]))
        else:
            self.metrics = rl.Metrics(window=cfg.get("metrics_window", "7d"))
        self.calibration_bins = int(cfg.get("calibration_bins", 10))

    def calibration(self) -> dict:
        """Calibration of the online model over the progressive window (`rl.Metrics.calibration`):
        the mean predicted probability against the observed late rate (the mean label), over the
        whole window (one bin) and per equal-width prediction bin. An empty bin's means are None
        (the library's NaN: no rows), so the answer is plain JSON."""
        def bin_(b: dict) -> dict:
            return {**b, **{k: (None if b[k] != b[k] else b[k]) for k in ("mean_prediction", "mean_label")}}
        (whole,) = self.metrics.calibration(1)
        return {"count": whole["count"], "mean_prediction": bin_(whole)["mean_prediction"],
                "mean_label": bin_(whole)["mean_label"], "bins": [bin_(b) for b in self.metrics.calibration(self.calibration_bins)]}

    def finite(self, x: np.ndarray) -> np.ndarray:
        """The learner takes finite vectors: a missing feature (null, after scaling) counts as
        its training mean, as in the notebook."""
        return np.nan_to_num(x, nan=float(self.config.get("nan_as", 0.0)))

    def state(self) -> dict:
        return {"model": self.model.to_json(), "join": base64.b64encode(self.join.to_bytes()).decode(),
                "counters": self.counters, "metrics": base64.b64encode(self.metrics.to_bytes()).decode()}

    def served(self, table: pa.Table) -> None:
        """One served record (one row per feature set, vectors in the manifest's order)."""
        flight = table.column("flight")[0].as_py()
        at = table.column("at").cast(pa.int64())[0].as_py()
        x = self.finite(np.concatenate([np.asarray(v, dtype=np.float64) for v in table.column("vector").to_pylist()]))
        try:
            self.join.serve(flight, at, x)
            self.counters["served"] += 1
        except rtml.SchemaError:  # the same flight asked again: served, not learned twice
            self.counters["served_again"] += 1

    def departures(self, table: pa.Table) -> None:
        ids = [f"{t}@{s}" for t, s in zip(table.column("tailnum").to_pylist(),
                                          table.column("sched_dep").cast(pa.int64()).to_pylist())]
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        y = (table.column("dep_delay").to_numpy() > self.late_minutes).astype(np.float64)
        self.join.labels(ids, ts, y)  # departures of flights never asked about: unknown_labels
        self.advance(int(ts.max()))  # those departures move the label clock too

    def advance(self, t: int) -> None:
        """Move the label clock to `t` and learn what that releases."""
        self.join.advance(t)
        ex = self.join.drain()
        if len(ex):
            self.model.progressive(ex.X, ex.y, ex.release, self.metrics)
            self.counters["examples"] += len(ex)


class Monitoring:
    """Drift of the served features and of the served prediction against the notebook's
    reference (rtml.monitor): every served row's window features and, when the reference records
    the model's prediction (fitted on the model's predictions for the training rows), the
    probability answered (the column "prediction"), over event-time windows of the manifest's
    `window`; triggers (PSI above a bound for a while, with hysteresis) log a warning and are
    counted. Fed in log order by the follower, so its numbers are `rtml.monitor.report` of the
    served log (with prediction="probability")."""

    def __init__(self, artifacts: Path, manifest: dict, state: Optional[str]) -> None:
        cfg = manifest["monitor"]
        self.config = cfg
        self.reference = rm.Reference.load(artifacts / cfg["reference"])
        self.fired: list[dict] = []
        if state is not None:  # the follower's checkpoint: windows, watermark, trigger states
            self.monitor = rm.Monitor.from_bytes(base64.b64decode(state))
            for t in self.monitor.triggers:
                t.callback = self._fire
        else:
            # "above" (high is bad, leaving at "below" / "clear") or "below" alone (low is bad:
            # p-values, leaving at "clear")
            triggers = [rm.Trigger(t["metric"], t["column"], above=t.get("above"), below=t.get("below"),
                                   clear=t.get("clear"), for_=t.get("for_", 0), cooldown=t.get("cooldown", 0),
                                   min_samples=t.get("min_samples", 1), callback=self._fire)
                        for t in cfg.get("triggers", [])]
            # the served log's "probability" is the prediction the reference's "prediction" describes
            pred = {"prediction": "probability"} if self.reference.has_prediction else {}
            self.monitor = rm.Monitor(self.reference, window=cfg["window"], timestamp="at",
                                      allowed_lateness=cfg.get("allowed_lateness", 0), triggers=triggers, **pred)

    def checkpoint(self) -> str:
        return base64.b64encode(self.monitor.to_bytes()).decode()

    def _fire(self, e: Any) -> None:
        event = {"kind": e.kind, "column": e.column, "metric": e.metric, "value": e.value,
                 "window_start": _iso(e.window_start), "window_end": _iso(e.window_end)}
        self.fired.append(event)
        del self.fired[:-100]
        log.warning("drift trigger: %s", event)

    def served(self, table: pa.Table) -> None:
        row: dict[str, Any] = {}
        for names, values in zip(table.column("names").to_pylist(), table.column("values").to_pylist()):
            row.update(zip(names, values))
        ref = self.monitor.reference  # (a restored monitor's own)
        cols = {c: pa.array([row.get(c)], pa.float64()) for c in ref.columns
                if not (ref.has_prediction and c == rm.PREDICTION)}
        if ref.has_prediction:  # the probability answered (one per request, on each feature set's row)
            cols[self.monitor.prediction] = table.column("probability").slice(0, 1).combine_chunks()
        cols["at"] = table.column("at").slice(0, 1).combine_chunks()  # timestamp[ns, UTC]
        self.monitor.update(pa.table(cols))

    def state(self) -> dict:
        try:
            closed = self.monitor.values()
            end = self.monitor.stats()["closed_until"]
        except rtml.QueryError:  # no window closed yet
            closed, end = None, None
        return {"window": self.config["window"], "last_closed_window_end": None if end is None else _iso(end),
                "values": closed, "stats": self.monitor.stats(),
                "triggers": [{"metric": t.metric, "column": t.column, "direction": t.direction, "above": t.above,
                              "below": t.below, "alerting": t.alerting, **t.counters} for t in self.monitor.triggers],
                "fired": list(self.fired)}


class Follower:
    """Follows the write-ahead log in log order, after the feature runners: writes the served
    log and the events log (Parquet projections of the log) and, with online learning on,
    feeds the label join and the learner. Its checkpoint (log position, learner state) is one
    atomic file, state/follower.json; the log keeps every record until this checkpoint (and
    the runners') covers it."""

    def __init__(self, wal: Any, state_dir: Path, served_log: PartLog, events_logs: dict[str, PartLog],
                 learning_factory: Any, checkpoint_seconds: float, monitoring_factory: Any = None,
                 skew_factory: Any = None) -> None:
        self.path = state_dir / "follower.json"
        state = json.loads(self.path.read_text()) if self.path.exists() else None
        self.learning: Optional[Learning] = learning_factory(state.get("learning") if state else None)
        self.served_log, self.events_logs = served_log, events_logs
        self.monitoring: Optional[Monitoring] = (
            monitoring_factory(state.get("monitor") if state else None) if monitoring_factory else None)
        self.skew: Optional[skew_check.SkewCheck] = skew_factory(state) if skew_factory else None
        self.checkpoint_seconds = checkpoint_seconds
        self.source = rtml.sources.wal(wal, name="follower")
        start = None if state is None else int(state["position"])
        if start is None and wal.first_position != 0:
            # state of a version of this service without a follower: its logs start here
            log.warning("follower: no checkpoint and the log starts at %d: following from there",
                        wal.first_position)
            start = wal.first_position
        self.source.open(lambda parts: {0: start}, lambda parts: None)
        self.position = 0 if start is None else start  # (the log starts at 0 without a checkpoint)
        self.committed: Optional[int] = start  # the position the last checkpoint covers
        for part in (served_log, *events_logs.values()):
            gone = part.drop_from(self.position)
            if gone:
                log.info("%s: %d part(s) at or after log position %d are written again from the log",
                         part.dir, len(gone), self.position)
        self.last_checkpoint = time.monotonic()

    def step(self) -> int:
        """Apply every durable record not applied yet; the number of records. Under the service lock."""
        n = 0
        while True:
            batches = self.source.poll(10_000, 0.0)
            if not batches:
                break
            for b in batches:
                self.position = b.end
                if b.events is None or not b.positions:
                    continue
                n += 1
                kind = (b.events.schema.metadata or {}).get(b"rtml.kind", b"").decode()
                pos = int(b.positions[0])
                if kind == "served":
                    self.served_log.add(b.events.replace_schema_metadata(None), pos)
                    if self.learning is not None:
                        self.learning.served(b.events)
                    if self.monitoring is not None:
                        self.monitoring.served(b.events)
                    if self.skew is not None:
                        self.skew.served(b.events)
                elif kind == "label_clock":
                    if self.learning is not None:
                        self.learning.advance(int(b.events.column("t").cast(pa.int64())[0].as_py()))
                elif kind in self.events_logs:
                    self.events_logs[kind].add(b.events.replace_schema_metadata(None), pos)
                    if kind == "departures" and self.learning is not None:
                        self.learning.departures(b.events)
                    if self.skew is not None:
                        self.skew.events(kind, b.events.replace_schema_metadata(None))
        if time.monotonic() - self.last_checkpoint >= self.checkpoint_seconds:
            self.checkpoint()
        return n

    def checkpoint(self) -> None:
        """Flush the Parquet logs, then write the checkpoint (atomically), then let the log drop
        what it covers."""
        self.served_log.flush()
        for part in self.events_logs.values():
            part.flush()
        state = {"format": "rtml.example.follower", "version": 1, "position": self.position,
                 "learning": self.learning.state() if self.learning is not None else None,
                 "monitor": self.monitoring.checkpoint() if self.monitoring is not None else None,
                 "skew": self.skew.checkpoint() if self.skew is not None else None}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.source.commit({0: self.position})
        self.committed = self.position
        self.last_checkpoint = time.monotonic()


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        art = settings.artifacts
        manifest_path = art / "manifest.json"
        if not manifest_path.exists():
            raise SystemExit(f"{manifest_path} not found: run notebooks/flight_delays.ipynb first (RTML_ARTIFACTS)")
        self.manifest = json.loads(manifest_path.read_text())
        self.model = joblib.load(art / self.manifest["model"])
        self.origins = set(self.manifest["origins"])
        self.airports = set(self.manifest["airports"])
        self.carriers = set(self.manifest.get("carriers", []))
        self.entities: list[Entity] = []
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        stale = sorted(p.name for p in settings.state_dir.glob("*.snap"))
        if stale:
            log.warning("%s: ignoring %s (state of an older version of this service; the state is "
                        "now the runners' checkpoints plus the write-ahead log)", settings.state_dir, stale)
        # the write-ahead log: every acknowledged batch, until every checkpoint covers it
        self.wal = rtml.Wal(settings.state_dir / "wal", segment_bytes=settings.wal_segment_bytes)
        recovery = self.wal.recovery()
        if recovery["truncated_bytes"]:
            log.warning("write-ahead log: cut a torn tail of %d bytes at position %s (never acknowledged)",
                        recovery["truncated_bytes"], recovery["truncated_at"])
        # topic mode: the engines follow streams (one rtml.Runner per feature set, in the
        # background) instead of POST /events; the log then holds only what the follower reads
        self.topic_mode = bool(settings.sources)
        # replica mode: no engines, no stream; every read goes to the shared state in Redis
        # that a topic-mode service (the writer, --publish-state) publishes
        self.replica_mode = settings.state_url is not None
        self.mode = "replica" if self.replica_mode else "topic" if self.topic_mode else "wal"
        if self.replica_mode and self.topic_mode:
            raise SystemExit("replica mode (RTML_STATE_URL) reads the shared state the writer publishes and follows "
                             "no stream: drop RTML_SOURCE_* (the writer is the topic-mode service)")
        if settings.publish_state and not self.topic_mode:
            raise SystemExit("RTML_PUBLISH_STATE publishes the state of topic mode's runners: give the streams too "
                             f"({', '.join(SOURCE_VARS.values())})")
        if self.topic_mode:
            missing = sorted({e["events"] for e in self.manifest["feature_sets"]} - set(settings.sources))
            if missing:
                raise SystemExit(f"topic mode: no stream for the {missing} events the feature sets read "
                                 f"(set {', '.join(SOURCE_VARS[k] for k in missing)})")
        for e in self.manifest["feature_sets"]:
            fs = rtml.FeatureSet.from_json((art / e["spec"]).read_text())
            tf = rtml.Transforms.from_json((art / e["transforms"]).read_text())
            remote = None
            if self.replica_mode:
                runner = None
                remote = _remote(fs, e["name"], settings)
            elif self.topic_mode:
                runner = rtml.Runner(
                    fs, _topic_source(settings.sources[e["events"]], e["name"]), settings.state_dir / e["name"],
                    checkpoint_every=settings.checkpoint_seconds, checkpoint_events=settings.checkpoint_events,
                    initial=self._warm_start(e["name"], fs), dead_letters=settings.dead_letters,
                    publish=_publisher(settings, e["name"]))
            else:
                runner = rtml.Runner(
                    fs, rtml.sources.wal(self.wal, kind=e["events"]), settings.state_dir / e["name"],
                    checkpoint_every=settings.checkpoint_seconds, checkpoint_events=settings.checkpoint_events,
                    initial=self._warm_start(e["name"], fs), pipeline=False, poll_timeout=0.0)
            self.entities.append(Entity(e["name"], fs, tf, e["key"], e["fields"], e["events"], runner, remote))
        columns = [c for ent in self.entities for c in ent.tf.feature_names]
        if columns != self.manifest["columns"]:
            raise SystemExit("manifest.json: the transforms' columns do not match the model's columns")
        self.lock = threading.Lock()  # ingest is exclusive; a prediction reads all engines at one state
        if self.topic_mode:
            # restore every checkpoint and follow the streams from the positions inside them
            self._follow_topics()
        elif self.replica_mode:
            log.info("replica mode: reading %s from %s (timeout %gs)",
                     {ent.name: ent.remote.ns for ent in self.entities}, settings.state_url, settings.state_timeout)
        else:
            # restore every checkpoint and replay the log after it (what was acknowledged before a crash)
            t0 = time.perf_counter()
            replayed = {ent.name: ent.runner.run_until_idle() for ent in self.entities}
            log.info("restored checkpoints and replayed the log up to position %d in %.2fs: %s",
                     self.wal.durable_position, time.perf_counter() - t0, replayed)
        self.metrics = Metrics()
        # the served log and the events log: Parquet projections of the write-ahead log, written
        # by the follower (a row is durable in the log before its request is answered)
        self.log = PartLog(settings.log_dir, "served", settings.flush_rows)
        events_dir = settings.events_log_dir or settings.artifacts / "events_log"
        self.events_logs = {k: PartLog(events_dir / k, "events", settings.flush_rows) for k in ("departures", "weather")}
        self.columns = columns
        # (topic mode: no online learning; the label join needs the departures in the log, in
        # order with the predictions, and in topic mode they are in the topic)
        learning = ((lambda state: Learning(art, self.manifest, state)) if "online" in self.manifest
                    and self.mode == "wal" else (lambda state: None))
        monitoring = (lambda state: Monitoring(art, self.manifest, state)) if "monitor" in self.manifest else None
        # refuse at the door what an engine's watermark guard (FeatureSet.max_ahead) would not
        # apply: an acknowledged event must never be dropped behind the client's back
        bounds = [_duration_ns(ent.fs.max_ahead) for ent in self.entities if ent.fs.max_ahead]
        self.max_ahead_ns = min([int(settings.max_ahead_hours * 3600 * 10**9), *bounds])
        # the skew check (skew_check.py; topic and replica modes: off, the follower reads no events there)
        skew = None if self.mode != "wal" else skew_check.factory(
            art, [(e.name, e.fs, e.events) for e in self.entities], settings.skew_rate, self.max_ahead_ns)
        self.follower = Follower(self.wal, settings.state_dir, self.log, self.events_logs, learning,
                                 settings.checkpoint_seconds, monitoring, skew)
        with self.lock:
            t0 = time.perf_counter()
            n = self.follower.step()
            log.info("follower: applied %d log records after its checkpoint in %.2fs (online learning %s)",
                     n, time.perf_counter() - t0, "on" if self.follower.learning else "off")
        # per log position: (type, events, late) of records applied, until their request reads it
        self.outcomes: dict[int, tuple[str, int, int]] = {}
        self.started = time.time()

    def _warm_start(self, name: str, fs: rtml.FeatureSet) -> Any:
        """A feature set without a checkpoint starts from the notebook's warm snapshot (or empty)."""
        path = self.settings.artifacts / "warm" / f"{name}.snap"

        def initial(partition: int) -> Any:
            if not path.exists():
                log.info("%s: no checkpoint and no warm snapshot, starting empty", name)
                return fs.online()
            engine = rtml.OnlineEngine.restore(str(path))
            if json.loads(engine.spec_json) != json.loads(fs.to_json()):
                raise SystemExit(f"{path}: snapshot of another feature-set document than {name}'s; remove it")
            log.info("%s: no checkpoint, warm start from %s", name, path)
            return engine

        return initial

    def checkpoint(self) -> None:
        with self.lock:
            if self.mode == "wal":  # (topic mode: each runner's thread checkpoints its engine)
                for ent in self.entities:
                    ent.runner.checkpoint()
            self.follower.step()
            self.follower.checkpoint()

    def close(self) -> None:
        if self.topic_mode:
            self._lag_stop.set()
        self.checkpoint()
        with self.lock:
            for ent in self.entities:
                try:
                    if ent.runner is not None:
                        ent.runner.close()  # topic mode: stops its thread after a final checkpoint
                    if ent.remote is not None:
                        ent.remote.close()
                except Exception:
                    log.exception("%s: the runner failed", ent.name)
            self.wal.close()

    # -- topic mode
    def _follow_topics(self) -> None:
        """Start every runner's thread (it restores its checkpoints as the broker assigns the
        partitions) and wait until each holds its stream's partition; catching up is left to
        the threads (GET /health shows the lag)."""
        t0 = time.monotonic()
        for ent in self.entities:  # before any runner starts (and writes a checkpoint)
            n = _partition_count(ent.runner.source, self.settings.source_timeout)
            if n is not None and n != 1:
                # the departures feed three feature sets keyed by tail, origin and carrier:
                # no producer key keeps each of those entities in one partition
                raise SystemExit(f"topic mode: {ent.runner.source.name} has {n} partitions; the example "
                                 "needs one partition per stream (its feature sets key one stream by "
                                 "several entities)")
        for ent in self.entities:
            ent.runner.start()
        try:
            while True:
                failed = {ent.name: ent.runner.error for ent in self.entities if ent.runner.error is not None}
                if failed:
                    raise SystemExit("topic mode: " + "; ".join(f"{n}: {type(e).__name__}: {e}" for n, e in failed.items()))
                if all(ent.runner.engines for ent in self.entities):
                    break
                if time.monotonic() - t0 > self.settings.source_timeout:
                    waiting = [ent.runner.source.name for ent in self.entities if not ent.runner.engines]
                    raise SystemExit(f"topic mode: no partition of {waiting} assigned within "
                                     f"{self.settings.source_timeout:g}s (RTML_SOURCE_TIMEOUT): is the broker "
                                     "up and does the topic exist?")
                time.sleep(0.05)
            for ent in self.entities:
                n = len(ent.runner.engines)
                if n != 1:  # (partitions added since the check above)
                    raise SystemExit(f"topic mode: {ent.runner.source.name} has {n} partitions; the example "
                                     "needs one partition per stream")
        except SystemExit:
            for ent in self.entities:
                with contextlib.suppress(Exception):
                    ent.runner.close()
            raise
        self._lag: dict[str, tuple[dict, float]] = {}
        self._lag_stop = threading.Event()
        threading.Thread(target=self._watch_lag, name="topic-lag", daemon=True).start()
        log.info("topic mode: following %s from %s in %.2fs",
                 {ent.name: ent.runner.source.name for ent in self.entities},
                 {ent.name: ent.runner.positions for ent in self.entities}, time.monotonic() - t0)

    def _watch_lag(self) -> None:
        """Topic mode: ask the brokers for each stream's lag every second, off the request path
        (on Kafka a lag query waits behind the consumer's fetch in flight)."""
        while not self._lag_stop.wait(1.0):
            for ent in self.entities:
                try:
                    self._lag[ent.name] = (ent.runner.source.lag(), time.monotonic())
                except Exception:  # unknown until the next attempt
                    self._lag.pop(ent.name, None)

    def topics(self) -> dict:
        """Per feature set: the runner's stream, positions, counters, lag (refreshed every
        second, `lag_age_s` old) and checkpoint age."""
        out = {}
        for ent in self.entities:
            r = ent.runner
            m = r.metrics(lag=False)
            lag, lag_at = self._lag.get(ent.name, ({p: None for p in r.engines}, None))
            err = r.error
            out[ent.name] = {
                "source": r.source.name, "running": r.running,
                "error": None if err is None else f"{type(err).__name__}: {err}",
                "events_in": m["events_in"], "late": m["late"], "malformed": m["malformed"],
                "duplicates": m["duplicates"], "ahead": m["ahead"],
                "lag": lag, "lag_age_s": None if lag_at is None else round(time.monotonic() - lag_at, 3),
                "positions": r.positions, "checkpointed_positions": r.checkpointed_positions,
                "checkpoints": m["checkpoints"], "last_checkpoint_age_s": m["last_checkpoint_age_s"],
                "source_errors": m["source_errors"],
                # --publish-state: publishes, values, bytes, errors, last_error (None: not publishing)
                "publish": m.get("publish"),
            }
        return out

    def positions(self) -> dict:
        """The last durable log position and what the checkpoints cover."""
        # (topic mode: the runners' positions are in their streams, not in the log: GET /health "topics")
        # (replica mode: no runners; its log holds only the served rows)
        ck = {ent.name: ent.runner.checkpointed_positions.get(0) for ent in self.entities if self.mode == "wal"}
        covered = [v for v in ck.values() if v is not None]
        ck["follower"] = self.follower.committed if hasattr(self, "follower") else None
        covered = [v for v in ck.values() if v is not None]
        return {"durable_position": self.wal.durable_position,
                "checkpointed_position": min(covered) if len(covered) == len(ck) else None,
                "checkpointed_positions": ck,
                "log_first_position": self.wal.first_position,
                "log_segments": len(self.wal.segments())}

    def _reject(self, status: int, detail: str, field: str, n: int) -> BadRequest:
        with self.metrics.lock:
            self.metrics.events_rejected[field] = self.metrics.events_rejected.get(field, 0) + n
        return BadRequest(status, detail)

    # -- POST /events
    def ingest(self, payload: Any) -> dict:
        if self.replica_mode:
            writer = f"the writer at {self.settings.writer}" if self.settings.writer else "the writer"
            raise BadRequest(409, f"this service is a replica: it reads the shared state {writer} publishes to "
                                  f"{self.settings.state_url} (the topic-mode service started with --publish-state); "
                                  "produce the events to the writer's streams. POST /events is off in this mode")
        if self.topic_mode:
            raise BadRequest(409, "this service follows streams (topic mode: "
                                  + ", ".join(f"{k} from {v}" for k, v in sorted(self.settings.sources.items()))
                                  + "); produce the events there. POST /events is off in this mode")
        if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
            raise BadRequest(422, 'expected a JSON object {"events": [ ... ]}')
        if extra := set(payload) - {"events"}:
            raise BadRequest(422, f"unknown field(s) {sorted(extra)}; expected only 'events'")
        n = len(payload["events"])
        if n > self.settings.max_batch:
            raise self._reject(413, f"batch of {n:,} events exceeds the limit of {self.settings.max_batch:,}; split it",
                               "events", n)
        try:
            events = EVENTS.validate_python(payload["events"])
        except ValidationError as e:
            field = _explain(e, "events").split(":", 1)[0]
            raise self._reject(422, _explain(e, "events"), re.sub(r"\[\d+\]", "", field), n) from None
        try:
            self._validate(events)
        except BadRequest as e:
            field = re.sub(r"\[\d+\]", "", e.detail.split(":", 1)[0])
            raise self._reject(e.status, e.detail, field, n) from None
        deps = [e for e in events if e.type == "departure"]
        wx = [e for e in events if e.type == "weather"]
        received_at = dt.datetime.now(dt.timezone.utc)
        tables = {"departures": _departures(deps, received_at), "weather": _weather(wx, received_at)}
        items = [(tables[k], k) for k in ("departures", "weather") if tables[k].num_rows]
        if not items:
            return {"received": 0, "accepted": {ent.name: 0 for ent in self.entities}, "late": {},
                    "position": None, **self.positions()}
        # durable first (group-committed with concurrent requests), then applied in log order
        positions = self.wal.append_many(items)
        with self.metrics.lock:
            for e in events:
                self.metrics.events_received[e.type] += 1
        with self.lock:
            self._apply_through(positions[-1])
            done = {pos: self.outcomes.pop(pos) for pos in positions}
            self.follower.step()
        late = {TYPE_OF[k]: 0 for _, k in items}
        duplicates = {TYPE_OF[k]: 0 for _, k in items}
        for typ, _n, lt, dup in done.values():
            late[typ] += lt
            duplicates[typ] += dup
        accepted = {ent.name: tables[ent.events].num_rows - late.get(TYPE_OF[ent.events], 0)
                    - duplicates.get(TYPE_OF[ent.events], 0) for ent in self.entities}
        return {"received": n, "accepted": accepted, "late": late, "duplicates": duplicates,
                "position": positions[0], **self.positions()}

    def _validate(self, events: list) -> None:
        """Keys the model knows, times the engine can hold, no event twice in one batch, no
        event further ahead of the watermark than RTML_MAX_AHEAD_HOURS (one such event would
        move the watermark and make every later real event late)."""
        marks = {k: max((ent.engine.watermark for ent in self.entities
                         if ent.events == k and ent.engine.watermark is not None), default=None)
                 for k in ("departures", "weather")}
        seen: dict[tuple, int] = {}
        for i, ev in enumerate(events):
            if ev.origin not in self.origins:
                raise BadRequest(422, f"events[{i}].origin: unknown airport {ev.origin!r} (served: {sorted(self.origins)})")
            if ev.type == "departure":
                _check_tailnum(ev.tailnum, f"events[{i}].tailnum")
                if self.carriers and ev.carrier not in self.carriers:
                    raise BadRequest(422, f"events[{i}].carrier: unknown carrier {ev.carrier!r} "
                                          f"(known: {sorted(self.carriers)})")
                if not DELAY_MIN <= ev.dep_delay <= DELAY_MAX:
                    raise BadRequest(422, f"events[{i}].dep_delay: {ev.dep_delay} minutes is out of range "
                                          f"({DELAY_MIN:g} to {DELAY_MAX:g})")
                sched = _time_in_range(ev.sched_dep, f"events[{i}].sched_dep")
                t, field, mark = sched + int(max(ev.dep_delay, 0.0) * MINUTE_NS), f"events[{i}].sched_dep", marks["departures"]
                key = (ev.type, ev.tailnum, ev.origin, ev.carrier, sched, ev.dep_delay)
            else:
                t, field, mark = _time_in_range(ev.ts, f"events[{i}].ts"), f"events[{i}].ts", marks["weather"]
                key = (ev.type, ev.origin, t, *(getattr(ev, c) for c in WEATHER_COLUMNS))
            if not NS_MIN <= t <= NS_MAX:
                raise BadRequest(422, f"{field}: the departure time (scheduled + delay) is outside the representable range")
            if mark is not None and t > mark + self.max_ahead_ns:
                raise BadRequest(422, f"{field}: event time {_iso(t)} is more than {self.max_ahead_ns / 3.6e12:g}h "
                                      f"ahead of the service's latest event ({_iso(mark)}); refused so that it "
                                      "cannot make every later event late")
            if key in seen:
                raise BadRequest(422, f"events[{i}]: duplicates events[{seen[key]}] (the same event twice in one "
                                      "batch would be counted twice)")
            seen[key] = i

    def _apply_through(self, last: int) -> None:
        """Apply the log, one record at a time and in log order, up to the record at `last`
        (records of concurrent requests before it included); each record's outcome is kept
        for its request. Under self.lock."""
        primary = {}
        for ent in self.entities:
            primary.setdefault(ent.events, ent)
        while True:
            pos = self.entities[0].runner.positions.get(0)
            if pos is None:  # nothing applied yet and no checkpoint: the log's start
                pos = self.wal.first_position
            if pos > last:
                return
            before = {k: e.engine.stats() for k, e in primary.items()}
            for ent in self.entities:
                ent.runner.step_until(pos)
            src = self.entities[0].runner.source  # reads every record (skips other kinds)
            kind, rows = src.last_kind, src.last_rows
            if kind not in primary:
                continue
            after = primary[kind].engine.stats()
            late = after["late_events_dropped"] - before[kind]["late_events_dropped"]
            dup = after["duplicates_dropped"] - before[kind]["duplicates_dropped"]
            self.outcomes[pos] = (TYPE_OF[kind], rows, late, dup)
            with self.metrics.lock:
                self.metrics.events_applied[TYPE_OF[kind]] += rows - late - dup
                self.metrics.events_late[TYPE_OF[kind]] += late
                self.metrics.events_duplicate[TYPE_OF[kind]] += dup

    # -- POST /predict
    def predict(self, payload: Any) -> dict:
        try:
            f = Flight.model_validate(payload)
        except ValidationError as e:
            raise BadRequest(422, _explain(e, "")) from None
        if f.origin not in self.origins:
            raise BadRequest(422, f"origin: unknown airport {f.origin!r} (served: {sorted(self.origins)})")
        if f.dest not in self.airports:
            raise BadRequest(422, f"dest: unknown airport {f.dest!r}")
        _check_tailnum(f.tailnum, "tailnum")
        if self.carriers and f.carrier not in self.carriers:
            raise BadRequest(422, f"carrier: unknown carrier {f.carrier!r} (known: {sorted(self.carriers)})")
        _time_in_range(f.sched_dep, "sched_dep")
        if f.at is not None:
            _time_in_range(f.at, "at")
        at_ns = _ns(f.at or f.sched_dep)
        at = f.at or f.sched_dep  # tz-aware, as the engine's events: naive and aware times never mix
        row = {"tailnum": f.tailnum, "origin": f.origin, "carrier": f.carrier, "dest": f.dest,
               "distance": f.distance, "sched_dep": f.sched_dep}  # tz-aware too
        parts, logged = [], []
        request_id = uuid.uuid4().hex
        state: Optional[dict] = None
        if self.replica_mode:
            parts, logged, state = self._read_remote(row, at)
        else:
            with self.lock:
                try:
                    for ent in self.entities:
                        key = row[ent.key]
                        # (topic mode: the engine of the key's partition, from the runner)
                        eng = ent.runner.engine_for(key) if self.topic_mode else ent.engine
                        vec = eng.vector(key, ent.tf, {c: row[c] for c in ent.fields}, at=at)
                        raw = skew_check.perturb(eng.get(key, at=at))  # (unchanged unless a test asks)
                        parts.append(vec)
                        logged.append((ent, key, raw, vec))
                except (rtml.QueryError, OverflowError) as e:
                    raise BadRequest(422, f"at: {e}") from None
        x = np.concatenate(parts).reshape(1, -1)
        p = float(self.model.predict_proba(x)[0, 1])
        learning = self.follower.learning
        p_online = None
        if learning is not None:
            with self.lock:  # the follower learns under this lock
                p_online = learning.model.predict_one(learning.finite(x[0]))
        flight = f"{f.tailnum}@{_ns(f.sched_dep)}"
        now = dt.datetime.now(dt.timezone.utc)
        served = pa.Table.from_pylist([{
            "request_id": request_id, "feature_set": ent.name, "key": key, "at": at_ns,
            "names": ent.fs.feature_names, "values": [None if raw[n] is None else float(raw[n]) for n in ent.fs.feature_names],
            "vector": [float(v) for v in vec], "probability": p, "served_at": now,
            "flight": flight, "online_probability": p_online,
        } for ent, key, raw, vec in logged], schema=SERVED_SCHEMA)
        # durable before the answer (group-committed with concurrent requests): the served log
        # and the learner are written from the log, so a crash loses no served row
        self.wal.append_many([(served, "served")])
        with self.lock:
            self.follower.step()
        with self.metrics.lock:
            self.metrics.predictions += 1
        out = {"probability": p, "late": p >= 0.5, "at": (f.at or f.sched_dep).isoformat(), "request_id": request_id,
               "flight": flight}
        if p_online is not None:
            out["online_probability"] = p_online
        if state is not None:
            out["state"] = state
        return out

    def _read_remote(self, row: dict, at: dt.datetime) -> tuple[list, list, dict]:
        """Replica mode: each feature set's vector and window features from the shared state
        (rtml.RemoteEngine: the stored key state, evaluated at `at` by the engine's own code, so
        the same bits as the writer's engine). 503 when Redis is unreachable or slower than
        RTML_STATE_TIMEOUT, or holds no state of a feature set (the writer has not published
        since Redis started): never a stale or partial answer."""
        parts, logged, state = [], [], {}
        for ent in self.entities:
            key = row[ent.key]
            fields = {c: row[c] for c in ent.fields}
            try:
                # the vector (the model's input) and the raw features (the served log) from one
                # fetched value: one round trip, one state, so they always agree
                vec, raw, wm = ent.remote.vector(key, ent.tf, fields, at=at, with_features=True,
                                                 with_watermark=True)
                # after the key reads: a Redis restarted empty answers every key as unknown
                # until the writer republishes, and the partition's record is written last
                published = ent.remote.stats()["partitions"]
            except rtml.RemoteUnavailableError as e:
                raise BadRequest(503, f"{ent.name}: {type(e).__name__}: {e}") from None
            except rtml.KeyStateError as e:
                raise BadRequest(502, f"{ent.name}: {type(e).__name__}: {e}") from None
            except (rtml.QueryError, OverflowError) as e:
                raise BadRequest(422, f"at: {e}") from None
            if not published:
                raise BadRequest(503, f"{ent.name}: no state published in {ent.remote.ns} at "
                                      f"{self.settings.state_url} (the writer has not published since Redis started)")
            parts.append(vec)
            logged.append((ent, key, raw, vec))
            state[ent.name] = {"watermark": None if wm is None else _iso(wm),
                               "published_at": max(_iso(p["published_at_ms"] * 10**6) for p in published.values())}
        return parts, logged, state

    def replica_health(self) -> tuple[dict, int]:
        """Replica mode, GET /health: per feature set what the writer last published (watermark,
        stream positions, keys, age of the last publish); 503 while Redis is unreachable or holds
        no state of a feature set."""
        out: dict[str, Any] = {}
        problems = []
        now_ms = time.time() * 1000
        down: Optional[str] = None  # (one Redis: once unreachable, the others are not asked)
        for ent in self.entities:
            try:
                if down is not None:
                    raise rtml.RemoteUnavailableError(down)
                st = ent.remote.stats()
            except rtml.RemoteError as e:
                if isinstance(e, rtml.RemoteUnavailableError):
                    down = str(e)
                msg = f"{type(e).__name__}: {e}"
                problems.append(f"{ent.name}: {msg}")
                out[ent.name] = {"namespace": ent.remote.ns, "error": msg}
                continue
            parts = st["partitions"]
            if not parts:
                problems.append(f"{ent.name}: no state published in {ent.remote.ns} yet")
            out[ent.name] = {
                "namespace": st["namespace"], "watermark": st["watermark"], "watermark_iso": st["watermark_iso"],
                "keys": st["keys"], "positions": {p: v.get("position") for p, v in parts.items()},
                "published_age_s": (round((now_ms - max(v["published_at_ms"] for v in parts.values())) / 1000, 3)
                                    if parts else None),
                "error": None if parts else "no state published yet",
            }
        body = {"status": "error" if problems else "ok", "mode": "replica", "state_url": self.settings.state_url,
                "writer": self.settings.writer, "timeout_s": self.settings.state_timeout,
                "feature_sets": [e.name for e in self.entities], "columns": len(self.manifest["columns"]),
                "uptime_s": round(time.time() - self.started, 3), "state": out, "problems": problems,
                **self.positions()}
        return body, 503 if problems else 200

    # -- GET /learning, POST /learning/advance
    def learning_state(self) -> dict:
        learning = self.follower.learning
        if learning is None:
            raise BadRequest(404, "online learning is off (the manifest has no 'online' section)")
        with self.lock:
            return {"model": json.loads(learning.model.to_json()), "updates": learning.model.updates,
                    "pending": learning.join.pending, "join": learning.join.stats(), "counters": dict(learning.counters),
                    "progressive": learning.metrics.summary(), "calibration": learning.calibration(),
                    "position": self.follower.position}

    def advance_labels(self, payload: Any) -> dict:
        """Move the label clock (no label older than `to`, minus the allowed lateness, is coming):
        rows whose wait has passed time out, labeled rows are learned. Written to the log like
        any event, so a restart replays it at the same point of the stream."""
        if self.follower.learning is None:
            raise BadRequest(404, "online learning is off (the manifest has no 'online' section)")
        if not isinstance(payload, dict) or set(payload) != {"to"}:
            raise BadRequest(422, 'expected a JSON object {"to": "<ISO 8601 time with a timezone>"}')
        try:
            to = TypeAdapter(AwareDatetime).validate_python(payload["to"])
        except ValidationError as e:
            raise BadRequest(422, _explain(e, "to")) from None
        t = _time_in_range(to, "to")
        pos = self.wal.append_many([(pa.table({"t": pa.array([t], pa.timestamp("ns", "UTC"))}), "label_clock")])[0]
        with self.lock:
            self.follower.step()
        return {"position": pos, **self.learning_state()}

    # -- GET /monitor
    def monitor_state(self) -> dict:
        if self.follower.monitoring is None:
            raise BadRequest(404, "drift monitoring is off (the manifest has no 'monitor' section)")
        with self.lock:
            return self.follower.monitoring.state()

    # -- GET /monitor/skew
    def skew_state(self) -> dict:
        if self.follower.skew is None:
            raise BadRequest(404, "the skew check is off (--skew-rate 0, topic mode, or a state directory "
                                  "checkpointed without it)")
        with self.lock:
            return self.follower.skew.summary()

    # -- GET /metrics
    def prometheus(self) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value}" for labels, value in samples)

        stats = {ent.name: ent.engine.stats() for ent in self.entities} if not self.replica_mode else {}
        fsl = lambda n: f'{{feature_set="{n}"}}'  # noqa: E731
        if self.replica_mode:
            out.extend(self._replica_metrics())
        metric("rtml_events_ingested_total", "counter", "Events applied to the online state.",
               [(fsl(n), s["events_ingested"]) for n, s in stats.items()])
        metric("rtml_late_events_dropped_total", "counter", "Events dropped as later than allowed_lateness.",
               [(fsl(n), s["late_events_dropped"]) for n, s in stats.items()])
        metric("rtml_keys", "gauge", "Entity keys held in the online state.", [(fsl(n), s["keys"]) for n, s in stats.items()])
        metric("rtml_state_bytes", "gauge", "Approximate size of the online state.",
               [(fsl(n), s["state_bytes"]) for n, s in stats.items()])
        metric("rtml_watermark_seconds", "gauge", "Largest event time seen (Unix seconds).",
               [(fsl(n), (s["watermark"] or 0) / 1e9) for n, s in stats.items()])
        with self.metrics.lock:
            m = self.metrics
            metric("serving_events_received_total", "counter",
                   "Events of acknowledged POST /events requests (durable in the write-ahead log), by type.",
                   [(f'{{type="{k}"}}', v) for k, v in m.events_received.items()])
            metric("serving_events_applied_total", "counter",
                   "Events applied to the online state (not late), by type.",
                   [(f'{{type="{k}"}}', v) for k, v in m.events_applied.items()])
            metric("serving_events_late_dropped_total", "counter",
                   "Events dropped as later than allowed_lateness, by type.",
                   [(f'{{type="{k}"}}', v) for k, v in m.events_late.items()])
            metric("serving_events_duplicate_dropped_total", "counter",
                   "Events dropped because an event with the same id was applied before (a retried batch), by type.",
                   [(f'{{type="{k}"}}', v) for k, v in m.events_duplicate.items()])
            metric("serving_events_rejected_total", "counter",
                   "Events of POST /events requests refused with 4xx, by the field that refused them.",
                   [(f'{{field="{k}"}}', v) for k, v in sorted(m.events_rejected.items())])
            metric("serving_predictions_total", "counter", "Predictions served.", [("", m.predictions)])
            metric("serving_served_log_rows_total", "counter", "Feature vectors written to the served log.",
                   [("", self.log.written)])
            metric("serving_http_requests_total", "counter", "HTTP requests by path and status.",
                   [(f'{{path="{p}",status="{s}"}}', v) for (p, s), v in sorted(m.requests.items())])
            out.append("# HELP serving_request_duration_seconds Request latency by path.")
            out.append("# TYPE serving_request_duration_seconds histogram")
            for path, h in sorted(m.latency.items()):
                acc = 0
                for b, c in zip(BUCKETS, h.counts):
                    acc += c
                    out.append(f'serving_request_duration_seconds_bucket{{path="{path}",le="{b}"}} {acc}')
                out.append(f'serving_request_duration_seconds_bucket{{path="{path}",le="+Inf"}} {h.n}')
                out.append(f'serving_request_duration_seconds_sum{{path="{path}"}} {h.total}')
                out.append(f'serving_request_duration_seconds_count{{path="{path}"}} {h.n}')
        learning = self.follower.learning
        if learning is not None:
            with self.lock:
                js, c, summary = learning.join.stats(), dict(learning.counters), learning.metrics.summary()
                updates, pending, cal = learning.model.updates, learning.join.pending, learning.calibration()
            metric("serving_learning_examples_total", "counter",
                   "Served flights joined with their departure and learned (test-then-train).", [("", c["examples"])])
            metric("serving_learning_model_updates", "gauge", "Updates of the online model (since its start in the notebook).",
                   [("", updates)])
            metric("serving_learning_pending", "gauge", "Served flights waiting for their departure.", [("", pending)])
            metric("serving_learning_served_again_total", "counter",
                   "Predictions for a flight already served to the learner (not learned twice).", [("", c["served_again"])])
            metric("serving_learning_join_total", "counter", "Label-join outcomes (rtml.learn.LabelJoin.stats()).",
                   [(f'{{outcome="{k}"}}', v) for k, v in sorted(js.items()) if isinstance(v, (int, float))])
            for name in ("auc", "log_loss"):
                value = summary.get(name)
                metric(f"serving_learning_progressive_{name}", "gauge",
                       f"Progressive (test-then-train) {name} of the online model over the last "
                       f"{learning.config.get('metrics_window', '7d')} of event time (kept across restarts: part of the checkpoint).",
                       [("", value)] if value is not None else [])
            # calibration over the same window: mean predicted probability vs observed late rate,
            # overall and per prediction bin (GET /learning "calibration"); no rows, no sample
            window = learning.config.get("metrics_window", "7d")
            means = (("mean_prediction", "mean_prediction", "Mean predicted probability (scored before learning)"),
                     ("observed_rate", "mean_label", "Share that left late (the mean label)"))
            for name, key, help_ in means:
                metric(f"serving_learning_progressive_{name}", "gauge",
                       f"{help_} of the online model's progressive examples over the last {window} of event time "
                       "(its calibration over the whole window).",
                       [("", cal[key])] if cal[key] is not None else [])
            binl = lambda b: f'{{bin="{b["lo"]:g}-{b["hi"]:g}"}}'  # noqa: E731
            metric("serving_learning_calibration_examples", "gauge",
                   f"Progressive examples over the last {window} of event time whose prediction falls in the bin.",
                   [(binl(b), b["count"]) for b in cal["bins"]])
            for name, key, help_ in means:
                metric(f"serving_learning_calibration_{name}", "gauge",
                       f"{help_} of the progressive examples whose prediction falls in the bin, over the last "
                       f"{window} of event time (no sample for an empty bin).",
                       [(binl(b), b[key]) for b in cal["bins"] if b[key] is not None])
        if self.follower.monitoring is not None:
            mon = self.monitor_state()
            values = mon["values"] or {}
            for name, help_ in (("psi", "Population stability index"), ("js", "Jensen-Shannon distance"),
                                ("null_rate", "Share of null values"), ("out_of_range_rate", "Share of values outside the reference's range")):
                metric(f"rtml_monitor_{name}", "gauge", f"{help_} of a served feature (or of the served prediction, "
                       'column="prediction") over the last closed monitor window against the notebook\'s reference.',
                       [(f'{{column="{c}"}}', v[name]) for c, v in sorted(values.items())
                        if v.get(name) is not None])  # a null metric (no rows) has no sample
            metric("rtml_monitor_trigger_entered_total", "counter", "Drift triggers that fired (entered the alert state).",
                   [(f'{{column="{t["column"]}",metric="{t["metric"]}"}}', t["entered"]) for t in mon["triggers"]])
            metric("rtml_monitor_trigger_alerting", "gauge", "Drift triggers in the alert state.",
                   [(f'{{column="{t["column"]}",metric="{t["metric"]}"}}', int(t["alerting"])) for t in mon["triggers"]])
        if self.follower.skew is not None:
            with self.lock:
                out.extend(self.follower.skew.prometheus())
        pos = self.positions()
        metric("serving_wal_durable_position", "gauge", "Log position after the last durable (acknowledged) batch.",
               [("", pos["durable_position"])])
        metric("serving_wal_checkpointed_position", "gauge", "Log position every checkpoint covers.",
               [("", pos["checkpointed_position"] or 0)])
        wal = self.wal.counters()
        metric("serving_wal_appends_total", "counter", "Batches appended to the write-ahead log since start.",
               [("", wal["appends"])])
        metric("serving_wal_fsyncs_total", "counter",
               "fsyncs of the write-ahead log since start (appends / fsyncs: the group-commit factor).",
               [("", wal["fsyncs"])])
        if self.topic_mode:
            out.extend(self._topic_metrics())
        return "\n".join(out) + "\n"

    def _replica_metrics(self) -> list[str]:
        """Replica mode: what the writer last published, per feature set (RemoteEngine.stats());
        a feature set whose state cannot be read has rtml_remote_up 0 and no other sample."""
        up, wm, keys, age = [], [], [], []
        now_ms = time.time() * 1000
        down = False  # (one Redis: once unreachable, the others are not asked)
        for ent in self.entities:
            lbl = f'{{feature_set="{ent.name}"}}'
            try:
                if down:
                    raise rtml.RemoteUnavailableError("not asked")
                st = ent.remote.stats()
            except rtml.RemoteError as e:
                down = down or isinstance(e, rtml.RemoteUnavailableError)
                up.append(f"rtml_remote_up{lbl} 0")
                continue
            parts = st["partitions"]
            up.append(f"rtml_remote_up{lbl} {int(bool(parts))}")
            if parts:
                wm.append(f"rtml_remote_watermark_seconds{lbl} {(st['watermark'] or 0) / 1e9}")
                keys.append(f"rtml_remote_keys{lbl} {st['keys']}")
                last = max(v["published_at_ms"] for v in parts.values())
                age.append(f"rtml_remote_publish_age_seconds{lbl} {round((now_ms - last) / 1000, 3)}")
        return [
            "# HELP rtml_remote_up Whether the shared state of the feature set is readable and published (replica mode).",
            "# TYPE rtml_remote_up gauge", *up,
            "# HELP rtml_remote_watermark_seconds Watermark of the published state (Unix seconds; smallest partition's).",
            "# TYPE rtml_remote_watermark_seconds gauge", *wm,
            "# HELP rtml_remote_keys Keys in the published state.",
            "# TYPE rtml_remote_keys gauge", *keys,
            "# HELP rtml_remote_publish_age_seconds Seconds since the writer last published the feature set.",
            "# TYPE rtml_remote_publish_age_seconds gauge", *age,
        ]

    def _topic_metrics(self) -> list[str]:
        """Topic mode: each runner's metrics (Runner.metrics()), labelled by feature set."""
        out: list[str] = []
        topics = self.topics()

        def metric(name: str, kind: str, help_: str, key: str) -> None:
            out.append(f"# HELP rtml_runner_{name} {help_}")
            out.append(f"# TYPE rtml_runner_{name} {kind}")
            for n, t in topics.items():
                if t[key] is not None:
                    out.append(f'rtml_runner_{name}{{feature_set="{n}"}} {t[key]}')

        metric("events_in_total", "counter", "Events read from the stream (incl. late and malformed).", "events_in")
        metric("late_events_total", "counter", "Events dropped as later than allowed_lateness.", "late")
        metric("malformed_events_total", "counter", "Malformed events sent to the dead-letter sink.", "malformed")
        metric("duplicate_events_total", "counter", "Events dropped as duplicates of an applied event id.", "duplicates")
        metric("ahead_events_total", "counter", "Events too far ahead of the watermark, sent to the dead-letter sink.",
               "ahead")
        metric("checkpoints_total", "counter", "Checkpoints written since start.", "checkpoints")
        if self.settings.publish_state:
            for name, key, help_ in (("publishes_total", "publishes", "Publishes of the state to Redis (--publish-state)."),
                                     ("publish_errors_total", "errors", "Publishes that failed (Redis unreachable); "
                                      "the next one writes every key.")):
                out.append(f"# HELP rtml_runner_{name} {help_}")
                out.append(f"# TYPE rtml_runner_{name} counter")
                out.extend(f'rtml_runner_{name}{{feature_set="{n}"}} {t["publish"][key]}'
                           for n, t in topics.items() if t["publish"] is not None)
        metric("last_checkpoint_age_seconds", "gauge", "Seconds since the last checkpoint.", "last_checkpoint_age_s")
        out.append("# HELP rtml_runner_lag_events Events on the stream not yet read (None: unknown).")
        out.append("# TYPE rtml_runner_lag_events gauge")
        for n, t in topics.items():
            out.extend(f'rtml_runner_lag_events{{feature_set="{n}",partition="{p}"}} {v}'
                       for p, v in sorted(t["lag"].items()) if v is not None)
        out.append("# HELP rtml_runner_up Whether the feature set's runner thread is running (0: failed, see /health).")
        out.append("# TYPE rtml_runner_up gauge")
        out.extend(f'rtml_runner_up{{feature_set="{n}"}} {int(t["running"] and t["error"] is None)}'
                   for n, t in topics.items())
        return out


def _publisher(settings: Settings, name: str) -> Any:
    """Topic mode with --publish-state: the feature set's rtml.RedisPublisher (its namespace is
    ``rtml:<hash of the feature set's document>``: one per feature set), or None."""
    if not settings.publish_state:
        return None
    try:
        return rtml.RedisPublisher(settings.publish_state, publish_every=settings.publish_every)
    except rtml.RtmlError as e:
        raise SystemExit(f"RTML_PUBLISH_STATE: {name}: {e}") from None


def _remote(fs: rtml.FeatureSet, name: str, settings: Settings) -> Any:
    """Replica mode: the feature set's reader of the shared state (rtml.RemoteEngine)."""
    try:
        return fs.remote(settings.state_url, timeout=settings.state_timeout)
    except rtml.RtmlError as e:
        raise SystemExit(f"RTML_STATE_URL: {name}: {e}") from None


def _partition_count(source: Any, timeout: float) -> Optional[int]:
    """The number of partitions of a stream (a Kafka topic's from the broker's metadata, the
    number of Redis streams); None when unknown (a topic that does not exist yet)."""
    if isinstance(source, rtml.sources.RedisStreamSource):
        return len(source.streams)
    if isinstance(source, rtml.sources.KafkaSource):
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": source.bootstrap}).list_topics(source.topic, timeout=timeout)
        except Exception as e:  # (KafkaException: the broker did not answer)
            raise SystemExit(f"topic mode: {source.name}: no metadata from {source.bootstrap}: {e}") from None
        topic = md.topics.get(source.topic)
        return None if topic is None or topic.error is not None else len(topic.partitions)
    return None


def _topic_source(url: str, name: str) -> Any:
    """Topic mode: the stream of feature set `name`, from an `rtml run --source` URL
    (kafka://host:port/topic?group=g, redis://host:port/db?streams=s[&group=g]). The consumer
    group is made the feature set's own (``<g>.<name>``): the feature sets reading one topic
    each read all of it."""
    from urllib.parse import parse_qsl, urlencode, urlparse

    u = urlparse(url)
    if u.scheme not in ("kafka", "redis", "rediss"):
        raise SystemExit(f"topic mode: {url!r}: expected kafka://host:port/topic?group=NAME "
                         "or redis://host:port/db?streams=NAME")
    query = urlencode([(k, f"{v}.{name}" if k == "group" else v) for k, v in parse_qsl(u.query)])
    try:
        return rtml.runner.source_from_url(u._replace(query=query).geturl())
    except rtml.RtmlError as e:
        raise SystemExit(f"topic mode: {e}") from None


def _iso(ns: int) -> str:
    return (EPOCH + dt.timedelta(microseconds=ns // 1000)).isoformat()


def _departures(evs: list[Departure], received_at: dt.datetime) -> pa.Table:
    # The same event-time rule as the notebook: the delay is known when the plane leaves, and an
    # early departure is stamped at its scheduled time (the flight never sees its own outcome).
    sched = [_ns(e.sched_dep) for e in evs]
    return pa.table({
        "ts": pa.array([s + int(max(e.dep_delay, 0.0) * MINUTE_NS) for s, e in zip(sched, evs)], pa.timestamp("ns", "UTC")),
        "tailnum": pa.array([e.tailnum for e in evs], pa.string()),
        "origin": pa.array([e.origin for e in evs], pa.string()),
        "carrier": pa.array([e.carrier for e in evs], pa.string()),
        "dep_delay": pa.array([float(e.dep_delay) for e in evs], pa.float64()),
        "late": pa.array([1.0 if e.dep_delay > 15 else 0.0 for e in evs], pa.float64()),
        "sched_dep": pa.array(sched, pa.timestamp("ns", "UTC")),  # the flight: the label's request id
        # the event's id (the flight): a re-sent event is a duplicate (FeatureSet dedupe_on)
        "event_id": pa.array([f"{e.tailnum}@{s}" for s, e in zip(sched, evs)], pa.string()),
        "received_at": pa.array([received_at] * len(evs), pa.timestamp("us", "UTC")),
    })


WEATHER_COLUMNS = ("temp", "humid", "wind_speed", "precip", "visib", "pressure")


def _weather(evs: list[Weather], received_at: dt.datetime) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "ts": pa.array([_ns(e.ts) for e in evs], pa.timestamp("ns", "UTC")),
        "origin": pa.array([e.origin for e in evs], pa.string()),
    }
    for c in WEATHER_COLUMNS:
        cols[c] = pa.array([None if getattr(e, c) is None else float(getattr(e, c)) for e in evs], pa.float64())
    cols["event_id"] = pa.array([f"{e.origin}@{_ns(e.ts)}" for e in evs], pa.string())  # one observation per hour
    cols["received_at"] = pa.array([received_at] * len(evs), pa.timestamp("us", "UTC"))
    return pa.table(cols)


# ---------------------------------------------------------------------------------- app


async def _body(request: Request) -> bytes:
    return await request.body()


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = Service(settings or Settings.from_env())
        state["svc"] = svc
        stop = threading.Event()

        def flusher() -> None:
            while not stop.wait(svc.settings.flush_seconds):
                try:
                    svc.log.flush()
                    for part in svc.events_logs.values():
                        part.flush()
                except Exception:  # keep serving; the rows are in the log, written again on restart
                    log.exception("served log flush failed")

        thread = threading.Thread(target=flusher, name="served-log-flusher", daemon=True)
        thread.start()
        log.info("serving %s from %s", [e.name for e in svc.entities], svc.settings.artifacts)
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)
            svc.close()  # flushes the Parquet logs at the follower's checkpoint
            log.info("flushed the served log and checkpointed the online state to %s", svc.settings.state_dir)

    app = FastAPI(title="rtml flight-delay service", lifespan=lifespan)

    def svc() -> Service:
        return state["svc"]

    @app.middleware("http")
    async def measure(request: Request, call_next):
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > svc().settings.max_body_bytes:
            response = JSONResponse(
                {"detail": f"request body of {int(length):,} bytes exceeds the limit of {svc().settings.max_body_bytes:,}"},
                status_code=413)
        else:
            response = await call_next(request)
        svc().metrics.observe(request.url.path, response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest):
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    @app.exception_handler(OverflowError)
    async def overflow(request: Request, e: OverflowError):
        # a safety net: a number too large for the engine's columns is the client's, never a 500
        return JSONResponse({"detail": f"a value is out of range: {e}"}, status_code=422)

    @app.post("/events")
    def events(body: bytes = Depends(_body)):
        # a plain def: FastAPI runs it in its thread pool, so concurrent requests wait for the
        # log's fsync together (group commit) instead of blocking the event loop
        payload = _parse_json(body, svc().settings)
        return svc().ingest(payload)

    @app.post("/predict")
    def predict(body: bytes = Depends(_body)):
        # a plain def too: the served row is made durable in the log before the answer
        payload = _parse_json(body, svc().settings)
        if not isinstance(payload, dict):
            raise BadRequest(422, "expected a JSON object describing one flight")
        return svc().predict(payload)

    def no_learning_in_topic_mode() -> None:
        if svc().replica_mode:
            raise BadRequest(404, "online learning is off in replica mode (its label join reads the departures "
                                  "from the service's log; a replica reads no events)")
        if svc().topic_mode:
            raise BadRequest(404, "online learning is off in topic mode (its label join reads the departures "
                                  "from the service's log, and in topic mode they are in the topic)")

    @app.get("/learning")
    def learning():
        no_learning_in_topic_mode()
        return svc().learning_state()

    @app.post("/learning/advance")
    def learning_advance(body: bytes = Depends(_body)):
        no_learning_in_topic_mode()
        return svc().advance_labels(_parse_json(body, svc().settings))

    @app.get("/monitor")
    def monitor():
        return svc().monitor_state()

    @app.get("/monitor/skew")
    def monitor_skew():
        return svc().skew_state()

    @app.get("/health")
    async def health():  # (topic mode too: nothing in it waits for a broker, the lag is refreshed apart)
        s = svc()
        if s.replica_mode:
            # what the writer last published (reads Redis: off the event loop)
            body, status = await run_in_threadpool(s.replica_health)
            return JSONResponse(jsonable_encoder(body), status_code=status)
        if s.topic_mode:
            # the runners' streams: positions, lag, counters, checkpoint age; 503 once a runner failed
            topics = s.topics()
            failed = any(t["error"] is not None or not t["running"] for t in topics.values())
            body = {"status": "error" if failed else "ok", "mode": "topic", "feature_sets": [e.name for e in s.entities],
                    "columns": len(s.manifest["columns"]), "uptime_s": round(time.time() - s.started, 3),
                    "watermarks": {e.name: {p: eng.watermark for p, eng in e.runner.engines.items()} for e in s.entities},
                    "topics": topics, **s.positions()}
            return JSONResponse(jsonable_encoder(body), status_code=503 if failed else 200)
        return {"status": "ok", "feature_sets": [e.name for e in s.entities], "columns": len(s.manifest["columns"]),
                "uptime_s": round(time.time() - s.started, 3),
                "watermarks": {e.name: e.engine.watermark for e in s.entities}, **s.positions()}

    @app.get("/metrics")
    def metrics():  # (a plain def: in replica mode it reads Redis)
        return PlainTextResponse(svc().prometheus(), media_type="text/plain; version=0.0.4")

    return app


app = create_app()


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--access-log", action="store_true", help="log every request (slower)")
    for kind, var in SOURCE_VARS.items():
        ap.add_argument(f"--source-{kind}", default=None, metavar="URL",
                        help=f"topic mode: follow the {kind} from this stream instead of POST /events "
                             f"(kafka://host:port/topic?group=g or redis://host:port/db?streams=s; sets {var})")
    ap.add_argument("--skew-rate", type=int, default=None, metavar="PERCENT",
                    help="percent of keys whose served rows are recomputed from the event stream and "
                         "compared (0: off; default 10; sets RTML_SKEW_RATE)")
    ap.add_argument("--publish-state", default=None, metavar="URL",
                    help="topic mode: publish every key's state to this Redis for replicas "
                         "(redis://host:port/db; sets RTML_PUBLISH_STATE)")
    ap.add_argument("--publish-every", default=None, metavar="DURATION",
                    help="topic mode: how often the state is published (default 100ms; sets RTML_PUBLISH_EVERY)")
    ap.add_argument("--state-url", default=None, metavar="URL",
                    help="replica mode: read the state a writer publishes to this Redis instead of keeping "
                         "engines (redis://host:port/db; sets RTML_STATE_URL)")
    ap.add_argument("--state-timeout", default=None, metavar="SECONDS",
                    help="replica mode: a Redis read slower than this answers 503 (default 0.05; sets RTML_STATE_TIMEOUT)")
    ap.add_argument("--writer", default=None, metavar="URL",
                    help="replica mode: the writer's address, named by POST /events' 409 (sets RTML_WRITER)")
    args = ap.parse_args()
    if args.skew_rate is not None:
        os.environ["RTML_SKEW_RATE"] = str(args.skew_rate)
    for kind, var in SOURCE_VARS.items():
        if getattr(args, f"source_{kind}") is not None:
            os.environ[var] = getattr(args, f"source_{kind}")
    for opt, var in (("publish_state", "RTML_PUBLISH_STATE"), ("publish_every", "RTML_PUBLISH_EVERY"),
                     ("state_url", "RTML_STATE_URL"), ("state_timeout", "RTML_STATE_TIMEOUT"), ("writer", "RTML_WRITER")):
        if getattr(args, opt) is not None:
            os.environ[var] = getattr(args, opt)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")


if __name__ == "__main__":
    main()
