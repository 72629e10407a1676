"""A local copy of one Kubernetes collection (nodes, pods, namespaces, ...) kept
current by list + watch, on a thread of its own: client-go's reflector, small.

- List (in pages), remember the list's resourceVersion, watch from it with
  bookmarks (a bookmark only moves the resourceVersion on).
- The watch ends (server timeout, connection lost): watch again from the last
  resourceVersion seen. 410 Gone (etcd compacted past it): list again and diff the
  new list against the copy, so an object deleted while we were not watching is
  reported as deleted.
- Errors: retry with capped exponential backoff; the copy stays as last known
  (an API server outage removes nothing).
- Every ``resync`` seconds a full list is diffed against the copy anyway: a
  missed event cannot live longer than that.

``on_change(items, changed)`` runs on the reflector's thread after each change
with the whole copy (key -> object) and the keys that changed (added, modified,
or deleted: absent from ``items``). Keys are ``name`` or ``namespace/name``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from xvmcni.controlplane.k8sapi import ApiError, ApiUnavailable, ConfigMissing, KubeApi

log = logging.getLogger(__name__)

Object = dict[str, Any]
OnChange = Callable[[dict[str, Object], set[str]], None]

BACKOFF_FIRST = 0.2
BACKOFF_CAP = 10.0
WATCH_TIMEOUT = 300      # seconds the server keeps one watch open
RESYNC = 600.0           # seconds between full lists diffed against the copy


def key_of(obj: Object) -> str:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    return f"{meta['namespace']}/{name}" if meta.get("namespace") else name


def diff(old: dict[str, Object], new: dict[str, Object]) -> set[str]:
    """The keys added, removed or changed between two copies."""
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


class Reflector:
    def __init__(self, connect: Callable[[], KubeApi], path: str, name: str,
                 on_change: OnChange | None = None, params: dict[str, str] | None = None,
                 watch_timeout: int = WATCH_TIMEOUT, resync: float = RESYNC,
                 backoff_cap: float = BACKOFF_CAP) -> None:
        self._connect = connect
        self.path = path
        self.name = name
        self._on_change = on_change
        self._params = params or {}
        self.watch_timeout = watch_timeout
        self.resync = resync
        self.backoff_cap = backoff_cap
        self._items: dict[str, Object] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._api: KubeApi | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()
        # For status, logs and tests.
        self.resource_version = ""
        self.lists = 0
        self.gone = 0
        self.failing_since: float | None = None

    # --- reading the copy ---------------------------------------------------------

    def items(self) -> dict[str, Object]:
        with self._cond:
            return dict(self._items)

    def get(self, key: str) -> Object | None:
        with self._cond:
            return self._items.get(key)

    def wait_for(self, key: str, timeout: float) -> Object | None:
        """The object once the copy holds it, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self._items:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(left)
            return self._items[key]

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"k8s-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            api, self._api = self._api, None
            self._cond.notify_all()
        if api is not None:
            api.close()  # ends a watch in progress
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # --- the loop -----------------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        need_list = True
        listed_at = 0.0
        while not self._stop.is_set():
            try:
                api = self._client()
                if need_list or time.monotonic() - listed_at >= self.resync:
                    self._list(api)
                    listed_at = time.monotonic()
                    need_list = False
                began = time.monotonic()
                self._watch(api, listed_at)
                delay = BACKOFF_FIRST
                if time.monotonic() - began < 1.0:
                    self._stop.wait(0.2)  # a server ending watches at once: no busy loop
            except ApiError as exc:
                if exc.status == 410:
                    self.gone += 1
                    log.info("%s: resourceVersion %s is gone (410: %s); listing again",
                             self.name, self.resource_version, exc.message)
                    need_list = True
                    continue
                delay = self._failed(f"refused: {exc}", delay, logging.ERROR)
            except ApiUnavailable as exc:
                delay = self._failed(f"API server unavailable: {exc}", delay)
            except ConfigMissing as exc:
                delay = self._failed(str(exc), delay, logging.ERROR)

    def _client(self) -> KubeApi:
        with self._cond:
            if self._api is None:
                self._api = self._connect()
            return self._api

    def _failed(self, why: str, delay: float, level: int = logging.WARNING) -> float:
        """Log (once per outage at ``level``, then at debug) and wait ``delay``; the
        next delay."""
        first = self.failing_since is None
        if first:
            self.failing_since = time.monotonic()
        log.log(level if first else logging.DEBUG, "%s: %s; keeping the last known copy "
                "(%d objects), retrying with backoff up to %.0fs", self.name, why,
                len(self._items), self.backoff_cap)
        self._stop.wait(delay)
        return min(delay * 2, self.backoff_cap)

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info("%s: API server reachable again after %.1fs", self.name,
                     time.monotonic() - self.failing_since)
            self.failing_since = None

    def _list(self, api: KubeApi) -> None:
        version, objects = api.list(self.path, self._params)
        new = {key_of(o): o for o in objects}
        with self._cond:
            old, self._items = self._items, new
            self.resource_version = version
            self.lists += 1
            self._cond.notify_all()
        changed = diff(old, new)
        gone = sorted(k for k in changed if k not in new)
        if gone and self.synced.is_set():
            log.info("%s: deleted while not watched: %s", self.name, ", ".join(gone))
        self._recovered()
        first = not self.synced.is_set()
        self.synced.set()
        if changed or first:
            self._notify(new, changed)

    def _watch(self, api: KubeApi, listed_at: float) -> None:
        """Follow one watch until it ends, the resync is due, or we stop."""
        left = self.resync - (time.monotonic() - listed_at)
        timeout = max(1, min(self.watch_timeout, int(left) + 1))
        for event in api.watch(self.path, self.resource_version, timeout, self._params):
            if self._stop.is_set():
                return
            self._recovered()
            self._apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        if kind == "BOOKMARK":
            self.resource_version = version or self.resource_version
            return
        key = key_of(obj)
        with self._cond:
            if kind == "DELETED":
                changed = self._items.pop(key, None) is not None
            elif kind in ("ADDED", "MODIFIED"):
                changed = self._items.get(key) != obj
                self._items[key] = obj
            else:
                log.warning("%s: ignoring a watch event of type %r", self.name, kind)
                return
            if version:
                self.resource_version = version
            self._cond.notify_all()
            items = dict(self._items)
        if changed:
            self._notify(items, {key})

    def _notify(self, items: dict[str, Object], changed: set[str]) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(items, changed)
        except Exception:  # a consumer's bug must not stop the copy being kept
            log.exception("%s: change handler failed", self.name)
