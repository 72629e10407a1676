"""``xvmctl lab``: several simulated hosts on one machine, wired like a real LAN.

Shape of a lab called ``NAME`` (every object lives in a namespace of its own, the
root namespace is never touched):

    NAME-sw          underlay switch: bridge br0, multicast snooping off,
                     one veth port per host (h1, h2, ...)
    NAME-h<i>        a host: eth0 = 172.30.0.(10+i)/24, MTU 1500, lo up
    NAME-h<i>-p<j>   a pod, attached to its host by running the real plugin
                     executable inside the host's namespace

Files live under /run/xvm-cni/lab/NAME/: ``state.json`` (what was created, written
after every step so ``down`` works after a crash) and one directory per host with
its CNI config and its own ``dataDir``, so simulated hosts never share state.

Agent mode (the default): like a real installation, every host runs its own node
agent ``xvm-cnid`` inside its namespace (socket ``NAME/h<i>/xvm-cnid.sock``, log
``NAME/h<i>/xvm-cnid.log``, metrics on the host's own 127.0.0.1:9472), and the pods
are attached by the thin plugin ``make install`` would write (``NAME/bin/xvm-cni``),
which hands each ADD to its host's agent. The agents outlive ``up`` (own session,
pids in ``state.json``); ``down`` stops them, also ones a crash left unrecorded.
With ``agent=False`` (``--no-agent``) the plugin does the work in-process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xvmcni import plugin_file
from xvmcni.cli import lab_net
from xvmcni.cli.icmp import DEFAULT_SIZE, PingReply, ping, probe
from xvmcni.cli.status import AgentUnavailable, agent_request
from xvmcni.dataplane.netns import entered, open_netns
from xvmcni.errors import CniError

__all__ = [
    "AgentAction", "AgentHealth", "Host", "Lab", "LabError", "Matrix", "PluginError", "Pod",
    "agent_restart", "agent_start", "agent_stop", "lab_agents", "lab_down", "lab_status",
    "lab_up", "load_lab", "mtu_check", "ping", "ping_matrix",
]

LAB_ROOT = Path("/run/xvm-cni/lab")
DEFAULT_NAME = "xvmlab"
UNDERLAY = ipaddress.IPv4Network("172.30.0.0/24")
HOST_OFFSET = 10  # host i gets .(10+i): .11, .12, ...
UNDERLAY_MTU = 1500
MAX_HOSTS = 200
MAX_PODS = 50
POD_IFNAME = "eth0"
CNI_PATH = "/usr/lib/cni:/opt/cni/bin"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PLUGIN_TIMEOUT = 120.0
STATE_FILE = "state.json"
AGENT_SOCKET = "xvm-cnid.sock"
AGENT_LOG = "xvm-cnid.log"
AGENT_METRICS_PORT = 9472      # every host netns has its own loopback: no clash
AGENT_START_TIMEOUT = 30.0     # until the new agent answers "ping"
AGENT_STOP_TIMEOUT = 10.0      # SIGTERM, then SIGKILL
PLUGIN_DIR = "bin"             # the thin plugin of agent mode: <lab>/bin/xvm-cni
# Lower-case letters and digits only: a '-' in the lab name would make
# "<name>-h1" of one lab look like a lab of its own to the prefix scan.
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,23}$")

# The seed's configuration, verbatim except dataDir (per simulated host).
XVM_CONFIG: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "xvm-network",
    "type": "xvm-cni",
    "hostInterface": "eth0",
    "vxlanID": 10,
    "mtu": 1500,
    "subnet": "10.244.0.0/16",
    "gateway": "10.244.0.1",
}

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default progress sink for API callers that don't want lines."""


