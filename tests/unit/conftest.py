"""Unit tests run from a checkout without installing the package."""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[2] / "src")
# Only when the package is not installed: an installed copy must win so the tests
# exercise what ships.
try:
    import xvmcni  # noqa: F401
except ImportError:
    sys.path.insert(0, _SRC)
