"""A network configuration assembled from its parts: the common fields, the
model's section, the IPAM's section, and the control plane.

This is the one place that knows which models, IPAMs and control planes exist:
a new one is a module under ``models/``, ``ipam/`` or ``controlplane/`` plus a
line here.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvmcni import config
from xvmcni.cni.request import Request
from xvmcni.config import NetworkConfig
from xvmcni.controlplane.base import ControlPlane
from xvmcni.controlplane.multicast import MulticastControlPlane
from xvmcni.dataplane import names
from xvmcni.ipam.base import Ipam
from xvmcni.ipam.delegated import DelegatedIpam
from xvmcni.ipam.pool import AddressPool, pool_for_host
from xvmcni.ipam.slices import SliceIpam, SliceSettings
from xvmcni.ipam.slices import parse_settings as parse_slices
from xvmcni.models import l2
from xvmcni.models.base import NetworkModel
from xvmcni.runtime import Runtime

MODELS = ("l2",)
CONTROL_PLANES: dict[str, Callable[[], ControlPlane]] = {"multicast": MulticastControlPlane}


@dataclass(frozen=True)
class Network:
    config: NetworkConfig
    l2: l2.L2Settings
    # Our own allocator's settings; None when a delegated IPAM plugin chooses.
    slices: SliceSettings | None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir


def parse(raw: dict[str, Any]) -> Network:
    """Validate a whole network configuration; CniError(7) naming the bad field."""
    common = config.parse(raw)
    if common.model not in MODELS:
        raise config.fail(f"'model' {common.model!r} is not a network model of xvm-cni",
                          "known models: " + ", ".join(MODELS))
    if common.control_plane not in CONTROL_PLANES:
        raise config.fail(f"controlPlane type {common.control_plane!r} is not available",
                          "known: " + ", ".join(CONTROL_PLANES))
    settings = l2.parse_settings(raw, common.name)
    slices = None if common.ipam is not None else parse_slices(raw, settings.subnet)
    return Network(common, settings, slices)


@contextlib.contextmanager
def open_model(network: Network, runtime: Runtime) -> Iterator[NetworkModel]:
    """The network's model for one request, holding the host's netlink socket."""
    with runtime.host_rtnl() as ipr:
        yield l2.L2Model(network.l2, ipr, runtime.reaper, runtime.hostif_cache)


def ipam(network: Network, request: Request, host_address: Callable[[], Any]) -> Ipam:
    """The network's IPAM for ``request``. ``host_address`` gives this host's underlay
    address when the allocator needs it (our per-host slices); DEL never asks."""
    if network.config.ipam is not None:
        return DelegatedIpam(request, network.config.raw, network.l2.subnet.prefixlen)
    settings = network.slices or SliceSettings()

    def pool() -> AddressPool:
        addr = host_address()
        assert isinstance(addr, ipaddress.IPv4Address)
        return pool_for_host(network.l2.subnet, network.l2.gateway, addr,
                             settings.per_host_prefix, settings.range_start,
                             settings.range_end)

    return SliceIpam(pool, settings.static_ips)


def reserved_mac(network: Network, mac: str) -> str:
    """Why no pod of ``network`` may ask for ``mac`` (lower case); '' when it may.

    The anycast gateway's MAC is on every host's bridge; and ``0a:58:<address>`` is
    the MAC a pod without a requested one gets for its address in the subnet, so
    asking for it would collide with that pod, now or later.
    """
    if mac == "00:00:00:00:00:00":
        return "the all-zero MAC is not a valid interface address"
    if mac == names.gateway_mac(network.l2.vxlan_id):
        return "it is the network's anycast gateway MAC"
    octets = bytes(int(part, 16) for part in mac.split(":"))
    if octets[:2] == b"\x0a\x58":
        derived_for = ipaddress.IPv4Address(octets[2:])
        if derived_for in network.l2.subnet:
            return (f"0a:58:... MACs are what pods without a requested MAC get; this one "
                    f"belongs to address {derived_for}")
    return ""


def control_plane(network: Network) -> ControlPlane:
    return CONTROL_PLANES[network.config.control_plane]()
