"""Convergence: from a new host's agent start until every existing pod reaches the new
host's pods and they reach every existing pod.

    sudo .venv/bin/python bench/convergence.py [--hosts 10 50] [--pods 1] [--joins 10]
        [--model routed|l2] [--encap vxlan] [--underlay flat|routed]
        [--control etcd [kubernetes]] [--out FILE]

For each ``--hosts`` N: a lab of N hosts x ``--pods`` pods with the control plane
``--control`` (agents on), built with the lab API. Then ``--joins`` times: a new host
is added with its pods already attached (the thin plugin works in-process while no
agent runs, so the host is invisible to the cluster), ICMP pollers start in every
pod (one thread and one raw socket per pod, an echo to every target it has not yet
reached every ``--interval`` seconds), and the clock starts right before the new
host's agent is spawned (a reply before that fails the run). A directed pair
converges at its first echo reply; the join's convergence time is the last pair's.
Also recorded: when the agent answered on its socket, when it logged "publishing"
(its record goes to etcd), and the last pair in each direction. The new host is
then drained (its pods DELed through its agent, which withdraws its record), its
agent stopped and its namespaces removed, so every join meets the same N hosts;
each join is a fresh host (h<N+1>, h<N+2>, ...).

Reported per N: p50 / p90 / p99 / max over the joins (nearest rank; with 10 joins
p99 is the maximum), target p99 <= 1 s. The lab build time (namespaces, agents,
ADDs) is recorded too. Everything is removed at the end, also on errors and Ctrl-C.

Control planes: ``CONTROL_PLANES`` maps ``--control`` to the one small piece that
differs (build a lab whose hosts find each other through it; make a new host known
to it). ``--control etcd kubernetes`` measures both in one run, one after the other
per N, printed side by side and written to one JSON; Kubernetes is measured by
bench/convergence_k8s.py's ``measure`` (routed model only, needs $XVM_TEST_K8S):
there the clock starts at the new Node's POST with the new host's agent already
running (a kubelet registering), here at the agent's spawn, so compare the two as
"new host known -> every pair reaches", not hop by hop. For Kubernetes the joins
accumulate (each new Node stays), for etcd each join meets the same N hosts.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import secrets
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib as bl

from xvmcni import lab as labapi
from xvmcni.dataplane.icmp import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, checksum
from xvmcni.lab import agents, grow, plumbing
from xvmcni.lab.names import AGENT_LOG

TARGET_P99 = 1.0


# --- the control-plane-specific part ------------------------------------------------

@dataclass(frozen=True)
class ControlPlane:
    """How a lab of this control plane is built, and how a new host becomes known.

    ``join`` starts whatever makes the (already built, pods attached) host known to
    the cluster and returns at once; the clock runs from just before it is called.
    """

    kind: str
    up: Callable[[argparse.Namespace, str, int], labapi.Lab]
    join: Callable[[labapi.Lab, labapi.Host], None]


def _etcd_up(args: argparse.Namespace, name: str, hosts: int) -> labapi.Lab:
    return labapi.lab_up(name, hosts=hosts, pods=args.pods, model=args.model,
                         encap=args.encap, underlay=args.underlay, control="etcd",
                         progress=_quiet_progress)


def _etcd_join(lab: labapi.Lab, host: labapi.Host) -> None:
    # The agent is the whole join: it publishes the host and follows the others.
    host.agent_pid = agents.spawn_agent(lab, host)


CONTROL_PLANES = {"etcd": ControlPlane("etcd", _etcd_up, _etcd_join)}
# Measured by bench/convergence_k8s.py (its own lab: API server, controller-manager).
KUBERNETES = "kubernetes"


def run_k8s_size(args: argparse.Namespace, hosts: int) -> dict[str, Any]:
    """``--joins`` new Nodes at N existing ones, through convergence_k8s.measure."""
    import convergence_k8s  # a sibling script; loads the test support's API server

    def progress(line: str) -> None:
        print(f"  k8s {line}", file=sys.stderr, flush=True)

    load = os.getloadavg()
    began = time.monotonic()
    logs = (Path(args.out).parent if args.out else bl.RESULTS_DIR) / "convergence-k8s-logs"
    samples = convergence_k8s.measure(hosts, args.joins, args.encap, progress,
                                      settle=lambda: settle(args.gap), logs=logs)
    return {"hosts": hosts, "control": KUBERNETES, "loadavg_before": load,
            "seconds_total": time.monotonic() - began, "samples": samples,
            "loadavg_after": os.getloadavg()}


# --- measuring ---------------------------------------------------------------------

def _quiet_progress(line: str) -> None:
    if "FAILED" in line or line.startswith(("warning", "cleanup")):
        print(f"  {line}", file=sys.stderr)


class Poller:
    """ICMP echoes from many pods in one thread (threads per pod would compete with the
    agents for the 2 cores): one raw socket per pod, made inside its namespace; every
    ``interval`` seconds an echo to every target that pod has not reached yet. A
    pair's time is its first echo reply."""

    def __init__(self, pairs: dict[str, list[str]], paths: dict[str, str],
                 interval: float) -> None:
        self.interval = interval
        self.pending = {pod: set(targets) for pod, targets in pairs.items()}
        self.reached: dict[tuple[str, str], float] = {}
        self.sent = 0
        self.echo_id = secrets.randbits(16)
        self.socks: dict[socket.socket, str] = {}
        for pod in pairs:
            with plumbing.inside(paths[pod]):
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            sock.setblocking(False)
            self.socks[sock] = pod
        payload = b"xvmconv!"
        header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, self.echo_id, 0)
        self.packet = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum(header + payload),
                                  self.echo_id, 0) + payload
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="poller", daemon=True)

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        for sock in self.socks:
            sock.close()

    @property
    def unreached(self) -> list[str]:
        return [f"{pod}->{t}" for pod, targets in self.pending.items() for t in sorted(targets)]

    def _loop(self) -> None:
        socks = list(self.socks)
        while not self.stop.is_set() and any(self.pending.values()):
            for sock, pod in self.socks.items():
                for target in self.pending[pod]:
                    with contextlib.suppress(OSError):  # no route yet: what we wait for
                        sock.sendto(self.packet, (target, 0))
                        self.sent += 1
            until = time.monotonic() + self.interval
            while (left := until - time.monotonic()) > 0:
                ready, _, _ = select.select(socks, [], [], left)
                now = time.monotonic()
                for sock in ready:
                    self._read(sock, now)

    def _read(self, sock: socket.socket, now: float) -> None:
        pod = self.socks[sock]
        while True:
            try:
                packet, (src, _) = sock.recvfrom(2048)
            except BlockingIOError:
                return
            icmp = packet[(packet[0] & 0x0F) * 4:]
            if len(icmp) >= 8 and icmp[0] == ICMP_ECHO_REPLY \
                    and struct.unpack("!H", icmp[4:6])[0] == self.echo_id \
                    and src in self.pending[pod]:
                self.pending[pod].discard(src)
                self.reached[(pod, src)] = now


