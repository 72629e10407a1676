"""Which of a macvlan configuration's networks a pod joins, and at which address.

A pure function, so every source of per-pod facts can feed it: the config's
``args.annotations``, CNI_ARGS, the ``ips`` capability, and the Kubernetes pod's and
namespace's annotations (read by the caller from the agent's watch cache,
``controlplane.k8spods.pod_info``). The keys and their two spellings (seed 004's
``vxlan-cni.phdata.io/NetworkName``/``RequestedAddress`` and ours
``xvm-cni.io/network``/``address``) are ``podselect``'s, read by ``podselect.one_key``,
and the order is podselect's with one step added (a requested address picks the
network holding it). First match wins:

1. a network named by an annotation: ``args.annotations``, then the pod's; or by
   CNI_ARGS ``XVM_NETWORK=<name>``;
2. the network whose subnet holds a requested address (annotation of the invocation
   or the pod, CNI_ARGS ``IP=``, capability ``ips``);
3. a network named by the namespace's annotation;
4. with ``k8sNetworkFromNamespace``, the network named like the pod's namespace
   (CNI_ARGS ``K8S_POD_NAMESPACE``);
5. ``defaultNetwork``.

Nothing found, an unknown name, or an address outside the chosen network is a
configuration error (CNI code 7) that says why.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from xvmcni.cni.names import shown
from xvmcni.controlplane.podselect import ADDRESS_KEYS, NETWORK_KEYS, one_key
from xvmcni.errors import INVALID_CONFIG, CniError
from xvmcni.models.macvlan_config import (
    IPAddress,
    MacvlanSettings,
    Segment,
)

ARG_NETWORK = "XVM_NETWORK"
ARG_NAMESPACE = "K8S_POD_NAMESPACE"


@dataclass(frozen=True)
class Choice:
    segment: Segment
    requested: tuple[IPAddress, ...]
    # How it was chosen, for the log ("annotation", "address", "namespace", "default").
    source: str


def _addresses(texts: Sequence[str], where: str) -> list[IPAddress]:
    out: list[IPAddress] = []
    for text in texts:
        try:
            out.append(ipaddress.ip_interface(text.strip()).ip)
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"{where} {shown(text)} is not an address") from exc
    return out


def _first(maps: Sequence[tuple[str, Mapping[str, str] | None]],
           keys: Sequence[str]) -> tuple[str, str, str] | None:
    """(where, key, value) of the first map holding one of ``keys``."""
    for where, given in maps:
        if given is None:
            continue
        hit = one_key(given, keys, where)
        if hit is not None:
            return where, hit[0], hit[1]
    return None


def choose_network(settings: MacvlanSettings, annotations: Mapping[str, str],
                   cni_args: Mapping[str, str], ips: Sequence[str], *,
                   pod: Mapping[str, str] | None = None,
                   namespace_annotations: Mapping[str, str] | None = None) -> Choice:
    """The network and requested addresses for one pod. ``annotations``: the config's
    ``args.annotations``; ``pod`` and ``namespace_annotations``: the Kubernetes
    objects' (None when not read); ``ips``: addresses from CNI_ARGS ``IP=`` and the
    ``ips`` capability."""
    own = [("args.annotations", annotations), ("pod annotations", pod)]
    asked = _first(own, ADDRESS_KEYS)
    requested = [] if asked is None else _addresses(
        [a for a in asked[2].split(",") if a.strip()], f"{asked[0]} {asked[1]}")
    requested += [a for a in _addresses(ips, "requested IP") if a not in requested]
    by_name = _first(own, NETWORK_KEYS)
    named = by_name[2] if by_name is not None else cni_args.get(ARG_NETWORK, "")
    known = ", ".join(s.name for s in settings.segments)
    if named:
        segment = settings.segment(named)
        if segment is None:
            raise CniError(INVALID_CONFIG, f"network {shown(named)} is not one of "
                           f"{settings.network}'s networks", f"known: {known}")
        return _with_addresses(Choice(segment, tuple(requested), "name"))
    if requested:
        holders = [s for s in settings.segments
                   if any(s.subnet(a.version) is not None and a in s.subnet(a.version)  # type: ignore[operator]
                          for a in requested)]
        if len(holders) != 1:
            raise CniError(INVALID_CONFIG, "requested address "
                           + ", ".join(map(str, requested))
                           + (" lies in no network" if not holders else
                              " lies in more than one network"), f"networks: {known}")
        return _with_addresses(Choice(holders[0], tuple(requested), "address"))
    namespace = cni_args.get(ARG_NAMESPACE, "")
    by_namespace = _first([(f"annotations of namespace {namespace}", namespace_annotations)],
                          NETWORK_KEYS)
    if by_namespace is not None:
        segment = settings.segment(by_namespace[2])
        if segment is None:
            raise CniError(INVALID_CONFIG, f"network {shown(by_namespace[2])} (from the "
                           f"{by_namespace[0]}) is not one of {settings.network}'s "
                           "networks", f"known: {known}")
        return Choice(segment, (), "namespace annotation")
    if settings.from_namespace and namespace:
        segment = settings.segment(namespace)
        if segment is not None:
            return Choice(segment, (), "namespace")
    if settings.default_network:
        segment = settings.segment(settings.default_network)
        assert segment is not None  # checked by the config parser
        return Choice(segment, (), "default")
    why = "no network named by the pod (annotation " + " or ".join(NETWORK_KEYS) + \
        f" or CNI_ARGS {ARG_NETWORK})"
    if settings.from_namespace:
        why += f", none named like its namespace {shown(namespace)}" if namespace else \
            ", no namespace given (CNI_ARGS K8S_POD_NAMESPACE)"
    details = f"networks: {known}"
    if settings.read_annotations and pod is None:
        details += ("; k8sReadAnnotations: no Kubernetes pod was read (CNI_ARGS "
                    "K8S_POD_NAMESPACE and K8S_POD_NAME name it)")
    raise CniError(INVALID_CONFIG, f"no network for this pod: {why}, and no "
                   "'defaultNetwork'", details)


def _with_addresses(choice: Choice) -> Choice:
    """Every requested address must lie in the chosen network, one per family."""
    seen: set[int] = set()
    for addr in choice.requested:
        subnet = choice.segment.subnet(addr.version)
        if subnet is None or addr not in subnet:
            raise CniError(INVALID_CONFIG, f"requested address {addr} is not inside network "
                           f"{choice.segment.name} ("
                           + ", ".join(map(str, choice.segment.subnets)) + ")")
        if addr.version in seen:
            raise CniError(INVALID_CONFIG, f"more than one IPv{addr.version} address "
                           "requested")
        seen.add(addr.version)
    return choice
