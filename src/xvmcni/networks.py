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
from xvmcni.controlplane import etcdconfig
from xvmcni.controlplane.base import ControlPlane
from xvmcni.controlplane.etcdconfig import EtcdSettings
from xvmcni.controlplane.multicast import MulticastControlPlane
from xvmcni.ipam import blocks
from xvmcni.ipam.base import Ipam
from xvmcni.ipam.blocks import BlockIpam, BlockSettings
from xvmcni.ipam.delegated import DelegatedIpam
from xvmcni.ipam.pool import AddressPool, pool_for_host
from xvmcni.ipam.slices import SliceIpam, SliceSettings
from xvmcni.ipam.slices import parse_settings as parse_slices
from xvmcni.models import l2
from xvmcni.models.base import NetworkModel
from xvmcni.runtime import Runtime

MODELS = ("l2",)


@dataclass(frozen=True)
class Network:
    config: NetworkConfig
    l2: l2.L2Settings
    # Our own allocator's settings; None when a delegated IPAM plugin chooses (or
    # blocks claimed through the control plane do).
    slices: SliceSettings | None
    # controlPlane etcd: its settings, and the IPAM blocks hosts claim through it.
    etcd: EtcdSettings | None = None
    blocks: BlockSettings | None = None

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
    if common.control_plane == "etcd":
        etcd = etcdconfig.parse(raw["controlPlane"])
        settings = l2.parse_settings(raw, common.name, unicast=True)
        claimed = None if common.ipam is not None else blocks.parse_settings(raw,
                                                                               settings.subnet)
        return Network(common, settings, None, etcd, claimed)
    settings = l2.parse_settings(raw, common.name)
    slices = None if common.ipam is not None else parse_slices(raw, settings.subnet)
    return Network(common, settings, slices)


@contextlib.contextmanager
def open_model(network: Network, runtime: Runtime) -> Iterator[NetworkModel]:
    """The network's model for one request, holding the host's netlink socket."""
    with runtime.host_rtnl() as ipr:
        yield l2.L2Model(network.l2, ipr, runtime.reaper, runtime.hostif_cache,
                         network.state_dir)


def ipam(network: Network, request: Request, host_address: Callable[[], Any],
         planes: dict[Path, Any] | None = None) -> Ipam:
    """The network's IPAM for ``request``. ``host_address`` gives this host's underlay
    address when the allocator needs it (our per-host slices); DEL never asks.
    ``planes``: the agent's running control planes, reused to claim blocks."""
    if network.config.ipam is not None:
        return DelegatedIpam(request, network.config.raw, network.l2.subnet.prefixlen)
    if network.blocks is not None:
        return BlockIpam(network.l2.subnet, network.l2.gateway, network.state_dir,
                         _block_claimer(network, planes))
    settings = network.slices or SliceSettings()

    def pool() -> AddressPool:
        addr = host_address()
        assert isinstance(addr, ipaddress.IPv4Address)
        return pool_for_host(network.l2.subnet, network.l2.gateway, addr,
                             settings.per_host_prefix, settings.range_start,
                             settings.range_end)

    return SliceIpam(pool)


def _etcd_plane(network: Network) -> ControlPlane:
    from xvmcni.controlplane.etcd import EtcdControlPlane
    assert network.etcd is not None
    return EtcdControlPlane(network.etcd, network.name)


CONTROL_PLANES: dict[str, Callable[[Network], ControlPlane]] = {
    "multicast": lambda _: MulticastControlPlane(),
    "etcd": _etcd_plane,
}


def control_plane(network: Network) -> ControlPlane:
    return CONTROL_PLANES[network.config.control_plane](network)


def hold_blocks(network: Network, plane: Any, need_new: bool = False) -> list[str]:
    """This host's IPAM blocks of ``network`` through its etcd control plane, written to
    its state dir; raises the control plane's errors."""
    assert network.blocks is not None
    return blocks.hold_blocks(plane, network.l2.subnet, network.blocks.prefix,
                              network.state_dir, need_new)


def _block_claimer(network: Network, planes: dict[Path, Any] | None) -> blocks.ClaimMore:
    """Claim one more block when an ADD finds its host's blocks full (or none): with
    the agent's control plane when it runs one, else a client of its own."""

    def more(_known: list[str]) -> list[str]:
        from xvmcni.controlplane.etcd import ClaimsExhausted
        from xvmcni.controlplane.etcdstore import EtcdUnavailable
        shared = planes.get(network.state_dir) if planes is not None else None
        plane = shared if shared is not None else control_plane(network)
        try:
            return hold_blocks(network, plane, need_new=True)
        except EtcdUnavailable as exc:
            raise blocks.ClaimUnavailable(str(exc)) from exc
        except ClaimsExhausted as exc:
            raise blocks.NoBlockLeft(str(exc)) from exc
        finally:
            if shared is None:
                plane.close()

    return more
