"""Convergence: from a new host's agent start until every existing pod reaches the new
host's pods and they reach every existing pod.

    sudo .venv/bin/python bench/convergence.py [--hosts 10 50] [--pods 1] [--joins 10]
        [--model routed|l2] [--encap vxlan] [--underlay flat|routed]
        [--control etcd] [--out FILE]

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
to it). Kubernetes slots in there as a second entry.
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
from typing import Any

import benchlib as bl

from xvmcni import lab as labapi
from xvmcni.lab import agents, grow, plumbing
from xvmcni.lab.icmp import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, checksum
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


# --- measuring ---------------------------------------------------------------------

def _quiet_progress(line: str) -> None:
    if "FAILED" in line or line.startswith(("warning", "cleanup")):
        print(f"  {line}", file=sys.stderr)


class Poller(threading.Thread):
    """From one pod: an ICMP echo to every target not yet reached, every ``interval``
    seconds, on one raw socket; the first reply from a target is its time."""

    def __init__(self, pod: labapi.Pod, targets: list[str], interval: float,
                 deadline: float) -> None:
        super().__init__(name=f"poll-{pod.name}", daemon=True)
        self.pod = pod
        self.pending = set(targets)
        self.reached: dict[str, float] = {}
        self.interval = interval
        self.deadline = deadline
        self.sent = 0
        self.error = ""
        self.echo_id = secrets.randbits(16)
        self.started = threading.Event()

    def run(self) -> None:
        try:
            with plumbing.inside(self.pod.netns_path):
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            try:
                self.started.set()
                self._loop(sock)
            finally:
                sock.close()
        except (OSError, plumbing.NetnsError) as exc:
            self.error = str(exc)
            self.started.set()

    def _loop(self, sock: socket.socket) -> None:
        seq = 0
        while self.pending and time.monotonic() < self.deadline:
            for target in sorted(self.pending):
                seq = (seq + 1) & 0xFFFF
                header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, self.echo_id, seq)
                payload = b"xvmconv!"
                packet = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0,
                                     checksum(header + payload), self.echo_id, seq) + payload
                with contextlib.suppress(OSError):  # no route yet: that is what we wait for
                    sock.sendto(packet, (target, 0))
                    self.sent += 1
            until = time.monotonic() + self.interval
            while self.pending and (left := until - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                packet, (src, _) = sock.recvfrom(2048)
                now = time.monotonic()
                icmp = packet[(packet[0] & 0x0F) * 4:]
                if len(icmp) >= 8 and icmp[0] == ICMP_ECHO_REPLY \
                        and struct.unpack("!H", icmp[4:6])[0] == self.echo_id \
                        and src in self.pending:
                    self.pending.discard(src)
                    self.reached[src] = now


def agent_log_times(lab: labapi.Lab, host: labapi.Host) -> dict[str, float]:
    """Wall-clock times of the agent's first "ready" and "publishing" log lines."""
    wanted = {"ready": "xvm-cnid ready", "publishing": "publishing ",
              "peers": "following peers"}
    found: dict[str, float] = {}
    try:
        lines = (lab.state_dir / host.name / AGENT_LOG).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        msg = str(entry.get("msg", ""))
        for key, text in wanted.items():
            if key not in found and text in msg:
                stamp = str(entry["ts"]).rstrip("Z")
                whole, _, frac = stamp.partition(".")
                found[key] = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) \
                    + float(f"0.{frac or 0}")
    return found


@dataclass
class Join:
    host: str
    seconds: float = float("nan")          # last pair, from the agent's spawn
    inbound: float = float("nan")          # last existing pod -> new pod
    outbound: float = float("nan")         # last new pod -> existing pod
    agent_ready: float = float("nan")      # the agent answered ping on its socket
    published: float = float("nan")        # the agent logged "publishing"
    pairs: int = 0
    unreached: list[str] = field(default_factory=list)
    echoes_sent: int = 0


