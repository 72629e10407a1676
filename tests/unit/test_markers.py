"""The directory markers of tests/conftest.py: ``-m "not root"`` must leave out every
test that needs root, and keep every unit test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def collected(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args, str(TESTS)],
                          capture_output=True, text=True, timeout=120, cwd=TESTS.parent,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_not_root_selects_exactly_the_unit_tests() -> None:
    not_root = collected("-m", "not root")
    assert not_root, "collected nothing"
    assert all(t.startswith("tests/unit/") for t in not_root), \
        [t for t in not_root if not t.startswith("tests/unit/")][:5]
    every = collected()
    assert sorted(not_root) == sorted(t for t in every if t.startswith("tests/unit/"))


def test_e2e_marker_selects_only_e2e_tests() -> None:
    e2e = collected("-m", "e2e")
    assert e2e and all(t.startswith("tests/e2e/") for t in e2e)
    root = collected("-m", "root")
    assert any(t.startswith("tests/integration/") for t in root)
