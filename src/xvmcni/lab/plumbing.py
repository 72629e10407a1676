"""Named network namespaces and the links between them, through pyroute2.

Every link change goes through pyroute2 with the socket opened *after* the calling
thread entered the target namespace (``inside``): a netlink socket belongs to the
namespace it was created in, so this is the cheap, fork-free way to talk to another
namespace (``IPRoute(netns=...)`` forks a helper and creates missing namespaces).
Nothing here ever touches a link in the root namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import IFF_UP
from xvmcni.dataplane.netns import entered, open_netns
from xvmcni.lab.names import NETNS_DIR, netns_path

SWITCH_BRIDGE = "br0"


class NetnsError(RuntimeError):
    """A namespace could not be created, entered or changed."""


def list_netns() -> list[str]:
    """Names of the named network namespaces (what ``ip netns list`` shows)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def create_netns(name: str) -> str:
    """Create the named namespace ``name`` and return its path; fails if it exists.

    pyroute2's ``netns.create`` does what iproute2 does (unshare in a child, bind-mount
    onto /run/netns/<name>), so the namespace outlives this process until removed.
    """
    if netns_exists(name):
        raise NetnsError(f"network namespace {name!r} already exists")
    try:
        pr_netns.create(name)
    except OSError as exc:
        raise NetnsError(f"cannot create network namespace {name!r}: {exc}") from exc
    return netns_path(name)


def remove_netns(name: str) -> bool:
    """Remove the named namespace; True if something was removed.

    The kernel frees the namespace and every link in it once the last reference
    (the bind mount, open fds, processes) goes, so links inside need no separate
    cleanup. A half-created entry (file without mount) is removed as well.
    """
    if not os.path.lexists(netns_path(name)):
        return False
    try:
        pr_netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise NetnsError(f"cannot remove network namespace {name!r}: {exc}") from exc
    return True


@contextlib.contextmanager
def inside(path: str) -> Iterator[None]:
    """The calling thread inside the namespace at ``path`` for the block.

    Sockets it creates belong there, and a child it starts inherits the namespace:
    no ``ip netns exec`` (which remounts /sys) and no Python between fork and exec
    (a ``preexec_fn`` is unsafe next to other threads).
    """
    try:
        fd = open_netns(path)
    except DataplaneError as exc:
        raise NetnsError(str(exc)) from exc
    try:
        with entered(fd):
            yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[Any]:
    """Yield an ``IPRoute`` bound to the namespace at ``path``; closed on exit.

    The calling thread stays inside the namespace for the whole block, so the
    socket is created and used in the same thread and namespace (pyroute2 sockets
    are per-thread; one used from another thread would silently open a new socket
    wherever that thread is).
    """
    with inside(path):
        ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(f"link {ifname!r} not found")
    return int(found[0])


def bring_up_lo(path: str) -> None:
    """``lo`` up: the runtime's loopback plugin would do this for a real pod."""
    with in_netns(path) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def setup_switch(path: str) -> None:
    """The underlay switch: one Linux bridge with multicast snooping off.

    With snooping on, the bridge forwards a multicast group only to ports it has
    seen an IGMP report on, and with no querier on this LAN those reports age out;
    off, it floods the VXLAN group to every host like a dumb switch, which is what
    flood-and-learn needs.
    """
    with in_netns(path) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        ipr.link("add", ifname=SWITCH_BRIDGE, kind="bridge", br_mcast_snooping=0)
        ipr.link("set", index=_index(ipr, SWITCH_BRIDGE), state="up")


def connect_host(switch_path: str, host_path: str, port: str,
                 address: ipaddress.IPv4Interface, mtu: int = 1500,
                 ifname: str = "eth0") -> None:
    """Cable a host to the switch: veth ``port`` on the bridge, ``ifname`` in the host.

    The peer is created directly inside the host namespace, so the link never
    exists in (or collides with a name in) any other namespace.
    """
    host_fd = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with in_netns(switch_path) as ipr:
            ipr.link("add", ifname=port, kind="veth", mtu=mtu,
                     peer={"ifname": ifname, "net_ns_fd": host_fd, "mtu": mtu})
            idx = _index(ipr, port)
            ipr.link("set", index=idx, master=_index(ipr, SWITCH_BRIDGE))
            ipr.link("set", index=idx, state="up")
    finally:
        os.close(host_fd)
    with in_netns(host_path) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        eth = _index(ipr, ifname)
        ipr.addr("add", index=eth, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=eth, state="up")


def add_default_route(path: str, gateway: ipaddress.IPv4Address) -> None:
    with in_netns(path) as ipr:
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(gateway))


def enable_forwarding(path: str) -> None:
    """IPv4 forwarding in the namespace, set explicitly: new namespaces inherit it
    from the root namespace on some kernels and not on others."""
    with inside(path):
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")


@dataclass
class LinkInfo:
    name: str
    kind: str
    up: bool
    mtu: int
    addresses: list[str]
    master: str = ""
    index: int = 0          # ifindex: a recreated link gets a new one


def links(path: str) -> list[LinkInfo]:
    """The links of the namespace at ``path`` with their IPv4 addresses (for status)."""
    with in_netns(path) as ipr:
        names: dict[int, str] = {}
        raw = []
        for msg in ipr.link("dump"):
            names[msg["index"]] = msg.get("ifname")
            info = msg.get("linkinfo")
            kind = info.get("kind") if info is not None else None
            raw.append((msg["index"], msg.get("ifname"), kind or "",
                        bool(msg["flags"] & IFF_UP), msg.get("mtu") or 0, msg.get("master")))
        addrs: dict[int, list[str]] = {}
        for msg in ipr.addr("dump", family=2):
            addrs.setdefault(msg["index"], []).append(
                f"{msg.get('address')}/{msg['prefixlen']}")
    return [LinkInfo(name, kind, up, mtu, addrs.get(idx, []),
                     names.get(master, "") if master else "", idx)
            for idx, name, kind, up, mtu, master in raw]
