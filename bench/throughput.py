"""Lab throughput and RTT: pod to pod across hosts (VXLAN) vs host to host on the underlay.

    sudo .venv/bin/python bench/throughput.py [--seconds 5] [--repeats 3] [--out FILE]

Builds a 2-host lab with 2 pods per host through the project's lab API
(``xvmcni.cli.lab.lab_up``: real plugin, simulated hosts on an isolated underlay
switch, MTU 1500), then runs iperf3 (server and client each inside its namespace,
started with ``nsenter --net``) for ``--seconds`` per test, single stream and
``-P 4``: pod h1-p1 -> pod h2-p1 (across hosts: veth, bridge, VXLAN, underlay),
host h1 -> host h2 (172.30.0.11 -> 172.30.0.12, the underlay alone) and, for
context, pod h1-p1 -> pod h1-p2 (same host: veth and bridge only). Tests are
interleaved ``--repeats`` times; the figure is the median of the receiver's
bit rate. RTT: 50 ICMP echoes each way (xvmcni.cli.icmp, one at a time), median.
The lab is always torn down (lab_down), also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import secrets
import sys
import time
from typing import Any

import benchlib as bl
from benchlib import Endpoint, iperf3

from xvmcni import lab as labapi
from xvmcni.lab.icmp import probe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5, help="per iperf3 test (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--pings", type=int, default=50, help="ICMP echoes per direction")
    p.add_argument("--out", help="JSON output (default bench/results/throughput.json)")
    return p.parse_args(argv)


def rtts(src: Endpoint, dst: Endpoint, count: int) -> list[float]:
    """``count`` echoes, one at a time, 10 ms apart (after 3 untimed: ARP, caches)."""
    for _ in range(3):
        probe(src.netns_path, dst.ip, timeout=1.0, tries=3)
    samples = []
    for _ in range(count):
        reply = probe(src.netns_path, dst.ip, timeout=1.0, tries=1)
        if reply.ok and reply.rtt_ms is not None:
            samples.append(reply.rtt_ms)
        time.sleep(0.01)
    return samples


def lab_name() -> str:
    """Unique per run; the lab API allows 1-24 lower-case letters and digits."""
    return f"xvmb{os.getpid():x}{secrets.token_hex(3)}"


def lab_mode() -> dict[str, Any]:
    """The lab API's agent mode if it has one (``lab_up(agent=True)``: one xvm-cnid per
    simulated host; the data path is the same either way)."""
    params = inspect.signature(labapi.lab_up).parameters
    for name in ("agent", "agents", "with_agent", "use_agent"):
        if name in params:
            return {name: True}
    return {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    load_before = bl.machine()["loadavg"]
    name = lab_name()
    mode = lab_mode()
    results: dict[str, list[dict[str, Any]]] = {}
    ping_ms: dict[str, list[float]] = {}
    print(f"lab {name}: up (2 hosts x 2 pods{', ' + str(mode) if mode else ''})",
          file=sys.stderr)
    try:
        lab = labapi.lab_up(name, hosts=2, pods=2, **mode)
        h1, h2 = (Endpoint(h.name, h.netns_path, h.underlay.split("/")[0]) for h in lab.hosts)
        pods = {p.name: Endpoint(p.name, p.netns_path, p.ip) for p in lab.pods}
        p11, p12, p21 = pods["h1-p1"], pods["h1-p2"], pods["h2-p1"]
        tests = {"pod->pod across hosts": (p11, p21), "host->host (underlay)": (h1, h2),
                 "pod->pod same host": (p11, p12)}
        for rep in range(args.repeats):
            for label, (src, dst) in tests.items():
                for streams in (1, 4):
                    key = f"{label}, {streams} stream{'s' if streams > 1 else ''}"
                    res = iperf3(src, dst, args.seconds, streams)
                    results.setdefault(key, []).append(res)
                    print(f"repeat {rep + 1}/{args.repeats}  {key:40} {res['gbps']:6.2f} Gbit/s"
                          f"  retransmits {res['retransmits']}", file=sys.stderr)
        for label, (src, dst) in {"pod h1-p1 -> pod h2-p1": (p11, p21),
                                  "pod h2-p1 -> pod h1-p1": (p21, p11),
                                  "host h1 -> host h2": (h1, h2),
                                  "host h2 -> host h1": (h2, h1)}.items():
            ping_ms[label] = rtts(src, dst, args.pings)
        pod_mtu = lab.pods[0].mtu
    finally:
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: still tear down
            report = labapi.lab_down(name)
            print(f"lab {name}: down ({'clean' if report.clean else report.leftovers})",
                  file=sys.stderr)
    return {"params": vars(args), "load_before": load_before, "lab": name,
            "lab_mode": (", ".join(f"lab_up({k}=True)" for k in mode) if mode
                         else "lab_up() default (it has no agent option)"),
            "pod_mtu": pod_mtu, "underlay_mtu": labapi.UNDERLAY_MTU,
            "iperf3": results, "rtt_ms": ping_ms}


def summarize(data: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    gbps = {k: bl.median([r["gbps"] for r in v]) for k, v in data["iperf3"].items()}
    data["gbps_median"] = gbps
    rows = []
    for key, value in gbps.items():
        host_key = "host->host (underlay)" + key[key.index(","):]
        ratio = value / gbps[host_key] if not key.startswith("host") else 1.0
        retrans = [r["retransmits"] for r in data["iperf3"][key]]
        rows.append([key, bl.fmt(value, 2),
                     " / ".join(f"{r['gbps']:.2f}" for r in data["iperf3"][key]),
                     f"{ratio * 100:.0f} %", "/".join(str(x) for x in retrans)])
    ping_rows = [[k, str(len(v)), bl.fmt(bl.median(v), 3), bl.fmt(bl.percentile(v, 95), 3)]
                 for k, v in data["rtt_ms"].items()]
    return rows, ping_rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    rows, ping_rows = summarize(data)
    print(bl.table(["test", "Gbit/s (median)", "each repeat", "vs host->host",
                    "retransmits"], rows))
    print()
    print(bl.table(["RTT (ICMP, 56 bytes)", "n", "median ms", "p95 ms"], ping_rows))
    print(f"\npod MTU {data['pod_mtu']}, underlay MTU {data['underlay_mtu']}; "
          f"lab mode: {data['lab_mode']}")
    print(f"wrote {bl.write_json('throughput', args.out, data)}")


if __name__ == "__main__":
    main()
