"""``xvmctl ipam rebuild``: a new attachment registry (``ipam.db``) for one network,
from what the host itself shows, when the old one is damaged.

The evidence: every host-side veth on the network's bridge belongs to one attachment.
Its peer (IFLA_LINK, in the namespace IFLA_LINK_NETNSID names) is the container's
interface: its name is the CNI_IFNAME, its IPv4 addresses are the ones the registry
handed out, and its namespace is found among /run/netns, /var/run/netns and the
processes' namespaces. What that cannot tell is the container ID: the device name
is a hash of (containerID, ifname). ADD marks the device with the alias
``xvm-cni:<network>:<containerID>:<ifname>``: where it is there (and hashes to the
device's name) the ID comes from it; a device made before the marks has none, and its
attachment is recorded as ``rebuilt:<device>``,
holding its addresses so they are never handed out twice, and takes its real ID
from the runtime's next DEL or GC naming the container that owns the device.

The damaged file is kept as ``ipam.db.corrupt-<UTC time>``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import NetlinkError

from xvmcni import networks
from xvmcni.dataplane import names
from xvmcni.dataplane.netlink import get_link, ipv4_addresses, link_kind, rtnl
from xvmcni.errors import CniError
from xvmcni.runtime import LOCK_TIMEOUT, REGISTRY_FILE
from xvmcni.state.attachments import (
    UNNAMED_PREFIX,
    Attachment,
    AttachmentRegistry,
    Given,
)
from xvmcni.state.locks import network_lock
from xvmcni.state.netstate import CONFIG_FILE

ALIAS_PREFIX = "xvm-cni"
NETNS_DIRS = (Path("/run/netns"), Path("/var/run/netns"))
NSID_NOT_ASSIGNED = -1


class RebuildError(Exception):
    """Why the registry cannot (or need not) be rebuilt."""


@dataclass
class Found:
    """One attachment as the host shows it."""

    host_ifname: str
    container_id: str
    ifname: str
    netns: str
    addresses: list[ipaddress.IPv4Interface]
    mac: str           # recorded as requested: it is not the one derived from the address
    named_by: str      # "alias", or "" when the container ID is unknown


@dataclass
class Report:
    network: str
    registry: str
    kept_as: str = ""
    rebuilt: list[Found] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self),
                "rebuilt": [{**dataclasses.asdict(f), "addresses": list(map(str, f.addresses))}
                            for f in self.rebuilt]}


def parse_alias(alias: str, network: str, host_ifname: str) -> tuple[str, str] | None:
    """(containerID, ifname) from ``xvm-cni:<network>:<containerID>:<ifname>``, when
    it is this network's and really names this device."""
    prefix = f"{ALIAS_PREFIX}:{network}:"
    if not alias.startswith(prefix):
        return None
    container_id, sep, ifname = alias[len(prefix):].rpartition(":")
    if not sep or not container_id or not ifname:
        return None
    if names.host_veth_name(container_id, ifname) != host_ifname:
        return None  # copied or stale: it does not describe this device
    return container_id, ifname


def _namespace_paths() -> list[str]:
    """Every network namespace path worth trying, named bind mounts first (they outlive
    processes, and are what runtimes pass as CNI_NETNS)."""
    paths: list[str] = []
    for directory in NETNS_DIRS:
        if directory.is_dir():
            paths.extend(str(p) for p in sorted(directory.iterdir()))
    proc = Path("/proc")
    paths.extend(f"/proc/{p.name}/ns/net" for p in proc.iterdir() if p.name.isdigit())
    return paths


def namespaces_by_nsid(ipr: Any) -> dict[int, str]:
    """The host's ids of other network namespaces, each with a path that opens it."""
    found: dict[int, str] = {}
    seen: set[tuple[int, int]] = set()
    for path in _namespace_paths():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # a process that just exited, or not a namespace file
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            nsid = _nsid(ipr, fd)
        finally:
            os.close(fd)
        if nsid is not None:
            found.setdefault(nsid, path)
    return found


def _nsid(ipr: Any, fd: int) -> int | None:
    """The host's id for the namespace ``fd``; None when it has none or is none."""
    try:
        answer = ipr.get_netnsid(fd=fd)
    except (NetlinkError, OSError):
        return None  # not a network namespace (a stray file under /run/netns)
    nsid = answer.get("nsid") if isinstance(answer, dict) else None
    return nsid if isinstance(nsid, int) and nsid != NSID_NOT_ASSIGNED else None


def derived_mac(addresses: list[ipaddress.IPv4Interface]) -> str:
    if not addresses:
        return ""
    return "0a:58:" + ":".join(f"{b:02x}" for b in addresses[0].ip.packed)


