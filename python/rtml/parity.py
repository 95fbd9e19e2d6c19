"""Production consistency check: recompute served features offline and compare them bit for bit.

A model service logs every feature vector it served (key, instant, values). Given the feature-set
document, the events and that log, `check` recomputes each served row with `FeatureSet.backfill`
(the served (key, at) pairs are the spine) and counts, per feature, how many served values equal
the offline value exactly (float64 bits; null equals null).

The served log is a table (pyarrow / pandas / polars, or Parquet file(s) or a directory of them)
with these columns (names of `key`, `at`, `served_at` configurable):

=============== ================================ ===============================================
column          type                             meaning
=============== ================================ ===============================================
``key``         int64 or string                  the entity key the features were read for
                                                 (a composite entity: one column per key
                                                 column, named like them by default)
``at``          timestamp (any unit / zone)      the instant the features were read at
                                                 (``engine.get(key, at=...)``)
``names``       list<string>  (long form)        the feature names, in the feature set's order
``values``      list<float64> (long form)        the served values (null or NaN = null)
<feature>       float64 / int64 (wide form)      instead of names / values: one column per
                                                 feature, named like it
``feature_set`` string, optional                 which feature set a row belongs to (a log
                                                 shared by several)
``served_at``   timestamp, optional              wall-clock time the row was served; with the
                                                 events' arrival column (``arrival=``) it tells
                                                 late-arriving events from real mismatches
=============== ================================ ===============================================

examples/serving/app.py writes the long form (plus ``request_id``, ``vector``, ``probability``).

A served value that differs from the offline one is counted as **arrived late** (not a
mismatch) when `arrival` names the events' arrival-time column, the log has ``served_at``, and
recomputing the row from only the events that had arrived by ``served_at`` gives the served
value exactly: the service answered correctly with what it had, and an event of that window came
later. Everything else that differs is a **mismatch** (exit code 1 in ``rtml parity``).

    >>> report = rtml.parity.check(fs, events, "served_log/", feature_set="tail")  # doctest: +SKIP
    >>> report.ok, report.rows, report.features["tail_delay_mean_6h"].mismatches  # doctest: +SKIP
    (True, 12000, 0)
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import _io
from .exceptions import SchemaError
from .features import FeatureSet

__all__ = ["FeatureParity", "ParityReport", "check", "read_served_log"]


@dataclass
class FeatureParity:
    """Counts for one feature: exact `matches`, `arrived_late` (differ only because an event
    reached the service after the row was served), `mismatches`, and a few `examples`."""

    name: str
    matches: int = 0
    mismatches: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    arrived_late: int = 0

    @property
    def total(self) -> int:
        return self.matches + self.mismatches + self.arrived_late


@dataclass
class ParityReport:
    rows: int
    features: dict[str, FeatureParity]

    @property
    def ok(self) -> bool:
        return all(f.mismatches == 0 for f in self.features.values())

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features.values())

    @property
    def arrived_late(self) -> int:
        return sum(f.arrived_late for f in self.features.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "ok": self.ok,
            "features": {
                n: {
                    "matches": f.matches,
                    "arrived_late": f.arrived_late,
                    "mismatches": f.mismatches,
                    "examples": f.examples,
                }
                for n, f in self.features.items()
            },
        }

    def format(self) -> str:
        width = max([len(n) for n in self.features] + [7])
        lines = [
            f"{'feature':<{width}}  {'exact':>10}  {'late':>8}  {'mismatch':>9}  {'exact %':>8}"
        ]
        for n, f in self.features.items():
            pct = 100.0 * f.matches / f.total if f.total else 100.0
            lines.append(
                f"{n:<{width}}  {f.matches:>10,}  {f.arrived_late:>8,}  {f.mismatches:>9,}  {pct:>7.3f}%"
            )
        for n, f in self.features.items():
            for ex in f.examples:
                lines.append(
                    f"  mismatch {n}: key={ex['key']!r} at={ex['at']} served={ex['served']!r} offline={ex['offline']!r}"
                )
        verdict = (
            "all served values match exactly"
            if self.ok
            else f"{self.mismatches:,} served values differ"
        )
        if self.ok and self.arrived_late:
            verdict = (
                f"no mismatches; {self.arrived_late:,} served values differ only because an "
                "event of their window arrived after they were served"
            )
        elif self.arrived_late:
            verdict += f" ({self.arrived_late:,} more differ only because an event arrived late)"
        lines.append(f"{self.rows:,} served rows: {verdict}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def read_served_log(log: Any) -> pa.Table:
    """The served log as one table: a directory of Parquet parts, file path(s), or any table."""
    if isinstance(log, (str, os.PathLike)) and Path(log).is_dir():
        parts = sorted(p for p in Path(log).glob("*.parquet") if not p.name.startswith("."))
        if not parts:
            raise SchemaError(f"served log: no Parquet files in {log}")
        return _io.to_table([str(p) for p in parts], "served log")
    return _io.to_table(log, "served log")


def _bits(v: float | None) -> bytes | None:
    return None if v is None else struct.pack("<d", float(v))


def check(
    spec: str | FeatureSet,
    events: Any,
    served_log: Any,
    *,
    feature_set: str | None = None,
    key: str | Sequence[str] | None = None,
    at: str = "at",
    arrival: str | None = None,
    served_at: str = "served_at",
    max_examples: int = 5,
) -> ParityReport:
    """Recompute every served row offline and compare per feature, bit for bit.

    `spec`: a FeatureSet or its JSON document (text or a path to it). `events`: what
    `FeatureSet.backfill` accepts. `served_log`: see the module docstring. `feature_set` keeps
    only the log rows of that name (long logs holding several feature sets). `key` / `at` /
    `served_at`: the log's column names; `key` defaults to ``"key"``, and for a composite
    entity (``entity=["driver_id", "zone"]``) it is a list of log columns, one per key column
    (default: the entity's column names); examples then show the key as a tuple. `arrival`: the events' arrival-time column (null =
    known from the start); with it, values that differ only because an event arrived after the
    row was served are counted in ``arrived_late``, not as mismatches.

    Returns a :class:`ParityReport` (``ok``, ``rows``, ``mismatches``, ``arrived_late``,
    ``features[name]`` with counts and examples, ``format()``, ``to_dict()``). Raises
    SchemaError naming the missing column, or when a long log holds several feature sets and
    `feature_set` is not given.
    """
    if isinstance(spec, FeatureSet):
        fs = spec
    elif isinstance(spec, (str, os.PathLike)) and not str(spec).lstrip().startswith("{"):
        fs = FeatureSet.from_json(Path(spec).read_text())
    else:
        fs = FeatureSet.from_json(str(spec))
    ent = fs.entity_columns
    if key is None:
        key_cols = ent if fs.is_composite else ["key"]
    else:
        key_cols = [key] if isinstance(key, str) else list(key)
    if len(key_cols) != len(ent) or not all(isinstance(c, str) for c in key_cols):
        raise SchemaError(
            f"key: name one served-log column per key column of the entity {fs.entity!r} "
            f"({len(ent)}), got {key!r}"
        )
    names = fs.feature_names
    log = read_served_log(served_log)
    for col in (*key_cols, at):
        if col not in log.column_names:
            raise SchemaError(f"served log: no column '{col}' (columns: {log.column_names})")
    if feature_set is not None:
        if "feature_set" not in log.column_names:
            raise SchemaError(
                "served log: feature_set= given but the log has no 'feature_set' column"
            )
        log = log.filter(pc.equal(log.column("feature_set"), feature_set))

    if "names" in log.column_names and "values" in log.column_names:  # long format
        if feature_set is None and "feature_set" in log.column_names and log.num_rows:
            # keep the rows that carry exactly this feature set's features
            same = [r == names for r in log.column("names").to_pylist()]
            log = log.filter(pa.array(same, pa.bool_()))
        served: dict[str, list[Any]] = {n: [] for n in names}
        for i, (row_names, row_values) in enumerate(
            zip(log.column("names").to_pylist(), log.column("values").to_pylist())
        ):
            if row_names != names:
                raise SchemaError(
                    f"served log row {i}: features {row_names} are not this feature set's {names}; "
                    "pass feature_set= to select its rows"
                )
            for n, v in zip(names, row_values):
                served[n].append(v)
    else:
        missing = [n for n in names if n not in log.column_names]
        if missing:
            raise SchemaError(
                f"served log: no column for feature(s) {missing} (and no names/values lists)"
            )
        served = {n: log.column(n).cast(pa.float64()).to_pylist() for n in names}

    ev = _io.to_table(events, "events")
    keys: list[pa.ChunkedArray] = []
    for e_col, k_col in zip(ent, key_cols):
        part = log.column(k_col)
        ev_key = ev.schema.field(e_col).type if e_col in ev.column_names else None
        if (
            ev_key is not None
            and pa.types.is_integer(ev_key)
            and not pa.types.is_integer(part.type)
        ):
            part = part.cast(pa.int64())
        elif (
            ev_key is not None
            and not pa.types.is_integer(ev_key)
            and pa.types.is_integer(part.type)
        ):
            part = part.cast(pa.string())
        keys.append(part)
    spine_keys = [f"__key{j}" for j in range(len(ent))]
    spine = pa.table({**dict(zip(spine_keys, keys)), "__at": log.column(at)})
    offline = (
        fs.backfill(ev, spine, key=spine_keys, time="__at", progress=False, output="arrow")
        if log.num_rows
        else None
    )

    report = ParityReport(rows=log.num_rows, features={n: FeatureParity(n) for n in names})
    if offline is None:
        return report
    if arrival is not None:
        if arrival not in ev.column_names:
            raise SchemaError(f"events: no arrival column '{arrival}' (columns: {ev.column_names})")
        if served_at not in log.column_names:
            raise SchemaError(
                f"served log: no column '{served_at}' (needed with arrival=; columns: {log.column_names})"
            )
    at_list = log.column(at).to_pylist()
    key_list: list[Any] = (
        keys[0].to_pylist() if len(keys) == 1 else list(zip(*[k.to_pylist() for k in keys]))
    )
    differ: dict[int, list[str]] = {}
    for n in names:
        off = offline.column(n).cast(pa.float64()).to_pylist()
        for i, (s, o) in enumerate(zip(served[n], off)):
            if _bits(_null_nan(s)) != _bits(o):
                differ.setdefault(i, []).append(n)
    late: dict[int, set[str]] = {}
    if arrival is not None and differ:
        late = _late_rows(fs, ev, arrival, log, served_at, keys, at, differ, served)
    for n in names:
        fp = report.features[n]
        off = offline.column(n).cast(pa.float64()).to_pylist()
        for i, (s, o) in enumerate(zip(served[n], off)):
            s = _null_nan(s)
            if _bits(s) == _bits(o):
                fp.matches += 1
            elif n in late.get(i, ()):
                fp.arrived_late += 1
            else:
                fp.mismatches += 1
                if len(fp.examples) < max_examples:
                    fp.examples.append(
                        {
                            "row": i,
                            "key": key_list[i],
                            "at": str(at_list[i]),
                            "served": s,
                            "offline": o,
                        }
                    )
    return report


def _null_nan(v: Any) -> Any:
    if v is not None and isinstance(v, float) and math.isnan(v):
        return None  # NaN is how a vector spells null
    return v


def _late_rows(
    fs: FeatureSet,
    ev: pa.Table,
    arrival: str,
    log: pa.Table,
    served_at: str,
    keys: list[pa.ChunkedArray],
    at: str,
    differ: dict[int, list[str]],
    served: dict[str, list[Any]],
) -> dict[int, set[str]]:
    """For each differing row: the features whose served value equals the offline value
    computed from only the events that had arrived by the row's `served_at`."""
    arrived = ev.column(arrival)
    if not pa.types.is_timestamp(arrived.type):
        raise SchemaError(f"events column '{arrival}': expected timestamps, got {arrived.type}")
    arrived = (
        arrived.cast(pa.timestamp("ns", "UTC"))
        if arrived.type.tz
        else arrived.cast(pa.timestamp("ns")).cast(pa.timestamp("ns", "UTC"))
    )
    ev = ev.drop_columns([arrival])
    out: dict[int, set[str]] = {}
    served_col = log.column(served_at)
    for i, feats in differ.items():
        t = served_col[i].as_py()
        if t is None:
            continue
        if t.tzinfo is None:
            import datetime as _dt

            t = t.replace(tzinfo=_dt.timezone.utc)
        keep = pc.or_kleene(
            pc.is_null(arrived), pc.less_equal(arrived, pa.scalar(t, pa.timestamp("ns", "UTC")))
        )
        spine_cols: dict[str, Any] = {}
        for j, (e_col, part) in enumerate(zip(fs.entity_columns, keys)):
            typ = ev.schema.field(e_col).type
            keep = pc.and_(keep, pc.equal(ev.column(e_col), part[i].cast(typ)))
            spine_cols[f"__key{j}"] = pa.array([part[i].as_py()], typ)
        sub = ev.filter(keep)
        spine = pa.table({**spine_cols, "__at": log.column(at).slice(i, 1)})
        again = fs.backfill(
            sub, spine, key=list(spine_cols), time="__at", progress=False, output="arrow"
        )
        same = {
            n
            for n in feats
            if _bits(_null_nan(served[n][i]))
            == _bits(again.column(n).cast(pa.float64())[0].as_py())
        }
        if same:
            out[i] = same
    return out
