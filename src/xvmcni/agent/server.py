"""xvm-cnid: serves the plugin's handler on a unix socket, warm.

One thread per connection; the CNI work itself runs in a bounded worker pool
with a per-request timeout. Per-network serialisation comes from the same
flock the in-process plugin takes, so agent and fallback never race.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni import networks
from xvmcni.agent import reconcile
from xvmcni.agent.metrics import Metrics
from xvmcni.cni.main import Outcome, declared_version, execute
from xvmcni.cni.request import Request
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.reaper import VethReaper
from xvmcni.errors import TRY_AGAIN_LATER, CniError
from xvmcni.networks import Network
from xvmcni.runtime import REGISTRY_FILE, Runtime

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 << 20
# While requests come in, return freed heap to the OS this often (see _trim_loop).
TRIM_INTERVAL = 2.0
CLIENT_READ_TIMEOUT = 10.0


@dataclass
class AgentOptions:
    socket_path: Path = Path("/run/xvm-cni/xvm-cnid.sock")
    conf_dirs: list[Path] = field(default_factory=lambda: [Path("/etc/cni/net.d")])
    data_dirs: list[Path] = field(default_factory=lambda: [Path("/var/lib/cni/xvm-cni")])
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9472
    request_timeout: float = 25.0
    gc_interval: float = 60.0
    workers: int = 16


class Agent:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.started = time.time()
        self.pool = concurrent.futures.ThreadPoolExecutor(options.workers,
                                                          thread_name_prefix="cni")
        self.metrics = Metrics(self.usage) if options.metrics_port else None
        self.requests: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._stop = threading.Event()
        self._served_since_trim = False
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self.reaper = VethReaper()
        self.runtime = Runtime.for_agent(self.reaper)

    # --- requests --------------------------------------------------------------------

    def cni(self, env: dict[str, str], stdin: str) -> Outcome:
        """Run one CNI invocation exactly as the in-process plugin would."""
        command = env.get("CNI_COMMAND", "?")
        begin = time.perf_counter()
        raw = stdin.encode("utf-8", "surrogateescape")
        future = self.pool.submit(execute, env, raw, self.runtime)
        try:
            outcome = future.result(timeout=self.options.request_timeout)
        except concurrent.futures.TimeoutError:
            err = CniError(TRY_AGAIN_LATER, f"{command} took longer than "
                           f"{self.options.request_timeout:g}s in xvm-cnid; try again later")
            outcome = Outcome(1, err.to_dict(declared_version(raw)), err.code)
            log.error("%s timed out after %.1fs", command, self.options.request_timeout)
        elapsed = time.perf_counter() - begin
        with self._counts_lock:
            self.requests[command] = self.requests.get(command, 0) + 1
            self._served_since_trim = True
        if self.metrics is not None:
            self.metrics.observe(command, elapsed, outcome.code)
        log.info("%s container=%s ifname=%s exit=%d %.1fms", command,
                 env.get("CNI_CONTAINERID", "")[:12], env.get("CNI_IFNAME", ""), outcome.exit,
                 elapsed * 1000)
        return outcome

    def operation(self, op: str) -> dict[str, Any]:
        if op == "status":
            return self.status()
        if op == "gc":
            return {"networks": [vars(r) for r in self.reconcile_all()]}
        if op == "ping":
            return {"pong": True}
        return {"error": f"unknown operation {op!r}"}

    # --- state -----------------------------------------------------------------------

    def networks(self) -> list[Network]:
        return reconcile.known_networks(self.options.conf_dirs, self.options.data_dirs)

    def usage(self) -> list[dict[str, Any]]:
        """One row per network; a network that cannot be read is shown not ready with
        the reason, and never hides the others."""
        return [self._usage_row(network) for network in self.networks()]

    def _usage_row(self, network: Network) -> dict[str, Any]:
        row: dict[str, Any] = {"name": network.name, "containers": 0, "used": 0, "size": 0,
                               "pool": "", "ready": True, "reason": ""}
        try:
            with networks.open_model(network, self.runtime) as model:
                row.update(model.describe())
                model.prepare()
                request = Request("STATUS", config=network.config.raw)
                ipam = networks.ipam(network, request, model.underlay_address)
                if (network.state_dir / REGISTRY_FILE).exists():
                    with self.runtime.registry(network.state_dir) as registry:
                        row["containers"] = registry.count()
                        usage = ipam.usage(registry)
                else:
                    usage = ipam.usage(None)
            row["used"], row["size"], row["pool"] = usage.used, usage.size or 0, usage.range
            if usage.size is not None and usage.used >= usage.size:
                row["ready"], row["reason"] = False, "address range exhausted"
        except CniError as err:
            row["ready"], row["reason"] = False, str(err)
        except DataplaneError as err:
            row["ready"], row["reason"] = False, str(err)
        except Exception as exc:  # one network must not break status or /metrics (logged)
            log.exception("reading network %s for status failed", network.name)
            row["ready"], row["reason"] = False, f"internal error: {exc!r}"
        return row

    def status(self) -> dict[str, Any]:
        with self._counts_lock:
            counts = dict(self.requests)
        return {"agent": {"pid": os.getpid(), "uptime": round(time.time() - self.started, 1),
                          "socket": str(self.options.socket_path), "requests": counts,
                          "metrics": (f"http://{self.options.metrics_address}:"
                                      f"{self.options.metrics_port}/metrics"
                                      if self.options.metrics_port else "")},
                "networks": self.usage()}

    def reconcile_all(self) -> list[reconcile.NetworkReport]:
        reports = [reconcile.reconcile(network, self.runtime) for network in self.networks()]
        for report in reports:
            if report.released or report.replugged or report.error:
                log.info("reconcile %s: released=%s replugged=%s error=%s", report.name,
                         report.released, report.replugged, report.error or "-")
        return reports

    # --- lifecycle -------------------------------------------------------------------

    def serve_forever(self) -> None:
        # Warm up: pay the imports and the first netlink socket before the first ADD.
        with self.runtime.host_rtnl() as ipr:
            ipr.get_links()
        self.reaper.start()
        self.reconcile_all()
        self._server = _bind(self.options.socket_path, self)
        if self.metrics is not None:
            self.metrics.serve(self.options.metrics_address, self.options.metrics_port)
        if self.options.gc_interval > 0:
            threading.Thread(target=self._gc_loop, name="gc", daemon=True).start()
        threading.Thread(target=self._trim_loop, name="trim", daemon=True).start()
        log.info("xvm-cnid ready on %s", self.options.socket_path)
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()
            with contextlib.suppress(FileNotFoundError):
                self.options.socket_path.unlink()
            self.pool.shutdown(wait=True, cancel_futures=False)
            self.reaper.stop()
            log.info("xvm-cnid stopped")

    def shutdown(self) -> None:
        self._stop.set()
        if self._server is not None:
            # serve_forever's own thread must not call shutdown(): do it from another.
            threading.Thread(target=self._server.shutdown, daemon=True).start()

    def _trim_loop(self) -> None:
        """Every TRIM_INTERVAL seconds in which requests were served, hand glibc's freed heap
        back to the OS.

        Each request allocates and frees netlink messages, sockets and sqlite pages;
        glibc keeps the freed memory mapped, and RSS creeps up by several MiB over the
        first thousand operations (bench/footprint.py). malloc_trim(0) releases it.
        """
        trim = _malloc_trim()
        if trim is None:
            return
        while not self._stop.wait(TRIM_INTERVAL):
            with self._counts_lock:
                due, self._served_since_trim = self._served_since_trim, False
            if due:
                trim(0)

    def _gc_loop(self) -> None:
        while not self._stop.wait(self.options.gc_interval):
            try:
                self.reconcile_all()
            except Exception:  # the loop must survive one bad pass; it is logged
                log.exception("periodic reconcile failed")


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(CLIENT_READ_TIMEOUT)
        try:
            data = _read_all(sock)
            message = json.loads(data)
            if "op" in message:
                reply: dict[str, Any] = self.server.agent.operation(str(message["op"]))
            elif (why := _foreign_caller(sock)):
                # The work must happen in the caller's host namespace, not ours: tell the
                # plugin to run it in-process there.
                reply = {"fallback": why}
                log.warning("not serving a request: %s; the plugin runs it in-process", why)
            else:
                outcome = self.server.agent.cni(
                    {str(k): str(v) for k, v in dict(message["env"]).items()},
                    str(message["stdin"]))
                reply = {"exit": outcome.exit, "stdout": outcome.stdout()}
                if outcome.code is not None:
                    reply["code"] = outcome.code
            sock.sendall(json.dumps(reply).encode())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("dropped a malformed or broken client connection: %s", exc)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of pods (50 ADDs at once) would see
    # EAGAIN on connect. The kernel caps this at net.core.somaxconn.
    request_queue_size = 1024
    agent: Agent


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on a libc without it (musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        func: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return func


def _foreign_caller(sock: socket.socket) -> str:
    """Why this agent must not serve the connecting process ('' when it may): it has to
    share our network namespace, and we must be able to tell."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net")
    except OSError as exc:
        # Gone already, or we lack CAP_SYS_PTRACE to look: do not guess.
        return (f"cannot verify the caller's network namespace (pid {pid}): "
                f"{exc.strerror or exc}")
    mine = os.stat("/proc/self/ns/net")
    if (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
        return "the plugin runs in another network namespace than this agent"
    return ""


def _read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise ValueError(f"request larger than {MAX_REQUEST_BYTES} bytes")
        chunks.append(chunk)


def _bind(path: Path, agent: Agent) -> _Server:
    """Listen on ``path``, mode 0600 from the first instant, replacing a stale socket."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_alive(path):
            raise RuntimeError(f"another xvm-cnid is already serving {path}")
        path.unlink()
    old_umask = os.umask(0o177)  # no window in which others could connect
    try:
        server = _Server(str(path), _Connection)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    server.agent = agent
    return server


def _socket_alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
