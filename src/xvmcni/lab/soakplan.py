"""The soak's plan: a seeded, reproducible list of CNI operations on a lab's hosts.

The plan is made before anything runs, by simulating the expected state one
operation after another (which pods live on which host, which were deleted), so
the same seed always gives the same operations on the same pods, whatever the
concurrency later does to their timing. The runner keeps the order per pod (a
runtime never runs two operations on one container at once), so every pod sees
exactly the sequence planned for it.

Pure: no kernel, no processes (unit-tested on its own).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

# Operation kinds.
ADD = "ADD"                  # a new pod in a fresh netns
READD = "READD"              # ADD again of a live pod: must answer the same address
CHECK = "CHECK"              # CHECK a live pod with its prevResult (cniVersion 1.0.0)
DEL = "DEL"                  # DEL a live pod (see DEL_VARIANTS)
CHECK_GONE = "CHECK_GONE"    # CHECK a deleted pod: must fail with code 3
ADD_NO_NETNS = "ADD_NO_NETNS"  # ADD into a netns that does not exist: code 4, then DEL
KILL = "KILL"                # SIGKILL a host's agent and start it again (not an op)
KINDS = (ADD, READD, CHECK, DEL, CHECK_GONE, ADD_NO_NETNS)

# How a DEL is done.
DEL_PLAIN = "plain"          # DEL, then the netns is removed
DEL_TWICE = "twice"          # DEL, DEL again (must succeed), then the netns is removed
DEL_NETNS_GONE = "netns-gone"  # the netns is removed first, then DEL names its old path
DEL_NO_NETNS = "no-netns"    # DEL with an empty CNI_NETNS, then the netns is removed
DEL_VARIANTS = ((DEL_PLAIN, 50), (DEL_TWICE, 20), (DEL_NETNS_GONE, 15), (DEL_NO_NETNS, 15))

# The CNI error codes the meant-to-fail operations expect.
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4


@dataclass(frozen=True)
class Op:
    """One planned step. ``pod`` names the pod (``h2-p7``); a KILL has none."""

    index: int
    kind: str
    host: str
    pod: str = ""
    variant: str = ""

    @property
    def expected_code(self) -> int | None:
        """The CNI error code this operation must fail with; None: it must succeed."""
        if self.kind == CHECK_GONE:
            return UNKNOWN_CONTAINER
        if self.kind == ADD_NO_NETNS:
            return INVALID_ENV
        return None

    def label(self) -> str:
        text = f"#{self.index} {self.kind} {self.pod or self.host}"
        return f"{text} ({self.variant})" if self.variant else text


@dataclass
class PlanState:
    """The expected state while planning: live and deleted pods per host."""

    live: dict[str, list[str]] = field(default_factory=dict)
    deleted: dict[str, list[str]] = field(default_factory=dict)
    next_index: dict[str, int] = field(default_factory=dict)

    def new_pod(self, host: str) -> str:
        index = self.next_index[host]
        self.next_index[host] = index + 1
        return f"{host}-p{index}"


@dataclass(frozen=True)
class PlanSettings:
    ops: int
    hosts: Sequence[str]                 # host names, e.g. ("h1", "h2", "h3")
    initial: dict[str, list[str]]        # pods that already live per host (lab up's)
    kill_every: int = 100                # 0: never
    seed: int = 1
    target_per_host: int = 8             # ADD wins below this many live pods per host


def _weights(state: PlanState, host: str, target: int) -> list[tuple[str, int]]:
    live = len(state.live[host])
    if live == 0:
        return [(ADD, 48), (ADD_NO_NETNS, 1), *([(CHECK_GONE, 1)] if state.deleted[host] else [])]
    add = 40 if live < target else 25 if live < 2 * target else 5
    weights = [(ADD, add), (DEL, 30), (CHECK, 20), (READD, 5), (ADD_NO_NETNS, 2)]
    if state.deleted[host]:
        weights.append((CHECK_GONE, 3))
    return weights


def _pick(rng: random.Random, weighted: Sequence[tuple[str, int]]) -> str:
    names = [name for name, _ in weighted]
    return rng.choices(names, weights=[w for _, w in weighted])[0]


def make_plan(settings: PlanSettings) -> list[Op]:
    """``settings.ops`` operations, plus a KILL after every ``kill_every`` of them
    (never after the last). The first operations re-ADD the initial pods: their
    results become the prevResult of later CHECKs."""
    rng = random.Random(settings.seed)  # noqa: S311 - reproducible, not secret
    hosts = list(settings.hosts)
    state = PlanState(
        live={h: list(settings.initial.get(h, [])) for h in hosts},
        deleted={h: [] for h in hosts},
        next_index={h: 1 + len(settings.initial.get(h, [])) for h in hosts})
    plan: list[Op] = []
    done = 0

    def emit(kind: str, host: str, pod: str = "", variant: str = "") -> None:
        plan.append(Op(len(plan), kind, host, pod, variant))

    for host in hosts:
        for pod in state.live[host]:
            if done < settings.ops:
                emit(READD, host, pod)
                done += 1
    while done < settings.ops:
        host = rng.choice(hosts)
        kind = _pick(rng, _weights(state, host, settings.target_per_host))
        if kind == ADD:
            pod = state.new_pod(host)
            state.live[host].append(pod)
            emit(ADD, host, pod)
        elif kind == ADD_NO_NETNS:
            emit(ADD_NO_NETNS, host, state.new_pod(host))
        elif kind == CHECK_GONE:
            emit(CHECK_GONE, host, rng.choice(state.deleted[host]))
        else:
            pod = rng.choice(state.live[host])
            variant = _pick(rng, DEL_VARIANTS) if kind == DEL else ""
            if kind == DEL:
                state.live[host].remove(pod)
                state.deleted[host].append(pod)
            emit(kind, host, pod, variant)
        done += 1
        if settings.kill_every and done % settings.kill_every == 0 and done < settings.ops:
            emit(KILL, rng.choice(hosts))
    return plan


def live_after(plan: Sequence[Op], initial: dict[str, list[str]]) -> dict[str, set[str]]:
    """Which pods the plan leaves alive on each host (as the runner must find them)."""
    live = {host: set(pods) for host, pods in initial.items()}
    for op in plan:
        if op.kind == ADD:
            live.setdefault(op.host, set()).add(op.pod)
        elif op.kind == DEL:
            live[op.host].discard(op.pod)
    return live
