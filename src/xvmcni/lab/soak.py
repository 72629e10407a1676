"""The soak: many random CNI operations on a running lab while its agents get
SIGKILLed and restarted, every answer checked as it comes, then the hosts audited.

``Soak(lab, settings).run()`` executes a ``soakplan`` plan on a lab made by
``lab_up(agent=True)``: ADDs of new pods (fresh namespaces), DELs (plain, twice,
with the netns already removed, with an empty ``CNI_NETNS``), CHECKs with the
pod's prevResult, repeated ADDs (same address expected), and operations meant to
fail (CHECK of a deleted pod: code 3; ADD into a missing netns: code 4). Up to
``concurrency`` operations run at once, in threads, each pod's own operations in
plan order; a KILL restarts one host's agent (SIGKILL, then start and wait until
it answers) in the background while operations go on.

An operation that the dying agent could not answer comes back with code 11 ("try
again later"); a runtime then retries (after a DEL, for an ADD), and so does the
soak, but only when the call overlapped a restart of that host: anywhere else a
code 11 is unexpected. Afterwards ``audit`` compares the hosts with the pods that
should live, the pods ping each other (``reach``), every pod is DELed and the
hosts must be clean.

The caller owns the lab (``lab_up`` before, ``lab_down`` after, also on failure);
pod namespaces are named like the lab's (``<lab>-h<i>-p<j>``), so ``lab_down``
removes any this run leaves behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni.lab import invoke, plumbing, soakplan
from xvmcni.lab.agents import agent_restart, lab_agents
from xvmcni.lab.audit import Audit, HostView, LivePod, audit, pod_addresses, settled_view
from xvmcni.lab.model import POD_IFNAME, Lab, Progress, quiet
from xvmcni.lab.names import AGENT_LOG, LabError, netns_path, pod_netns
from xvmcni.lab.reach import PairResult, probe_pairs, sample_pairs
from xvmcni.lab.soakplan import Op

TRY_AGAIN_LATER = 11
MAX_TRIES = 4             # one call and up to three retries after a restart's code 11
RETRY_PAUSE = 0.2
CALL_TIMEOUT = 60.0
KILL_AIM_WAIT = 2.0       # how long a KILL waits for a call in flight on its host
OUTPUT_KEPT = 2000        # characters of a call's stdout/stderr kept in the report

# Outcomes of an operation.
OK = "ok"                 # answered as expected at the first try
RETRIED = "retried"       # code 11 while its host's agent restarted, then as expected
UNEXPECTED = "unexpected"
SKIPPED = "skipped"       # its pod's ADD failed unexpectedly: nothing left to do on it


@dataclass
class SoakSettings:
    ops: int = 1000
    kill_every: int = 100
    seed: int = 1
    concurrency: int = 3
    target_per_host: int = 8
    settle_timeout: float = 5.0


@dataclass
class CallRecord:
    """One plugin run: what was asked and what came back."""

    command: str
    netns: str
    rc: int
    code: int | None
    ms: float
    began: float                  # seconds since the soak started
    stdout: str = ""
    stderr: str = ""

    @property
    def in_process(self) -> bool:
        """The thin plugin ran the call itself (no agent answered): only the
        in-process path logs to stderr; an agent's answer comes on stdout alone. A lower
        bound: an in-process CHECK that succeeds logs nothing."""
        return bool(self.stderr.strip())

    def brief(self) -> str:
        where = " in-process" if self.in_process else ""
        return f"{self.command} rc={self.rc} code={self.code} {self.ms:.0f} ms{where}"


@dataclass
class OpRecord:
    op: Op
    began: float = 0.0
    ended: float = 0.0
    outcome: str = OK
    detail: str = ""
    calls: list[CallRecord] = field(default_factory=list)

    def fail(self, detail: str) -> None:
        if self.outcome != UNEXPECTED:  # the first failure explains the rest
            self.outcome, self.detail = UNEXPECTED, detail

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.op.index, "kind": self.op.kind, "host": self.op.host,
                "pod": self.op.pod, "variant": self.op.variant, "outcome": self.outcome,
                "detail": self.detail, "began": round(self.began, 3),
                "ms": round((self.ended - self.began) * 1000, 1),
                "calls": [c.brief() for c in self.calls]}


@dataclass
class Restart:
    """One SIGKILL and restart of a host's agent."""

    index: int
    host: str
    began: float
    ended: float | None = None
    old_pid: int = 0
    new_pid: int = 0
    down_seconds: float = 0.0
    error: str = ""
    overlapped: int = 0            # operations on that host running during the window
    aimed: bool = False            # a plugin call on that host was in flight at the kill

    def window(self, now: float) -> tuple[float, float]:
        return self.began, self.ended if self.ended is not None else now


