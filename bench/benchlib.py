"""Shared plumbing for the benchmarks in bench/: simulated hosts, plugin setups,
timed invocations, the xvm-cnid agent, statistics, tables and JSON output.

Everything a benchmark creates is registered with a ``Workspace`` and removed by
``Workspace.close()`` (namespaces, agent processes, the temp dir), also after
Ctrl-C or SIGTERM. Names are unique per run: ``xb<pid hex>-<serial><random>``.

Simulated hosts are ``xvmcni.lab.simhost``'s (as the lab's and the integration
tests'), and plugins are invoked with ``xvmcni.lab.invoke``: ``CNI_*`` in the
environment, the config on stdin, the process started inside the simulated host's
network namespace. The benchmarking thread enters that namespace once
(``SimHost.entered``) and every child it forks inherits it, so no ``nsenter`` exec
is added to a sample.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from xvmcni.cli.status import AgentUnavailable, agent_request
from xvmcni.dataplane.reaper import RETIRED_GROUP
from xvmcni.lab import invoke, plumbing, simhost
from xvmcni.lab.invoke import Invocation as Call
from xvmcni.lab.plugin import XVM_CONFIG
from xvmcni.lab.simhost import SimHost

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = str(VENV_BIN / "xvm-cni")
AGENT = str(VENV_BIN / "xvm-cnid")
REFERENCE_BRIDGE = "/usr/lib/cni/bridge"
REFERENCE_DIR = "/usr/lib/cni"
CNI_PATH = "/usr/lib/cni"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_ADDRESS = simhost.DEFAULT_ADDRESS

# Setup keys, in table order.
AGENT_SETUP = "xvm: thin + agent"
THIN_FALLBACK = "xvm: thin, no agent"
CONSOLE = "xvm: console script"
REFERENCE = "ref: bridge+host-local"
ALL_SETUPS = (AGENT_SETUP, THIN_FALLBACK, CONSOLE, REFERENCE)
SETUP_HELP = {
    AGENT_SETUP: "thin plugin file (python -m xvmcni.plugin_file) -> xvm-cnid in the host",
    THIN_FALLBACK: "same thin file, agentSocket names a path nobody listens on: in-process",
    CONSOLE: f"{CONSOLE_SCRIPT} (pip console script, always in-process)",
    REFERENCE: f"{REFERENCE_BRIDGE} + host-local, isGateway, own dataDir",
}


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


# ---------------------------------------------------------------------------
# Interrupts and cleanup


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C: unwind through the finally blocks."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (creates network namespaces)")


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Workspace:
    """Owns what a benchmark run creates; ``close()`` removes all of it."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="xvmbench-")))
    namespaces: list[str] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    extra: list[Callable[[], object]] = field(default_factory=list)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def add_netns(self, prefix: str = "xbp") -> str:
        name = simhost.unique_name(prefix)
        self.namespaces.append(name)  # recorded first: a failed add still gets a del
        plumbing.create_netns(name)
        return name

    def del_netns(self, names: Sequence[str]) -> None:
        simhost.remove_all(list(names))
        for name in names:
            with contextlib.suppress(ValueError):
                self.namespaces.remove(name)

    def stop_agent(self, agent: Agent) -> None:
        proc = agent.process
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self.agents.remove(agent)

    def close(self) -> None:
        # Ctrl-C during cleanup must not leave half of it: finish, then re-raise.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for action in reversed(self.extra):
                with contextlib.suppress(Exception):
                    action()
            for agent in list(self.agents):
                self.stop_agent(agent)
            # Pods before hosts before underlays: the reverse of creation.
            self.del_netns(list(reversed(self.namespaces)))
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------
# Simulated hosts


def veths(host: SimHost) -> list[dict[str, Any]]:
    """Host-side veths except eth0 (the underlay cable)."""
    links = json.loads(ip("-d", "-j", "-n", host.netns, "link", "show", "type", "veth"))
    return [link for link in links if link.get("ifname") != "eth0"]


def wait_no_retired(host: SimHost, timeout: float = 5.0) -> float:
    """Wait until the agent's reaper deleted every retired veth; seconds waited."""
    began = time.monotonic()
    while True:
        retired = [link for link in veths(host) if link.get("group") == str(RETIRED_GROUP)]
        if not retired or time.monotonic() - began > timeout:
            return time.monotonic() - began
        time.sleep(0.01)


def make_host(ws: Workspace, address: str = HOST_ADDRESS) -> SimHost:
    """A simulated host alone on its own underlay switch, removed by ``ws.close()``."""
    return simhost.standalone_host("xbh", address, record=ws.namespaces.append)


# ---------------------------------------------------------------------------
# Plugin invocations


