"""Room in the kernel's neighbour tables for a lab of many hosts.

The ARP and NDP tables are one per machine, shared by every network namespace, and
their size limits exist only as sysctls of the initial namespace
(``net.ipv{4,6}.neigh.default.gc_thresh3``). A real host holds one underlay entry per
peer it talks to; a lab of N simulated hosts on one machine holds all of theirs at
once: about N x N when every host's pods talk to every other host. Past gc_thresh3
(1024 by default: ~32 meshed hosts) the kernel refuses new entries ("neighbor table
overflow!" in dmesg) and a VXLAN device counts each packet whose outer header it could
not resolve as ``tx_dropped``. Measured in the Kubernetes convergence bench at 50
hosts: rounds of 3-19 s while every route, neighbour and FDB entry of ours was in
place; the etcd bench escaped only by its timing.

So the lab raises the limit to what it needs (never lowers it), remembers the value it
found in one machine-wide file, and the last lab down puts that value back.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xvmcni.lab.names import LAB_ROOT
from xvmcni.lab.status import known_labs

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")
LIMITS = ("net/ipv4/neigh/default/gc_thresh3", "net/ipv6/neigh/default/gc_thresh3")
RECORD = LAB_ROOT.parent / "lab-neigh-limits.json"   # outside LAB_ROOT: not a lab
# Entries per host beyond one per other host: its pods on the bridge, the router, the
# control plane, and room for addresses that change during a run.
PER_HOST_EXTRA = 16

Progress = Callable[[str], None]


def needed(hosts: int, pods_per_host: int) -> int:
    """Entries a fully meshed lab of ``hosts`` can hold at once (both families count
    in their own table, so this is per table)."""
    return hosts * (hosts + pods_per_host + PER_HOST_EXTRA)


@contextmanager
def _locked() -> Iterator[dict[str, dict[str, int]]]:
    """The record of raised limits, read and written under an exclusive lock (two
    labs may come up at once)."""
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    lock = RECORD.with_suffix(".lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            record: dict[str, dict[str, int]] = json.loads(RECORD.read_text())
        except FileNotFoundError:
            record = {}
        except ValueError as exc:
            # A damaged record loses only the value to restore; say so and go on.
            log.warning("ignoring damaged %s: %s", RECORD, exc)
            record = {}
        yield record
        if record:
            tmp = RECORD.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            tmp.replace(RECORD)
        else:
            RECORD.unlink(missing_ok=True)


def _read(key: str) -> int | None:
    try:
        return int((PROC_SYS / key).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None   # no IPv6, or not the initial namespace: nothing to size


def ensure_room(hosts: int, pods_per_host: int, progress: Progress) -> None:
    """Raise each table's gc_thresh3 to ``needed()`` when it is lower."""
    want = needed(hosts, pods_per_host)
    with _locked() as record:
        for key in LIMITS:
            have = _read(key)
            if have is None or have >= want:
                continue
            (PROC_SYS / key).write_text(str(want))
            entry = record.setdefault(key, {"found": have})
            entry["set"] = want
            progress(f"kernel  {key.replace('/', '.')} {have} -> {want}: the neighbour "
                     f"table is shared by all {hosts} hosts of the lab")


def restore_if_last(progress: Progress) -> None:
    """Put back the values the labs found, unless a lab (its directory or one of its
    namespaces) is still there or someone changed a value since we set it."""
    if known_labs():
        return
    with _locked() as record:
        for key, entry in list(record.items()):
            if _read(key) == entry.get("set") and "found" in entry:
                (PROC_SYS / key).write_text(str(entry["found"]))
                progress(f"kernel  {key.replace('/', '.')} back to {entry['found']}")
            del record[key]
