"""The plugin's work: ``handle(request) -> result``, with no I/O of its own around it.

The same function runs in the plugin process (in-process mode) and, later, in
the node agent. Order of every command: validate everything that can be
validated without changing the host, then take the network's lock, then change
the kernel, rolling back what this call created if a later step fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xvmcni import logsetup, netconf, netstate
from xvmcni.cni.errors import (
    CHECK_FAILED,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    LIMITED_CONNECTIVITY,
    NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CniError,
)
from xvmcni.cni.request import Request
from xvmcni.cni.result import (
    Interface,
    IPConfig,
    Result,
    Route,
    version_tuple,
)
from xvmcni.dataplane import hostif, l2net, names, sysctl, veth
from xvmcni.dataplane.netlink import get_link, rtnl
from xvmcni.dataplane.netns import netns_gone, open_netns
from xvmcni.dataplane.reaper import VethReaper
from xvmcni.ipam import delegate
from xvmcni.ipam.pool import AddressPool, pool_for_host
from xvmcni.ipam.store import Attachment, IpamStore
from xvmcni.locking import network_lock
from xvmcni.netconf import NetworkConfig
from xvmcni.runtime import Runtime

log = logging.getLogger("xvmcni.handler")

LOCK_TIMEOUT = 10.0

# Set by the agent (a long-lived process): DEL retires veths for background deletion
# instead of waiting out the kernel's unregister, and IPAM stores stay open per thread.
# In-process plugin runs leave both None and do everything synchronously.
veth_reaper: VethReaper | None = None
_warm_stores: threading.local | None = None


def keep_stores_open() -> None:
    global _warm_stores
    _warm_stores = threading.local()
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")
# In our results: 0 = bridge, 1 = host veth, 2 = the container's interface.
CONTAINER_INTERFACE_INDEX = 2


def handle(request: Request, runtime: Runtime) -> dict[str, Any] | None:
    """Run one CNI command; the result in the caller's version, or None (DEL/GC/STATUS)."""
    config = netconf.parse(request.config)
    logsetup.configure(config.log_level, config.log_file)
    _require_version(request.command, config.cni_version)
    log.debug("%s container=%s ifname=%s netns=%s", request.command, request.container_id,
              request.ifname, request.netns)
    return _COMMANDS[request.command](request, config)


def _require_version(command: str, version: str) -> None:
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum and version_tuple(version) < version_tuple(minimum):
        raise CniError(INCOMPATIBLE_VERSION,
                       f"{command} needs cniVersion {minimum} or newer, config has {version}")


# --- shared pieces -------------------------------------------------------------------

@contextlib.contextmanager
def open_store(config: NetworkConfig) -> Iterator[IpamStore]:
    path = config.state_dir / "ipam.db"
    if _warm_stores is None:
        store = IpamStore(path, timeout=LOCK_TIMEOUT)
        try:
            yield store
        finally:
            store.close()
        return
    # Agent: one connection per thread and database. Closing sqlite's last
    # connection checkpoints the WAL (fsyncs) every time; keeping it open doesn't.
    cache: dict[Path, tuple[int, IpamStore]] = _warm_stores.__dict__.setdefault("by_path", {})
    inode = path.stat().st_ino if path.exists() else -1
    cached = cache.get(path)
    if cached is None or cached[0] != inode or inode == -1:
        if cached is not None:
            cached[1].close()
        store = IpamStore(path, timeout=LOCK_TIMEOUT)
        cache[path] = (path.stat().st_ino, store)
    yield cache[path][1]


def l2_spec(config: NetworkConfig, host: hostif.HostInterface) -> l2net.L2Spec:
    return l2net.L2Spec(
        network=config.name,
        bridge=config.bridge_name,
        vxlan=config.vxlan_name,
        vni=config.vxlan_id,
        group=config.group,
        port=config.port,
        host=host,
        mtu=l2net.effective_mtu(config.mtu, host.mtu),
        gateway=ipaddress.IPv4Interface(f"{config.gateway}/{config.subnet.prefixlen}"),
        gateway_mac=names.gateway_mac(config.vxlan_id),
        ip_masq=config.ip_masq,
    )


def address_pool(config: NetworkConfig, host: hostif.HostInterface) -> AddressPool:
    return pool_for_host(config.subnet, config.gateway, host.address, config.per_host_prefix,
                         config.range_start, config.range_end)


def _container_routes(config: NetworkConfig) -> list[Route]:
    routes = [Route(DEFAULT_ROUTE, config.gateway)]
    for route in config.routes:
        if route.dst == DEFAULT_ROUTE:
            routes[0] = Route(DEFAULT_ROUTE, route.gw or config.gateway)
        elif route.dst.version == 4:
            routes.append(Route(route.dst, route.gw or config.gateway))
    return routes


