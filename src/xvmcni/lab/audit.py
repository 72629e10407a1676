"""What a lab's hosts really hold of one network, against the pods that should live.

Read from the kernel and the store, never from the plugin's answers: each host's
links (our veths by their ``xvm-cni:<network>:<cid>:<ifname>`` alias, retired veths
by device group, the network's bridge and VXLAN by their mark), its nftables tables,
its attachment registry (``<dataDir>/<network>/ipam.db``) and every live pod's own
``eth0`` addresses. ``audit`` lists each difference as a problem, by kind.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xvmcni.dataplane import antispoof, nft, ownership
from xvmcni.dataplane.netlink import link_kind
from xvmcni.dataplane.reaper import RETIRED_GROUP
from xvmcni.lab import plumbing
from xvmcni.state.attachments import AttachmentRegistry

REGISTRY_FILE = "ipam.db"
SETTLE_TIMEOUT = 5.0      # the agent's reaper deletes retired veths within ~50 ms


@dataclass(frozen=True)
class LivePod:
    """A pod that should be attached: what its ADD answered."""

    name: str               # "h2-p7"
    host: str               # "h2"
    container_id: str
    ifname: str
    netns_path: str
    address: str            # "10.244.3.9/16"
    mac: str = ""           # the sandbox interface's MAC in the ADD result

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass
class HostView:
    """One host's share of the network, as the kernel and the store have it."""

    host: str
    veths: dict[str, tuple[str, str]] = field(default_factory=dict)  # host ifname -> (cid, if)
    retired: list[str] = field(default_factory=list)   # links in RETIRED_GROUP
    devices: list[str] = field(default_factory=list)   # bridge/VXLAN marked as the network's
    tables: set[tuple[str, str]] = field(default_factory=set)    # the network's nft tables
    registry: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # -> addresses
    registry_ifnames: dict[tuple[str, str], str] = field(default_factory=dict)
    # The anti-spoofing table: port -> (MACs, addresses) it admits; None: no table.
    admitted: dict[str, tuple[set[str], set[str]]] | None = None


def our_tables(network: str) -> set[tuple[str, str]]:
    """Every nft table that could be this network's (also an earlier version's name)."""
    names = (ownership.table_name(network), ownership.guard_table_name(network),
             ownership.legacy_table_name(network))
    return {(family, name) for family in ("bridge", "ip", "inet") for name in names}


def expected_tables(network: str, ip_masq: bool = False) -> set[tuple[str, str]]:
    """The tables a host with pods of the network has: gateway isolation and
    anti-spoofing (bridge family), masquerading only with ipMasq."""
    wanted = {("bridge", ownership.table_name(network)),
              ("bridge", ownership.guard_table_name(network))}
    return wanted | ({("ip", ownership.table_name(network))} if ip_masq else set())


def host_view(host: str, netns_path: str, network: str, data_dir: str) -> HostView:
    view = HostView(host)
    with plumbing.in_netns(netns_path) as ipr:
        for link in ipr.get_links():
            name = str(link.get("IFLA_IFNAME"))
            if link.get("IFLA_GROUP") == RETIRED_GROUP:
                view.retired.append(name)
            mark = ownership.owner(link)
            if mark is None or mark.network != network:
                continue
            if mark.container_id and link_kind(link) == "veth":
                view.veths[name] = (mark.container_id, mark.ifname)
            else:
                view.devices.append(name)
        # A libnftables context per call: it lists the namespace this thread is in.
        view.tables = nft.list_tables() & our_tables(network)
        members = antispoof.members(ownership.guard_table_name(network))
    if members is not None:
        view.admitted = {}
        for port in members.ports:
            view.admitted[port] = (set(), set())
        for port, mac in members.macs:
            view.admitted.setdefault(port, (set(), set()))[0].add(mac.lower())
        for port, mac, address in members.addresses:
            if address.version == 6 and address.is_link_local:
                continue  # the pod's own fe80:: address, derived from its MAC: by design
            view.admitted.setdefault(port, (set(), set()))[1].add(f"{mac.lower()} {address}")
    db = Path(data_dir) / network / REGISTRY_FILE
    if db.exists():  # opening it would create it: a host that never joined has none
        with AttachmentRegistry(db) as registry:
            for attachment in registry.all():
                view.registry[attachment.key] = [str(a) for a in attachment.addresses]
                view.registry_ifnames[attachment.key] = attachment.host_ifname
    return view


def settled_view(host: str, netns_path: str, network: str, data_dir: str,
                 timeout: float = SETTLE_TIMEOUT) -> tuple[HostView, float]:
    """``host_view`` once no retired veth is left (or ``timeout`` passed); the view
    and the seconds waited."""
    began = time.monotonic()
    while True:
        view = host_view(host, netns_path, network, data_dir)
        waited = time.monotonic() - began
        # The reaper deletes retired veths first and evicts their anti-spoofing
        # elements right after: settled once neither is left (a real leak still
        # shows when ``timeout`` has passed).
        evicting = view.admitted is not None and bool(set(view.admitted) - set(view.veths))
        if not (view.retired or evicting) or waited > timeout:
            return view, waited
        time.sleep(0.05)


def pod_addresses(netns_path: str, ifname: str) -> list[str]:
    """The IPv4 addresses (with prefix) on ``ifname`` inside the pod's netns."""
    for link in plumbing.links(netns_path):
        if link.name == ifname:
            return list(link.addresses)
    return []


