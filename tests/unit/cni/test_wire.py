"""The wire module: framing, the bounded read loop, the caller's version, agentTimeout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xvmcni.cni import wire

SRC = str(Path(wire.__file__).resolve().parents[2])


def test_the_thin_plugin_imports_no_heavy_module() -> None:
    """wire and the shim stay free of json, socket, re and enum (they double start-up)."""
    heavy = "{'json', 'socket', 're', 'enum', 'selectors', 'os', 'pathlib'}"
    code = (f"import sys; sys.path.insert(0, {SRC!r}); import xvmcni.cmd.shim; "
            f"print(sorted(set(sys.modules) & {heavy}))")
    out = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_request_is_json_with_env_stdin_and_deadline() -> None:
    raw = wire.encode_request({"CNI_COMMAND": "ADD"}, '{"a": "\u00e9"}', 1234.5)
    assert json.loads(raw) == {"env": {"CNI_COMMAND": "ADD"}, "stdin": '{"a": "\u00e9"}',
                               "deadline": 1234.5}
    assert raw.isascii()


def test_reply_shapes() -> None:
    assert wire.served(0, "{}\n", None) == {"exit": 0, "stdout": "{}\n"}
    assert wire.served(1, "x", 11) == {"exit": 1, "stdout": "x", "code": 11}
    assert wire.fallback("why") == {"fallback": "why"}
    assert wire.error("why") == {"error": "why"}
    assert wire.decode(b'{"op": "ping"}') == {"op": "ping"}
    for bad in (b"[1]", b"nope", b"\xff", b"[" * 100_000):
        with pytest.raises(ValueError):
            wire.decode(bad)


@pytest.mark.parametrize("depth", [1_000, 5_000, 100_000])
def test_deep_nesting_is_a_value_error_not_a_crash(depth: int) -> None:
    with pytest.raises(ValueError):
        wire.loads("[" * depth + "]" * depth)
    assert wire.declared_version(b'{"x": ' + b"[" * depth + b"]" * depth + b"}") == "1.0.0"


@pytest.mark.parametrize(("stdin", "version"), [
    (b'{"cniVersion": "0.4.0"}', "0.4.0"),
    (b"{}", "0.1.0"),                       # no cniVersion: libcni's 0.1.0
    (b'{"cniVersion": 5}', "1.0.0"),
    (b"[]", "1.0.0"),
    (b"not json", "1.0.0"),
    (b"\xff\xfe", "1.0.0"),
    (b"", "1.0.0"),
])
def test_declared_version(stdin: bytes, version: str) -> None:
    assert wire.declared_version(stdin) == version


@pytest.mark.parametrize("value", [0, -1, 0.0, -0.5, float("nan"), float("inf"),
                                   float("-inf"), True, False, "30", None, [1], 10**2000,
                                   wire.MAX_TIMEOUT + 1])
def test_unusable_agent_timeouts(value: object) -> None:
    assert wire.timeout_problem(value)
    if value is not None:
        assert wire.agent_timeout({"agentTimeout": value}) is None


@pytest.mark.parametrize("value", [1, 2.5, 0.001, wire.MAX_TIMEOUT])
def test_usable_agent_timeouts(value: float) -> None:
    assert wire.timeout_problem(value) == ""
    assert wire.agent_timeout({"agentTimeout": value}) == float(value)


def test_agent_timeout_and_socket_defaults() -> None:
    assert wire.agent_timeout({}) == wire.DEFAULT_TIMEOUT
    assert wire.agent_socket({}, {}) == wire.DEFAULT_SOCKET
    assert wire.agent_socket({}, {wire.SOCKET_ENV: "/x.sock"}) == "/x.sock"
    assert wire.agent_socket({"agentSocket": "/y.sock"}, {wire.SOCKET_ENV: "/x"}) == "/y.sock"
    assert wire.agent_socket({"agentSocket": 5}, {}) is None
    assert wire.agent_socket({"agentSocket": "/a\0b"}, {}) is None


# --- the read loop and the exchange ---------------------------------------------------------

@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_read_message_returns_everything_until_eof(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    data = b"x" * 200_000
    sender = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)))
    sender.start()
    assert wire.read_message(b, 1 << 20, time.monotonic() + 30) == data
    sender.join()


def test_read_message_stops_at_the_cap(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(b"y" * 5000)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(wire.TooLarge):
        wire.read_message(b, 4096, time.monotonic() + 30)


def test_read_message_deadline_covers_the_whole_message(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A peer that keeps sending a byte at a time never completes: cut off, although
    no single recv ever waits long."""
    a, b = pair
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.05):
            try:
                a.send(b"z")
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        with pytest.raises(TimeoutError):
            wire.read_message(b, 1 << 20, time.monotonic() + 0.5)
    finally:
        stop.set()
        sender.join()


def _serve_once(path: Path, answer: bytes, read_first: int | None = None) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            if read_first is None:
                while conn.recv(65536):
                    pass
            else:
                conn.recv(read_first)   # answers early, leaving the rest unread
            conn.sendall(answer)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_exchange_round_trip(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    server = _serve_once(sock, b'{"pong": true}')
    reply = wire.exchange(str(sock), wire.encode_op("ping"), time.monotonic() + 30)
    server.join()
    assert wire.decode(reply) == {"pong": True}


def test_exchange_reads_an_early_answer_to_a_request_it_could_not_finish_sending(
        tmp_path: Path) -> None:
    """The agent answers "too large" after reading its cap and closes: the client's send
    fails, but the answer is there to read (and says to run in-process)."""
    sock = tmp_path / "b.sock"
    server = _serve_once(sock, b'{"fallback": "request larger than 4 bytes"}', read_first=4)
    reply = wire.exchange(str(sock), b"x" * (8 << 20), time.monotonic() + 30)
    server.join()
    assert wire.decode(reply) == {"fallback": "request larger than 4 bytes"}


def test_exchange_without_agent(tmp_path: Path) -> None:
    with pytest.raises(wire.NoAgent) as missing:
        wire.exchange(str(tmp_path / "none.sock"), b"{}", time.monotonic() + 5)
    assert isinstance(missing.value.cause, FileNotFoundError)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()   # bound, never listening: what a killed agent leaves
    with pytest.raises(wire.NoAgent) as refused:
        wire.exchange(str(tmp_path / "stale.sock"), b"{}", time.monotonic() + 5)
    assert isinstance(refused.value.cause, ConnectionRefusedError)


def test_exchange_gives_up_at_the_deadline(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "mute.sock"))
    server.listen(1)
    try:
        with pytest.raises(wire.NoAnswer):
            wire.exchange(str(tmp_path / "mute.sock"), b"{}", time.monotonic() + 0.3)
    finally:
        server.close()
