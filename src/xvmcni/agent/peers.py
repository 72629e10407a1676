"""Peer sync: the agent's side of a control plane that lists hosts (etcd, kubernetes).

For every known network whose control plane has peers, this starts the plane's
watch and applies each new peer set to the kernel through the network model,
under the network's lock, and caches it in the state dir (an ADD by the
in-process plugin, agent down, programs the cached peers when the host joins).
It publishes this host's record only once the host has joined (l2: with its
first container, when the VXLAN device exists) and withdraws it when the host
leaves; it keeps the host's IPAM blocks (l2) or pod CIDRs (routed) in ``claims.json``.

A tick every ``interval`` seconds (or at once after an ADD or DEL through the
agent, ``nudge``) picks up new networks, joins and leaves. The last peer set is
re-applied (repairing anything removed by hand) after a nudge and otherwise every
``REAPPLY_INTERVAL`` seconds: a full re-apply reads the network's routes,
neighbours and FDB back from the kernel, and with 50 idle agents on 2 cores doing
that every tick cost more CPU than anything else they do (bench/convergence.py).
A new peer set from the control plane is applied at once, on its own thread, and
as a change against the set applied before (``PeerMemory``: the routed model then
programs only the peers that changed, without those dumps); the periodic re-apply
and the one after an error stay full.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xvmcni import networks
from xvmcni.commands import to_cni
from xvmcni.controlplane import peercache
from xvmcni.controlplane.base import Peer
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.errors import CniError
from xvmcni.models.base import PeerMemory
from xvmcni.networks import Network
from xvmcni.runtime import LOCK_TIMEOUT, Runtime
from xvmcni.state.locks import network_lock

log = logging.getLogger(__name__)

SYNC_INTERVAL = 5.0
REAPPLY_INTERVAL = 30.0
# How often the network list is read again from the config and data dirs without a
# nudge (it parses every config: not on every tick).
RESCAN_INTERVAL = 30.0


def _plane_identity(network: Network) -> tuple[Any, ...]:
    """What the running control plane was built from: a change means a new one."""
    settings = network.settings
    return (network.etcd, network.k8s, getattr(settings, "encap", None),
            getattr(settings, "route_protocol", None))


class _Tracked:
    """One network's running control plane and what we last told / heard."""

    def __init__(self, network: Network, plane: Any) -> None:
        self.network = network
        self.plane = plane
        self.peers: list[Peer] | None = None
        self.published: Peer | None = None
        self.blocks_known = network.blocks is None and network.cidrs is None
        # What the model last applied: a peer event programs only the change.
        self.memory = PeerMemory()


