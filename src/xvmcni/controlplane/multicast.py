"""The embedded default: no server. Hosts find each other through the VXLAN
device's flood-and-learn over a multicast group on ``hostInterface``, in the
kernel, so there is nothing to publish and no peer list to program.

Works on one LAN whose switches carry multicast; clouds and routed underlays do
not (see the README's troubleshooting section).
"""

from __future__ import annotations

from xvmcni.controlplane.base import Peer, PeersChanged


class MulticastControlPlane:
    kind = "multicast"

    def publish(self, me: Peer) -> None:
        return None  # the kernel announces us by flooding; nothing to write anywhere

    def peers(self) -> list[Peer]:
        return []  # learned by the kernel per MAC, not known to us as hosts

    def watch(self, on_change: PeersChanged) -> None:
        on_change([])

    def close(self) -> None:
        return None
