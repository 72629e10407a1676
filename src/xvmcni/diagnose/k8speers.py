"""The Kubernetes control plane for doctor: the API server answers (the network's
kubeconfig, $KUBECONFIG or the in-cluster settings, a short timeout), this host's
Node exists with pod CIDRs and carries our annotations as the kernel would publish
them, and the peers the Nodes name (the agent's own rules, ``k8snodes``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from xvmcni.controlplane.base import Peer
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.networks import Network, routed_settings

CHECK = "controlplane"
# doctor must answer quickly when the API server is away; the agent uses 10 s.
TIMEOUT = 3.0
RESTART = "restart the agent (systemctl restart xvm-cnid); its log says why"


def kubernetes_peers(network: Network, model: Any) -> tuple[list[Peer] | None, list[Finding]]:
    from xvmcni.controlplane import k8snodes
    from xvmcni.controlplane.k8sapi import ApiError, ApiUnavailable, ConfigMissing, KubeApi
    from xvmcni.controlplane.k8sconfig import node_name, read_node_state
    from xvmcni.controlplane.kubernetes import NODES

    assert network.k8s is not None
    k8s = network.k8s
    # The agent's Node name and CIDR annotation win (doctor may run without its
    # environment: $NODE_NAME, $CIDR_ANNOTATION).
    known = read_node_state(network.state_dir)
    if known is not None:
        k8s = dataclasses.replace(k8s, node_name=known.node,
                                  cidr_annotation=known.cidr_annotation)
    me = node_name(k8s)
    net = network.name
    try:
        api = KubeApi(k8s.kubeconfig, timeout=TIMEOUT)
    except ConfigMissing as exc:
        return None, [fd.fail(CHECK, "API server", f"no usable client configuration: {exc}",
                              "set controlPlane.kubeconfig (or $KUBECONFIG for the agent) "
                              "to a readable kubeconfig", net)]
    try:
        _, items = api.list(NODES)
    except (ApiUnavailable, ApiError) as exc:
        return None, [fd.fail(
            CHECK, "API server", f"the API server at {api.server} ({api.source}) cannot be "
            f"asked ({exc}): no host learns of new or departed Nodes",
            "start the API server or fix the path to it, then check: kubectl get nodes",
            net)]
    finally:
        api.close()
    nodes = {str((n.get("metadata") or {}).get("name", "")): n for n in items}
    found = [fd.ok(CHECK, "API server", f"reachable at {api.server}; {len(nodes)} Nodes", net)]
    rsettings = routed_settings(network)
    expected: Peer | None = model.local_peer(me)
    version = expected.underlay.version if expected is not None else 4
    found += _own_node(nodes.get(me), me, k8s, network, expected, rsettings.encap)
    peers: list[Peer] = []
    for name in sorted(nodes):
        if name == me:
            continue
        node = k8snodes.view(nodes[name], k8s, net)
        found_peers, skipped = k8snodes.peers_of(node, rsettings.encap, version)
        if node.problems or skipped:
            found.append(fd.warn(CHECK, f"Node {name}", "left out of the peers: "
                                 + "; ".join(node.problems + tuple(skipped)),
                                 "fix that Node's annotations / addresses", net))
        peers.extend(found_peers)
    return peers, found


def _own_node(node: dict[str, Any] | None, me: str, k8s: Any, network: Network,
              expected: Peer | None, encap: str) -> list[Finding]:
    from xvmcni.controlplane import k8snodes
    from xvmcni.controlplane.k8sconfig import publish_keys

    net = network.name
    subject = f"Node {me}"
    if node is None:
        return [fd.fail(CHECK, subject, f"this host's Node {me} does not exist: no pod CIDRs "
                        "are known and no other host sends to this one",
                        "set controlPlane.nodeName / $NODE_NAME to the Node's name, or "
                        "register the Node (kubectl get nodes)", net)]
    problems: list[str] = []
    cidrs = k8snodes.pod_cidrs_of(node, k8s, problems)
    if problems or not cidrs:
        where = (f"annotation {k8s.cidr_annotation}" if k8s.cidr_annotation
                 else "spec.podCIDRs")
        return [fd.fail(CHECK, subject, f"this host's Node has no usable pod CIDRs in {where}"
                        + (f": {'; '.join(problems)}" if problems else ""),
                        "run the controller-manager with --allocate-node-cidrs, or set the "
                        "CIDR annotation", net)]
    found = [fd.ok(CHECK, subject, "present; pod CIDRs "
                   + ", ".join(str(c) for c in cidrs), net)]
    if expected is None:
        return found  # not joined yet: nothing to publish
    mac_key, underlay_key = publish_keys(net)
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    want = {underlay_key: str(expected.underlay)}
    if encap != k8snodes.NONE:
        want[mac_key] = expected.vtep_mac
    have = {k: annotations.get(k) for k in want}
    if all(v is None for v in have.values()):
        found.append(fd.fail(CHECK, f"annotations of {subject}", "this host has joined the "
                             f"network but its Node carries no {underlay_key} / {mac_key}: "
                             "other hosts cannot reach its VTEP", RESTART, net))
    elif have != want:
        stale = "; ".join(f"{k}={have[k]!r}, the kernel says {want[k]!r}"
                          for k in want if have[k] != want[k])
        found.append(fd.fail(CHECK, f"annotations of {subject}", "this host's published "
                             f"annotations are stale ({stale}): other hosts send to the "
                             "wrong place", RESTART, net))
    else:
        found.append(fd.ok(CHECK, f"annotations of {subject}",
                           "published and equal to the kernel's", net))
    return found
