"""A real client: podman (CNI backend) runs a container on an xvm-cni network on one
lab host, and that container reaches a pod on another lab host across the VXLAN."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.podman import PodmanRig, find_static_busybox
from xvmcni import lab as labmod
from xvmcni import plugin_file


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("podman", "runc", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/bootstrap.sh --test)"
    if find_static_busybox() is None:
        return "no static busybox (busybox-static)"
    return None


@pytest.fixture(scope="module")
def lab() -> Iterator[labmod.Lab]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    name = f"xtpm{os.getpid():x}{secrets.token_hex(2)}"
    try:
        yield labmod.lab_up(name, hosts=2, pods=1)
    finally:
        labmod.lab_down(name)


@pytest.fixture
def rig(lab: labmod.Lab, tmp_path: Path) -> Iterator[PodmanRig]:
    """Podman on lab host h1, with h1's own xvm-cni network config as a conflist: the
    same dataDir (so IPAM is shared with the lab's pods there) and the same agent."""
    h1 = lab.host("h1")
    entry: dict[str, Any] = json.loads(Path(h1.config_path).read_text())
    conflist = {"cniVersion": entry.pop("cniVersion"), "name": entry.pop("name"),
                "plugins": [entry]}
    bin_dir = tmp_path / "cni-bin"
    plugin_file.write(bin_dir / "xvm-cni")
    rig = PodmanRig(tmp_path, bin_dir, conflist)
    try:
        yield rig
    finally:
        rig.cleanup()


def _host_veths(lab: labmod.Lab, host: str) -> set[str]:
    out = subprocess.run(["ip", "-n", lab.host(host).netns, "-o", "link", "show", "type",
                          "veth"], check=True, capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line}


def test_podman_container_reaches_a_pod_on_another_host(lab: labmod.Lab,
                                                        rig: PodmanRig) -> None:
    remote = next(p for p in lab.pods if p.host == "h2")
    local = next(p for p in lab.pods if p.host == "h1")
    veths_before = _host_veths(lab, "h1")
    proc = rig.run(lab.host("h1").netns, [
        "sh", "-c",
        f"ip -4 -o addr show dev eth0 && ping -c 3 -W 2 {remote.ip} && "
        f"ping -c 1 -W 2 -s 1422 {remote.ip}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 packets received" in proc.stdout or " 0% packet loss" in proc.stdout
    address = ipaddress.IPv4Interface(proc.stdout.split()[3])
    # h1's slice of the shared subnet, and not an address a lab pod holds.
    assert address.network == ipaddress.IPv4Network("10.244.0.0/16")
    assert address.ip in ipaddress.IPv4Network("10.244.11.0/24")
    assert str(address.ip) not in {p.ip for p in lab.pods}
    assert str(address.ip) != local.ip
    # --rm ran CNI DEL through podman: the container's veth is gone from h1.
    assert _host_veths(lab, "h1") == veths_before


def test_lab_pod_reaches_a_running_podman_container(lab: labmod.Lab,
                                                    rig: PodmanRig) -> None:
    name = rig.start(lab.host("h1").netns)
    try:
        address = rig.address(name)
        remote = next(p for p in lab.pods if p.host == "h2")
        assert labmod.ping(remote.netns_path, address)
    finally:
        rig.stop(name)
