"""pytest plugin for `make doctest` (`-p doctest_namespace`): the docstring examples of the rtml
package run with `rtml` imported, as a user who reads them has it."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _rtml_in_doctests(doctest_namespace: dict[str, Any]) -> None:
    import rtml

    doctest_namespace["rtml"] = rtml
