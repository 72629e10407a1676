"""The plugin executable runtimes call: installed, executable, and its
interpreter (the ``#!`` line) present."""

from __future__ import annotations

import os
from pathlib import Path

from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import Host

NAME = "plugin"
PLUGIN = "xvm-cni"


def run(host: Host) -> list[Finding]:
    dirs = host.options.bin_dirs
    path = next((d / PLUGIN for d in dirs if (d / PLUGIN).exists()), None)
    if path is None:
        where = ", ".join(str(d) for d in dirs)
        return [fd.fail(NAME, PLUGIN, f"no {PLUGIN} in {where}: the runtime cannot attach "
                        "any container", "sudo make install (or --cni-bin-dir DIR where "
                        "your runtime looks)")]
    if not os.access(path, os.X_OK):
        return [fd.fail(NAME, str(path), "the plugin is not executable",
                        f"chmod 755 {path}")]
    try:
        first = path.read_bytes()[:256].split(b"\n", 1)[0].decode(errors="replace")
    except OSError as exc:
        return [fd.error(NAME, str(path), f"cannot read the plugin: {exc.strerror}")]
    if not first.startswith("#!"):
        return [fd.ok(NAME, str(path), "installed (a binary, no interpreter line)")]
    interpreter = Path(first[2:].split()[0]) if first[2:].split() else Path("")
    if not (interpreter.is_file() and os.access(interpreter, os.X_OK)):
        return [fd.fail(NAME, str(path), f"its interpreter {interpreter} is missing: every "
                        "CNI call fails before it starts", "sudo make install (it recreates "
                        "the virtualenv and the plugin file)")]
    return [fd.ok(NAME, str(path), f"installed, interpreter {interpreter} present")]
