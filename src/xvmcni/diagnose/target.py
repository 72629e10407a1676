"""One network under diagnosis: its config, its model opened read-only on the
host's netlink socket, its inspector, and the control plane's peers (asked once)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from xvmcni.dataplane.errors import DataplaneError
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.host import Host
from xvmcni.diagnose.models import Inspector
from xvmcni.diagnose.peersource import PeerView, peer_view
from xvmcni.networks import Network
from xvmcni.runtime import REGISTRY_FILE


@dataclass(frozen=True)
class Record:
    """One attachment in the network's registry, read without changing it."""

    container_id: str
    ifname: str
    netns: str
    addresses: tuple[str, ...]


@dataclass
class Target:
    host: Host
    network: Network
    inspector: Inspector
    model: Any
    _peers: PeerView | None = None
    _records: list[Record] | None = None

    @property
    def name(self) -> str:
        return self.network.name

    def peers(self) -> PeerView:
        if self._peers is None:
            try:
                self._peers = peer_view(self.network, self.model)
            except DataplaneError as exc:
                self._peers = PeerView(None, [fd.error(
                    "controlplane", self.network.config.control_plane,
                    f"cannot compare with the control plane: {exc}", self.name)])
        return self._peers

    def records(self) -> list[Record]:
        """The registry's attachments, opened read-only (doctor never writes, and
        never creates a registry that is not there)."""
        if self._records is None:
            path = self.network.state_dir / REGISTRY_FILE
            if not path.exists():
                self._records = []
                return self._records
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            try:
                rows = conn.execute("SELECT container_id, ifname, netns FROM attachments "
                                    "ORDER BY created").fetchall()
                addresses: dict[tuple[str, str], list[str]] = {}
                for cid, ifname, address in conn.execute(
                        "SELECT container_id, ifname, address FROM addresses "
                        "ORDER BY position"):
                    addresses.setdefault((cid, ifname), []).append(str(address))
            finally:
                conn.close()
            self._records = [Record(str(c), str(i), str(n), tuple(addresses.get((c, i), [])))
                             for c, i, n in rows]
        return self._records

    def in_use(self) -> bool:
        """Containers of this network are recorded here: its host side must exist."""
        return bool(self.records())
