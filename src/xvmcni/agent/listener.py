"""The agent's unix socket: who may connect, how much they may send, how long they may
take, and how many at once. The CNI work itself is the service's business.

One thread per connection (socketserver), at most ``max_connections`` of them: one
more gets ``{"error": ...}`` at once and the plugin treats it as a busy agent (code 11
for ADD, in-process for DEL). A request must arrive whole within ``read_timeout``
seconds and ``wire.MAX_REQUEST_BYTES``; a larger one is told to run in-process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from xvmcni.cni import wire
from xvmcni.cni.invocation import Outcome

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 128
# A plugin sends its few KiB in one write right after connecting: two seconds is ample,
# and a client trickling bytes holds a thread no longer than that.
READ_TIMEOUT = 2.0
_REFUSE_TIMEOUT = 0.05


class Service(Protocol):
    """What the listener serves: CNI invocations and admin operations."""

    def cni(self, env: dict[str, str], stdin: str, deadline: float | None,
            caller_gone: Callable[[], bool]) -> Outcome: ...

    def operation(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]: ...


class _Connection(socketserver.BaseRequestHandler):
    server: Listener

    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            reply = self._serve(sock)
        except OSError as exc:
            log.warning("dropped a broken client connection: %s", exc)
            return
        except Exception:  # a bug: logged, and the plugin still gets an answer
            log.exception("could not serve a connection")
            reply = wire.error("internal error in xvm-cnid")
        try:
            sock.settimeout(self.server.read_timeout)
            sock.sendall(_encode(reply))
        except OSError as exc:  # the caller gave up; it was told nothing
            log.warning("could not answer a client: %s", exc)

    def _serve(self, sock: socket.socket) -> dict[str, Any]:
        try:
            data = wire.read_message(sock, wire.MAX_REQUEST_BYTES,
                                     time.monotonic() + self.server.read_timeout)
        except wire.TooLarge:
            log.warning("refused a request larger than %d bytes", wire.MAX_REQUEST_BYTES)
            return wire.fallback(f"request larger than {wire.MAX_REQUEST_BYTES} bytes")
        except TimeoutError:
            log.warning("cut off a client that did not send its request within %gs",
                        self.server.read_timeout)
            return wire.error(f"request not complete within {self.server.read_timeout:g}s")
        try:
            message = wire.decode(data)
        except ValueError as exc:
            return wire.error(f"malformed request: {exc}")
        if "op" in message:
            args = message.get("args")
            if args is None:
                return self.server.service.operation(str(message["op"]))
            if not isinstance(args, dict):
                return wire.error("malformed request: 'args' must be an object")
            return self.server.service.operation(str(message["op"]), args)
        try:
            env, stdin, deadline = _cni_request(message)
        except (KeyError, TypeError, ValueError) as exc:
            return wire.error(f"malformed request: {exc!r}")
        if (why := foreign_caller(sock)):
            # The work must happen in the caller's namespaces, not ours: tell the plugin
            # to run it in-process there.
            log.warning("not serving a request: %s; the plugin runs it in-process", why)
            return wire.fallback(why)
        outcome = self.server.service.cni(env, stdin, deadline, lambda: hung_up(sock))
        return wire.served(outcome.exit, outcome.stdout(), outcome.code)


def _cni_request(message: dict[str, object]) -> tuple[dict[str, str], str, float | None]:
    env, stdin, deadline = message["env"], message["stdin"], message.get("deadline")
    if not isinstance(env, dict) or not isinstance(stdin, str):
        raise TypeError("env must be an object and stdin a string")
    if deadline is not None and (isinstance(deadline, bool)
                                 or not isinstance(deadline, (int, float))):
        raise TypeError("deadline must be a number")
    return ({str(k): str(v) for k, v in env.items()}, stdin,
            float(deadline) if deadline is not None else None)


class Listener(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of pods (50 ADDs at once) would see
    # EAGAIN on connect. The kernel caps this at net.core.somaxconn.
    request_queue_size = 1024

    def __init__(self, path: str, service: Service, max_connections: int,
                 read_timeout: float) -> None:
        super().__init__(path, _Connection)
        self.service = service
        self.read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(request, f"xvm-cnid is serving {self.max_connections} connections "
                             "already; try again later")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _refuse(sock: socket.socket, why: str) -> None:
    """Answer on the accepting thread without waiting for the client: a few bytes into
    an empty socket buffer never block, and the timeout makes sure of it."""
    try:
        sock.settimeout(_REFUSE_TIMEOUT)
        sock.sendall(_encode(wire.error(why)))
    except OSError as exc:
        log.debug("could not refuse a connection politely: %s", exc)
    log.warning("refused a connection: %s", why)


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode()


def hung_up(sock: socket.socket) -> bool:
    """True once the client has closed its end (not merely shut down its write side,
    which every client does after its request)."""
    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return any(events & (select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))


def foreign_caller(sock: socket.socket) -> str:
    """Why this agent must not serve the connecting process ('' when it may): it has to
    share our network namespace (the kernel objects) and our mount namespace (every
    path in the request: dataDir, CNI_NETNS, CNI_PATH), and we must be able to tell."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    for kind, what in (("net", "network"), ("mnt", "mount")):
        try:
            theirs = os.stat(f"/proc/{pid}/ns/{kind}")
        except OSError as exc:
            # Gone already, or we lack CAP_SYS_PTRACE to look: do not guess.
            return (f"cannot verify the caller's {what} namespace (pid {pid}): "
                    f"{exc.strerror or exc}")
        mine = os.stat(f"/proc/self/ns/{kind}")
        if (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
            return f"the plugin runs in another {what} namespace than this agent"
    return ""


def bind(path: Path, service: Service, max_connections: int = DEFAULT_MAX_CONNECTIONS,
         read_timeout: float = READ_TIMEOUT) -> Listener:
    """Listen on ``path``, mode 0600 from the first instant, replacing a stale socket."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        if socket_alive(path):
            raise RuntimeError(f"another xvm-cnid is already serving {path}")
        path.unlink()
    old_umask = os.umask(0o177)  # no window in which others could connect
    try:
        server = Listener(str(path), service, max_connections, read_timeout)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


def socket_alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def close(server: Listener, path: Path) -> None:
    server.server_close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

