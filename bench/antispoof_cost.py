"""Throughput cost of the anti-spoofing table (dataplane/antispoof): with vs without.

    sudo .venv/bin/python bench/antispoof_cost.py [--seconds 5] [--rounds 3]
        [--dummies 100] [--topologies bridge,vxlan] [--tests tcp,udp64] [--out FILE]

Two topologies, built by hand with ``ip`` (no plugin involved, so only the filter
differs between the two modes):

- ``bridge``: one host namespace, a bridge with the anycast gateway, two pods on it
  (veth -> bridge -> veth).
- ``vxlan``: two host namespaces joined by a veth "underlay", each with a bridge and a
  unicast VXLAN port; one pod per host (veth -> bridge -> VXLAN -> underlay -> VXLAN
  -> bridge -> veth); the table is installed on both hosts.

"with": ``antispoof.table_batch`` + both real pods admitted + ``--dummies`` made-up
members per host, so the set lookups are not on near-empty sets. "without": the
table deleted. Tests (``--tests``): ``tcp``, one iperf3 TCP stream (the receiver's
Gbit/s; with GSO the bridge sees ~64 KB super-frames, so the filter runs rarely),
and ``udp64``, one UDP stream of 64-byte datagrams as fast as the sender goes
(datagrams received per second: one filter pass per frame, the worst case).
Each round runs, per topology and test, a with/without pair back to back, the
order alternating between rounds; the figure is the median of the paired ratios
(drift in the machine's load cancels within a pair), beside the medians and the
spread of the no-table runs. Everything is removed at the end, also on errors
and Ctrl-C.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import benchlib as bl

from xvmcni.dataplane import antispoof, names, nft
from xvmcni.dataplane.netns import entered, open_netns

PORT = 5201
VNI = 4243
BRIDGE = f"xvmbr{VNI}"
VXLAN = f"xvmvx{VNI}"
GATEWAY = "10.98.0.1"
GATEWAY_MAC = names.gateway_mac(VNI)
TABLE = "xvm_antispoof_bench"
ISOLATION = "isolation_bench"  # its table: nft.table_name() -> xvm_isolation_bench


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5, help="per iperf3 run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--dummies", type=int, default=100,
                   help="made-up members per host in 'with' mode (default 100)")
    p.add_argument("--topologies", default="bridge,vxlan", help="comma list (bridge,vxlan)")
    p.add_argument("--tests", default="tcp,udp64,cpu", help="comma list (tcp,udp64,cpu)")
    p.add_argument("--frames", type=int, default=300_000,
                   help="frames per 'cpu' sample (default 300000)")
    p.add_argument("--out", help="JSON output (default bench/results/antispoof_cost.json)")
    return p.parse_args(argv)


@dataclass
class Pod:
    netns: str
    port: str
    mac: str
    address: str


@dataclass
class Topology:
    name: str
    hosts: list[str]  # host namespaces that carry the table
    pods: dict[str, list[Pod]]  # host -> its pods
    client: Pod
    server: Pod


def _host(ws: bl.Workspace, mtu: int) -> str:
    host = ws.add_netns("xbah")
    bl.ip("-n", host, "link", "add", BRIDGE, "address", GATEWAY_MAC, "mtu", str(mtu),
          "type", "bridge")
    bl.ip("-n", host, "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    bl.ip("-n", host, "link", "set", BRIDGE, "up")
    bl.ip("-n", host, "link", "set", "lo", "up")
    return host


def _fdb(host: str, mac: str, port: str) -> None:
    proc = subprocess.run(["bridge", "-n", host, "fdb", "replace", mac, "dev", port, "master",
                           "static"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bridge fdb replace {mac} dev {port}: {proc.stderr.strip()}")


def _pod(ws: bl.Workspace, host: str, index: int, mtu: int) -> Pod:
    netns = ws.add_netns("xbap")
    address = f"10.98.0.{index}"
    mac = "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)
    port = names.host_veth_name(netns, "eth0")
    bl.ip("-n", host, "link", "add", port, "mtu", str(mtu), "type", "veth", "peer", "name",
          "eth0", "netns", netns)
    bl.ip("-n", host, "link", "set", port, "master", BRIDGE, "up")
    bl.ip("-n", netns, "link", "set", "eth0", "address", mac, "mtu", str(mtu))
    bl.ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    for dev in ("eth0", "lo"):
        bl.ip("-n", netns, "link", "set", dev, "up")
    # Static FDB entry: unicast to this pod is never flooded, whatever ages out.
    _fdb(host, mac, port)
    return Pod(netns=netns, port=port, mac=mac, address=address)


def bridge_topology(ws: bl.Workspace) -> Topology:
    host = _host(ws, 1500)
    a, b = _pod(ws, host, 2, 1500), _pod(ws, host, 3, 1500)
    return Topology("bridge", [host], {host: [a, b]}, a, b)


def vxlan_topology(ws: bl.Workspace) -> Topology:
    mtu = 1450  # 1500 underlay minus VXLAN's 50 bytes
    h1, h2 = _host(ws, mtu), _host(ws, mtu)
    bl.ip("link", "add", "eth0", "netns", h1, "type", "veth", "peer", "name", "eth0",
          "netns", h2)
    for host, me, peer in ((h1, "172.31.0.1", "172.31.0.2"), (h2, "172.31.0.2", "172.31.0.1")):
        bl.ip("-n", host, "addr", "add", f"{me}/24", "dev", "eth0")
        bl.ip("-n", host, "link", "set", "eth0", "up")
        bl.ip("-n", host, "link", "add", VXLAN, "mtu", str(mtu), "type", "vxlan", "id",
              str(VNI), "local", me, "remote", peer, "dstport", "8472", "dev", "eth0")
        bl.ip("-n", host, "link", "set", VXLAN, "master", BRIDGE, "up")
    a, b = _pod(ws, h1, 12, mtu), _pod(ws, h2, 13, mtu)
    _fdb(h1, b.mac, VXLAN)
    _fdb(h2, a.mac, VXLAN)
    return Topology("vxlan", [h1, h2], {h1: [a], h2: [b]}, a, b)


def _dummy_members(count: int) -> list[dict[str, Any]]:
    batch: list[dict[str, Any]] = []
    for i in range(count):
        address = ipaddress.IPv4Address("10.97.0.0") + 2 + i
        mac = "0a:58:" + ":".join(f"{b:02x}" for b in address.packed)
        batch += antispoof.admit_batch(TABLE, f"xvm{i:012x}", mac, [address])
    return batch


def set_mode(topo: Topology, with_rules: bool, dummies: int) -> None:
    for host in topo.hosts:
        if with_rules:
            batch = antispoof.table_batch(TABLE, GATEWAY_MAC, [GATEWAY])
            for pod in topo.pods[host]:
                batch += antispoof.admit_batch(TABLE, pod.port, pod.mac, [pod.address])
            batch += _dummy_members(dummies)
        else:
            batch = antispoof.delete_table_batch(TABLE)
        # As in production, the network's gateway-isolation table (bridge family, hooks
        # at pre- and postrouting) is there in both modes: the figure is what the
        # anti-spoofing table adds, not the cost of enabling bridge netfilter at all.
        batch += nft.gateway_isolation_batch(ISOLATION, VXLAN, ipaddress.IPv4Address(GATEWAY),
                                             GATEWAY_MAC)
        fd = open_netns(f"/run/netns/{host}")
        try:
            with entered(fd):  # nft inherits this thread's netns
                nft.run_batch(batch)
        finally:
            os.close(fd)


def drops(topo: Topology) -> dict[str, int]:
    total: dict[str, int] = {}
    for host in topo.hosts:
        fd = open_netns(f"/run/netns/{host}")
        try:
            with entered(fd):
                found = antispoof.drop_counters(TABLE) or {}
        finally:
            os.close(fd)
        for name, (packets, _) in found.items():
            total[name] = total.get(name, 0) + packets
    return total


TESTS = {
    # name: (extra iperf3 client arguments, unit of the figure)
    "tcp": ([], "Gbit/s"),
    # 64-byte UDP payloads, as fast as the sender can: no GSO, one filter pass per
    # frame, the worst case for a per-frame cost.
    "udp64": (["-u", "-l", "64", "-b", "0"], "kpps"),
    # Not iperf3: system CPU ns per 64-byte frame sent from a raw socket (see
    # kernel_ns_per_frame): the filter's own cost, robust to a busy machine.
    "cpu": ([], "ns/frame"),
}


def _frame(src: Pod, dst: Pod) -> bytes:
    """64-byte UDP to an address the receiving pod does not hold: its kernel drops it
    at the IP layer (no reply), after the whole veth/bridge(/VXLAN) path."""
    payload = bytes(18)
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src.address).packed,
                         ipaddress.IPv4Address("10.98.0.250").packed)
    words = struct.unpack("!10H", header)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header = header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]
    mac = bytes.fromhex(dst.mac.replace(":", "")) + bytes.fromhex(src.mac.replace(":", ""))
    return mac + struct.pack("!H", 0x0800) + header + udp


def kernel_ns_per_frame(topo: Topology, count: int) -> float:
    """System CPU time of the sending thread per frame, in ns.

    A frame sent on a veth crosses the bridge (and the filter), the VXLAN device and
    the far veth in softirq context on the sending CPU, run inline when the send
    re-enables bottom halves; without IRQ-time accounting the kernel charges that to
    the sending thread. CPU time, unlike a rate, barely moves when other processes
    compete for the CPUs."""
    fd = open_netns(f"/run/netns/{topo.client.netns}")
    try:
        with entered(fd):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    finally:
        os.close(fd)
    with sock:
        sock.bind(("eth0", 0))
        frame = _frame(topo.client, topo.server)
        for _ in range(1000):  # warm caches and the neighbour/FDB state
            sock.send(frame)
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
        for _ in range(count):
            sock.send(frame)
        after = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
    return (after - before) / count * 1e9


def _server_up(topo: Topology) -> bool:
    probe = subprocess.run(["nsenter", f"--net=/run/netns/{topo.server.netns}", "ss", "-Hln",
                            f"sport = :{PORT}"], capture_output=True, text=True, check=False)
    return bool(probe.stdout.strip())


def iperf3(topo: Topology, test: str, seconds: int) -> tuple[float, float]:
    """One single-stream run client -> server: the figure (TCP: receiver's Gbit/s; UDP:
    datagrams received per second, thousands) and the sender's CPU % (veth and bridge
    work, the filter included, runs in the sender's softirqs)."""
    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{topo.server.netns}", "iperf3",
                               "-s", "-1", "-B", topo.server.address, "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _server_up(topo):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {topo.name} did not start")
            time.sleep(0.02)
        client = subprocess.run(
            ["nsenter", f"--net=/run/netns/{topo.client.netns}", "iperf3", "-c",
             topo.server.address, "-p", str(PORT), "-t", str(seconds), "-J",
             *TESTS[test][0]],
            capture_output=True, text=True, timeout=seconds + 60, check=False)
        report = json.loads(client.stdout) if client.stdout.strip() else {}
        if client.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 {test} in {topo.name}: "
                               f"{report.get('error') or client.stderr.strip()}")
        end = report["end"]
        cpu = float(end.get("cpu_utilization_percent", {}).get("host_total", float("nan")))
        if test == "tcp":
            return float(end["sum_received"]["bits_per_second"]) / 1e9, cpu
        total = end["sum"]
        received = int(total["packets"]) - int(total.get("lost_packets", 0))
        return received / float(total["seconds"]) / 1e3, cpu
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def _summary(values: dict[str, list[float]], cpu: dict[str, list[float]],
             drops_seen: dict[str, int]) -> dict[str, Any]:
    without, with_ = values["without"], values["with"]
    ratios = [w / wo for w, wo in zip(with_, without, strict=True) if wo]
    mid = bl.median(without)
    return {"without": without, "with": with_, "median_without": mid,
            "median_with": bl.median(with_),
            "paired_ratio_median": bl.median(ratios), "paired_ratios": ratios,
            "spread_without_pct": (max(without) - min(without)) / mid * 100 if mid else None,
            "sender_cpu_pct_without": cpu["without"], "sender_cpu_pct_with": cpu["with"],
            "drops_during_with": drops_seen}


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    builders = {"bridge": bridge_topology, "vxlan": vxlan_topology}
    wanted = [t for t in args.topologies.split(",") if t]
    tests = [t for t in args.tests.split(",") if t]
    load_before = list(os.getloadavg())
    keys = [(t, k) for t in wanted for k in tests]
    figures: dict[tuple[str, str], dict[str, list[float]]] = {
        key: {"without": [], "with": []} for key in keys}
    cpu: dict[tuple[str, str], dict[str, list[float]]] = {
        key: {"without": [], "with": []} for key in keys}
    drops_seen: dict[tuple[str, str], dict[str, int]] = {}
    with bl.Workspace() as ws:
        topologies = [builders[t](ws) for t in wanted]
        for rnd in range(args.rounds):
            # Adjacent with/without pairs, order alternating: slow drift in the machine's
            # load (other engineers' runs) cancels out of the paired ratio.
            modes = (False, True) if rnd % 2 == 0 else (True, False)
            for topo in topologies:
                for test in tests:
                    for with_rules in modes:
                        set_mode(topo, with_rules, args.dummies)
                        if test == "cpu":
                            value, sender_cpu = kernel_ns_per_frame(topo, args.frames), float("nan")
                        else:
                            value, sender_cpu = iperf3(topo, test, args.seconds)
                        mode = "with" if with_rules else "without"
                        figures[(topo.name, test)][mode].append(value)
                        cpu[(topo.name, test)][mode].append(sender_cpu)
                        print(f"round {rnd + 1} {topo.name:6} {test:5} {mode:7} "
                              f"{value:8.2f} {TESTS[test][1]:6} sender CPU {sender_cpu:5.1f} %",
                              file=sys.stderr)
                        if with_rules:
                            # Legitimate traffic must not trip a single drop.
                            drops_seen[(topo.name, test)] = drops(topo)
    summary = {f"{topo}/{test}": _summary(figures[(topo, test)], cpu[(topo, test)],
                                          drops_seen.get((topo, test), {}))
               for topo, test in keys}
    rows = []
    for (topo, test), key in zip(keys, summary, strict=True):
        s = summary[key]
        ratios = s["paired_ratios"]
        rows.append([topo, test, TESTS[test][1], bl.fmt(s["median_without"], 2),
                     bl.fmt(s["median_with"], 2),
                     bl.fmt((s["paired_ratio_median"] - 1) * 100, 1),
                     f"{bl.fmt((min(ratios) - 1) * 100, 0)}..{bl.fmt((max(ratios) - 1) * 100, 0)}",
                     bl.fmt(s["spread_without_pct"] if s["spread_without_pct"] is not None
                            else float("nan"), 0),
                     bl.fmt(bl.median(s["sender_cpu_pct_without"]), 0) + " / "
                     + bl.fmt(bl.median(s["sender_cpu_pct_with"]), 0),
                     str(sum(s["drops_during_with"].values()))])
    print(bl.table(["topology", "test", "unit", "median without", "median with",
                    "paired change % (median)", "paired range %", "spread without %",
                    "sender CPU % w/o / with", "drops"], rows))
    return {"seconds": args.seconds, "rounds": args.rounds, "dummies": args.dummies,
            "load_before": load_before, "load_after": list(os.getloadavg()),
            "results": summary}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload = run(args)
    path = bl.write_json("antispoof_cost", args.out, payload)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