@dataclass
class Audit:
    """Every difference found, by kind; empty lists mean the invariant holds."""

    duplicates: list[str] = field(default_factory=list)        # one address, two pods
    leaked_veths: list[str] = field(default_factory=list)      # ours, no live pod
    missing_veths: list[str] = field(default_factory=list)     # live pod without its veth
    retired_left: list[str] = field(default_factory=list)      # reaper did not finish
    leaked_devices: list[str] = field(default_factory=list)    # bridge/VXLAN on a host w/o pods
    leaked_tables: list[str] = field(default_factory=list)     # tables that should not exist
    missing_tables: list[str] = field(default_factory=list)
    registry: list[str] = field(default_factory=list)          # store differs from live pods
    addresses: list[str] = field(default_factory=list)         # pod's eth0 differs from ADD
    admitted: list[str] = field(default_factory=list)          # anti-spoofing members differ

    KINDS = ("duplicates", "leaked_veths", "missing_veths", "retired_left", "leaked_devices",
             "leaked_tables", "missing_tables", "registry", "addresses", "admitted")

    def counts(self) -> dict[str, int]:
        return {kind: len(getattr(self, kind)) for kind in self.KINDS}

    @property
    def ok(self) -> bool:
        return not any(self.counts().values())

    def problems(self) -> list[str]:
        return [f"{kind}: {item}" for kind in self.KINDS for item in getattr(self, kind)]


def duplicates(owners: Iterable[tuple[str, str]]) -> list[str]:
    """(address, owner) pairs -> one line per address held by more than one owner."""
    held: dict[str, list[str]] = {}
    for address, who in owners:
        held.setdefault(address.split("/")[0], []).append(who)
    return [f"{addr} held by {', '.join(sorted(who))}" for addr, who in sorted(held.items())
            if len(who) > 1]


def _admitted_problems(view: HostView, live: dict[tuple[str, str], LivePod]) -> list[str]:
    """The anti-spoofing table admits each live pod's port with exactly its MAC and
    address, and no other port (a stale member is a leak, and lets a later pod with
    that port name send as the old one)."""
    if view.admitted is None:
        return []  # no table: leaked_tables/missing_tables say whether that is wrong
    found = []
    ports = {name: live[key] for name, key in view.veths.items() if key in live}
    for port in sorted(set(view.admitted) - set(ports)):
        found.append(f"{view.host}: port {port} admitted, no live pod has it")
    for port, pod in sorted(ports.items()):
        macs, addresses = view.admitted.get(port, (set(), set()))
        want_macs = {pod.mac.lower()} if pod.mac else macs
        want = {f"{m} {pod.ip}" for m in want_macs}
        if port not in view.admitted:
            found.append(f"{view.host}: {pod.name}'s port {port} is not admitted")
        elif macs != want_macs or addresses != want:
            found.append(f"{view.host}: {pod.name}'s port {port} admits {sorted(macs)} / "
                         f"{sorted(addresses)}, expected {sorted(want)}")
    return found


def audit(network: str, views: Sequence[HostView], pods: Sequence[LivePod],
          kernel_addresses: dict[str, list[str]], ip_masq: bool = False) -> Audit:
    """Compare the hosts' views with the pods that should live (``pods``);
    ``kernel_addresses``: pod name -> addresses on its eth0 (``pod_addresses``)."""
    found = Audit()
    found.duplicates += [f"ADD results: {line}" for line in
                         duplicates((p.address, p.name) for p in pods)]
    found.duplicates += [f"registries: {line}" for line in duplicates(
        (addr, f"{v.host}/{cid}") for v in views for (cid, _), addrs in v.registry.items()
        for addr in addrs)]
    found.duplicates += [f"pod interfaces: {line}" for line in duplicates(
        (addr, name) for name, addrs in kernel_addresses.items() for addr in addrs)]
    wanted_tables = expected_tables(network, ip_masq)
    for view in views:
        mine = [p for p in pods if p.host == view.host]
        keys = {(p.container_id, p.ifname): p for p in mine}
        per_key = Counter(view.veths.values())
        for ifname, key in sorted(view.veths.items()):
            if key not in keys:
                found.leaked_veths.append(f"{view.host}: {ifname} of {key[0]}/{key[1]}")
            elif per_key[key] > 1:
                found.leaked_veths.append(f"{view.host}: {ifname} is one of {per_key[key]} "
                                          f"veths of {key[0]}/{key[1]}")
        for key, pod in sorted(keys.items()):
            if per_key[key] == 0:
                found.missing_veths.append(f"{view.host}: no veth for {pod.name} ({key[0]})")
        found.retired_left += [f"{view.host}: {name}" for name in view.retired]
        if not mine:
            found.leaked_devices += [f"{view.host}: {name}" for name in view.devices]
        expected = wanted_tables if mine else set()
        found.leaked_tables += [f"{view.host}: {family} {name}"
                                for family, name in sorted(view.tables - expected)]
        found.missing_tables += [f"{view.host}: {family} {name}"
                                 for family, name in sorted(expected - view.tables)]
        for key in sorted(set(view.registry) - set(keys)):
            found.registry.append(f"{view.host}: {key[0]}/{key[1]} recorded, no live pod")
        for key, pod in sorted(keys.items()):
            recorded = view.registry.get(key)
            if recorded is None:
                found.registry.append(f"{view.host}: {pod.name} ({key[0]}) not recorded")
            elif recorded != [pod.address]:
                found.registry.append(f"{view.host}: {pod.name} recorded with {recorded}, "
                                      f"ADD answered {pod.address}")
        found.admitted += _admitted_problems(view, keys)
    for pod in pods:
        have = kernel_addresses.get(pod.name, [])
        if have != [pod.address]:
            found.addresses.append(f"{pod.name}: eth0 has {have or 'no address'}, "
                                   f"ADD answered {pod.address}")
    return found
