"""``xvmctl connectivity``: a throwaway probe container per host, made by each
host's agent (``agent/probes.py``), and ICMP from every probe to its gateway, to
every other probe (small, and full-size with DF: the path MTU), and to every other
host's underlay address (the egress path, masqueraded where ``ipMasq`` is set).
Every failure is explained by the hop that fails. Probes are always deleted, even
on Ctrl-C.

Agents are reached by their unix sockets: this host's, the lab's hosts', or other
hosts' forwarded over SSH (``ssh -L /tmp/hB.sock:/run/xvm-cni/xvm-cnid.sock``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from xvmcni.cli.status import AgentUnavailable, Style, agent_request

# IP + ICMP header bytes per family: a full-size echo is the MTU minus these.
ICMP_HEADERS = {4: 20 + 8, 6: 40 + 8}
# The suffix of a cell's kind per family: "pod" (IPv4), "pod6" (IPv6).
SUFFIX = {4: "", 6: "6"}
# Models whose pods can reach other hosts' own addresses only when masqueraded: in
# l2 the other host answers from its bridge, whose MAC is the anycast gateway's, and
# the gateway filter keeps that MAC off the VXLAN by design. Others: reachable.
UNDERLAY_NEEDS_MASQ = {"l2"}
PROBE_TIMEOUT = 60.0
Progress = Callable[[str], None]


class ConnectivityError(Exception):
    pass


@dataclass
class HostProbe:
    host: str
    socket: str
    ident: str = ""
    # Per family (4, 6): the probe's address and its gateway; a dual-stack network
    # has both, and every test runs once per family both ends have.
    addresses: dict[int, str] = field(default_factory=dict)
    gateways: dict[int, str] = field(default_factory=dict)
    mtu: int = 1500
    underlay: str = ""
    ip_masq: bool = False
    model: str = ""

    @property
    def reaches_underlay(self) -> bool:
        return self.ip_masq or self.model not in UNDERLAY_NEEDS_MASQ

    @property
    def address(self) -> str:
        """The first address (IPv4 when there is one): what progress lines show."""
        return next(iter(self.addresses.values()), "")

    @property
    def gateway(self) -> str:
        return next(iter(self.gateways.values()), "")


@dataclass
class Cell:
    src: str
    kind: str          # gateway | pod | mtu | underlay; "6" appended for IPv6
    dst: str           # the destination host (the source's own for gateway)
    address: str
    ok: bool
    error: str = ""


@dataclass
class Result:
    network: str
    probes: list[HostProbe]
    cells: list[Cell] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cells)

    def cell(self, src: str, kind: str, dst: str) -> Cell | None:
        return next((c for c in self.cells if (c.src, c.kind, c.dst) == (src, kind, dst)),
                    None)


def choose_network(agents: list[tuple[str, str]], wanted: str | None) -> str:
    if wanted:
        return wanted
    host, sock = agents[0]
    reply = agent_request(sock, "status", timeout=10.0)
    names = sorted({str(n.get("name")) for n in reply.get("networks") or []})
    if len(names) != 1:
        raise ConnectivityError(f"{host}'s agent knows {len(names)} networks "
                                f"({', '.join(names) or 'none'}): name one with --network")
    return names[0]


def _add(probe: HostProbe, network: str) -> None:
    reply = agent_request(probe.socket, "probe-add", timeout=PROBE_TIMEOUT,
                          args={"network": network})
    probe.ident = str(reply["probe"])
    probe.addresses = _by_family(reply.get("addresses"))
    probe.gateways = _by_family(reply.get("gateways"))
    probe.mtu = int(reply.get("mtu", 1500))
    probe.underlay = str(reply.get("underlay", ""))
    probe.ip_masq = bool(reply.get("ipMasq"))
    probe.model = str(reply.get("model", ""))


def _by_family(texts: Any) -> dict[int, str]:
    """The first address of each family in ``texts``, IPv4 first."""
    found: dict[int, str] = {}
    for text in texts or []:
        try:
            version = ipaddress.ip_address(str(text)).version
        except ValueError:
            continue
        found.setdefault(version, str(text))
    return dict(sorted(found.items()))


def _delete(probe: HostProbe, progress: Progress) -> None:
    try:
        reply = agent_request(probe.socket, "probe-del", timeout=PROBE_TIMEOUT,
                              args={"probe": probe.ident})
    except AgentUnavailable as exc:
        progress(f"{probe.host}: could not delete probe {probe.ident}: {exc} (the agent "
                 "removes it after 5 minutes)")
        return
    if reply.get("error"):
        progress(f"{probe.host}: probe {probe.ident}: {reply['error']}")


def _targets(src: HostProbe, probes: list[HostProbe]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, destination host, target) for every test from ``src``."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for version, gateway in src.gateways.items():
        found.append(("gateway" + SUFFIX[version], src.host, {"dst": gateway}))
    for dst in probes:
        if dst is src:
            continue
        for version, address in dst.addresses.items():
            if version not in src.addresses:
                continue  # no source address of that family
            six = SUFFIX[version]
            found.append(("pod" + six, dst.host, {"dst": address}))
            size = min(src.mtu, dst.mtu) - ICMP_HEADERS[version]
            found.append(("mtu" + six, dst.host, {"dst": address, "size": size, "df": True}))
        under = _version(dst.underlay)
        if under in src.addresses and src.reaches_underlay:
            found.append(("underlay" + SUFFIX[under], dst.host, {"dst": dst.underlay}))
    return found


def _version(text: str) -> int:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


def base_kind(kind: str) -> tuple[str, str]:
    """("pod", "6") for "pod6": the kind and its family's suffix."""
    return (kind[:-1], "6") if kind.endswith("6") else (kind, "")


