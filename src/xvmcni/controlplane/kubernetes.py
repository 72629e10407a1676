"""The Kubernetes control plane: the hosts of a network are the cluster's Node
objects (routed model).

- Peers: every other Node with pod CIDRs and an address (``k8snodes``), from a
  list + watch of ``/api/v1/nodes`` (``k8swatch.Reflector``: bookmarks, 410 ->
  list again and diff, backoff, periodic resync). A deleted Node is gone from the
  peer set, so the model removes its routes, FDB entry and neighbour.
- This host's Node (``nodeName`` / $NODE_NAME, else the host name): its pod CIDRs
  are the routed model's, written to ``k8s-node.json`` in the state dir for the
  plugin (with the route protocol the agent uses) before the peers are announced.
- Publish: once the host has joined (the model's VTEP exists with its MAC), the
  VTEP MAC and underlay address go on this host's Node as annotations
  ``xvm-cni.io/vtep-mac.<network>`` and ``xvm-cni.io/underlay.<network>``; a
  publisher thread keeps them there (re-patching a re-created Node, retrying while
  the API server is away).

The API server away: the peer set stays as last known and nothing is
unprogrammed; ADDs keep working from ``k8s-node.json``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from xvmcni.controlplane import k8snodes
from xvmcni.controlplane.base import Peer, PeersChanged
from xvmcni.controlplane.k8sapi import ApiError, ApiUnavailable, ConfigMissing, KubeApi
from xvmcni.controlplane.k8sconfig import (
    KIND,
    K8sSettings,
    NodeState,
    node_name,
    publish_keys,
    read_node_state,
    write_node_state,
)
from xvmcni.controlplane.k8swatch import Reflector

log = logging.getLogger(__name__)

NODES = "/api/v1/nodes"
PUBLISH_RETRY_FIRST = 0.5
PUBLISH_RETRY_CAP = 10.0


class KubernetesControlPlane:
    kind = KIND

    def __init__(self, settings: K8sSettings, network: str, state_dir: Path, encap: str,
                 route_protocol: int, connect: Callable[[], KubeApi] | None = None) -> None:
        self.settings = settings
        self.network = network
        self.state_dir = state_dir
        self.encap = encap
        self.route_protocol = route_protocol
        self.me = node_name(settings)
        self._connect = connect or (lambda: KubeApi(settings.kubeconfig))
        self._lock = threading.Lock()
        # One recomputation at a time (the reflector's thread, or publish()).
        self._changes = threading.Lock()
        self._peers: list[Peer] = []
        self._own: NodeState | None = read_node_state(state_dir)
        self._own_missing_said = False
        self._problems: dict[str, tuple[str, ...]] = {}
        self._on_change: PeersChanged | None = None
        self._announced = False
        # Our underlay's family: VXLAN peers are reached over it.
        self._version = 4
        self._record: Peer | None = None
        self._withdraw = False
        self._sent: tuple[str, tuple[tuple[str, str | None], ...]] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._publisher: threading.Thread | None = None
        self._api: KubeApi | None = None
        self.reflector = Reflector(self._connect, NODES, f"{network}: nodes",
                                   self._nodes_changed, watch_timeout=settings.watch_timeout,
                                   resync=float(settings.resync))

    # --- peers -------------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        with self._lock:
            return list(self._peers)

    def watch(self, on_change: PeersChanged) -> None:
        self._on_change = on_change
        log.info("%s: following Nodes as %s (route protocol %d, encap %s)", self.network,
                 self.me, self.route_protocol, self.encap)
        self.reflector.start()

    def own_pod_cidrs(self) -> tuple[Any, ...]:
        with self._lock:
            return self._own.pod_cidrs if self._own is not None else ()

    def _nodes_changed(self, items: dict[str, dict[str, Any]], changed: set[str]) -> None:
        """On the reflector's thread: recompute this host's CIDRs and the peers."""
        with self._changes:
            own_changed = self._own_node(items.get(self.me))
            peers = self._compute(items)
            with self._lock:
                same = peers == self._peers and self._announced
                self._peers = peers
                self._announced = True
            self._wake.set()  # our Node may have been re-created: publish again
            if (not same or own_changed) and self._on_change is not None:
                self._on_change(peers)

    def _own_node(self, node: dict[str, Any] | None) -> bool:
        """Write this host's pod CIDRs for the model; True when they changed."""
        if node is None:
            if not self._own_missing_said:
                log.warning("%s: this host's Node %r does not exist (set nodeName or "
                            "$NODE_NAME); keeping the pod CIDRs last known: %s",
                            self.network, self.me,
                            [str(c) for c in self.own_pod_cidrs()] or "none")
                self._own_missing_said = True
            if self._own is None:
                # The name at least: an ADD run by the plugin (without our
                # $NODE_NAME) then asks for the right Node.
                self._own = NodeState(self.me, (), self.route_protocol,
                                      self.settings.cidr_annotation)
                self._write(self._own)
            return False
        self._own_missing_said = False
        problems: list[str] = []
        cidrs = k8snodes.pod_cidrs_of(node, self.settings, problems)
        if problems:
            log.error("%s: this host's Node %s: %s", self.network, self.me,
                      "; ".join(problems))
            return False
        state = NodeState(self.me, cidrs, self.route_protocol, self.settings.cidr_annotation)
        with self._lock:
            previous, self._own = self._own, state
        if state == previous:
            return False
        if previous is not None and previous.pod_cidrs and previous.pod_cidrs != cidrs:
            log.warning("%s: this host's pod CIDRs changed from %s to %s: pods keep their "
                        "addresses until re-created", self.network,
                        [str(c) for c in previous.pod_cidrs], [str(c) for c in cidrs])
        elif cidrs:
            log.info("%s: this host's pod CIDRs: %s", self.network,
                     ", ".join(str(c) for c in cidrs))
        self._write(state)
        return True

    def _write(self, state: NodeState) -> None:
        try:
            write_node_state(self.state_dir, state)
        except OSError as exc:
            log.error("%s: cannot write %s: %s", self.network, self.state_dir, exc)

    def _compute(self, items: dict[str, dict[str, Any]]) -> list[Peer]:
        peers: list[Peer] = []
        seen: set[str] = set()
        for name in sorted(items):
            if name == self.me:
                continue
            seen.add(name)
            node = k8snodes.view(items[name], self.settings, self.network)
            found, skipped = k8snodes.peers_of(node, self.encap, self._version)
            self._report(name, node.problems, tuple(skipped))
            peers.extend(found)
        for name in [n for n in self._problems if n not in seen]:
            del self._problems[name]
        return peers

    def _report(self, name: str, malformed: tuple[str, ...],
                incomplete: tuple[str, ...]) -> None:
        """Say a node's problems once, when they appear or change, and when they go:
        malformed data as an error, missing data (a new Node before its addresses) as
        a warning."""
        problems = malformed + incomplete
        before = self._problems.get(name, ())
        if problems == before:
            return
        if problems:
            self._problems[name] = problems
            log.log(logging.ERROR if malformed else logging.WARNING, "%s: node %s left "
                    "out: %s", self.network, name, "; ".join(problems))
        else:
            self._problems.pop(name, None)
            log.info("%s: node %s is usable again", self.network, name)

    # --- publish -----------------------------------------------------------------------

    def publish(self, me: Peer) -> None:
        with self._lock:
            family_changed = me.underlay.version != self._version
            self._record, self._withdraw = me, False
            self._version = me.underlay.version
        if family_changed and self.reflector.synced.is_set():
            # VXLAN peers are reached over our family: pick their addresses again
            # (never from an empty copy before the first list: that would unprogram).
            self._nodes_changed(self.reflector.items(), set())
        self._ensure_publisher()
        self._wake.set()

    def unpublish(self) -> None:
        with self._lock:
            self._record, self._withdraw = None, True
        self._ensure_publisher()
        self._wake.set()

    def wanted_annotations(self) -> dict[str, str | None]:
        """The annotations this host's Node should carry (None: absent)."""
        mac_key, underlay_key = publish_keys(self.network)
        with self._lock:
            record = self._record
        if record is None:
            return {mac_key: None, underlay_key: None}
        mac = record.vtep_mac if self.encap != k8snodes.NONE else ""
        return {mac_key: mac or None, underlay_key: str(record.underlay)}

    def _ensure_publisher(self) -> None:
        with self._lock:
            if self._publisher is not None:
                return
            self._publisher = threading.Thread(target=self._publish_loop,
                                               name=f"k8s-publish-{self.network}",
                                               daemon=True)
        self._publisher.start()

    def _publish_loop(self) -> None:
        delay = PUBLISH_RETRY_FIRST
        failing = False
        while not self._stop.is_set():
            self._wake.wait(None if not failing else delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._publish_once()
                if failing:
                    log.info("%s: Node %s annotated", self.network, self.me)
                failing, delay = False, PUBLISH_RETRY_FIRST
            except (ApiUnavailable, ApiError, ConfigMissing) as exc:
                if not failing:
                    log.warning("%s: cannot annotate Node %s: %s; retrying", self.network,
                                self.me, exc)
                failing = True
                delay = min(delay * 2, PUBLISH_RETRY_CAP)
            except Exception:  # the publisher must survive a bug; it is logged, retried
                log.exception("%s: annotating Node %s failed", self.network, self.me)
                failing = True
                delay = PUBLISH_RETRY_CAP

    def _publish_once(self) -> None:
        wanted = self.wanted_annotations()
        with self._lock:
            withdraw = self._withdraw
        if wanted[publish_keys(self.network)[1]] is None and not withdraw:
            return  # nothing published yet, nothing to withdraw
        node = self.reflector.get(self.me)
        if node is None:
            if self.reflector.synced.is_set():
                return  # no Node to annotate; a re-created one wakes us
            node = self._client().get(f"{NODES}/{quote(self.me, safe='')}")
        meta = node.get("metadata") or {}
        have = meta.get("annotations") or {}
        patch = {k: v for k, v in wanted.items() if have.get(k) != v}
        # Our copy of the Node may lag behind our own last patch: not twice to the
        # same Node (a re-created one has another uid).
        sent = (str(meta.get("uid", "")), tuple(sorted(wanted.items(), key=str)))
        if not patch or sent == self._sent:
            return
        self._client().patch(f"{NODES}/{quote(self.me, safe='')}",
                             {"metadata": {"annotations": patch}})
        self._sent = sent
        log.info("%s: Node %s annotated: %s", self.network, self.me,
                 ", ".join(f"{k}={v}" for k, v in sorted(patch.items(), key=str)))

    def _client(self) -> KubeApi:
        with self._lock:
            if self._api is None:
                self._api = self._connect()
            return self._api

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop following and publishing. The annotations stay: an agent restart costs
        the peers nothing."""
        self._stop.set()
        self._wake.set()
        self.reflector.stop()
        if self._publisher is not None:
            self._publisher.join(timeout=10)
        with self._lock:
            api, self._api = self._api, None
        if api is not None:
            api.close()
