"""The pods of this node and every namespace, as the agent's own watch cache.

An ADD with ``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` in ``CNI_ARGS`` needs the pod's
annotations (``podselect`` turns them into a network and an address). Asking the API
server on every ADD would put its latency and availability on the pod start path
and multiply its load by the pod churn of every node; so the agent keeps a cache:
one list + watch of the pods with ``spec.nodeName=<this node>`` (a node only ever
sets up its own pods) and one of the namespaces (their annotations can name a
network for all their pods).

A pod the runtime sets up is normally in the cache already: the scheduler bound it
to this node before the kubelet asked for its network. When it is not (the watch
lags, or just started), ``lookup`` waits for it briefly, then asks the API server
once. The in-process plugin (no agent) has no cache and asks once, always.

The watch: list (resourceVersion R), then watch from R; the server ending a watch is
normal (restart from the last version seen); 410 Gone (R compacted away) means
events were lost, so list again and replace the store (a pod deleted in the gap
disappears); any other error waits with capped exponential backoff, then lists.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from xvmcni.cni.request import Request
from xvmcni.controlplane import podselect
from xvmcni.controlplane.podselect import PodSelection, SelectionSettings
from xvmcni.errors import TRY_AGAIN_LATER, CniError

log = logging.getLogger(__name__)

# How long an ADD waits for a pod the cache has not seen yet, before asking once.
LOOKUP_WAIT = 2.0
# Backoff between failed list/watch attempts: doubled from MIN up to MAX.
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
# The server closes each watch after this long; the reflector then watches again
# from the last version (bounds how long stop() waits, too).
WATCH_SECONDS = 60

POD_NAMESPACE_ARG = "K8S_POD_NAMESPACE"
POD_NAME_ARG = "K8S_POD_NAME"


def node_name() -> str:
    """This node's name in Kubernetes: ``NODE_NAME`` (the DaemonSet sets it from
    ``spec.nodeName``), else the host name, as the kubelet registers it by default."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


class PodLookupFailed(Exception):
    """The API server could not be asked (connection, authorisation, ...)."""


@dataclass(frozen=True)
class PodInfo:
    annotations: Mapping[str, str]
    # The namespace's annotations; None when the namespace object is unknown.
    namespace_annotations: Mapping[str, str] | None


