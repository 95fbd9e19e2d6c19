"""The README's Python snippets run as written, in order, in one namespace (as a reader would
paste them into one notebook). A block that cannot run here must say so on its first line:
``# readme-test: skip (<reason>)``; it is then reported as skipped with that reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SKIP = re.compile(r"#\s*readme-test:\s*skip\s*\((.+)\)")


def _blocks():
    text = README.read_text()
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, m.start()) + 1
        out.append((line, m.group(1)))
    return out


def test_readme_has_python_blocks():
    assert len(_blocks()) >= 2


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets write features.json, state.snap ...
    ns: dict = {"__name__": "__readme__"}
    for line, code in _blocks():
        if _skip_reason(code) is None:
            exec(compile(code, f"README.md:{line}", "exec"), ns)  # noqa: S102


def _skip_reason(code):
    first = code.strip().splitlines()[0] if code.strip() else ""
    m = SKIP.match(first.strip())
    return m.group(1) if m else None


@pytest.mark.parametrize("line,code", [b for b in _blocks() if _skip_reason(b[1])] or [(0, None)])
def test_readme_blocks_marked_skip_are_reported(line, code):
    if code is None:
        return  # no block is marked: every one ran above
    pytest.skip(f"README.md:{line}: {_skip_reason(code)}")
