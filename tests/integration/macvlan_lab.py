"""A small lab for the macvlan model's tests: three hosts on one underlay switch,
one configuration with three networks (blue and red IPv4, green dual-stack).

    switch (172.29.0.0/24): h1 .11, h2 .12, h3 .13
    blue  10.10.0.0/16, VNI 110: a host's slice is 10.10.<host>.0/24, router .1
    red   10.20.0.0/16, VNI 120
    green 10.30.0.0/16 + fd00:30::/64, VNI 130 (IPv6 slices /80)

Every host runs strict reverse-path filtering for all and new devices, so the model's
loose setting on its own host macvlans is what makes routing between networks work.
Names are unique per run; everything is removed even when a test fails.
"""

from __future__ import annotations

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

HOSTS = {"h1": "172.29.0.11/24", "h2": "172.29.0.12/24", "h3": "172.29.0.13/24"}
NAME = "mvnet"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def sysctl(netns: str, key: str, value: str) -> None:
    path = Path("/proc/sys") / key.replace(".", "/")
    with plumbing.inside(netns_path(netns)):
        path.write_text(value)


def seed_networks(blue: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The networks in the seed's own spelling (options.vtepdev etc.)."""
    return [
        {"id": 110, "name": "blue", "cidr": "10.10.0.0/16", "excludeFirst": 5,
         "excludeLast": 5, "options": {"vtepdev": "eth0", "port": 8472, "learning": True},
         **(blue or {})},
        {"id": 120, "name": "red", "cidr": "10.20.0.0/16", "options": {"vtepdev": "eth0"}},
        {"vxlanID": 130, "name": "green", "subnet": ["10.30.0.0/16", "fd00:30::/64"],
         "hostInterface": "eth0"},
    ]


@dataclass
class Lab:
    tmp: Path
    made: list[str] = field(default_factory=list)
    switch: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)

    def build(self) -> None:
        self.switch = simhost.unique_name("xmsw")
        simhost.create_switch(self.switch, self.made.append)
        for n, address in HOSTS.items():
            netns = simhost.unique_name(f"xm{n}")
            sim = simhost.create_host(self.switch, netns, f"p{n}", address,
                                      record=self.made.append)
            for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
                sysctl(netns, key, "1")
            (self.tmp / n).mkdir(parents=True, exist_ok=True)
            self.hosts[n] = Host(sim=sim, data_dir=self.tmp / n / "data")

    def destroy(self) -> None:
        for host in self.hosts.values():
            stop_agent(host, signal.SIGKILL)
            simhost.remove_all(host.pods)
        simhost.remove_all(list(reversed(self.made)))
        for host in self.hosts.values():
            shutil.rmtree(host.data_dir.parent, ignore_errors=True)

    def config(self, name: str, static: bool = True, **extra: Any) -> dict[str, Any]:
        host = self.hosts[name]
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0", "name": NAME, "type": "xvm-cni", "model": "macvlan",
            "dataDir": str(host.data_dir), "vxlans": seed_networks(),
            "defaultNetwork": "blue",
        }
        if static:
            conf["controlPlane"] = {"type": "static", "peers": [
                {"name": n, "address": a.split("/")[0]} for n, a in HOSTS.items()]}
        if host.agent_socket:
            conf["agentSocket"] = host.agent_socket
        conf.update(extra)
        return conf

    def add_pod(self, name: str, conf: dict[str, Any], container: str,
                args: str = "") -> tuple[str, dict[str, Any]]:
        """ADD a pod on host ``name``: (its netns path, the CNI result)."""
        host = self.hosts[name]
        pod = host.new_pod()
        plumbing.bring_up_lo(pod)
        return pod, host.add(conf, container, pod, args=args)


def address(result: dict[str, Any], version: int = 4) -> str:
    for item in result["ips"]:
        text = str(item["address"]).split("/")[0]
        if (":" in text) == (version == 6):
            return text
    raise AssertionError(f"no IPv{version} address in {result}")


def ping_ttl(host: Host, pod: str, target: str) -> int | None:
    """The TTL / hop limit of the echo reply, None when nothing answered."""
    res = host.in_ns(pod, "ping", "-c", "2", "-i", "0.2", "-W", "2", target)
    if res.returncode != 0:
        return None
    for word in res.stdout.split():
        if word.startswith("ttl="):
            return int(word[4:])
    return None


def links(netns: str) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(ip("-d", "-j", "-n", netns, "link"))}


def rules(netns: str, family: str = "-4") -> list[dict[str, Any]]:
    return [r for r in json.loads(ip(family, "-j", "-n", netns, "rule", "show") or "[]")
            if isinstance(r, dict)]