@dataclass
class Setup:
    """One way of running a CNI plugin on one simulated host."""

    key: str
    executable: str
    config: dict[str, Any]
    host: SimHost
    agent: Agent | None = None

    @property
    def stdin(self) -> bytes:
        return json.dumps(self.config).encode()

    def env(self, command: str, container: str, netns: str) -> dict[str, str]:
        # agentSocket as XVM_CNID_SOCKET too: never reach an agent serving the machine.
        return invoke.cni_env(command, container, netns, cni_path=CNI_PATH, path=PATH,
                              agent_socket=str(self.config.get("agentSocket") or ""))

    def invoke(self, command: str, container: str, netns: str) -> Call:
        """One timed run; the caller's thread must be inside ``self.host``."""
        return invoke.run(self.executable, self.stdin, self.env(command, container, netns))


def xvm_config(data_dir: Path, agent_socket: Path) -> dict[str, Any]:
    """The seed's configuration (as the lab and the integration tests use it)."""
    return {**XVM_CONFIG, "dataDir": str(data_dir), "agentSocket": str(agent_socket)}


def reference_config(data_dir: Path) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "bench-reference", "type": "bridge",
            "bridge": "cni0", "isGateway": True,
            "ipam": {"type": "host-local", "subnet": "10.88.0.0/16", "dataDir": str(data_dir)}}


def write_thin_plugin(dest: Path) -> str:
    """The plugin file ``make install`` writes, via ``python -m xvmcni.plugin_file``."""
    subprocess.run([sys.executable, "-m", "xvmcni.plugin_file", str(dest)], check=True,
                   capture_output=True)
    return str(dest)


