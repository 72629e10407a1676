"""Throughput cost of the anti-spoofing table (dataplane/antispoof): with vs without.

    sudo .venv/bin/python bench/antispoof_cost.py [--seconds 5] [--rounds 3]
                                                  [--dummies 100] [--out FILE]

Two topologies, built by hand with ``ip`` (no plugin involved, so only the filter
differs between the two modes):

- ``bridge``: one host namespace, a bridge with the anycast gateway, two pods on it
  (veth -> bridge -> veth).
- ``vxlan``: two host namespaces joined by a veth "underlay", each with a bridge and a
  unicast VXLAN port; one pod per host (veth -> bridge -> VXLAN -> underlay -> VXLAN
  -> bridge -> veth); the table is installed on both hosts.

"with": ``antispoof.table_batch`` + both real pods admitted + ``--dummies`` made-up
members per host, so the set lookups are not on near-empty sets. "without": the
table deleted. Each round runs every (topology, mode) pair once, the mode order
alternating between rounds; one iperf3 TCP stream for ``--seconds``; the figure is
the median of the receiver's bit rate. Everything is removed at the end, also on
errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5, help="per iperf3 run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--dummies", type=int, default=100,
                   help="made-up members per host in 'with' mode (default 100)")
    p.add_argument("--topologies", default="bridge,vxlan", help="comma list (bridge,vxlan)")
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


def iperf3(topo: Topology, seconds: int) -> float:
    """One single-stream TCP run client -> server; the receiver's rate in Gbit/s."""
    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{topo.server.netns}", "iperf3",
                               "-s", "-1", "-B", topo.server.address, "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # the server is up once a connection attempt is not refused
            probe = subprocess.run(["nsenter", f"--net=/run/netns/{topo.server.netns}", "ss",
                                    "-Hltn", f"sport = :{PORT}"], capture_output=True,
                                   text=True, check=False)
            if probe.stdout.strip():
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {topo.name} did not start")
            time.sleep(0.02)
        client = subprocess.run(
            ["nsenter", f"--net=/run/netns/{topo.client.netns}", "iperf3", "-c",
             topo.server.address, "-p", str(PORT), "-t", str(seconds), "-J"],
            capture_output=True, text=True, timeout=seconds + 60, check=False)
        report = json.loads(client.stdout) if client.stdout.strip() else {}
        if client.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 in {topo.name}: "
                               f"{report.get('error') or client.stderr.strip()}")
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    builders = {"bridge": bridge_topology, "vxlan": vxlan_topology}
    wanted = [t for t in args.topologies.split(",") if t]
    load_before = list(os.getloadavg())
    samples: dict[str, dict[str, list[float]]] = {t: {"without": [], "with": []} for t in wanted}
    drop_counts: dict[str, dict[str, int]] = {}
    with bl.Workspace() as ws:
        topologies = [builders[t](ws) for t in wanted]
        for rnd in range(args.rounds):
            modes = (False, True) if rnd % 2 == 0 else (True, False)
            for topo in topologies:
                for with_rules in modes:
                    set_mode(topo, with_rules, args.dummies)
                    gbps = iperf3(topo, args.seconds)
                    key = "with" if with_rules else "without"
                    samples[topo.name][key].append(gbps)
                    print(f"round {rnd + 1} {topo.name:6} {key:7} {gbps:6.2f} Gbit/s",
                          file=sys.stderr)
                    if with_rules:
                        # A legitimate stream must not trip a single drop.
                        drop_counts[topo.name] = drops(topo)
    rows = []
    summary: dict[str, Any] = {}
    for name, by_mode in samples.items():
        without, with_ = bl.median(by_mode["without"]), bl.median(by_mode["with"])
        change = (with_ - without) / without * 100 if without else float("nan")
        spread = (max(by_mode["without"]) - min(by_mode["without"])) / without * 100 \
            if without else float("nan")
        summary[name] = {"without_gbps": by_mode["without"], "with_gbps": by_mode["with"],
                         "median_without": without, "median_with": with_,
                         "change_pct": change, "spread_without_pct": spread,
                         "drops_during_with": drop_counts.get(name, {})}
        rows.append([name, bl.fmt(without, 2), bl.fmt(with_, 2), bl.fmt(change, 1),
                     bl.fmt(spread, 1), " ".join(bl.fmt(v, 2) for v in by_mode["without"]),
                     " ".join(bl.fmt(v, 2) for v in by_mode["with"]),
                     str(sum(drop_counts.get(name, {}).values()))])
    print(bl.table(["topology", "without Gbit/s", "with Gbit/s", "change %",
                    "spread without %", "without (all)", "with (all)", "drops"], rows))
    return {"seconds": args.seconds, "rounds": args.rounds, "dummies": args.dummies,
            "load_before": load_before, "results": summary}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload = run(args)
    path = bl.write_json("antispoof_cost", args.out, payload)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
