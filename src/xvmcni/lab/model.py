"""The lab's description: hosts, pods and the address plan, also its state file.

``state.json`` is written after every step of ``up`` (atomically, ADDs run in
threads), so ``down`` can remove a lab that a crash left half made.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xvmcni.lab.names import (
    DEFAULT_NAME,
    STATE_FILE,
    LabError,
    agent_socket_path,
    check_name,
    host_netns,
    lab_dir,
    netns_path,
    pod_netns,
    switch_netns,
)

UNDERLAY = ipaddress.IPv4Network("172.30.0.0/24")
# A routed underlay's second subnet (even hosts), behind a router that carries no
# multicast: what clouds and most data centres give hosts in different racks.
SECOND_UNDERLAY = ipaddress.IPv4Network("172.30.1.0/24")
ROUTER_OFFSET = 254
ETCD_OFFSET = 2    # --control etcd: etcd's own namespace is .2 of the first subnet
ETCD_CLIENT_PORT = 2379
HOST_OFFSET = 10  # host i gets .(10+i): .11, .12, ...
UNDERLAY_MTU = 1500
MAX_HOSTS = 200
MAX_PODS = 50
POD_IFNAME = "eth0"

Progress = Callable[[str], None]    # one line per step, for a human watching


def quiet(_: str) -> None:
    """Default progress sink for API callers that don't want lines."""


class PluginError(LabError):
    """The plugin exited non-zero; carries the CNI error object it printed."""

    def __init__(self, command: str, pod: str, code: int | None, msg: str,
                 details: str = "", stderr: str = "", status: int = 1) -> None:
        super().__init__(f"CNI {command} for pod {pod} failed", msg)
        self.command = command
        self.pod = pod
        self.code = code
        self.plugin_msg = msg
        self.plugin_details = details
        self.stderr = stderr
        self.status = status
        # How to reproduce it by hand: the environment and stdin the plugin got.
        self.request = ""
        self.config = ""

    def __str__(self) -> str:
        code = f"code {self.code}" if self.code is not None else f"exit status {self.status}"
        text = f"{self.msg} ({code}): {self.plugin_msg}"
        if self.plugin_details:
            text += f" ({self.plugin_details})"
        return text


def underlay_address(index: int, routed: bool = False) -> str:
    """Host ``h<index>``'s eth0 address with prefix: h1 is 172.30.0.11/24. With a routed
    underlay the even hosts live in the second subnet: h2 is 172.30.1.12/24."""
    if not 1 <= index <= MAX_HOSTS:
        raise ValueError(f"host index {index} out of 1..{MAX_HOSTS}")
    subnet = SECOND_UNDERLAY if routed and index % 2 == 0 else UNDERLAY
    return f"{subnet.network_address + HOST_OFFSET + index}/{subnet.prefixlen}"


def router_address(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """The routed underlay's router in ``subnet``: its .254."""
    return ipaddress.IPv4Interface((subnet.network_address + ROUTER_OFFSET, subnet.prefixlen))


def etcd_address() -> ipaddress.IPv4Interface:
    """Where the lab's etcd listens on the underlay: 172.30.0.2/24 (the first subnet,
    also with a routed underlay: the second subnet's hosts reach it via the router)."""
    return ipaddress.IPv4Interface((UNDERLAY.network_address + ETCD_OFFSET, UNDERLAY.prefixlen))


def etcd_endpoint() -> str:
    return f"http://{etcd_address().ip}:{ETCD_CLIENT_PORT}"


@dataclass
class Host:
    name: str               # "h1"
    netns: str              # "<lab>-h1"
    underlay: str           # "172.30.0.11/24" on eth0
    config_path: str = ""
    data_dir: str = ""
    agent_pid: int = 0      # the host's xvm-cnid (agent mode); 0: none started
    agent_adds: int = -1    # ADDs that agent reported serving at the end of up (-1: unknown)

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)


