"""The few etcd v3 operations xvm-cni uses, over pyetcd (etcd-sdk-python).

The only module that imports the client, and only when an etcd network is used,
so a swap of client stays here. docs/etcd-client.md says why this client and
which of its traps are avoided here: the failover client with ``time_retry=1``
(never the default one, which shuts an endpoint out for 300 s), a timeout on
every call, TTL 0 from a refresh meaning "expired", and every client error
surfacing as ``EtcdUnavailable``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xvmcni.controlplane.etcdconfig import EtcdSettings

CALL_TIMEOUT = 5.0


class EtcdUnavailable(Exception):
    """etcd did not answer (down, unreachable, restarting, or refused the call)."""


class Compacted(Exception):
    """A watch asked for revisions etcd has compacted away: list again."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    lease: int
    mod_revision: int


@dataclass(frozen=True)
class Change:
    """One watch event: ``value`` None for a delete."""

    key: str
    value: bytes | None
    revision: int


# A watch delivers a list of changes, or an exception (the watch is dead).
WatchCallback = Callable[["list[Change] | BaseException"], None]


def _client_errors() -> tuple[type[BaseException], ...]:
    import grpc
    from pyetcd import exceptions
    return (grpc.RpcError, exceptions.Etcd3Exception, ValueError)


class EtcdStore:
    """One client connection (to any of the endpoints) shared by threads."""

    def __init__(self, settings: EtcdSettings) -> None:
        import pyetcd  # lazily: see the module docstring
        self._errors = _client_errors()
        creds = None
        if settings.secure:
            creds = pyetcd.MultiEndpointEtcd3Client.get_secure_creds(
                settings.ca_file, settings.key_file or None, settings.cert_file or None)
        endpoints = [pyetcd.Endpoint(e.host, e.port, secure=e.secure, creds=creds,
                                     time_retry=1) for e in settings.endpoints]
        self._client: Any = pyetcd.MultiEndpointEtcd3Client(
            endpoints, timeout=CALL_TIMEOUT, failover=True)
        self._compacted: type[BaseException] = pyetcd.exceptions.RevisionCompactedError
        self._lock = threading.Lock()

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._compacted as exc:
            raise Compacted(str(exc)) from exc
        except self._errors as exc:
            raise EtcdUnavailable(_describe(exc)) from exc

    def list(self, prefix: str) -> tuple[int, list[Entry]]:
        """Every key under ``prefix`` and the revision the list was read at."""
        resp = self._call(lambda: self._client.get_prefix_response(prefix))
        return int(resp.header.revision), [
            Entry(kv.key.decode(), bytes(kv.value), int(kv.lease), int(kv.mod_revision))
            for kv in resp.kvs]

    def grant(self, ttl: int) -> int:
        return int(self._call(lambda: self._client.lease(ttl)).id)

    def refresh(self, lease: int) -> int:
        """The lease's TTL after a keep-alive; 0 when it had expired (etcd does not
        say so otherwise)."""
        answers = self._call(lambda: list(self._client.refresh_lease(lease)))
        return int(answers[0].TTL) if answers else 0

    def time_to_live(self, lease: int) -> tuple[int, int]:
        """(seconds left, seconds granted) of ``lease``, read without refreshing it;
        seconds left is -1 when the lease has expired or never existed."""
        resp = self._call(lambda: self._client.get_lease_info(lease))
        return int(resp.TTL), int(resp.grantedTTL)

    def revoke(self, lease: int) -> None:
        self._call(lambda: self._client.revoke_lease(lease))

    def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        self._call(lambda: self._client.put(key, value, lease=lease))

    def delete(self, key: str) -> None:
        self._call(lambda: self._client.delete(key))

    def create(self, key: str, value: bytes, lease: int | None = None) -> bool:
        """Compare-and-create: write ``key`` only if it does not exist (its
        create_revision is 0); True when this call created it."""
        client = self._client
        t = client.transactions
        ok, _ = self._call(lambda: client.transaction(
            compare=[t.create(key) == 0], success=[t.put(key, value, lease=lease)],
            failure=[]))
        return bool(ok)

    def watch(self, prefix: str, start_revision: int, callback: WatchCallback) -> int:
        """Watch ``prefix`` from ``start_revision``; ``callback`` runs on the client's
        single watcher thread and must only hand its argument on."""
        compacted = self._compacted

        def deliver(response: Any) -> None:
            if isinstance(response, compacted):
                callback(Compacted(str(response)))
            elif isinstance(response, BaseException) or response is None:
                # None: the stream ended without an error (the server closed it).
                callback(response if response is not None else
                         EtcdUnavailable("watch stream closed"))
            else:
                callback([_change(e) for e in response.events])

        return int(self._call(lambda: self._client.add_watch_prefix_callback(
            prefix, deliver, start_revision=start_revision)))

    def cancel(self, watch_id: int) -> None:
        self._call(lambda: self._client.cancel_watch(watch_id))

    def close(self) -> None:
        try:
            self._client.close()
        except self._errors:
            return  # closing a client whose channel is already broken: nothing to free


def _change(event: Any) -> Change:
    from pyetcd.events import DeleteEvent
    deleted = isinstance(event, DeleteEvent)
    return Change(event.key.decode(), None if deleted else bytes(event.value),
                  int(event.mod_revision))


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        name = getattr(code(), "name", str(code()))
        return f"{name}: {details()}"
    return str(exc) or type(exc).__name__