def _log_time(entry: dict[str, Any]) -> float:
    stamp = str(entry["ts"]).rstrip("Z")
    whole, _, frac = stamp.partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def agent_log_time(lab: labapi.Lab, host: labapi.Host, text: str, after: float) -> float | None:
    """Wall-clock time of the host's agent's first log line holding ``text`` logged
    after ``after`` (the log's times have millisecond resolution)."""
    try:
        lines = (lab.state_dir / host.name / AGENT_LOG).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if text in str(entry.get("msg", "")):
            at = _log_time(entry)
            if at >= after - 0.001:
                return at
    return None


# What an agent logs when it has programmed a changed peer set, per model.
PROGRAMMED = {"routed": "peer routes now", "l2": "flood list: added"}


@dataclass
class Join:
    host: str
    seconds: float = float("nan")          # last pair, from the agent's spawn
    inbound: float = float("nan")          # last existing pod -> new pod
    outbound: float = float("nan")         # last new pod -> existing pod
    agent_ready: float = float("nan")      # the agent answered ping on its socket
    published: float = float("nan")        # the agent logged "publishing"
    # When each existing host's agent logged that it programmed the new peer: the
    # watch's fan-out (p50 and last over the hosts).
    programmed_p50: float = float("nan")
    programmed_last: float = float("nan")
    pairs: int = 0
    unreached: list[str] = field(default_factory=list)
    echoes_sent: int = 0


