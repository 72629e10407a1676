"""Reachability among many pods: all pairs while that stays small, else a sample
that still makes every pod reach a pod on every host (``sample_pairs``), probed
in parallel threads (``probe_pairs``; each thread enters its source pod).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from xvmcni.lab.audit import LivePod
from xvmcni.lab.icmp import PingReply, probe

ALL_PAIRS_MAX = 30      # up to this many pods: every ordered pair


@dataclass(frozen=True)
class Pair:
    src: LivePod
    dst: LivePod


@dataclass(frozen=True)
class PairResult:
    src: str
    dst: str
    dst_ip: str
    reply: PingReply

    @property
    def cross_host(self) -> bool:
        return self.src.split("-")[0] != self.dst.split("-")[0]


def sample_pairs(pods: Sequence[LivePod], rng: random.Random,
                 all_pairs_max: int = ALL_PAIRS_MAX) -> list[Pair]:
    """Every ordered pair when there are at most ``all_pairs_max`` pods; otherwise,
    for each pod, one random other pod on every host (its own host included)."""
    if len(pods) <= all_pairs_max:
        return [Pair(a, b) for a in pods for b in pods if a is not b]
    by_host: dict[str, list[LivePod]] = {}
    for pod in pods:
        by_host.setdefault(pod.host, []).append(pod)
    pairs = []
    for src in pods:
        for host in sorted(by_host):
            others = [p for p in by_host[host] if p is not src]
            if others:
                pairs.append(Pair(src, rng.choice(others)))
    return pairs


def probe_pairs(pairs: Sequence[Pair], *, timeout: float = 1.0, tries: int = 3,
                workers: int = 16) -> list[PairResult]:
    def one(pair: Pair) -> PairResult:
        reply = probe(pair.src.netns_path, pair.dst.ip, timeout=timeout, tries=tries)
        return PairResult(pair.src.name, pair.dst.name, pair.dst.ip, reply)

    if not pairs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pairs)))) as pool:
        return list(pool.map(one, pairs))