def _ping(src: HostProbe, planned: list[tuple[str, str, dict[str, Any]]]) -> list[Cell]:
    if not planned:
        return []
    try:
        reply = agent_request(src.socket, "probe-ping", timeout=PROBE_TIMEOUT,
                              args={"probe": src.ident, "targets": [t for _, _, t in planned]})
        results = list(reply.get("results") or [])
        if len(results) != len(planned):
            raise AgentUnavailable(str(reply.get("error") or "answer without results"))
    except AgentUnavailable as exc:
        return [Cell(src.host, kind, dst, str(t["dst"]), False, f"not tested: {exc}")
                for kind, dst, t in planned]
    return [Cell(src.host, kind, dst, str(t["dst"]), bool(r.get("ok")), str(r.get("error") or ""))
            for (kind, dst, t), r in zip(planned, results, strict=True)]


def _test_from(src: HostProbe, probes: list[HostProbe]) -> list[Cell]:
    """Small packets first, full-size after: by then neighbours and FDB entries are
    learned, so the full-size test measures the path MTU, not the first lookup."""
    planned = _targets(src, probes)
    return (_ping(src, [p for p in planned if base_kind(p[0])[0] != "mtu"])
            + _ping(src, [p for p in planned if base_kind(p[0])[0] == "mtu"]))


def run(agents: list[tuple[str, str]], network: str | None, progress: Progress) -> Result:
    """Probe, test, and always delete the probes (KeyboardInterrupt included)."""
    name = choose_network(agents, network)
    probes = [HostProbe(host, sock) for host, sock in agents]
    made: list[HostProbe] = []
    try:
        for probe in probes:
            _add(probe, name)
            made.append(probe)
            progress(f"{probe.host}: probe {probe.ident} attached, {probe.address} "
                     f"(gateway {probe.gateway}, MTU {probe.mtu})")
        result = Result(name, probes)
        with ThreadPoolExecutor(max_workers=max(1, len(probes))) as pool:
            for cells in pool.map(lambda p: _test_from(p, probes), probes):
                result.cells += cells
        return result
    finally:
        for probe in made:
            _delete(probe, progress)
        if made:
            progress(f"deleted {len(made)} probes")