class PeerSync:
    def __init__(self, runtime: Runtime, known: Callable[[], list[Network]],
                 interval: float = SYNC_INTERVAL) -> None:
        self.runtime = runtime
        if runtime.control_planes is None:
            runtime.control_planes = {}
        self.planes: dict[Path, Any] = runtime.control_planes
        self._known = known
        self._interval = interval
        self._tracked: dict[Path, _Tracked] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._rescan = True
        self._scanned = 0.0
        self._reapplied = 0.0
        self._wanted: dict[Path, Network] = {}

    def start(self) -> None:
        """In the background: etcd being slow or away must not delay serving ADDs."""
        self._wake.set()  # the first pass runs at once
        self._thread = threading.Thread(target=self._loop, name="peers", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        self._rescan = True
        self._reapplied = 0.0  # an ADD or DEL: re-apply on this pass
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        with self._lock:
            tracked, self._tracked = self._tracked, {}
            self.planes.clear()
        for item in tracked.values():
            item.plane.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception:  # the loop must survive one bad pass; it is logged
                log.exception("peer sync failed")

    # --- one pass --------------------------------------------------------------------

    def _networks(self) -> dict[Path, Network]:
        if self._rescan or time.monotonic() - self._scanned >= RESCAN_INTERVAL:
            self._rescan = False
            self._scanned = time.monotonic()
            self._wanted = {n.state_dir: n for n in self._known() if n.follows_peers}
        return self._wanted

    def sync(self) -> None:
        wanted = self._networks()
        with self._lock:
            for state_dir in list(self._tracked):
                item = self._tracked[state_dir]
                if wanted.get(state_dir) is None \
                        or _plane_identity(wanted[state_dir]) != _plane_identity(item.network):
                    del self._tracked[state_dir]
                    self.planes.pop(state_dir, None)
                    item.plane.close()
            for state_dir, network in wanted.items():
                if state_dir not in self._tracked:
                    self._track(network)
            tracked = list(self._tracked.values())
        reapply = time.monotonic() - self._reapplied >= REAPPLY_INTERVAL
        if reapply:
            self._reapplied = time.monotonic()
        for item in tracked:
            self._hold_blocks(item)
            self._publish(item)
            if reapply and item.peers is not None:
                self._program(item, item.peers, full=True)

    def _track(self, network: Network) -> None:
        plane = networks.control_plane(network)
        item = _Tracked(network, plane)
        self._tracked[network.state_dir] = item
        self.planes[network.state_dir] = plane
        log.info("%s: following peers through %s", network.name, plane.kind)
        plane.watch(lambda peers: self._changed(item, peers))

    def _changed(self, item: _Tracked, peers: list[Peer]) -> None:
        """On the control plane's thread: a new peer set."""
        item.peers = peers
        try:
            peercache.write(item.network.state_dir, peers)
        except OSError as exc:
            log.warning("%s: cannot cache peers: %s", item.network.name, exc)
        self._program(item, peers)

    def _program(self, item: _Tracked, peers: list[Peer], full: bool = False) -> None:
        """``full``: read the kernel back instead of programming the change since the
        last apply (the periodic re-apply repairs what changed behind our back)."""
        network = item.network
        try:
            with network_lock(network.state_dir, LOCK_TIMEOUT), \
                    networks.open_model(network, self.runtime) as model:
                if full:
                    item.memory.forget()
                model.on_peers(peers, item.memory)
        except CniError as err:
            item.memory.forget()
            log.error("%s: cannot program peers: %s", network.name, err)
        except DataplaneError as err:
            item.memory.forget()
            log.error("%s: cannot program peers: %s", network.name, to_cni(err))

    def _hold_blocks(self, item: _Tracked) -> None:
        if item.blocks_known:
            return
        from xvmcni.controlplane.etcd import ClaimsExhausted
        from xvmcni.controlplane.etcdstore import EtcdUnavailable
        what = "pod CIDRs" if item.network.cidrs is not None else "address blocks"
        try:
            if item.network.cidrs is not None:
                held = [str(c) for c in networks.hold_cidrs(item.network, item.plane)]
            else:
                held = networks.hold_blocks(item.network, item.plane)
        except EtcdUnavailable as exc:
            log.warning("%s: cannot look up this host's %s yet: %s",
                        item.network.name, what, exc)
            return
        except ClaimsExhausted as exc:
            log.error("%s: no %s for this host: %s", item.network.name, what, exc)
            return
        except OSError as exc:
            log.error("%s: cannot write this host's blocks: %s", item.network.name, exc)
            return
        item.blocks_known = True
        log.info("%s: this host holds %s %s", item.network.name, what, ", ".join(held))

    def _publish(self, item: _Tracked) -> None:
        try:
            with networks.open_model(item.network, self.runtime) as model:
                me = model.local_peer(item.plane.me)
        except (CniError, DataplaneError) as err:
            log.warning("%s: cannot read this host's record: %s", item.network.name, err)
            return
        if me == item.published:
            return
        if me is None:
            log.info("%s: host left the network: withdrawing its record", item.network.name)
            item.plane.unpublish()
        else:
            log.info("%s: publishing %s (%s, VTEP %s)", item.network.name, me.name,
                     me.underlay, me.vtep_mac)
            item.plane.publish(me)
        item.published = me
