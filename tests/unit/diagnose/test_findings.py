"""Doctor's exit status from its findings, and the hop connectivity blames."""

from __future__ import annotations

from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.connectivity import Cell, HostProbe, Result, explain


def test_exit_status() -> None:
    ok = fd.ok("a", "x", "fine")
    assert fd.exit_status([ok]) == fd.EXIT_OK
    assert fd.exit_status([ok, fd.warn("a", "y", "left over", "rm it")]) == fd.EXIT_PROBLEM
    assert fd.exit_status([ok, fd.error("a", "z", "cannot read")]) == fd.EXIT_CANNOT_CHECK
    # A problem found is the more useful answer than a check that could not run.
    assert fd.exit_status([fd.error("a", "z", "?"), fd.fail("b", "y", "bad", "fix")]) == \
        fd.EXIT_PROBLEM


def _result(*cells: Cell) -> Result:
    return Result("net", [HostProbe("h1", "s1", model="routed"),
                          HostProbe("h2", "s2", model="routed")], list(cells))


def test_the_failing_hop_is_named() -> None:
    mtu = Cell("h1", "mtu", "h2", "10.0.2.2", False, "no reply")
    pod_ok = Cell("h1", "pod", "h2", "10.0.2.2", True)
    assert "path MTU" in explain(_result(pod_ok, mtu), mtu)
    pod = Cell("h1", "pod", "h2", "10.0.2.2", False)
    under_ok = Cell("h1", "underlay", "h2", "172.30.0.12", True)
    assert "overlay" in explain(_result(pod, under_ok), pod)
    under = Cell("h1", "underlay", "h2", "172.30.0.12", False)
    assert "not reachable" in explain(_result(pod, under), pod)
    gateway = Cell("h1", "gateway", "h1", "10.0.1.1", False)
    assert "own gateway" in explain(_result(gateway), gateway)
