"""``xvmctl status`` and ``gc`` must run where only the agent's client is: they may
not import the lab (and with it pyroute2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys
from xvmcni.cli import xvmctl
args = xvmctl.build_parser().parse_args([sys.argv[1], "--socket", sys.argv[2]])
code = args.func(args)
print(json.dumps({"code": code, "pyroute2": "pyroute2" in sys.modules,
                  "lab": sorted(m for m in sys.modules if m.startswith("xvmcni.lab"))}))
"""


def run_child(command: str, sock: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", CHILD, command, str(sock)],
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "no xvm-cnid socket" in proc.stderr
    return result


def test_status_and_gc_import_no_pyroute2(tmp_path: Path) -> None:
    for command in ("status", "gc"):
        result = run_child(command, tmp_path / "missing.sock")
        assert result["code"] == 1                    # no agent answers: exit 1
        assert result["pyroute2"] is False
        # Only the lab's names (for the parser's defaults), none of its machinery.
        assert result["lab"] == ["xvmcni.lab", "xvmcni.lab.model", "xvmcni.lab.names"]


def test_the_lab_commands_still_load_the_lab() -> None:
    """The opposite check, so the one above cannot pass by importing nothing."""
    code = ("import sys; import xvmcni.lab as lab; lab.lab_up; "
            "print('pyroute2' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "True"
