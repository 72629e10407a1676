"""A network configuration assembled from its parts: the common fields, the
model's section, the IPAM's section, and the control plane.

This is the one place that knows which models, IPAMs and control planes exist:
a new one is a module under ``models/``, ``ipam/`` or ``controlplane/`` plus a
line here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvmcni import config
from xvmcni.cni.request import Request
from xvmcni.config import NetworkConfig
from xvmcni.controlplane import etcdconfig, k8sconfig, k8spods, peercache, static
from xvmcni.controlplane.base import ControlPlane, Peer
from xvmcni.controlplane.etcdconfig import EtcdSettings
from xvmcni.controlplane.multicast import MulticastControlPlane
from xvmcni.controlplane.podselect import SelectionSettings
from xvmcni.dataplane import names
from xvmcni.errors import ADDRESS_EXHAUSTED, TRY_AGAIN_LATER, CniError
from xvmcni.ipam import blocks, nodelocal, podcidrs
from xvmcni.ipam.base import Ipam
from xvmcni.ipam.blocks import BlockIpam, BlockSettings
from xvmcni.ipam.cidr import CidrIpam, CidrPool
from xvmcni.ipam.delegated import DelegatedIpam
from xvmcni.ipam.hostslices import HostSliceIpam, RouterBlockIpam, host_range
from xvmcni.ipam.pool import AddressPool, pool_for_host
from xvmcni.ipam.slices import SliceIpam, SliceSettings
from xvmcni.ipam.slices import parse_settings as parse_slices
from xvmcni.models import l2, macvlan, macvlan_config, routed
from xvmcni.models.base import NetworkModel
from xvmcni.models.macvlan_choice import choose_network
from xvmcni.runtime import LOCK_TIMEOUT, Runtime
from xvmcni.state.locks import network_lock

MODELS = ("l2", "routed", macvlan_config.KIND)
# Each control plane is built from its "controlPlane" section (validated by parse).
CONTROL_PLANES: dict[str, Callable[[dict[str, Any]], ControlPlane]] = {
    "multicast": lambda section: MulticastControlPlane(),
    static.KIND: lambda section: static.StaticControlPlane(static.parse_peers(section)),
    # Built from the parsed network (name, settings): see control_plane().
    "etcd": lambda section: _no_section_factory("etcd"),
    k8sconfig.KIND: lambda section: _no_section_factory(k8sconfig.KIND),
}
# Fields that make a configuration without "model" a routed one (seed 003, bvcni).
_ROUTED_HINTS = ("podCIDR", "podcidr")


@dataclass(frozen=True)
class Network:
    config: NetworkConfig
    # macvlan: the whole configuration (MacvlanSettings) until a request picks one of
    # its networks; then the picked one (SegmentSettings, see segments()).
    settings: (l2.L2Settings | routed.RoutedSettings | macvlan_config.MacvlanSettings
               | macvlan.SegmentSettings)
    # Our own allocator's settings; None when a delegated IPAM plugin chooses.
    slices: SliceSettings | None
    # Peers written in the configuration (controlPlane type "static"), else None.
    static_peers: tuple[Peer, ...] | None = None
    # controlPlane etcd: its settings, and the IPAM blocks hosts claim through it (l2).
    etcd: EtcdSettings | None = None
    blocks: BlockSettings | None = None
    # routed with etcd and no 'podCIDR': how this host claims its pod CIDRs.
    cidrs: podcidrs.CidrClaimSettings | None = None
    # macvlan: addresses the pod's annotations request (beside IP= and 'ips').
    requested: tuple[Any, ...] = ()
    # controlPlane kubernetes (routed): the pod CIDRs are this host's Node's.
    k8s: k8sconfig.K8sSettings | None = None

    @property
    def follows_peers(self) -> bool:
        """Whether the agent runs a control plane that lists this network's hosts."""
        return self.etcd is not None or self.k8s is not None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def l2(self) -> l2.L2Settings:
        assert isinstance(self.settings, l2.L2Settings), "not an l2 network"
        return self.settings

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir


