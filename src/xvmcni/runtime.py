"""Per-process state, as one object handed down instead of module globals.

Two kinds of process run the command flow: the in-process plugin (one request,
then exit) and the node agent (thousands of requests, many threads). What
differs between them lives here: the agent keeps warm sqlite connections and
netlink sockets per thread, caches the host interface, retires veths to a
background reaper, and owns its logging; the in-process plugin does none of that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvmcni.controlplane.k8spods import PodSources
from xvmcni.dataplane.hostif import HostInterfaceCache
from xvmcni.dataplane.netlink import HostSockets, rtnl
from xvmcni.dataplane.reaper import VethReaper
from xvmcni.state.attachments import AttachmentRegistry, RegistryCache, open_registry

# How long a request waits for the network's lock and for sqlite's write lock.
LOCK_TIMEOUT = 10.0
REGISTRY_FILE = "ipam.db"


@dataclass
class Runtime:
    """What one process shares between the requests it serves."""

    # False in the agent: a request's logFile/logLevel must not reconfigure it.
    manage_logging: bool = True
    # DEL retires veths for batched deletion off the request path (agent).
    reaper: VethReaper | None = None
    # Warm per-thread host netlink sockets and registries, cached host interface.
    host_sockets: HostSockets | None = None
    registries: RegistryCache | None = None
    hostif_cache: HostInterfaceCache | None = None
    # The agent's running control planes by network state dir (peers.PeerSync fills
    # it); an ADD in the agent claims IPAM blocks through them.
    control_planes: dict[Path, Any] | None = None
    # The agent's watch caches of Kubernetes pods (pod-selected networks and addresses);
    # None in-process, which asks the API server once per ADD instead.
    pod_sources: PodSources | None = None

    @classmethod
    def in_process(cls) -> Runtime:
        return cls()

    @classmethod
    def for_agent(cls, reaper: VethReaper) -> Runtime:
        return cls(manage_logging=False, reaper=reaper, host_sockets=HostSockets(),
                   registries=RegistryCache(), hostif_cache=HostInterfaceCache(2.0),
                   pod_sources=PodSources())

    def host_rtnl(self) -> contextlib.AbstractContextManager[Any]:
        """A netlink socket in the host's (this thread's) namespace."""
        return rtnl(warm=self.host_sockets)

    @contextlib.contextmanager
    def registry(self, state_dir: Path) -> Iterator[AttachmentRegistry]:
        with open_registry(state_dir / REGISTRY_FILE, LOCK_TIMEOUT, self.registries) as reg:
            yield reg