def _requested_addresses(request: Request, config: NetworkConfig) -> list[ipaddress.IPv4Address]:
    """Static addresses from CNI_ARGS ``IP=`` or the ``ips`` capability."""
    raw: list[str] = []
    if request.args.get("IP"):
        raw.extend(part for part in request.args["IP"].split(",") if part)
    caps = config.runtime_config.get("ips")
    if isinstance(caps, list):
        raw.extend(str(item) for item in caps)
    out = []
    for text in raw:
        try:
            addr = ipaddress.ip_interface(text.strip()).ip
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"requested IP {text!r} is not an address") from exc
        if not isinstance(addr, ipaddress.IPv4Address):
            raise CniError(INVALID_CONFIG, f"requested IP {text!r} is IPv6; this network is IPv4")
        out.append(addr)
    return out


def _requested_mac(request: Request, config: NetworkConfig) -> str:
    mac = config.runtime_config.get("mac") or request.args.get("MAC") or ""
    if not isinstance(mac, str):
        raise CniError(INVALID_CONFIG, "runtimeConfig.mac must be a string")
    parts = mac.split(":") if mac else []
    if mac and (len(parts) != 6 or not all(len(p) == 2 for p in parts)
                or not all(c in "0123456789abcdefABCDEF" for p in parts for c in p)):
        raise CniError(INVALID_CONFIG, f"requested MAC {mac!r} is not a MAC address")
    if mac and int(parts[0], 16) & 1:
        raise CniError(INVALID_CONFIG, f"requested MAC {mac!r} is a multicast address")
    return mac.lower()


def container_side(config: NetworkConfig, request: Request, mtu: int,
                    addresses: list[ipaddress.IPv4Interface], mac: str) -> veth.ContainerSide:
    return veth.ContainerSide(
        ifname=request.ifname,
        addresses=list(addresses),
        routes=[(r.dst, r.gw) for r in _container_routes(config)],
        mtu=mtu,
        mac=mac,
    )


def leave_if_unused(host_ipr: Any, store: IpamStore, config: NetworkConfig) -> None:
    """The host leaves the network's VXLAN after its last container."""
    if store.count():
        return
    if get_link(host_ipr, config.bridge_name) is None \
            and get_link(host_ipr, config.vxlan_name) is None:
        # Nothing of ours here (e.g. DEL of an unknown container): don't run nft.
        return
    log.info("last container of %s gone: removing %s and %s", config.name,
             config.bridge_name, config.vxlan_name)
    l2net.remove(host_ipr, config.name, config.bridge_name, config.vxlan_name)


def delegated_del(request: Request, config: NetworkConfig, container_id: str,
                   ifname: str) -> None:
    sub = dataclasses.replace(request, container_id=container_id, ifname=ifname)
    delegate.invoke(sub, "DEL", config.raw)


# --- ADD -----------------------------------------------------------------------------

def _add(request: Request, config: NetworkConfig) -> dict[str, Any]:
    requested = _requested_addresses(request, config)
    mac = _requested_mac(request, config)
    with rtnl() as host_ipr:
        host = hostif.lookup(host_ipr, config.host_interface)
        spec = l2_spec(config, host)
        pod_fd = open_netns(request.netns)
        try:
            with network_lock(config.state_dir, LOCK_TIMEOUT), open_store(config) as store:
                return _add_locked(request, config, spec, host_ipr, pod_fd, store,
                                   requested, mac)
        finally:
            os.close(pod_fd)


