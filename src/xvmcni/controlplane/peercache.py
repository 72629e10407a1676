"""The last peer set a control plane announced, kept in the network's state dir.

Written by the agent on every change; read when a host joins (the first ADD, with
or without the agent) so a new VXLAN device knows the other hosts at once, and by
``status``. Written atomically: a reader sees the old set or the new one.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path

from xvmcni.controlplane.base import Peer

log = logging.getLogger(__name__)

PEERS_FILE = "peers.json"


def _to_dict(peer: Peer) -> dict[str, object]:
    return {"name": peer.name, "underlay": str(peer.underlay), "vtepMac": peer.vtep_mac,
            "podCidrs": list(peer.pod_cidrs)}


def write(state_dir: Path, peers: list[Peer]) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / PEERS_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"peers": [_to_dict(p) for p in peers]}, indent=1))
    os.replace(tmp, path)


def read(state_dir: Path) -> list[Peer] | None:
    """The cached peers; None when nothing was cached (or the file is unreadable)."""
    try:
        data = json.loads((state_dir / PEERS_FILE).read_text())
        return [Peer(name=str(p["name"]), underlay=ipaddress.ip_address(p["underlay"]),
                     vtep_mac=str(p.get("vtepMac", "")),
                     pod_cidrs=tuple(str(c) for c in p.get("podCidrs", [])))
                for p in data["peers"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable peer cache in %s: %s", state_dir, exc)
        return None
