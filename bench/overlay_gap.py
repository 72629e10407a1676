"""Where the routed-vxlan pod path loses against a hand-built VXLAN: each difference
toggled in isolation on one built lab, measured in rate and in CPU per gigabyte.

    sudo .venv/bin/python bench/overlay_gap.py [--seconds 4] [--rounds 5] [--streams 1]
        [--no-perf] [--out FILE]

One 2-host ``routed`` lab (``encap: vxlan``, one pod per host, flat underlay), its
agents stopped once the pods are attached (the data path does not need them, and a
reconciling agent would undo a toggle). On its two hosts a hand-built VXLAN as in
``overlay_throughput.py``. Cases, h1 -> h2, all in every round, order rotated:

    hand-built vxlan        the ceiling (no bridge, no veth, no CNI)
    pod: as built           what xvm-cni made
    pod: no antispoof       the anti-spoofing bridge table deleted on both hosts
    pod: nf-call off        net.bridge.bridge-nf-call-{ip,ip6,arp}tables = 0 on both
                            hosts (br_netfilter is loaded on this machine, and its
                            per-netns default 1 sends every bridged IPv4 frame
                            through the inet hooks; a host setting, not ours)
    pod: route w/o src      the peer route replaced without its ``src`` hint
    pod: all of the above   what remains is veth + bridge + IP forwarding
    pod: no bridge          not a toggle of ours but a different attachment: the pod's
                            host veth taken off the bridge, the gateway address /32 on
                            it and a /32 route to the pod (routed straight to the veth,
                            as Calico does): what removing the bridge crossing would gain

Each toggle is applied just before its run and undone right after (the table is
restored from ``nft list table``, the sysctls and the route to what they were).
``perf record -a`` (cpu-clock, no call graph) runs beside each iperf3 run; the
samples of the two iperf3 processes and of ksoftirqd are CPU time spent on this
transfer (the machine is shared: other processes' samples are ignored). Reported:
Gbit/s (median, spread), the median per-round ratio to "as built" and to the
hand-built tunnel, CPU ms per GB moved (less sensitive to other load than the rate),
and where that CPU went (kernel functions grouped: nft, br_netfilter, bridge, veth,
vxlan, routing, copies). Also ``ethtool -k`` and ``ip -d link`` of the hand-built
and the lab's VXLAN devices, compared. Everything is removed at the end, also on
errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib as bl
import overlay_throughput as ot  # the hand-built tunnel, exactly as measured there
from benchlib import Endpoint

from xvmcni import lab as labapi

HAND = "hand-built vxlan"
AS_BUILT = "pod: as built"
NO_ANTISPOOF = "pod: no antispoof"
NF_CALL_OFF = "pod: nf-call off"
NO_SRC = "pod: route w/o src"
ALL_OFF = "pod: all of the above"
NO_BRIDGE = "pod: no bridge"
CASES = (HAND, AS_BUILT, NO_ANTISPOOF, NF_CALL_OFF, NO_SRC, ALL_OFF, NO_BRIDGE)
PORT = 5202
NF_CALL = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
           "net.bridge.bridge-nf-call-arptables")
# Kernel functions by what they belong to (self time, first match wins).
GROUPS = (
    ("nft (nf_tables)", re.compile(r"^(nft_|nf_tables|__nft)")),
    ("br_netfilter", re.compile(r"^(br_nf_|ip_sabotage|nf_bridge|br_validate_ipv4)")),
    ("netfilter core", re.compile(r"^(nf_hook|nf_)")),
    ("bridge", re.compile(r"^(br_|fdb_|nbp_|__br_)")),
    ("veth", re.compile(r"^veth_")),
    ("vxlan/udp tunnel", re.compile(r"^(vxlan_|udp_tunnel|iptunnel|__udp4_lib|udp_)")),
    ("ip routing/forward", re.compile(r"^(ip_forward|fib_|ip_route|ip_rcv|ip_finish|ip_output|"
                                      r"ip_local|ip_sublist|ip_list|__ip_|rt_dst)")),
    ("copy to/from user", re.compile(r"^_copy_(to|from)_iter|^copy_user")),
    ("tcp", re.compile(r"^(tcp_|__tcp_|inet_)")),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=4, help="per iperf3 run (default 4)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over all cases (default 5)")
    p.add_argument("--streams", type=int, default=1, help="iperf3 -P (default 1)")
    p.add_argument("--no-perf", action="store_true", help="rates only, no perf record")
    p.add_argument("--out", help="JSON output (default bench/results/overlay_gap.json)")
    return p.parse_args(argv)


def netns_run(netns: str, *argv: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, *argv], input=stdin,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {netns}: {proc.stderr.strip()}")
    return proc.stdout


class Toggles:
    """The differences, each undoable, on both hosts of the lab."""

    def __init__(self, hosts: list[labapi.Host], pods: list[labapi.Pod], tmp: Path) -> None:
        self.hosts = [h.netns for h in hosts]
        self.pods = {ns: next(p for p in pods if p.host == h.name)
                     for ns, h in zip(self.hosts, hosts, strict=True)}
        self.tables: dict[str, list[str]] = {}
        self.saved_sysctl: dict[str, dict[str, str]] = {}
        self.routes: dict[str, list[dict[str, Any]]] = {}
        self.tmp = tmp
        for ns in self.hosts:
            listing = json.loads(netns_run(ns, "nft", "-j", "list", "tables"))["nftables"]
            self.tables[ns] = [t["table"]["name"] for t in listing
                               if "table" in t and t["table"]["family"] == "bridge"]
            self.saved_sysctl[ns] = {k: netns_run(ns, "sysctl", "-n", k).strip()
                                     for k in NF_CALL}
            self.routes[ns] = [r for r in json.loads(bl.ip("-j", "-n", ns, "route", "show",
                                                           "proto", "202"))]

    def antispoof(self, on: bool) -> None:
        for ns in self.hosts:
            for table in self.tables[ns]:
                saved = self.tmp / f"{ns}-{table}.nft"
                if not on:
                    saved.write_text(netns_run(ns, "nft", "list", "table", "bridge", table))
                    netns_run(ns, "nft", "delete", "table", "bridge", table)
                elif saved.exists():
                    netns_run(ns, "nft", "-f", str(saved))
                    saved.unlink()

    def nf_call(self, on: bool) -> None:
        for ns in self.hosts:
            for key, value in self.saved_sysctl[ns].items():
                netns_run(ns, "sysctl", "-qw", f"{key}={value if on else '0'}")

    def route_src(self, on: bool) -> None:
        for ns in self.hosts:
            for r in self.routes[ns]:
                argv = ["-n", ns, "route", "replace", r["dst"], "via", r["gateway"], "dev",
                        r["dev"], "proto", "202", "onlink"]
                if on and r.get("prefsrc"):
                    argv += ["src", r["prefsrc"]]
                bl.ip(*argv)

    def bridge(self, on: bool) -> None:
        """Pod veth on the bridge (as built) or routed straight to it (off)."""
        for ns in self.hosts:
            pod = self.pods[ns]
            link = json.loads(bl.ip("-j", "-n", ns, "link", "show", "type", "veth"))
            veth = next(x for x in link if x.get("link_netnsid") is not None
                        and x["ifname"] != "eth0")
            bridge = json.loads(bl.ip("-j", "-n", ns, "link", "show", "type", "bridge"))[0]
            gw = next(a["local"] for a in json.loads(bl.ip("-j", "-n", ns, "addr", "show",
                                                           "dev", bridge["ifname"]))[0]
                      ["addr_info"] if a["family"] == "inet")
            v = veth["ifname"]
            if not on:
                bl.ip("-n", ns, "link", "set", v, "nomaster")
                bl.ip("-n", ns, "addr", "add", f"{gw}/32", "dev", v)
                bl.ip("-n", ns, "route", "add", f"{pod.ip}/32", "dev", v)
            else:
                with contextlib.suppress(RuntimeError):  # restore: parts may be missing
                    bl.ip("-n", ns, "route", "del", f"{pod.ip}/32", "dev", v)
                with contextlib.suppress(RuntimeError):
                    bl.ip("-n", ns, "addr", "del", f"{gw}/32", "dev", v)
                bl.ip("-n", ns, "link", "set", v, "master", bridge["ifname"])
            # The pod's cached gateway MAC belongs to whichever side it last talked to.
            bl.ip("-n", pod.netns, "neigh", "flush", "all")

    def all_off(self, on: bool) -> None:
        self.antispoof(on)
        self.nf_call(on)
        self.route_src(on)

    def restore(self) -> None:
        """Back to as built, whatever was left toggled (errors or Ctrl-C)."""
        for action in (self.antispoof, self.nf_call, self.route_src, self.bridge):
            try:
                action(True)
            except RuntimeError as exc:
                print(f"restore: {exc}", file=sys.stderr)


def nothing(_on: bool) -> None:
    """The case without a toggle."""


def iperf3_run(src: Endpoint, dst: Endpoint, seconds: int, streams: int,
               perf_out: Path | None) -> dict[str, Any]:
    """iperf3 src -> dst, perf record beside it (from 0.5 s in to 0.5 s before the end)."""
    server = subprocess.Popen(["nsenter", f"--net={dst.netns_path}", "iperf3", "-s", "-1",
                               "-p", str(PORT)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    perf = None
    try:
        deadline = time.monotonic() + 10
        while not bl._listening(server.pid, PORT):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {dst.label} did not start")
            time.sleep(0.02)
        client = subprocess.Popen(
            ["nsenter", f"--net={src.netns_path}", "iperf3", "-c", dst.ip, "-p", str(PORT),
             "-t", str(seconds), "-P", str(streams), "-J"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        window = max(seconds - 1.0, 0.5)
        if perf_out is not None:
            time.sleep(0.5)
            perf = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-F", "999",
                                     "-o", str(perf_out), "--", "sleep", str(window)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, err = client.communicate(timeout=seconds + 60)
        report = json.loads(out) if out.strip() else {}
        if client.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 {src.label} -> {dst.label}: "
                               f"{report.get('error') or err.strip()}")
        gbps = report["end"]["sum_received"]["bits_per_second"] / 1e9
        result: dict[str, Any] = {"gbps": gbps,
                                  "retransmits": report["end"]["sum_sent"].get("retransmits")}
        if perf is not None and perf_out is not None:
            perf.wait(timeout=60)
            perf = None
            result.update(cpu_profile(perf_out, {server.pid, client.pid}, gbps, window))
        return result
    finally:
        for proc in (perf, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def cpu_profile(data: Path, pids: set[int], gbps: float, window: float) -> dict[str, Any]:
    """CPU ms per GB moved (samples of the iperf3 pair and ksoftirqd) and its split."""
    proc = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,ip,sym"],
                          capture_output=True, text=True, check=False)
    data.unlink(missing_ok=True)
    groups: Counter[str] = Counter()
    symbols: Counter[str] = Counter()
    ours = 0
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        # "comm pid ip sym" (comm may hold spaces: pid is the first all-digit field)
        idx = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if idx is None:
            continue
        comm, pid = " ".join(parts[:idx]), int(parts[idx])
        sym = parts[idx + 2] if len(parts) > idx + 2 else "?"
        if pid not in pids and not comm.startswith("ksoftirqd"):
            continue
        ours += 1
        symbols[sym] += 1
        groups[next((name for name, rx in GROUPS if rx.match(sym)), "other")] += 1
    gigabytes = gbps / 8 * window
    ms = ours * (1000 / 999)   # one sample per ~1.001 ms of CPU
    per_gb = ms / gigabytes if gigabytes else float("nan")
    return {"cpu_ms_per_gb": per_gb,
            "cpu_split": {k: v / ours for k, v in groups.items()} if ours else {},
            "top_symbols_ms_per_gb": {k: v / ours * per_gb
                                      for k, v in symbols.most_common(60)} if ours else {},
            "samples": ours}


def device_report(netns: str, devices: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for dev in devices:
        features = netns_run(netns, "ethtool", "-k", dev).splitlines()[1:]
        link = json.loads(bl.ip("-d", "-j", "-n", netns, "link", "show", dev))[0]
        info = link.get("linkinfo", {}).get("info_data", {})
        report[dev] = {"features": {line.split(":")[0].strip(): line.split(":", 1)[1].strip()
                                    for line in features if ":" in line},
                       "vxlan": info, "mtu": link.get("mtu")}
    return report


def compare_devices(report: dict[str, Any], a: str, b: str) -> list[str]:
    diffs = []
    for kind in ("features", "vxlan"):
        left, right = report[a][kind], report[b][kind]
        for key in sorted(set(left) | set(right)):
            if left.get(key) != right.get(key):
                diffs.append(f"{kind} {key}: {a}={left.get(key)} {b}={right.get(key)}")
    return diffs


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    load_before = os.getloadavg()
    name = f"xg{os.getpid():x}{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="xvmgap-"))
    hosts: list[labapi.Host] = []
    toggles: Toggles | None = None
    samples: dict[str, list[dict[str, Any]]] = {}
    devices: dict[str, Any] = {}
    try:
        print(f"lab {name}: up (routed, encap vxlan, 2 hosts x 1 pod)", file=sys.stderr)
        lab = labapi.lab_up(name, hosts=2, pods=1, agent=True, model="routed", encap="vxlan")
        for host in lab.hosts:
            labapi.agent_stop(name, host.name)
        hosts = lab.hosts[:2]
        hand = ot.add_hand_built(hosts)
        pods = (ot.pod_end(lab, "h1-p1"), ot.pod_end(lab, "h2-p1"))
        toggles = Toggles(hosts, lab.pods, tmp)
        vxlan_dev = next(link["ifname"] for link in json.loads(
            bl.ip("-j", "-d", "-n", hosts[0].netns, "link", "show", "type", "vxlan"))
            if link["ifname"] != ot.HAND_DEVICE)
        devices = device_report(hosts[0].netns, [ot.HAND_DEVICE, vxlan_dev, "eth0"])
        devices["differences"] = compare_devices(devices, ot.HAND_DEVICE, vxlan_dev)
        plan: dict[str, tuple[tuple[Endpoint, Endpoint], Callable[[bool], None]]] = {
            HAND: ((hand[0], hand[1]), nothing), AS_BUILT: (pods, nothing),
            NO_ANTISPOOF: (pods, toggles.antispoof), NF_CALL_OFF: (pods, toggles.nf_call),
            NO_SRC: (pods, toggles.route_src), ALL_OFF: (pods, toggles.all_off),
            NO_BRIDGE: (pods, toggles.bridge)}
        for rnd in range(args.rounds):
            order = list(CASES[rnd % len(CASES):] + CASES[:rnd % len(CASES)])
            for case in order:
                (src, dst), toggle = plan[case]
                toggle(False)
                try:
                    load = os.getloadavg()
                    res = iperf3_run(src, dst, args.seconds, args.streams,
                                     None if args.no_perf else tmp / "perf.data")
                finally:
                    toggle(True)
                res.update(round=rnd, loadavg=load)
                samples.setdefault(case, []).append(res)
                cpu = f"  {res['cpu_ms_per_gb']:6.0f} CPU ms/GB" if "cpu_ms_per_gb" in res else ""
                print(f"round {rnd + 1}/{args.rounds}  {case:22} {res['gbps']:6.2f} Gbit/s{cpu}"
                      f"  load {load[0]:.1f}", file=sys.stderr)
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            if toggles is not None:
                toggles.restore()
            ot.remove_hand_built(hosts)
            report = labapi.lab_down(name)
            print(f"lab {name}: down ({'clean' if report.clean else report.leftovers})",
                  file=sys.stderr)
            for leftover in tmp.iterdir():
                leftover.unlink()
            tmp.rmdir()
    return {"params": vars(args), "load_before": load_before, "lab": name,
            "devices": devices, "runs": samples}


def paired(data: dict[str, Any], case: str, base: str, key: str = "gbps") -> float:
    mine = {r["round"]: r[key] for r in data["runs"][case]}
    theirs = {r["round"]: r[key] for r in data["runs"][base]}
    return bl.median([mine[k] / theirs[k] for k in mine if theirs.get(k)])


def symbol_diffs(data: dict[str, Any], top: int = 15) -> list[list[str]]:
    def per_symbol(case: str) -> dict[str, float]:
        runs = data["runs"][case]
        names = {k for r in runs for k in r.get("top_symbols_ms_per_gb", {})}
        return {k: bl.median([r.get("top_symbols_ms_per_gb", {}).get(k, 0.0) for r in runs])
                for k in names}

    hand, pod = per_symbol(HAND), per_symbol(AS_BUILT)
    diff = sorted(set(hand) | set(pod), key=lambda k: pod.get(k, 0.0) - hand.get(k, 0.0),
                  reverse=True)
    return [[k, f"{hand.get(k, 0.0):.0f}", f"{pod.get(k, 0.0):.0f}",
             f"{pod.get(k, 0.0) - hand.get(k, 0.0):+.0f}"] for k in diff[:top]]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    perf = not args.no_perf
    rows = []
    for case in CASES:
        runs = data["runs"][case]
        rates = [r["gbps"] for r in runs]
        row = [case, bl.fmt(bl.median(rates), 2), f"{min(rates):.2f}-{max(rates):.2f}",
               f"{paired(data, case, HAND) * 100:.0f} %",
               f"{paired(data, case, AS_BUILT) * 100:.0f} %"]
        if perf:
            row += [bl.fmt(bl.median([r["cpu_ms_per_gb"] for r in runs]), 0),
                    f"{paired(data, case, HAND, 'cpu_ms_per_gb') * 100:.0f} %"]
        rows.append(row)
    headers = ["case", "Gbit/s (median)", "min-max", "vs hand-built (paired)",
               "vs as built (paired)"]
    if perf:
        headers += ["CPU ms/GB (median)", "CPU/GB vs hand-built"]
    print(bl.table(headers, rows))
    if perf:
        print()
        names = [g for g, _ in GROUPS] + ["other"]
        split_rows = []
        for case in CASES:
            runs = data["runs"][case]
            split_rows.append([case] + [
                f"{bl.median([r['cpu_split'].get(g, 0.0) * r['cpu_ms_per_gb'] for r in runs]):.0f}"
                for g in names])
        print("CPU ms per GB by kernel function group (self time, median over rounds):")
        print(bl.table(["case", *names], split_rows))
        print("\nfunctions the pod path spends most more CPU per GB in than the hand-built "
              "tunnel (median over rounds, ms/GB):")
        print(bl.table(["function", HAND, AS_BUILT, "difference"], symbol_diffs(data)))
    print("\nhand-built vs lab VXLAN device (ethtool -k, ip -d link): "
          + ("; ".join(data["devices"]["differences"]) or "no difference"))
    loads = [r["loadavg"][0] for runs in data["runs"].values() for r in runs]
    print(f"load average (1 min) before {data['load_before'][0]:.1f}, during "
          f"{min(loads):.1f}-{max(loads):.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"wrote {bl.write_json('overlay_gap', args.out, data)}")


if __name__ == "__main__":
    main()
