"""The `rtml` command line: `rtml demo`, `rtml backfill`, `rtml parity`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import rtml


def _backfill(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    fs = rtml.FeatureSet.from_json(Path(args.spec).read_text())
    table = fs.backfill(args.events, args.spine, key=args.key, time=args.time, progress=not args.quiet)
    pq.write_table(table, args.out)
    if not args.quiet:
        print(f"wrote {table.num_rows:,} rows x {table.num_columns} columns to {args.out}")
    return 0


def _parity(args: argparse.Namespace) -> int:
    import json

    from . import parity

    report = parity.check(args.spec, args.events if len(args.events) > 1 else args.events[0], args.log,
                          feature_set=args.feature_set, key=args.key, at=args.at, max_examples=args.examples)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    if not args.quiet:
        print(report.format())
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return 0 if demo.run(args.events, args.keys, args.spine, args.seed) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="rtml", description="Real-time ML features.")
    parser.add_argument("--version", action="version", version=f"rtml {rtml.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("backfill", help="point-in-time-correct features for a spine")
    b.add_argument("--spec", required=True, help="feature-set JSON document (FeatureSet.to_json())")
    b.add_argument("--events", required=True, nargs="+", help="events: Parquet/CSV/Feather file(s)")
    b.add_argument("--spine", required=True, help="spine: Parquet/CSV/Feather file")
    b.add_argument("--out", required=True, help="output Parquet file")
    b.add_argument("--key", default=None, help="spine key column (default: the entity)")
    b.add_argument("--time", default=None, help="spine time column (default: the timestamp)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_backfill)

    p = sub.add_parser("parity", help="recompute a served-features log offline; exit 1 on any mismatch")
    p.add_argument("--spec", required=True, help="feature-set JSON document (FeatureSet.to_json())")
    p.add_argument("--events", required=True, nargs="+", help="events: Parquet/CSV/Feather file(s)")
    p.add_argument("--log", required=True, help="served log: a directory of Parquet parts or a file")
    p.add_argument("--feature-set", default=None, help="keep the log rows whose feature_set is this name")
    p.add_argument("--key", default="key", help="log column holding the entity key (default: key)")
    p.add_argument("--at", default="at", help="log column holding the served instant (default: at)")
    p.add_argument("--examples", type=int, default=5, help="mismatch examples to show per feature")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_parity)

    d = sub.add_parser("demo", help="backfill, replay online out of order, check parity")
    d.add_argument("--events", type=int, default=200_000)
    d.add_argument("--keys", type=int, default=5_000)
    d.add_argument("--spine", type=int, default=20_000)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except rtml.RtmlError as e:
        print(f"rtml: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"rtml: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
