"""Per-process state, as one object handed down instead of module globals.

Two kinds of process run the command flow: the in-process plugin (one request,
then exit) and the node agent (thousands of requests, many threads). What
differs between them lives here: the agent keeps warm sqlite connections and
netlink sockets per thread, caches the host interface, retires veths to a
background reaper, and owns its logging; the in-process plugin does none of
that. Nothing in this module imports pyroute2, so the plugin's error paths
stay cheap.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xvmcni.dataplane.reaper import VethReaper


@dataclass
class Runtime:
    """What one process shares between the requests it serves."""

    # The agent: keep sqlite connections and host netlink sockets per thread.
    warm: bool = False
    # The agent owns its logging; a request's logFile/logLevel must not reconfigure it.
    manage_logging: bool = True
    # Seconds a host interface lookup stays valid (0: look it up every time).
    hostif_cache_seconds: float = 0.0
    # Set in the agent: DEL retires veths for batched deletion off the request path.
    reaper: VethReaper | None = None
    # Per-thread caches (sqlite stores, netlink sockets) of a warm runtime.
    local: threading.local = field(default_factory=threading.local)
    # Host interface cache: name -> (expiry, value); shared by all threads.
    hostif_cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    @classmethod
    def in_process(cls) -> Runtime:
        return cls()

    @classmethod
    def for_agent(cls, reaper: VethReaper | None) -> Runtime:
        return cls(warm=True, manage_logging=False, hostif_cache_seconds=2.0, reaper=reaper)
