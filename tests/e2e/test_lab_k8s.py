"""``xvmctl lab up --model routed --control kubernetes``: a real kube-apiserver and
controller-manager inside the lab, a Node per host, pods reaching each other; ``lab
down`` leaves no namespace and no control-plane process behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.k8s import skip_reason
from xvmcni import lab as labmod
from xvmcni.lab import k8s, probes


def test_kubernetes_lab_up_reach_and_down(make_lab_name: Callable[[str], str]) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    name = make_lab_name("k")
    try:
        lab = labmod.lab_up(name, hosts=3, pods=1, model="routed", control="kubernetes")
        assert lab.control == "kubernetes"
        matrix = probes.ping_matrix(lab)
        assert matrix.ok, matrix
        addresses = {p.host: p.address for p in lab.pods}
        # Every host's pod lies in the pod CIDR the controller-manager gave its Node.
        nodes = k8s._request(lab, "GET", "/api/v1/nodes")["items"]
        cidrs = {n["metadata"]["name"]: n["spec"]["podCIDRs"][0] for n in nodes}
        for host, address in addresses.items():
            assert address.rsplit(".", 1)[0] == cidrs[host].rsplit(".", 1)[0], (host, cidrs)
        pids = [int(p) for p in (k8s.workdir(name) / "pids").read_text().split()]
    finally:
        report = labmod.lab_down(name)
    assert not report.leftovers, report.leftovers
    assert not [p for p in pids if running(p)], "control plane still runs"


def running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
