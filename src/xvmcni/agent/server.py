"""xvm-cnid: serves the command flow on a unix socket, warm.

One thread per connection; the CNI work itself runs in a bounded worker pool
with a per-request timeout. Per-network serialisation comes from the same
flock the in-process plugin takes, so agent and fallback never race.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni import commands, networks
from xvmcni.agent import listener, peers, probes, reconcile
from xvmcni.agent.metrics import Metrics
from xvmcni.cni import wire
from xvmcni.cni.invocation import Outcome, answer
from xvmcni.cni.request import Request
from xvmcni.controlplane import podselect
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.reaper import VethReaper
from xvmcni.errors import TRY_AGAIN_LATER, CniError
from xvmcni.networks import Network
from xvmcni.runtime import REGISTRY_FILE, Runtime

log = logging.getLogger(__name__)

try:
    VERSION = importlib.metadata.version("xvm-cni")
except importlib.metadata.PackageNotFoundError:  # run from a source tree
    VERSION = "unknown"

# While requests come in, return freed heap to the OS this often (see _trim_loop).
TRIM_INTERVAL = 2.0
# How often a request waiting for a worker checks whether its caller hung up.
CALLER_CHECK_INTERVAL = 0.2
# Answer this much before the caller's deadline, so that the answer still reaches it.
REPLY_MARGIN = 0.1


@dataclass
class AgentOptions:
    socket_path: Path = Path(wire.DEFAULT_SOCKET)
    conf_dirs: list[Path] = field(default_factory=lambda: [Path(wire.DEFAULT_CONF_DIR)])
    data_dirs: list[Path] = field(default_factory=lambda: [Path(wire.DEFAULT_DATA_DIR)])
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9472
    request_timeout: float = 25.0
    gc_interval: float = 60.0
    workers: int = 16
    max_connections: int = listener.DEFAULT_MAX_CONNECTIONS


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
        self._server: listener.Listener | None = None
        self.reaper = VethReaper()
        self.runtime = Runtime.for_agent(self.reaper)
        # Control planes that list hosts (etcd): watched, applied, published.
        self.peers = peers.PeerSync(self.runtime, self.networks)
        # The last reconcile pass (unix time and per-network reports), for status and
        # xvmctl doctor; None before the first one.
        self.last_reconcile: dict[str, Any] | None = None
        # Throwaway probe containers for xvmctl connectivity.
        self.probes = probes.Probes(lambda env, stdin: self.cni(env, stdin), self.networks,
                                    self.runtime)

    # --- requests --------------------------------------------------------------------

    def cni(self, env: dict[str, str], stdin: str, deadline: float | None = None,
            caller_gone: Callable[[], bool] = lambda: False) -> Outcome:
        """Run one CNI invocation exactly as the in-process plugin would, unless its caller
        gives up first: ``deadline`` (unix time) is when the caller stops waiting.

        Work not started by then is dropped, never run late: a late DEL would remove the
        attachment of a container re-ADDed under the same ID meanwhile (podman restart),
        a late ADD would leak. Work already running finishes (stopping it half-way is
        worse) and the caller is told so.
        """
        command = env.get("CNI_COMMAND", "")
        begin = time.perf_counter()
        raw = stdin.encode("utf-8", "surrogateescape")
        if command in wire.COMMANDS:
            label = command
            outcome = self._execute_in_time(command, env, raw, deadline, caller_gone)
        else:
            # Refused by the parser before anything happens; counted under one label, so
            # made-up commands cannot grow the metrics without bound.
            label = "invalid"
            outcome = self._answer(env, raw)
        elapsed = time.perf_counter() - begin
        with self._counts_lock:
            self.requests[label] = self.requests.get(label, 0) + 1
            self._served_since_trim = True
        if command in ("ADD", "DEL") and outcome.exit == 0:
            self.peers.nudge()  # a host may have joined or left a network: publish
        if self.metrics is not None:
            self.metrics.observe(label, elapsed, outcome.code)
        log.info("%s container=%s ifname=%s exit=%d %.1fms", label,
                 env.get("CNI_CONTAINERID", "")[:12], env.get("CNI_IFNAME", ""), outcome.exit,
                 elapsed * 1000)
        return outcome

    def _answer(self, env: dict[str, str], raw: bytes) -> Outcome:
        """The command flow, called directly: CNI codes are mapped at its edge."""
        return answer(env, raw, lambda request: commands.run(request, self.runtime))

    def _execute_in_time(self, command: str, env: dict[str, str], raw: bytes,
                         deadline: float | None, caller_gone: Callable[[], bool]) -> Outcome:
        budget = self.options.request_timeout
        if deadline is not None:  # the caller's clock is ours: same host
            budget = min(budget, deadline - time.time() - REPLY_MARGIN)
        if budget <= 0:
            return _late(command, raw, "not started: the caller's deadline had passed")
        end = time.monotonic() + budget
        future = self.pool.submit(self._execute_unless_late, env, raw, end)
        while True:
            try:
                done = future.result(
                    timeout=max(0.0, min(CALLER_CHECK_INTERVAL, end - time.monotonic())))
            except concurrent.futures.TimeoutError:
                gone = caller_gone()
                if not gone and time.monotonic() < end:
                    continue
                if future.cancel():
                    why = "the caller hung up" if gone else \
                        f"no worker was free within {budget:.3g}s"
                    return _late(command, raw, f"not started: {why}; nothing was changed")
                if not future.done():
                    when = "when the caller hung up" if gone else f"after {budget:.3g}s"
                    return _late(command, raw, f"still running {when}: it will finish in "
                                 "xvm-cnid, but its answer is lost")
                done = future.result()
            if done is None:
                return _late(command, raw, "not started: the caller's deadline passed "
                             "while it waited for a worker; nothing was changed")
            return done

    def _execute_unless_late(self, env: dict[str, str], raw: bytes,
                             end: float) -> Outcome | None:
        """In a worker: the invocation, or None when its caller no longer waits."""
        if time.monotonic() >= end:
            return None
        return self._answer(env, raw)

    def operation(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        if op.startswith("probe-"):
            return self.probes.operation(op, args or {})
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
                          "version": VERSION, "reconcile": self.last_reconcile,
                          "socket": str(self.options.socket_path), "requests": counts,
                          "metrics": (f"http://{self.options.metrics_address}:"
                                      f"{self.options.metrics_port}/metrics"
                                      if self.options.metrics_port else "")},
                "networks": self.usage()}

    def reconcile_all(self) -> list[reconcile.NetworkReport]:
        reports = [reconcile.reconcile(network, self.runtime) for network in self.networks()]
        self.last_reconcile = {"at": round(time.time(), 1),
                               "networks": [vars(r) for r in reports]}
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
        self.peers.start()
        self._watch_pods()
        self._server = listener.bind(self.options.socket_path, self,
                                     self.options.max_connections)
        if self.metrics is not None:
            self.metrics.serve(self.options.metrics_address, self.options.metrics_port)
        if self.options.gc_interval > 0:
            threading.Thread(target=self._gc_loop, name="gc", daemon=True).start()
        threading.Thread(target=self._trim_loop, name="trim", daemon=True).start()
        log.info("xvm-cnid ready on %s", self.options.socket_path)
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            listener.close(self._server, self.options.socket_path)
            self.probes.delete_all()
            self.pool.shutdown(wait=True, cancel_futures=False)
            self.peers.stop()
            if self.runtime.pod_sources is not None:
                self.runtime.pod_sources.stop()
            self.reaper.stop()
            log.info("xvm-cnid stopped")

    def _watch_pods(self) -> None:
        """Start the pod caches the known networks read annotations from, so the first
        ADD finds them warm (a network configured later starts its cache on first use)."""
        sources = self.runtime.pod_sources
        if sources is None:
            return
        for network in self.networks():
            try:
                settings = podselect.parse_settings(network.config.raw)
                if podselect.wants_pod(settings):
                    sources.cache(settings.kubeconfig, settings.node)
            except Exception:  # no kubeconfig yet: the first ADD reports it (logged)
                log.exception("%s: cannot watch Kubernetes pods", network.name)

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
                self.probes.expire()
                self.reconcile_all()
            except Exception:  # the loop must survive one bad pass; it is logged
                log.exception("periodic reconcile failed")


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on a libc without it (musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        func: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return func


def _late(command: str, raw: bytes, why: str) -> Outcome:
    """Code 11 for a request the caller no longer waits for: the plugin retries a DEL
    in-process (under the network lock, after anything still running), the runtime an
    ADD."""
    err = CniError(TRY_AGAIN_LATER, f"{command} {why}; try again later")
    log.error("%s %s", command, why)
    return Outcome(1, err.to_dict(wire.declared_version(raw)), err.code)