def start_agent(ws: Workspace, host: SimHost, workdir: Path, data_dir: Path,
                *extra: str) -> Agent:
    """xvm-cnid inside ``host`` (started from a thread that entered it), ready to serve.

    Its own session: a Ctrl-C at the terminal reaches us, and we stop it in order.
    """
    sock = workdir / "agent" / "xvm-cnid.sock"
    log_path = workdir / "agent.log"
    argv = [AGENT, "--socket", str(sock), "--data-dir", str(data_dir),
            "--cni-conf-dir", str(workdir / "conf"), *extra]
    with open(log_path, "ab") as log, host.entered():
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    agent = Agent(proc, sock, log_path)
    ws.agents.append(agent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("xvm-cnid exited: " + log_path.read_text()[-2000:])
        if agent_op(sock, "ping").get("pong"):
            return agent
        time.sleep(0.05)
    raise RuntimeError("xvm-cnid did not come up in 60 s")


def add_run_args(p: argparse.ArgumentParser, name: str, pods_help: str) -> None:
    """The options addel.py and burst.py share: pods, rounds, warm-up, setups, output."""
    p.add_argument("--pods", type=int, default=50, help=f"{pods_help} (default 50)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all setups (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed ADD/DEL pairs per setup")
    p.add_argument("--setups", nargs="+", choices=ALL_SETUPS, default=list(ALL_SETUPS),
                   metavar="SETUP", help=f"subset of: {', '.join(ALL_SETUPS)}")
    p.add_argument("--out", help=f"JSON output (default bench/results/{name}.json)")


def agent_op(sock_path: Path, op: str) -> dict[str, Any]:
    """The agent's answer to an admin operation, or {} when it does not answer."""
    try:
        return agent_request(str(sock_path), op, timeout=30)
    except AgentUnavailable:
        return {}


def agent_served(setup: Setup) -> int | None:
    """How many CNI requests the setup's agent has served so far (None: no agent).

    A plugin that cannot reach the agent (socket backlog full, agent refusing) quietly
    runs in-process, and a benchmark would then time the wrong thing: compare this
    before and after a batch of calls."""
    if setup.agent is None:
        return None
    status = agent_op(setup.agent.socket_path, "status")
    return sum(int(n) for n in status.get("agent", {}).get("requests", {}).values())


def build_setups(ws: Workspace, wanted: Sequence[str] = ALL_SETUPS,
                 agent_args: Sequence[str] = ("--metrics-port", "0", "--gc-interval", "0"),
                 ) -> list[Setup]:
    """One simulated host per setup, so no setup sees another's bridge, state or reaper."""
    thin = write_thin_plugin(ws.tmp / "bin" / "xvm-cni")
    setups = []
    for key in wanted:
        workdir = ws.tmp / secrets.token_hex(4)
        workdir.mkdir()
        host = make_host(ws)
        data_dir = workdir / "data"
        if key == REFERENCE:
            setups.append(Setup(key, REFERENCE_BRIDGE, reference_config(data_dir), host))
            continue
        if key == AGENT_SETUP:
            agent = start_agent(ws, host, workdir, data_dir, *agent_args)
            setups.append(Setup(key, thin, xvm_config(data_dir, agent.socket_path), host, agent))
            continue
        nobody = workdir / "no-agent" / "xvm-cnid.sock"  # nothing ever listens here
        executable = thin if key == THIN_FALLBACK else CONSOLE_SCRIPT
        setups.append(Setup(key, executable, xvm_config(data_dir, nobody), host))
    return setups


def anchor_and_warm_up(ws: Workspace, setup: Setup, warmup: int) -> str:
    """Untimed: the network's first ADD (bridge/VXLAN), kept until the end so later
    ADDs/DELs never join or leave the network; then ``warmup`` ADD/DEL pairs.
    Returns the anchor's netns name."""
    anchor = ws.add_netns()
    pods = [ws.add_netns() for _ in range(warmup)]
    with setup.host.entered():
        call = setup.invoke("ADD", f"anchor-{anchor}", f"/run/netns/{anchor}")
        if not call.ok:
            raise RuntimeError(f"{setup.key}: anchor ADD failed: {call.describe()}")
        for pod in pods:
            for command in ("ADD", "DEL"):
                call = setup.invoke(command, f"warm-{pod}", f"/run/netns/{pod}")
                if not call.ok:
                    raise RuntimeError(f"{setup.key}: warm-up {command} failed: {call.describe()}")
    wait_no_retired(setup.host)
    ws.del_netns(pods)
    return anchor


@dataclass
class Block:
    """The samples of one sequential ADD-all-then-DEL-all pass."""

    add_ms: list[float] = field(default_factory=list)
    del_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def sequential_block(ws: Workspace, setup: Setup, pods: int, tag: str) -> Block:
    """Fresh namespaces (untimed), then ADD each pod in turn, then DEL each in turn."""
    block = Block()
    names = [ws.add_netns() for _ in range(pods)]
    try:
        with setup.host.entered():
            for name in names:
                call = setup.invoke("ADD", f"{tag}-{name}", f"/run/netns/{name}")
                block.add_ms.append(call.ms)
                if not call.ok:
                    block.failures.append(f"ADD {name}: {call.describe()}")
            for name in names:
                call = setup.invoke("DEL", f"{tag}-{name}", f"/run/netns/{name}")
                block.del_ms.append(call.ms)
                if not call.ok:
                    block.failures.append(f"DEL {name}: {call.describe()}")
        # Untimed: let the agent's background deletions finish before anything else
        # is measured, so one setup's work never lands in another's samples.
        wait_no_retired(setup.host)
    finally:
        ws.del_netns(names)
    return block


def settle(seconds: float = 0.5) -> None:
    """Give the kernel's asynchronous netns cleanup a moment between blocks."""
    time.sleep(seconds)


# ---------------------------------------------------------------------------
# iperf3 between two network namespaces (throughput.py, overlay_throughput.py)

IPERF_PORT = 5201
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


@dataclass
class Endpoint:
    label: str
    netns_path: str
    ip: str


def _listening(pid: int, port: int) -> bool:
    """True once process ``pid`` listens on ``port`` (read from its own netns's view)."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == TCP_LISTEN:
                return True
    return False


def iperf3(src: Endpoint, dst: Endpoint, seconds: int, streams: int,
           port: int = IPERF_PORT) -> dict[str, Any]:
    """One iperf3 run src -> dst; the receiver's bit rate and the sender's retransmits."""
    server = subprocess.Popen(["nsenter", f"--net={dst.netns_path}", "iperf3", "-s", "-1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _listening(server.pid, port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {dst.label} did not start")
            time.sleep(0.02)
        client = subprocess.run(
            ["nsenter", f"--net={src.netns_path}", "iperf3", "-c", dst.ip, "-p", str(port),
             "-t", str(seconds), "-P", str(streams), "-J"],
            capture_output=True, text=True, timeout=seconds + 60, check=False)
        report = json.loads(client.stdout) if client.stdout.strip() else {}
        if client.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 {src.label} -> {dst.label}: "
                               f"{report.get('error') or client.stderr.strip()}")
        end = report["end"]
        return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                "retransmits": end["sum_sent"].get("retransmits"),
                "cpu": end.get("cpu_utilization_percent", {})}
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


# ---------------------------------------------------------------------------
# Statistics, tables, output


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p95 of 150 samples = the 143rd smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain Markdown table (also readable in a terminal)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def machine() -> dict[str, Any]:
    return {"kernel": platform.release(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_json(name: str, out: str | None, payload: dict[str, Any]) -> Path:
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