def parse(raw: dict[str, Any]) -> Network:
    """Validate a whole network configuration; CniError(7) naming the bad field."""
    common = config.parse(raw)
    if "model" not in raw and "subnet" not in raw \
            and any(raw.get(k) is not None for k in _ROUTED_HINTS):
        common.model = routed.KIND  # a pod CIDR per host and no shared subnet
    if common.model not in MODELS:
        raise config.fail(f"'model' {common.model!r} is not a network model of xvm-cni",
                          "known models: " + ", ".join(MODELS))
    if nodelocal.is_node_local(common.ipam) and common.model != routed.KIND:
        raise config.fail("ipam type node-local needs \"model\": \"routed\"",
                          "its ranges are this host's pod CIDRs")
    if common.control_plane not in CONTROL_PLANES:
        raise config.fail(f"controlPlane type {common.control_plane!r} is not available",
                          "known: " + ", ".join(CONTROL_PLANES))
    peers = None
    if common.control_plane == static.KIND:
        peers = tuple(static.parse_peers(config.get(raw, "controlPlane", dict),
                                         need_cidrs=common.model != macvlan_config.KIND))
    if common.model == macvlan_config.KIND:
        return _parse_macvlan(raw, common, peers)
    if common.control_plane == "etcd":
        return _parse_etcd(raw, common)
    if common.control_plane == k8sconfig.KIND:
        return _parse_k8s(raw, common)
    if common.model == routed.KIND:
        rsettings = routed.parse_settings(raw, common.name)
        v4 = rsettings.pod_cidr(4)
        rslices = None
        if common.ipam is None:
            if isinstance(v4, ipaddress.IPv4Network):
                rslices = parse_slices(raw, v4)
            elif any(raw.get(k) is not None for k in ("rangeStart", "rangeEnd")):
                raise config.fail("'rangeStart'/'rangeEnd' need an IPv4 'podCIDR'")
            if rslices is not None and rslices.per_host_prefix is not None:
                raise config.fail("'perHostPrefix' belongs to the l2 model",
                                  "a routed host allocates from its whole 'podCIDR'")
        return Network(common, rsettings, rslices, peers)
    settings = l2.parse_settings(raw, common.name)
    slices = None if common.ipam is not None else parse_slices(raw, settings.subnet)
    return Network(common, settings, slices, peers)


def _parse_etcd(raw: dict[str, Any], common: NetworkConfig) -> Network:
    etcd = etcdconfig.parse(raw["controlPlane"])
    if common.model == routed.KIND:
        return _parse_routed_etcd(raw, common, etcd)
    settings = l2.parse_settings(raw, common.name, unicast=True)
    claimed = None if common.ipam is not None else blocks.parse_settings(raw, settings.subnet)
    return Network(common, settings, None, None, etcd, claimed)


def _parse_routed_etcd(raw: dict[str, Any], common: NetworkConfig,
                       etcd: EtcdSettings) -> Network:
    """routed with etcd: an explicit 'podCIDR' is used as written and published (the
    operator keeps it unique, as without a control plane); without one, every host
    claims its pod CIDRs from 'clusterCIDR'."""
    claim = all(raw.get(k) is None for k in _ROUTED_HINTS)
    rsettings = routed.parse_settings(raw, common.name, claimed=claim)
    cidrs = podcidrs.parse_settings(raw, rsettings.cluster_cidrs) if claim else None
    rslices = None
    if common.ipam is None:
        for key in ("rangeStart", "rangeEnd", "perHostPrefix"):
            if raw.get(key) is not None and claim:
                raise config.fail(f"{key!r} does not apply to claimed pod CIDRs",
                                  "size them with 'podCIDRPrefix'")
        v4 = rsettings.pod_cidr(4)
        if isinstance(v4, ipaddress.IPv4Network):
            rslices = parse_slices(raw, v4)
            if rslices.per_host_prefix is not None:
                raise config.fail("'perHostPrefix' belongs to the l2 model",
                                  "a routed host allocates from its whole 'podCIDR'")
    return Network(common, rsettings, rslices, None, etcd, cidrs=cidrs)


def _parse_macvlan(raw: dict[str, Any], common: NetworkConfig,
                   peers: tuple[Peer, ...] | None) -> Network:
    """A macvlan configuration. Hosts learn about each other from the control plane:
    ``static`` (listed), ``etcd`` (each host publishes the networks it joined, per
    network), or none (``multicast``: the VXLAN devices use a group)."""
    if common.ipam is not None and common.ipam.get("type") == "xvm-cni":
        raise config.fail("'ipam' names xvm-cni itself")
    settings = macvlan_config.parse_settings(raw, common.name)
    etcd = etcdconfig.parse(raw["controlPlane"]) if common.control_plane == "etcd" else None
    if peers is None and etcd is None:
        # No control plane lists the hosts: the VXLAN devices find each other through a
        # multicast group (the l2 model's default unless the network names one).
        settings = dataclasses.replace(settings, segments=tuple(
            s if s.group is not None else dataclasses.replace(s, group=l2.DEFAULT_GROUP)
            for s in settings.segments))
    return Network(common, settings, None, peers, etcd)


