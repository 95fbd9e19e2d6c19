"""The `rtml` command line: `rtml demo`, `rtml backfill`, `rtml parity`.

Input files are read by their extension: ``.parquet`` / ``.pq``, ``.arrow`` / ``.feather`` /
``.ipc`` (Arrow IPC), ``.csv``. CSV is read with explicit rules, never guessed:

* an empty field is null (in every column, strings included); no other spelling is
  (``NA``, ``null`` are ordinary strings);
* the time columns (the feature set's timestamp in events, ``--time`` in the spine) are parsed as
  ISO 8601: every value with a zone (``Z`` or ``+01:00``) -> that instant; every value without
  one -> naive, read as UTC like every naive time in rtml; a column mixing both, or a value that
  is not ISO 8601, is refused with exit code 2 and a hint (integer epoch times need the feature
  set's ``timestamp_unit``);
* other columns get Arrow's type inference (integers, floats, booleans, strings).

``--out`` is written in the format its extension names (``.parquet``, ``.csv``, ``.arrow`` /
``.feather`` / ``.ipc``); any other extension, or a missing directory, is refused before the
backfill starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

import rtml

from . import _io

__all__ = ["main", "read_table", "write_table"]

_WRITERS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "ipc",
            ".feather": "ipc", ".ipc": "ipc"}  # fmt: skip
_READERS = {**_WRITERS}


class CliError(Exception):
    """A usage problem reported as ``rtml: ...`` with exit code 2."""


def _check_out(path: str) -> str:
    p = Path(path)
    fmt = _WRITERS.get(p.suffix.lower())
    if fmt is None:
        raise CliError(
            f"--out {path}: unknown extension {p.suffix or '(none)'!r}; use .parquet, .csv, "
            ".arrow or .feather"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"--out {path}: directory {parent} does not exist")
    return fmt


def write_table(table: pa.Table, path: str) -> None:
    """Write `table` in the format named by `path`'s extension (.parquet, .csv, .arrow / .feather)."""
    fmt = _check_out(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        from pyarrow import feather

        feather.write_feather(table, path)


_ZONE = r"(Z|z|[+-]\d\d(:?\d\d)?)$"


def _parse_times(col: pa.ChunkedArray, name: str, path: str) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return col  # already typed (e.g. integers with timestamp_unit)
    values = col.drop_null()
    if len(values) == 0:
        return col.cast(pa.timestamp("ns", "UTC"))
    zoned = pc.match_substring_regex(values, _ZONE)
    n_zoned = pc.sum(zoned.cast(pa.int64())).as_py() or 0
    if 0 < n_zoned < len(values):
        i = pc.index(zoned, False).as_py()
        j = pc.index(zoned, True).as_py()
        raise CliError(
            f"{path}: column '{name}' mixes times with a zone ({values[j].as_py()!r}) and without "
            f"one ({values[i].as_py()!r}); write every time with its offset (or every one in UTC "
            "without one)"
        )
    target = pa.timestamp("ns", "UTC") if n_zoned else pa.timestamp("ns")
    try:
        return pc.cast(pc.replace_substring_regex(col, " ", "T", max_replacements=1), target)
    except pa.ArrowInvalid as e:
        raise CliError(
            f"{path}: column '{name}': not ISO 8601 times ({e}); write them like "
            "2024-03-01T10:15:00Z, or give the feature set a timestamp_unit for epoch numbers"
        ) from None


def read_table(path: str, time_columns: Sequence[str] = ()) -> pa.Table:
    """Read one file by extension; CSV with the rules in the module docstring."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    if p.is_dir():
        return _io.to_table(
            sorted(str(q) for q in p.glob("*.parquet") if not q.name.startswith("."))
        )
    kind = _READERS.get(p.suffix.lower())
    if kind != "csv":
        return _io.to_table(str(p), str(p))
    import pyarrow.csv as pacsv

    with open(p, "rb") as f:
        header = f.readline().decode("utf-8", "replace").strip().split(",")
    header = [h.strip().strip('"') for h in header]
    convert = pacsv.ConvertOptions(
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        column_types={c: pa.string() for c in time_columns if c in header},
    )
    try:
        table = pacsv.read_csv(p, convert_options=convert)
    except pa.ArrowInvalid as e:
        raise CliError(f"{p}: cannot be read as CSV: {e}") from None
    for c in time_columns:
        if c in table.column_names:
            i = table.column_names.index(c)
            parsed = _parse_times(table.column(c), c, str(p))
            table = table.set_column(i, pa.field(c, parsed.type), parsed)
    return table


def _read_all(paths: Sequence[str], time_columns: Sequence[str]) -> Any:
    tables = [read_table(x, time_columns) for x in paths]
    if len(tables) == 1:
        return tables[0]
    try:  # permissive: timestamps of different units, int32 with int64 ... meet in the wider type
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
        raise CliError(f"{' + '.join(paths)}: the files do not share a schema: {e}") from None


def _backfill(args: argparse.Namespace) -> int:
    fs = rtml.FeatureSet.from_json(Path(args.spec).read_text())
    _check_out(args.out)  # before the (possibly long) backfill
    events = _read_all(args.events, [fs.timestamp] if fs.timestamp_unit is None else [])
    spine = read_table(args.spine, [args.time or fs.timestamp] if fs.timestamp_unit is None else [])
    table = fs.backfill(
        events, spine, key=args.key, time=args.time, progress=not args.quiet, output="arrow"
    )
    write_table(table, args.out)
    if not args.quiet:
        print(f"wrote {table.num_rows:,} rows x {table.num_columns} columns to {args.out}")
    return 0


def _parity(args: argparse.Namespace) -> int:
    import json

    from . import parity

    fs = rtml.FeatureSet.from_json(Path(args.spec).read_text())
    events = _read_all(args.events, [fs.timestamp] if fs.timestamp_unit is None else [])
    if args.json:
        _check_json = Path(args.json).parent
        if str(_check_json) and not _check_json.is_dir():
            raise CliError(f"--json {args.json}: directory {_check_json} does not exist")
    report = parity.check(
        fs,
        events,
        read_table(args.log, [args.at]),
        feature_set=args.feature_set,
        key=args.key,
        at=args.at,
        arrival=args.arrival,
        served_at=args.served_at,
        max_examples=args.examples,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    if not args.quiet:
        print(report.format())
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return 0 if demo.run(args.events, args.keys, args.spine, args.seed) else 1


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo:,} and {hi:,}, got {v:,}")
        return v

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); returns the exit code:
    0 success, 1 parity mismatches (or a demo parity failure), 2 bad input or usage."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["run"]:
        from .runner import main_run

        return main_run(args_list[1:])
    parser = argparse.ArgumentParser(prog="rtml", description="Real-time ML features.")
    parser.add_argument("--version", action="version", version=f"rtml {rtml.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="follow a stream into checkpointed online engines (rtml run --help)")

    files = "Parquet / CSV / Arrow (Feather) file(s)"
    b = sub.add_parser("backfill", help="point-in-time-correct features for a spine")
    b.add_argument("--spec", required=True, help="feature-set JSON document (FeatureSet.to_json())")
    b.add_argument("--events", required=True, nargs="+", help=f"events: {files}")
    b.add_argument("--spine", required=True, help=f"spine: {files}")
    b.add_argument(
        "--out",
        required=True,
        help="output file; its extension picks the format: .parquet, .csv, .arrow / .feather",
    )
    b.add_argument("--key", default=None, help="spine key column (default: the entity)")
    b.add_argument("--time", default=None, help="spine time column (default: the timestamp)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_backfill)

    p = sub.add_parser(
        "parity",
        help="recompute a served-features log offline; exit 1 on any mismatch",
        description="Recompute every served row offline and compare bit for bit. The log schema "
        "is documented in docs/api.md (section 'Served log').",
    )
    p.add_argument("--spec", required=True, help="feature-set JSON document (FeatureSet.to_json())")
    p.add_argument(
        "--events",
        required=True,
        nargs="+",
        help=f"events: {files}, or directories of Parquet parts",
    )
    p.add_argument(
        "--log", required=True, help="served log: a directory of Parquet parts or a file"
    )
    p.add_argument(
        "--feature-set", default=None, help="keep the log rows whose feature_set is this name"
    )
    p.add_argument(
        "--key",
        default=None,
        nargs="+",
        help="log column(s) holding the entity key: one, or one per key column of a composite "
        "entity, in key order (default: key; for a composite entity, its column names)",
    )
    p.add_argument("--at", default="at", help="log column holding the served instant (default: at)")
    p.add_argument(
        "--arrival",
        default=None,
        help="events column holding when each event reached the service; with it, rows "
        "served before an event of their window arrived are counted as 'arrived late', "
        "not as mismatches",
    )
    p.add_argument(
        "--served-at",
        default="served_at",
        help="log column holding when each row was served (default: served_at)",
    )
    p.add_argument(
        "--examples",
        type=_int_in(0, 10**6),
        default=5,
        help="mismatch examples to show per feature",
    )
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_parity)

    d = sub.add_parser("demo", help="backfill, replay online out of order, check parity")
    d.add_argument("--events", type=_int_in(1, 10**9), default=200_000, help="events to generate")
    d.add_argument("--keys", type=_int_in(1, 10**8), default=5_000, help="distinct drivers")
    d.add_argument("--spine", type=_int_in(1, 10**8), default=20_000, help="spine rows to check")
    d.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0)
    d.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (rtml.RtmlError, CliError) as e:
        kind = "" if isinstance(e, CliError) else f"{type(e).__name__}: "
        print(f"rtml: {kind}{e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"rtml: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
