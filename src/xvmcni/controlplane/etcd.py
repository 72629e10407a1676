"""The etcd control plane: hosts publish lease-bound records, watch each other, and
claim shares of a cluster range by compare-and-create.

Keys (values are JSON)::

    <prefix>/<network>/hosts/<host>      this host's record, on a TTL lease
    <prefix>/<network>/<kind>/<item>     a claim ({"host": ...}), on the host's
                                         grace lease (reclaimAfter seconds)

Two threads per network: the keeper refreshes the leases every TTL/3 (granting
and re-publishing when one expired) and the watcher lists the hosts, then follows
the watch from that revision + 1. pyetcd's watch callback only enqueues; the
watcher thread applies. etcd away: both retry with capped exponential backoff,
and the peer set stays as last known; only a delete event or a fresh full list
removes a peer, so nothing is unprogrammed while etcd is away.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

from xvmcni.controlplane.base import Peer, PeersChanged
from xvmcni.controlplane.etcdconfig import EtcdSettings, host_name
from xvmcni.controlplane.etcdstore import (
    Change,
    Compacted,
    Entry,
    EtcdStore,
    EtcdUnavailable,
)

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.2
BACKOFF_CAP = 5.0


class ClaimsExhausted(LookupError):
    """Every candidate is held by some host."""


class Backoff:
    """Capped exponential delays: 0.2, 0.4, ... 5 s, reset on success."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def encode_peer(peer: Peer) -> bytes:
    return json.dumps({"name": peer.name, "underlay": {f"ipv{peer.underlay.version}":
                                                       str(peer.underlay)},
                       "vtepMac": peer.vtep_mac, "podCidrs": list(peer.pod_cidrs)},
                      sort_keys=True).encode()


def decode_peer(value: bytes) -> Peer | None:
    """A host record, or None (logged) when it is not one of ours."""
    try:
        data = json.loads(value)
        underlay = data["underlay"]
        text = underlay.get("ipv4") or underlay.get("ipv6")
        return Peer(name=str(data["name"]), underlay=ipaddress.ip_address(text),
                    vtep_mac=str(data.get("vtepMac", "")),
                    pod_cidrs=tuple(str(c) for c in data.get("podCidrs", [])))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring a host record that is not xvm-cni's: %s (%r)", exc, value[:80])
        return None


