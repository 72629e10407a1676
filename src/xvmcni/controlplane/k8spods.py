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

The watches are ``k8swatch.Reflector``s (bookmarks, 410 Gone -> list again, capped
backoff, periodic resync): during an API server outage the cache keeps serving the
pods it knows.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
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


def _annotations(obj: dict[str, Any] | None) -> Mapping[str, str]:
    found = ((obj or {}).get("metadata") or {}).get("annotations") or {}
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
    """This node's pods and all namespaces, each a ``k8swatch.Reflector`` (the agent's).

    ``connect`` makes a ``k8sapi.KubeApi``: one per reflector (each holds a watch
    open) and one for the rare direct GET.
    """

    def __init__(self, connect: Callable[[], Any], node: str,
                 wait: float = LOOKUP_WAIT) -> None:
        from xvmcni.controlplane.k8swatch import Reflector
        self._connect = connect
        self._api: Any = None
        self._api_lock = threading.Lock()
        self.node = node
        self.wait = wait
        self.fetches = 0  # direct GETs after a miss (tests look at it)
        self.pods = Reflector(connect, "/api/v1/pods", "pods",
                              params={"fieldSelector": f"spec.nodeName={node}"})
        self.namespaces = Reflector(connect, "/api/v1/namespaces", "namespaces")
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.pods.start()
        self.namespaces.start()

    def stop(self) -> None:
        self.pods.stop()
        self.namespaces.stop()
        with self._api_lock:
            api, self._api = self._api, None
        if api is not None:
            api.close()

    def lookup(self, namespace: str, name: str) -> PodInfo | None:
        """The pod's annotations (and its namespace's): from the cache, else after
        waiting up to ``wait`` seconds for the watch, else from one GET. None when the
        API server does not know the pod; PodLookupFailed when it cannot be asked."""
        pod = self.pods.wait_for(f"{namespace}/{name}", self.wait)
        if pod is None:
            self.fetches += 1
            log.info("pod %s/%s not in the watch cache after %.1fs: asking the API server",
                     namespace, name, self.wait)
            pod = _get(self._direct(), _pod_path(namespace, name))
            if pod is None:
                return None
        ns = self.namespaces.wait_for(namespace, 0.0 if self.namespaces.synced.is_set()
                                      else self.wait)
        if ns is None:
            ns = _get(self._direct(), _namespace_path(namespace))
        return PodInfo(_annotations(pod), None if ns is None else _annotations(ns))

    def _direct(self) -> Any:
        with self._api_lock:
            if self._api is None:
                self._api = self._connect()
            return self._api


def _get(api: Any, path: str) -> dict[str, Any] | None:
    """One object, None on 404; PodLookupFailed on any other failure."""
    try:
        found = api.get(path)
    except Exception as exc:  # k8sapi's ApiError / ApiUnavailable / ConfigMissing
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
    """The agent's pod caches, one per (kubeconfig, node name), started on first use
    (and at agent start for the networks it knows), stopped with the agent."""

    def __init__(self, factory: Callable[[str, str], PodCache] | None = None) -> None:
        self._factory = factory or (
            lambda path, node: PodCache(lambda: make_api(path), node))
        self._caches: dict[tuple[str, str], PodCache] = {}
        self._lock = threading.Lock()

    def cache(self, kubeconfig: str, node: str = "") -> PodCache:
        """``node``: '' for $NODE_NAME, then the host name."""
        key = (kubeconfig, node or node_name())
        with self._lock:
            found = self._caches.get(key)
            if found is None:
                found = self._factory(*key)
                found.start()
                self._caches[key] = found
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


def choose_network(request: Request, raw: dict[str, Any], known: list[str],
                   sources: PodSources | None) -> PodSelection:
    """For a model with several networks in one configuration (macvlan): the
    configuration's selection fields (``podselect.parse_settings``), the pod's
    annotations when asked for, and CniError(7) unless the network chosen is one of
    ``known``. ``sources``: ``runtime.pod_sources``."""
    chosen = selection(request, podselect.parse_settings(raw), known, sources)
    return podselect.require_known(chosen, known)


def pod_info(request: Request, settings: SelectionSettings,
             sources: PodSources | None) -> PodInfo | None:
    """The annotations of the pod ``request`` names (and of its namespace), when the
    configuration asks for them: from the agent's cache (``sources``), or one GET
    without an agent. None when no pod is named, reading is off, or the API server
    does not know the pod. For a model with its own selection rule, this is the
    Kubernetes part alone.

    CniError(11) when the pod's objects cannot be read: guessing a network for a pod
    that asked for another is worse than a retry.
    """
    pod = pod_of(request)
    if pod is None or not podselect.wants_pod(settings):
        return None
    try:
        if sources is not None:
            info = sources.cache(settings.kubeconfig, settings.node).lookup(*pod)
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
    return info


def selection(request: Request, settings: SelectionSettings, known: list[str],
              sources: PodSources | None) -> PodSelection:
    """The network and requested addresses for the pod of ``request``, by
    ``podselect.select`` over the invocation's ``args.annotations`` and the pod's and
    namespace's annotations (``pod_info``)."""
    info = pod_info(request, settings, sources)
    namespace, name = pod_of(request) or ("", "")
    return podselect.select(settings, known,
                            pod=info.annotations if info is not None else None,
                            namespace=namespace,
                            namespace_annotations=(info.namespace_annotations
                                                   if info is not None else None),
                            pod_name=name)
