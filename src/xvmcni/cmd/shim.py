"""The thin ``xvm-cni`` executable: forwards the invocation to the node agent.

Runs as ``python3 -IS`` and imports only builtins and ``xvmcni.cni.wire`` (itself
builtins and the C halves of json and socket), so that it starts in about 10 ms.

VERSION is answered here. Everything else goes to ``xvm-cnid`` over its unix socket
(framing: ``wire``); without an agent, or when the agent says to, the same request
runs in-process (the slow path pays the heavy imports). Whatever happens, the runtime
gets the CNI error JSON, never a traceback: a config this module cannot read, or whose
agent fields are unusable, goes to the in-process parser, which explains it.
"""

import posix  # builtin: os.environ without importing os (1.4 ms under -S)
import sys
import time  # builtin

from xvmcni.cni import wire
from xvmcni.cni.wire import dumps, loads

TRY_AGAIN_LATER = 11


class AgentAbsent(Exception):
    """Run in-process: no agent listens, or it told us to."""


class AgentSilent(Exception):
    """The agent did not serve the request (busy, timed out, unreadable answer)."""


def _config(stdin: bytes) -> dict[str, object] | None:
    """The config object, {} for empty stdin, None when unreadable."""
    if not stdin.strip():
        return {}
    try:
        conf = loads(stdin.decode("utf-8"))
    except ValueError:  # includes UnicodeDecodeError and deep nesting; the parser explains
        return None
    return conf if isinstance(conf, dict) else None


def ask_agent(path: str, timeout: float, env: dict[str, str],
              stdin: str) -> tuple[int, str, int]:
    """Send one request; return (exit status, stdout text, CNI error code or 0)."""
    deadline = time.monotonic() + timeout
    request = wire.encode_request(env, stdin, time.time() + timeout)
    if len(request) > wire.MAX_REQUEST_BYTES:
        raise AgentAbsent("the request is larger than the agent accepts")
    try:
        data = wire.exchange(path, request, deadline)
    except wire.NoAgent as exc:
        raise AgentAbsent(str(exc)) from exc
    except wire.NoAnswer as exc:
        raise AgentSilent(str(exc)) from exc
    try:
        reply = wire.decode(data)
        if "fallback" in reply:
            raise AgentAbsent(str(reply["fallback"]))
        if "error" in reply:
            raise AgentSilent("the agent refused the request: " + str(reply["error"]))
        status, text, code = reply["exit"], reply["stdout"], reply.get("code", 0)
        if not isinstance(status, int) or not isinstance(text, str) \
                or not isinstance(code, int):
            raise TypeError("the answer's fields have the wrong types")
        return status, text, code
    except (ValueError, KeyError, TypeError) as exc:
        raise AgentSilent("unreadable answer from the agent: " + str(exc)) from exc


def in_process(env: dict[str, str], stdin_bytes: bytes) -> int:
    from xvmcni.cmd.plugin import run  # the heavy path: pyroute2 and friends

    return run(env, stdin_bytes, sys.stdout)


def _environment(names: tuple[str, ...] = ("PATH", wire.SOCKET_ENV)) -> dict[str, str]:
    """CNI_* plus ``names`` from the process environment, decoded as os.environ does."""
    out = {}
    for key, value in posix.environ.items():
        name = key.decode("utf-8", "surrogateescape")
        if name.startswith("CNI_") or name in names:
            out[name] = value.decode("utf-8", "surrogateescape")
    return out


def main() -> int:
    stdin_bytes = sys.stdin.buffer.read() if sys.stdin is not None else b""
    env = _environment()
    command = env.get("CNI_COMMAND", "")
    conf = _config(stdin_bytes)
    if conf is None:
        # Unreadable config: the in-process path answers with the exact error (code 6),
        # the same whether or not an agent runs.
        return in_process(env, stdin_bytes)
    if command == "VERSION":
        sys.stdout.write(dumps(wire.version_reply(wire.caller_version(conf))) + "\n")
        return 0
    path = wire.agent_socket(conf, env)
    timeout = wire.agent_timeout(conf)
    if path is None or timeout is None:
        return in_process(env, stdin_bytes)  # the full parser explains the bad field (7)
    try:
        status, text, code = ask_agent(path, timeout, env,
                                       stdin_bytes.decode("utf-8", "surrogateescape"))
    except AgentAbsent:  # includes a request too large for the agent
        return in_process(env, stdin_bytes)
    except AgentSilent as exc:
        if command == "DEL":
            # DEL must succeed for the runtime to move on: do it ourselves.
            return in_process(env, stdin_bytes)
        err = {"cniVersion": wire.caller_version(conf), "code": TRY_AGAIN_LATER,
               "msg": "the xvm-cnid agent is busy or did not answer in time; try again later",
               "details": str(exc)}
        sys.stdout.write(dumps(err) + "\n")
        return 1
    if command == "DEL" and status != 0 and code == TRY_AGAIN_LATER:
        # The agent timed out on a DEL: it must still succeed, so do it here (under the
        # network's lock, after whatever the agent still runs).
        return in_process(env, stdin_bytes)
    sys.stdout.write(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