def segments(network: Network) -> list[Network]:
    """The networks a configuration describes: one per macvlan segment, each with its
    own state directory, lock and registry; any other configuration is one."""
    settings = network.settings
    if not isinstance(settings, macvlan_config.MacvlanSettings):
        return [network]
    return [segment_network(network, seg) for seg in settings.segments]


def segment_network(network: Network, segment: macvlan_config.Segment,
                    requested: tuple[Any, ...] = ()) -> Network:
    settings = network.settings
    assert isinstance(settings, macvlan_config.MacvlanSettings)
    ipam_section = segment.ipam if segment.ipam is not None else network.config.ipam
    common = dataclasses.replace(network.config,
                                 name=macvlan.mark_name(network.config.name, segment.name),
                                 ipam=ipam_section)
    # etcd and an IPv4-only network with our own IPAM: cluster-wide address blocks.
    claimed = None
    v4 = segment.subnet(4)
    if network.etcd is not None and ipam_section is None and segment.subnets == (v4,):
        assert isinstance(v4, ipaddress.IPv4Network)
        size = network.config.raw.get("blockSize")
        claimed = blocks.parse_settings({} if size is None else {"blockSize": size}, v4)
    return dataclasses.replace(network, config=common, blocks=claimed,
                               settings=macvlan.SegmentSettings(settings, segment,
                                                                claimed is not None),
                               requested=requested)


def choose_segment(network: Network, request: Request,
                   pod_sources: k8spods.PodSources | None = None) -> Network:
    """The macvlan segment a pod joins (CniError 7 with the reason when none); any
    other network unchanged. With ``k8sReadAnnotations`` and the pod named in
    CNI_ARGS, its and its namespace's annotations come from ``pod_sources`` (the
    agent's watch cache, ``runtime.pod_sources``), or one GET without an agent."""
    settings = network.settings
    if not isinstance(settings, macvlan_config.MacvlanSettings):
        return network
    ips = [part for part in request.args.get("IP", "").split(",") if part.strip()]
    caps = network.config.runtime_config.get("ips")
    if isinstance(caps, list):
        ips += [item for item in caps if isinstance(item, str)]
    info = None
    if settings.read_annotations:
        # Only the Kubernetes part of the selection: the namespace *name* is in CNI_ARGS.
        info = k8spods.pod_info(request, SelectionSettings(
            read_annotations=True, kubeconfig=settings.k8s_config_path), pod_sources)
    choice = choose_network(
        settings, settings.annotations, request.args, ips,
        pod=None if info is None else info.annotations,
        namespace_annotations=None if info is None else info.namespace_annotations)
    return segment_network(network, choice.segment, choice.requested)


def _parse_k8s(raw: dict[str, Any], common: NetworkConfig) -> Network:
    """routed with Kubernetes: this host's pod CIDRs are its Node's (spec.podCIDRs or
    the CIDR annotation); $PROTOCOL is the route protocol when none is configured."""
    if common.model != routed.KIND:
        raise config.fail("controlPlane kubernetes needs \"model\": \"routed\"",
                          "every Node has its own pod CIDRs, routed between the nodes")
    for key in ("podCIDR", "podcidr", "rangeStart", "rangeEnd", "perHostPrefix"):
        if raw.get(key) is not None:
            raise config.fail(f"{key!r} does not apply with controlPlane kubernetes",
                              "the pod CIDRs are the Node's (spec.podCIDRs or the CIDR "
                              "annotation)")
    if nodelocal.is_node_local(common.ipam):
        assert common.ipam is not None
        nodelocal.validate(common.ipam)
    k8s = k8sconfig.parse(config.get(raw, "controlPlane", dict), common.name)
    protocol = k8sconfig.route_protocol(raw)
    with_env = raw if protocol is None else {**raw, "routeProtocol": protocol}
    rsettings = routed.parse_settings(with_env, common.name, claimed=True)
    return Network(common, rsettings, None, None, k8s=k8s)


