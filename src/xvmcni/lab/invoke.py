"""Run a CNI plugin once, as a container runtime does: ``CNI_*`` in the environment,
the network configuration on stdin, the process inside the host's network
namespace, and stdout read back as a result or a CNI error object.

The calling thread enters the host namespace and forks the plugin from there (a
child inherits the namespaces of the thread that forks it): no ``nsenter`` or
``ip netns exec`` exec is added to the call, which matters to the benchmarks. A
caller that already is inside the host (a benchmark loop) passes no ``host``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xvmcni.lab import plumbing

CNI_PATH = "/usr/lib/cni:/opt/cni/bin"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 120.0


@dataclass
class CniErrorReply:
    """What a failed plugin said: its CNI error object, or its raw stdout."""

    code: int | None
    msg: str
    details: str = ""


@dataclass
class Invocation:
    """One plugin run: exit status, output and wall time (fork to exit)."""

    command: str
    rc: int
    stdout: str
    stderr: str
    ns: int

    @property
    def ms(self) -> float:
        return self.ns / 1e6

    def json(self) -> Any:
        """stdout as JSON, None when empty; ValueError when it is not JSON."""
        return json.loads(self.stdout) if self.stdout.strip() else None

    @property
    def result(self) -> dict[str, Any] | None:
        """stdout as a JSON object, else None (empty, not JSON, or not an object)."""
        try:
            value = self.json()
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    @property
    def error(self) -> CniErrorReply | None:
        """The CNI error of a failed run (exit status not 0); None on success."""
        if self.rc == 0:
            return None
        obj = self.result
        if obj is None:
            return CniErrorReply(None, self.stdout.strip() or "(no output on stdout)")
        code = obj.get("code")
        return CniErrorReply(code if isinstance(code, int) else None,
                             str(obj.get("msg", "")), str(obj.get("details") or ""))

    @property
    def ok(self) -> bool:
        """Exit 0, and JSON without an error code (ADD: a result with ips; other
        commands: nothing or JSON)."""
        if self.rc != 0:
            return False
        result = self.result
        if self.command == "ADD":
            return result is not None and "code" not in result and bool(result.get("ips"))
        return not self.stdout.strip() or (result is not None and "code" not in result)

    @property
    def address(self) -> str:
        """ips[0].address of an ADD result, "" without one."""
        ips = (self.result or {}).get("ips") or [{}]
        first = ips[0] if isinstance(ips[0], dict) else {}
        return str(first.get("address", ""))

    def describe(self) -> str:
        """One line for a failure message: status, code, message, stderr's tail."""
        err = self.error or CniErrorReply(None, self.stdout[:200])
        return f"rc={self.rc} code={err.code} {err.msg} {self.stderr.strip()[-300:]}"


def cni_env(command: str, container: str, netns: str, *, ifname: str = "eth0",
            args: str = "", cni_path: str = CNI_PATH, agent_socket: str = "",
            path: str = DEFAULT_PATH) -> dict[str, str]:
    """The environment a runtime gives a plugin.

    ``agent_socket`` becomes ``XVM_CNID_SOCKET``: a unix socket path knows no network
    namespaces, so a simulated host must name its own, or the thin plugin would hand
    its call to an agent serving the real machine (which would configure the *root*
    namespace).
    """
    env = {"PATH": path, "CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": cni_path}
    if agent_socket:
        env["XVM_CNID_SOCKET"] = agent_socket
    return env


def run(executable: str, config: bytes, env: Mapping[str, str], *, host: str | None = None,
        command: str = "", timeout: float = TIMEOUT) -> Invocation:
    """Run ``executable`` with ``env`` and ``config`` on stdin, inside the namespace at
    path ``host`` (None: wherever the calling thread is).

    Raises ``subprocess.TimeoutExpired``, ``OSError`` (cannot execute) and
    ``plumbing.NetnsError`` (host namespace gone); a plugin's failure is an answer,
    in the returned ``Invocation``.
    """
    where = plumbing.inside(host) if host is not None else contextlib.nullcontext()
    with where:
        began = time.perf_counter_ns()
        proc = subprocess.run([executable], input=config, env=dict(env), capture_output=True,
                              timeout=timeout, check=False)
        elapsed = time.perf_counter_ns() - began
    return Invocation(command or env.get("CNI_COMMAND", ""), proc.returncode,
                      proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                      elapsed)
