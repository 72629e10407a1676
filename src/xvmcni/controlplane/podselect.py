"""Which network a pod goes on, and which address it asks for: the selection rule.

Pure: the inputs are annotation maps and names, already read (from the CNI
configuration's ``args.annotations``, or from the Kubernetes pod cache of
``k8spods``); nothing here talks to an API server. Every network model that lets
a pod choose calls the same rule, so the keys and the order below mean the same
everywhere.

Order, first match wins:

1. an annotation naming the network: per-invocation ``args.annotations`` in the
   configuration, then the pod's own annotations, then its namespace's;
2. the pod's namespace name, when ``k8sNetworkFromNamespace`` is true and a network
   of that name exists;
3. ``defaultNetwork``.

The address comes only from the invocation or the pod (a namespace-wide address
would be given to every pod of the namespace at once).

Two spellings of each key are read: seed 004's (``vxlan-cni.phdata.io/...``,
kept so its users' pods work unchanged) and ours (``xvm-cni.io/...``). When a
pod carries both and they disagree, that is refused rather than guessed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xvmcni import config
from xvmcni.cni.names import shown
from xvmcni.errors import INVALID_CONFIG, CniError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NETWORK_KEY = "xvm-cni.io/network"
ADDRESS_KEY = "xvm-cni.io/address"
SEED_NETWORK_KEY = "vxlan-cni.phdata.io/NetworkName"
SEED_ADDRESS_KEY = "vxlan-cni.phdata.io/RequestedAddress"
# Ours first: it names the winner in messages; a disagreement is refused anyway.
NETWORK_KEYS = (NETWORK_KEY, SEED_NETWORK_KEY)
ADDRESS_KEYS = (ADDRESS_KEY, SEED_ADDRESS_KEY)

# Where the choice came from (PodSelection.source).
FROM_ARGS = "args.annotations"
FROM_POD = "pod annotation"
FROM_NAMESPACE_ANNOTATION = "namespace annotation"
FROM_NAMESPACE_NAME = "namespace name"
FROM_DEFAULT = "defaultNetwork"


@dataclass(frozen=True)
class SelectionSettings:
    """The configuration fields of seed 004 that steer the choice."""

    # Read the pod's (and namespace's) annotations from the Kubernetes API.
    read_annotations: bool = False
    # A pod without a network annotation goes on the network named like its namespace.
    network_from_namespace: bool = False
    default_network: str = ""
    # kubeconfig for the API server; '' = $KUBECONFIG, then in-cluster service account.
    kubeconfig: str = ""
    # Annotations handed in with the configuration, for this one invocation.
    args_annotations: Mapping[str, str] = field(default_factory=dict)
    # This node's name in Kubernetes, when the configuration names it (a kubernetes
    # control plane's 'nodeName'); '' = $NODE_NAME, then the host name.
    node: str = ""


@dataclass(frozen=True)
class PodSelection:
    network: str
    # Requested addresses (at most one per family), empty when none was asked for.
    addresses: tuple[IPAddress, ...] = ()
    # Where the network came from (FROM_*) and, for an annotation, which key.
    source: str = FROM_DEFAULT
    key: str = ""
    # Where the addresses came from, for messages: e.g. "pod annotation
    # xvm-cni.io/address of ns/p".
    address_origin: str = ""

    @property
    def named(self) -> bool:
        """True when an annotation named the network (rather than a fallback)."""
        return self.source in (FROM_ARGS, FROM_POD, FROM_NAMESPACE_ANNOTATION)

    def describe(self) -> str:
        return f"{self.source} {self.key}".strip()


def parse_settings(raw: dict[str, Any]) -> SelectionSettings:
    """The selection fields of a network configuration; CniError(7) naming a bad one."""
    read = config.get(raw, "k8sReadAnnotations", bool, False)
    from_namespace = config.get(raw, "k8sNetworkFromNamespace", bool, False)
    default = config.get(raw, "defaultNetwork", str, "")
    kubeconfig = config.get(raw, "k8sConfigPath", str, "")
    node = ""
    section = raw.get("controlPlane")
    if isinstance(section, dict) and section.get("type") == "kubernetes":
        # A Kubernetes control plane's own connection and node name serve here too.
        kubeconfig = kubeconfig or config.get(section, "kubeconfig", str, "")
        node = config.get(section, "nodeName", str, "")
    if kubeconfig and not kubeconfig.startswith("/"):
        raise config.fail(f"'k8sConfigPath' {shown(kubeconfig)} must be an absolute path")
    args = config.get(raw, "args", dict, {})
    annotations = config.get(args, "annotations", dict, {})
    for key, value in annotations.items():
        if not isinstance(value, str):
            raise config.fail(f"args.annotations {shown(key)} must be a string, "
                              f"got {shown(value)}")
    return SelectionSettings(read, from_namespace, default, kubeconfig, dict(annotations),
                             node)


def wants_pod(settings: SelectionSettings) -> bool:
    """Whether the pod's Kubernetes objects are needed at all for this network."""
    return settings.read_annotations or settings.network_from_namespace