@dataclass
class Pod:
    name: str               # "h1-p1"
    host: str               # "h1"
    netns: str              # "<lab>-h1-p1"
    container_id: str
    address: str = ""       # the CNI result's ips[0].address, e.g. "10.244.0.2/16"
    gateway: str = ""
    mac: str = ""
    mtu: int = 0
    attached: bool = False  # an ADD was started: DEL is owed at teardown
    # Every address of the result (dual-stack: one per family), and their gateways.
    addresses: list[str] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)

    def address_of(self, family: int) -> tuple[str, str] | None:
        """(address, gateway) of family 4 or 6, without prefix; None if it has none."""
        for i, text in enumerate(self.addresses or [self.address]):
            addr = ipaddress.ip_interface(text).ip if text else None
            if addr is not None and addr.version == family:
                gateways = self.gateways or [self.gateway]
                return str(addr), gateways[i] if i < len(gateways) else ""
        return None

    @property
    def families(self) -> list[int]:
        return [f for f in (4, 6) if self.address_of(f) is not None]

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


def new_host(lab: str, index: int, routed: bool = False) -> Host:
    host = f"h{index}"
    return Host(name=host, netns=host_netns(lab, host),
                underlay=underlay_address(index, routed))


def new_pod(lab: str, host: str, index: int) -> Pod:
    """Pod ``<host>-p<index>``; its container ID is unique per lab, as a runtime's is."""
    return Pod(name=f"{host}-p{index}", host=host, netns=pod_netns(lab, host, index),
               container_id=f"{lab}-{host}-p{index}")


@dataclass
class Lab:
    name: str
    plugin: str
    flavor: str                          # "xvm" (the real plugin) or "bridge" (reference)
    hosts: list[Host] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    phase: str = "creating"              # creating -> up
    netns_created: list[str] = field(default_factory=list)
    agent: bool = False                  # one xvm-cnid per host, or the plugin in-process
    model: str = "l2"                    # the network model the hosts' config uses
    encap: str = "vxlan"                 # routed model: vxlan | none | auto
    underlay: str = "flat"               # flat: one subnet; routed: two, behind a router
    family: str = "ipv4"                 # routed model: ipv4 | ipv6 | dual pod addresses
    control: str = "none"                # none (multicast / static peers) | etcd | kubernetes
    etcd_pid: int = 0                    # --control etcd: the lab's etcd; 0: none started

    @property
    def state_dir(self) -> Path:
        return lab_dir(self.name)

    def agent_socket(self, host: str) -> str:
        return str(agent_socket_path(self.name, host))

    @property
    def switch_netns(self) -> str:
        return switch_netns(self.name)

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def pods_of(self, host: str) -> list[Pod]:
        return [p for p in self.pods if p.host == host]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lab:
        return cls(
            name=data["name"], plugin=data.get("plugin", ""), flavor=data.get("flavor", "xvm"),
            hosts=[Host(**h) for h in data.get("hosts", [])],
            pods=[Pod(**p) for p in data.get("pods", [])],
            phase=data.get("phase", "creating"),
            netns_created=list(data.get("netns_created", [])),
            agent=bool(data.get("agent", False)),
            model=str(data.get("model", "l2")), encap=str(data.get("encap", "vxlan")),
            underlay=str(data.get("underlay", "flat")),
            family=str(data.get("family", "ipv4")),
            control=str(data.get("control", "none")), etcd_pid=int(data.get("etcd_pid", 0)),
        )


def load_state(name: str) -> Lab | None:
    path = lab_dir(name) / STATE_FILE
    try:
        return Lab.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(f"state file {path} is damaged", str(exc)) from exc


def load_lab(name: str = DEFAULT_NAME) -> Lab:
    """The lab as ``up`` recorded it (for the API and ``xvmctl`` commands)."""
    lab = load_state(check_name(name))
    if lab is None:
        raise LabError(f"lab {name!r} does not exist", f"create it: xvmctl lab up --name {name}")
    return lab


class StateFile:
    """Writes state.json atomically after every change (ADDs run in threads)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.lock = threading.Lock()

    def save(self) -> None:
        with self.lock:
            path = self.lab.state_dir / STATE_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.lab.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)
