"""`rtml.backfill`: several feature sets' features for one spine, in one table.

A training table usually needs features of more than one entity (the driver's, the pickup
zone's, the rider's), each defined by its own FeatureSet over its own events. This joins them
point-in-time correctly onto one spine, with each set's columns named ``<set>__<feature>``
(Feast's ``full_feature_names``) so two sets' ``count_1h`` never collide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa

from . import _frames, _io
from .exceptions import SchemaError

if TYPE_CHECKING:
    from .features import FeatureSet, Progress

__all__ = ["backfill"]


def backfill(
    spine: Any,
    sets: Mapping[str, tuple["FeatureSet", Any]],
    *,
    keys: Optional[Mapping[str, str | Sequence[str]]] = None,
    time: Optional[str] = None,
    prefix: bool = True,
    progress: "Progress" = None,
    output: _frames.Output = "auto",
    null_keys: str = "error",
) -> Any:
    """Point-in-time-correct features of several feature sets for every spine row.

    `sets` maps a name to ``(feature_set, events)``; each set is backfilled exactly as
    ``feature_set.backfill(events, spine)`` would (same bits), its columns appended in the
    mapping's order. The spine's key column for a set is ``keys[name]`` if given, else the
    set's `entity`; for a set with a composite entity (``entity=["driver_id", "zone"]``) it is
    a list of spine columns, one per key column. The spine's time column is `time`, else the timestamp name the sets share
    (sets with different timestamp names need `time=`).

    Column names: ``<name>__<feature>`` (`prefix=True`, the default), or the plain feature
    names (`prefix=False`), refused with :class:`rtml.SchemaError` when two sets (or a set and
    the spine) would write the same name. `progress`, `output` and `null_keys` mean what they
    mean for `FeatureSet.backfill`.

    >>> import rtml, pandas as pd
    >>> t = pd.to_datetime(["2024-01-01 10:00", "2024-01-01 10:20"], utc=True)
    >>> trips = pd.DataFrame({"driver": [1, 1], "zone": ["a", "b"], "ts": t, "fare": [10.0, 6.0]})
    >>> by_driver = rtml.FeatureSet("driver", "ts", [rtml.count(window="1h")])
    >>> by_zone = rtml.FeatureSet("zone", "ts", [rtml.count(window="1h")])
    >>> spine = pd.DataFrame({"driver": [1], "zone": ["a"],
    ...                       "ts": pd.to_datetime(["2024-01-01 10:30"], utc=True)})
    >>> rtml.backfill(spine, {"driver": (by_driver, trips), "zone": (by_zone, trips)})
       driver zone                        ts  driver__count_1h  zone__count_1h
    0       1    a 2024-01-01 10:30:00+00:00                 2               1
    """
    from .features import FeatureSet, _join_features

    if not isinstance(sets, Mapping) or not sets:
        raise TypeError("sets: expected a non-empty mapping of name -> (FeatureSet, events)")
    keys = dict(keys or {})
    unknown = sorted(set(keys) - set(sets))
    if unknown:
        raise SchemaError(f"keys: {unknown} name no set (the sets are {list(sets)})")
    for name, pair in sets.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"sets: names must be non-empty str, got {name!r}")
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], FeatureSet)):
            raise TypeError(f"sets['{name}']: expected a (FeatureSet, events) pair")
    if time is None:
        stamps = {fs.timestamp for fs, _ in sets.values()}
        if len(stamps) > 1:
            raise SchemaError(
                f"time: the sets' timestamps differ ({sorted(stamps)}); name the spine's time "
                "column with time="
            )
        time = stamps.pop()
    kind = _frames.resolve_output(
        output, spine, allowed=("arrow", "pandas", "polars"), what="backfill"
    )
    spine_in = _frames.prepare(spine)
    sp = _io.to_table(spine_in, "spine")

    names: dict[str, str] = {c: "the spine" for c in sp.column_names}
    columns: list[tuple[str, pa.ChunkedArray]] = []
    for name, (fs, events) in sets.items():
        key = fs._spine_key(keys.get(name))
        for col in (*key, time):
            if col not in sp.column_names:
                raise SchemaError(f"column '{col}': not in the spine (needed by set '{name}')")
        # only the key and time columns go in: the set's feature names never meet the spine's
        got = fs.backfill(
            events,
            sp.select(list(dict.fromkeys([*key, time]))),
            key=key,
            time=time,
            progress=progress,
            output="arrow",
            null_keys=null_keys,
        )
        for feature in fs.feature_names:
            out = f"{name}__{feature}" if prefix else feature
            if out in names:
                raise SchemaError(
                    f"column '{out}': written by set '{name}' and by {names[out]}"
                    + ("" if prefix else "; use prefix=True")
                )
            names[out] = f"set '{name}'"
            columns.append((out, got[feature]))
    feats = pa.table(dict(columns))
    return _join_features(spine_in, sp, feats, kind)
