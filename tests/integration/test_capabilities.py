"""The capabilities the Kubernetes DaemonSet grants (NET_ADMIN, SYS_ADMIN) are
enough, and each is needed: the plugin runs as root with only those in its
bounding set (as in a container with ``drop: [ALL]``), with one of them fewer it
fails cleanly, and with the set of deploy/kubernetes/daemonset.yaml it attaches
and detaches pods of the l2 and the routed model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from xvmcni.lab import plumbing

from .conftest import INPROCESS_PLUGIN, Host

DAEMONSET = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "daemonset.yaml"


def granted() -> list[str]:
    """The capabilities the DaemonSet's agent container adds (after dropping all)."""
    spec = yaml.safe_load(DAEMONSET.read_text())["spec"]["template"]["spec"]
    caps: dict[str, Any] = spec["containers"][0]["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return [str(c) for c in caps["add"]]


def limited(tmp_path: Path, caps: list[str]) -> str:
    """A plugin executable that runs the in-process plugin with only ``caps``."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    keep = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    wrapper = tmp_path / f"xvm-cni-{'-'.join(caps) or 'none'}"
    wrapper.write_text(f"#!/bin/sh\nexec {setpriv} --bounding-set={keep} "
                       f"--inh-caps=-all {INPROCESS_PLUGIN}\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def routed(host: Host) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "capnet", "type": "xvm-cni", "model": "routed",
            "hostInterface": "eth0", "podCIDR": "10.250.7.0/24", "encap": "vxlan",
            "controlPlane": {"type": "static", "peers": []},
            "dataDir": str(host.data_dir)}


@pytest.mark.parametrize("model", ["l2", "routed"])
def test_the_daemonsets_capabilities_suffice(thin_host: Host, tmp_path: Path,
                                             model: str) -> None:
    host = thin_host
    caps = granted()
    assert sorted(caps) == ["NET_ADMIN", "SYS_ADMIN"]
    host.plugin = limited(tmp_path, caps)
    conf = host.config() if model == "l2" else routed(host)
    pod = host.new_pod()
    plumbing.bring_up_lo(pod)
    result = host.add(conf, "cap-c1", pod)
    address = result["ips"][0]["address"].split("/")[0]
    inside = host.in_ns(pod, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert address in inside
    gone = host.cni("DEL", conf, "cap-c1", pod)
    assert gone.rc == 0, gone.stdout + gone.stderr
    assert "eth0" not in host.in_ns(pod, "ip", "-o", "link", "show").stdout


@pytest.mark.parametrize("missing", ["NET_ADMIN", "SYS_ADMIN"])
def test_each_capability_is_needed(thin_host: Host, tmp_path: Path, missing: str) -> None:
    host = thin_host
    host.plugin = limited(tmp_path, [c for c in granted() if c != missing])
    pod = host.new_pod()
    before = host.snapshot()
    res = host.cni("ADD", host.config(), "cap-c2", pod)
    assert res.rc == 1 and res.out is not None, res.stdout + res.stderr
    # A CNI error naming the refused operation, not a traceback.
    assert "not permitted" in json.dumps(res.out), res.out
    after = host.snapshot()
    # Nothing was left half-made on the host.
    assert after["links"] == before["links"] and after["nft"] == before["nft"]
    assert os.geteuid() == 0