def _add_locked(request: Request, config: NetworkConfig, spec: l2net.L2Spec, host_ipr: Any,
                pod_fd: int, store: IpamStore, requested: list[ipaddress.IPv4Address],
                mac: str) -> dict[str, Any]:
    host_name = names.host_veth_name(request.container_id, request.ifname)
    existing = store.get(request.container_id, request.ifname)
    in_use = store.count() > (1 if existing else 0)
    delegated_result: Result | None = None
    record = Attachment(container_id=request.container_id, ifname=request.ifname,
                        netns=request.netns, host_ifname=host_name)
    # Delegated IPAM for a new attachment runs once the interface exists: plugins such
    # as dhcp obtain the address through it (the reference bridge plugin's order too).
    delegate_now = config.ipam is not None and existing is None
    if config.ipam is None:
        attachment, created = store.attach(record, address_pool(config, spec.host), requested)
    else:
        attachment, created = existing or record, False
    try:
        if not in_use:
            netstate.remember(config.state_dir, config.raw)
            if spec.mtu < config.mtu:  # said once, when the host joins the network
                log.warning("mtu %d does not fit a VXLAN packet on %s (MTU %d); using %d",
                            config.mtu, spec.host.name, spec.host.mtu, spec.mtu)
        bridge_index = l2net.ensure(host_ipr, spec, in_use)
        sysctl.ensure("net.ipv4.ip_forward", "1")
        with rtnl(pod_fd) as pod_ipr:
            if delegate_now:
                bare = veth.ContainerSide(request.ifname, [], [], spec.mtu, mac)
                veth.ensure(host_ipr, pod_ipr, pod_fd, host_name, bridge_index, bare)
                delegated_result = delegate.add(request, config.raw)
                prefix = config.subnet.prefixlen
                record.addresses = [ipaddress.IPv4Interface(f"{ip.address.ip}/{prefix}")
                                    for ip in delegated_result.ips if ip.address.version == 4]
                if not record.addresses:
                    raise CniError(INVALID_CONFIG, "the IPAM plugin gave no IPv4 address",
                                   "this network carries IPv4")
                attachment, created = store.attach(record, None)
            side = container_side(config, request, spec.mtu, attachment.addresses, mac)
            pair = veth.ensure(host_ipr, pod_ipr, pod_fd, host_name, bridge_index, side)
        if existing is not None and existing.netns != request.netns:
            store.update_host_ifname(request.container_id, request.ifname, host_name,
                                     request.netns)
    except BaseException:
        if created or delegate_now:
            _rollback_add(request, config, host_ipr, pod_fd, store, host_name)
        raise
    log.info("ADD %s/%s: %s on %s", request.container_id[:12], request.ifname,
             ", ".join(map(str, attachment.addresses)), host_name)
    result = Result(
        interfaces=[Interface(spec.bridge, spec.gateway_mac, mtu=spec.mtu),
                    Interface(host_name, pair.host_mac, mtu=spec.mtu),
                    Interface(request.ifname, pair.container_mac, sandbox=request.netns,
                              mtu=spec.mtu)],
        ips=[IPConfig(addr, config.gateway, CONTAINER_INTERFACE_INDEX)
             for addr in attachment.addresses],
        routes=_container_routes(config),
        dns=dict(config.dns or (delegated_result.dns if delegated_result else {})),
    )
    return result.to_dict(config.cni_version)


def _rollback_add(request: Request, config: NetworkConfig, host_ipr: Any, pod_fd: int,
                  store: IpamStore, host_name: str) -> None:
    """Undo a failed first ADD, so a failure leaves the host as it was.

    Each step is attempted even if an earlier one fails: a half rollback would
    leak the very things the caller cannot see.
    """
    steps: list[tuple[str, Callable[[], object]]] = []

    def remove_veth() -> None:
        with rtnl(pod_fd) as pod_ipr:
            veth.remove(host_ipr, pod_ipr, host_name, request.ifname, owned=True)

    steps.append(("remove veth", remove_veth))
    steps.append(("release address",
                  lambda: store.detach(request.container_id, request.ifname)))
    if config.ipam is not None:
        steps.append(("release delegated address",
                      lambda: delegated_del(request, config, request.container_id,
                                             request.ifname)))
    steps.append(("leave network", lambda: leave_if_unused(host_ipr, store, config)))
    for what, step in steps:
        try:
            step()
        except Exception:  # keep rolling back; the caller gets the original error
            log.exception("rollback after failed ADD: could not %s", what)


# --- DEL -----------------------------------------------------------------------------

def _del(request: Request, config: NetworkConfig) -> None:
    host_name = names.host_veth_name(request.container_id, request.ifname)
    with rtnl() as host_ipr, network_lock(config.state_dir, LOCK_TIMEOUT), \
            open_store(config) as store:
        record = store.get(request.container_id, request.ifname)
        if veth_reaper is not None and veth_reaper.retire(host_ipr, host_name):
            pass  # down and queued: the agent deletes the pair off the request path
        elif netns_gone(request.netns):
            veth.remove(host_ipr, None, host_name, request.ifname, owned=record is not None)
        else:
            pod_fd = open_netns(request.netns)
            try:
                with rtnl(pod_fd) as pod_ipr:
                    veth.remove(host_ipr, pod_ipr, host_name, request.ifname,
                                owned=record is not None)
            finally:
                os.close(pod_fd)
        if config.ipam is not None:
            delegated_del(request, config, request.container_id, request.ifname)
        store.detach(request.container_id, request.ifname)
        leave_if_unused(host_ipr, store, config)
    log.info("DEL %s/%s", request.container_id[:12], request.ifname)


# --- CHECK ---------------------------------------------------------------------------

