"""Bring the kernel back in line with the attachment registry, and collect garbage.

Run by the agent at start and then periodically (or on demand). For every
network this host remembers: release attachments whose netns is gone, recreate
what the model is missing for the containers that remain, re-plug their
interfaces, remove orphan devices, and leave networks that have no container
left. Nothing that works is recreated: a running container loses no packet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni import networks
from xvmcni.cni.request import Request
from xvmcni.commands import to_cni
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netns import netns_gone
from xvmcni.errors import CniError
from xvmcni.models.base import NetworkModel, Pod
from xvmcni.networks import Network
from xvmcni.runtime import LOCK_TIMEOUT, REGISTRY_FILE, Runtime
from xvmcni.state import netstate
from xvmcni.state.attachments import Attachment, AttachmentRegistry
from xvmcni.state.locks import network_lock

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


def known_networks(conf_dirs: Iterable[Path], data_dirs: Iterable[Path]) -> list[Network]:
    """Networks from the config dirs plus those remembered in data dirs, one per state dir."""
    raws: list[dict[str, Any]] = []
    for conf_dir in conf_dirs:
        raws.extend(configs_in_dir(conf_dir))
    seen_data_dirs = set(data_dirs)
    for raw in list(raws):
        data_dir = raw.get("dataDir")
        if isinstance(data_dir, str):
            seen_data_dirs.add(Path(data_dir))
    for data_dir in sorted(seen_data_dirs):
        raws.extend(netstate.remembered(data_dir))
    found: dict[Path, Network] = {}
    for raw in raws:
        try:
            network = networks.parse(raw)
        except CniError as err:
            log.warning("skipping network config %s: %s", raw.get("name"), err)
            continue
        # Remembered configs come last and win: they are what ADD really used.
        for part in networks.segments(network):  # macvlan: one per segment
            found[part.state_dir] = part
    return list(found.values())


def _pod(model: NetworkModel, attachment: Attachment) -> Pod:
    return Pod(attachment.container_id, attachment.ifname, attachment.netns,
               attachment.host_ifname or model.host_ifname(*attachment.key))


def reconcile(network: Network, runtime: Runtime,
              lock_timeout: float = LOCK_TIMEOUT) -> NetworkReport:
    """One pass over one network; failures are reported, never raised (one broken
    network must not stop the others)."""
    report = NetworkReport(network.name, str(network.state_dir))
    if not (network.state_dir / REGISTRY_FILE).exists():
        return report
    try:
        with networks.open_model(network, runtime) as model, \
                network_lock(network.state_dir, lock_timeout), \
                runtime.registry(network.state_dir) as registry:
            _release_dead(network, model, registry, report)
            remaining = registry.all()
            report.containers = len(remaining)
            if remaining:
                replugged = model.repair([(_pod(model, a), list(a.addresses))
                                          for a in remaining])
                report.replugged = [f"{p.container_id[:12]}/{p.ifname}" for p in replugged]
            model.remove_orphans({_pod(model, a).host_ifname for a in remaining})
            if not remaining:
                model.leave(unmarked_is_ours=bool(report.released))
    except CniError as err:
        report.error = str(err)
    except DataplaneError as err:
        report.error = str(to_cni(err))
    except Exception as exc:  # a bug in one network must not stop the rest (logged)
        log.exception("reconcile %s failed unexpectedly", network.name)
        report.error = f"internal error: {exc!r}"
    if report.error:
        log.error("reconcile %s: %s", network.name, report.error)
    return report


def _release_dead(network: Network, model: NetworkModel,
                  registry: AttachmentRegistry, report: NetworkReport) -> None:
    dead = []
    for attachment in registry.all():
        try:
            gone = netns_gone(attachment.netns)
        except OSError as exc:
            # Unknown is not gone: freeing a live container's address would hand it
            # out twice. Try again next pass.
            log.warning("cannot tell whether %s of %s/%s still exists: %s; keeping it",
                        attachment.netns, attachment.container_id[:12], attachment.ifname,
                        exc)
            continue
        if not gone:
            continue
        model.unplug(_pod(model, attachment), owned=True)
        released = registry.detach(attachment.container_id, attachment.ifname)
        if released is not None:
            dead.append(released)
        report.released.append(f"{attachment.container_id[:12]}/{attachment.ifname}")
        log.info("released %s/%s of %s: its netns %s is gone", attachment.container_id[:12],
                 attachment.ifname, network.name, attachment.netns)
    if dead:
        request = Request("DEL", config=network.config.raw)
        networks.ipam(network, request, lambda: None).forget(dead)
