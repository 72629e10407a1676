"""A small routed lab for the routed model's tests: hosts on two underlay subnets
joined by a router namespace, and an "outside" namespace beyond the cluster.

    switch A (172.31.1.0/24): h1 .11, h2 .12, outside .100, router .254
    switch B (172.31.2.0/24): h3 .13, router .254

Every host runs strict reverse-path filtering (rp_filter=1 for all and new
devices), so the routes the model installs are proven to work without loosening
it. Names are unique per run; everything is removed even when a test fails.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni.lab import plumbing, simhost
from xvmcni.lab.names import netns_path

from .conftest import Host, stop_agent

CLUSTER = "10.250.0.0/16"
HOSTS = {  # name: (switch, address, pod CIDR)
    "h1": ("a", "172.31.1.11/24", "10.250.1.0/24"),
    "h2": ("a", "172.31.1.12/24", "10.250.2.0/24"),
    "h3": ("b", "172.31.2.13/24", "10.250.3.0/24"),
}
ROUTER = {"a": "172.31.1.254/24", "b": "172.31.2.254/24"}
OUTSIDE = "172.31.1.100/24"
NETWORK = "routed-net"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def sysctl(netns: str, key: str, value: str) -> None:
    path = Path("/proc/sys") / key.replace(".", "/")
    with plumbing.inside(netns_path(netns)):
        path.write_text(value)


@dataclass
class Lab:
    tmp: Path
    made: list[str] = field(default_factory=list)
    switches: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    router: str = ""
    outside: str = ""

    def record(self, netns: str) -> None:
        self.made.append(netns)

    def build(self, names: tuple[str, ...] = ("h1", "h2", "h3"), router: bool = True,
              outside: bool = False) -> None:
        for sw in sorted({HOSTS[n][0] for n in names} | ({"a", "b"} if router else set())):
            netns = simhost.unique_name(f"xrs{sw}")
            simhost.create_switch(netns, self.record)
            self.switches[sw] = netns
        for n in names:
            sw, address, _ = HOSTS[n]
            netns = simhost.unique_name(f"xr{n}")
            sim = simhost.create_host(self.switches[sw], netns, f"p{n}", address,
                                      record=self.record)
            for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
                        "net.ipv4.conf.eth0.rp_filter"):
                sysctl(netns, key, "1")
            if router:
                gw = ROUTER[sw].split("/")[0]
                ip("-n", netns, "route", "add", "default", "via", gw)
            (self.tmp / n).mkdir(parents=True, exist_ok=True)
            self.hosts[n] = Host(sim=sim, data_dir=self.tmp / n / "data")
        if router:
            self._router()
        if outside:
            netns = simhost.unique_name("xrout")
            simhost.create_host(self.switches["a"], netns, "pout", OUTSIDE, record=self.record)
            self.outside = netns

    def _router(self) -> None:
        netns = simhost.unique_name("xrrt")
        self.router = netns
        path = plumbing.create_netns(netns)
        self.record(netns)
        for i, sw in enumerate(("a", "b")):
            # The first cable is eth0 (connect_host), the second is renamed eth1.
            plumbing.connect_host(netns_path(self.switches[sw]), path, f"prt{sw}",
                                  ipaddress.IPv4Interface(ROUTER[sw]))
            if i == 0:
                ip("-n", netns, "link", "set", "eth0", "down")
                ip("-n", netns, "link", "set", "eth0", "name", "eth1")
                ip("-n", netns, "link", "set", "eth1", "up")
        sysctl(netns, "net.ipv4.ip_forward", "1")

    def destroy(self) -> None:
        for host in self.hosts.values():
            stop_agent(host, signal.SIGKILL)
        simhost.remove_all(list(reversed(self.made)))
        for host in self.hosts.values():
            simhost.remove_all(host.pods)
            shutil.rmtree(host.data_dir.parent, ignore_errors=True)

    # --- configuration -----------------------------------------------------------------

    def peers(self, names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        return [{"name": n, "address": HOSTS[n][1].split("/")[0], "podCIDRs": [HOSTS[n][2]]}
                for n in (names if names is not None else tuple(self.hosts))]

    def config(self, name: str, encap: str = "vxlan", peers: tuple[str, ...] | None = None,
               **extra: Any) -> dict[str, Any]:
        host = self.hosts[name]
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0", "name": NETWORK, "type": "xvm-cni", "model": "routed",
            "hostInterface": "eth0", "podCIDR": HOSTS[name][2], "clusterCIDR": CLUSTER,
            "encap": encap, "dataDir": str(host.data_dir),
            "controlPlane": {"type": "static", "peers": self.peers(peers)},
        }
        if host.agent_socket:
            conf["agentSocket"] = host.agent_socket
        conf.update(extra)
        return {k: v for k, v in conf.items() if v is not None}

    def add_pod(self, name: str, conf: dict[str, Any], container: str) -> tuple[str, str]:
        """ADD a pod on host ``name``; (its netns path, its IPv4 address)."""
        host = self.hosts[name]
        pod = host.new_pod()
        plumbing.bring_up_lo(pod)
        result = host.add(conf, container, pod)
        address = result["ips"][0]["address"].split("/")[0]
        return pod, address


def ping(host: Host, pod: str, target: str, count: int = 2) -> bool:
    res = host.in_ns(pod, "ping", "-c", str(count), "-i", "0.2", "-W", "2", target)
    return res.returncode == 0


def routes_of(netns: str, proto: str = "202") -> list[dict[str, Any]]:
    out = json.loads(ip("-j", "-d", "-n", netns, "route", "show", "proto", proto) or "[]")
    return [r for r in out if isinstance(r, dict)]


def neighbours(netns: str, dev: str) -> list[dict[str, Any]]:
    out = json.loads(ip("-j", "-n", netns, "neigh", "show", "dev", dev, "nud", "permanent")
                     or "[]")
    return [n for n in out if isinstance(n, dict)]


def fdb(netns: str, dev: str) -> list[dict[str, Any]]:
    out = subprocess.run(["bridge", "-j", "-n", netns, "fdb", "show", "dev", dev],
                         check=True, capture_output=True, text=True).stdout
    return [e for e in json.loads(out or "[]") if isinstance(e, dict) and e.get("dst")]
