"""Deleting veths off the request path (agent only).

Unregistering a network device waits for an RCU grace period: 15-20 ms per
veth, measured, and most of a DEL. The agent instead takes the host end down
and tags it with ``RETIRED_GROUP`` (about 1 ms: no traffic crosses it any
more), answers the runtime, and lets this thread delete every retired veth
with one group delete: one grace period for the whole batch. Runtimes delete
the pod's netns right after DEL anyway, and the kernel then removes the pair
on its own; the reaper catches the rest.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane import antispoof, nft
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import delete_link, kernel_error, rtnl

log = logging.getLogger(__name__)

# Device group for veths waiting to be deleted ("xvm" in ASCII, far from 0 = default).
RETIRED_GROUP = 0x78766D
# Delete in batches: wait this long after the first retirement for more to come.
BATCH_WINDOW = 0.05

# Held while deleting retired veths, so an ADD that wants a retired name back
# (same container, same ifname) never races the group delete.
reap_lock = threading.Lock()


def is_retired(link: Any) -> bool:
    return bool(link is not None and link.get("IFLA_GROUP") == RETIRED_GROUP)


def reclaim(ipr: Any, host_name: str) -> None:
    """Delete a retired veth now, because its name is wanted again."""
    with reap_lock:
        delete_link(ipr, host_name)


class VethReaper:
    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="veth-reaper", daemon=True)
        # (anti-spoofing table, port) whose elements go once the veth is gone: a retired
        # port sends nothing, and reading the table to evict it costs a DEL milliseconds.
        # Their own locks, not reap_lock: a DEL must not wait for a group delete (an
        # RCU grace period) just to queue an eviction.
        self._evictions: set[tuple[str, str]] = set()
        self._pending_lock = threading.Lock()
        self._evict_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()
        self._wake.set()  # retired veths left by a previous agent: delete them too

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def retire(self, ipr: Any, host_name: str) -> bool:
        """Take the host end down and queue the pair; False when it does not exist."""
        try:
            ipr.link("set", ifname=host_name, state="down", group=RETIRED_GROUP)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise kernel_error(f"retire veth {host_name}", exc) from exc
        self._wake.set()
        return True

    def evict_later(self, table: str, port: str) -> None:
        """Queue the port's anti-spoofing elements for removal with the next batch."""
        with self._pending_lock:
            self._evictions.add((table, port))
        self._wake.set()

    def settle(self, table: str, port: str) -> None:
        """Remove the port's queued elements now: its name is wanted again, and a
        late eviction would take the new pod's admission away. Waits for a batch in
        flight, which may hold this port."""
        with self._evict_lock:
            with self._pending_lock:
                if (table, port) not in self._evictions:
                    return
                self._evictions.discard((table, port))
            _evict({(table, port)})

    def _loop(self) -> None:
        with rtnl() as ipr:  # created in this thread: the agent's host netns
            while not self._stop.is_set():
                self._wake.wait()
                if self._stop.wait(BATCH_WINDOW):
                    break
                self._wake.clear()
                self._reap(ipr)
            self._reap(ipr)  # leave nothing retired behind on a clean stop

    def _reap(self, ipr: Any) -> None:
        with reap_lock:
            try:
                ipr.link("del", group=RETIRED_GROUP)
            except NetlinkError as exc:
                if exc.code not in (errno.ENODEV, errno.EINVAL):
                    log.error("deleting retired veths failed: %s", exc)
        with self._evict_lock:
            with self._pending_lock:
                pending, self._evictions = self._evictions, set()
            try:
                _evict(pending)
            except DataplaneError as exc:
                log.error("removing anti-spoofing elements of %d ports failed: %s",
                          len(pending), exc)


def _evict(ports: set[tuple[str, str]]) -> None:
    """One table read and one transaction per table for all of ``ports``."""
    by_table: dict[str, list[str]] = {}
    for table, port in ports:
        by_table.setdefault(table, []).append(port)
    for table, names in by_table.items():
        recorded = antispoof.members(table)
        if recorded is None:
            continue
        batch = [cmd for port in names if port in recorded.ports
                 for cmd in antispoof.evict_recorded_batch(table, recorded, port)]
        if batch:
            nft.run_batch(batch)