def measure_join(plane: ControlPlane, lab: labapi.Lab, index: int, pods: int,
                 interval: float, timeout: float) -> tuple[labapi.Lab, Join]:
    lab, host = grow.add_host(lab.name, pods, agent=False, index=index,
                              progress=_quiet_progress)
    new = lab.pods_of(host.name)
    old = [p for p in lab.pods if p.host != host.name]
    deadline = time.monotonic() + timeout
    pollers = [Poller(p, [n.ip for n in new], interval, deadline) for p in old]
    pollers += [Poller(n, [p.ip for p in old], interval, deadline) for n in new]
    for poller in pollers:
        poller.start()
    for poller in pollers:
        poller.started.wait()
    join = Join(host.name, pairs=sum(len(p.pending) for p in pollers))
    wall0 = time.time()
    t0 = time.monotonic()
    plane.join(lab, host)
    agents.wait_agent_ready(lab, host, host.agent_pid)
    join.agent_ready = time.monotonic() - t0
    for poller in pollers:
        poller.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
    errors = [f"{p.pod.name}: {p.error}" for p in pollers if p.error]
    if errors:
        raise RuntimeError("poller failed: " + "; ".join(errors))
    # A reply before the agent started would mean a stale record made the host known:
    # not a join. Never seen; checked so that it cannot pass unnoticed.
    early = [f"{p.pod.name}->{t}" for p in pollers for t, at in p.reached.items() if at < t0]
    if early:
        raise RuntimeError(f"reached before the agent started: {' '.join(early[:5])}")
    inbound = [t - t0 for p in pollers[:len(old)] for t in p.reached.values()]
    outbound = [t - t0 for p in pollers[len(old):] for t in p.reached.values()]
    join.unreached = [f"{p.pod.name}->{t}" for p in pollers for t in sorted(p.pending)]
    join.echoes_sent = sum(p.sent for p in pollers)
    if not join.unreached:
        join.inbound, join.outbound = max(inbound), max(outbound)
        join.seconds = max(join.inbound, join.outbound)
    logged = agent_log_times(lab, host)
    if "publishing" in logged:
        join.published = logged["publishing"] - wall0
    grow.remove_host(lab, host.name, progress=_quiet_progress)
    return lab, join


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
        time.sleep(args.settle)  # the agents' first passes, the build's load, settle
        joins = []
        for i in range(args.joins):
            load = os.getloadavg()
            # A fresh host each time (h<N+1>, h<N+2>, ...): nothing of an earlier join
            # (its record, its claim) can make this one look converged early.
            lab, join = measure_join(plane, lab, hosts + 1 + i, args.pods, args.interval,
                                     args.timeout)
            record = vars(join) | {"loadavg": load}
            joins.append(record)
            shown = f"{join.seconds:.3f} s" if not join.unreached else \
                f"NOT CONVERGED ({len(join.unreached)} pairs)"
            print(f"N={hosts} join {i + 1}/{args.joins} {join.host}: {shown}  (agent ready "
                  f"{join.agent_ready:.3f} s, published {join.published:.3f} s, in "
                  f"{join.inbound:.3f} s, out {join.outbound:.3f} s; load {load[0]:.1f})",
                  file=sys.stderr)
            time.sleep(args.gap)
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
    p.add_argument("--control", choices=sorted(CONTROL_PLANES), default="etcd")
    p.add_argument("--model", choices=["routed", "l2"], default="routed")
    p.add_argument("--encap", choices=["vxlan", "none", "auto"], default="vxlan")
    p.add_argument("--underlay", choices=["flat", "routed"], default="flat")
    p.add_argument("--interval", type=float, default=0.01,
                   help="seconds between echoes to a target not yet reached (default 0.01)")
    p.add_argument("--timeout", type=float, default=30.0, help="per join (default 30)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds between lab up and the first join (default 5)")
    p.add_argument("--gap", type=float, default=1.0,
                   help="seconds between one join's cleanup and the next (default 1)")
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
                     stat("agent_ready", 50), stat("published", 50), stat("inbound", 50),
                     stat("outbound", 50), bl.fmt(size.get("build_seconds", float("nan")))])
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bl.require_root()
    bl.install_signal_handlers()
    plane = CONTROL_PLANES[args.control]
    load_before = os.getloadavg()
    sizes = [run_size(args, plane, n) for n in args.hosts]
    rows = summarize(sizes)
    print(f"convergence, control plane {args.control}, model {args.model} "
          f"(encap {args.encap}), underlay {args.underlay}, {args.pods} pod(s) per host; "
          "seconds from the new host's agent spawn")
    print(bl.table(["N hosts", "joins", "failed", "p50", "p90", "p99", "max",
                    "agent ready p50", "published p50", "in p50", "out p50",
                    "lab build s"], rows))
    for size in sizes:
        verdict = "meets" if size["p99"] <= TARGET_P99 else "MISSES"
        print(f"N={size['hosts']}: p99 {size['p99']:.3f} s, target {TARGET_P99:g} s: {verdict}")
    print(f"\nload average (1 min) before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    data = {"params": vars(args), "load_before": load_before, "sizes": sizes,
            "target_p99_seconds": TARGET_P99}
    print(f"wrote {bl.write_json('convergence', args.out, data)}")


if __name__ == "__main__":
    main()
