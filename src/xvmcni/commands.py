"""ADD, DEL, CHECK, GC and STATUS, written once over the three interfaces: a
network model (the kernel side), an IPAM (addresses) and the attachment registry.

Order of every command: validate everything that can be validated without
changing the host, then take the network's lock, then change the kernel. A
failing ADD undoes exactly the steps that succeeded, newest first (an ExitStack
of undo steps), and nothing else. Kernel-layer errors become CNI codes here, at
the edge between the two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from xvmcni import logsetup, networks
from xvmcni.cni.names import shown
from xvmcni.cni.request import Request
from xvmcni.cni.result import IPConfig, Result, version_tuple
from xvmcni.controlplane import k8spods, podselect
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.errors import (
    CHECK_FAILED,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    LIMITED_CONNECTIVITY,
    NETLINK_FAILURE,
    NFTABLES_FAILURE,
    NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CniError,
)
from xvmcni.ipam.base import Ipam
from xvmcni.models.base import IPAddress, NetworkModel, Pod
from xvmcni.networks import Network
from xvmcni.runtime import LOCK_TIMEOUT, REGISTRY_FILE, Runtime
from xvmcni.state import netstate
from xvmcni.state.attachments import Attachment, AttachmentRegistry
from xvmcni.state.locks import network_lock

log = logging.getLogger("xvmcni.commands")

# What each kind of kernel-layer failure means to the runtime.
_CNI_CODES = {
    DataplaneError.KERNEL: NETLINK_FAILURE,
    DataplaneError.NFTABLES: NFTABLES_FAILURE,
    DataplaneError.SYSTEM: IO_FAILURE,
    DataplaneError.HOST_CONFLICT: INVALID_CONFIG,
    DataplaneError.CONTAINER: INVALID_ENV,
    DataplaneError.INVALID: INVALID_CONFIG,
}
_MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def to_cni(err: DataplaneError, code: int | None = None) -> CniError:
    return CniError(code if code is not None else _CNI_CODES.get(err.kind, NETLINK_FAILURE),
                    err.msg, err.details)


@dataclass
class Call:
    """One command's inputs, parsed."""

    request: Request
    network: Network
    runtime: Runtime

    @property
    def pod_key(self) -> tuple[str, str]:
        return (self.request.container_id, self.request.ifname)


def run(request: Request, runtime: Runtime) -> dict[str, Any] | None:
    """Run one CNI command; the result in the caller's version, or None."""
    network = networks.parse(request.config)
    if runtime.manage_logging:
        logsetup.configure(network.config.log_level, network.config.log_file)
    _require_version(request.command, network.config.cni_version)
    log.debug("%s container=%s ifname=%s netns=%s", request.command, request.container_id,
              request.ifname, request.netns)
    try:
        result = None
        for part in _parts(request, network, runtime):
            result = _COMMANDS[request.command](Call(request, part, runtime))
        return result
    except DataplaneError as err:
        raise to_cni(err) from err


def _parts(request: Request, network: Network, runtime: Runtime) -> list[Network]:
    """The networks a command runs on: the network itself, or for a configuration of
    several (macvlan) the one the pod is on (ADD: the one chosen for it; DEL and CHECK:
    the one holding its record, else the chosen one), every one with state for GC and
    every one for STATUS."""
    parts = networks.segments(network)
    if len(parts) == 1 and parts[0] is network:
        return parts
    if request.command == "STATUS":
        return parts
    if request.command == "GC":
        return [p for p in parts if p.state_dir.exists()]
    held = _holding(parts, request, runtime)
    if request.command == "ADD":
        chosen = networks.choose_segment(network, request, runtime.pod_sources)
        if held is not None and held.name != chosen.name:
            raise CniError(INVALID_CONFIG, f"container {request.container_id[:12]} "
                           f"({request.ifname}) is attached to {held.name} already, not "
                           f"to {chosen.name}", "DEL it before adding it elsewhere")
        return [chosen]
    if held is not None:
        return [held]
    try:
        return [networks.choose_segment(network, request, runtime.pod_sources)]
    except CniError:
        if request.command == "DEL":
            return []  # on none of the networks, and none chosen: nothing to remove
        raise


def _holding(parts: list[Network], request: Request, runtime: Runtime) -> Network | None:
    for part in parts:
        if not (part.state_dir / REGISTRY_FILE).exists():
            continue
        with runtime.registry(part.state_dir) as registry:
            if registry.get(request.container_id, request.ifname) is not None:
                return part
    return None


def _require_version(command: str, version: str) -> None:
    minimum = _MINIMUM_VERSION.get(command)
    if minimum and version_tuple(version) < version_tuple(minimum):
        raise CniError(INCOMPATIBLE_VERSION,
                       f"{command} needs cniVersion {minimum} or newer, config has {version}")


