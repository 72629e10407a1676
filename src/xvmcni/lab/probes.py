"""Connectivity checks of a lab: every pod to every pod and to its gateway (the
ping matrix), and full-size packets with DF set between hosts (path MTU).

Pairs run in parallel threads; each thread enters its source pod's namespace and
owns its socket (``icmp.probe``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from xvmcni.lab.icmp import DEFAULT_SIZE, ICMP_HEADER, IP6_HEADER, IP_HEADER, PingReply, probe
from xvmcni.lab.model import Lab, Pod

GATEWAY = "gateway"


@dataclass
class Matrix:
    """ICMP results: rows are source pods, columns the pods plus ``gateway``."""

    rows: list[str]
    columns: list[str]
    targets: dict[tuple[str, str], str]          # (src, column) -> address probed
    cells: dict[tuple[str, str], PingReply]
    size: int = DEFAULT_SIZE
    df: bool = False
    host_of: dict[str, str] = field(default_factory=dict)   # pod -> its host
    family: int = 4

    @property
    def total(self) -> int:
        return len(self.cells)

    @property
    def reachable(self) -> int:
        return sum(1 for reply in self.cells.values() if reply.ok)

    @property
    def ok(self) -> bool:
        return self.reachable == self.total

    def failures(self) -> list[tuple[str, str, str, PingReply]]:
        return [(src, col, self.targets[(src, col)], reply)
                for (src, col), reply in sorted(self.cells.items()) if not reply.ok]


def matrix_targets(pods: list[Pod], family: int = 4) -> dict[tuple[str, str], str]:
    """(source pod, column) -> address to probe: every other pod, and the source's
    own gateway under the column ``gateway``, in address family ``family``."""
    targets: dict[tuple[str, str], str] = {}
    for src in pods:
        mine = src.address_of(family)
        if mine is None:
            continue
        for dst in pods:
            theirs = dst.address_of(family)
            if dst is not src and theirs is not None:
                targets[(src.name, dst.name)] = theirs[0]
        if mine[1]:
            targets[(src.name, GATEWAY)] = mine[1]
    return targets


def lab_families(lab: Lab) -> list[int]:
    """The address families the lab's pods got (4 first)."""
    return sorted({f for p in lab.pods if p.address for f in p.families})


def ping_matrix(lab: Lab, *, size: int = DEFAULT_SIZE, df: bool = False,
                timeout: float = 1.0, tries: int = 3, workers: int = 32,
                family: int | None = None) -> Matrix:
    """Every pod pings every other pod and its gateway, pairs in parallel threads, in
    ``family`` (default: the first family the pods have)."""
    family = family or next(iter(lab_families(lab)), 4)
    pods = [p for p in lab.pods if p.address and p.address_of(family) is not None]
    targets = matrix_targets(pods, family)
    paths = {p.name: p.netns_path for p in pods}

    def one(key: tuple[str, str]) -> PingReply:
        return probe(paths[key[0]], targets[key], size=size, df=df, timeout=timeout,
                     tries=tries)

    keys = list(targets)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys)))) as pool:
        replies = list(pool.map(one, keys))
    columns = [p.name for p in pods] + ([GATEWAY] if any(p.gateway for p in pods) else [])
    return Matrix(rows=[p.name for p in pods], columns=columns, targets=targets,
                  cells=dict(zip(keys, replies, strict=True)), size=size, df=df,
                  host_of={p.name: p.host for p in pods}, family=family)


@dataclass
class MtuCheck:
    """Full-size packets with DF set between the first pods of every pair of hosts:
    a too-large pod MTU would pass small pings and black-hole real traffic."""

    size: int                                        # whole IP packet, bytes
    results: list[tuple[str, str, PingReply]]        # (src pod, dst pod, reply)

    @property
    def ok(self) -> bool:
        return all(reply.ok for _, _, reply in self.results)


def first_pods(lab: Lab) -> list[Pod]:
    """Each host's first pod that got an address, hosts in order."""
    found = []
    for host in lab.hosts:
        pod = next((p for p in lab.pods_of(host.name) if p.address), None)
        if pod is not None:
            found.append(pod)
    return found


def mtu_check(lab: Lab, *, timeout: float = 1.0, tries: int = 3,
              family: int | None = None) -> MtuCheck | None:
    """None when there is nothing to check: fewer than two hosts with pods, or no
    pod MTU known."""
    family = family or next(iter(lab_families(lab)), 4)
    firsts = [p for p in first_pods(lab) if p.address_of(family) is not None]
    mtu = min((p.mtu for p in firsts if p.mtu), default=0)
    if len(firsts) < 2 or not mtu:
        return None
    pairs = [(a, b) for a in firsts for b in firsts if a is not b]
    payload = mtu - (IP6_HEADER if family == 6 else IP_HEADER) - ICMP_HEADER

    def one(pair: tuple[Pod, Pod]) -> PingReply:
        target = pair[1].address_of(family)
        assert target is not None
        return probe(pair[0].netns_path, target[0], size=payload, df=True,
                     timeout=timeout, tries=tries)

    with ThreadPoolExecutor(max_workers=min(32, len(pairs))) as pool:
        replies = list(pool.map(one, pairs))
    return MtuCheck(size=mtu, results=[(a.name, b.name, r)
                                       for (a, b), r in zip(pairs, replies, strict=True)])
