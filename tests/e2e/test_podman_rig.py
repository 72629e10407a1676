"""The podman rig itself, checked with Debian's reference CNI plugins (bridge + host-local).

A throwaway network namespace plays the host; real podman containers (runc, busybox
rootfs) attach to a reference bridge network inside it. If these pass, a failure of an
xvm-cni podman test built on the same rig points at xvm-cni, not at the rig.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.podman import PodmanRig, find_static_busybox
from xvmcni.lab import simhost

REFERENCE_PLUGINS = Path("/usr/lib/cni")
SUBNET = ipaddress.IPv4Network("10.231.7.0/24")
GATEWAY = SUBNET.network_address + 1


def _missing_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("podman", "runc", "nsenter", "unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/bootstrap.sh --test)"
    for plugin in ("bridge", "host-local"):
        if not (REFERENCE_PLUGINS / plugin).exists():
            return f"{REFERENCE_PLUGINS / plugin} missing (containernetworking-plugins)"
    if find_static_busybox() is None:
        return "no static busybox (busybox-static)"
    return None


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    reason = _missing_prerequisites()
    if reason:
        pytest.skip(reason)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def host() -> Iterator[str]:
    """A simulated host (``xvmcni.lab.simhost``: lo up, eth0 on a private underlay),
    removed afterwards; its netns name."""
    sim = simhost.standalone_host("xrig")
    try:
        yield sim.netns
    finally:
        simhost.destroy(sim)


def reference_conflist(tmp_path: Path) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    return {
        "cniVersion": "1.0.0",
        "name": f"rigref-{suffix}",
        "plugins": [{
            "type": "bridge",
            "bridge": f"rigbr{suffix}",
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "dataDir": str(tmp_path / "host-local"),
                "ranges": [[{"subnet": str(SUBNET), "gateway": str(GATEWAY)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    }


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PodmanRig]:
    rig = PodmanRig(tmp_path, REFERENCE_PLUGINS, reference_conflist(tmp_path))
    try:
        yield rig
    finally:
        rig.cleanup()


def veths(host: str) -> list[str]:
    """The host's veths but eth0, its underlay cable."""
    lines = ip("-n", host, "-o", "link", "show", "type", "veth").splitlines()
    return [line for line in lines
            if line.strip() and line.split(":")[1].strip().split("@")[0] != "eth0"]


def test_container_gets_an_address_and_default_route(rig: PodmanRig, host: str) -> None:
    proc = rig.run(host, ["sh", "-c", "ip -4 -o addr show dev eth0; ip -4 route"])
    assert proc.returncode == 0, proc.stderr
    address = proc.stdout.split()[3]
    assert ipaddress.IPv4Interface(address).network == SUBNET, proc.stdout
    assert f"default via {GATEWAY}" in proc.stdout


def test_container_pings_the_bridge_gateway(rig: PodmanRig, host: str) -> None:
    proc = rig.run(host, ["ping", "-c", "2", "-W", "2", str(GATEWAY)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0% packet loss" in proc.stdout


def test_host_side_lands_in_the_simulated_host(rig: PodmanRig, host: str) -> None:
    """The bridge and veth are created in the host namespace podman was started in, and
    --rm's CNI DEL removes the veth there again."""
    name = rig.start(host)
    try:
        bridge = rig.network.replace("rigref-", "rigbr")
        assert bridge in ip("-n", host, "-o", "link", "show"), "bridge not in the host netns"
        assert len(veths(host)) == 1
        assert bridge not in ip("-o", "link", "show"), "bridge leaked into the machine's netns"
    finally:
        rig.stop(name)
    assert veths(host) == []


def test_two_containers_on_one_host_reach_each_other(rig: PodmanRig, host: str) -> None:
    server = rig.start(host)
    address = rig.address(server)
    assert ipaddress.IPv4Address(address) in SUBNET
    proc = rig.run(host, ["ping", "-c", "2", "-W", "2", address])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inside = rig.exec(server, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
    assert f" {address}/" in inside.stdout


def test_nonzero_exit_is_reported(rig: PodmanRig, host: str) -> None:
    proc = rig.run(host, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert proc.returncode == 7
    assert proc.stdout.strip() == "out"
    assert "err" in proc.stderr


def test_cleanup_removes_everything_and_touches_no_machine_state(
    tmp_path: Path, host: str
) -> None:
    watched = [Path("/var/lib/containers"), Path("/run/containers"),
               Path.home() / ".config" / "containers", Path("/etc/containers")]
    before = {p: (p.exists(), p.stat().st_mtime_ns if p.exists() else 0) for p in watched}
    rig = PodmanRig(tmp_path, REFERENCE_PLUGINS, reference_conflist(tmp_path))
    try:
        rig.start(host)                      # left running on purpose: cleanup must stop it
        assert rig.run(host, ["true"]).returncode == 0
        assert len(veths(host)) == 1
    finally:
        rig.cleanup()
    rig.cleanup()                            # twice is harmless
    assert not rig.base.exists()
    assert veths(host) == [], "cleanup did not run CNI DEL in the host namespace"
    after = {p: (p.exists(), p.stat().st_mtime_ns if p.exists() else 0) for p in watched}
    assert after == before
