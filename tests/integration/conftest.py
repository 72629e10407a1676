"""Fixtures for integration tests: a simulated host (``xvmcni.lab.simhost``: its own
netns with an eth0 on a private underlay switch) and pod namespaces, all named
uniquely per run and removed even when a test fails. Tests drive the real
``xvm-cni`` executable, invoked as a runtime does (``xvmcni.lab.invoke``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from xvmcni import plugin_file
from xvmcni.cli.status import AgentUnavailable, agent_request
from xvmcni.cni.wire import SUPPORTED_VERSIONS
from xvmcni.dataplane.reaper import RETIRED_GROUP
from xvmcni.lab import invoke, plumbing, simhost
from xvmcni.lab.invoke import Invocation
from xvmcni.lab.plugin import XVM_CONFIG

# In-process: the console script pip made. Agent: the thin file `make install` writes.
INPROCESS_PLUGIN = str(Path(sys.executable).with_name("xvm-cni"))
AGENT = str(Path(sys.executable).with_name("xvm-cnid"))
ALL_VERSIONS = SUPPORTED_VERSIONS


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Outcome:
    """A plugin run as the tests read it: ``out`` is stdout parsed as JSON."""

    rc: int
    out: dict[str, Any] | None
    stdout: str
    stderr: str


@dataclass
class Host:
    sim: simhost.SimHost
    data_dir: Path
    pods: list[str] = field(default_factory=list)
    plugin: str = INPROCESS_PLUGIN
    agent_socket: str = ""
    agent: subprocess.Popen[bytes] | None = None
    # Calls the agent must serve: not VERSION (the shim answers it), and only with a
    # readable config, since the config names the agent's socket.
    calls: int = 0

    @property
    def name(self) -> str:
        """The host's netns name (for ``ip -n``)."""
        return self.sim.netns

    @property
    def underlay(self) -> str:
        """The netns of the host's private underlay switch (bridge ``br0``)."""
        return self.sim.underlay

    @property
    def path(self) -> str:
        return self.sim.path

    def config(self, version: str = "1.0.0", **overrides: Any) -> dict[str, Any]:
        # The seed's configuration, as the lab uses it.
        conf: dict[str, Any] = {**XVM_CONFIG, "cniVersion": version,
                                "dataDir": str(self.data_dir)}
        if self.agent_socket:
            conf["agentSocket"] = self.agent_socket
        conf.update(overrides)
        return {k: v for k, v in conf.items() if v is not None}

    def new_pod(self) -> str:
        name = simhost.unique_name("xtp")
        self.pods.append(name)  # first: a failed create still gets removed
        return plumbing.create_netns(name)

    def cni(self, command: str, config: dict[str, Any] | bytes, container: str = "c1",
            netns: str = "", ifname: str = "eth0", args: str = "",
            env: dict[str, str] | None = None) -> Outcome:
        stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
        try:
            names_agent = "agentSocket" in json.loads(stdin)
        except (ValueError, TypeError):
            names_agent = False
        if command != "VERSION" and names_agent and (env is None or "CNI_COMMAND" in env):
            self.calls += 1
        path = os.environ.get("PATH", invoke.DEFAULT_PATH)
        environ = invoke.cni_env(command, container, netns, ifname=ifname, args=args,
                                 cni_path=invoke.CNI_PATH, path=path)
        if env is not None:
            environ = {"PATH": path, **env}
        call = invoke.run(self.plugin, stdin, environ, host=self.path, timeout=60)
        return outcome(call)

    def add(self, config: dict[str, Any], container: str, netns: str, **kw: Any) -> dict[str, Any]:
        res = self.cni("ADD", config, container, netns, **kw)
        assert res.rc == 0, f"ADD failed: {res.stdout} {res.stderr}"
        assert res.out is not None
        return res.out

    def in_ns(self, netns_path: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={netns_path}", *argv], capture_output=True,
                              text=True, timeout=30, check=False)

    def links(self) -> dict[str, dict[str, Any]]:
        """Links of the host, once the agent's reaper has deleted what DEL retired
        (it batches deletions within ~50 ms; give it up to 5 s)."""
        deadline = time.monotonic() + 5
        while True:
            data = json.loads(ip("-d", "-j", "-n", self.name, "link", "show"))
            retired = [link["ifname"] for link in data if link.get("group") == str(RETIRED_GROUP)]
            if not retired:
                return {link["ifname"]: link for link in data}
            assert time.monotonic() < deadline, f"retired veths never deleted: {retired}"
            time.sleep(0.02)

    def nft_tables(self) -> list[str]:
        out = self.in_ns(self.path, "nft", "-j", "list", "tables").stdout
        return [f"{i['table']['family']} {i['table']['name']}"
                for i in json.loads(out or '{"nftables": []}')["nftables"] if "table" in i]

    def snapshot(self) -> dict[str, Any]:
        """What a failed call must leave untouched."""
        files = sorted(str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*")) \
            if self.data_dir.exists() else []
        return {"links": sorted(self.links()), "nft": self.nft_tables(), "files": files,
                "pod_links": {p: ip("-n", p, "-o", "link", "show").count("\n")
                              for p in self.pods}}


def outcome(call: Invocation) -> Outcome:
    try:
        parsed = call.json()
    except ValueError:
        pytest.fail(f"plugin printed non-JSON on stdout: {call.stdout!r}\n{call.stderr}")
    return Outcome(call.rc, parsed, call.stdout, call.stderr)


def make_host(tmp_path: Path, address: str = simhost.DEFAULT_ADDRESS) -> Host:
    return Host(sim=simhost.standalone_host("xth", address), data_dir=tmp_path / "data")


def start_agent(host: Host, *extra: str, env: dict[str, str] | None = None) -> None:
    """Run xvm-cnid inside the host's netns, and wait until its socket answers
    (``env``: added to the agent's environment)."""
    sock = host.data_dir.parent / "agent" / "xvm-cnid.sock"
    host.agent_socket = str(sock)
    with open(host.data_dir.parent / "agent.log", "ab") as log, host.sim.entered():
        # Started from inside the host: the agent inherits its namespace.
        host.agent = subprocess.Popen(
            [AGENT, "--socket", str(sock), "--data-dir", str(host.data_dir),
             "--cni-conf-dir", str(host.data_dir.parent / "conf"),
             "--metrics-port", "0", "--gc-interval", "0", *extra],
            stdout=log, stderr=log, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if host.agent.poll() is not None:
            raise RuntimeError("xvm-cnid exited: " +
                               (host.data_dir.parent / "agent.log").read_text())
        if agent_op(host, "ping").get("pong"):
            return
        time.sleep(0.05)
    raise RuntimeError("xvm-cnid did not come up in 30s")


def agent_op(host: Host, op: str) -> dict[str, Any]:
    """The agent's answer to an admin operation (the xvmctl client), {} if none."""
    try:
        return agent_request(host.agent_socket, op, timeout=30)
    except AgentUnavailable:
        return {}


def stop_agent(host: Host, sig: int = signal.SIGTERM) -> None:
    if host.agent is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(host.agent.pid, sig)
    try:
        host.agent.wait(timeout=20)
    except subprocess.TimeoutExpired:
        host.agent.kill()
        host.agent.wait()
    host.agent = None


def destroy_host(host: Host) -> None:
    stop_agent(host, signal.SIGKILL)
    simhost.remove_all(host.pods)
    simhost.destroy(host.sim)
    shutil.rmtree(host.data_dir, ignore_errors=True)


@pytest.fixture
def thin_host(tmp_path: Path) -> Iterator[Host]:
    """A simulated host whose plugin is the thin file `make install` writes; no agent
    yet (tests start it with the options they need)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    h = make_host(tmp_path)
    h.plugin = str(plugin_file.write(tmp_path / "bin" / "xvm-cni"))
    try:
        yield h
    finally:
        destroy_host(h)


@pytest.fixture(params=["inprocess", "agent"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    """A simulated host; every test using it runs twice: plugin in-process, and the
    thin plugin talking to an xvm-cnid in that host."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    h = make_host(tmp_path)
    try:
        if request.param == "agent":
            h.plugin = str(plugin_file.write(tmp_path / "bin" / "xvm-cni"))
            start_agent(h)
        yield h
        if h.agent is not None and h.calls:
            # A silent in-process fallback would pass every test: prove the agent served.
            served = sum(agent_op(h, "status")["agent"]["requests"].values())
            assert served == h.calls, f"agent served {served} of {h.calls} calls"
    finally:
        destroy_host(h)
