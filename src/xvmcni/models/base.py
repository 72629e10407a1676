"""The network-model interface: what a kind of network does on one host.

A model is opened per request (``networks.open_model``) with its host-side
kernel handles, so the command flow never touches the kernel itself. It owns
the host side (bridges, VXLAN devices, routes, filters), plugs and
unplugs containers, checks them, leaves the host when its last container goes,
reports problems, and programs the peers its control plane announces. The
command flow (``commands.py``) drives it and never touches the kernel itself.
Implementations: ``l2`` (one subnet stretched over a VXLAN by a bridge per host).
"""

from __future__ import annotations

import ipaddress
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from xvmcni.cni.result import Interface, Route
from xvmcni.controlplane.base import Peer

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PeerMemory:
    """What a model last applied for its peers, kept by the caller across model
    instances (a model is opened per request; the agent keeps one per network).
    A model may use it to program only the change to a new peer set; ``forget``
    makes the next apply a full one that reads the kernel back."""

    def __init__(self) -> None:
        self.state: Any = None

    def forget(self) -> None:
        self.state = None


@dataclass(frozen=True)
class Pod:
    """One container interface, as the model needs to know it."""

    container_id: str
    ifname: str
    netns: str
    # The host-side device the model named for it (recorded, so renames survive).
    host_ifname: str


@dataclass
class Plugged:
    """What plugging produced, for the CNI result."""

    interfaces: list[Interface]
    # Index in ``interfaces`` of the container's own interface (ips[].interface).
    container_index: int
    gateway: IPAddress | None
    routes: list[Route] = field(default_factory=list)
    # The gateway per address family (4, 6), for results with both families; a
    # model with one family may leave it empty (``gateway`` says it all).
    gateways: dict[int, IPAddress] = field(default_factory=dict)


class NetworkModel(Protocol):
    kind: str

    def prepare(self) -> None:
        """Look at the host before anything changes; raise DataplaneError when the
        network cannot work here (e.g. its underlay interface is missing)."""
        ...

    def readiness(self) -> str:
        """'' when this host can carry the network's traffic to other hosts, else why
        not (existing pods are cut off: STATUS 51)."""
        ...

    def underlay_address(self) -> IPAddress:
        """This host's address on the underlay (VTEP source; picks IPAM slices)."""
        ...

    def host_ifname(self, container_id: str, ifname: str) -> str:
        """The host-side device name of a new attachment (derived, so DEL finds it)."""
        ...

    def join(self, in_use: bool) -> None:
        """Ensure the host side exists; ``in_use``: containers already use it, so
        nothing may be recreated."""
        ...

    def enter(self, pod: Pod) -> AbstractContextManager[Any]:
        """Open the container's network namespace for plug and check; raises
        DataplaneError(CONTAINER) when it is not a usable netns. Nothing changes yet."""
        ...

    def plug(self, pod_ns: Any, pod: Pod,
             addresses: list[IPInterface], mac: str) -> Plugged:
        """Create (or adopt, for a repeated ADD) the container's interface."""
        ...

    def unplug(self, pod: Pod, owned: bool) -> None:
        """Remove the container's interface; gone already (or its netns) is success.
        ``owned``: we hold a record of it, so a container-side interface of that name
        is ours. A pod with an empty ``netns`` is removed from the host side only."""
        ...

    def check(self, pod_ns: Any, pod: Pod, addresses: list[IPInterface],
              mac: str) -> list[str]:
        """How host side and container differ from what ADD left (empty: all fine)."""
        ...

    def leave(self, unmarked_is_ours: bool = False) -> None:
        """The host's last container of this network is gone: remove the host side,
        only what carries this network's mark. ``unmarked_is_ours``: the caller's
        records show this network used the host side, so unmarked devices of its
        names are an earlier xvm-cni's and go too."""
        ...

    def problems(self) -> list[str]:
        """What is wrong with the host side (empty: all fine)."""
        ...

    def repair(self, pods: list[tuple[Pod, list[IPInterface]]]) -> list[Pod]:
        """Recreate what is missing for these live containers without touching what
        works; returns the pods that had to be re-plugged."""
        ...

    def remove_orphans(self, known: set[str]) -> list[str]:
        """Delete host-side devices of ours that no recorded container explains."""
        ...

    def on_peers(self, peers: list[Peer], memory: PeerMemory | None = None) -> None:
        """Program the kernel for this peer set (and only for it). ``memory``: what
        the previous call applied, if the caller keeps it (may be ignored)."""
        ...

    def local_peer(self, name: str) -> Peer | None:
        """This host's record for the control plane, once the kernel has what it names
        (the host joined: VTEP device, underlay address); None before."""
        ...

    def describe(self) -> dict[str, Any]:
        """A few facts for status displays (devices, VNI, subnet)."""
        ...
