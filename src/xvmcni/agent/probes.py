"""Throwaway probe containers for ``xvmctl connectivity``, made by the agent on
request: a fresh network namespace attached to a network by the command flow
exactly as a runtime's ADD would (same code as the plugin), ICMP echoes sent from
inside it, and removal (DEL, then the namespace).

Asked for over the agent's unix socket, which only root can open: that
permission is the authentication. A CLI on another host reaches this agent
through a forwarded socket (``ssh -L /tmp/hB.sock:/run/xvm-cni/xvm-cnid.sock
root@hB``), never through a port of its own on the underlay.

A probe the CLI did not remove (killed with SIGKILL) is removed by the agent
after ``PROBE_TTL`` seconds; were the agent to die too, its namespace would be
named ``xvmprobe-*`` and the next reconcile releases its address once it is gone.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyroute2 import netns as pr_netns

from xvmcni import networks
from xvmcni.cni.invocation import Outcome
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.icmp import echo
from xvmcni.dataplane.netlink import get_link, rtnl
from xvmcni.dataplane.netns import entered, open_netns
from xvmcni.errors import CniError
from xvmcni.models import macvlan, macvlan_config
from xvmcni.networks import Network
from xvmcni.runtime import Runtime

log = logging.getLogger(__name__)

PREFIX = "xvmprobe-"
PROBE_TTL = 300.0
IFNAME = "eth0"
MAX_TARGETS = 256
NETNS_DIR = "/run/netns"
# Duplicate address detection takes about a second (one probe, RetransTimer 1 s).
DAD_WAIT = 5.0
IFA_F_TENTATIVE = 0x40

Cni = Callable[[dict[str, str], str], Outcome]


def probe_config(network: Network) -> dict[str, Any]:
    """The configuration the probe's ADD and DEL get. A macvlan configuration holds
    several networks: the probe names its own as a pod would (the seed's annotation),
    otherwise the ADD would land on the default network."""
    raw = dict(network.config.raw)
    if isinstance(network.settings, macvlan.SegmentSettings):
        args = dict(raw.get("args") or {})
        args["annotations"] = {**dict(args.get("annotations") or {}),
                               macvlan_config.ANNOTATION_NETWORK:
                                   network.settings.segment.name}
        raw["args"] = args
    return raw


class ProbeError(Exception):
    """A probe request that cannot be served; its text goes back to the caller."""


@dataclass
class Probe:
    ident: str
    network: Network
    created: float

    @property
    def netns(self) -> str:
        return f"{NETNS_DIR}/{self.ident}"


class Probes:
    def __init__(self, cni: Cni, known: Callable[[], list[Network]], runtime: Runtime) -> None:
        self._cni = cni
        self._known = known
        self._runtime = runtime
        self._probes: dict[str, Probe] = {}
        self._lock = threading.Lock()

    def operation(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            if op == "probe-add":
                return self.add(str(args.get("network", "")))
            if op == "probe-ping":
                return self.ping(str(args.get("probe", "")), args.get("targets"))
            if op == "probe-del":
                return self.delete(str(args.get("probe", "")))
        except ProbeError as exc:
            return {"error": str(exc)}
        return {"error": f"unknown operation {op!r}"}

    def _env(self, command: str, probe: Probe) -> dict[str, str]:
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": probe.ident,
                "CNI_NETNS": probe.netns, "CNI_IFNAME": IFNAME,
                "CNI_PATH": os.environ.get("CNI_PATH", "/opt/cni/bin")}

    def add(self, name: str) -> dict[str, Any]:
        known = {n.name: n for n in self._known()}
        network = known.get(name)
        if network is None:
            raise ProbeError(f"no xvm-cni network {name!r} here (known: "
                             f"{', '.join(sorted(known)) or 'none'})")
        self.expire()
        probe = Probe(PREFIX + secrets.token_hex(6), network, time.time())
        try:
            pr_netns.create(probe.ident)
        except OSError as exc:
            raise ProbeError(f"cannot create a network namespace: {exc}") from exc
        with self._lock:
            self._probes[probe.ident] = probe
        outcome = self._cni(self._env("ADD", probe), json.dumps(probe_config(network)))
        if outcome.exit != 0 or outcome.payload is None:
            self.delete(probe.ident)
            why = (outcome.payload or {}).get("msg", "no result")
            raise ProbeError(f"CNI ADD of the probe failed: {why}")
        result = outcome.payload
        self._settle(probe)
        try:
            with networks.open_model(network, self._runtime) as model:
                underlay = str(model.underlay_address())
        except (CniError, DataplaneError) as exc:
            underlay = ""
            log.warning("probe %s: this host's underlay address is unknown: %s",
                        probe.ident, exc)
        return {"probe": probe.ident, "netns": probe.netns, "mtu": self._mtu(probe),
                "model": network.config.model,
                "addresses": [str(ip["address"]).split("/")[0] for ip in result.get("ips", [])],
                "gateways": [str(ip["gateway"]) for ip in result.get("ips", [])
                             if ip.get("gateway")],
                "underlay": underlay, "ipMasq": bool(network.config.raw.get("ipMasq"))}

    def _settle(self, probe: Probe) -> None:
        """Wait (bounded) until the probe's IPv6 addresses leave duplicate address
        detection: a tentative address cannot be a source, so every IPv6 test would
        fail with 'cannot assign requested address' in its first second or two."""
        fd = open_netns(probe.netns)
        try:
            with rtnl(fd) as ipr:
                deadline = time.monotonic() + DAD_WAIT
                while time.monotonic() < deadline:
                    tentative = [a for a in ipr.get_addr(family=socket.AF_INET6)
                                 if int(a.get("IFA_FLAGS") or a["flags"]) & IFA_F_TENTATIVE]
                    if not tentative:
                        return
                    time.sleep(0.05)
                log.warning("probe %s: IPv6 addresses still tentative after %gs",
                            probe.ident, DAD_WAIT)
        finally:
            os.close(fd)

    def _mtu(self, probe: Probe) -> int:
        """The probe interface's MTU as the kernel has it (CNI results before 1.1
        carry none)."""
        fd = open_netns(probe.netns)
        try:
            with rtnl(fd) as ipr:
                link = get_link(ipr, IFNAME)
                return int(link.get("IFLA_MTU")) if link is not None else 1500
        finally:
            os.close(fd)

    def ping(self, ident: str, targets: Any) -> dict[str, Any]:
        with self._lock:
            probe = self._probes.get(ident)
        if probe is None:
            raise ProbeError(f"no probe {ident!r} on this host")
        if not isinstance(targets, list) or len(targets) > MAX_TARGETS \
                or not all(isinstance(t, dict) and isinstance(t.get("dst"), str)
                           for t in targets):
            raise ProbeError(f"'targets' must be a list of at most {MAX_TARGETS} objects "
                             "with a \"dst\"")

        def one(target: dict[str, Any]) -> dict[str, Any]:
            # Each thread enters the probe's namespace itself: raw sockets belong to
            # the namespace of the thread that makes them.
            try:
                fd = open_netns(probe.netns)
            except DataplaneError as exc:
                return {"ok": False, "error": exc.msg}
            try:
                with entered(fd):
                    reply = echo(str(target["dst"]), size=int(target.get("size", 56)),
                                 df=bool(target.get("df")), timeout=0.5, tries=3)
            except (OSError, ValueError) as exc:
                return {"ok": False, "error": str(exc)}
            finally:
                os.close(fd)
            return {"ok": reply.ok, "rtt_ms": reply.rtt_ms, "error": reply.error}

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe") as pool:
            return {"results": list(pool.map(one, targets))}

    def delete(self, ident: str) -> dict[str, Any]:
        with self._lock:
            probe = self._probes.pop(ident, None)
        if probe is None:
            raise ProbeError(f"no probe {ident!r} on this host")
        outcome = self._cni(self._env("DEL", probe), json.dumps(probe_config(probe.network)))
        try:
            pr_netns.remove(probe.ident)
        except OSError as exc:
            log.error("probe %s: cannot remove its namespace: %s", probe.ident, exc)
        if outcome.exit != 0:
            why = (outcome.payload or {}).get("msg", "")
            return {"deleted": probe.ident, "error": f"CNI DEL failed: {why}"}
        return {"deleted": probe.ident}

    def expire(self) -> None:
        """Remove probes older than PROBE_TTL (their CLI was killed)."""
        now = time.time()
        with self._lock:
            old = [i for i, p in self._probes.items() if now - p.created > PROBE_TTL]
        for ident in old:
            log.warning("removing probe %s: not removed by its caller within %gs", ident,
                        PROBE_TTL)
            self.delete(ident)

    def delete_all(self) -> None:
        with self._lock:
            idents = list(self._probes)
        for ident in idents:
            self.delete(ident)
