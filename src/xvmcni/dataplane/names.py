"""Deterministic names and MAC addresses, so every host and every restart agree.

Flannel's recurring bug was a VTEP MAC that changed on restart and left stale
entries behind; everything here is derived, never random.
"""

from __future__ import annotations

import hashlib

HOST_VETH_PREFIX = "xvm"
# Locally administered unicast OUI-like prefix; 0x78 0x76 = "xv".
_MAC_PREFIX = (0x02, 0x78, 0x76)


def host_veth_name(container_id: str, ifname: str) -> str:
    """Host end of a container's veth: "xvm" + 12 hex digits (15 chars, IFNAMSIZ-1).

    Derived from (containerID, ifname) so DEL and GC find it without the netns.
    """
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[:12]


def gateway_mac(vxlan_id: int) -> str:
    """The anycast gateway's MAC: identical on every host of the network.

    The VNI fills the last three octets, so an operator reading an FDB or ARP
    table sees at once which network a gateway MAC belongs to.
    """
    octets = (*_MAC_PREFIX, (vxlan_id >> 16) & 0xFF, (vxlan_id >> 8) & 0xFF, vxlan_id & 0xFF)
    return ":".join(f"{o:02x}" for o in octets)