@contextlib.contextmanager
def _locked_registry(call: Call) -> Iterator[AttachmentRegistry]:
    with network_lock(call.network.state_dir, LOCK_TIMEOUT), \
            call.runtime.registry(call.network.state_dir) as registry:
        yield registry


def _name_rebuilt(registry: AttachmentRegistry, model: NetworkModel,
                  key: tuple[str, str]) -> None:
    """An attachment ``xvmctl ipam rebuild`` recorded without its container ID gets the
    real one when the runtime names the container that owns its device."""
    if registry.get(*key) is not None:
        return
    unnamed = registry.unnamed(model.host_ifname(*key))
    if unnamed is not None:
        log.info("attachment on %s is %s/%s", unnamed.host_ifname, key[0][:12], key[1])
        registry.rename(unnamed.key, key)


def _ipam(call: Call, model: NetworkModel) -> Ipam:
    return networks.ipam(call.network, call.request, model.underlay_address,
                         call.runtime.control_planes)


def _leave_if_unused(model: NetworkModel, registry: AttachmentRegistry,
                     had_records: bool = False) -> None:
    """Leave after the last container. ``had_records``: this call removed records of
    the network, proof that unmarked devices of its names are an earlier version's."""
    if registry.count() == 0:
        model.leave(unmarked_is_ours=had_records)


def _attempt(what: str, step: Callable[..., object], *args: Any) -> None:
    """One undo step: log a failure and let the next step run (a half rollback would
    leak what the caller cannot see); the caller gets the original error."""
    try:
        step(*args)
    except Exception:  # logged here; the caller gets the original error instead
        log.exception("rollback after failed ADD: could not %s", what)


# --- static requests -----------------------------------------------------------------

def requested_addresses(request: Request, network: Network) -> list[IPAddress]:
    """Static addresses from CNI_ARGS ``IP=`` or the ``ips`` capability (the IPAM
    judges them: how many per family, and where they may lie)."""
    raw: list[str] = [str(addr) for addr in network.requested]
    if request.args.get("IP"):
        raw.extend(part for part in request.args["IP"].split(",") if part)
    caps = network.config.runtime_config.get("ips")
    if isinstance(caps, list):
        for item in caps:
            if not isinstance(item, str):
                raise CniError(INVALID_CONFIG, "runtimeConfig.ips must hold addresses in "
                               f"strings, got {shown(item)}")
            raw.append(item)
    out = []
    for text in raw:
        try:
            addr = ipaddress.ip_interface(text.strip()).ip
        except ValueError as exc:
            raise CniError(INVALID_CONFIG,
                           f"requested IP {shown(text)} is not an address") from exc
        if addr not in out:
            out.append(addr)
    return out


def pod_requested_addresses(call: Call) -> tuple[list[IPAddress], str]:
    """Addresses the pod asks for through annotations (``args.annotations`` in the
    configuration, or its Kubernetes pod when ``k8sReadAnnotations`` is set), and
    where they came from; ([], '') when it asks for none. A single-network model
    honours them when no annotation names another network (see podselect)."""
    settings = podselect.parse_settings(call.network.config.raw)
    asks_pod = podselect.wants_pod(settings) and k8spods.pod_of(call.request) is not None
    if not settings.args_annotations and not asks_pod:
        return [], ""
    name = call.network.name
    settings = dataclasses.replace(settings, default_network=name)
    chosen = k8spods.selection(call.request, settings, [name], call.runtime.pod_sources)
    addresses = list(podselect.addresses_for(chosen, name))
    if chosen.addresses and not addresses:
        log.info("ADD %s/%s: requested address is for network %s (%s), not %s",
                 call.request.container_id[:12], call.request.ifname, chosen.network,
                 chosen.describe(), name)
    return addresses, chosen.address_origin if addresses else ""


@contextlib.contextmanager
def _requested_by(origin: str) -> Iterator[None]:
    """Name the annotation in a refusal of the address it asked for."""
    try:
        yield
    except CniError as err:
        if not origin:
            raise
        raise CniError(err.code, f"{err.msg} (asked for by {origin})", err.details) from err


def requested_mac(request: Request, network: Network) -> str:
    mac = network.config.runtime_config.get("mac") or request.args.get("MAC") or ""
    if not isinstance(mac, str):
        raise CniError(INVALID_CONFIG, "runtimeConfig.mac must be a string")
    parts = mac.split(":") if mac else []
    if mac and (len(parts) != 6 or not all(len(p) == 2 for p in parts)
                or not all(c in "0123456789abcdefABCDEF" for p in parts for c in p)):
        raise CniError(INVALID_CONFIG, f"requested MAC {mac!r} is not a MAC address")
    if mac and int(parts[0], 16) & 1:
        raise CniError(INVALID_CONFIG, f"requested MAC {mac!r} is a multicast address")
    mac = mac.lower()
    why = networks.reserved_mac(network, mac) if mac else ""
    if why:
        raise CniError(INVALID_CONFIG, f"requested MAC {mac} is reserved: {why}")
    return mac