def gather(network: networks.Network, report: Report) -> list[Found]:
    """Every attachment the host shows on ``network``'s bridge."""
    settings = network.l2
    found: list[Found] = []
    with rtnl() as ipr:
        bridge = get_link(ipr, settings.bridge_name)
        if bridge is None:
            return found  # no bridge: no container of this network on this host
        by_nsid = namespaces_by_nsid(ipr)
        for link in ipr.get_links():
            name = str(link.get("IFLA_IFNAME"))
            if link.get("IFLA_MASTER") != bridge["index"] or link_kind(link) != "veth" \
                    or not name.startswith(names.HOST_VETH_PREFIX):
                continue
            one = _inspect(link, name, network, by_nsid, report)
            if one is not None:
                found.append(one)
    return found


def _inspect(link: Any, name: str, network: networks.Network, by_nsid: dict[int, str],
             report: Report) -> Found | None:
    nsid, peer_index = link.get("IFLA_LINK_NETNSID"), link.get("IFLA_LINK")
    netns = by_nsid.get(nsid) if isinstance(nsid, int) else None
    if netns is None or not isinstance(peer_index, int):
        report.skipped.append(f"{name}: its container's network namespace is not under "
                              f"{' or '.join(map(str, NETNS_DIRS))} nor any process's")
        return None
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl(fd) as pod_ipr:
            peer = pod_ipr.link("get", index=peer_index)[0]
            held = ipv4_addresses(pod_ipr, peer_index)
    finally:
        os.close(fd)
    ifname = str(peer.get("IFLA_IFNAME"))
    addresses = [ipaddress.IPv4Interface(f"{a}/{plen}") for a, plen in held
                 if ipaddress.IPv4Address(a) in network.l2.subnet]
    mac = str(peer.get("IFLA_ADDRESS") or "").lower()
    alias = str(link.get("IFLA_IFALIAS") or "")
    named = parse_alias(alias, network.name, name)
    container_id, ifname = named if named else (UNNAMED_PREFIX + name, ifname)
    return Found(host_ifname=name, container_id=container_id, ifname=ifname, netns=netns,
                 addresses=addresses, mac="" if mac == derived_mac(addresses) else mac,
                 named_by="alias" if named else "")


def _readable(path: Path) -> bool:
    try:
        with AttachmentRegistry(path, timeout=LOCK_TIMEOUT) as registry:
            registry.all()
            with registry.db.read("checking") as conn:
                return str(conn.execute("PRAGMA quick_check").fetchone()[0]) == "ok"
    except CniError:
        return False


def _set_aside(path: Path, tag: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = f"{path}.{tag}-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, f"{kept}{suffix}")
    return kept


def rebuild(network_name: str, data_dir: Path, force: bool = False) -> Report:
    state_dir = data_dir / network_name
    config_path = state_dir / CONFIG_FILE
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise RebuildError(f"cannot read the network's config {config_path}: {exc}") from exc
    try:
        network = networks.parse(raw)
    except CniError as err:
        raise RebuildError(f"{config_path} is not a valid network config: {err}") from err
    if network.state_dir != state_dir:
        raise RebuildError(f"{config_path} names network {network.name!r} in "
                           f"{network.state_dir}, not {state_dir}")
    path = state_dir / REGISTRY_FILE
    report = Report(network.name, str(path))
    with network_lock(state_dir, LOCK_TIMEOUT):
        if path.exists():
            healthy = _readable(path)
            if healthy and not force:
                raise RebuildError(f"{path} is readable and passes sqlite's check: nothing "
                                   "to rebuild (--force replaces it anyway)")
            report.kept_as = _set_aside(path, "old" if healthy else "corrupt")
        found = gather(network, report)
        with AttachmentRegistry(path, timeout=LOCK_TIMEOUT) as registry:
            for one in found:
                record = Attachment(container_id=one.container_id, ifname=one.ifname,
                                    netns=one.netns, host_ifname=one.host_ifname,
                                    mac=one.mac, created=time.time())
                try:
                    registry.attach(record, Given(tuple(one.addresses)))
                except CniError as err:
                    report.skipped.append(f"{one.host_ifname}: {err}")
                    continue
                report.rebuilt.append(one)
    return report


def render(report: Report) -> str:
    lines = [f"network {report.network}: {report.registry} rebuilt with "
             f"{len(report.rebuilt)} attachment(s)"]
    if report.kept_as:
        lines.append(f"  the previous file is kept as {report.kept_as}")
    for one in report.rebuilt:
        who = one.container_id if one.named_by else "container ID unknown (recorded as " \
            f"{one.container_id} until the runtime's next DEL or GC names it)"
        lines.append(f"  {one.host_ifname}  {one.ifname}  "
                     f"{', '.join(map(str, one.addresses)) or '(no address)'}  "
                     f"{one.netns}  {who}")
    for why in report.skipped:
        lines.append(f"  not rebuilt: {why}")
    return "\n".join(lines)
