"""The soak's plan: reproducible, and every operation makes sense in the state the
operations before it leave (a runtime never CHECKs a pod it deleted by mistake)."""

from __future__ import annotations

from collections import Counter

import pytest

from xvmcni.lab import soakplan as sp

HOSTS = ("h1", "h2", "h3")
INITIAL = {"h1": ["h1-p1"], "h2": ["h2-p1"], "h3": ["h3-p1"]}


def plan(ops: int = 1000, seed: int = 1, kill_every: int = 100) -> list[sp.Op]:
    return sp.make_plan(sp.PlanSettings(ops=ops, hosts=HOSTS, initial=INITIAL,
                                        kill_every=kill_every, seed=seed))


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    assert plan(seed=7) == plan(seed=7)
    assert plan(seed=7) != plan(seed=8)


@pytest.mark.parametrize(("ops", "kill_every", "kills"),
                         [(1000, 100, 9), (150, 60, 2), (150, 0, 0), (100, 100, 0)])
def test_op_and_kill_counts(ops: int, kill_every: int, kills: int) -> None:
    steps = plan(ops=ops, kill_every=kill_every)
    assert sum(1 for op in steps if op.kind != sp.KILL) == ops
    assert sum(1 for op in steps if op.kind == sp.KILL) == kills
    assert steps[-1].kind != sp.KILL
    assert [op.index for op in steps] == list(range(len(steps)))


def test_initial_pods_are_added_again_first() -> None:
    first = plan()[:3]
    assert [(op.kind, op.pod) for op in first] == [(sp.READD, "h1-p1"), (sp.READD, "h2-p1"),
                                                   (sp.READD, "h3-p1")]


@pytest.mark.parametrize("seed", [1, 2, 3, 42])
def test_every_operation_fits_the_state_before_it(seed: int) -> None:
    live = {p for pods in INITIAL.values() for p in pods}
    deleted: set[str] = set()
    seen = set(live)
    for op in plan(seed=seed):
        if op.kind == sp.KILL:
            assert op.host in HOSTS and not op.pod
            continue
        assert op.pod.startswith(op.host + "-p")
        if op.kind in (sp.ADD, sp.ADD_NO_NETNS):
            assert op.pod not in seen, f"{op.label()}: pod name used before"
            seen.add(op.pod)
            if op.kind == sp.ADD:
                live.add(op.pod)
        elif op.kind == sp.CHECK_GONE:
            assert op.pod in deleted and op.pod not in live
        else:
            assert op.pod in live, f"{op.label()}: pod is not live"
            if op.kind == sp.DEL:
                live.remove(op.pod)
                deleted.add(op.pod)
    expected = sp.live_after(plan(seed=seed), INITIAL)
    assert set().union(*expected.values()) == live


def test_a_long_plan_has_every_kind_and_every_del_variant() -> None:
    steps = plan()
    kinds = Counter(op.kind for op in steps)
    assert set(sp.KINDS) <= set(kinds)
    variants = {op.variant for op in steps if op.kind == sp.DEL}
    assert variants == {name for name, _ in sp.DEL_VARIANTS}
    assert {op.host for op in steps} == set(HOSTS)


def test_live_pods_stay_bounded() -> None:
    live = {p for pods in INITIAL.values() for p in pods}
    peak = 0
    for op in plan(ops=3000):
        if op.kind == sp.ADD:
            live.add(op.pod)
        elif op.kind == sp.DEL:
            live.discard(op.pod)
        peak = max(peak, len(live))
    # target 8 per host: the plan hovers around it, far from the lab's limits
    assert 0 < peak <= 3 * 3 * 8


def test_expected_codes() -> None:
    assert sp.Op(0, sp.CHECK_GONE, "h1", "h1-p1").expected_code == sp.UNKNOWN_CONTAINER
    assert sp.Op(0, sp.ADD_NO_NETNS, "h1", "h1-p1").expected_code == sp.INVALID_ENV
    assert sp.Op(0, sp.DEL, "h1", "h1-p1", sp.DEL_TWICE).expected_code is None