# --- ADD -----------------------------------------------------------------------------

def _add(call: Call) -> dict[str, Any]:
    requested = requested_addresses(call.request, call.network)
    origin = ""
    if not requested:  # the runtime's own request (IP=, ips) wins over annotations
        requested, origin = pod_requested_addresses(call)
    mac = requested_mac(call.request, call.network)
    request = call.request
    networks.ensure_pod_cidrs(call.network, call.runtime)  # routed+etcd: claim if none
    with networks.open_model(call.network, call.runtime) as model:
        model.prepare()  # e.g. a missing hostInterface fails here, before any change
        ipam = _ipam(call, model)
        with _requested_by(origin):
            ipam.validate(requested)  # e.g. an address in another host's pool
        pod = Pod(request.container_id, request.ifname, request.netns,
                  model.host_ifname(*call.pod_key))
        with model.enter(pod) as pod_ns, _locked_registry(call) as registry:
            return _add_locked(call, model, ipam, pod_ns, pod, registry, requested, mac,
                               origin)


def _add_locked(call: Call, model: NetworkModel, ipam: Ipam, pod_ns: Any, pod: Pod,
                registry: AttachmentRegistry, requested: list[IPAddress],
                mac: str, origin: str = "") -> dict[str, Any]:
    request = call.request
    _name_rebuilt(registry, model, call.pod_key)
    existing = registry.get(*call.pod_key)
    if mac and existing is None:
        # Under the network's lock: no other ADD can take the MAC before we record it.
        holder = registry.mac_holder(mac)
        if holder is not None:
            raise CniError(INVALID_CONFIG,
                           f"requested MAC {mac} is held by container {holder[0]} "
                           f"({holder[1]}) of network {call.network.name} on this host",
                           "two interfaces with one MAC on a bridge steal each other's "
                           "frames")
    # In use: some container (this one too, on a repeated ADD) relies on the host side,
    # so nothing of it may be recreated, and a failure must not take it away.
    in_use = registry.count() > 0
    record = Attachment(container_id=request.container_id, ifname=request.ifname,
                        netns=request.netns, host_ifname=pod.host_ifname, mac=mac)
    with contextlib.ExitStack() as undo:
        if not in_use and netstate.remember(call.network.state_dir, call.network.config.raw):
            undo.callback(_attempt, "forget the network", netstate.forget,
                          call.network.state_dir)
        model.join(in_use)
        if not in_use:
            undo.callback(_attempt, "leave the network", _leave_if_unused, model, registry)
        if ipam.needs_interface and existing is None:
            # Delegated IPAM such as dhcp leases through the interface: plug it first.
            model.plug(pod_ns, pod, [], mac)
            undo.callback(_attempt, "remove the interface", model.unplug, pod, True)
        with _requested_by(origin):  # e.g. the annotated address is taken
            attachment, created = ipam.allocate(registry, record, requested)
        if created:
            undo.callback(_attempt, "release the address", ipam.release, registry,
                          *call.pod_key)
        plugged = model.plug(pod_ns, pod, list(attachment.addresses), mac)
        if created and not ipam.needs_interface:
            undo.callback(_attempt, "remove the interface", model.unplug, pod, True)
        if existing is not None and existing.netns != request.netns:
            registry.update_host_ifname(request.container_id, request.ifname,
                                        pod.host_ifname, request.netns)
        undo.pop_all()  # every step succeeded: nothing to undo
    log.info("ADD %s/%s: %s on %s", request.container_id[:12], request.ifname,
             ", ".join(map(str, attachment.addresses)), pod.host_ifname)
    result = Result(
        interfaces=plugged.interfaces,
        ips=[IPConfig(addr, plugged.gateways.get(addr.version, plugged.gateway),
                      plugged.container_index)
             for addr in attachment.addresses],
        routes=plugged.routes,
        dns=dict(call.network.config.dns or ipam.dns()),
    )
    return result.to_dict(call.network.config.cni_version)


# --- DEL -----------------------------------------------------------------------------

def _del(call: Call) -> None:
    request = call.request
    with networks.open_model(call.network, call.runtime) as model, \
            _locked_registry(call) as registry:
        _name_rebuilt(registry, model, call.pod_key)
        record = registry.get(*call.pod_key)
        host_ifname = (record.host_ifname if record is not None and record.host_ifname
                       else model.host_ifname(*call.pod_key))
        model.unplug(Pod(request.container_id, request.ifname, request.netns, host_ifname),
                     owned=record is not None)
        _ipam(call, model).release(registry, *call.pod_key)
        _leave_if_unused(model, registry, had_records=record is not None)
    log.info("DEL %s/%s", request.container_id[:12], request.ifname)


