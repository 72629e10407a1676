"""Node agents of a lab: one xvm-cnid per simulated host (agent mode).

An agent is started from a thread that entered its host's namespace (like the
plugin), in a session of its own so that it outlives ``up`` and a Ctrl-C of it.
Its metrics listen on the host's own 127.0.0.1 (every host namespace has its own
loopback: no clash between hosts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvmcni.cli.status import AgentUnavailable, agent_request
from xvmcni.controlplane.etcdconfig import HOSTNAME_ENV
from xvmcni.lab import plumbing, procs
from xvmcni.lab.model import Host, Lab, Progress, StateFile, load_lab
from xvmcni.lab.names import AGENT_LOG, LabError, agent_socket_path, lab_dir

AGENT_METRICS_PORT = 9472      # every host netns has its own loopback: no clash
AGENT_START_TIMEOUT = 30.0     # until the new agent answers "ping"
AGENT_STOP_TIMEOUT = procs.STOP_TIMEOUT



@dataclass
class AgentAction:
    """What ``agent_stop``/``agent_start``/``agent_restart`` did, with timings."""

    host: str
    old_pid: int = 0            # the agent stopped (0: none was running)
    new_pid: int = 0            # the agent started (0: none)
    signal: str = ""            # how it was stopped: "SIGTERM" or "SIGKILL"
    forced: bool = False        # SIGTERM was not enough: SIGKILL followed
    stop_seconds: float = 0.0   # signal until the old agent was gone
    start_seconds: float = 0.0  # start until the new agent answered "ping"

    @property
    def down_seconds(self) -> float:
        """How long no agent answered on the host's socket."""
        return self.stop_seconds + self.start_seconds


@dataclass
class AgentHealth:
    """One host's agent as ``lab status`` shows it."""

    host: str
    socket: str
    pid: int = 0                            # running xvm-cnid on that socket; 0: none
    recorded_pid: int = 0                   # what state.json says
    reply: dict[str, Any] | None = None     # its answer to the "status" operation
    error: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.pid and self.reply is not None and not self.error)


def lab_agents(name: str) -> dict[int, str]:
    """Running xvm-cnid processes of lab ``name`` (pid -> socket), found by their
    command line, so also those a crash left out of state.json."""
    return procs.agents_under(lab_dir(name))


def agent_argv(lab: Lab, host: Host) -> list[str]:
    """The agent's command line: xvm-cnid of this Python's environment (the same code
    as the lab), the host's socket, dataDir and config directory."""
    beside = Path(sys.executable).parent / "xvm-cnid"
    program = [str(beside)] if beside.is_file() and os.access(beside, os.X_OK) \
        else [sys.executable, "-m", "xvmcni.agent.main"]
    return [*program, "--socket", lab.agent_socket(host.name), "--data-dir", host.data_dir,
            "--cni-conf-dir", str(lab.state_dir / host.name),
            "--metrics-port", str(AGENT_METRICS_PORT)]


def spawn_agent(lab: Lab, host: Host) -> int:
    """Start the host's xvm-cnid (not waiting for it); its pid."""
    try:
        with open(lab.state_dir / host.name / AGENT_LOG, "ab") as log, \
                plumbing.inside(host.netns_path):
            # Lab hosts share the machine's host name: each agent is told its own
            # (the name it publishes and claims under in etcd).
            proc = subprocess.Popen(agent_argv(lab, host), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, cwd="/", start_new_session=True,
                                    env={**os.environ, HOSTNAME_ENV: host.name})
    except plumbing.NetnsError as exc:
        raise LabError(f"host namespace of {host.name} is gone", str(exc)) from exc
    except OSError as exc:
        raise LabError(f"cannot start xvm-cnid for {host.name}", str(exc)) from exc
    return procs.adopt(proc)


def wait_agent_ready(lab: Lab, host: Host, pid: int,
                     timeout: float = AGENT_START_TIMEOUT) -> None:
    """Until the agent answers ``ping`` on the host's socket; LabError (with the tail
    of its log) when it exits or stays silent; a silent one is killed."""
    sock = lab.agent_socket(host.name)
    log_path = lab.state_dir / host.name / AGENT_LOG
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            if agent_request(sock, "ping", timeout=2.0).get("pong"):
                return
            last = "answered ping without pong"
        except AgentUnavailable as exc:
            last = str(exc)  # not listening yet: keep waiting
        if not procs.alive(pid):
            raise LabError(f"xvm-cnid of {host.name} (pid {pid}) exited while starting",
                           procs.tail(log_path))
        if time.monotonic() > deadline:
            procs.stop({pid: sock}, signal.SIGKILL)
            raise LabError(f"xvm-cnid of {host.name} did not answer on {sock} within "
                           f"{timeout:g} s ({last}); killed it", procs.tail(log_path))
        time.sleep(0.01)


def start_agents(lab: Lab, state: StateFile, progress: Progress) -> None:
    """Start every host's agent at once, then wait for each to answer."""
    began = time.monotonic()
    for host in lab.hosts:
        host.agent_pid = spawn_agent(lab, host)
        state.save()  # recorded before it is up: a crash now still finds it
    for host in lab.hosts:
        wait_agent_ready(lab, host, host.agent_pid)
        progress(f"agent   {host.name}: xvm-cnid pid {host.agent_pid} answers on "
                 f"{lab.agent_socket(host.name)} ({time.monotonic() - began:.1f} s)")


