"""Which of a macvlan configuration's networks a pod joins, and at which address.

A pure function, so every source of per-pod facts can feed it: the config's
``args.annotations`` (the seed's keys), CNI_ARGS, the ``ips`` capability, and
(later) Kubernetes pod annotations from the agent's watch cache. First match wins:

1. a network named by the annotations (``vxlan-cni.phdata.io/NetworkName``) or by
   CNI_ARGS ``XVM_NETWORK=<name>``;
2. the network whose subnet holds a requested address (annotation
   ``vxlan-cni.phdata.io/RequestedAddress``, CNI_ARGS ``IP=``, capability ``ips``);
3. with ``k8sNetworkFromNamespace``, the network named like the pod's namespace
   (CNI_ARGS ``K8S_POD_NAMESPACE``);
4. ``defaultNetwork``.

Nothing found, an unknown name, or an address outside the chosen network is a
configuration error (CNI code 7) that says why.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from xvmcni.cni.names import shown
from xvmcni.errors import INVALID_CONFIG, CniError
from xvmcni.models.macvlan_config import (
    ANNOTATION_ADDRESS,
    ANNOTATION_NETWORK,
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


def choose_network(settings: MacvlanSettings, annotations: Mapping[str, str],
                   cni_args: Mapping[str, str], ips: Sequence[str]) -> Choice:
    """The network and requested addresses for one pod. ``annotations``: the pod's
    (config ``args.annotations``, or a watch cache's); ``ips``: addresses from
    CNI_ARGS ``IP=`` and the ``ips`` capability."""
    requested = _addresses([a for a in annotations.get(ANNOTATION_ADDRESS, "").split(",")
                            if a.strip()], f"annotation {ANNOTATION_ADDRESS}")
    requested += [a for a in _addresses(ips, "requested IP") if a not in requested]
    named = annotations.get(ANNOTATION_NETWORK) or cni_args.get(ARG_NETWORK, "")
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
    if settings.from_namespace and namespace:
        segment = settings.segment(namespace)
        if segment is not None:
            return Choice(segment, (), "namespace")
    if settings.default_network:
        segment = settings.segment(settings.default_network)
        assert segment is not None  # checked by the config parser
        return Choice(segment, (), "default")
    why = "no network named by the pod (annotation " + ANNOTATION_NETWORK + \
        f" or CNI_ARGS {ARG_NETWORK})"
    if settings.from_namespace:
        why += f", none named like its namespace {shown(namespace)}" if namespace else \
            ", no namespace given (CNI_ARGS K8S_POD_NAMESPACE)"
    details = f"networks: {known}"
    if settings.read_annotations:
        details += ("; k8sReadAnnotations: Kubernetes pod annotations are not read yet, "
                    "pass them in args.annotations")
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