# --- CHECK ---------------------------------------------------------------------------

def _check(call: Call) -> None:
    prev = call.network.config.prev_result
    if prev is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the configuration")
    request = call.request
    with networks.open_model(call.network, call.runtime) as model, \
            call.runtime.registry(call.network.state_dir) as registry:
        record = registry.get(*call.pod_key)
        if record is None:
            raise CniError(UNKNOWN_CONTAINER,
                           f"no attachment {request.container_id}/{request.ifname} "
                           f"on network {call.network.name}")
        expected = [ip.address for ip in _container_ips(prev, request)]
        found: list[str] = []
        if sorted(map(str, expected)) != sorted(map(str, record.addresses)):
            found.append(f"prevResult addresses {[str(a) for a in expected]} differ from the "
                         f"recorded {[str(a) for a in record.addresses]}")
        mac = next((i.mac for i in prev.interfaces if i.name == request.ifname and i.sandbox),
                   "")
        pod = Pod(request.container_id, request.ifname, request.netns,
                  record.host_ifname or model.host_ifname(*call.pod_key))
        with model.enter(pod) as pod_ns:
            found += model.check(pod_ns, pod, list(expected), mac)
        _ipam(call, model).check()
    if found:
        raise CniError(CHECK_FAILED, f"attachment {request.container_id[:12]}/{request.ifname} "
                       "is not as ADD left it", "; ".join(found))


def _container_ips(prev: Result, request: Request) -> list[IPConfig]:
    """prevResult's addresses that belong to our container interface."""
    mine = {i for i, iface in enumerate(prev.interfaces)
            if iface.name == request.ifname and iface.sandbox}
    return [ip for ip in prev.ips
            if (ip.interface is None or not mine or ip.interface in mine)]


# --- GC ------------------------------------------------------------------------------

def valid_attachments(raw: dict[str, Any]) -> set[tuple[str, str]]:
    """``cni.dev/valid-attachments`` (or libcni's newer ``cni.dev/attachments``).

    JSON null, what CRI-O sends through libcni for a network without pods, means
    "none is valid".
    """
    key = "cni.dev/valid-attachments"
    if key not in raw and "cni.dev/attachments" in raw:
        key = "cni.dev/attachments"
    if key not in raw:
        raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments: a list of "
                       "{containerID, ifname}")
    listed = raw[key]
    if listed is None:
        return set()
    if not isinstance(listed, list):
        raise CniError(INVALID_CONFIG, f"{key} must be a list of {{containerID, ifname}}")
    try:
        return {(str(a["containerID"]), str(a["ifname"])) for a in listed}
    except (TypeError, KeyError) as exc:
        raise CniError(INVALID_CONFIG, "each valid attachment needs containerID and ifname",
                       str(exc)) from exc


def _gc(call: Call) -> None:
    valid = valid_attachments(call.network.config.raw)
    with networks.open_model(call.network, call.runtime) as model, \
            _locked_registry(call) as registry:
        for key in valid:
            _name_rebuilt(registry, model, key)
        stale = _ipam(call, model).gc(registry, valid)
        for gone in stale:
            log.info("GC: releasing %s/%s %s", gone.container_id[:12], gone.ifname,
                     ", ".join(map(str, gone.addresses)))
            model.unplug(Pod(gone.container_id, gone.ifname, "", gone.host_ifname
                             or model.host_ifname(*gone.key)), owned=True)
        known = {a.host_ifname or model.host_ifname(*a.key) for a in registry.all()}
        model.remove_orphans(known)
        _leave_if_unused(model, registry, had_records=bool(stale))


# --- STATUS --------------------------------------------------------------------------

def _status(call: Call) -> None:
    with networks.open_model(call.network, call.runtime) as model:
        try:
            model.prepare()
        except DataplaneError as err:
            raise to_cni(err, NOT_AVAILABLE) from err
        ipam = _ipam(call, model)
        # STATUS must not create state on a host that never ran an ADD.
        if (call.network.state_dir / REGISTRY_FILE).exists():
            with call.runtime.registry(call.network.state_dir) as registry:
                ipam.status(registry)
        else:
            ipam.status(None)
        why = model.readiness()
    if why:
        raise CniError(LIMITED_CONNECTIVITY, why)


_COMMANDS: dict[str, Callable[[Call], dict[str, Any] | None]] = {
    "ADD": _add,
    "DEL": _del,
    "CHECK": _check,
    "GC": _gc,
    "STATUS": _status,
}