def count_served(lab: Lab, progress: Progress) -> None:
    """Ask each agent how many ADDs it served (a silent in-process fallback would look
    the same from outside)."""
    for host in lab.hosts:
        try:
            reply = agent_request(lab.agent_socket(host.name), "status", timeout=10.0)
        except AgentUnavailable as exc:
            host.agent_adds = -1
            progress(f"warning: cannot ask xvm-cnid of {host.name} what it served: {exc}")
            continue
        requests = (reply.get("agent") or {}).get("requests") or {}
        host.agent_adds = int(requests.get("ADD", 0))


def stop_lab_agents(lab: Lab, progress: Progress) -> procs.Stopped:
    """Stop every agent of the lab: found by command line and by recorded pid."""
    pids = lab_agents(lab.name)
    for host in lab.hosts:  # the recorded pids, in case the scan missed one
        sock = lab.agent_socket(host.name)
        if host.agent_pid and host.agent_pid not in pids and procs.is_agent(host.agent_pid,
                                                                            sock):
            pids[host.agent_pid] = sock
    if not pids:
        return procs.Stopped()
    result = procs.stop(pids)
    shown = " ".join(f"{Path(pids[pid]).parent.name}:{pid}" for pid in sorted(pids))
    line = f"agents  stopped {len(result.stopped)} xvm-cnid ({shown})"
    if result.forced:
        line += f"; SIGKILL after {AGENT_STOP_TIMEOUT:g} s: {' '.join(map(str, result.forced))}"
    progress(line)
    for pid in result.survivors:
        progress(f"warning: xvm-cnid pid {pid} survived SIGKILL")
    return result


def _agent_host(name: str, host_name: str) -> tuple[Lab, Host]:
    lab = load_lab(name)
    if not lab.agent:
        raise LabError(f"lab {name} runs without agents",
                       "it was made with --no-agent or the reference plugin")
    try:
        host = lab.host(host_name)
    except KeyError:
        raise LabError(f"lab {name} has no host {host_name!r}",
                       "hosts: " + " ".join(h.name for h in lab.hosts)) from None
    if not plumbing.netns_exists(host.netns):
        raise LabError(f"host namespace {host.netns} is gone")
    return lab, host


def _stop_host_agent(lab: Lab, host: Host, kill: bool, action: AgentAction) -> None:
    sock = lab.agent_socket(host.name)
    pids = {pid: s for pid, s in lab_agents(lab.name).items() if s == sock}
    if pids:
        sig = signal.SIGKILL if kill else signal.SIGTERM
        action.old_pid = host.agent_pid if host.agent_pid in pids else min(pids)
        action.signal = sig.name
        began = time.monotonic()
        result = procs.stop(pids, sig)
        action.stop_seconds = time.monotonic() - began
        action.forced = bool(result.forced)
        if result.survivors:
            raise LabError(f"xvm-cnid of {host.name} survived SIGKILL",
                           "pids " + " ".join(map(str, result.survivors)))
    host.agent_pid = 0


def _start_host_agent(lab: Lab, host: Host, action: AgentAction) -> None:
    began = time.monotonic()
    host.agent_pid = spawn_agent(lab, host)
    StateFile(lab).save()
    wait_agent_ready(lab, host, host.agent_pid)
    action.new_pid = host.agent_pid
    action.start_seconds = time.monotonic() - began


def agent_stop(name: str, host: str, *, kill: bool = False) -> AgentAction:
    """Stop host ``host``'s agent: SIGTERM (SIGKILL after a timeout), or SIGKILL at
    once with ``kill`` (a crash). Its pods keep working: the agent is not on the data
    path. Stopping an agent that does not run is not an error (``old_pid`` 0)."""
    lab, h = _agent_host(name, host)
    action = AgentAction(h.name)
    try:
        _stop_host_agent(lab, h, kill, action)
    finally:
        StateFile(lab).save()
    return action


def agent_start(name: str, host: str) -> AgentAction:
    """Start host ``host``'s agent and wait until it answers; it reconciles first."""
    lab, h = _agent_host(name, host)
    sock = lab.agent_socket(h.name)
    running = sorted(pid for pid, s in lab_agents(name).items() if s == sock)
    if running:
        raise LabError(f"xvm-cnid of {h.name} already runs (pid {running[0]})",
                       f"restart it: xvmctl lab agent restart --name {name} --host {h.name}")
    action = AgentAction(h.name)
    _start_host_agent(lab, h, action)
    return action


def agent_restart(name: str, host: str, *, kill: bool = False) -> AgentAction:
    """``agent_stop`` then ``agent_start``, timed: ``down_seconds`` is how long no
    agent answered on the host's socket."""
    action = agent_stop(name, host, kill=kill)
    lab, h = _agent_host(name, host)
    _start_host_agent(lab, h, action)
    return action


def agent_health(name: str, lab: Lab | None) -> list[AgentHealth]:
    """Every host's agent: running (by command line), answering ``status``? Hosts come
    from the state file, and from the sockets of running agents without one."""
    running = lab_agents(name)
    hosts: dict[str, int] = {}
    if lab is not None and lab.agent:
        hosts = {h.name: h.agent_pid for h in lab.hosts}
    for sock in running.values():
        hosts.setdefault(Path(sock).parent.name, 0)
    found = []
    for host_name, recorded in hosts.items():
        sock = str(agent_socket_path(name, host_name))
        pids = sorted(pid for pid, s in running.items() if s == sock)
        health = AgentHealth(host_name, sock, pids[0] if pids else 0, recorded)
        if not pids:
            health.error = "not running"
        else:
            try:
                health.reply = agent_request(sock, "status", timeout=5.0)
            except AgentUnavailable as exc:
                health.error = str(exc)
            if len(pids) > 1:
                health.error = f"{len(pids)} agents on one socket: {' '.join(map(str, pids))}"
        found.append(health)
    return found