def measure_join(plane: ControlPlane, lab: labapi.Lab, index: int, pods: int,
                 interval: float, timeout: float) -> tuple[labapi.Lab, Join]:
    lab, host = grow.add_host(lab.name, pods, agent=False, index=index,
                              progress=_quiet_progress)
    new = lab.pods_of(host.name)
    old = [p for p in lab.pods if p.host != host.name]
    pairs = {p.name: [n.ip for n in new] for p in old} | {n.name: [p.ip for p in old]
                                                           for n in new}
    poller = Poller(pairs, {p.name: p.netns_path for p in old + new}, interval)
    join = Join(host.name, pairs=sum(len(t) for t in pairs.values()))
    try:
        poller.thread.start()
        wall0 = time.time()
        t0 = time.monotonic()
        plane.join(lab, host)
        agents.wait_agent_ready(lab, host, host.agent_pid)
        join.agent_ready = time.monotonic() - t0
        poller.thread.join(timeout=timeout)
    finally:
        poller.close()
    # A reply before the agent started would mean a stale record made the host known:
    # not a join. Never seen; checked so that it cannot pass unnoticed.
    early = [f"{a}->{b}" for (a, b), at in poller.reached.items() if at < t0]
    if early:
        raise RuntimeError(f"reached before the agent started: {' '.join(early[:5])}")
    new_names = {n.name for n in new}
    inbound = [at - t0 for (a, _), at in poller.reached.items() if a not in new_names]
    outbound = [at - t0 for (a, _), at in poller.reached.items() if a in new_names]
    join.unreached = poller.unreached
    join.echoes_sent = poller.sent
    if not join.unreached:
        join.inbound, join.outbound = max(inbound), max(outbound)
        join.seconds = max(join.inbound, join.outbound)
    published = agent_log_time(lab, host, "publishing ", wall0)
    if published is not None:
        join.published = published - wall0
    seen = [agent_log_time(lab, h, PROGRAMMED[lab.model], wall0)
            for h in lab.hosts if h.name != host.name]
    if seen and None not in seen:
        times = sorted(t - wall0 for t in seen if t is not None)
        join.programmed_p50, join.programmed_last = bl.percentile(times, 50), times[-1]
    grow.remove_host(lab, host.name, progress=_quiet_progress)
    return lab, join


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [int(v) for v in first.split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def settle(minimum: float, limit: float = 20.0, busy: float = 0.5) -> float:
    """Wait ``minimum`` seconds, then until the CPUs are less than ``busy`` busy (a lab
    of 50 agents takes a while to quiet down after its build), at most ``limit`` more
    (other engineers' test runs share the machine: it may never get quiet); the busy
    share last seen, recorded with the join."""
    time.sleep(minimum)
    deadline = time.monotonic() + limit
    share = cpu_busy()
    while share >= busy and time.monotonic() < deadline:
        share = cpu_busy()
    return share


def run_size(args: argparse.Namespace, plane: ControlPlane, hosts: int) -> dict[str, Any]:
    name = f"xc{os.getpid():x}{secrets.token_hex(2)}{hosts}"
    result: dict[str, Any] = {"hosts": hosts, "pods_per_host": args.pods, "lab": name}
    try:
        began = time.monotonic()
        load = os.getloadavg()
        lab = plane.up(args, name, hosts)
        result["build_seconds"] = time.monotonic() - began
        result["load_before_build"] = load
        print(f"N={hosts}: lab {name} up in {result['build_seconds']:.1f} s "
              f"({len(lab.pods)} pods)", file=sys.stderr)
        result["cpu_busy_after_settle"] = settle(args.settle)
        result["idle_cpu_busy"] = cpu_busy(5.0)  # the idle lab: N agents and etcd
        joins = []
        for i in range(args.joins):
            busy = settle(args.gap)
            load = os.getloadavg()
            # A fresh host each time (h<N+1>, h<N+2>, ...): nothing of an earlier join
            # (its record, its claim) can make this one look converged early.
            lab, join = measure_join(plane, lab, hosts + 1 + i, args.pods, args.interval,
                                     args.timeout)
            record = vars(join) | {"loadavg": load, "cpu_busy_before": busy}
            joins.append(record)
            shown = f"{join.seconds:.3f} s" if not join.unreached else \
                f"NOT CONVERGED ({len(join.unreached)} pairs)"
            print(f"N={hosts} join {i + 1}/{args.joins} {join.host}: {shown}  (agent ready "
                  f"{join.agent_ready:.3f} s, published {join.published:.3f} s, peers "
                  f"programmed {join.programmed_p50:.3f}/{join.programmed_last:.3f} s, in "
                  f"{join.inbound:.3f} s, out {join.outbound:.3f} s; CPUs {busy:.0%} busy before)",
                  file=sys.stderr)
        result["joins"] = joins
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            began = time.monotonic()
            try:
                report = labapi.lab_down(name)
                result["down"] = {"clean": report.clean, "leftovers": report.leftovers,
                                  "seconds": time.monotonic() - began}
            except labapi.LabError as exc:
                print(f"lab {name}: {exc}", file=sys.stderr)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--hosts", type=int, nargs="+", default=[10, 50],
                   help="lab sizes N (default 10 50)")
    p.add_argument("--pods", type=int, default=1, help="pods per host (default 1)")
    p.add_argument("--joins", type=int, default=10, help="joins measured per N (default 10)")
    p.add_argument("--control", choices=sorted([*CONTROL_PLANES, KUBERNETES]), nargs="+",
                   default=["etcd"], help="control planes measured in this run, side by "
                   "side (default etcd)")
    p.add_argument("--model", choices=["routed", "l2"], default="routed")
    p.add_argument("--encap", choices=["vxlan", "none", "auto"], default="vxlan")
    p.add_argument("--underlay", choices=["flat", "routed"], default="flat")
    p.add_argument("--interval", type=float, default=0.02,
                   help="seconds between echoes to a target not yet reached (default 0.02)")
    p.add_argument("--timeout", type=float, default=30.0, help="per join (default 30)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds between lab up and the first join, at least; then until "
                        "the CPUs are less than half busy (default 5)")
    p.add_argument("--gap", type=float, default=1.0,
                   help="seconds between one join's cleanup and the next, at least; then "
                        "until the CPUs are less than half busy (default 1)")
    p.add_argument("--out", help="JSON output (default bench/results/convergence.json)")
    return p.parse_args(argv)


