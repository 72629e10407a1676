"""Which network a kernel object belongs to.

xvm-cni changes or deletes only what it created. Every device it creates carries
its mark in the interface alias (``ip link`` shows it as ``alias``):

    xvm-cni:<network>                         bridge, VXLAN device
    xvm-cni:<network>:<containerID>:<ifname>  a container's host-side veth

nftables tables are marked by name instead (nft 1.0's JSON interface drops table
comments): ``xvm_<network, letters and digits>_<8 hex of sha256(network)>``, so two
networks whose names differ only in punctuation never share a table.

The kernel keeps an alias only through ``link set`` (not on ``link add``), so a
device is marked right after creation; a crash in between leaves an unmarked
device that we never touch again (the operator removes it; ``xvmctl doctor``
will list it).
"""

from __future__ import annotations

import errno
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane.netlink import kernel_error

PREFIX = "xvm-cni"
# IFALIASZ is 256 including the terminating NUL.
ALIAS_MAX = 255
_UNSAFE = re.compile(r"[^A-Za-z0-9]")
# nft identifiers may be long, but a short name reads better in `nft list tables`.
_TABLE_NAME_CHARS = 24


@dataclass(frozen=True)
class Mark:
    network: str
    container_id: str = ""
    ifname: str = ""

    def alias(self) -> str:
        if not self.container_id:
            return f"{PREFIX}:{self.network}"
        full = f"{PREFIX}:{self.network}:{self.container_id}:{self.ifname}"
        # A container ID too long for the alias still gets the network's mark.
        return full if len(full.encode()) <= ALIAS_MAX else f"{PREFIX}:{self.network}"


def parse_alias(alias: str | None) -> Mark | None:
    """The mark in an alias, or None for a device that is not ours (or not marked)."""
    if not alias or not alias.startswith(PREFIX + ":"):
        return None
    rest = alias[len(PREFIX) + 1:]
    # Network names hold no ':' (config validation), so the first field is the name;
    # the container ID may hold anything but the last ':' separates the ifname.
    network, sep, tail = rest.partition(":")
    if not sep:
        return Mark(network)
    container_id, _, ifname = tail.rpartition(":")
    return Mark(network, container_id, ifname)


def owner(link: Any) -> Mark | None:
    """The mark of a link as pyroute2 returns it."""
    if link is None:
        return None
    alias = link.get("IFLA_IFALIAS")
    return parse_alias(str(alias)) if alias else None


def owned_by(link: Any, network: str) -> bool:
    mark = owner(link)
    return mark is not None and mark.network == network


def mark(ipr: Any, index: int, what: Mark) -> None:
    """Put ``what`` on the link with ``index``."""
    try:
        ipr.link("set", index=index, ifalias=what.alias())
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return  # gone meanwhile: nothing left to mark
        raise kernel_error(f"mark link {index} as {what.alias()}", exc) from exc


def table_name(network: str) -> str:
    """This network's nftables table name, unique per exact network name."""
    digest = hashlib.sha256(network.encode()).hexdigest()[:8]
    return f"xvm_{_UNSAFE.sub('', network)[:_TABLE_NAME_CHARS]}_{digest}"


def guard_table_name(network: str) -> str:
    """The network's anti-spoofing table (bridge family), beside its gateway filter."""
    return "xvmg" + table_name(network)[3:]


def legacy_table_name(network: str) -> str:
    """The name versions before the ownership marks used (shared by 'pod-net',
    'pod.net' and 'pod_net'); only ever removed by a network whose own state shows
    it used it."""
    return "xvm_" + re.sub(r"[^A-Za-z0-9_]", "_", network)
