"""``xvmctl doctor`` and ``xvmctl connectivity`` with the etcd control plane (l2,
unicast flooding): healthy hosts pass both; a flood entry removed by hand is named
as missing for its host; etcd stopped is named as the only problem, and
connectivity shows the data path still works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from .conftest import Host
from .test_etcd_l2 import (  # noqa: F401  (lab: the fixture)
    ROUTER_A,
    SUBNET_A,
    RoutedLab,
    add_host,
    boot_agent,
    build,
    expect_flood_lists,
    lab,
    network,
    pings,
    pod_address,
    underlay,
    write_conf,
)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd-server")]


def doctor(host: Host) -> tuple[int, list[dict[str, Any]]]:
    base = host.data_dir.parent
    argv = ["nsenter", f"--net=/run/netns/{host.name}", sys.executable, "-m",
            "xvmcni.cli.xvmctl", "doctor", "--json", "--socket", host.agent_socket,
            "--cni-conf-dir", str(base / "conf"), "--data-dir", str(host.data_dir),
            "--cni-bin-dir", str(base / "bin")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout, proc.stderr
    return proc.returncode, list(json.loads(proc.stdout)["findings"])


def problems(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((f["check"], f["subject"]) for f in found if f["status"] != "ok")


def connectivity_ok(hosts: list[Host]) -> bool:
    from xvmcni.diagnose import connectivity
    result = connectivity.run([(h.name, h.agent_socket) for h in hosts], None,
                              lambda line: None)
    assert len(result.cells) == len(hosts) * (1 + 2 * (len(hosts) - 1))
    return result.ok


def test_doctor_with_etcd(lab: RoutedLab) -> None:  # noqa: F811
    switch_a, _ = build(lab)
    hosts = [add_host(lab, switch_a, f"{SUBNET_A}.{11 + i}", ROUTER_A, i + 1)
             for i in range(2)]
    assert lab.etcd is not None
    lab.etcd.start()
    pods, addresses = [], []
    for host in hosts:
        write_conf(host, network(host, lab.etcd))
        boot_agent(host)
    for i, host in enumerate(hosts):
        pod = host.new_pod()
        addresses.append(pod_address(host.add(network(host, lab.etcd), f"dr{i}", pod)))
        pods.append(pod)
    expect_flood_lists(hosts, hosts, timeout=10)
    assert pings(hosts[0], pods[0], addresses[1])
    status, found = doctor(hosts[0])
    assert (status, problems(found)) == (0, []), json.dumps(found, indent=1)
    assert any(f["check"] == "controlplane" and "reachable" in f["cause"] for f in found)
    # The host record's lease is read (not refreshed) and kept alive by the agent.
    assert any(f["check"] == "controlplane" and f["subject"].startswith("host record")
               and "lease" in f["cause"] and "left" in f["cause"] for f in found), found
    assert connectivity_ok(hosts)

    # One flood entry removed by hand: named, with the host it belongs to.
    other = underlay(hosts[1])
    subprocess.run(["bridge", "-n", hosts[0].name, "fdb", "del", "00:00:00:00:00:00",
                    "dev", "xvmvx10", "dst", other], check=True)
    status, found = doctor(hosts[0])
    assert (status, problems(found)) == (1, [("peers", "xvm-network")]), found
    bad = next(f for f in found if f["status"] != "ok")
    assert f"flood entry to {other}" in bad["cause"] and "missing" in bad["cause"]
    subprocess.run(["bridge", "-n", hosts[0].name, "fdb", "append", "00:00:00:00:00:00",
                    "dev", "xvmvx10", "dst", other], check=True)

    # etcd stopped: the control plane is named, nothing else (the data path holds).
    lab.etcd.kill()
    status, found = doctor(hosts[0])
    assert (status, problems(found)) == (1, [("controlplane", "etcd")]), found
    bad = next(f for f in found if f["status"] != "ok")
    assert "cannot be reached" in bad["cause"] and "endpoint health" in bad["fix"]
    assert pings(hosts[0], pods[0], addresses[1])
    assert connectivity_ok(hosts)
