"""What the checks read from this host, read once and only read: sysctls, the
nftables ruleset, kernel modules, IGMP memberships, and the node agent's status.

Run in the host's network namespace (``nsenter --net=...`` for a lab host):
/proc/sys/net and /proc/net show the namespace of the process reading them.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvmcni.cli.status import AgentUnavailable, agent_request
from xvmcni.dataplane import nft
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.networks import Network

PROC_SYS = Path("/proc/sys")


@dataclass
class Options:
    """Where this host keeps what the checks look at (the agent's defaults)."""

    socket: str
    conf_dirs: list[Path]
    data_dirs: list[Path]
    bin_dirs: list[Path]
    timeout: float = 5.0


@dataclass
class Host:
    """Facts shared by every check of one run. ``ipr``: a netlink socket in the
    host's namespace (only ever asked, never told)."""

    options: Options
    ipr: Any
    networks: list[Network]
    _agent: dict[str, Any] | AgentUnavailable | None = None
    _ruleset: list[dict[str, Any]] | DataplaneError | None = None

    def agent(self) -> dict[str, Any] | AgentUnavailable:
        """The agent's ``status`` answer, or why there is none (asked once)."""
        if self._agent is None:
            try:
                self._agent = agent_request(self.options.socket, "status",
                                            timeout=self.options.timeout)
            except AgentUnavailable as exc:
                self._agent = exc
        return self._agent

    def ruleset(self) -> list[dict[str, Any]]:
        """``nft -j list ruleset`` (iptables-nft rules included); raises
        DataplaneError when nftables cannot be read."""
        if self._ruleset is None:
            try:
                self._ruleset = nft.query("list ruleset")
            except DataplaneError as exc:
                self._ruleset = exc
        if isinstance(self._ruleset, DataplaneError):
            raise self._ruleset
        return self._ruleset


def sysctl(key: str) -> str | None:
    """A sysctl's value, None when the kernel has no such key."""
    try:
        return (PROC_SYS / key.replace(".", "/")).read_text().strip()
    except FileNotFoundError:
        return None


def rp_filter(ifname: str) -> int:
    """The reverse-path filter in effect on ``ifname``: the kernel uses the larger of
    ``all`` and the interface's own value (0 off, 1 strict, 2 loose)."""
    values = [sysctl(f"net.ipv4.conf.{k}.rp_filter") for k in ("all", ifname)]
    return max(int(v) for v in values if v is not None and v.isdigit()) \
        if any(v is not None for v in values) else 0


def module_available(name: str) -> bool | None:
    """Loaded, built in, or installed as a module the kernel loads on first use; None
    when this kernel has no module tree to tell from (modules built in: a built-in
    feature without parameters has no /sys/module entry)."""
    if Path("/sys/module", name).exists():
        return True
    base = Path("/lib/modules", os.uname().release)
    if not base.is_dir():
        return None
    for listing in ("modules.builtin", "modules.dep"):
        try:
            text = (base / listing).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            module = line.split(":", 1)[0].rsplit("/", 1)[-1]
            if module.split(".ko")[0].replace("-", "_") == name:
                return True
    return False


def igmp_groups(ifname: str) -> set[ipaddress.IPv4Address]:
    """IPv4 multicast groups joined on ``ifname`` (/proc/net/igmp, this namespace)."""
    groups: set[ipaddress.IPv4Address] = set()
    current = ""
    try:
        lines = Path("/proc/net/igmp").read_text().splitlines()[1:]
    except OSError:
        return groups
    for line in lines:
        if not line.startswith(("\t", " ")):
            parts = line.split()
            current = parts[1].rstrip(":") if len(parts) > 1 else ""
            continue
        parts = line.split()
        if current == ifname and parts:
            # Little-endian hex, as the kernel prints a __be32 with %08X on x86.
            raw = int(parts[0], 16).to_bytes(4, "little")
            groups.add(ipaddress.IPv4Address(raw))
    return groups