def one_key(annotations: Mapping[str, str], keys: Sequence[str],
            where: str) -> tuple[str, str] | None:
    """(key, value) of the first of ``keys`` present with a non-empty value; CniError
    when two spellings disagree."""
    found = [(k, annotations[k].strip()) for k in keys if annotations.get(k, "").strip()]
    if not found:
        return None
    values = {value for _, value in found}
    if len(values) > 1:
        listed = ", ".join(f"{k}={shown(v)}" for k, v in found)
        raise CniError(INVALID_CONFIG, f"{where} disagree: {listed}",
                       "keep one of the two spellings, or give both the same value")
    return found[0]


def parse_addresses(text: str, key: str, where: str) -> tuple[IPAddress, ...]:
    """``10.1.2.3``, ``10.1.2.3/24`` or ``10.1.2.3,fd00::3`` (one per family)."""
    out: list[IPAddress] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            addr = ipaddress.ip_interface(part).ip
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"{where} {key}={shown(text)}: {shown(part)} is not "
                           "an IP address") from exc
        if any(a.version == addr.version for a in out):
            raise CniError(INVALID_CONFIG, f"{where} {key}={shown(text)} asks for more than "
                           f"one IPv{addr.version} address")
        out.append(addr)
    return tuple(out)


def select(settings: SelectionSettings, known: Collection[str], *,
           pod: Mapping[str, str] | None = None,
           namespace: str = "",
           namespace_annotations: Mapping[str, str] | None = None,
           pod_name: str = "") -> PodSelection:
    """The network and requested addresses for one pod.

    ``known``: the networks the configuration defines (one name for the single-network
    models). A network named by an annotation is returned even if unknown (the caller
    decides: ``require_known``); the namespace name counts only if it is a known
    network. CniError(7) when nothing selects a network or an annotation is malformed.
    """
    who = f"pod {namespace}/{pod_name}" if pod_name else "the pod"
    sources: list[tuple[str, Mapping[str, str]]] = [(FROM_ARGS, settings.args_annotations)]
    if pod is not None:
        sources.append((FROM_POD, pod))
    addresses: tuple[IPAddress, ...] = ()
    origin = ""
    for source, given in sources:
        where = f"{source}s of {who}" if source == FROM_POD else source
        hit = one_key(given, ADDRESS_KEYS, where)
        if hit is not None:
            addresses = parse_addresses(hit[1], hit[0], where)
            origin = f"{source} {hit[0]}" + (f" of {who}" if source == FROM_POD else "")
            break
    if namespace_annotations is not None:
        sources.append((FROM_NAMESPACE_ANNOTATION, namespace_annotations))
    for source, given in sources:
        where = f"{source}s of {who}" if source == FROM_POD else (
            f"{source}s of namespace {namespace}" if source == FROM_NAMESPACE_ANNOTATION
            else source)
        hit = one_key(given, NETWORK_KEYS, where)
        if hit is not None:
            return PodSelection(hit[1], addresses, source, hit[0], origin)
    if settings.network_from_namespace and namespace and namespace in known:
        return PodSelection(namespace, addresses, FROM_NAMESPACE_NAME, "", origin)
    if settings.default_network:
        return PodSelection(settings.default_network, addresses, FROM_DEFAULT, "", origin)
    raise CniError(INVALID_CONFIG, f"no network for {who}: no annotation names one "
                   f"({' or '.join(NETWORK_KEYS)}), "
                   + ("its namespace is not a network, "
                      if settings.network_from_namespace else "")
                   + "and the configuration has no 'defaultNetwork'",
                   "known networks: " + ", ".join(sorted(known)))


def require_known(selection: PodSelection, known: Collection[str]) -> PodSelection:
    """CniError(7) when the selected network is not one the configuration defines."""
    if selection.network not in known:
        raise CniError(INVALID_CONFIG, f"network {shown(selection.network)} (from "
                       f"{selection.describe()}) is not defined in this configuration",
                       "known networks: " + ", ".join(sorted(known)))
    return selection


def addresses_for(selection: PodSelection, network: str) -> tuple[IPAddress, ...]:
    """The requested addresses, if they are meant for ``network``: a single-network
    configuration (l2, routed) honours them when no annotation names a network or it
    names this one. A pod attached to several networks (Multus) names the one its
    address belongs to; the others allocate as usual."""
    if selection.named and selection.network != network:
        return ()
    return selection.addresses
