"""``xvmctl status`` and ``xvmctl gc``: ask a node agent (``xvm-cnid``) over its socket.

The agent's admin operations share the plugin's unix socket: the client sends
``{"op": "status"}`` (or ``"gc"``, ``"ping"``), shuts down its write side and reads
one JSON object until the agent closes the connection (framing and limits:
``xvmcni.cni.wire``). This module is the client and the text rendering; it imports
nothing heavy (no pyroute2), and the terminal helpers (``Style``, ``table``) are
shared with the lab's views.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from xvmcni.cni import wire

# Re-exported for xvmctl's options: the values live in wire.
from xvmcni.cni.wire import DEFAULT_SOCKET as DEFAULT_SOCKET
from xvmcni.cni.wire import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from xvmcni.cni.wire import SOCKET_ENV as SOCKET_ENV

_ANSI = re.compile(r"\033\[[0-9;]*m")


def default_socket() -> str:
    """Where the plugin looks for the agent, without a config: $XVM_CNID_SOCKET, else
    the installed default."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


# ---------------------------------------------------------------------------
# Client.


class AgentUnavailable(Exception):
    """No usable answer from an agent; ``hint`` says what to do about it."""

    def __init__(self, msg: str, hint: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.hint = hint

    def __str__(self) -> str:
        return self.msg


def agent_request(path: str, op: str, timeout: float = DEFAULT_TIMEOUT,
                  args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one admin operation (with ``args``, for those that take some) to the agent
    at ``path`` and return its JSON answer.

    Raises ``AgentUnavailable`` with a readable message for every way this can fail:
    no socket, a stale socket (agent gone), no permission, no or a bad answer.
    """
    try:
        request = wire.encode_op(op) if args is None else \
            json.dumps({"op": op, "args": args}).encode()
        data = wire.exchange(path, request, time.monotonic() + timeout)
    except wire.NoAgent as exc:
        raise _not_connected(path, exc.cause) from exc
    except wire.NoAnswer as exc:
        if isinstance(exc.__cause__, TimeoutError):
            raise AgentUnavailable(f"xvm-cnid on {path} did not answer within {timeout:g} s",
                                   "the agent is busy or hung; its log says which") from exc
        raise AgentUnavailable(f"connection to xvm-cnid on {path} failed: {exc}") from exc
    try:
        reply = json.loads(data)
    except ValueError as exc:
        raise AgentUnavailable(f"unreadable answer from xvm-cnid on {path}: {exc}") from exc
    if not isinstance(reply, dict):
        raise AgentUnavailable(f"unexpected answer from xvm-cnid on {path}: {data[:200]!r}")
    if "error" in reply:
        raise AgentUnavailable(f"xvm-cnid on {path} refused {op!r}: {reply['error']}",
                               "the agent is older than this xvmctl, or busy: upgrade and "
                               "restart it, or try again")
    return reply


def _not_connected(path: str, exc: OSError) -> AgentUnavailable:
    if isinstance(exc, FileNotFoundError):
        return AgentUnavailable(f"no xvm-cnid socket at {path}",
                                "is the agent running? start it: systemctl start xvm-cnid "
                                "(or run xvm-cnid), or pass --socket PATH")
    if isinstance(exc, ConnectionRefusedError):
        return AgentUnavailable(f"no xvm-cnid listens on {path}",
                                "the socket is left over from an agent that stopped; "
                                "start the agent again")
    if isinstance(exc, PermissionError):
        return AgentUnavailable(f"permission denied on {path}",
                                "the agent's socket is root-only: run as root "
                                "(sudo xvmctl ...)")
    if exc.errno == errno.ENOTSOCK:
        return AgentUnavailable(f"{path} is not a unix socket")
    return AgentUnavailable(f"cannot connect to {path}: {exc.strerror or exc}")


# ---------------------------------------------------------------------------
# Terminal helpers (also used by the lab's views).


@dataclass
class Style:
    ok: str = "✓"
    bad: str = "✗"
    self_: str = "·"
    times: str = "\u00d7"  # multiplication sign
    color: bool = False

    def green(self, text: str) -> str:
        return f"\033[32m{text}\033[0m" if self.color else text

    def red(self, text: str) -> str:
        return f"\033[1;31m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return f"\033[1m{text}\033[0m" if self.color else text

    def dim(self, text: str) -> str:
        return f"\033[2m{text}\033[0m" if self.color else text


def style_for(stream: TextIO) -> Style:
    """Symbols fall back to ASCII when ``stream`` can't encode them; colour only on a
    TTY without NO_COLOR."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        (Style.ok + Style.bad + Style.self_ + Style.times).encode(encoding)
        style = Style()
    except (UnicodeEncodeError, LookupError):
        style = Style(ok="ok", bad="--", self_=".", times="x")
    isatty = getattr(stream, "isatty", None)
    style.color = bool(isatty and isatty()) and "NO_COLOR" not in os.environ \
        and os.environ.get("TERM") != "dumb"
    return style


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns two spaces apart, padded by visible width (colour codes
    take no room on screen)."""
    widths = [max(visible_len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell + " " * (w - visible_len(cell)) for cell, w in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


# ---------------------------------------------------------------------------
# Rendering.


def format_uptime(seconds: float) -> str:
    """``42s``, ``12m 03s``, ``3h 04m``, ``2d 03h``."""
    total = int(max(0.0, seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_requests(counts: Mapping[str, Any]) -> str:
    """``ADD 12, DEL 3 (15 total)``; CNI commands in their usual order first."""
    order = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]
    items = sorted(((str(k), int(v)) for k, v in counts.items()),
                   key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))
    if not items:
        return "none yet"
    text = ", ".join(f"{k} {v}" for k, v in items)
    return text + f" ({sum(v for _, v in items)} total)" if len(items) > 1 else text


def format_usage(used: int, size: int) -> str:
    """``2/252 (0.8%)``; just the count when the pool size is unknown (delegated IPAM)."""
    if size <= 0:
        return str(used)
    return f"{used}/{size} ({100.0 * used / size:.1f}%)"


def network_rows(networks: list[dict[str, Any]], style: Style) -> list[list[str]]:
    rows = []
    for net in networks:
        ready = style.green("yes") if net.get("ready") else \
            style.red("NO") + (f": {net.get('reason')}" if net.get("reason") else "")
        rows.append([str(net.get("name", "?")), str(net.get("bridge", "-")),
                     str(net.get("vni", "-")), str(net.get("subnet", "-")),
                     str(net.get("pool") or "-"), str(net.get("containers", 0)),
                     format_usage(int(net.get("used", 0)), int(net.get("size", 0))), ready])
    return rows


NETWORK_HEADER = ["NETWORK", "BRIDGE", "VNI", "SUBNET", "POOL", "CONTAINERS", "USED", "READY"]


def render_status(reply: dict[str, Any], style: Style) -> str:
    """The ``status`` answer as text: the agent, then one row per network."""
    agent = reply.get("agent") or {}
    lines = [style.bold(f"xvm-cnid pid {agent.get('pid', '?')}")
             + f", up {format_uptime(float(agent.get('uptime', 0)))}"
             + f", socket {agent.get('socket', '?')}",
             f"  requests  {format_requests(agent.get('requests') or {})}",
             f"  metrics   {agent.get('metrics') or 'off (--metrics-port 0)'}",
             ""]
    networks = list(reply.get("networks") or [])
    if not networks:
        lines.append("  no xvm-cni networks known to this agent (none in its --cni-conf-dir, "
                     "no state in its --data-dir)")
    else:
        lines += table(NETWORK_HEADER, network_rows(networks, style))
    return "\n".join(lines)


def render_gc(reply: dict[str, Any], style: Style) -> str:
    """The ``gc`` answer: per network what was released, re-plugged, or failed."""
    reports = list(reply.get("networks") or [])
    if not reports:
        return "gc: no xvm-cni networks known to this agent: nothing to do"
    rows = []
    for rep in reports:
        released = list(rep.get("released") or [])
        replugged = list(rep.get("replugged") or [])
        outcome = style.red(f"FAILED: {rep['error']}") if rep.get("error") else style.green("ok")
        rows.append([str(rep.get("name", "?")), str(rep.get("containers", 0)),
                     " ".join(released) or "-", " ".join(replugged) or "-", outcome])
    lines = ["gc: reconciled every network with its IPAM store", ""]
    lines += table(["NETWORK", "CONTAINERS", "RELEASED", "RE-PLUGGED", "RESULT"], rows)
    return "\n".join(lines)


def gc_failed(reply: dict[str, Any]) -> bool:
    return any(rep.get("error") for rep in reply.get("networks") or [])
