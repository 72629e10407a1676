"""A pod's port on a bridge, guarded: its veth is created only after the network's
anti-spoofing table knows the port, and it may send only as itself from then on.

Both bridge-based models (``l2`` and ``routed``) plug pods this way; the order
matters and is easy to get wrong, so it lives here once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from xvmcni.dataplane import antispoof, nft, ownership, veth
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import get_link, link_kind, rtnl
from xvmcni.dataplane.netns import netns_gone, open_netns
from xvmcni.dataplane.reaper import VethReaper

log = logging.getLogger(__name__)


def admit(table: str, host_ifname: str, mac: str,
          addresses: list[veth.IPInterface]) -> None:
    """Let the port send from ``mac`` and ``addresses``; with no MAC known yet, only
    register the port (it then drops everything until its MAC is admitted)."""
    try:
        batch = antispoof.admit_batch(table, host_ifname, mac,
                                      [a.ip for a in addresses] if mac else [])
    except ValueError as exc:  # a MAC or address the filter cannot admit
        raise DataplaneError(DataplaneError.INVALID, str(exc)) from exc
    nft.run_batch(batch)


def evict(table: str, host_ifname: str) -> None:
    """Forget whatever the table holds for the port (it is gone, or about to be)."""
    recorded = antispoof.members(table)
    if recorded is not None and host_ifname in recorded.ports:
        nft.run_batch(antispoof.evict_recorded_batch(table, recorded, host_ifname))


def plug(table: str, host_ipr: Any, pod_ipr: Any, pod_fd: int, host_ifname: str,
         bridge_index: int, side: veth.ContainerSide,
         reaper: VethReaper | None = None) -> veth.VethPair:
    """Admit the port before its veth exists (rules match names: there is no moment
    in which the pod could send as someone else), create or adopt the veth, and
    admit the MAC it really has if that is not the one expected."""
    if reaper is not None:
        reaper.settle(table, host_ifname)  # an eviction queued by an earlier DEL
    wanted = side.mac or veth.container_mac(side.addresses)
    admit(table, host_ifname, wanted, side.addresses)
    pair = veth.ensure(host_ipr, pod_ipr, pod_fd, host_ifname, bridge_index, side)
    if pair.container_mac.lower() != wanted.lower():
        # A repeated ADD kept another MAC, or the kernel chose one: admit what the
        # interface really has, and only that.
        if wanted:
            nft.run_batch(antispoof.evict_batch(table, host_ifname, wanted,
                                                [a.ip for a in side.addresses],
                                                keep_port=True))
        admit(table, host_ifname, pair.container_mac, side.addresses)
    return pair


def unplug(table: str, host_ipr: Any, reaper: VethReaper | None, network: str,
           host_ifname: str, ifname: str, netns: str, owned: bool) -> None:
    """Remove a pod's port: its veth (retired for the reaper in the agent) and its
    anti-spoofing elements; gone already is success. A device without our mark is
    this attachment's only when we hold its record (``owned``: made by an earlier
    xvm-cni); one with another network's mark never is."""
    if reaper is not None:
        link = get_link(host_ipr, host_ifname)
        mark = ownership.owner(link)
        if link is not None and (mark.network == network if mark else owned) \
                and reaper.retire(host_ipr, host_ifname):
            reaper.evict_later(table, host_ifname)
            return  # down and queued: the reaper deletes the pair off the request path
    outcome = veth.remove_host_end(host_ipr, host_ifname, network, owned)
    if outcome == veth.FOREIGN:
        log.warning("not removing %s: it does not belong to network %s", host_ifname,
                    network)
        return
    evict(table, host_ifname)
    if outcome == veth.REMOVED or not owned or not netns:
        return  # the container end went with the host end (or is not ours to touch)
    # The host end is gone but a container end may remain (an interrupted ADD).
    try:
        if netns_gone(netns):
            return
        fd = open_netns(netns)
    except OSError as exc:
        log.warning("cannot tell whether %s still exists (%s): leaving its interfaces "
                    "alone", netns, exc)
        return
    try:
        with rtnl(fd) as pod_ipr:
            veth.remove_container_end(pod_ipr, ifname)
    finally:
        os.close(fd)


def remove_orphans(table: str, host_ipr: Any, network: str, known: set[str]) -> list[str]:
    """Remove what no recorded container explains: host veths marked as this
    network's containers' (left by a crash in the middle of an ADD), and ports still
    admitted in the anti-spoofing table (an agent killed with evictions queued).
    Returns the veths removed. Unmarked devices are never touched."""
    removed = []
    for link in host_ipr.get_links():
        name = str(link.get("IFLA_IFNAME"))
        mark = ownership.owner(link)
        if link_kind(link) == "veth" and mark is not None and mark.network == network \
                and mark.container_id and name not in known:
            log.info("GC: removing orphan port %s", name)
            veth.remove_host_end(host_ipr, name, network, False)
            removed.append(name)
    recorded = antispoof.members(table)
    stale = sorted(p for p in recorded.ports if p not in known) if recorded else []
    if recorded is not None and stale:
        log.info("GC: evicting %d ports no container explains from %s", len(stale), table)
        nft.run_batch([cmd for port in stale
                       for cmd in antispoof.evict_recorded_batch(table, recorded, port)])
    return removed
