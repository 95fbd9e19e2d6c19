"""JSON decode, decode + ingest, and a Runner over in-memory messages, for instruction counts
(noisy machines: compare callgrind totals, not wall times). Issue 13.

    python bench/streams_profile.py prep|decode|di|runner1|runner2 [N] [BATCH]

N messages (default 200,000) of bench_streams.py's workload (~53-byte JSON, N/10-key space, the
18-feature set), in chunks of BATCH (default 10,000). `prep` builds the messages, the decoder and
the chunks and stops; `decode` decodes every chunk (`_core.JsonDecoder`); `di` decodes and
ingests into one `OnlineEngine` (bench_streams.py's "decode + ingest" row); `runnerP` runs a
`Runner` over `sources.replay_messages` with P partitions until idle (one checkpoint at the end).
A mode's own instructions are its total minus prep's:

    PY=$(python3 -c 'import sys; print(sys.executable)')
    for m in prep decode di runner1; do
      RTML_NUM_THREADS=1 PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=sp.$m.cg $PY bench/streams_profile.py $m 200000
    done
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_streams  # noqa: E402
import common  # noqa: E402


def main() -> None:
    mode = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    msgs, keys = bench_streams.messages(n, n // 10)

    import pyarrow as pa

    import rtml
    import rtml.sources
    from rtml.runner import Runner
    from rtml.sources import _decoder_config

    fs = common.feature_set()
    src = rtml.sources.replay_messages(msgs, keys, 1, timestamp_unit="ms")
    dec = rtml._core.JsonDecoder(*_decoder_config(src, fs))
    chunks = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
    if mode == "decode":
        for c in chunks:
            dec.decode(c, True)
    elif mode == "di":
        eng = fs.online()
        for c in chunks:
            b, _, _ = dec.decode(c, True)
            eng.ingest(pa.Table.from_batches([b]))
    elif mode.startswith("runner"):
        parts = int(mode[len("runner") :] or 1)
        source = rtml.sources.replay_messages(msgs, keys, parts, timestamp_unit="ms")
        with tempfile.TemporaryDirectory() as d:
            r = Runner(fs, source, d, checkpoint_every="1h", max_batch=batch)
            r.run_until_idle()
    elif mode != "prep":
        raise SystemExit(f"unknown mode {mode!r}")
    print(mode, "done")


if __name__ == "__main__":
    main()
