"""The thin ``xvm-cni`` executable: forwards the invocation to the node agent.

Imports only os, sys, json and socket, so that it starts in milliseconds under
``python3 -I -S``. VERSION is answered here. Everything else goes to
``xvm-cnid`` over its unix socket; without an agent the same request runs
in-process (the slow path pays the heavy imports).

Wire format, one request per connection: the client sends
``{"env": {...}, "stdin": "..."}`` and shuts down its write side; the agent
answers ``{"exit": N, "stdout": "..."}`` and closes.
"""

import json
import os
import socket
import sys

DEFAULT_SOCKET = "/run/xvm-cni/xvm-cnid.sock"
DEFAULT_TIMEOUT = 30.0
SUPPORTED = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
TRY_AGAIN_LATER = 11


class AgentAbsent(Exception):
    """No agent listens: run in-process."""


class AgentSilent(Exception):
    """An agent took the request but did not answer in time."""


def _config(stdin: bytes) -> dict[str, object]:
    try:
        conf = json.loads(stdin)
    except ValueError:
        return {}
    return conf if isinstance(conf, dict) else {}


def _version(conf: dict[str, object]) -> str:
    version = conf.get("cniVersion", "0.1.0")
    return version if isinstance(version, str) else "0.1.0"


def _code(text: str) -> int:
    try:
        return int(json.loads(text).get("code", 0))
    except (ValueError, AttributeError, TypeError):
        return 0


def ask_agent(path: str, timeout: float, env: dict[str, str],
              stdin: str) -> tuple[int, str]:
    """Send one request; return (exit status, stdout text)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            # No socket, or a stale one left by a dead agent.
            raise AgentAbsent(str(exc)) from exc
        except OSError as exc:
            raise AgentAbsent(str(exc)) from exc
        try:
            sock.sendall(json.dumps({"env": env, "stdin": stdin}).encode())
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:  # includes socket.timeout
            raise AgentSilent(str(exc)) from exc
    finally:
        sock.close()
    if not chunks:
        raise AgentSilent("the agent closed the connection without an answer")
    try:
        reply = json.loads(b"".join(chunks))
        if "fallback" in reply:
            raise AgentAbsent(str(reply["fallback"]))
        return int(reply["exit"]), str(reply["stdout"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AgentSilent("unreadable answer from the agent: " + str(exc)) from exc


def in_process(env: dict[str, str], stdin_bytes: bytes) -> int:
    from xvmcni.cni.main import run  # the heavy path: pyroute2 and friends

    return run(env, stdin_bytes, sys.stdout)


def main() -> int:
    stdin_bytes = sys.stdin.buffer.read() if sys.stdin is not None else b""
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_") or k == "PATH"}
    command = env.get("CNI_COMMAND", "")
    conf = _config(stdin_bytes)
    if command == "VERSION":
        out = {"cniVersion": _version(conf), "supportedVersions": SUPPORTED}
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    path = conf.get("agentSocket") or os.environ.get("XVM_CNID_SOCKET") or DEFAULT_SOCKET
    timeout = conf.get("agentTimeout") or DEFAULT_TIMEOUT
    if not isinstance(path, str) or not isinstance(timeout, (int, float)):
        return in_process(env, stdin_bytes)  # let the full parser explain the bad field
    try:
        status, text = ask_agent(path, float(timeout), env,
                                 stdin_bytes.decode("utf-8", "surrogateescape"))
    except AgentAbsent:
        return in_process(env, stdin_bytes)
    except AgentSilent as exc:
        if command == "DEL":
            # DEL must succeed for the runtime to move on: do it ourselves.
            return in_process(env, stdin_bytes)
        err = {"cniVersion": _version(conf), "code": TRY_AGAIN_LATER,
               "msg": "the xvm-cnid agent did not answer in time; try again later",
               "details": str(exc)}
        sys.stdout.write(json.dumps(err) + "\n")
        return 1
    if command == "DEL" and status != 0 and _code(text) == TRY_AGAIN_LATER:
        # The agent timed out on a DEL: it must still succeed, so do it here.
        return in_process(env, stdin_bytes)
    sys.stdout.write(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
