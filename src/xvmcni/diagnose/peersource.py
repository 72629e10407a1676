"""Which hosts the control plane says exist, one source per control plane in
``SOURCES``: static (the config's list), etcd (asked now, read-only), multicast
(none: the kernel learns), kubernetes (the
Nodes, ``diagnose.k8speers``). A source also reports on the control plane itself
(reachable, this host's record present and as the kernel would publish it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xvmcni.controlplane.base import Peer
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.networks import Network

CHECK = "controlplane"


@dataclass
class PeerView:
    """The control plane's peers (None: it lists none, e.g. multicast) and what was
    found about the control plane while asking."""

    peers: list[Peer] | None
    findings: list[Finding] = field(default_factory=list)


def _multicast(network: Network, model: Any) -> PeerView:
    return PeerView(None)


def _static(network: Network, model: Any) -> PeerView:
    peers = list(network.static_peers or ())
    return PeerView(peers, [fd.ok(CHECK, "static peers",
                                  f"{len(peers)} hosts listed in the config", network.name)])


def _etcd(network: Network, model: Any) -> PeerView:
    from xvmcni.controlplane.etcd import EtcdControlPlane, decode_peer
    from xvmcni.controlplane.etcdconfig import host_name
    from xvmcni.controlplane.etcdstore import EtcdStore, EtcdUnavailable
    from xvmcni.ipam import blocks

    assert network.etcd is not None
    endpoints = ", ".join(str(e) for e in network.etcd.endpoints)
    me = blocks.claims_host(network.state_dir) or host_name()
    plane = EtcdControlPlane(network.etcd, network.name, me)
    lease: tuple[int, int] | None = None
    try:
        store = EtcdStore(network.etcd)
        try:
            _, entries = store.list(plane.hosts_prefix)
            own = next((e for e in entries if e.key == plane.hosts_prefix + me), None)
            if own is not None and own.lease:
                lease = store.time_to_live(own.lease)
        finally:
            store.close()
    except EtcdUnavailable as exc:
        return PeerView(None, [fd.fail(
            CHECK, "etcd", f"etcd at {endpoints} cannot be reached ({exc}): no host learns "
            "of new or departed peers, new hosts get no address block", "start etcd or "
            "fix the network path to it (controlPlane.endpoints), then check: etcdctl "
            f"--endpoints {endpoints} endpoint health", network.name)])
    peers: list[Peer] = []
    mine: Peer | None = None
    for entry in entries:
        peer = decode_peer(entry.value)
        if peer is None:
            continue
        if entry.key == plane.hosts_prefix + me:
            mine = peer
        else:
            peers.append(peer)
    found = [fd.ok(CHECK, "etcd", f"reachable at {endpoints}; {len(peers)} other hosts "
                   "published", network.name)]
    expected = model.local_peer(me)
    if expected is not None and mine is None:
        found.append(fd.fail(CHECK, f"host record {me}", "this host has joined the network "
                             "but its record is not in etcd: other hosts do not send to it",
                             "restart the agent (systemctl restart xvm-cnid); its log says "
                             "why publishing failed", network.name))
    elif expected is not None and mine is not None and mine != expected:
        found.append(fd.fail(CHECK, f"host record {me}", f"this host's record in etcd is "
                             f"stale ({mine.underlay}, {mine.vtep_mac}) against the kernel "
                             f"({expected.underlay}, {expected.vtep_mac})",
                             "restart the agent (systemctl restart xvm-cnid)", network.name))
    elif mine is not None:
        found.append(_freshness(network, me, lease))
    return PeerView(peers, found)


def _freshness(network: Network, me: str, lease: tuple[int, int] | None) -> Finding:
    """This host's record is current; is its lease kept alive? The agent refreshes
    it every TTL/3, so less than a third left (less a second: etcd rounds down, and a
    refresh may be a moment late) means the refreshes stopped."""
    subject = f"host record {me}"
    if lease is None:
        return fd.warn(CHECK, subject, "this host's record in etcd has no lease: it would "
                       "stay after the host is gone, and other hosts keep sending to it",
                       "restart the agent (systemctl restart xvm-cnid): it publishes the "
                       "record on a lease", network.name)
    left, granted = lease
    if left <= 0 or left < granted / 3 - 1:
        when = "has expired" if left <= 0 else f"expires in {left} s of {granted}"
        return fd.fail(CHECK, subject, f"this host's lease in etcd {when}: the agent has "
                       "stopped refreshing it, and when it is gone other hosts drop this "
                       "host's routes", "restart the agent (systemctl restart xvm-cnid); "
                       "its log says why refreshing failed", network.name)
    return fd.ok(CHECK, subject, f"present and current; lease {left} s of {granted} left",
                 network.name)


def _kubernetes(network: Network, model: Any) -> PeerView:
    from xvmcni.diagnose.k8speers import kubernetes_peers
    peers, found = kubernetes_peers(network, model)
    return PeerView(peers, found)


SOURCES: dict[str, Callable[[Network, Any], PeerView]] = {
    "multicast": _multicast,
    "static": _static,
    "etcd": _etcd,
    "kubernetes": _kubernetes,
}


def peer_view(network: Network, model: Any) -> PeerView:
    source = SOURCES.get(network.config.control_plane)
    if source is None:
        return PeerView(None, [fd.error(CHECK, network.config.control_plane,
                                        "doctor does not know this control plane",
                                        network.name)])
    return source(network, model)
