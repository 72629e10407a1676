"""A connection to the Kubernetes API server: where it is and who we are (a
kubeconfig, or the pod's service account), and plain JSON requests over it.

Client choice: lightkube (pinned in pyproject.toml). It reads kubeconfigs
(certificates, tokens, exec plugins) and in-cluster service accounts, imports in
~130 ms and ~15 MiB, and is maintained. The official ``kubernetes`` client costs
~160 MiB and ~0.8 s to import; kr8s retries an expired resourceVersion in a tight
loop without telling the caller; pykube-ng is unmaintained. We take lightkube's
configuration and its HTTP client and make the list / watch / patch requests
ourselves as JSON: the watch loop needs what lightkube leaves to the caller
(bookmarks, 410 Gone, a re-list diffed against the previous view; see
``k8swatch``), and plain dicts spare decoding every Node into typed models.

lightkube is imported when a ``KubeApi`` is made, never at module import: processes
that serve no Kubernetes network never load it.

Where the configuration comes from, first match wins:

1. the ``kubeconfig`` path given (the network's ``controlPlane.kubeconfig``);
2. ``$KUBECONFIG``;
3. in-cluster: ``$KUBERNETES_SERVICE_HOST`` and the service account directory
   (``/var/run/secrets/kubernetes.io/serviceaccount``). Its token is re-read when
   the file changes (the kubelet rotates it) and after a 401;
4. ``~/.kube/config``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")
REQUEST_TIMEOUT = 10.0
# Server errors and throttling: the server is there but cannot answer now.
RETRYABLE = {429, 500, 502, 503, 504}


class ApiUnavailable(Exception):
    """The API server cannot be reached or cannot answer now (retry later)."""


class ApiError(Exception):
    """The API server refused the request (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ResourceGone(ApiError):
    """410 Gone: the resourceVersion asked for is older than the server keeps
    (etcd compacted it); list again."""


class ConfigMissing(Exception):
    """No way to reach an API server was found or the one found is unusable."""


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) \
        and (SERVICE_ACCOUNT_DIR / "token").exists()


def describe_source(kubeconfig: str = "") -> str:
    """Where ``KubeApi(kubeconfig)`` would take its configuration from (for logs)."""
    if kubeconfig:
        return f"kubeconfig {kubeconfig}"
    if os.environ.get("KUBECONFIG"):
        return f"kubeconfig {os.environ['KUBECONFIG']} ($KUBECONFIG)"
    if in_cluster():
        return f"service account {SERVICE_ACCOUNT_DIR}"
    return f"kubeconfig {DEFAULT_KUBECONFIG}"