class LabError(Exception):
    """A lab operation failed; ``details`` says what to do about it."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class PluginError(LabError):
    """The plugin exited non-zero; carries the CNI error object it printed."""

    def __init__(self, command: str, pod: str, code: int | None, msg: str,
                 details: str = "", stderr: str = "", status: int = 1) -> None:
        super().__init__(f"CNI {command} for pod {pod} failed", msg)
        self.command = command
        self.pod = pod
        self.code = code
        self.plugin_msg = msg
        self.plugin_details = details
        self.stderr = stderr
        self.status = status
        # How to reproduce it by hand: the environment and stdin the plugin got.
        self.request = ""
        self.config = ""

    def __str__(self) -> str:
        code = f"code {self.code}" if self.code is not None else f"exit status {self.status}"
        text = f"{self.msg} ({code}): {self.plugin_msg}"
        if self.plugin_details:
            text += f" ({self.plugin_details})"
        return text


# ---------------------------------------------------------------------------
# The lab's description, also its state file.


@dataclass
class Host:
    name: str               # "h1"
    netns: str              # "<lab>-h1"
    underlay: str           # "172.30.0.11/24" on eth0
    config_path: str = ""
    data_dir: str = ""
    agent_pid: int = 0      # the host's xvm-cnid (agent mode); 0: none started
    agent_adds: int = -1    # ADDs that agent reported serving at the end of up (-1: unknown)

    @property
    def netns_path(self) -> str:
        return lab_net.netns_path(self.netns)


@dataclass
class Pod:
    name: str               # "h1-p1"
    host: str               # "h1"
    netns: str              # "<lab>-h1-p1"
    container_id: str
    address: str = ""       # the CNI result's ips[0].address, e.g. "10.244.0.2/16"
    gateway: str = ""
    mac: str = ""
    mtu: int = 0
    attached: bool = False  # an ADD was started: DEL is owed at teardown

    @property
    def netns_path(self) -> str:
        return lab_net.netns_path(self.netns)

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass
class Lab:
    name: str
    plugin: str
    flavor: str                          # "xvm" (the real plugin) or "bridge" (reference)
    hosts: list[Host] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    phase: str = "creating"              # creating -> up
    netns_created: list[str] = field(default_factory=list)
    agent: bool = False                  # one xvm-cnid per host, or the plugin in-process

    @property
    def state_dir(self) -> Path:
        return lab_dir(self.name)

    def agent_socket(self, host: str) -> str:
        return str(agent_socket_path(self.name, host))

    @property
    def switch_netns(self) -> str:
        return f"{self.name}-sw"

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lab:
        return cls(
            name=data["name"], plugin=data.get("plugin", ""), flavor=data.get("flavor", "xvm"),
            hosts=[Host(**h) for h in data.get("hosts", [])],
            pods=[Pod(**p) for p in data.get("pods", [])],
            phase=data.get("phase", "creating"),
            netns_created=list(data.get("netns_created", [])),
            agent=bool(data.get("agent", False)),
        )


def lab_dir(name: str) -> Path:
    return LAB_ROOT / name


def agent_socket_path(name: str, host: str) -> Path:
    """Each simulated host's own agent socket (used as XVM_CNID_SOCKET even without
    agents, so the plugin never reaches an agent serving the real machine)."""
    return lab_dir(name) / host / AGENT_SOCKET


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise LabError(f"invalid lab name {name!r}",
                       "use 1-24 lower-case letters and digits, starting with a letter")
    return name


def _netns_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}-(sw|h\d+(-p\d+)?)$")


def lab_netns(name: str) -> list[str]:
    """Namespaces that belong to lab ``name`` by their name, whoever made them."""
    pattern = _netns_pattern(name)
    return [ns for ns in lab_net.list_netns() if pattern.match(ns)]


def load_state(name: str) -> Lab | None:
    path = lab_dir(name) / STATE_FILE
    try:
        return Lab.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(f"state file {path} is damaged", str(exc)) from exc


class _State:
    """Writes state.json atomically after every change (ADDs run in threads)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.lock = threading.Lock()

    def save(self) -> None:
        with self.lock:
            path = self.lab.state_dir / STATE_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.lab.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The plugin.


def find_plugin(explicit: str | None = None) -> str:
    """The plugin executable: ``explicit``, else ``xvm-cni`` next to this Python
    (the venv's bin), else on PATH."""
    if explicit:
        path = os.path.abspath(explicit)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise LabError(f"plugin {explicit!r} is not an executable file")
        return path
    # Not resolved: a venv's python is a symlink, its bin/ is what we want.
    beside = Path(sys.executable).parent / "xvm-cni"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("xvm-cni")
    if found:
        return os.path.abspath(found)
    raise LabError("cannot find the xvm-cni plugin executable",
                   "install the package (pip install -e .) or pass --plugin PATH")


def plugin_flavor(plugin: str) -> str:
    """Which configuration the plugin gets: the reference ``bridge`` plugin (to tell
    lab problems from plugin problems) or xvm-cni's seed format for anything else."""
    return "bridge" if os.path.basename(plugin) == "bridge" else "xvm"


def host_config(lab: Lab, index: int, host_dir: Path) -> dict[str, Any]:
    data_dir = str(host_dir / "data")
    if lab.flavor == "bridge":
        # Reference plugins: one subnet per host, so only same-host pods meet.
        return {"cniVersion": "1.0.0", "name": "xvm-lab-reference", "type": "bridge",
                "bridge": "br0", "isGateway": True,
                "ipam": {"type": "host-local", "subnet": f"10.88.{index}.0/24",
                         "dataDir": data_dir}}
    config = {**XVM_CONFIG, "dataDir": data_dir}
    if lab.agent:
        config["agentSocket"] = lab.agent_socket(host_dir.name)
    return config