class Reflector:
    """One collection, listed and watched into a dict (key -> annotations) on its own
    thread. ``api`` is a ``k8sapi.KubeApi`` (list / watch / get of JSON objects)."""

    def __init__(self, name: str, api: Any, path: str,
                 params: dict[str, str] | None = None) -> None:
        self.name = name
        self._api = api
        self._path = path
        self._params = params or {}
        self._items: dict[tuple[str, str], Mapping[str, str]] = {}
        self._changed = threading.Condition()
        self._synced = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.relists = 0

    # --- reading ------------------------------------------------------------------

    def get(self, key: tuple[str, str], wait: float = 0.0) -> Mapping[str, str] | None:
        """The object's annotations, waiting up to ``wait`` seconds for it to appear."""
        end = time.monotonic() + wait
        with self._changed:
            while key not in self._items:
                left = end - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._changed.wait(left)
            return self._items[key]

    def put(self, key: tuple[str, str], annotations: Mapping[str, str]) -> None:
        """Add what a direct fetch returned (the watch brings later changes)."""
        with self._changed:
            self._items.setdefault(key, annotations)
            self._changed.notify_all()

    @property
    def synced(self) -> bool:
        return self._synced

    def wait_synced(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self._changed:
            while not self._synced and time.monotonic() < end:
                self._changed.wait(end - time.monotonic())
            return self._synced

    # --- running ------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return  # one watch per reflector
        self._thread = threading.Thread(target=self._run, name=f"k8s-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                version = self._relist()
                backoff = BACKOFF_MIN
                while not self._stop.is_set():  # the server ends each watch: go on
                    version = self._follow(version)
            except Exception as exc:  # noqa: BLE001 -- any failure: logged, then list again
                if self._stop.is_set():
                    return
                if _status_code(exc) == 410:
                    log.info("%s watch expired (410 Gone): listing again", self.name)
                    continue
                log.warning("%s list/watch failed: %s; again in %.1fs", self.name,
                            _short(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _relist(self) -> str:
        version, listed = self._api.list(self._path, self._params)
        items = {_key(obj): _annotations(obj) for obj in listed}
        with self._changed:
            self._items = items  # replaces: what was deleted meanwhile is gone
            self._synced = True
            self.relists += 1
            self._changed.notify_all()
        log.debug("%s listed: %d at version %s", self.name, len(items), version)
        return str(version)

    def _follow(self, version: str) -> str:
        """Apply one watch's events; the last version seen. Raises on a watch error."""
        for event in self._api.watch(self._path, version, WATCH_SECONDS, self._params):
            if self._stop.is_set():
                break
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            kind = event.get("type")
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # BOOKMARK: only its version matters
            with self._changed:
                if kind == "DELETED":
                    self._items.pop(_key(obj), None)
                else:
                    self._items[_key(obj)] = _annotations(obj)
                self._changed.notify_all()
        return version


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _annotations(obj: dict[str, Any]) -> Mapping[str, str]:
    found = (obj.get("metadata") or {}).get("annotations") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _status_code(exc: BaseException) -> int | None:
    """The HTTP status of an API error (k8sapi.ApiError.status), None for others."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"


def _namespace_path(name: str) -> str:
    return f"/api/v1/namespaces/{quote(name, safe='')}"


class PodCache:
    """This node's pods and all namespaces, watched (the agent's)."""

    def __init__(self, api: Any, node: str, wait: float = LOOKUP_WAIT) -> None:
        self.api = api
        self.node = node
        self.wait = wait
        self.fetches = 0  # direct GETs after a miss (tests look at it)
        self.pods = Reflector("pods", api, "/api/v1/pods",
                              {"fieldSelector": f"spec.nodeName={node}"})
        self.namespaces = Reflector("namespaces", api, "/api/v1/namespaces")

    def start(self) -> None:
        self.pods.start()
        self.namespaces.start()

    def stop(self) -> None:
        self.pods.stop()
        self.namespaces.stop()
        close = getattr(self.api, "close", None)
        if close is not None:
            close()  # also ends a watch in progress

    def lookup(self, namespace: str, name: str) -> PodInfo | None:
        """The pod's annotations (and its namespace's): from the cache, else after
        waiting up to ``wait`` seconds for the watch, else from one GET. None when the
        API server does not know the pod; PodLookupFailed when it cannot be asked."""
        annotations = self.pods.get((namespace, name), self.wait)
        if annotations is None:
            annotations = self._fetch_pod(namespace, name)
            if annotations is None:
                return None
        ns = self.namespaces.get(("", namespace), 0.0 if self.namespaces.synced else self.wait)
        if ns is None:
            ns = self._fetch_namespace(namespace)
        return PodInfo(annotations, ns)

    def _fetch_pod(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self.fetches += 1
        log.info("pod %s/%s not in the watch cache after %.1fs: asking the API server",
                 namespace, name, self.wait)
        found = _get(self.api, _pod_path(namespace, name))
        if found is None:
            return None
        if (found.get("spec") or {}).get("nodeName") == self.node:
            # Only this node's pods: another node's would never be updated by our watch.
            self.pods.put((namespace, name), _annotations(found))
        return _annotations(found)

    def _fetch_namespace(self, namespace: str) -> Mapping[str, str] | None:
        found = _get(self.api, _namespace_path(namespace))
        if found is None:
            return None
        self.namespaces.put(("", namespace), _annotations(found))
        return _annotations(found)


def _get(api: Any, path: str) -> dict[str, Any] | None:
    """One object, None on 404; PodLookupFailed on any other failure."""
    try:
        found = api.get(path)
    except Exception as exc:  # k8sapi's ApiError / ApiUnavailable, and what else breaks
        if _status_code(exc) == 404:
            return None
        raise PodLookupFailed(f"GET {path}: {_short(exc)}") from exc
    return found if isinstance(found, dict) else None


class OneShot:
    """No cache (the in-process plugin): one GET of the pod and one of its namespace."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def lookup(self, namespace: str, name: str) -> PodInfo | None:
        try:
            pod = _get(self.api, _pod_path(namespace, name))
            if pod is None:
                return None
            ns = _get(self.api, _namespace_path(namespace))
            return PodInfo(_annotations(pod), None if ns is None else _annotations(ns))
        finally:
            self.api.close()


def make_api(kubeconfig: str) -> Any:
    """A connection to the API server (k8sapi: ``kubeconfig`` when given, else
    $KUBECONFIG, the in-cluster service account, ~/.kube/config)."""
    from xvmcni.controlplane.k8sapi import KubeApi
    return KubeApi(kubeconfig)


class PodSources:
    """The agent's pod caches, one per kubeconfig, started on first use (and at agent
    start for the networks it knows), stopped with the agent."""

    def __init__(self, factory: Callable[[str], PodCache] | None = None) -> None:
        self._factory = factory or (lambda path: PodCache(make_api(path), node_name()))
        self._caches: dict[str, PodCache] = {}
        self._lock = threading.Lock()

    def cache(self, kubeconfig: str) -> PodCache:
        with self._lock:
            found = self._caches.get(kubeconfig)
            if found is None:
                found = self._factory(kubeconfig)
                found.start()
                self._caches[kubeconfig] = found
                log.info("watching the pods of node %s and all namespaces", found.node)
            return found

    def stop(self) -> None:
        with self._lock:
            caches, self._caches = list(self._caches.values()), {}
        for cache in caches:
            cache.stop()


def pod_of(request: Request) -> tuple[str, str] | None:
    namespace = request.args.get(POD_NAMESPACE_ARG, "")
    name = request.args.get(POD_NAME_ARG, "")
    return (namespace, name) if namespace and name else None


def selection(request: Request, settings: SelectionSettings, known: list[str],
              sources: PodSources | None) -> PodSelection:
    """The network and requested addresses for the pod of ``request``, by
    ``podselect.select`` over the invocation's ``args.annotations`` and (when the
    configuration asks for it and the runtime names a pod) the pod's and namespace's
    annotations: from the agent's cache (``sources``), or one GET without an agent.

    CniError(11) when the pod's objects cannot be read: guessing a network for a pod
    that asked for another is worse than a retry.
    """
    pod = pod_of(request)
    info: PodInfo | None = None
    if pod is not None and podselect.wants_pod(settings):
        try:
            if sources is not None:
                info = sources.cache(settings.kubeconfig).lookup(*pod)
            else:
                info = OneShot(make_api(settings.kubeconfig)).lookup(*pod)
        except PodLookupFailed as exc:
            raise CniError(TRY_AGAIN_LATER, f"cannot read pod {pod[0]}/{pod[1]} from the "
                           "Kubernetes API server to choose its network", str(exc)) from exc
        except Exception as exc:  # a missing kubeconfig, a bad certificate...
            if isinstance(exc, CniError):
                raise
            raise CniError(TRY_AGAIN_LATER, "cannot connect to the Kubernetes API server "
                           f"to read pod {pod[0]}/{pod[1]}", _short(exc)) from exc
        if info is None:
            log.warning("pod %s/%s is not known to the API server: choosing its network "
                        "without its annotations", *pod)
    namespace, name = pod if pod is not None else ("", "")
    return podselect.select(settings, known,
                            pod=info.annotations if info is not None else None,
                            namespace=namespace,
                            namespace_annotations=(info.namespace_annotations
                                                   if info is not None else None),
                            pod_name=name)
