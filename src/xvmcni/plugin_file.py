"""Write the ``xvm-cni`` executable that runtimes call: a plain Python file.

A plain file with ``-IS`` starts fastest (no site, no zipimport); it puts the
package's site-packages on sys.path itself and runs the stdlib-only shim, which
forwards to the agent or falls back in-process.

    python -m xvmcni.plugin_file /opt/cni/bin/xvm-cni
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import xvmcni


def render(python: str, package_root: str) -> str:
    return "\n".join([
        f"#!{python} -IS",
        "# xvm-cni CNI plugin (thin: talks to xvm-cnid, else runs in-process).",
        "import sys",
        f"sys.path.insert(0, {package_root!r})",
        "from xvmcni.cmd.shim import main",
        "sys.exit(main())",
        "",
    ])


def package_root() -> str:
    """The directory holding the ``xvmcni`` package (site-packages, or src/ for -e)."""
    return str(Path(xvmcni.__file__).resolve().parent.parent)


def write(dest: Path, python: str | None = None) -> Path:
    """Write the executable atomically; returns ``dest``."""
    interpreter = python or sys.executable
    text = render(interpreter, package_root())
    # The fallback needs pyroute2 from the interpreter's own site-packages too. After the
    # standard library, as in any interpreter: looking up _json would otherwise list that
    # big directory first on every call.
    purelib = sysconfig.get_path("purelib")
    if purelib != package_root():
        text = text.replace("from xvmcni", f"sys.path.append({purelib!r})\nfrom xvmcni", 1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m xvmcni.plugin_file DEST")
    print(write(Path(sys.argv[1])))