def _check(request: Request, config: NetworkConfig) -> None:
    prev = config.prev_result
    if prev is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the configuration")
    with rtnl() as host_ipr, open_store(config) as store:
        record = store.get(request.container_id, request.ifname)
        if record is None:
            raise CniError(UNKNOWN_CONTAINER,
                           f"no attachment {request.container_id}/{request.ifname} "
                           f"on network {config.name}")
        host = hostif.lookup(host_ipr, config.host_interface)
        spec = l2_spec(config, host)
        expected = [ipaddress.IPv4Interface(ip.address) for ip in _container_ips(prev, request)]
        found = l2net.problems(host_ipr, spec)
        if sorted(map(str, expected)) != sorted(map(str, record.addresses)):
            found.append(f"prevResult addresses {[str(a) for a in expected]} differ from the "
                         f"recorded {[str(a) for a in record.addresses]}")
        mac = next((i.mac for i in prev.interfaces if i.name == request.ifname and i.sandbox),
                   "")
        side = container_side(config, request, spec.mtu, expected, mac)
        bridge = get_link(host_ipr, spec.bridge)
        pod_fd = open_netns(request.netns)
        try:
            with rtnl(pod_fd) as pod_ipr:
                found += veth.problems(host_ipr, pod_ipr, record.host_ifname or
                                       names.host_veth_name(request.container_id,
                                                            request.ifname),
                                       bridge["index"] if bridge else -1, side)
        finally:
            os.close(pod_fd)
    if config.ipam is not None:
        delegate.invoke(request, "CHECK", config.raw)
    if found:
        raise CniError(CHECK_FAILED, f"attachment {request.container_id[:12]}/{request.ifname} "
                       "is not as ADD left it", "; ".join(found))


def _container_ips(prev: Result, request: Request) -> list[IPConfig]:
    """prevResult's IPv4 addresses that belong to our container interface."""
    mine = {i for i, iface in enumerate(prev.interfaces)
            if iface.name == request.ifname and iface.sandbox}
    return [ip for ip in prev.ips if ip.address.version == 4
            and (ip.interface is None or not mine or ip.interface in mine)]


# --- GC ------------------------------------------------------------------------------

def _gc(request: Request, config: NetworkConfig) -> None:
    raw = config.raw.get("cni.dev/valid-attachments")
    if raw is None:
        raw = config.raw.get("cni.dev/attachments")
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments: a list of "
                       "{containerID, ifname}")
    try:
        valid = {(str(a["containerID"]), str(a["ifname"])) for a in raw}
    except (TypeError, KeyError) as exc:
        raise CniError(INVALID_CONFIG, "each valid attachment needs containerID and ifname",
                       str(exc)) from exc
    with rtnl() as host_ipr, network_lock(config.state_dir, LOCK_TIMEOUT), \
            open_store(config) as store:
        for stale in store.gc(valid):
            log.info("GC: releasing %s/%s %s", stale.container_id[:12], stale.ifname,
                     ", ".join(map(str, stale.addresses)))
            veth.remove(host_ipr, None, stale.host_ifname or
                        names.host_veth_name(stale.container_id, stale.ifname),
                        stale.ifname, owned=True)
            if config.ipam is not None:
                delegated_del(request, config, stale.container_id, stale.ifname)
        remove_orphan_ports(host_ipr, config, store)
        leave_if_unused(host_ipr, store, config)


def remove_orphan_ports(host_ipr: Any, config: NetworkConfig, store: IpamStore) -> None:
    """Host veths on our bridge that no record explains: left by a crash mid-ADD."""
    bridge = get_link(host_ipr, config.bridge_name)
    if bridge is None:
        return
    known = {a.host_ifname or names.host_veth_name(a.container_id, a.ifname)
             for a in store.all()}
    for link in host_ipr.get_links():
        name = link.get("IFLA_IFNAME")
        if link.get("IFLA_MASTER") == bridge["index"] and name != config.vxlan_name \
                and str(name).startswith(names.HOST_VETH_PREFIX) and name not in known:
            log.info("GC: removing orphan port %s", name)
            veth.remove(host_ipr, None, str(name), "", owned=True)


# --- STATUS --------------------------------------------------------------------------

def _status(request: Request, config: NetworkConfig) -> None:
    with rtnl() as host_ipr:
        try:
            host = hostif.lookup(host_ipr, config.host_interface)
        except CniError as err:
            raise CniError(NOT_AVAILABLE, err.msg, err.details) from err
    if config.ipam is not None:
        try:
            delegate.find_plugin(str(config.ipam.get("type")), request.path)
        except CniError as err:
            raise CniError(NOT_AVAILABLE, err.msg, err.details) from err
        return
    pool = address_pool(config, host)
    db = config.state_dir / "ipam.db"
    if not db.exists():
        return
    with open_store(config) as store:
        used = store.used_addresses()
    if used >= pool.size():
        raise CniError(LIMITED_CONNECTIVITY,
                       f"address range {pool.first}-{pool.last} of {config.name} is exhausted",
                       f"{used} of {pool.size()} addresses in use")


_COMMANDS: dict[str, Callable[[Request, NetworkConfig], dict[str, Any] | None]] = {
    "ADD": _add,
    "DEL": _del,
    "CHECK": _check,
    "GC": _gc,
    "STATUS": _status,
}
