"""What the bridge-based models (``l2`` and ``routed``) share: pods are veth pairs on
a bridge of the network, each port guarded by the network's anti-spoofing table.

A mixin: the model provides ``ipr`` (the host's netlink socket), ``_reaper``,
``settings.network`` and ``_side()`` (the container side of a pod's veth); this
class enters pods, plugs, unplugs, checks and repairs their ports.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from xvmcni.dataplane import antispoof, names, ownership, podport, veth
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import IFF_UP, get_link, rtnl
from xvmcni.dataplane.netns import open_netns
from xvmcni.dataplane.reaper import VethReaper
from xvmcni.models.base import IPInterface, Pod

log = logging.getLogger(__name__)


@dataclass
class PodNamespace:
    """An open container netns: its fd and a netlink socket inside it."""

    fd: int
    ipr: Any


@contextlib.contextmanager
def pod_namespace(netns: str) -> Iterator[PodNamespace]:
    """Open the container's netns and a netlink socket inside it; both closed after."""
    fd = open_netns(netns)
    try:
        with rtnl(fd) as pod_ipr:
            yield PodNamespace(fd, pod_ipr)
    finally:
        os.close(fd)


class BridgedPorts:
    ipr: Any
    _reaper: VethReaper | None
    settings: Any  # the model's settings; ``network`` names it

    def _side(self, pod: Pod, mtu: int, addresses: list[IPInterface],
              mac: str) -> veth.ContainerSide:
        raise NotImplementedError

    @property
    def guard_table(self) -> str:
        return ownership.guard_table_name(self.settings.network)

    def host_ifname(self, container_id: str, ifname: str) -> str:
        return names.host_veth_name(container_id, ifname)

    def enter(self, pod: Pod) -> contextlib.AbstractContextManager[PodNamespace]:
        return pod_namespace(pod.netns)

    def _admit(self, pod: Pod, mac: str, addresses: list[IPInterface]) -> None:
        podport.admit(self.guard_table, pod.host_ifname, mac, addresses)

    def _evict(self, host_ifname: str) -> None:
        podport.evict(self.guard_table, host_ifname)

    def _plug_port(self, pod_ns: Any, pod: Pod, bridge_index: int,
                   side: veth.ContainerSide) -> veth.VethPair:
        return podport.plug(self.guard_table, self.ipr, pod_ns.ipr, pod_ns.fd,
                            pod.host_ifname, bridge_index, side, self._reaper)

    def unplug(self, pod: Pod, owned: bool) -> None:
        podport.unplug(self.guard_table, self.ipr, self._reaper, self.settings.network,
                       pod.host_ifname, pod.ifname, pod.netns, owned)

    def _port_problems(self, pod_ns: Any, pod: Pod, bridge_name: str,
                       side: veth.ContainerSide) -> list[str]:
        """How the pod's veth and its admission differ from what ADD left."""
        bridge = get_link(self.ipr, bridge_name)
        found = veth.problems(self.ipr, pod_ns.ipr, pod.host_ifname,
                              bridge["index"] if bridge else -1, side)
        recorded = antispoof.members(self.guard_table)
        admitted = recorded.port(pod.host_ifname) if recorded is not None else None
        if admitted is None or not admitted.macs:
            found.append(f"{pod.host_ifname} is not admitted in nftables table "
                         f"bridge {self.guard_table}")
        else:
            have = {str(a) for _, a in admitted.addresses}
            missing = [str(a.ip) for a in side.addresses if str(a.ip) not in have]
            if missing:
                found.append(f"{pod.host_ifname} may not send from {', '.join(missing)} "
                             f"(nftables table bridge {self.guard_table})")
        return found

    def _replug(self, pods: list[tuple[Pod, list[IPInterface]]], bridge_index: int,
                bridge_name: str, mtu: int) -> list[Pod]:
        """Reconcile: admit running pods the table lost, re-plug the ones whose port is
        missing or down; never touch a working one. Returns the re-plugged pods."""
        replugged = []
        recorded = antispoof.members(self.guard_table)
        for pod, addresses in pods:
            if recorded is None or pod.host_ifname not in recorded.ports:
                self._admit_running(pod, addresses)
            link = get_link(self.ipr, pod.host_ifname)
            if link is not None and link.get("IFLA_MASTER") == bridge_index \
                    and link["flags"] & IFF_UP:
                if ownership.owner(link) is None:  # an earlier version's: mark it ours
                    ownership.mark(self.ipr, int(link["index"]),
                                   ownership.Mark(self.settings.network, pod.container_id,
                                                  pod.ifname))
                continue  # healthy: do not touch a running container
            side = self._side(pod, mtu, addresses, "")
            with self.enter(pod) as pod_ns:
                veth.ensure(self.ipr, pod_ns.ipr, pod_ns.fd, pod.host_ifname, bridge_index,
                            side)
            replugged.append(pod)
            log.info("re-plugged %s/%s into %s", pod.container_id[:12], pod.ifname,
                     bridge_name)
        return replugged

    def _admit_running(self, pod: Pod, addresses: list[IPInterface]) -> None:
        """Admit a running pod by the MAC its interface has (an earlier version's pod,
        or a table that was lost)."""
        try:
            with self.enter(pod) as pod_ns:
                link = get_link(pod_ns.ipr, pod.ifname)
        except DataplaneError as exc:
            log.warning("cannot read the MAC of %s/%s: %s", pod.container_id[:12],
                        pod.ifname, exc)
            return
        if link is not None:
            self._admit(pod, str(link.get("IFLA_ADDRESS")), addresses)

    def _remove_orphans(self, bridge_name: str, known: set[str]) -> list[str]:
        if get_link(self.ipr, bridge_name) is None:
            return []
        return podport.remove_orphans(self.guard_table, self.ipr, self.settings.network,
                                      known)
