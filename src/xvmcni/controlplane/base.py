"""The control-plane interface: how the hosts of a network learn about each other.

A control plane publishes this host's record and tells the network model which
peers exist (appear / change / disappear). The data path never depends on it
being reachable: models program what they were last told and keep it.
Implementations: ``multicast`` (no server: the kernel's VXLAN learns by itself).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Peer:
    """One host of the network, as the control plane knows it."""

    name: str
    underlay: ipaddress.IPv4Address | ipaddress.IPv6Address
    vtep_mac: str = ""
    pod_cidrs: tuple[str, ...] = field(default_factory=tuple)


# Called with the complete current peer set whenever it changes.
PeersChanged = Callable[[list[Peer]], None]


class ControlPlane(Protocol):
    # A short name for logs and status ("multicast", ...).
    kind: str

    def publish(self, me: Peer) -> None:
        """Make this host's record known to the others (and keep it alive)."""
        ...

    def peers(self) -> list[Peer]:
        """The other hosts, as last known."""
        ...

    def watch(self, on_change: PeersChanged) -> None:
        """Call ``on_change`` with the full peer set now and after every change."""
        ...

    def close(self) -> None: ...
