"""Delegated IPAM: Debian's reference host-local plugin allocates, we plumb."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Host

HOST_LOCAL = "/usr/lib/cni/host-local"
pytestmark = pytest.mark.skipif(not os.access(HOST_LOCAL, os.X_OK),
                                reason="containernetworking-plugins is not installed")


def _config(host: Host, version: str = "1.0.0") -> dict[str, Any]:
    ipam = {"type": "host-local", "dataDir": str(host.data_dir / "host-local"),
            "ranges": [[{"subnet": "10.244.0.0/16", "rangeStart": "10.244.50.10",
                         "rangeEnd": "10.244.50.20", "gateway": "10.244.0.1"}]]}
    return host.config(version, subnet=None, ipam=ipam)


def _reservations(host: Host) -> list[str]:
    folder = host.data_dir / "host-local" / "xvm-network"
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name[0].isdigit())


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_host_local_add_check_del(host: Host, version: str) -> None:
    conf = _config(host, version)
    pod = host.new_pod()
    result = host.add(conf, "dl1", pod)
    address = result["ips"][0]["address"]
    assert address == "10.244.50.10/16"
    # host-local's own on-disk record: <dataDir>/<network>/<ip> holding the container id.
    assert _reservations(host) == ["10.244.50.10"]
    record = Path(host.data_dir / "host-local" / "xvm-network" / "10.244.50.10").read_text()
    assert record.startswith("dl1")
    assert host.add(conf, "dl1", pod)["ips"][0]["address"] == address  # idempotent
    assert _reservations(host) == ["10.244.50.10"]
    if version != "0.3.1":
        check = host.cni("CHECK", dict(conf, prevResult=result), "dl1", pod)
        assert check.rc == 0, check.stdout
    ping = host.in_ns(pod, "busybox", "ping", "-c", "1", "-W", "2", "10.244.0.1")
    assert ping.returncode == 0
    assert host.cni("DEL", conf, "dl1", pod).rc == 0
    assert _reservations(host) == []
    assert "xvmbr10" not in host.links()


def test_host_local_failure_is_reported_and_rolled_back(host: Host) -> None:
    conf = _config(host)
    conf["ipam"]["ranges"][0][0]["rangeEnd"] = "10.244.50.10"  # room for one
    first = host.new_pod()
    host.add(conf, "one", first)
    before = host.snapshot()
    res = host.cni("ADD", conf, "two", host.new_pod())
    assert res.rc == 1 and res.out and res.out["code"] == 104
    assert "host-local" in res.out["msg"]
    after = host.snapshot()
    assert after["links"] == before["links"]
    assert host.cni("DEL", conf, "one", first).rc == 0


def test_missing_ipam_plugin(host: Host) -> None:
    conf = _config(host)
    conf["ipam"]["type"] = "no-such-ipam"
    res = host.cni("ADD", conf, "x", host.new_pod())
    assert res.rc == 1 and res.out and res.out["code"] == 7
    assert "no-such-ipam" in res.out["msg"]


def test_static_ipam(host: Host) -> None:
    conf = host.config(ipam={"type": "static",
                             "addresses": [{"address": "10.244.60.5/16"}]})
    pod = host.new_pod()
    result = host.add(conf, "st", pod)
    assert result["ips"][0]["address"] == "10.244.60.5/16"
    assert "10.244.60.5/16" in host.in_ns(pod, "busybox", "ip", "-4", "addr").stdout
    ping = host.in_ns(pod, "busybox", "ping", "-c", "1", "-W", "2", "10.244.0.1")
    assert ping.returncode == 0
    assert host.cni("DEL", conf, "st", pod).rc == 0


@pytest.fixture
def dhcp_daemon(host: Host) -> Iterator[Path]:
    """Debian's dhcp IPAM daemon in the simulated host, on a private socket."""
    sock = host.data_dir.parent / "dhcp.sock"
    proc = subprocess.Popen(["nsenter", f"--net={host.path}", "/usr/lib/cni/dhcp", "daemon",
                             "-socketpath", str(sock)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "dhcp daemon died"
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dhcp_ipam_leases_through_the_container_interface(host: Host, dhcp_daemon: Path) -> None:
    """The dhcp plugin asks for a lease *through* the container's interface, so the
    interface must be plugged before IPAM runs. The DHCP server is another pod on the
    same L2 network (busybox udhcpd)."""
    plain = host.config(staticIPs="subnet")
    server_pod = host.new_pod()
    host.add(plain, "dhcpsrv", server_pod, args="IP=10.244.70.1")
    conf_file = host.data_dir.parent / "udhcpd.conf"
    conf_file.write_text("\n".join([
        "start 10.244.70.10", "end 10.244.70.20", "interface eth0",
        f"lease_file {host.data_dir.parent / 'udhcpd.leases'}",
        "option subnet 255.255.0.0", "option router 10.244.0.1", "option lease 600", ""]))
    (host.data_dir.parent / "udhcpd.leases").touch()
    server = subprocess.Popen(["nsenter", f"--net={server_pod}", "busybox", "udhcpd", "-f",
                               str(conf_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conf = host.config(ipam={"type": "dhcp", "daemonSocketPath": str(dhcp_daemon)})
        client_pod = host.new_pod()
        result = host.add(conf, "dhcpcli", client_pod)
        address = result["ips"][0]["address"]
        assert address.startswith("10.244.70.") and address.endswith("/16"), result
        inside = host.in_ns(client_pod, "busybox", "ip", "-4", "addr", "show", "eth0").stdout
        assert address in inside
        ping = host.in_ns(client_pod, "busybox", "ping", "-c", "1", "-W", "2", "10.244.70.1")
        assert ping.returncode == 0
        assert host.cni("DEL", conf, "dhcpcli", client_pod).rc == 0
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert host.cni("DEL", plain, "dhcpsrv", server_pod).rc == 0
    assert "xvmbr10" not in host.links()
