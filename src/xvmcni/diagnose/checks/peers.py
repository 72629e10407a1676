"""The kernel's per-peer state (routes, neighbours, FDB entries, flood list)
against the hosts the control plane names: missing, extra and stale entries."""

from __future__ import annotations

from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.target import Target

NAME = "peers"


def run(t: Target) -> list[Finding]:
    peers = t.peers().peers
    if peers is None or not t.in_use():
        return []  # no list to compare with, or no host side to hold the entries
    drift = t.inspector.drift(t.network, t.model, peers)
    if not drift:
        return [fd.ok(NAME, t.name, f"kernel state matches the {len(peers)} hosts of the "
                      f"{t.network.config.control_plane} control plane", t.name)]
    return [fd.fail(NAME, t.name, f"{what}: traffic to that host's pods is lost or "
                    "misdirected", "xvmctl gc (the agent programs exactly the control "
                    "plane's peers); if it comes back, the agent's log says why", t.name)
            for what in drift]
