"""Which pairs the ping matrix and the MTU check probe."""

from __future__ import annotations

from xvmcni.lab.model import Lab, new_host, new_pod
from xvmcni.lab.probes import GATEWAY, first_pods, matrix_targets


def lab_with_addresses() -> Lab:
    lab = Lab(name="l", plugin="", flavor="xvm",
              hosts=[new_host("l", i) for i in (1, 2, 3)],
              pods=[new_pod("l", h, j) for h in ("h1", "h2", "h3") for j in (1, 2)])
    for n, pod in enumerate(lab.pods, start=2):
        if pod.host != "h3":      # h3's pods never got an address
            pod.address, pod.gateway = f"10.244.0.{n}/16", "10.244.0.1"
    return lab


def test_matrix_probes_every_other_pod_and_the_own_gateway() -> None:
    pods = [p for p in lab_with_addresses().pods if p.address]
    targets = matrix_targets(pods)
    assert len(targets) == 4 * 3 + 4
    assert ("h1-p1", "h1-p1") not in targets
    assert targets[("h1-p1", "h2-p2")] == "10.244.0.5"
    assert targets[("h2-p1", GATEWAY)] == "10.244.0.1"


def test_mtu_check_uses_the_first_addressed_pod_of_each_host() -> None:
    lab = lab_with_addresses()
    lab.pods[0].address = ""      # h1-p1 failed: h1-p2 stands for h1
    assert [p.name for p in first_pods(lab)] == ["h1-p2", "h2-p1"]
