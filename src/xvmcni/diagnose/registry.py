"""The checks doctor runs, in the order they are shown. Host checks run once,
network checks once per network. A check is a function returning findings; one
that raises is reported as "could not check" and never hides the others."""

from __future__ import annotations

import logging
from collections.abc import Callable

from xvmcni.dataplane.errors import DataplaneError
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.checks import (
    agent,
    controlplane,
    firewall,
    hostif,
    ipam,
    kernel,
    macvlan,
    multicast,
    objects,
    peers,
    plugin,
)
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import Host
from xvmcni.diagnose.target import Target
from xvmcni.errors import CniError

log = logging.getLogger(__name__)

HostCheck = Callable[[Host], list[Finding]]
NetworkCheck = Callable[[Target], list[Finding]]

HOST_CHECKS: list[tuple[str, HostCheck]] = [
    ("agent", agent.run),
    ("plugin", plugin.run),
    ("kernel", kernel.run_host),
    ("objects", objects.run_host),
    ("macvlan", macvlan.run_host),
]
NETWORK_CHECKS: list[tuple[str, NetworkCheck]] = [
    ("hostif", hostif.run),
    ("kernel", kernel.run),
    ("firewall", firewall.run),
    ("objects", objects.run),
    ("macvlan", macvlan.run),
    ("controlplane", controlplane.run),
    ("peers", peers.run),
    ("multicast", multicast.run),
    ("ipam", ipam.run),
]


def guarded(name: str, run: Callable[[], list[Finding]], network: str = "") -> list[Finding]:
    try:
        return run()
    except (CniError, DataplaneError, OSError) as exc:
        return [fd.error(name, network or "host", f"could not check: {exc}", network)]
    except Exception as exc:  # a bug in one check must not hide the others (logged)
        log.exception("check %s failed", name)
        return [fd.error(name, network or "host", f"internal error: {exc!r}", network)]
