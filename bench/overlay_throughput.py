"""Overlay throughput against its ceiling: pod->pod across hosts for l2, routed vxlan,
routed none and macvlan, vs host->host and vs a hand-built kernel VXLAN between the same
two hosts.

    sudo .venv/bin/python bench/overlay_throughput.py [--seconds 5] [--rounds 3]
        [--streams 1 4] [--out FILE]

Three 2-host labs, one pod per host, built with the project's lab API (agents on,
flat underlay, MTU 1500): ``l2`` (seed-000 bridge + VXLAN), ``routed`` with
``encap: vxlan`` (bridge per host, L3 VXLAN, programmed peers) and ``routed`` with
``encap: none`` (plain routes between hosts), and ``macvlan`` (seed 004: pods are
macvlan children of a VXLAN device, same network, no bridge, no veth). On the two
hosts of the routed-vxlan lab the benchmark itself adds a hand-built VXLAN device
(``ip link add NAME type vxlan id 4242 local A remote B dstport 4789 dev eth0``, MTU
1450, 192.168.250.{1,2}/24, no bridge, no veth, no CNI): the ceiling an overlay can
reach on these hosts.

Cases, each h1 -> h2 with iperf3 (server and client in their namespaces via
``nsenter --net``), ``--seconds`` per run, for every ``--streams`` count:

    host->host          eth0 to eth0, the underlay alone
    hand-built vxlan    the hand-built device, host to host
    l2 pod->pod         h1-p1 -> h2-p1 in the l2 lab
    routed-vxlan pod->pod
    routed-none pod->pod
    macvlan pod->pod    h1-p1 -> h2-p1, both on network blue

All cases run once per round, ``--rounds`` rounds, the order rotated each round so
no case always follows the same neighbour. Reported: the median of the receiver's
rate over the rounds, min-max, each round's figure, and two ratios: the ratio of
the medians, and the median of the per-round ratios (a case against its baseline
in the same round: load drift between rounds cancels). VXLAN cases are compared
with the hand-built tunnel, every case with host->host. The load average is
sampled before every run. Everything (hand-built devices, labs) is removed at the
end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from dataclasses import dataclass
from typing import Any

import benchlib as bl
from benchlib import Endpoint, iperf3

from xvmcni import lab as labapi

HOST_TO_HOST = "host->host"
HAND_BUILT = "hand-built vxlan"
L2 = "l2 pod->pod"
ROUTED_VXLAN = "routed-vxlan pod->pod"
ROUTED_NONE = "routed-none pod->pod"
MACVLAN = "macvlan pod->pod"
CASES = (HOST_TO_HOST, HAND_BUILT, L2, ROUTED_VXLAN, ROUTED_NONE, MACVLAN)
# Which baseline each case is held against (besides host->host for all).
CEILING = {L2: HAND_BUILT, ROUTED_VXLAN: HAND_BUILT, MACVLAN: HAND_BUILT}
GOAL = {ROUTED_VXLAN: (HAND_BUILT, 0.95), ROUTED_NONE: (HOST_TO_HOST, 0.95)}

# The hand-built tunnel: inside the lab's own host namespaces only.
HAND_DEVICE = "xbvxhand"
HAND_VNI = 4242
HAND_PORT = 4789   # the lab's routed VXLAN uses 8472: no clash on the same host
HAND_MTU = 1450    # what our devices get on a 1500 underlay (50 bytes of VXLAN/IPv4)
HAND_NET = "192.168.250"


@dataclass(frozen=True)
class LabSpec:
    key: str
    model: str
    encap: str


LABS = (LabSpec("l", "l2", "vxlan"), LabSpec("v", "routed", "vxlan"),
        LabSpec("n", "routed", "none"), LabSpec("m", "macvlan", "vxlan"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5, help="per iperf3 run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all cases (default 3)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4],
                   help="iperf3 -P values (default 1 4)")
    p.add_argument("--out", help="JSON output (default bench/results/overlay_throughput.json)")
    return p.parse_args(argv)


def lab_names() -> dict[str, str]:
    """Unique per run: 'xo' + pid + random + the lab's key (1-24 lower-case letters and
    digits, as the lab API wants)."""
    stem = f"xo{os.getpid():x}{secrets.token_hex(3)}"
    return {spec.key: stem + spec.key for spec in LABS}


def ip_netns(netns: str, *args: str) -> str:
    return bl.ip("-n", netns, *args)


def add_hand_built(hosts: list[labapi.Host]) -> list[Endpoint]:
    """The hand-built VXLAN on both hosts; its endpoints (h1, h2)."""
    ends = []
    for i, (host, peer) in enumerate(((hosts[0], hosts[1]), (hosts[1], hosts[0])), start=1):
        local, remote = host.underlay.split("/")[0], peer.underlay.split("/")[0]
        ip_netns(host.netns, "link", "add", HAND_DEVICE, "type", "vxlan", "id", str(HAND_VNI),
                 "local", local, "remote", remote, "dstport", str(HAND_PORT), "dev", "eth0")
        ip_netns(host.netns, "link", "set", HAND_DEVICE, "mtu", str(HAND_MTU), "up")
        ip_netns(host.netns, "addr", "add", f"{HAND_NET}.{i}/24", "dev", HAND_DEVICE)
        ends.append(Endpoint(f"{host.netns}/{HAND_DEVICE}", host.netns_path, f"{HAND_NET}.{i}"))
    return ends


def remove_hand_built(hosts: list[labapi.Host]) -> None:
    for host in hosts:
        with contextlib.suppress(RuntimeError):  # never made, or the lab already went
            ip_netns(host.netns, "link", "del", HAND_DEVICE)


def host_end(host: labapi.Host) -> Endpoint:
    return Endpoint(host.netns, host.netns_path, host.underlay.split("/")[0])


def pod_end(lab: labapi.Lab, name: str) -> Endpoint:
    pod = next(p for p in lab.pods if p.name == name)
    return Endpoint(pod.netns, pod.netns_path, pod.ip)


def describe_links(lab: labapi.Lab) -> dict[str, Any]:
    """``ip -d link`` of h1 (devices and their attributes) for the JSON record."""
    return {"h1": ip_netns(lab.hosts[0].netns, "-d", "link", "show").splitlines()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    load_before = os.getloadavg()
    names = lab_names()
    labs: dict[str, labapi.Lab] = {}
    hand_hosts: list[labapi.Host] = []
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    devices: dict[str, Any] = {}
    try:
        for spec in LABS:
            print(f"lab {names[spec.key]}: up ({spec.model}, encap {spec.encap}, 2 hosts x 1 "
                  "pod, agents)", file=sys.stderr)
            labs[spec.key] = labapi.lab_up(names[spec.key], hosts=2, pods=1, agent=True,
                                           model=spec.model, encap=spec.encap)
        base = labs["v"]
        hand_hosts = base.hosts[:2]
        hand = add_hand_built(hand_hosts)
        tests = {
            HOST_TO_HOST: (host_end(base.hosts[0]), host_end(base.hosts[1])),
            HAND_BUILT: (hand[0], hand[1]),
            L2: (pod_end(labs["l"], "h1-p1"), pod_end(labs["l"], "h2-p1")),
            ROUTED_VXLAN: (pod_end(base, "h1-p1"), pod_end(base, "h2-p1")),
            ROUTED_NONE: (pod_end(labs["n"], "h1-p1"), pod_end(labs["n"], "h2-p1")),
            MACVLAN: (pod_end(labs["m"], "h1-p1"), pod_end(labs["m"], "h2-p1")),
        }
        devices = {key: describe_links(lab) for key, lab in labs.items()}
        order = list(CASES)
        for rnd in range(args.rounds):
            rotated = order[rnd % len(order):] + order[:rnd % len(order)]
            for case in rotated:
                src, dst = tests[case]
                for streams in args.streams:
                    load = os.getloadavg()
                    res = iperf3(src, dst, args.seconds, streams)
                    res.update(round=rnd, loadavg=load)
                    samples.setdefault(case, {}).setdefault(str(streams), []).append(res)
                    print(f"round {rnd + 1}/{args.rounds}  {case:22} -P {streams}  "
                          f"{res['gbps']:6.2f} Gbit/s  retransmits {res['retransmits']}  "
                          f"load {load[0]:.1f}", file=sys.stderr)
    finally:
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: still tear down
            remove_hand_built(hand_hosts)
            for name in names.values():
                try:
                    report = labapi.lab_down(name)
                except labapi.LabError as exc:  # never built (an earlier lab_up failed)
                    print(f"lab {name}: {exc}", file=sys.stderr)
                    continue
                print(f"lab {name}: down ({'clean' if report.clean else report.leftovers})",
                      file=sys.stderr)
    return {"params": vars(args), "load_before": load_before, "labs": names,
            "hand_built": {"device": HAND_DEVICE, "vni": HAND_VNI, "dstport": HAND_PORT,
                           "mtu": HAND_MTU, "on": "routed-vxlan lab's h1 and h2"},
            "pod_mtu": {k: lab.pods[0].mtu for k, lab in labs.items()},
            "devices": devices, "iperf3": samples}


def by_round(runs: list[dict[str, Any]]) -> dict[int, float]:
    return {int(r["round"]): float(r["gbps"]) for r in runs}


def ratios(data: dict[str, Any], case: str, base: str, streams: str) -> tuple[float, float]:
    """(ratio of the medians, median of the per-round ratios)."""
    runs, base_runs = data["iperf3"][case][streams], data["iperf3"][base][streams]
    mine, theirs = by_round(runs), by_round(base_runs)
    paired = [mine[r] / theirs[r] for r in mine if r in theirs and theirs[r] > 0]
    med = bl.median([r["gbps"] for r in runs]) / bl.median([r["gbps"] for r in base_runs])
    return med, bl.median(paired)


def pct(pair: tuple[float, float]) -> str:
    return f"{pair[0] * 100:.0f} % ({pair[1] * 100:.0f} %)"


def summarize(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    medians: dict[str, dict[str, float]] = {}
    for case in CASES:
        for streams, runs in data["iperf3"].get(case, {}).items():
            rates = [r["gbps"] for r in runs]
            medians.setdefault(case, {})[streams] = bl.median(rates)
            ceiling = CEILING.get(case)
            rows.append([
                case, streams, bl.fmt(bl.median(rates), 2),
                f"{min(rates):.2f}-{max(rates):.2f}",
                " / ".join(f"{r:.2f}" for r in rates),
                pct(ratios(data, case, ceiling, streams)) if ceiling else "",
                pct(ratios(data, case, HOST_TO_HOST, streams)) if case != HOST_TO_HOST else "",
                "/".join(str(r["retransmits"]) for r in runs),
            ])
    data["gbps_median"] = medians
    return rows


def verdicts(data: dict[str, Any]) -> list[str]:
    lines = []
    for case, (base, goal) in GOAL.items():
        for streams in data["iperf3"].get(case, {}):
            med, paired = ratios(data, case, base, streams)
            ok = "meets" if min(med, paired) >= goal else "MISSES"
            lines.append(f"{case} -P {streams}: {med * 100:.0f} % of {base} (paired "
                         f"{paired * 100:.0f} %), goal {goal * 100:.0f} %: {ok}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    rows = summarize(data)
    print(bl.table(["case", "-P", "Gbit/s (median)", "min-max", "each round",
                    "vs hand-built (paired)", "vs host->host (paired)", "retransmits"], rows))
    print()
    for line in verdicts(data):
        print(line)
    loads = [r["loadavg"][0] for c in data["iperf3"].values() for s in c.values() for r in s]
    print(f"\nload average (1 min) before the run {data['load_before'][0]:.1f}, during runs "
          f"{min(loads):.1f}-{max(loads):.1f}, after {os.getloadavg()[0]:.1f}; pod MTU "
          f"{data['pod_mtu']}, hand-built MTU {HAND_MTU}, underlay MTU {labapi.UNDERLAY_MTU}")
    print(f"wrote {bl.write_json('overlay_throughput', args.out, data)}")


if __name__ == "__main__":
    main()
