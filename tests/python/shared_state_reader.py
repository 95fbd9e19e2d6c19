"""A reader replica for tests/python/test_shared_state.py: a separate process that answers
random (key, at) queries from Redis while a runner writes, then, once told the stream is
drained, answers a fixed list of queries and writes them out (floats as hex: exact bits).

usage: shared_state_reader.py SPEC_JSON_PATH URL PREFIX QUERIES_JSON DONE_FLAG OUT_JSON
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pandas as pd

import rtml


def encode(row: dict) -> dict:
    return {k: (v.hex() if isinstance(v, float) else v) for k, v in row.items()}


def main() -> int:
    spec, url, prefix, queries, done, out = sys.argv[1:7]
    fs = rtml.FeatureSet.from_json(Path(spec).read_text())
    remote = rtml.RemoteEngine(fs, url, prefix=prefix, timeout=0.5)
    qs = [(k, t) for k, t in json.loads(Path(queries).read_text())]
    rnd = random.Random(len(qs))
    counts = {"ok": 0, "query_error": 0, "unavailable": 0}
    Path(out + ".ready").write_text("1")
    # while the runner writes: random queries; every answer is a valid row or a typed error
    while not Path(done).exists():
        k, t = rnd.choice(qs)
        try:
            remote.get(k, at=pd.Timestamp(t, unit="ns", tz="UTC"))
            counts["ok"] += 1
        except rtml.QueryError:
            counts["query_error"] += 1  # the state has moved past `t` for this key
        except rtml.RemoteUnavailableError:
            counts["unavailable"] += 1
        time.sleep(0.001)
    # drained: the fixed list, single gets and one get_many per instant
    answers = [encode(remote.get(k, at=pd.Timestamp(t, unit="ns", tz="UTC"))) for k, t in qs]
    many = {}
    for t in sorted({t for _, t in qs}):
        keys = [k for k, tt in qs if tt == t]
        table, wms = remote.get_many(keys, at=pd.Timestamp(t, unit="ns", tz="UTC"), with_watermark=True)
        many[str(t)] = [encode(r) for r in table.drop_columns([fs.entity]).to_pylist()]
    Path(out).write_text(json.dumps({"answers": answers, "many": many, "counts": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