def routed_settings(network: Network) -> routed.RoutedSettings:
    """The routed settings with this host's pod CIDRs: as configured, or (claimed
    through etcd) as claims.json lists them (none before the first claim), or
    (Kubernetes) as the agent last read them from this host's Node, with the agent's
    route protocol."""
    settings = network.settings
    assert isinstance(settings, routed.RoutedSettings), "not a routed network"
    if network.k8s is not None:
        node = k8sconfig.read_node_state(network.state_dir)
        if node is None:
            return settings
        return dataclasses.replace(settings, pod_cidrs=node.pod_cidrs,
                                   route_protocol=node.route_protocol)
    if network.cidrs is None:
        return settings
    return dataclasses.replace(settings,
                               pod_cidrs=podcidrs.held(network.state_dir, network.cidrs))


def ensure_pod_cidrs(network: Network, runtime: Runtime) -> None:
    """Before an ADD: a routed host that claims its pod CIDRs through etcd and lists
    none yet (the agent has not claimed them) claims them now, with the agent's
    control plane when it runs one, else a client of our own; CniError 11 when etcd
    cannot be asked, 102 when every CIDR is held. Kubernetes: with no pod CIDR known
    yet, this host's Node is read once. A no-op for every other network."""
    if network.k8s is not None:
        if not routed_settings(network).pod_cidrs:
            fetch_node_cidrs(network)
        return
    if network.cidrs is None:
        return
    if len(podcidrs.held(network.state_dir, network.cidrs)) < len(network.cidrs.cluster_cidrs):
        claim_cidrs(network, runtime.control_planes)


def hold_cidrs(network: Network, plane: Any) -> tuple[Any, ...]:
    """This host's pod CIDRs through its etcd control plane, written to its state dir;
    raises the control plane's errors. Under the network's lock: the agent and an ADD
    claiming at once must not end up with two CIDRs per family (the second finds the
    first's claim by name)."""
    assert network.cidrs is not None
    with network_lock(network.state_dir, LOCK_TIMEOUT):
        return podcidrs.hold_cidrs(plane, network.cidrs, network.state_dir)


def claim_cidrs(network: Network, planes: dict[Path, Any] | None) -> tuple[Any, ...]:
    from xvmcni.controlplane.etcd import ClaimsExhausted
    from xvmcni.controlplane.etcdstore import EtcdUnavailable
    shared = planes.get(network.state_dir) if planes is not None else None
    plane = shared if shared is not None else _own_etcd_plane(network)
    try:
        return hold_cidrs(network, plane)
    except EtcdUnavailable as exc:
        raise CniError(TRY_AGAIN_LATER, "this host holds no pod CIDR yet, and etcd cannot "
                       "be reached to claim one", str(exc)) from exc
    except ClaimsExhausted as exc:
        raise CniError(ADDRESS_EXHAUSTED, "every pod CIDR of the cluster CIDR is held by "
                       "a host", "remove unused hosts (their CIDRs return after "
                       "reclaimAfter), or use a larger 'clusterCIDR' or 'podCIDRPrefix'"
                       ) from exc
    finally:
        if shared is None:
            plane.close()


def fetch_node_cidrs(network: Network) -> None:
    """One read of this host's Node (an ADD before the agent learnt its pod CIDRs, or
    without an agent): its pod CIDRs written for the model; CniError 11 when the API
    server cannot tell (yet)."""
    from xvmcni.controlplane import k8snodes
    from xvmcni.controlplane.k8sapi import ApiError, ApiUnavailable, ConfigMissing, KubeApi
    assert network.k8s is not None
    settings = network.settings
    assert isinstance(settings, routed.RoutedSettings)
    # The agent's Node name, CIDR annotation and protocol win: the runtime that runs
    # the plugin need not have the agent's environment ($NODE_NAME, ...).
    k8s, protocol = network.k8s, settings.route_protocol
    known = k8sconfig.read_node_state(network.state_dir)
    if known is not None:
        k8s = dataclasses.replace(k8s, node_name=known.node,
                                  cidr_annotation=known.cidr_annotation)
        protocol = known.route_protocol
    name = k8sconfig.node_name(k8s)
    try:
        api = KubeApi(network.k8s.kubeconfig)
        try:
            node = api.get(f"/api/v1/nodes/{name}")
        finally:
            api.close()
    except (ApiUnavailable, ApiError, ConfigMissing) as exc:
        raise CniError(TRY_AGAIN_LATER, f"the pod CIDRs of Node {name} are not known yet "
                       "and the API server cannot tell", str(exc)) from exc
    problems: list[str] = []
    cidrs = k8snodes.pod_cidrs_of(node, k8s, problems)
    if problems or not cidrs:
        where = (f"annotation {k8s.cidr_annotation} is absent" if k8s.cidr_annotation
                 else "spec.podCIDRs is empty (is the controller-manager run with "
                 "--allocate-node-cidrs?)")
        raise CniError(TRY_AGAIN_LATER, f"Node {name} has no usable pod CIDRs yet",
                       "; ".join(problems) or where)
    state = k8sconfig.NodeState(name, cidrs, protocol, k8s.cidr_annotation)
    network.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the first ADD
    with network_lock(network.state_dir, LOCK_TIMEOUT):
        now = k8sconfig.read_node_state(network.state_dir)
        if now is None or not now.pod_cidrs:
            k8sconfig.write_node_state(network.state_dir, state)