def summarize(sizes: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for size in sizes:
        joins = size.get("joins", [])
        done = [j["seconds"] for j in joins if not j["unreached"]]

        def stat(key: str, pct: float, joins: list[dict[str, Any]] = joins) -> str:
            values = [j[key] for j in joins if j[key] == j[key]]  # drop NaN
            return bl.fmt(bl.percentile(values, pct), 3)

        size["p50"], size["p99"] = bl.percentile(done, 50), bl.percentile(done, 99)
        rows.append([str(size["hosts"]), str(len(joins)), str(len(joins) - len(done)),
                     bl.fmt(bl.percentile(done, 50), 3), bl.fmt(bl.percentile(done, 90), 3),
                     bl.fmt(bl.percentile(done, 99), 3), bl.fmt(max(done, default=0.0), 3),
                     stat("agent_ready", 50), stat("published", 50),
                     stat("programmed_p50", 50), stat("programmed_last", 50),
                     stat("inbound", 50), stat("outbound", 50),
                     bl.fmt(size.get("build_seconds", float("nan"))),
                     f"{size.get('idle_cpu_busy', float('nan')):.0%}"])
    return rows


def side_by_side(etcd: list[dict[str, Any]], k8s: list[dict[str, Any]]) -> list[list[str]]:
    """Per N: each control plane's joins, p50 / p99 / max of the convergence time and
    the 1-minute load average before its run."""
    rows = []
    for size in etcd:
        done = [j["seconds"] for j in size.get("joins", []) if not j["unreached"]]
        load = size.get("load_before_build", (float("nan"),))[0]
        rows.append([str(size["hosts"]), "etcd", str(len(done)),
                     *(bl.fmt(bl.percentile(done, q), 3) for q in (50, 99)),
                     bl.fmt(max(done, default=float("nan")), 3), f"{load:.1f}"])
    for size in k8s:
        done = size["samples"]["converged"]
        rows.append([str(size["hosts"]), KUBERNETES, str(len(done)),
                     *(bl.fmt(bl.percentile(done, q), 3) for q in (50, 99)),
                     bl.fmt(max(done, default=float("nan")), 3),
                     f"{size['loadavg_before'][0]:.1f}"])
    return sorted(rows, key=lambda r: (int(r[0]), r[1]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bl.require_root()
    controls = list(dict.fromkeys(args.control))
    if KUBERNETES in controls:
        if args.model != "routed" or args.encap == "auto":
            sys.exit("--control kubernetes: routed model, --encap vxlan or none")
        import convergence_k8s  # a sibling script (bench/ is on the path)
        reason = convergence_k8s.skip_reason()
        if reason:
            sys.exit(f"--control kubernetes: {reason}")
    bl.install_signal_handlers()
    load_before = os.getloadavg()
    sizes: list[dict[str, Any]] = []
    k8s_sizes: list[dict[str, Any]] = []
    for n in args.hosts:
        if "etcd" in controls:
            sizes.append(run_size(args, CONTROL_PLANES["etcd"], n))
        if KUBERNETES in controls:
            k8s_sizes.append(run_k8s_size(args, n))
    if k8s_sizes:
        print(f"convergence at N existing hosts, side by side (same run); etcd: from the "
              f"new host's agent spawn, kubernetes: from the new Node's POST; model "
              f"{args.model} (encap {args.encap}); load = 1-minute load average before")
        print(bl.table(["N hosts", "control plane", "joins converged", "p50", "p99", "max",
                        "load"], side_by_side(sizes, k8s_sizes)))
        print()
    data = {"params": vars(args), "load_before": load_before, "sizes": sizes,
            "kubernetes": k8s_sizes, "target_p99_seconds": TARGET_P99}
    if not sizes:
        print(f"\nload average (1 min) before {load_before[0]:.1f}, after "
              f"{os.getloadavg()[0]:.1f}")
        print(f"wrote {bl.write_json('convergence', args.out, data)}")
        return
    rows = summarize(sizes)
    print(f"convergence, control plane etcd, model {args.model} "
          f"(encap {args.encap}), underlay {args.underlay}, {args.pods} pod(s) per host; "
          "seconds from the new host's agent spawn; idle lab CPU: share of all CPUs busy "
          "with the lab idle (the whole machine)")
    print(bl.table(["N hosts", "joins", "failed", "p50", "p90", "p99", "max",
                    "agent ready p50", "published p50", "peers programmed p50",
                    "last peer programmed p50", "in p50", "out p50",
                    "lab build s", "idle lab CPU"], rows))
    for size in sizes:
        verdict = "meets" if size["p99"] <= TARGET_P99 else "MISSES"
        print(f"N={size['hosts']}: p99 {size['p99']:.3f} s, target {TARGET_P99:g} s: {verdict}")
    print(f"\nload average (1 min) before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"wrote {bl.write_json('convergence', args.out, data)}")


if __name__ == "__main__":
    main()
