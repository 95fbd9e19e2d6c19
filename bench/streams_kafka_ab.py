"""Old vs new rtml builds on bench_streams.py's Kafka rows, alternating on one broker in one run
(a shared, noisy machine: compare within a run, as ratios). Issue 13, session 10.

    PATH=/work/shared/bin:$PATH python bench/streams_kafka_ab.py \\
        --side old=/tmp/rtml-main --side new=python --rounds 3

One tansu broker and one 2-partition topic of bench_streams.py's 1M messages; then, per round,
each in a fresh process: the raw batched consume of confluent-kafka with the client's defaults
(`raw`) and with the fetch settings rtml.sources.kafka gives its consumer (`raw_cfg`,
bench_streams.RUNNER_FETCH_CONFIG), and `Runner.run_until_idle` over `rtml.sources.kafka` for
every `--side NAME=DIR` (a directory holding an `rtml` package with its built extension), the
sides in rotated order. Every clock starts when the first batch is in (that batch counted, not
timed); the runner's includes its end-of-stream detection and final checkpoint. Prints each
round's rates, `runner_vs_raw` of each side (against the faster raw of the round) and the
1-minute load average. The children hold no copy of the messages (bench_streams.py's process
does, which makes its full garbage collections slower, on both sides alike).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def threads_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process by name (Python threads by their name,
    librdkafka's and rtml's native ones by their kernel name), Linux only."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            f = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), comm).split("_")[0]
        name = "rdk" if name.startswith("rdk") else name
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


def child(mode: str, bootstrap: str, topic: str, n: int, batch: int) -> None:
    sys.path.insert(0, str(HERE))
    if mode.startswith("raw"):
        import bench_streams
        from confluent_kafka import Consumer

        extra = bench_streams.RUNNER_FETCH_CONFIG if mode == "raw_cfg" else {}
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False, **extra})
        c.subscribe([topic])
        got_n, t0, c0 = 0, 0.0, 0.0
        while got_n < n:
            got = c.consume(batch, 1.0)
            if got and not t0:
                t0, c0 = time.perf_counter(), cpu()
            for m in got:
                if m.error() is None:
                    m.value()
                    got_n += 1
        dt = time.perf_counter() - t0
        print(json.dumps({"rate": got_n / dt, "cpu_s": cpu() - c0}))
        c.close()
        return
    import common

    import rtml.sources
    from rtml.runner import Runner

    with tempfile.TemporaryDirectory() as d:
        r = Runner(common.feature_set(), rtml.sources.kafka(bootstrap, topic, f"rtml-{uuid.uuid4().hex[:6]}",
                                                            timestamp_unit="ms"), d, max_batch=batch)
        r._open()
        while not r.engines:  # the group join, not counted
            r.step()
        if os.environ.get("AB_GC_FREEZE"):  # (an experiment: the objects so far out of the GC's way)
            import gc

            gc.freeze()
        t_assign = time.perf_counter()
        while not r.step():
            pass
        t0, c0 = time.perf_counter(), cpu()
        r.run_until_idle(timeout=600)
        t1 = time.perf_counter()
        assert r.metrics(lag=False)["events_in"] == n, r.metrics(lag=False)
        th = threads_cpu()
        print(json.dumps({"rate": n / (t1 - t0), "rate_from_assign": n / (t1 - t_assign), "cpu_s": cpu() - c0,
                          "checkpoints": r.metrics(lag=False)["checkpoints"],
                          "threads_cpu_s": {k: round(v, 2) for k, v in sorted(th.items(), key=lambda kv: -kv[1])}}))
        r.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", action="append", help="NAME=DIR[:VAR=VALUE...] (DIR holds rtml/)")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, bootstrap, topic, n, batch = args.child
        child(mode, bootstrap, topic, int(n), int(batch))
        return
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests" / "python"))
    import bench_streams

    from services import start_tansu

    sides = dict(s.split("=", 1) for s in args.side or [])
    msgs, keys = bench_streams.messages(args.events, args.keys)
    svc = start_tansu()
    rounds = []
    try:
        bootstrap = f"127.0.0.1:{svc.port}"
        topic = bench_streams.produce_topic(bootstrap, msgs, keys, "ab")
        del msgs, keys

        def run(mode: str, path: str | None) -> dict:
            env = dict(os.environ)
            if path is not None:
                path, *extra = path.split(":")  # DIR[:VAR=VALUE...]: environment of that side
                env["PYTHONPATH"] = os.path.abspath(path)
                env.update(e.split("=", 1) for e in extra)
            wrap = os.environ.get("AB_WRAP", "").split() if mode == "runner" else []  # e.g. a profiler
            out = subprocess.run([*wrap, sys.executable, __file__, "--child", mode, bootstrap, topic,
                                  str(args.events), str(args.batch)], env=env, capture_output=True, text=True,
                                 check=False)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            res: dict = json.loads([x for x in out.stdout.splitlines() if x.startswith("{")][-1])
            return res

        names = list(sides)
        for i in range(args.rounds):
            row: dict = {"load_1min": os.getloadavg()[0]}
            row["raw"] = run("raw", None)
            row["raw_cfg"] = run("raw_cfg", None)
            for name in names[i % len(names):] + names[: i % len(names)] if names else []:
                row[name] = run("runner", sides[name])
            best_raw = max(row["raw"]["rate"], row["raw_cfg"]["rate"])
            for name in names:
                row[name]["runner_vs_raw"] = row[name]["rate"] / best_raw
            row["load_1min_end"] = os.getloadavg()[0]
            rounds.append(row)
            print(f"round {i + 1}: load {row['load_1min']:.2f}-{row['load_1min_end']:.2f}  "
                  f"raw {row['raw']['rate'] / 1e3:.0f}k (cpu {row['raw']['cpu_s']:.2f}s)  "
                  f"raw_cfg {row['raw_cfg']['rate'] / 1e3:.0f}k (cpu {row['raw_cfg']['cpu_s']:.2f}s)  "
                  + "  ".join(f"{n} {row[n]['rate'] / 1e3:.0f}k ({row[n]['runner_vs_raw']:.3f}, "
                              f"from assign {row[n]['rate_from_assign'] / 1e3:.0f}k, cpu {row[n]['cpu_s']:.2f}s "
                              f"{row[n].get('threads_cpu_s')})"
                              for n in names), flush=True)
    finally:
        svc.stop()
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()