def explain(result: Result, cell: Cell) -> str:
    """The failing hop, in words."""
    kind, six = base_kind(cell.kind)
    if kind == "gateway":
        return (f"{cell.src}: the probe cannot reach its own gateway {cell.address}: the "
                f"bridge or veth on {cell.src} (run xvmctl doctor on {cell.src})")
    if kind == "underlay":
        what = "egress (masqueraded)" if result.probes[0].ip_masq else "the host address"
        return (f"{cell.src} -> {cell.dst}: {what} {cell.address} does not answer the "
                f"probe: forwarding or firewall on {cell.src}, or {cell.dst}'s route back")
    pod = result.cell(cell.src, "pod" + six, cell.dst)
    under = result.cell(cell.src, "underlay" + six, cell.dst)
    if kind == "mtu":
        if pod is not None and pod.ok:
            return (f"{cell.src} -> {cell.dst}: path MTU: small packets pass, full-size "
                    f"ones with DF set do not ({cell.error or 'no reply'}): an underlay "
                    "MTU on the way is smaller than hostInterface's (run xvmctl doctor "
                    "on both)")
        return f"{cell.src} -> {cell.dst}: full-size packets fail as the small ones do"
    if under is None or under.ok:
        works = "while the underlay works" if under is not None else "(underlay not tested)"
        return (f"{cell.src} -> {cell.dst}: the overlay between the hosts (VXLAN, "
                f"routes, FDB, firewall, multicast) {works}: run xvmctl doctor on "
                f"{cell.src} and {cell.dst}")
    return (f"{cell.src} -> {cell.dst}: {cell.dst} is not reachable from {cell.src}'s "
            f"probe even on its underlay address: the underlay, or forwarding on {cell.src}")


def render(result: Result, style: Style) -> str:
    lines = [style.bold(f"Connectivity of network {result.network}") + "  (row = probe on "
             "that host; gw its gateway; <host>:pod that host's probe, :mtu full-size with "
             "DF, :host its underlay address)"]
    families = sorted({v for p in result.probes for v in p.addresses}) or [4]
    for version in families:
        if len(families) > 1:
            lines += ["", style.bold(f"  IPv{version}")]
        lines += _matrix(result, style, SUFFIX[version])
    if not all(p.reaches_underlay for p in result.probes):
        lines.append(style.dim("  - not tested: in l2 without ipMasq, pods cannot reach "
                               "other hosts' own addresses (by design: the anycast "
                               "gateway's MAC stays off the VXLAN)"))
    good = sum(1 for c in result.cells if c.ok)
    summary = f"{good}/{len(result.cells)} tests passed"
    lines += ["", "  " + (style.green(summary) if result.ok else style.red(summary))]
    for cell in result.cells:
        if not cell.ok:
            lines.append(f"  {style.bad} {explain(result, cell)}")
    return "\n".join(lines)


def _matrix(result: Result, style: Style, six: str) -> list[str]:
    """One family's matrix (``six``: that family's kind suffix)."""
    hosts = [p.host for p in result.probes]
    columns = ["gw"] + [f"{h}:{k}" for h in hosts for k in ("pod", "mtu", "host")]
    kinds = {"pod": "pod", "mtu": "mtu", "host": "underlay"}
    width = max(len(c) for c in columns)
    first = max(len(h) for h in [*hosts, "from"])
    lines = ["", "  " + "".ljust(first) + "  " + "  ".join(c.center(width) for c in columns)]
    for src in hosts:
        cells = []
        for column in columns:
            if column == "gw":
                found = result.cell(src, "gateway" + six, src)
            else:
                dst, kind = column.split(":")
                found = None if dst == src else result.cell(src, kinds[kind] + six, dst)
            if found is None:
                blank = style.self_ if column == "gw" or column.startswith(f"{src}:") \
                    else "-"
                cells.append(style.dim(blank.center(width)))
            else:
                mark = style.ok if found.ok else style.bad
                paint = style.green if found.ok else style.red
                cells.append(paint(mark.center(width)))
        lines.append("  " + src.ljust(first) + "  " + "  ".join(cells))
    return lines
