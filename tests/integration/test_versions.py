"""Every command in every cniVersion, through the real executable."""

from __future__ import annotations

import pytest

from .conftest import ALL_VERSIONS, Host

CHECK_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_check_del_in_every_version(host: Host, version: str) -> None:
    pod = host.new_pod()
    conf = host.config(version)
    result = host.add(conf, "cv", pod)
    assert result["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert "ips" not in result and "interfaces" not in result
        address = result["ip4"]["ip"]
        assert result["ip4"]["gateway"] == "10.244.0.1"
        assert {"dst": "0.0.0.0/0", "gw": "10.244.0.1"} in result["ip4"]["routes"]
    else:
        ip = result["ips"][0]
        address = ip["address"]
        if version.startswith("0."):
            assert ip["version"] == "4"
        else:
            assert "version" not in ip
        container = result["interfaces"][ip["interface"]]
        assert container["name"] == "eth0" and container["sandbox"] == pod
    assert address.endswith("/16") and address.startswith("10.244.")
    # The address the result names is the one inside the container.
    assert address.split("/")[0] in host.in_ns(pod, "busybox", "ip", "-4", "addr").stdout

    check_conf = dict(conf, prevResult=result)
    check = host.cni("CHECK", check_conf, "cv", pod)
    if version in CHECK_VERSIONS:
        assert check.rc == 0, check.stdout
    else:
        assert check.rc == 1 and check.out and check.out["code"] == 1

    for command in ("STATUS", "GC"):
        extra = {"cni.dev/valid-attachments": [{"containerID": "cv", "ifname": "eth0"}]}
        res = host.cni(command, dict(conf, **extra), "", "", "")
        if version == "1.1.0":
            assert res.rc == 0 and res.stdout == "", res.stdout
        else:
            assert res.rc == 1 and res.out and res.out["code"] == 1
    # GC above kept the valid attachment.
    assert host.cni("CHECK", check_conf, "cv", pod).rc == (0 if version in CHECK_VERSIONS else 1)

    deleted = host.cni("DEL", conf, "cv", pod)
    assert deleted.rc == 0 and deleted.stdout == ""
    assert "xvmbr10" not in host.links()


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_version_command(host: Host, version: str) -> None:
    res = host.cni("VERSION", {"cniVersion": version}, "", "", "")
    assert res.rc == 0 and res.out is not None
    assert res.out["cniVersion"] == version
    assert set(res.out["supportedVersions"]) == set(ALL_VERSIONS)


def test_version_with_empty_stdin_needs_no_config(host: Host) -> None:
    res = host.cni("VERSION", b"", "", "", "")
    assert res.rc == 0 and res.out and "1.1.0" in res.out["supportedVersions"]


def test_conflist_entry_with_runtime_config(host: Host) -> None:
    """As libcni hands a conflist entry: name/cniVersion injected, runtimeConfig with
    the ips and mac capabilities, no prevResult for the first plugin."""
    pod = host.new_pod()
    conf = host.config("1.0.0", capabilities={"ips": True, "mac": True}, staticIPs="subnet",
                       runtimeConfig={"ips": ["10.244.200.7/16"], "mac": "02:aa:bb:cc:dd:01"})
    result = host.add(conf, "rc1", pod)
    assert result["ips"][0]["address"] == "10.244.200.7/16"
    container = result["interfaces"][result["ips"][0]["interface"]]
    assert container["mac"] == "02:aa:bb:cc:dd:01"
    link = host.in_ns(pod, "busybox", "ip", "link", "show", "eth0").stdout
    assert "02:aa:bb:cc:dd:01" in link
    check = host.cni("CHECK", dict(conf, prevResult=result), "rc1", pod)
    assert check.rc == 0, check.stdout
    assert host.cni("DEL", conf, "rc1", pod).rc == 0


def test_check_detects_a_removed_address(host: Host) -> None:
    pod = host.new_pod()
    conf = host.config()
    result = host.add(conf, "chk", pod)
    address = result["ips"][0]["address"]
    host.in_ns(pod, "busybox", "ip", "addr", "del", address, "dev", "eth0")
    check = host.cni("CHECK", dict(conf, prevResult=result), "chk", pod)
    assert check.rc == 1 and check.out and check.out["code"] == 105
    assert address in check.out["details"]
    assert host.cni("DEL", conf, "chk", pod).rc == 0


def test_check_without_prev_result_is_a_config_error(host: Host) -> None:
    pod = host.new_pod()
    conf = host.config()
    host.add(conf, "np", pod)
    res = host.cni("CHECK", conf, "np", pod)
    assert res.rc == 1 and res.out and res.out["code"] == 7
    assert host.cni("DEL", conf, "np", pod).rc == 0
