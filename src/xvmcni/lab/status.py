"""What exists of a lab right now: its state file, its namespaces with their links
(read live from the kernel), its files and its agents."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from xvmcni.dataplane import ownership, routes
from xvmcni.dataplane.netlink import link_kind
from xvmcni.lab import plumbing
from xvmcni.lab.agents import AgentHealth, agent_health
from xvmcni.lab.model import Lab, load_state
from xvmcni.lab.names import (
    LAB_ROOT,
    NAME_RE,
    LabError,
    check_name,
    is_lab_netns,
    lab_dir,
    lab_of_netns,
    netns_order,
    netns_path,
)

# The route protocol the lab's routed networks use (the model's default, as xcluster-cni).
ROUTE_PROTOCOL = 202
FLOOD_MAC = "00:00:00:00:00:00"


@dataclass
class NsStatus:
    netns: str
    exists: bool
    links: list[plumbing.LinkInfo] = field(default_factory=list)
    error: str = ""


@dataclass
class HostPeers:
    """What a host's kernel holds for its peers: our routes (routed model), and the
    permanent neighbour and FDB entries on our VXLAN devices; ``flood`` lists the
    remote hosts an l2 network floods to by unicast (all-zeros FDB entries)."""

    host: str
    routes: list[str] = field(default_factory=list)   # "10.244.2.0/24 via 10.244.2.0"
    neighbours: int = 0
    fdb: int = 0
    flood: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class LabStatus:
    name: str
    lab: Lab | None                    # from the state file
    state_error: str = ""
    namespaces: list[NsStatus] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    agents: list[AgentHealth] = field(default_factory=list)
    peers: list[HostPeers] = field(default_factory=list)


def lab_netns(name: str) -> list[str]:
    """Namespaces that belong to lab ``name`` by their name, whoever made them."""
    return [ns for ns in plumbing.list_netns() if is_lab_netns(name, ns)]


def known_labs() -> list[str]:
    """Labs that have a state directory or at least one namespace named like a lab's."""
    names: set[str] = set()
    if LAB_ROOT.is_dir():
        names.update(p.name for p in LAB_ROOT.iterdir() if p.is_dir() and NAME_RE.match(p.name))
    for ns in plumbing.list_netns():
        lab = lab_of_netns(ns)
        if lab:
            names.add(lab)
    return sorted(names)


def lab_status(name: str) -> LabStatus:
    """What exists of lab ``name`` right now: state file, namespaces with their
    links and addresses (read live from the kernel), files, agents."""
    check_name(name)
    status = LabStatus(name=name, lab=None)
    try:
        status.lab = load_state(name)
    except LabError as exc:
        status.state_error = str(exc)
    expected = set(status.lab.netns_created) if status.lab else set()
    present = set(lab_netns(name))
    for ns in sorted(expected | present, key=netns_order):
        entry = NsStatus(netns=ns, exists=ns in present)
        if entry.exists:
            try:
                entry.links = plumbing.links(netns_path(ns))
            except (plumbing.NetnsError, OSError) as exc:
                entry.error = str(exc)
        status.namespaces.append(entry)
    if lab_dir(name).is_dir():
        status.files = sorted(str(p) for p in lab_dir(name).rglob("*") if p.is_file())
    status.agents = agent_health(name, status.lab)
    if status.lab is not None and (status.lab.model == "routed"
                                   or status.lab.control == "etcd"):
        present_hosts = [h for h in status.lab.hosts if h.netns in present]
        status.peers = [programmed_peers(h.name, h.netns_path) for h in present_hosts]
    return status


def programmed_peers(host: str, path: str) -> HostPeers:
    """Read from the host's kernel: routes carrying our protocol number, and the
    permanent neighbour/FDB entries of the VXLAN devices xvm-cni marked as its own."""
    found = HostPeers(host)
    try:
        with plumbing.in_netns(path) as ipr:
            vxlans = [link for link in ipr.get_links()
                      if link_kind(link) == "vxlan" and ownership.owner(link) is not None]
            indexes = {int(link["index"]) for link in vxlans}
            for family in (socket.AF_INET, socket.AF_INET6):
                for route in ipr.route("dump", family=family):
                    if route["proto"] == ROUTE_PROTOCOL and route.get("RTA_GATEWAY"):
                        found.routes.append(f"{route.get('RTA_DST')}/{route['dst_len']} "
                                            f"via {route.get('RTA_GATEWAY')}")
            for index in indexes:
                found.neighbours += len(routes.permanent_neighbours(ipr, index))
                entries = routes.permanent_fdb(ipr, index)
                found.fdb += len(entries)
                found.flood += sorted(str(e.dst) for e in entries if e.mac == FLOOD_MAC)
    except (plumbing.NetnsError, OSError) as exc:
        found.error = str(exc)
    return found
