"""``xvmctl doctor`` and ``xvmctl connectivity`` with the Kubernetes control plane
(routed, VXLAN), against a real API server (skipped without $XVM_TEST_K8S): healthy
hosts pass both, with this host's Node and its published annotations checked; a
peer's route deleted by hand is named; the API server stopped is named as the only
problem."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from xvmcni import plugin_file
from xvmcni.controlplane.k8sconfig import publish_keys
from xvmcni.lab import plumbing

from .k8s_lab import K8sLab, wait_for
from .routed_lab import NETWORK, ping, sysctl
from .test_doctor_etcd import doctor, problems
from .test_k8s_routed import lab  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]


def test_doctor_with_kubernetes(lab: K8sLab) -> None:  # noqa: F811
    names = ["h1", "h2"]
    lab.build(tuple(names))
    lab.start_k8s()
    for name in names:
        lab.add_node(name)
        lab.boot(name)
    cidrs = {n: lab.pod_cidrs(n) for n in names}
    pods: dict[str, tuple[str, str]] = {}
    for name in names:
        wait_for(lambda n=name: lab.own_cidrs(n) == cidrs[n], 15,  # type: ignore[misc]
                 f"{name}'s agent to know its CIDR")
        host = lab.hosts[name]
        pod = host.new_pod()
        plumbing.bring_up_lo(pod)
        result = host.add(lab.k8s_config(name), f"dk{name}", pod)  # type: ignore[arg-type]
        pods[name] = (pod, result["ips"][0]["address"].split("/")[0])
    h1, h2 = (lab.hosts[n] for n in names)
    wait_for(lambda: ping(h1, pods["h1"][0], pods["h2"][1]), 20, "h1's pod to reach h2's")
    # doctor looks for the plugin next to the data dir, as a runtime would.
    plugin_file.write(h1.data_dir.parent / "bin" / "xvm-cni")
    # Loose reverse-path filtering, as doctor asks: a host's own address answers a
    # pod out of the tunnel while the route back to it is the underlay's (the max of
    # 'all' and the device's value applies).
    for host in (h1, h2):
        sysctl(host.name, "net.ipv4.conf.all.rp_filter", "2")
    mac_key, underlay_key = publish_keys(NETWORK)
    want = {mac_key: lab.vtep_mac("h1"), underlay_key: lab.address("h1")}

    def published() -> bool:
        annotations = (lab.node("h1") or {})["metadata"].get("annotations") or {}
        return all(annotations.get(k) == v for k, v in want.items())
    wait_for(published, 15, f"h1's annotations {want}")

    status, found = doctor(h1)
    assert (status, problems(found)) == (0, []), json.dumps(found, indent=1)
    causes = {f["subject"]: f["cause"] for f in found if f["check"] == "controlplane"}
    assert "reachable" in causes["API server"], causes
    assert cidrs["h1"][0] in causes["Node h1"], causes
    assert "equal to the kernel's" in causes["annotations of Node h1"], causes
    # connectivity: the agents name their pods; every host's pod reaches the other's.
    from xvmcni.diagnose import connectivity
    result = connectivity.run([(h.name, h.agent_socket) for h in (h1, h2)], None,
                              lambda line: None)
    pod_cells = {(c.src, c.dst) for c in result.cells if c.kind == "pod"}
    assert pod_cells == {(h1.name, h2.name), (h2.name, h1.name)}, result.cells
    # And every pod reaches the other host's own address (unmasqueraded: the reply
    # comes back through the tunnel, accepted by loose filtering).
    underlay_cells = {(c.src, c.dst) for c in result.cells if c.kind.startswith("underlay")}
    assert underlay_cells == pod_cells, result.cells
    failed = [c for c in result.cells if not c.ok]
    assert not failed, failed

    # h2's route deleted on h1: named, with the host it belongs to.
    subprocess.run(["ip", "-n", h1.name, "route", "del", cidrs["h2"][0]], check=True)
    status, found = doctor(h1)
    assert (status, problems(found)) == (1, [("peers", NETWORK)]), found
    bad = next(f for f in found if f["status"] != "ok")
    assert f"route to {cidrs['h2'][0]} (host h2)" in bad["cause"], bad

    # The API server stopped: named, and nothing else.
    lab.api.stop_apiserver()
    status, found = doctor(h1)
    assert (status, problems(found)) == (1, [("controlplane", "API server")]), found
    bad = next(f for f in found if f["status"] != "ok")
    assert "cannot be asked" in bad["cause"] and "kubectl" in bad["fix"], bad
