"""The agent's socket in front of a fake service: limits and framing, without root."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xvmcni.agent import listener
from xvmcni.cni import wire
from xvmcni.cni.invocation import Outcome


class FakeService:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], str, float | None]] = []
        self.block = threading.Event()      # set: cni() waits for its caller to hang up
        self.saw_hang_up = threading.Event()

    def cni(self, env: dict[str, str], stdin: str, deadline: float | None,
            caller_gone: Callable[[], bool]) -> Outcome:
        self.calls.append((env, stdin, deadline))
        while self.block.is_set():
            if caller_gone():
                self.saw_hang_up.set()
                break
            time.sleep(0.01)
        return Outcome(0, {"served": env.get("CNI_COMMAND")})

    def operation(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        if args is not None:
            return {"op": op, "args": args}
        return {"pong": True} if op == "ping" else {"error": "unknown"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, FakeService]]:
    service = FakeService()
    path = tmp_path / "agent.sock"
    server = listener.bind(path, service, max_connections=3, read_timeout=0.5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield str(path), service
    finally:
        service.block.clear()
        server.shutdown()
        thread.join()
        listener.close(server, path)


def _ask(path: str, data: bytes) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(wire.exchange(path, data, time.monotonic() + 10))
    return reply


def _request(command: str = "ADD", deadline: float = 0.0) -> bytes:
    return wire.encode_request({"CNI_COMMAND": command}, "{}", deadline or time.time() + 10)


def test_socket_is_private(served: tuple[str, FakeService]) -> None:
    path, _ = served
    assert Path(path).stat().st_mode & 0o777 == 0o600


def test_serves_cni_and_operations(served: tuple[str, FakeService]) -> None:
    path, service = served
    reply = _ask(path, _request("DEL", 1234.5))
    assert reply == {"exit": 0, "stdout": '{"served": "DEL"}\n'}
    assert service.calls == [({"CNI_COMMAND": "DEL"}, "{}", 1234.5)]
    assert _ask(path, wire.encode_op("ping")) == {"pong": True}


def test_operations_with_arguments(served: tuple[str, FakeService]) -> None:
    """xvmctl connectivity's probe operations carry an object of arguments; anything
    else is refused before the service sees it."""
    path, _ = served
    request = json.dumps({"op": "probe-add", "args": {"network": "n"}}).encode()
    assert _ask(path, request) == {"op": "probe-add", "args": {"network": "n"}}
    refused = _ask(path, json.dumps({"op": "probe-add", "args": ["n"]}).encode())
    assert "'args' must be an object" in refused["error"]


def test_request_without_deadline_is_an_older_plugin(served: tuple[str, FakeService]) -> None:
    path, service = served
    _ask(path, json.dumps({"env": {"CNI_COMMAND": "ADD"}, "stdin": "{}"}).encode())
    assert service.calls[0][2] is None


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"env": 1, "stdin": "{}"}',
                                  b'{"env": {}, "stdin": "{}", "deadline": "soon"}',
                                  b'{"env": {}}'])
def test_malformed_requests_get_an_error(served: tuple[str, FakeService], data: bytes) -> None:
    path, service = served
    assert "error" in _ask(path, data)
    assert service.calls == []


def test_oversized_request_is_told_to_run_in_process(served: tuple[str, FakeService]) -> None:
    path, service = served
    reply = _ask(path, b" " * (wire.MAX_REQUEST_BYTES + 1))
    assert "larger" in reply["fallback"]
    assert service.calls == []


def test_trickling_client_is_cut_off_at_the_read_deadline(
        served: tuple[str, FakeService]) -> None:
    path, service = served
    request = _request()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        with pytest.raises(OSError):   # the agent stops reading and closes
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        reply = json.loads(wire.read_message(sock, 1 << 20, time.monotonic() + 10))
    assert "not complete" in reply["error"]
    assert service.calls == []


def test_connections_beyond_the_cap_are_refused_at_once(
        served: tuple[str, FakeService]) -> None:
    path, service = served
    service.block.set()
    held = []
    try:
        for _ in range(3):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.sendall(_request())
            sock.shutdown(socket.SHUT_WR)
            held.append(sock)
        deadline = time.monotonic() + 10
        while len(service.calls) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "connections" in _ask(path, wire.encode_op("ping"))["error"]
    finally:
        for sock in held:
            sock.close()
    assert service.saw_hang_up.wait(10), "the service never learnt its caller hung up"
    service.block.clear()
    deadline = time.monotonic() + 10
    while True:   # slots free up as the hung-up connections finish
        if _ask(path, wire.encode_op("ping")) == {"pong": True}:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_caller_in_our_namespaces_is_not_foreign() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert listener.foreign_caller(a) == ""
        assert not listener.hung_up(a)
        b.shutdown(socket.SHUT_WR)
        assert not listener.hung_up(a)   # half-closed: every client does that
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with c:
        d.close()
        assert listener.hung_up(c)