def _load_config(kubeconfig: str) -> tuple[Any, str]:
    """(lightkube SingleConfig, token file to follow or '')."""
    from lightkube.config.kubeconfig import KubeConfig
    from lightkube.core.exceptions import ConfigError
    try:
        if kubeconfig or os.environ.get("KUBECONFIG"):
            path = kubeconfig or os.environ["KUBECONFIG"].split(os.pathsep)[0]
            return KubeConfig.from_file(path).get(), ""
        if in_cluster():
            config = KubeConfig.from_service_account(SERVICE_ACCOUNT_DIR).get()
            return config, str(SERVICE_ACCOUNT_DIR / "token")
        return KubeConfig.from_file(DEFAULT_KUBECONFIG).get(), ""
    except (ConfigError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigMissing(f"cannot use {describe_source(kubeconfig)}: {exc}") from exc


def _token_file_auth(path: str) -> Any:
    """An httpx auth that sends the token in ``path``, read again whenever the file
    changes (the kubelet swaps in a new one well before the old one expires) and
    once after a 401."""
    import httpx2 as httpx

    class TokenFileAuth(httpx.Auth):
        def __init__(self) -> None:
            self._stamp: tuple[int, int] | None = None
            self._header = ""

        def _read(self, force: bool = False) -> str:
            st = os.stat(path)  # follows the kubelet's ..data symlink
            stamp = (st.st_ino, st.st_mtime_ns)
            if force or stamp != self._stamp:
                self._header = "Bearer " + Path(path).read_text().strip()
                self._stamp = stamp
            return self._header

        def auth_flow(self, request: Any) -> Any:
            request.headers["Authorization"] = self._read()
            response = yield request
            if response.status_code == 401:
                request.headers["Authorization"] = self._read(force=True)
                yield request

    return TokenFileAuth()


def _status_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        return str(data.get("message") or data.get("reason") or body[:200])
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def raise_for(status: int, body: bytes) -> None:
    """Map an HTTP status to our errors (nothing for 2xx)."""
    if status < 300:
        return
    if status == 410:
        raise ResourceGone(status, _status_message(body))
    if status in RETRYABLE:
        raise ApiUnavailable(f"HTTP {status}: {_status_message(body)}")
    raise ApiError(status, _status_message(body))


class KubeApi:
    """JSON requests to one API server. Thread-safe (httpx's client is); ``close``
    also aborts a watch in progress on another thread."""

    def __init__(self, kubeconfig: str = "", timeout: float = REQUEST_TIMEOUT) -> None:
        config, token_file = _load_config(kubeconfig)
        import httpx2 as httpx
        from lightkube.config.client_adapter import Client, ConnectionParams
        self._httpx = httpx
        self.source = describe_source(kubeconfig)
        self.server = str(config.cluster.server)
        self.timeout = timeout
        try:
            self._client = Client(config, ConnectionParams(timeout=httpx.Timeout(timeout),
                                                           trust_env=False))
        except Exception as exc:  # lightkube raises what it meets (files, PEM, exec)
            raise ConfigMissing(f"cannot use {self.source}: {exc}") from exc
        if token_file:
            self._client.auth = _token_file_auth(token_file)
        # The sockets of watches in progress: close() shuts them down, which wakes a
        # thread blocked reading one (closing the client alone does not).
        self._watching: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    # --- plain requests ---------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None,
                params: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        """One request; the decoded JSON answer. Raises ApiUnavailable / ApiError."""
        content = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = content_type
        try:
            response = self._client.request(method, path, content=content, params=params,
                                            headers=headers)
        except self._httpx.HTTPError as exc:
            raise ApiUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        raise_for(response.status_code, response.content)
        return response.json() if response.content else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def patch(self, path: str, body: Any, kind: str = "merge") -> Any:
        """PATCH with a JSON merge patch (``kind`` merge), strategic merge patch
        (strategic) or JSON patch (json)."""
        types = {"merge": "application/merge-patch+json",
                 "strategic": "application/strategic-merge-patch+json",
                 "json": "application/json-patch+json"}
        return self.request("PATCH", path, body, content_type=types[kind])

    def list(self, path: str, params: dict[str, str] | None = None,
             page: int = 500) -> tuple[str, list[dict[str, Any]]]:
        """(resourceVersion, items) of a whole collection, read in pages."""
        items: list[dict[str, Any]] = []
        query = {**(params or {}), "limit": str(page)}
        while True:
            data = self.request("GET", path, params=query)
            items.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            if not meta.get("continue"):
                return str(meta.get("resourceVersion", "")), items
            query["continue"] = str(meta["continue"])

    def watch(self, path: str, resource_version: str, timeout_seconds: int,
              params: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """The events of one watch from ``resource_version`` (bookmarks asked for),
        until the server ends it after ``timeout_seconds``. Raises ResourceGone when
        the version is too old (as an HTTP 410 or an ERROR event), ApiUnavailable
        when the connection breaks or stays silent for longer than the server's
        timeout plus a margin."""
        query = {**(params or {}), "watch": "1", "allowWatchBookmarks": "true",
                 "resourceVersion": resource_version,
                 "timeoutSeconds": str(timeout_seconds)}
        timeout = self._httpx.Timeout(self.timeout, read=timeout_seconds + 30.0)
        try:
            with self._client.stream("GET", path, params=query, timeout=timeout,
                                     headers={"Accept": "application/json"}) as response:
                if response.status_code >= 300:
                    raise_for(response.status_code, response.read())
                sock = self._track(response)
                try:
                    yield from self._events(response)
                finally:
                    with self._lock:
                        if sock is not None:
                            self._watching.discard(sock)
        except self._httpx.HTTPError as exc:
            raise ApiUnavailable(f"watch {path}: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            raise ApiUnavailable(f"watch {path}: undecodable event: {exc}") from exc

    def _track(self, response: Any) -> socket.socket | None:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with self._lock:
                if self._closed:
                    raise ApiUnavailable("the connection is closed")
                self._watching.add(sock)
            return sock
        return None

    @staticmethod
    def _events(response: Any) -> Iterator[dict[str, Any]]:
        for line in response.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            if event.get("type") == "ERROR":
                status = event.get("object") or {}
                code = int(status.get("code") or 500)
                raise_for(code if code >= 300 else 500, json.dumps(status).encode())
            yield event

    def close(self) -> None:
        """Close the connection; a watch in progress on another thread ends with
        ApiUnavailable."""
        with self._lock:
            self._closed = True
            watching, self._watching = self._watching, set()
        for sock in watching:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError as exc:  # already closed by the other side
                log.debug("watch socket already closed: %s", exc)
        self._client.close()
