"""The etcd watcher programs a burst of queued events once, with the final peer set."""

from __future__ import annotations

import json
import threading

from xvmcni.controlplane.base import Peer
from xvmcni.controlplane.etcd import EtcdControlPlane
from xvmcni.controlplane.etcdconfig import Endpoint, EtcdSettings
from xvmcni.controlplane.etcdstore import Change


def record(name: str, index: int) -> bytes:
    return json.dumps({"name": name, "underlay": {"ipv4": f"192.168.1.{index}"},
                       "vtepMac": "", "podCidrs": [f"10.244.{index}.0/24"]}).encode()


def test_a_burst_of_events_is_programmed_once_with_the_final_set() -> None:
    settings = EtcdSettings((Endpoint("127.0.0.1", 2379, False),))
    plane = EtcdControlPlane(settings, "net", me="h0", store=object())  # type: ignore[arg-type]
    prefix = plane.hosts_prefix
    for i in range(1, 6):  # five hosts join while the watcher is busy
        plane._events.put([Change(f"{prefix}h{i}", record(f"h{i}", i), 10 + i)])
    plane._events.put([Change(f"{prefix}h2", None, 20)])  # and one leaves again
    seen: list[list[Peer]] = []

    def on_change(peers: list[Peer]) -> None:
        seen.append(peers)
        plane._stop.set()  # one pass is all this test needs

    watcher = threading.Thread(target=plane._drain, args=(on_change,))
    watcher.start()
    watcher.join(timeout=5)
    assert not watcher.is_alive()
    assert [[p.name for p in peers] for peers in seen] == [["h1", "h3", "h4", "h5"]]
    assert plane.revision == 20