@contextlib.contextmanager
def open_model(network: Network, runtime: Runtime) -> Iterator[NetworkModel]:
    """The network's model for one request, holding the host's netlink socket."""
    with runtime.host_rtnl() as ipr:
        if isinstance(network.settings, macvlan_config.MacvlanSettings):
            raise AssertionError("a macvlan configuration is opened per segment")
        if isinstance(network.settings, macvlan.SegmentSettings):
            peers = list(network.static_peers) if network.static_peers is not None else None
            yield macvlan.MacvlanModel(network.settings, ipr, peers, network.state_dir)
        elif isinstance(network.settings, routed.RoutedSettings):
            peers = list(network.static_peers) if network.static_peers is not None else None
            if network.follows_peers:
                # The last peer set the agent heard: programmed on join, agent down too.
                peers = peercache.read(network.state_dir)
            yield routed.RoutedModel(routed_settings(network), ipr,
                                     runtime.reaper, peers)
        else:
            yield l2.L2Model(network.settings, ipr, runtime.reaper, runtime.hostif_cache,
                             network.state_dir)


def ipam(network: Network, request: Request, host_address: Callable[[], Any],
         planes: dict[Path, Any] | None = None) -> Ipam:
    """The network's IPAM for ``request``. ``host_address`` gives this host's underlay
    address when the allocator needs it (our per-host slices); DEL never asks.
    ``planes``: the agent's running control planes, reused to claim blocks."""
    if isinstance(network.settings, routed.RoutedSettings):
        return _routed_ipam(network, routed_settings(network), request)
    if isinstance(network.settings, macvlan.SegmentSettings):
        return _macvlan_ipam(network, network.settings.segment, request, host_address,
                             planes)
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

    return SliceIpam(pool, settings.static_ips)


def reserved_mac(network: Network, mac: str) -> str:
    """Why no pod of ``network`` may ask for ``mac`` (lower case); '' when it may.

    The anycast gateway's MAC is on every host's bridge; and ``0a:58:<address>`` is
    the MAC a pod without a requested one gets for its address in the subnet, so
    asking for it would collide with that pod, now or later.
    """
    if mac == "00:00:00:00:00:00":
        return "the all-zero MAC is not a valid interface address"
    if not isinstance(network.settings, l2.L2Settings):
        return ""
    if mac == names.gateway_mac(network.l2.vxlan_id):
        return "it is the network's anycast gateway MAC"
    octets = bytes(int(part, 16) for part in mac.split(":"))
    if octets[:2] == b"\x0a\x58":
        derived_for = ipaddress.IPv4Address(octets[2:])
        if derived_for in network.l2.subnet:
            return (f"0a:58:... MACs are what pods without a requested MAC get; this one "
                    f"belongs to address {derived_for}")
    return ""


