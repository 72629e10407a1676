"""``xvmctl doctor`` on an exhausted address pool: a small subnet filled by real
ADDs through the agent; doctor names the pool as the only problem with the fix,
the next ADD really fails, and one DEL makes doctor healthy again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import Host, start_agent

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

POD_CIDR = "10.77.0.0/29"   # gateway .1, pods .2 - .6: five addresses
MAX_PODS = 16


def doctor(host: Host, bin_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    argv = ["nsenter", f"--net=/run/netns/{host.name}", sys.executable, "-m",
            "xvmcni.cli.xvmctl", "doctor", "--json", "--socket", host.agent_socket,
            "--cni-conf-dir", str(host.data_dir.parent / "conf"), "--data-dir",
            str(host.data_dir), "--cni-bin-dir", str(bin_dir)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout, proc.stderr
    return proc.returncode, list(json.loads(proc.stdout)["findings"])


def bad(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in found if f["status"] != "ok"]


def test_an_exhausted_pool_is_named_with_its_fix(thin_host: Host, tmp_path: Path) -> None:
    conf_dir = thin_host.data_dir.parent / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    start_agent(thin_host)
    # The routed model, this host its only static peer: no multicast (a lone host's
    # floods are never answered, which doctor cannot tell from a broken underlay).
    me = thin_host.sim.address.split("/")[0]
    config = {"cniVersion": "1.0.0", "name": "xvm-tiny", "type": "xvm-cni",
              "model": "routed", "hostInterface": "eth0", "podCIDR": POD_CIDR,
              "clusterCIDR": "10.77.0.0/16", "vxlanID": 10, "mtu": 1500,
              "dataDir": str(thin_host.data_dir), "agentSocket": thin_host.agent_socket,
              "controlPlane": {"type": "static", "peers": [
                  {"name": "me", "address": me, "podCIDRs": [POD_CIDR]}]}}
    (conf_dir / "10-xvm.conf").write_text(
        json.dumps({k: v for k, v in config.items() if k != "agentSocket"}))
    bin_dir = Path(thin_host.plugin).parent
    added: list[tuple[str, str]] = []
    refused = None
    for i in range(MAX_PODS):
        netns = thin_host.new_pod()
        outcome = thin_host.cni("ADD", config, f"fill{i}", netns)
        if outcome.rc != 0:
            refused = outcome
            break
        added.append((f"fill{i}", netns))
    assert refused is not None and len(added) == 5, [a for a, _ in added]
    assert refused.out is not None and refused.out.get("code")  # the CNI error JSON

    status, found = doctor(thin_host, bin_dir)
    problems = bad(found)
    assert status == 1 and len(problems) == 1, json.dumps(problems, indent=1)
    pool = problems[0]
    assert (pool["check"], pool["status"]) == ("ipam", "fail")
    assert "all 5 addresses are in use" in pool["cause"]
    assert "larger subnet" in pool["fix"] and "xvmctl gc" in pool["fix"]

    container, netns = added.pop()
    assert thin_host.cni("DEL", config, container, netns).rc == 0
    status, found = doctor(thin_host, bin_dir)
    assert (status, bad(found)) == (0, []), json.dumps(bad(found), indent=1)
    assert any(f["check"] == "ipam" and "4 of 5 addresses" in f["cause"] for f in found)
    for container, netns in added:
        assert thin_host.cni("DEL", config, container, netns).rc == 0