class EtcdControlPlane:
    kind = "etcd"

    def __init__(self, settings: EtcdSettings, network: str, me: str | None = None,
                 store: EtcdStore | None = None) -> None:
        self.settings = settings
        self.network = network
        self.me = me or host_name()
        self.base = f"{settings.prefix}/{network}"
        self.hosts_prefix = f"{self.base}/hosts/"
        self._store = store
        self._store_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._record: Peer | None = None
        self._lease: int | None = None
        self._grace: set[int] = set()
        self._peers: dict[str, Peer] = {}
        self._events: queue.Queue[list[Change] | BaseException] = queue.Queue()
        self._threads: list[threading.Thread] = []
        # Read by tests and status: the revision the watch is at.
        self.revision = 0
        self.relists = 0

    # --- connection ------------------------------------------------------------------

    @property
    def store(self) -> EtcdStore:
        with self._store_lock:
            if self._store is None:
                self._store = EtcdStore(self.settings)
            return self._store

    def _start(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=f"etcd-{name}-{self.network}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    # --- publish ---------------------------------------------------------------------

    def publish(self, me: Peer) -> None:
        """Publish (or update) this host's record; the keeper keeps it alive."""
        with self._lock:
            changed = me != self._record
            self._record = me
        self._ensure_keeper()
        if changed:
            self._wake.set()

    def _ensure_keeper(self) -> None:
        """The keeper runs once there is a record or a claim to keep alive."""
        with self._lock:
            if any(t.name.startswith("etcd-keeper") for t in self._threads):
                return
            thread = threading.Thread(target=self._keep, name=f"etcd-keeper-{self.network}",
                                      daemon=True)
            self._threads.append(thread)
        thread.start()

    def unpublish(self) -> None:
        """Remove this host's record now (the host left the network)."""
        with self._lock:
            self._record = None
            lease, self._lease = self._lease, None
        if lease is not None:
            try:
                self.store.revoke(lease)
            except EtcdUnavailable as exc:
                log.warning("%s: could not withdraw this host's record (%s): it expires "
                            "within %ds", self.network, exc, self.settings.ttl)

    def _keep(self) -> None:
        backoff = Backoff()
        published: Peer | None = None
        failing = False
        while not self._stop.is_set():
            try:
                published = self._keep_once(published)
                backoff.reset()
                wait = self.settings.ttl / 3
                if failing:
                    log.info("%s: etcd reachable again; this host's record is kept",
                             self.network)
                failing = False
            except EtcdUnavailable as exc:
                wait = min(backoff.next(), self.settings.ttl / 3)
                # Said once per outage; the retries go to debug.
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "%s: etcd unavailable while keeping this host's record: %s; "
                        "retrying every %.1fs at most", self.network, exc,
                        self.settings.ttl / 3)
                failing = True
            self._wake.wait(wait)
            self._wake.clear()

    def _keep_once(self, published: Peer | None) -> Peer | None:
        self._refresh_claims()
        with self._lock:
            record, lease = self._record, self._lease
        if record is None:
            return None
        if lease is not None and self.store.refresh(lease) <= 0:
            log.info("%s: this host's lease expired; publishing again", self.network)
            lease = None
        if lease is None:
            lease = self.store.grant(self.settings.ttl)
            published = None
        if published != record:
            self.store.put(self.hosts_prefix + self.me, encode_peer(record), lease=lease)
        with self._lock:
            self._lease = lease
        return record

    def _refresh_claims(self) -> None:
        """Keep the grace leases of this host's claims alive (whether or not the host
        has joined: a host that is up keeps its blocks)."""
        with self._lock:
            graces = sorted(self._grace)
        for grace in graces:
            if self.store.refresh(grace) <= 0:
                log.warning("%s: a claim lease of this host had expired", self.network)
                with self._lock:
                    self._grace.discard(grace)

    # --- peers -----------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        with self._lock:
            return sorted(self._peers.values(), key=lambda p: p.name)

    def watch(self, on_change: PeersChanged, from_revision: int = 0) -> None:
        """List, then follow the watch; ``on_change`` runs on our watcher thread.
        ``from_revision``: resume a watch at that revision instead of listing first
        (a compacted one falls back to the full list)."""
        self._start("watch", lambda: self._follow(on_change, from_revision))

    def _follow(self, on_change: PeersChanged, from_revision: int) -> None:
        backoff = Backoff()
        watch_id: int | None = None
        need_list = from_revision <= 0
        if not need_list:
            self.revision = from_revision - 1
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist(on_change)
                    need_list = False
                watch_id = self.store.watch(self.hosts_prefix, self.revision + 1,
                                            self._events.put)
                backoff.reset()
                need_list = self._drain(on_change)
            except Compacted:
                log.info("%s: watch revision %d was compacted; listing again", self.network,
                         self.revision + 1)
                need_list = True
            except EtcdUnavailable as exc:
                delay = backoff.next()
                log.log(logging.WARNING if delay == BACKOFF_FIRST else logging.DEBUG,
                        "%s: etcd watch down (%s); peers kept as last known, retrying "
                        "in %.1fs", self.network, exc, delay)
                self._stop.wait(delay)
            if watch_id is not None:
                self._cancel(watch_id)
                watch_id = None

    def _cancel(self, watch_id: int) -> None:
        try:
            self.store.cancel(watch_id)
        except EtcdUnavailable as exc:
            log.debug("cancel of a dead watch failed: %s", exc)

    def _relist(self, on_change: PeersChanged) -> None:
        revision, entries = self.store.list(self.hosts_prefix)
        peers = {}
        for entry in entries:
            peer = self._peer_of(entry.key, entry.value)
            if peer is not None:
                peers[peer.name] = peer
        with self._lock:
            self._peers = peers
        self.revision = revision
        self.relists += 1
        on_change(self.peers())

    def _drain(self, on_change: PeersChanged) -> bool:
        """Apply watch events until the watch dies; True when a full list is needed.

        Events that queued up while the last peer set was being programmed are applied
        together and programmed once: in a burst (many hosts joining, a CPU-starved
        host) programming every intermediate set would fall further and further behind.
        """
        while not self._stop.is_set():
            try:
                batch = [self._events.get(timeout=0.5)]
            except queue.Empty:
                continue
            while True:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            changed = False
            for item in batch:
                if isinstance(item, Compacted):
                    return True
                if isinstance(item, BaseException):
                    raise EtcdUnavailable(str(item) or type(item).__name__)
                changed |= self._apply(item)
            if changed:
                on_change(self.peers())
        return False

    def _apply(self, changes: Iterable[Change]) -> bool:
        changed = False
        for change in changes:
            self.revision = max(self.revision, change.revision)
            name = change.key[len(self.hosts_prefix):]
            with self._lock:
                if change.value is None:
                    changed |= self._peers.pop(name, None) is not None
                    continue
                peer = self._peer_of(change.key, change.value)
                if peer is not None and self._peers.get(name) != peer:
                    self._peers[name] = peer
                    changed = True
        return changed

    def _peer_of(self, key: str, value: bytes) -> Peer | None:
        name = key[len(self.hosts_prefix):]
        if name == self.me:
            return None  # our own record
        peer = decode_peer(value)
        if peer is not None and peer.name != name:
            log.warning("ignoring host record %s: it names host %r", key, peer.name)
            return None
        return peer

    # --- claims ----------------------------------------------------------------------

    def claims_prefix(self, kind: str) -> str:
        return f"{self.base}/{kind}/"

    def owned(self, kind: str) -> list[str]:
        """The items of ``kind`` this host holds (after a restart or reboot too); their
        grace leases are kept alive from now on."""
        _, entries = self.store.list(self.claims_prefix(kind))
        mine = [e for e in entries if _owner(e) == self.me]
        with self._lock:
            self._grace.update(e.lease for e in mine if e.lease)
        if mine:
            self._ensure_keeper()
        return sorted(e.key[len(self.claims_prefix(kind)):] for e in mine)

    def claim(self, kind: str, candidates: Iterable[str]) -> str:
        """Claim the first free candidate for this host (compare-and-create: of two
        hosts racing for one item exactly one gets it, the other goes on);
        ClaimsExhausted when none is free."""
        lease = self._grace_lease()
        value = json.dumps({"host": self.me, "since": int(time.time())}).encode()
        for item in candidates:
            if self.store.create(self.claims_prefix(kind) + item, value, lease=lease):
                log.info("%s: claimed %s %s", self.network, kind, item)
                return item
        raise ClaimsExhausted(f"every {kind} of network {self.network} is held by a host")

    def _grace_lease(self) -> int:
        """One long lease per host for its claims: they outlive the host's absence by
        reclaimAfter seconds, then etcd hands them back."""
        with self._lock:
            graces = sorted(self._grace)
        for lease in graces:
            if self.store.refresh(lease) > 0:
                return lease
            with self._lock:
                self._grace.discard(lease)
        lease = self.store.grant(self.settings.reclaim_after)
        with self._lock:
            self._grace.add(lease)
        self._ensure_keeper()
        return lease

    # --- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stop the threads. The record is left to expire with its lease: an agent
        restarted within the TTL costs its peers nothing."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._store_lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()


def _owner(entry: Entry) -> str:
    try:
        return str(json.loads(entry.value).get("host", ""))
    except (ValueError, AttributeError):
        return ""
