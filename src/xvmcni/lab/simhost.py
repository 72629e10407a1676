"""A simulated host: a named network namespace with ``eth0`` cabled to an underlay
switch (another namespace holding one bridge). The lab, the integration tests and
the benchmarks all build their hosts here.

The lab puts all its hosts on one switch; a test or a benchmark usually wants one
host alone on a private switch (``standalone_host``). Names are unique per process
and call (``unique_name``), so parallel runs of other engineers never collide, and
every namespace is reported to ``record`` *before* it is created, so a caller that
crashes half way still knows what to remove.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from xvmcni.lab import plumbing
from xvmcni.lab.names import netns_path

DEFAULT_ADDRESS = "172.30.0.11/24"
DEFAULT_MTU = 1500
STANDALONE_PORT = "up0"   # a standalone host's port on its private switch

Record = Callable[[str], None]
_serial = itertools.count(1)


def _ignore(_: str) -> None:
    """Default ``record``: the caller keeps no list of what was created."""


def unique_name(prefix: str) -> str:
    """A namespace name no other run (or engineer) uses: prefix, our pid in hex, a
    per-process serial (a benchmark creates thousands) and 4 random hex digits."""
    return f"{prefix}{os.getpid():x}-{next(_serial):x}{secrets.token_hex(2)}"


@dataclass
class SimHost:
    """One simulated host. ``netns`` holds ``eth0`` with ``address``; ``underlay`` is the
    switch namespace its cable ends in, on bridge port ``port``."""

    netns: str
    address: str        # "172.30.0.11/24"
    underlay: str
    port: str

    @property
    def path(self) -> str:
        return netns_path(self.netns)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread inside this host; children it starts inherit that."""
        with plumbing.inside(self.path):
            yield


def _create(netns: str, record: Record) -> str:
    record(netns)  # first: a crash between the two still gets it removed
    return plumbing.create_netns(netns)


def create_switch(netns: str, record: Record = _ignore) -> str:
    """The underlay: namespace ``netns`` with bridge ``br0`` (multicast snooping off)."""
    path = _create(netns, record)
    plumbing.setup_switch(path)
    return path


def create_host(switch: str, netns: str, port: str, address: str = DEFAULT_ADDRESS,
                mtu: int = DEFAULT_MTU, record: Record = _ignore) -> SimHost:
    """Namespace ``netns`` with ``lo`` up and ``eth0`` = ``address``, cabled to switch
    namespace ``switch`` on bridge port ``port``."""
    path = _create(netns, record)
    plumbing.connect_host(netns_path(switch), path, port, ipaddress.IPv4Interface(address),
                          mtu)
    return SimHost(netns=netns, address=address, underlay=switch, port=port)


def create_router(netns: str, legs: list[tuple[str, str, str]],
                  record: Record = _ignore) -> str:
    """A router namespace with one leg per ``(switch netns, port, address)``
    (``eth0``, ``eth1``, ...) and IPv4 forwarding on. Linux does not route multicast,
    so VXLAN flood-and-learn does not cross it: a lab's stand-in for hosts in
    different racks or cloud subnets."""
    path = _create(netns, record)
    for i, (switch, port, address) in enumerate(legs):
        plumbing.connect_host(netns_path(switch), path, port, ipaddress.IPv4Interface(address),
                              ifname=f"eth{i}")
    plumbing.enable_forwarding(path)
    return path


def standalone_host(prefix: str, address: str = DEFAULT_ADDRESS, mtu: int = DEFAULT_MTU,
                    record: Record = _ignore) -> SimHost:
    """A host alone on a private switch, both named ``unique_name(prefix...)``.

    On failure, whatever this call created is removed again before the error goes up.
    """
    made: list[str] = []

    def track(netns: str) -> None:
        made.append(netns)
        record(netns)

    try:
        switch = unique_name(f"{prefix}u")
        create_switch(switch, track)
        return create_host(switch, unique_name(prefix), STANDALONE_PORT, address, mtu, track)
    except BaseException:
        remove_all(reversed(made))
        raise


def remove_all(namespaces: Iterator[str] | list[str]) -> list[str]:
    """Remove the named namespaces in the given order; the names that failed."""
    failed = []
    for netns in namespaces:
        try:
            plumbing.remove_netns(netns)
        except plumbing.NetnsError:
            failed.append(netns)  # the caller lists leftovers; the rest still goes
    return failed


def destroy(host: SimHost, *, underlay: bool = True) -> list[str]:
    """Remove the host, then (for a standalone host) its switch; the names that failed."""
    return remove_all([host.netns, *([host.underlay] if underlay else [])])
