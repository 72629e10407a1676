"""The node agent: running and answering, its version against this xvmctl's, and
the result of its last reconcile pass."""

from __future__ import annotations

import importlib.metadata
import time

from xvmcni.cli.status import AgentUnavailable
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import Host

NAME = "agent"


def _own_version() -> str:
    try:
        return importlib.metadata.version("xvm-cni")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run(host: Host) -> list[Finding]:
    reply = host.agent()
    sock = host.options.socket
    if isinstance(reply, AgentUnavailable):
        return [fd.fail(NAME, "xvm-cnid", f"{reply.msg}: every ADD runs in-process (slower) "
                        "and nothing repairs the host side or follows the control plane",
                        reply.hint or "systemctl start xvm-cnid")]
    agent = reply.get("agent") or {}
    found = [fd.ok(NAME, "xvm-cnid", f"pid {agent.get('pid', '?')} answers on {sock}")]
    version, mine = str(agent.get("version") or "unknown"), _own_version()
    if version != mine:
        found.append(fd.warn(NAME, "xvm-cnid version", f"the agent runs {version}, this "
                             f"xvmctl is {mine}: the agent was not restarted after an "
                             "upgrade", "systemctl restart xvm-cnid"))
    last = agent.get("reconcile")
    if not isinstance(last, dict):
        found.append(fd.warn(NAME, "reconcile", "the agent reports no reconcile pass yet",
                             f"xvmctl gc --socket {sock}"))
        return found
    age = time.time() - float(last.get("at", 0))
    for report in last.get("networks") or []:
        if report.get("error"):
            found.append(fd.fail(NAME, f"reconcile {report.get('name')}",
                                 f"the agent's last reconcile ({age:.0f} s ago) failed: "
                                 f"{report['error']}", "fix the cause named, then: "
                                 f"xvmctl gc --socket {sock}", str(report.get("name", ""))))
    if all(not r.get("error") for r in last.get("networks") or []):
        found.append(fd.ok(NAME, "reconcile", f"last pass {age:.0f} s ago succeeded"))
    return found