def run_plugin(lab: Lab, command: str, pod: Pod, config: bytes,
               timeout: float = PLUGIN_TIMEOUT) -> dict[str, Any] | None:
    """Run the plugin once, as a runtime would, inside the pod's host namespace.

    The calling thread enters the host namespace and starts the child from there:
    a child inherits the namespaces of the thread that forks it, so the plugin
    runs in the host with no Python code between fork and exec (a ``preexec_fn``
    is unsafe next to other threads) and without ``ip netns exec``, which would
    remount /sys.
    """
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": pod.netns_path,
        "CNI_IFNAME": POD_IFNAME,
        "CNI_PATH": CNI_PATH,
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        # The thin plugin forwards to the node agent's unix socket, and a unix socket
        # path knows no network namespaces: an agent serving the real machine at the
        # default path would configure the *root* namespace for a simulated host.
        # Each host gets its own path: its own agent listens there in agent mode (the
        # config's agentSocket says the same); with --no-agent nothing does, and the
        # plugin runs in-process inside the host's namespace.
        "XVM_CNID_SOCKET": lab.agent_socket(pod.host),
    }
    def failed(code: int | None, msg: str, details: str = "", stderr: str = "",
               status: int = 1) -> PluginError:
        exc = PluginError(command, pod.name, code, msg, details, stderr, status)
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith(("CNI_", "XVM_")))
        exc.request = f"{shown} (in host netns {lab.host(pod.host).netns})"
        exc.config = config.decode(errors="replace")
        return exc

    try:
        host_fd = open_netns(lab.host(pod.host).netns_path)
    except CniError as exc:
        raise LabError(f"host namespace of pod {pod.name} is gone", str(exc)) from exc
    try:
        with entered(host_fd):
            proc = subprocess.run([lab.plugin], input=config, env=env, capture_output=True,
                                  timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise failed(None, f"no answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise LabError(f"cannot run plugin {lab.plugin}", str(exc)) from exc
    finally:
        os.close(host_fd)
    out = proc.stdout.decode(errors="replace").strip()
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        code, msg, details = None, "", ""
        try:
            obj = json.loads(out)
            code, msg, details = obj.get("code"), obj.get("msg", ""), obj.get("details", "")
        except (ValueError, AttributeError):
            msg = out or "(no output on stdout)"
        raise failed(code, str(msg), str(details or ""), err, proc.returncode)
    if not out:
        return None
    try:
        result = json.loads(out)
    except ValueError as exc:
        raise failed(None, "result is not JSON", out[:200], err, 0) from exc
    if not isinstance(result, dict):
        raise failed(None, "result is not a JSON object", out[:200], err, 0)
    return result


def _apply_result(pod: Pod, result: dict[str, Any] | None, config: dict[str, Any]) -> None:
    ips = (result or {}).get("ips") or []
    if not ips or not isinstance(ips[0], dict) or "address" not in ips[0]:
        raise PluginError("ADD", pod.name, None, "result has no ips[0].address",
                          json.dumps(result)[:300])
    pod.address = str(ipaddress.ip_interface(ips[0]["address"]))
    pod.gateway = str(ips[0].get("gateway") or config.get("gateway") or "")
    for iface in (result or {}).get("interfaces") or []:
        if isinstance(iface, dict) and iface.get("sandbox") and iface.get("name") == POD_IFNAME:
            pod.mac = str(iface.get("mac", ""))
    for link in lab_net.links(pod.netns_path):
        if link.name == POD_IFNAME:
            pod.mtu = link.mtu


# ---------------------------------------------------------------------------
# Node agents: one xvm-cnid per simulated host (agent mode).
#
# An agent is started from a thread that entered its host's namespace (like the
# plugin), in a session of its own so that it outlives ``up`` and a Ctrl-C of it.
# It is found again by pid (state.json) or, after a crash, by its command line:
# an xvm-cnid whose ``--socket`` lies under the lab's directory.

# Agents this process started: reaped here, so a stopped one never lingers as a
# zombie of a long-lived caller (a test run).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


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


def agent_argv(lab: Lab, host: Host) -> list[str]:
    """The agent's command line: xvm-cnid of this Python's environment (the same code
    as the lab), the host's socket, dataDir and config directory."""
    beside = Path(sys.executable).parent / "xvm-cnid"
    program = [str(beside)] if beside.is_file() and os.access(beside, os.X_OK) \
        else [sys.executable, "-m", "xvmcni.agent.main"]
    return [*program, "--socket", lab.agent_socket(host.name), "--data-dir", host.data_dir,
            "--cni-conf-dir", str(lab.state_dir / host.name),
            "--metrics-port", str(AGENT_METRICS_PORT)]


def _spawn_agent(lab: Lab, host: Host) -> int:
    try:
        host_fd = open_netns(host.netns_path)
    except CniError as exc:
        raise LabError(f"host namespace of {host.name} is gone", str(exc)) from exc
    try:
        # A child inherits the namespaces of the thread that forks it.
        with open(lab.state_dir / host.name / AGENT_LOG, "ab") as log, entered(host_fd):
            proc = subprocess.Popen(agent_argv(lab, host), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, cwd="/", start_new_session=True)
    except OSError as exc:
        raise LabError(f"cannot start xvm-cnid for {host.name}", str(exc)) from exc
    finally:
        os.close(host_fd)
    with _children_lock:
        _children[proc.pid] = proc
    return proc.pid


def _agent_socket_of(pid: int) -> str | None:
    """The ``--socket`` of process ``pid`` if it is an xvm-cnid, else None (also for a
    process that is gone, or a zombie: its command line is empty)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # exited between listing and reading: not an agent any more
    argv = [arg.decode(errors="replace") for arg in raw.split(b"\0")]
    if not any(os.path.basename(arg) == "xvm-cnid" or arg == "xvmcni.agent.main"
               for arg in argv[:3]):
        return None
    for i, arg in enumerate(argv):
        if arg == "--socket" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--socket="):
            return arg.split("=", 1)[1]
    return None  # the default socket: the machine's agent, never a lab's


def _reap(pid: int) -> None:
    with _children_lock:
        proc = _children.get(pid)
        if proc is not None and proc.poll() is not None:
            del _children[pid]


def _is_agent(pid: int, socket_path: str) -> bool:
    """True while ``pid`` is an xvm-cnid serving ``socket_path`` (not a reused pid)."""
    _reap(pid)
    return _agent_socket_of(pid) == socket_path


def _alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie.

    Not by command line: right after ``Popen`` returns, the kernel has closed the
    exec'd process's close-on-exec fds (which is what Popen waits for) but may not
    have set up its argument area yet, so /proc/<pid>/cmdline can still be empty.
    """
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no such process
    return stat[stat.rindex(")") + 2:].split(" ", 1)[0] not in ("Z", "X")


def lab_agents(name: str) -> dict[int, str]:
    """Running xvm-cnid processes of lab ``name`` (pid -> socket), found by their
    command line, so also those a crash left out of state.json."""
    root = lab_dir(name)
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        sock = _agent_socket_of(int(entry))
        if sock is not None and Path(sock).is_relative_to(root):
            found[int(entry)] = sock
    return found


@dataclass
class _Stopped:
    stopped: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)


def _stop_pids(pids: dict[int, str], sig: int = signal.SIGTERM,
               timeout: float = AGENT_STOP_TIMEOUT) -> _Stopped:
    """Signal every agent at once, wait for all, SIGKILL whoever outlives ``timeout``."""
    result = _Stopped()
    alive = _signal_and_wait(pids, sig, timeout)
    if alive and sig != signal.SIGKILL:
        result.forced = sorted(alive)
        alive = _signal_and_wait(alive, signal.SIGKILL, 5.0)
    result.survivors = sorted(alive)
    result.stopped = sorted(set(pids) - set(alive))
    return result


def _signal_and_wait(pids: dict[int, str], sig: int, timeout: float) -> dict[int, str]:
    """Send ``sig`` to each agent; return those still running after ``timeout``."""
    for pid, sock in pids.items():
        if _is_agent(pid, sock):  # never signal a pid that was reused meanwhile
            with contextlib.suppress(ProcessLookupError):  # exited just now: fine
                os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    alive = dict(pids)
    while True:
        alive = {pid: sock for pid, sock in alive.items() if _is_agent(pid, sock)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def _wait_agent_ready(lab: Lab, host: Host, pid: int,
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
        if not _alive(pid):
            raise LabError(f"xvm-cnid of {host.name} (pid {pid}) exited while starting",
                           _tail(log_path))
        if time.monotonic() > deadline:
            _stop_pids({pid: sock}, signal.SIGKILL)
            raise LabError(f"xvm-cnid of {host.name} did not answer on {sock} within "
                           f"{timeout:g} s ({last}); killed it", _tail(log_path))
        time.sleep(0.01)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError as exc:
        return f"no log ({exc.strerror or exc})"
    return f"log {path}: " + " | ".join(text[-lines:]) if text else f"log {path} is empty"


def _start_agents(lab: Lab, state: _State, progress: Progress) -> None:
    """Start every host's agent at once, then wait for each to answer."""
    began = time.monotonic()
    for host in lab.hosts:
        host.agent_pid = _spawn_agent(lab, host)
        state.save()  # recorded before it is up: a crash now still finds it
    for host in lab.hosts:
        _wait_agent_ready(lab, host, host.agent_pid)
        progress(f"agent   {host.name}: xvm-cnid pid {host.agent_pid} answers on "
                 f"{lab.agent_socket(host.name)} ({time.monotonic() - began:.1f} s)")


def _count_served(lab: Lab, progress: Progress) -> None:
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


def _stop_lab_agents(lab: Lab, report: DownReport, progress: Progress) -> None:
    pids = lab_agents(lab.name)
    for host in lab.hosts:  # the recorded pids, in case the scan missed one
        sock = lab.agent_socket(host.name)
        if host.agent_pid and host.agent_pid not in pids and _is_agent(host.agent_pid, sock):
            pids[host.agent_pid] = sock
    if not pids:
        return
    result = _stop_pids(pids)
    report.agents_stopped = result.stopped
    report.agents_forced = result.forced
    shown = " ".join(f"{Path(pids[pid]).parent.name}:{pid}" for pid in sorted(pids))
    line = f"agents  stopped {len(result.stopped)} xvm-cnid ({shown})"
    if result.forced:
        line += f"; SIGKILL after {AGENT_STOP_TIMEOUT:g} s: {' '.join(map(str, result.forced))}"
    progress(line)
    for pid in result.survivors:
        progress(f"warning: xvm-cnid pid {pid} survived SIGKILL")


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
    if not lab_net.netns_exists(host.netns):
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
        result = _stop_pids(pids, sig)
        action.stop_seconds = time.monotonic() - began
        action.forced = bool(result.forced)
        if result.survivors:
            raise LabError(f"xvm-cnid of {host.name} survived SIGKILL",
                           "pids " + " ".join(map(str, result.survivors)))
    host.agent_pid = 0


def _start_host_agent(lab: Lab, host: Host, action: AgentAction) -> None:
    began = time.monotonic()
    host.agent_pid = _spawn_agent(lab, host)
    _State(lab).save()
    _wait_agent_ready(lab, host, host.agent_pid)
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
        _State(lab).save()
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
    lab, h = _agent_host(name, host)
    action = AgentAction(h.name)
    try:
        _stop_host_agent(lab, h, kill, action)
    finally:
        _State(lab).save()
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


# ---------------------------------------------------------------------------
# up / down / status


def lab_up(name: str = DEFAULT_NAME, hosts: int = 3, pods: int = 2, plugin: str | None = None,
           progress: Progress = _quiet, agent: bool = True) -> Lab:
    """Build the lab and attach every pod; on failure remove what this call made.

    ``agent``: start one ``xvm-cnid`` per host and, unless ``plugin`` names another
    one, attach through the thin plugin (written to ``<lab>/bin/xvm-cni``) that hands
    every ADD to its host's agent. Without: ``plugin`` or the in-process xvm-cni.
    The reference ``bridge`` plugin never gets agents.

    Raises ``LabError`` (``PluginError`` when the plugin refused an ADD).
    """
    check_name(name)
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"--hosts {hosts} is out of range", f"allowed: 1..{MAX_HOSTS}")
    if not 1 <= pods <= MAX_PODS:
        raise LabError(f"--pods {pods} is out of range", f"allowed: 1..{MAX_PODS}")
    if os.geteuid() != 0:
        raise LabError("the lab needs root", "it creates network namespaces")
    thin = agent and not plugin
    plugin_path = str(lab_dir(name) / PLUGIN_DIR / "xvm-cni") if thin else find_plugin(plugin)
    existing = lab_netns(name)
    if lab_dir(name).exists() or existing:
        raise LabError(f"lab {name!r} already exists",
                       f"remove it first: xvmctl lab down --name {name}")
    stray = lab_agents(name)
    if stray:
        raise LabError(f"xvm-cnid processes of an earlier lab {name!r} still run "
                       f"(pids {' '.join(map(str, sorted(stray)))})",
                       f"remove them first: xvmctl lab down --name {name}")

    flavor = plugin_flavor(plugin_path)
    lab = Lab(name=name, plugin=plugin_path, flavor=flavor, agent=agent and flavor == "xvm")
    lab.state_dir.mkdir(parents=True, mode=0o700)
    state = _State(lab)
    state.save()
    try:
        if thin:
            plugin_file.write(Path(plugin_path))
            progress(f"plugin  {plugin_path}: the thin plugin of make install "
                     "(python3 -IS, hands each call to its host's xvm-cnid)")
        _build(lab, state, hosts, pods, progress)
    except BaseException:
        # Ctrl-C included: leave nothing half-made behind.
        progress("cleaning up after the failure")
        try:
            report = lab_down(name, progress=progress)
            if report.leftovers:
                progress("cleanup incomplete, left: " + " ".join(report.leftovers))
        except (LabError, OSError) as exc:
            # Report and fall through: the original failure is what the user needs.
            progress(f"cleanup incomplete: {exc}; run: xvmctl lab down --name {name}")
        raise
    return lab


def _build(lab: Lab, state: _State, hosts: int, pods: int, progress: Progress) -> None:
    def make_netns(ns: str) -> str:
        # Recorded before creation: a crash between the two still gets it removed.
        lab.netns_created.append(ns)
        state.save()
        return lab_net.create_netns(ns)

    started = time.monotonic()
    switch = make_netns(lab.switch_netns)
    lab_net.setup_switch(switch)
    progress(f"switch  {lab.switch_netns}: bridge {lab_net.SWITCH_BRIDGE}, "
             "multicast snooping off")

    for i in range(1, hosts + 1):
        host = Host(name=f"h{i}", netns=f"{lab.name}-h{i}",
                    underlay=f"{UNDERLAY.network_address + HOST_OFFSET + i}/{UNDERLAY.prefixlen}")
        host_dir = lab.state_dir / host.name
        (host_dir / "data").mkdir(parents=True)
        config = host_config(lab, i, host_dir)
        host.config_path = str(host_dir / ("10-xvm.conf" if lab.flavor == "xvm"
                                           else "10-reference.conf"))
        host.data_dir = str(config.get("dataDir") or config["ipam"]["dataDir"])
        Path(host.config_path).write_text(json.dumps(config, indent=2) + "\n")
        lab.hosts.append(host)
        path = make_netns(host.netns)
        lab_net.connect_host(switch, path, host.name, ipaddress.IPv4Interface(host.underlay),
                             UNDERLAY_MTU)
        progress(f"host    {host.netns}: eth0 {host.underlay} on switch port {host.name}, "
                 f"config {host.config_path}")

    if lab.agent:
        _start_agents(lab, state, progress)

    for host in lab.hosts:
        for j in range(1, pods + 1):
            pod = Pod(name=f"{host.name}-p{j}", host=host.name, netns=f"{host.netns}-p{j}",
                      container_id=f"{lab.name}-{host.name}-p{j}")
            lab.pods.append(pod)
            lab_net.bring_up_lo(make_netns(pod.netns))
    progress(f"pods    {len(lab.pods)} namespaces created ({lab.name}-h<i>-p<j>)")

    _attach_all(lab, state, progress)
    if lab.agent:
        _count_served(lab, progress)
    lab.phase = "up"
    state.save()
    progress(f"lab {lab.name} is up ({time.monotonic() - started:.1f} s)")


def _attach_all(lab: Lab, state: _State, progress: Progress) -> None:
    """ADD every pod: hosts in parallel (they are separate machines), pods of one
    host one after another (as a runtime starting containers would)."""
    plugin_name = os.path.basename(lab.plugin)
    failed = threading.Event()

    def attach_host(host: Host) -> None:
        config_text = Path(host.config_path).read_text()
        config = json.loads(config_text)
        for pod in (p for p in lab.pods if p.host == host.name):
            if failed.is_set():
                return  # another host failed: stop adding, cleanup follows
            pod.attached = True
            state.save()
            began = time.monotonic()
            try:
                result = run_plugin(lab, "ADD", pod, config_text.encode())
                _apply_result(pod, result, config)
            except BaseException as exc:
                failed.set()
                if isinstance(exc, PluginError):
                    progress(f"attach  {pod.name}: {plugin_name} ADD FAILED: {exc.plugin_msg}")
                raise
            state.save()
            progress(f"attach  {pod.name}: {plugin_name} ADD -> {pod.address} "
                     f"({(time.monotonic() - began) * 1000:.0f} ms)")

    with ThreadPoolExecutor(max_workers=min(8, len(lab.hosts))) as pool:
        futures = [pool.submit(attach_host, host) for host in lab.hosts]
        errors = [f.exception() for f in futures]
    for exc in errors:
        if exc is not None:
            raise exc


@dataclass
class DownReport:
    deleted: list[str] = field(default_factory=list)       # pods whose DEL succeeded
    del_failures: list[str] = field(default_factory=list)
    removed_netns: list[str] = field(default_factory=list)
    removed_dir: bool = False
    leftovers: list[str] = field(default_factory=list)
    agents_stopped: list[int] = field(default_factory=list)   # xvm-cnid pids
    agents_forced: list[int] = field(default_factory=list)    # of those: needed SIGKILL

    @property
    def clean(self) -> bool:
        return not self.leftovers


def lab_down(name: str = DEFAULT_NAME, plugin: str | None = None,
             progress: Progress = _quiet) -> DownReport:
    """Remove lab ``name``: CNI DEL for every pod through the plugin, then the
    hosts' agents, then the namespaces (by state file and by name prefix), then the
    files.

    Works on half-made labs and without a state file: agents are found by their
    command line (``--socket`` under the lab's directory) as well as by recorded
    pid. A failing DEL is reported and teardown goes on: deleting the namespaces
    removes what the plugin made.
    """
    check_name(name)
    if os.geteuid() != 0:
        raise LabError("the lab needs root", "it removes network namespaces")
    report = DownReport()
    try:
        lab = load_state(name)
    except LabError as exc:
        progress(f"warning: {exc}; removing by name instead")
        lab = None
    present = set(lab_netns(name))
    if lab is None and not present and not lab_dir(name).exists() and not lab_agents(name):
        return report

    if lab is None:
        lab = _lab_from_names(name, present)
    if plugin or not lab.plugin:
        try:
            lab.plugin = find_plugin(plugin) if plugin else _plugin_from_configs(lab)
        except LabError as exc:
            progress(f"warning: {exc}; skipping CNI DEL")

    def detach_host(host: Host) -> None:
        if host.netns not in present:
            return  # host gone: whatever the plugin made there went with it
        try:
            config = Path(host.config_path).read_bytes()
        except OSError as exc:
            progress(f"detach  {host.name}: no CNI config ({exc.strerror}), skipping DEL")
            return
        for pod in lab.pods:
            if pod.host != host.name or not pod.attached:
                continue
            try:
                run_plugin(lab, "DEL", pod, config)
                report.deleted.append(pod.name)
                progress(f"detach  {pod.name}: {os.path.basename(lab.plugin)} DEL ok")
            except LabError as exc:
                report.del_failures.append(f"{pod.name}: {exc}")
                progress(f"detach  {pod.name}: DEL FAILED: {exc}")

    if lab.plugin and lab.hosts:
        # Hosts in parallel, like up; list.append is atomic, so the report is safe.
        # In agent mode the DELs go through the agents, which still run.
        with ThreadPoolExecutor(max_workers=min(8, len(lab.hosts))) as pool:
            for future in [pool.submit(detach_host, host) for host in lab.hosts]:
                future.result()

    # Before the namespaces: an agent keeps its host's namespace alive, and one left
    # running would serve (and reconcile) a lab that no longer exists.
    _stop_lab_agents(lab, report, progress)

    # Pods before hosts before the switch: the reverse of creation.
    names = set(lab.netns_created) | present
    for ns in sorted(names, key=lambda n: (-n.count("-"), n)):
        try:
            if lab_net.remove_netns(ns):
                report.removed_netns.append(ns)
        except lab_net.NetnsError as exc:
            # Keep going: the rest can still go; leftovers are listed at the end.
            progress(f"warning: {exc}")
    if report.removed_netns:
        progress(f"netns   removed {len(report.removed_netns)}: "
                 + " ".join(sorted(report.removed_netns)))
    if lab_dir(name).exists():
        try:
            shutil.rmtree(lab_dir(name))
            report.removed_dir = True
            progress(f"files   removed {lab_dir(name)}")
        except OSError as exc:
            progress(f"warning: cannot remove {lab_dir(name)}: {exc}")

    report.leftovers = lab_netns(name) + ([str(lab_dir(name))] if lab_dir(name).exists() else [])
    report.leftovers += [f"xvm-cnid pid {pid}" for pid in sorted(lab_agents(name))]
    return report


def _plugin_from_configs(lab: Lab) -> str:
    """Without a state file, pick the plugin the way a runtime does: by the config's
    ``type``, xvm-cni where ``find_plugin`` looks, anything else in CNI_PATH."""
    for host in lab.hosts:
        try:
            kind = json.loads(Path(host.config_path).read_text()).get("type")
        except (OSError, ValueError, AttributeError):
            continue
        if kind == "xvm-cni" or not isinstance(kind, str):
            # The thin plugin of agent mode, when up wrote one: DELs reach the agents.
            thin = lab.state_dir / PLUGIN_DIR / "xvm-cni"
            if thin.is_file() and os.access(thin, os.X_OK):
                return str(thin)
            break
        for directory in CNI_PATH.split(":"):
            candidate = os.path.join(directory, os.path.basename(kind))
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise LabError(f"plugin {kind!r} not found in {CNI_PATH}")
    return find_plugin()


def _lab_from_names(name: str, present: set[str]) -> Lab:
    """Rebuild enough of a lab from namespace names (no state file) to send DELs:
    container IDs and config paths are derived from names the same way up does."""
    lab = Lab(name=name, plugin="", flavor="xvm", phase="unknown")
    hosts: dict[str, Host] = {}
    for ns in sorted(present):
        match = re.match(rf"^{re.escape(name)}-(h\d+)(-p\d+)?$", ns)
        if not match:
            continue
        host_name = match.group(1)
        if host_name not in hosts:
            host_dir = lab_dir(name) / host_name
            config = next(iter(sorted(host_dir.glob("10-*.conf"))), host_dir / "10-xvm.conf")
            hosts[host_name] = Host(name=host_name, netns=f"{name}-{host_name}", underlay="",
                                    config_path=str(config))
        if match.group(2):
            lab.pods.append(Pod(name=f"{host_name}{match.group(2)}", host=host_name, netns=ns,
                                container_id=f"{name}-{host_name}{match.group(2)}",
                                attached=True))
    lab.hosts = list(hosts.values())
    return lab


@dataclass
class NsStatus:
    netns: str
    exists: bool
    links: list[lab_net.LinkInfo] = field(default_factory=list)
    error: str = ""


@dataclass
class LabStatus:
    name: str
    lab: Lab | None                    # from the state file
    state_error: str = ""
    namespaces: list[NsStatus] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    agents: list[AgentHealth] = field(default_factory=list)


def known_labs() -> list[str]:
    """Labs that have a state directory or at least one namespace named like a lab's."""
    names: set[str] = set()
    if LAB_ROOT.is_dir():
        names.update(p.name for p in LAB_ROOT.iterdir() if p.is_dir() and _NAME_RE.match(p.name))
    for ns in lab_net.list_netns():
        match = re.match(r"^([a-z][a-z0-9]*)-(sw|h\d+(-p\d+)?)$", ns)
        if match:
            names.add(match.group(1))
    return sorted(names)


def lab_status(name: str) -> LabStatus:
    """What exists of lab ``name`` right now: state file, namespaces with their
    links and addresses (read live from the kernel), files."""
    check_name(name)
    status = LabStatus(name=name, lab=None)
    try:
        status.lab = load_state(name)
    except LabError as exc:
        status.state_error = str(exc)
    expected = set(status.lab.netns_created) if status.lab else set()
    present = set(lab_netns(name))
    for ns in sorted(expected | present, key=_ns_order):
        entry = NsStatus(netns=ns, exists=ns in present)
        if entry.exists:
            try:
                entry.links = lab_net.links(lab_net.netns_path(ns))
            except (lab_net.NetnsError, OSError) as exc:
                entry.error = str(exc)
        status.namespaces.append(entry)
    if lab_dir(name).is_dir():
        status.files = sorted(str(p) for p in lab_dir(name).rglob("*") if p.is_file())
    status.agents = agent_health(name, status.lab)
    return status


def _ns_order(ns: str) -> tuple[int, ...]:
    """switch, then h1, h1-p1, h1-p2, h2, ... (numeric, not lexical: h10 after h9)."""
    match = re.search(r"-h(\d+)(?:-p(\d+))?$", ns)
    if not match:
        return (0,)
    return (1, int(match.group(1)), int(match.group(2) or 0))


def load_lab(name: str = DEFAULT_NAME) -> Lab:
    """The lab as ``up`` recorded it (for the API and ``xvmctl`` commands)."""
    lab = load_state(check_name(name))
    if lab is None:
        raise LabError(f"lab {name!r} does not exist", f"create it: xvmctl lab up --name {name}")
    return lab


# ---------------------------------------------------------------------------
# Connectivity.

GATEWAY = "gateway"


@dataclass
class Matrix:
    """ICMP results: rows are source pods, columns the pods plus ``gateway``."""

    rows: list[str]
    columns: list[str]
    targets: dict[tuple[str, str], str]          # (src, column) -> address probed
    cells: dict[tuple[str, str], PingReply]
    size: int = DEFAULT_SIZE
    df: bool = False
    host_of: dict[str, str] = field(default_factory=dict)   # pod -> its host

    @property
    def total(self) -> int:
        return len(self.cells)

    @property
    def reachable(self) -> int:
        return sum(1 for reply in self.cells.values() if reply.ok)

    @property
    def ok(self) -> bool:
        return self.reachable == self.total

    def failures(self) -> list[tuple[str, str, str, PingReply]]:
        return [(src, col, self.targets[(src, col)], reply)
                for (src, col), reply in sorted(self.cells.items()) if not reply.ok]


def ping_matrix(lab: Lab, *, size: int = DEFAULT_SIZE, df: bool = False,
                timeout: float = 1.0, tries: int = 3, workers: int = 32) -> Matrix:
    """Every pod pings every other pod and its gateway, pairs in parallel threads
    (each thread enters its source pod's namespace and owns its socket)."""
    pods = [p for p in lab.pods if p.address]
    targets: dict[tuple[str, str], str] = {}
    for src in pods:
        for dst in pods:
            if dst is not src:
                targets[(src.name, dst.name)] = dst.ip
        if src.gateway:
            targets[(src.name, GATEWAY)] = src.gateway
    paths = {p.name: p.netns_path for p in pods}

    def one(key: tuple[str, str]) -> PingReply:
        return probe(paths[key[0]], targets[key], size=size, df=df, timeout=timeout,
                     tries=tries)

    keys = list(targets)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        replies = list(pool.map(one, keys))
    columns = [p.name for p in pods] + ([GATEWAY] if any(p.gateway for p in pods) else [])
    return Matrix(rows=[p.name for p in pods], columns=columns, targets=targets,
                  cells=dict(zip(keys, replies, strict=True)), size=size, df=df,
                  host_of={p.name: p.host for p in pods})


@dataclass
class MtuCheck:
    """Full-size packets with DF set between the first pods of every pair of hosts:
    a too-large pod MTU would pass small pings and black-hole real traffic."""

    size: int                                        # whole IP packet, bytes
    results: list[tuple[str, str, PingReply]]        # (src pod, dst pod, reply)

    @property
    def ok(self) -> bool:
        return all(reply.ok for _, _, reply in self.results)


def mtu_check(lab: Lab, *, timeout: float = 1.0, tries: int = 3) -> MtuCheck | None:
    firsts = [next(p for p in lab.pods if p.host == h.name and p.address)
              for h in lab.hosts if any(p.host == h.name and p.address for p in lab.pods)]
    mtu = min((p.mtu for p in firsts if p.mtu), default=0)
    if len(firsts) < 2 or not mtu:
        return None
    pairs = [(a, b) for a in firsts for b in firsts if a is not b]
    payload = mtu - 28  # 20 IP + 8 ICMP header bytes

    def one(pair: tuple[Pod, Pod]) -> PingReply:
        return probe(pair[0].netns_path, pair[1].ip, size=payload, df=True,
                     timeout=timeout, tries=tries)

    with ThreadPoolExecutor(max_workers=min(32, len(pairs))) as pool:
        replies = list(pool.map(one, pairs))
    return MtuCheck(size=mtu, results=[(a.name, b.name, r)
                                       for (a, b), r in zip(pairs, replies, strict=True)])
