"""A pod's port on a bridge, guarded: its veth is created only after the network's
anti-spoofing table knows the port, and it may send only as itself from then on.

Both bridge-based models (``l2`` and ``routed``) plug pods this way; the order
matters and is easy to get wrong, so it lives here once.
"""

from __future__ import annotations

from typing import Any

from xvmcni.dataplane import antispoof, nft, veth
from xvmcni.dataplane.errors import DataplaneError


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
         bridge_index: int, side: veth.ContainerSide) -> veth.VethPair:
    """Admit the port before its veth exists (rules match names: there is no moment
    in which the pod could send as someone else), create or adopt the veth, and
    admit the MAC it really has if that is not the one expected."""
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
