"""No-panic guarantee, static half (docs/fuzzing.md, "Panics"): the pyo3 layer (src/python)
never calls `unwrap()` / `expect()` / `panic!` / `unreachable!` / `todo!` / `unimplemented!` /
`assert!`, and indexes only where an allowlisted line says why it cannot go out of bounds; the
engine (src/*.rs) has none of those macros or calls outside its unit tests.

The dynamic half is the fuzzing: the cargo-fuzz targets and tests/python/test_fuzz_api.py
check that no input reaches a panic in the engine.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# Calls and macros that panic on bad data.
PANICKING = re.compile(
    r"\.unwrap\(\)|\.expect\(|\b(panic|unreachable|todo|unimplemented|assert|assert_eq|assert_ne)!"
)
# `name[...]` / `name)[...]` / `name][...]`: indexing or slicing (attributes and types excluded below).
INDEXING = re.compile(r"[A-Za-z0-9_\)\]]\[")

# Indexing in src/python that is provably in bounds, by the exact code on the line.
INDEXING_ALLOWED: dict = {
    # (none at present: the stack buffer of get/vector and the event columns use .get())
}


# Deliberate panics in src/python, by the exact code on the line, and why.
PANIC_ALLOWED: dict = {
    # the test hook `_core.Engine._panic_for_test` (tests/python/test_boundary.py checks that a
    # panic inside the guarded path poisons the engine); reachable only through that private name
    'panic!("deliberate panic (rtml test hook)")': "test hook of the panic guard",
}


def code_lines(path: Path):
    """(line number, code) without comments, doc comments, attributes and #[cfg(test)] modules."""
    lines = path.read_text().splitlines()
    in_tests = False
    depth = 0
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#[cfg(test)]"):
            in_tests = True
            depth = 0
            opened = False
            continue
        if in_tests:
            depth += line.count("{") - line.count("}")
            opened = opened or "{" in line
            # the item ends with its block, or (`mod tests;`, a one-line statement) with its `;`
            if depth <= 0 and ("}" in line or (not opened and stripped.endswith(";"))):
                in_tests = False
            continue
        code = line.split("//", 1)[0]
        if not code.strip() or code.strip().startswith("#["):
            continue
        yield no, code


def strip_strings(code: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', code)


def test_a_test_item_hides_itself_only(tmp_path):
    """`#[cfg(test)]` hides its own item (a block, or a `mod tests;` line), not what follows."""
    f = tmp_path / "m.rs"
    f.write_text(
        "#[cfg(test)]\nmod tests;\nfn a() { x.unwrap() }\n"
        "#[cfg(test)]\nmod t {\n    fn b() { y.unwrap() }\n}\nfn c() {}\n"
    )
    assert [code.strip() for _, code in code_lines(f)] == ["fn a() { x.unwrap() }", "fn c() {}"]


def test_scanner_sees_what_it_must():
    """The patterns catch the forms they are meant to (so the scans below can fail)."""
    for bad in ["x.unwrap()", 'y.expect("z")', 'panic!("no")', "unreachable!()", "assert!(a)"]:
        assert PANICKING.search(bad), bad
    for ok in [
        "x.unwrap_or(0)",
        "y.unwrap_or_else(|| 1)",
        "z.unwrap_or_default()",
        "debug_assert!(a)",
    ]:
        assert not PANICKING.search(ok), ok
    for bad in ["v[i]", "f(x)[0]", "a[1][2]", "&s[..n]"]:
        assert INDEXING.search(strip_strings(bad)), bad
    for ok in ["#[pyo3(signature = (a))]", "let x: [f64; 3] = y;", "vec![1, 2]", "&[u8]", '"a[b]"']:
        assert not INDEXING.search(strip_strings(ok)), ok


def test_binding_layer_has_no_panicking_calls():
    files = sorted((SRC / "python").glob("*.rs"))
    assert files, "src/python not found"
    found = []
    for f in files:
        for no, code in code_lines(f):
            if PANICKING.search(strip_strings(code)) and code.strip() not in PANIC_ALLOWED:
                found.append(f"{f.relative_to(ROOT)}:{no}: {code.strip()}")
    assert not found, "panicking calls in the pyo3 layer:\n" + "\n".join(found)
    # each allowed panic is still there (an entry that matches nothing is stale)
    src = "\n".join(f.read_text() for f in files)
    for code in PANIC_ALLOWED:
        assert src.count(code) == 1, code


def test_binding_layer_indexes_only_where_allowed():
    found = []
    for f in sorted((SRC / "python").glob("*.rs")):
        for no, code in code_lines(f):
            c = strip_strings(code)
            # types and macros: `[f64; 32]`, `&[u8]`, `vec![..]`
            c = re.sub(r"&(mut )?\[[^\]]*\]|:\s*\[[^\]]*\]|!\[", "", c)
            if INDEXING.search(c) and not any(a in code for a in INDEXING_ALLOWED):
                found.append(f"{f.relative_to(ROOT)}:{no}: {code.strip()}")
    assert not found, (
        "indexing in the pyo3 layer (use .get(), or add the line to INDEXING_ALLOWED with why it "
        "is in bounds):\n" + "\n".join(found)
    )


def _testonly_modules(files) -> set:
    """Files that are whole `#[cfg(test)] mod name;` modules (e.g. src/state/tests.rs)."""
    out = set()
    decl = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+(\w+)\s*;")
    for f in files:
        home = f.parent if f.name in ("mod.rs", "lib.rs", "main.rs") else f.parent / f.stem
        for name in decl.findall(f.read_text()):
            out.add(home / f"{name}.rs")
    return out


def _engine_files():
    """Every engine source file: src/**/*.rs but the pyo3 layer and test-only modules."""
    files = [f for f in sorted(SRC.rglob("*.rs")) if (SRC / "python") not in f.parents]
    tests = _testonly_modules(files)
    return [f for f in files if f not in tests]


def test_engine_files_reach_into_every_module_folder():
    """The scan below covers the engine's subfolders (it once read src/*.rs only, and three
    panicking calls sat in src/learn and src/monitor), and skips the test-only files."""
    files = _engine_files()
    folders = {f.parent.relative_to(SRC).as_posix() for f in files}
    assert {".", "online", "learn", "monitor", "state", "transform"} <= folders, folders
    assert SRC / "online" / "tests.rs" not in files
    assert SRC / "state" / "tests.rs" not in files
    assert not any((SRC / "python") in f.parents for f in files)


def test_engine_has_no_panicking_calls_outside_tests():
    found = []
    for f in _engine_files():
        for no, code in code_lines(f):
            if PANICKING.search(strip_strings(code)):
                found.append(f"{f.relative_to(ROOT)}:{no}: {code.strip()}")
    assert not found, "panicking calls in the engine:\n" + "\n".join(found)