@dataclass
class PodState:
    name: str
    host: str
    container_id: str
    netns: str
    result: dict[str, Any] | None = None
    address: str = ""
    live: bool = False
    netns_made: bool = False
    broken: bool = False           # its ADD failed unexpectedly
    deleting: bool = False         # a DEL is under way: its address may be handed out

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)


@dataclass
class SoakReport:
    settings: dict[str, Any]
    records: list[OpRecord] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    ops_seconds: float = 0.0
    live_pods: list[LivePod] = field(default_factory=list)
    planned_live: int = 0
    audit: Audit = field(default_factory=Audit)
    settle_seconds: dict[str, float] = field(default_factory=dict)
    reach: list[PairResult] = field(default_factory=list)
    final_dels: list[OpRecord] = field(default_factory=list)
    clean: Audit = field(default_factory=Audit)
    agents_running: dict[str, int] = field(default_factory=dict)   # host -> agents found
    # host -> {"ERROR": n, "WARNING": n, "Traceback": n}, and the first ERROR lines
    agent_log: dict[str, dict[str, int]] = field(default_factory=dict)
    agent_log_samples: dict[str, list[str]] = field(default_factory=dict)

    def overlapping(self) -> list[OpRecord]:
        """Operations that ran while their host's agent was being killed/restarted."""
        windows = [(r.host, *r.window(float("inf"))) for r in self.restarts]
        return [rec for rec in self.records
                if any(host == rec.op.host and low <= rec.ended and rec.began <= high
                       for host, low, high in windows)]

    def by_outcome(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = {}
        for rec in self.records:
            table.setdefault(rec.op.kind, Counter())[rec.outcome] += 1
        return {kind: dict(counts) for kind, counts in sorted(table.items())}

    @property
    def unexpected(self) -> list[OpRecord]:
        return [r for r in self.records + self.final_dels if r.outcome == UNEXPECTED]

    @property
    def unreachable(self) -> list[PairResult]:
        return [r for r in self.reach if not r.reply.ok]

    @property
    def ok(self) -> bool:
        return (not self.unexpected and self.audit.ok and self.clean.ok
                and not self.unreachable
                and all(n == 1 for n in self.agents_running.values())
                and len(self.live_pods) == self.planned_live)


def sandbox_mac(result: dict[str, Any] | None) -> str:
    """The MAC of the pod's own interface in an ADD result ("" without one)."""
    for iface in (result or {}).get("interfaces") or []:
        if isinstance(iface, dict) and iface.get("sandbox") and iface.get("name") == POD_IFNAME:
            return str(iface.get("mac", ""))
    return ""


def _kept(text: str) -> str:
    return text if len(text) <= OUTPUT_KEPT else text[:OUTPUT_KEPT] + "...(cut)"


class Soak:
    """Runs one plan on one lab; ``run`` returns the report."""

    def __init__(self, lab: Lab, settings: SoakSettings, progress: Progress = quiet) -> None:
        if not lab.agent:
            raise LabError(f"lab {lab.name} runs without agents", "the soak restarts agents")
        self.lab = lab
        self.settings = settings
        self.progress = progress
        self.configs = {h.name: json.loads(Path(h.config_path).read_text()) for h in lab.hosts}
        first = self.configs[lab.hosts[0].name]
        self.network = str(first["name"])
        self.subnet = ipaddress.ip_network(str(first["subnet"]))
        self.gateway = str(first.get("gateway", ""))
        self.ip_masq = bool(first.get("ipMasq", False))
        self.pods: dict[str, PodState] = {}
        for lab_pod in lab.pods:
            self.pods[lab_pod.name] = PodState(lab_pod.name, lab_pod.host,
                                               lab_pod.container_id, lab_pod.netns,
                                               address=lab_pod.address, live=True,
                                               netns_made=True)
        self.lock = threading.Lock()
        self.addresses: dict[str, str] = {}     # live address (no prefix) -> pod name
        for pod in self.pods.values():
            if pod.address:
                self.addresses[pod.address.split("/")[0]] = pod.name
        self.restarts: list[Restart] = []
        self.in_flight: Counter[str] = Counter()   # host -> plugin calls running
        self.t0 = time.monotonic()
        self.report = SoakReport(settings=vars(settings) | {"hosts": len(lab.hosts),
                                                            "lab": lab.name})

    # -- clock and restarts ----------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _restart_overlaps(self, host: str, began: float, ended: float) -> bool:
        now = self.now()
        with self.lock:
            windows = [r.window(now) for r in self.restarts if r.host == host]
        return any(b <= ended and began <= e for b, e in windows)

    def _wait_for_a_call(self, host: str) -> bool:
        """Until a plugin call on ``host`` is in flight (at most KILL_AIM_WAIT s), so
        that the SIGKILL tends to land mid-request, where state can be half made."""
        deadline = time.monotonic() + KILL_AIM_WAIT
        while time.monotonic() < deadline:
            with self.lock:
                if self.in_flight[host] > 0:
                    return True
            time.sleep(0.002)
        return False

    def _restart(self, op: Op) -> None:
        aimed = self._wait_for_a_call(op.host)
        if aimed:  # into the request: the plugin needs ~10 ms to start and connect
            time.sleep((op.index * 7 % 40) / 1000)
        restart = Restart(op.index, op.host, self.now(), aimed=aimed)
        with self.lock:
            self.restarts.append(restart)
        try:
            action = agent_restart(self.lab.name, op.host, kill=True)
            restart.old_pid, restart.new_pid = action.old_pid, action.new_pid
            restart.down_seconds = action.down_seconds
        except (LabError, OSError) as exc:
            restart.error = str(exc)
        restart.ended = self.now()
        self.progress(f"kill    {op.host}: agent {restart.old_pid} SIGKILLed, "
                      f"{restart.new_pid or 'none'} answers after {restart.down_seconds:.2f} s"
                      + (f" ERROR {restart.error}" if restart.error else ""))

    # -- plugin calls ----------------------------------------------------------------

    def _pod(self, name: str, host: str) -> PodState:
        with self.lock:
            pod = self.pods.get(name)
            if pod is None:
                index = int(name.rsplit("-p", 1)[1])
                netns = pod_netns(self.lab.name, host, index)
                pod = PodState(name, host, f"{self.lab.name}-{name}", netns)
                self.pods[name] = pod
            return pod

    def call(self, rec: OpRecord, command: str, pod: PodState, netns: str | None = None,
             prev: dict[str, Any] | None = None) -> CallRecord:
        """One plugin run as a runtime does it; ``netns`` None: the pod's path."""
        host = self.lab.host(pod.host)
        config = dict(self.configs[pod.host])
        if prev is not None:
            config["prevResult"] = prev
        path = pod.netns_path if netns is None else netns
        env = invoke.cni_env(command, pod.container_id, path, ifname=POD_IFNAME,
                             agent_socket=self.lab.agent_socket(pod.host),
                             path=os.environ.get("PATH") or invoke.DEFAULT_PATH)
        began = self.now()
        with self.lock:
            self.in_flight[pod.host] += 1
        try:
            run = invoke.run(self.lab.plugin, json.dumps(config).encode(), env,
                             host=host.netns_path, timeout=CALL_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a harness failure is a finding too
            record = CallRecord(command, path, -1, None, (self.now() - began) * 1000, began,
                                stderr=f"could not run the plugin: {exc!r}")
        else:
            error = run.error
            # All of stdout: an ADD's result is read back (and becomes a prevResult).
            record = CallRecord(command, path, run.rc, error.code if error else None, run.ms,
                                began, run.stdout, _kept(run.stderr))
        finally:
            with self.lock:
                self.in_flight[pod.host] -= 1
        rec.calls.append(record)
        return record

    def _tolerable(self, call: CallRecord, host: str) -> bool:
        """Code 11 from a call that overlapped a restart of its host's agent."""
        return (call.rc != 0 and call.code == TRY_AGAIN_LATER
                and self._restart_overlaps(host, call.began, call.began + call.ms / 1000))

    def attempt(self, rec: OpRecord, command: str, pod: PodState,
                prev: dict[str, Any] | None = None, before_retry: Callable[[], None] | None
                = None) -> CallRecord:
        """``call``, retried like a runtime would while the host's agent restarts."""
        for _ in range(MAX_TRIES):
            call = self.call(rec, command, pod, prev=prev)
            if not self._tolerable(call, pod.host):
                return call
            rec.outcome = RETRIED
            time.sleep(RETRY_PAUSE)
            if before_retry is not None:
                before_retry()
        return call

    def _unexpected(self, rec: OpRecord, what: str, call: CallRecord | None = None) -> None:
        overlap = ""
        if call is not None and self._restart_overlaps(rec.op.host, call.began,
                                                       call.began + call.ms / 1000):
            overlap = " (during a restart of its host's agent)"
        rec.fail(what + overlap)

    @staticmethod
    def _succeeded(call: CallRecord) -> bool:
        return call.rc == 0 and call.code is None

    # -- operations ------------------------------------------------------------------

    def _make_netns(self, pod: PodState) -> None:
        pod.netns_made = True  # first: a failure half way still gets it removed
        plumbing.bring_up_lo(plumbing.create_netns(pod.netns))

    def _drop_netns(self, pod: PodState) -> None:
        plumbing.remove_netns(pod.netns)
        pod.netns_made = False

    def _take_result(self, rec: OpRecord, pod: PodState, call: CallRecord) -> bool:
        """Check an ADD's answer; record the pod as live with its address."""
        try:
            result = json.loads(call.stdout)
            address = str(ipaddress.ip_interface(result["ips"][0]["address"]))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self._unexpected(rec, f"ADD result unreadable ({exc!r}): {call.stdout[:300]}")
            return False
        ip = address.split("/")[0]
        if ipaddress.ip_address(ip) not in self.subnet or ip == self.gateway:
            self._unexpected(rec, f"ADD answered {address}, outside {self.subnet} or the gateway")
            return False
        with self.lock:
            holder = self.addresses.get(ip)
            if holder is not None and holder != pod.name and not self.pods[holder].deleting:
                self._unexpected(rec, f"ADD answered {address}, already held by live pod "
                                      f"{holder}")
                return False
            if pod.address and pod.address.split("/")[0] != ip:
                self.addresses.pop(pod.address.split("/")[0], None)
            self.addresses[ip] = pod.name
            pod.address, pod.result, pod.live = address, result, True
        return True

    def _forget(self, pod: PodState) -> None:
        with self.lock:
            if pod.address and self.addresses.get(pod.address.split("/")[0]) == pod.name:
                del self.addresses[pod.address.split("/")[0]]
            pod.live = pod.deleting = False

    def _runtime_del(self, rec: OpRecord, pod: PodState) -> None:
        """A runtime DELs a failed ADD before it tries again; that DEL must work."""
        call = self.call(rec, "DEL", pod)
        if not self._succeeded(call):
            self._unexpected(rec, "DEL after a failed ADD failed", call)

    def op_add(self, rec: OpRecord, pod: PodState) -> None:
        self._make_netns(pod)

        call = self.attempt(rec, "ADD", pod, before_retry=lambda: self._runtime_del(rec, pod))
        if not self._succeeded(call):
            self._unexpected(rec, "ADD failed", call)
            pod.broken = True
            undo = self.call(rec, "DEL", pod)  # the runtime's DEL after a failed ADD
            if not self._succeeded(undo):
                rec.detail += "; the DEL after it failed too"
            return
        self._take_result(rec, pod, call)

    def op_readd(self, rec: OpRecord, pod: PodState) -> None:
        before = pod.address
        call = self.attempt(rec, "ADD", pod)
        if not self._succeeded(call):
            self._unexpected(rec, "repeated ADD failed", call)
            return
        if self._take_result(rec, pod, call) and before and pod.address != before:
            self._unexpected(rec, f"repeated ADD answered {pod.address}, first ADD {before}")

    def op_check(self, rec: OpRecord, pod: PodState) -> None:
        call = self.attempt(rec, "CHECK", pod, prev=pod.result)
        if not self._succeeded(call):
            self._unexpected(rec, "CHECK failed", call)

    def op_del(self, rec: OpRecord, pod: PodState) -> None:
        variant = rec.op.variant
        pod.deleting = True  # from its release on, the address is free again
        if variant == soakplan.DEL_NETNS_GONE:
            self._drop_netns(pod)
        netns = "" if variant == soakplan.DEL_NO_NETNS else None
        calls = [self.call(rec, "DEL", pod, netns=netns)]
        if variant == soakplan.DEL_TWICE:
            calls.append(self.call(rec, "DEL", pod))
        self._forget(pod)
        if pod.netns_made:
            self._drop_netns(pod)
        for call in calls:
            if not self._succeeded(call):
                self._unexpected(rec, "DEL failed", call)
                return

    def op_check_gone(self, rec: OpRecord, pod: PodState) -> None:
        call = self.attempt(rec, "CHECK", pod, prev=pod.result)
        if call.rc == 0 or call.code != soakplan.UNKNOWN_CONTAINER:
            self._unexpected(rec, f"CHECK of a deleted pod: expected code "
                                  f"{soakplan.UNKNOWN_CONTAINER}, got rc={call.rc} "
                                  f"code={call.code}", call)

    def op_add_no_netns(self, rec: OpRecord, pod: PodState) -> None:
        call = self.attempt(rec, "ADD", pod, before_retry=lambda: self._runtime_del(rec, pod))
        if call.rc == 0 or call.code != soakplan.INVALID_ENV:
            self._unexpected(rec, f"ADD into a missing netns: expected code "
                                  f"{soakplan.INVALID_ENV}, got rc={call.rc} code={call.code}",
                             call)
            if call.rc == 0:
                self._take_result(rec, pod, call)  # it attached something: must go again
        undo = self.call(rec, "DEL", pod)          # the runtime's DEL after a failed ADD
        self._forget(pod)
        if not self._succeeded(undo):
            self._unexpected(rec, "DEL after the failed ADD failed", undo)

    def run_op(self, op: Op) -> OpRecord:
        rec = OpRecord(op, began=self.now())
        pod = self._pod(op.pod, op.host)
        handlers: dict[str, Callable[[OpRecord, PodState], None]] = {
            soakplan.ADD: self.op_add, soakplan.READD: self.op_readd,
            soakplan.CHECK: self.op_check, soakplan.DEL: self.op_del,
            soakplan.CHECK_GONE: self.op_check_gone,
            soakplan.ADD_NO_NETNS: self.op_add_no_netns}
        try:
            if pod.broken and op.kind != soakplan.ADD:
                rec.outcome, rec.detail = SKIPPED, "its ADD failed"
                if op.kind == soakplan.DEL and pod.netns_made:
                    self._drop_netns(pod)
            else:
                handlers[op.kind](rec, pod)
        except Exception as exc:  # noqa: BLE001 - the soak goes on; the record says why
            rec.fail(f"harness error: {exc!r}")
        rec.ended = self.now()
        return rec

    # -- the run ---------------------------------------------------------------------

    def plan(self) -> list[Op]:
        initial: dict[str, list[str]] = {h.name: [] for h in self.lab.hosts}
        for pod in self.pods.values():
            initial[pod.host].append(pod.name)
        return soakplan.make_plan(soakplan.PlanSettings(
            ops=self.settings.ops, hosts=[h.name for h in self.lab.hosts], initial=initial,
            kill_every=self.settings.kill_every, seed=self.settings.seed,
            target_per_host=self.settings.target_per_host))

    def execute(self, plan: list[Op]) -> None:
        """Dispatch in plan order: at most ``concurrency`` at once, each pod's
        operations one after another; KILLs in a thread of their own."""
        slots = threading.Semaphore(self.settings.concurrency)
        last: dict[str, Future[OpRecord]] = {}
        futures: list[Future[OpRecord]] = []
        restarter: threading.Thread | None = None
        total = sum(1 for op in plan if op.kind != soakplan.KILL)

        def run_and_free(op: Op) -> OpRecord:
            try:
                return self.run_op(op)
            finally:
                slots.release()

        began = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
                for op in plan:
                    if op.kind == soakplan.KILL:
                        if restarter is not None:
                            restarter.join()  # one restart at a time
                        restarter = threading.Thread(target=self._restart, args=(op,),
                                                     name=f"restart-{op.host}", daemon=True)
                        restarter.start()
                        continue
                    previous = last.get(op.pod)
                    if previous is not None:
                        previous.result()
                    slots.acquire()
                    last[op.pod] = future = pool.submit(run_and_free, op)
                    futures.append(future)
                    if len(futures) % 100 == 0:
                        self.progress(f"ops     {len(futures)}/{total} dispatched "
                                      f"({time.monotonic() - began:.1f} s)")
                self.report.records = [f.result() for f in futures]
        finally:
            # Also on Ctrl-C: a restart cut short could start an agent after lab down.
            if restarter is not None:
                restarter.join()
        self.report.ops_seconds = time.monotonic() - began
        self.report.restarts = self.restarts
        for restart in self.restarts:
            low, high = restart.window(self.now())
            restart.overlapped = sum(1 for r in self.report.records
                                     if r.op.host == restart.host
                                     and r.began <= high and low <= r.ended)

    def live_pods(self) -> list[LivePod]:
        return [LivePod(p.name, p.host, p.container_id, POD_IFNAME, p.netns_path, p.address,
                        sandbox_mac(p.result))
                for p in sorted(self.pods.values(), key=lambda p: p.name) if p.live]

    def views(self, settle: bool = True) -> list[HostView]:
        views = []
        for host in self.lab.hosts:
            view, waited = settled_view(host.name, host.netns_path, self.network,
                                        host.data_dir, self.settings.settle_timeout
                                        if settle else 0.0)
            self.report.settle_seconds[host.name] = round(waited, 3)
            views.append(view)
        return views

    def verify(self, plan: list[Op]) -> None:
        pods = self.live_pods()
        self.report.live_pods = pods
        initial = {h.name: [p.name for p in self.lab.pods_of(h.name)] for h in self.lab.hosts}
        planned = soakplan.live_after(plan, initial)
        self.report.planned_live = sum(len(v) for v in planned.values())
        kernel = {p.name: pod_addresses(p.netns_path, p.ifname) for p in pods}
        self.report.audit = audit(self.network, self.views(), pods, kernel, self.ip_masq)
        pairs = sample_pairs(pods, random.Random(self.settings.seed))  # noqa: S311 - a sample
        self.progress(f"verify  {len(pods)} live pods; pinging {len(pairs)} pairs")
        self.report.reach = probe_pairs(pairs)

    def delete_all(self) -> None:
        """DEL every live pod (as its runtime would at shutdown), remove the netns."""
        def one(pod: PodState) -> OpRecord:
            rec = OpRecord(Op(-1, soakplan.DEL, pod.host, pod.name, "final"), self.now())
            pod.deleting = True
            call = self.call(rec, "DEL", pod)
            self._forget(pod)
            if pod.netns_made:
                self._drop_netns(pod)
            if not self._succeeded(call):
                self._unexpected(rec, "final DEL failed", call)
            rec.ended = self.now()
            return rec

        live = [p for p in self.pods.values() if p.live]
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            self.report.final_dels = list(pool.map(one, live))
        for pod in self.pods.values():  # failed ADDs' namespaces
            if pod.netns_made:
                self._drop_netns(pod)
        self.report.clean = audit(self.network, self.views(), [], {}, self.ip_masq)

    def agents_check(self) -> None:
        running = lab_agents(self.lab.name)
        for host in self.lab.hosts:
            sock = self.lab.agent_socket(host.name)
            self.report.agents_running[host.name] = sum(1 for s in running.values()
                                                        if s == sock)
            log = self.lab.state_dir / host.name / AGENT_LOG
            try:
                text = log.read_text(errors="replace")
            except OSError:
                text = ""
            lines = text.splitlines()
            self.report.agent_log[host.name] = {
                word: sum(1 for line in lines if word in line)
                for word in (" ERROR ", " WARNING ", "Traceback")}
            self.report.agent_log_samples[host.name] = [
                line for line in lines if " ERROR " in line or "Traceback" in line][:5]

    def run(self) -> SoakReport:
        plan = self.plan()
        kills = sum(1 for op in plan if op.kind == soakplan.KILL)
        self.progress(f"soak    {self.settings.ops} ops on {len(self.lab.hosts)} hosts, "
                      f"{kills} agent kills, concurrency {self.settings.concurrency}, "
                      f"seed {self.settings.seed}")
        self.execute(plan)
        self.progress(f"ops     done in {self.report.ops_seconds:.1f} s; verifying")
        self.agents_check()
        self.verify(plan)
        self.progress("clean   DEL of every live pod")
        self.delete_all()
        return self.report