def _macvlan_ipam(network: Network, segment: macvlan_config.Segment, request: Request,
                  host_address: Callable[[], Any],
                  planes: dict[Path, Any] | None = None) -> Ipam:
    """This host's slice of each subnet (its router address first), blocks claimed
    through etcd (IPv4-only networks), or a delegated cluster-aware IPAM plugin (IPv4)."""
    if network.config.ipam is not None:
        v4 = segment.subnet(4)
        if v4 is None:
            raise config.fail(f"network {segment.name}: a delegated IPAM needs an IPv4 "
                              "subnet")
        raw = {**network.config.raw, "ipam": network.config.ipam}
        return DelegatedIpam(request, raw, v4.prefixlen)
    if network.blocks is not None:
        v4 = segment.subnet(4)
        assert isinstance(v4, ipaddress.IPv4Network)
        return RouterBlockIpam(v4, network.state_dir, _block_claimer(network, planes),
                               segment.exclude_first, segment.exclude_last)

    def ranges() -> tuple[Any, ...]:
        # The host's address is looked up only when an address is chosen (DEL never).
        at = host_address()
        return tuple(host_range(s, at, segment.slice_prefix[s.version],
                                segment.exclude_first, segment.exclude_last)
                     for s in segment.subnets)

    return HostSliceIpam(ranges)


def _routed_ipam(network: Network, settings: routed.RoutedSettings,
                 request: Request) -> Ipam:
    """A routed host allocates from its own pod CIDRs, without coordination: they
    are this host's alone. The gateways (first addresses) are never handed out."""
    if network.config.ipam is not None:
        first = settings.pod_cidr(4) or (settings.pod_cidrs or settings.cluster_cidrs)[0]
        raw = network.config.raw
        if nodelocal.is_node_local(network.config.ipam):
            raw = nodelocal.delegated_config(raw, settings.pod_cidrs)
        return DelegatedIpam(request, raw, first.prefixlen)
    slices = network.slices or SliceSettings()
    pools = tuple(
        CidrPool.of(cidr, slices.range_start, slices.range_end) if cidr.version == 4
        else CidrPool.of(cidr) for cidr in settings.pod_cidrs)
    return CidrIpam(pools)


def _no_section_factory(kind: str) -> ControlPlane:
    raise AssertionError(f"control plane {kind} is built by control_plane(network)")


def control_plane(network: Network) -> ControlPlane:
    if network.k8s is not None:
        from xvmcni.controlplane.kubernetes import KubernetesControlPlane  # no client yet
        rsettings = network.settings
        assert isinstance(rsettings, routed.RoutedSettings)
        return KubernetesControlPlane(network.k8s, network.name, network.state_dir,
                                      rsettings.encap, rsettings.route_protocol)
    if network.etcd is not None:
        from xvmcni.controlplane.etcd import EtcdControlPlane  # imports no client yet
        return EtcdControlPlane(network.etcd, network.name)
    if network.static_peers is not None:
        return static.StaticControlPlane(list(network.static_peers))
    section = config.get(network.config.raw, "controlPlane", dict, {})
    return CONTROL_PLANES[network.config.control_plane](section)


def _own_etcd_plane(network: Network) -> Any:
    """A one-off client for an ADD without the agent. It claims under the name the
    agent wrote into claims.json (the agent's $XVM_CNI_HOSTNAME may not be in the
    runtime's environment), else this host's own name."""
    from xvmcni.controlplane.etcd import EtcdControlPlane
    assert network.etcd is not None
    return EtcdControlPlane(network.etcd, network.name, blocks.claims_host(network.state_dir))


def hold_blocks(network: Network, plane: Any, need_new: bool = False) -> list[str]:
    """This host's IPAM blocks of ``network`` through its etcd control plane, written to
    its state dir; raises the control plane's errors."""
    assert network.blocks is not None
    return blocks.hold_blocks(plane, _block_subnet(network), network.blocks.prefix,
                              network.state_dir, need_new)


def _block_subnet(network: Network) -> ipaddress.IPv4Network:
    """The subnet a network's blocks are cut from (l2's, or a macvlan network's IPv4)."""
    if isinstance(network.settings, macvlan.SegmentSettings):
        subnet = network.settings.segment.subnet(4)
        assert isinstance(subnet, ipaddress.IPv4Network)
        return subnet
    return network.l2.subnet


def _block_claimer(network: Network, planes: dict[Path, Any] | None) -> blocks.ClaimMore:
    """Claim one more block when an ADD finds its host's blocks full (or none): with
    the agent's control plane when it runs one, else a client of its own."""

    def more(_known: list[str]) -> list[str]:
        from xvmcni.controlplane.etcd import ClaimsExhausted
        from xvmcni.controlplane.etcdstore import EtcdUnavailable
        shared = planes.get(network.state_dir) if planes is not None else None
        plane = shared if shared is not None else _own_etcd_plane(network)
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
