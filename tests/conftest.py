"""Markers by directory, so ``-m "not root"`` really selects only the unit tests.

A ``pytestmark`` in a conftest.py has no effect (pytest reads it only in test
modules), so the markers are applied here, at collection: everything under
tests/integration and tests/e2e needs root and network namespaces, and tests/e2e
also runs a multi-host lab or a real container runtime.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_MARKS = {
    _HERE / "integration": ("root",),
    _HERE / "e2e": ("root", "e2e"),
}


def marks_for(path: Path) -> tuple[str, ...]:
    """The markers a test file gets from the directory it lives in."""
    resolved = path.resolve()
    for directory, marks in _MARKS.items():
        if resolved.is_relative_to(directory):
            return marks
    return ()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for mark in marks_for(item.path):
            item.add_marker(getattr(pytest.mark, mark))
