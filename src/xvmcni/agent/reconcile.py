"""Bring the kernel back in line with the IPAM store, and collect garbage.

Run by the agent at start and then periodically (or on demand). For every
network this host remembers: release attachments whose netns is gone, recreate
missing bridges/VXLANs/gateway addresses/nftables rules for the containers
that remain, re-plug their veths, remove orphan veths, and leave networks that
have no container left. Nothing that works is recreated: a running container
loses no packet.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni import handler, netconf, netstate
from xvmcni.cni.errors import CniError
from xvmcni.cni.request import Request
from xvmcni.dataplane import hostif, l2net, names, sysctl, veth
from xvmcni.dataplane.netlink import get_link, rtnl
from xvmcni.dataplane.netns import netns_gone, open_netns
from xvmcni.locking import network_lock
from xvmcni.netconf import NetworkConfig

log = logging.getLogger(__name__)
PLUGIN_TYPE = "xvm-cni"


@dataclass
class NetworkReport:
    name: str
    state_dir: str
    containers: int = 0
    released: list[str] = field(default_factory=list)
    replugged: list[str] = field(default_factory=list)
    error: str = ""


def configs_in_dir(conf_dir: Path) -> list[dict[str, Any]]:
    """xvm-cni configs in a CNI config directory (.conf, .json, and .conflist entries)."""
    found: list[dict[str, Any]] = []
    if not conf_dir.is_dir():
        return found
    for path in sorted(conf_dir.iterdir()):
        if path.suffix not in (".conf", ".conflist", ".json"):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable CNI config %s: %s", path, exc)
            continue
        if not isinstance(data, dict):
            continue
        entries = data.get("plugins") if isinstance(data.get("plugins"), list) else [data]
        for entry in entries or []:
            if isinstance(entry, dict) and entry.get("type") == PLUGIN_TYPE:
                # libcni injects the list's name and version into each entry.
                found.append({**entry, "name": data.get("name", entry.get("name")),
                              "cniVersion": data.get("cniVersion", entry.get("cniVersion"))})
    return found


def known_networks(conf_dirs: Iterable[Path], data_dirs: Iterable[Path]) -> list[NetworkConfig]:
    """Networks from the config dirs plus those remembered in data dirs, one per state dir."""
    raws: list[dict[str, Any]] = []
    for conf_dir in conf_dirs:
        raws.extend(configs_in_dir(conf_dir))
    seen_data_dirs = set(data_dirs)
    for raw in list(raws):
        seen_data_dirs.add(Path(str(raw.get("dataDir", netconf.DEFAULT_DATA_DIR))))
    for data_dir in sorted(seen_data_dirs):
        raws.extend(netstate.remembered(data_dir))
    networks: dict[Path, NetworkConfig] = {}
    for raw in raws:
        try:
            config = netconf.parse(raw)
        except CniError as err:
            log.warning("skipping network config %s: %s", raw.get("name"), err)
            continue
        # Remembered configs come last and win: they are what ADD really used.
        networks[config.state_dir] = config
    return list(networks.values())


def reconcile(config: NetworkConfig, lock_timeout: float = handler.LOCK_TIMEOUT) -> NetworkReport:
    report = NetworkReport(config.name, str(config.state_dir))
    if not (config.state_dir / "ipam.db").exists():
        return report
    try:
        with rtnl() as host_ipr, network_lock(config.state_dir, lock_timeout), \
                handler.open_store(config) as store:
            _release_dead(host_ipr, config, store, report)
            remaining = store.all()
            report.containers = len(remaining)
            if remaining:
                _repair(host_ipr, config, store, report)
            handler.remove_orphan_ports(host_ipr, config, store)
            handler.leave_if_unused(host_ipr, store, config)
    except CniError as err:
        report.error = str(err)
        log.error("reconcile %s: %s", config.name, err)
    return report


def _release_dead(host_ipr: Any, config: NetworkConfig, store: Any,
                  report: NetworkReport) -> None:
    for attachment in store.all():
        if not netns_gone(attachment.netns):
            continue
        host_name = attachment.host_ifname or names.host_veth_name(attachment.container_id,
                                                                   attachment.ifname)
        veth.remove(host_ipr, None, host_name, attachment.ifname, owned=True)
        if config.ipam is not None:
            request = Request("DEL", attachment.container_id, "", attachment.ifname)
            try:
                handler.delegated_del(request, config, attachment.container_id,
                                      attachment.ifname)
            except CniError as err:
                log.warning("delegated IPAM DEL for %s failed: %s", attachment.container_id,
                            err)
        store.detach(attachment.container_id, attachment.ifname)
        report.released.append(f"{attachment.container_id[:12]}/{attachment.ifname}")
        log.info("released %s/%s of %s: its netns %s is gone", attachment.container_id[:12],
                 attachment.ifname, config.name, attachment.netns)


def _repair(host_ipr: Any, config: NetworkConfig, store: Any, report: NetworkReport) -> None:
    host = hostif.lookup(host_ipr, config.host_interface)
    spec = handler.l2_spec(config, host)
    bridge_index = l2net.ensure(host_ipr, spec, in_use=True, refresh_filters=True)
    sysctl.ensure("net.ipv4.ip_forward", "1")
    for attachment in store.all():
        host_name = attachment.host_ifname or names.host_veth_name(attachment.container_id,
                                                                   attachment.ifname)
        link = get_link(host_ipr, host_name)
        if link is not None and link.get("IFLA_MASTER") == bridge_index and link["flags"] & 1:
            continue  # healthy: do not touch a running container
        request = Request("ADD", attachment.container_id, attachment.netns, attachment.ifname)
        side = handler.container_side(config, request, spec.mtu, attachment.addresses, "")
        pod_fd = open_netns(attachment.netns)
        try:
            with rtnl(pod_fd) as pod_ipr:
                veth.ensure(host_ipr, pod_ipr, pod_fd, host_name, bridge_index, side)
        except CniError as err:
            log.error("cannot repair %s/%s: %s", attachment.container_id[:12],
                      attachment.ifname, err)
            continue
        finally:
            os.close(pod_fd)
        report.replugged.append(f"{attachment.container_id[:12]}/{attachment.ifname}")
        log.info("re-plugged %s/%s into %s", attachment.container_id[:12], attachment.ifname,
                 spec.bridge)
