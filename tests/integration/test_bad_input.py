"""Bad input: the right CNI error code, a readable message, and the host untouched."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Host, ip


def _expect(host: Host, code: int, config: dict[str, Any] | bytes, **kw: Any) -> str:
    before = host.snapshot()
    kw.setdefault("netns", host.new_pod())
    kw.setdefault("container", "bad")
    res = host.cni("ADD", config, **kw)
    assert res.rc == 1, res.stdout
    assert res.out is not None and res.out["code"] == code, res.out
    assert res.out["msg"] and "Traceback" not in res.stdout + res.stderr
    after = host.snapshot()
    # The pod namespace created for this call is new; everything else must match.
    after["pod_links"] = {k: v for k, v in after["pod_links"].items()
                          if k in before["pod_links"]}
    assert after == before
    return str(res.out["msg"])


@pytest.mark.parametrize("stdin", [b"{not json", b"[1,2]", b"\xff\xfe", b""])
def test_malformed_json(host: Host, stdin: bytes) -> None:
    _expect(host, 6, stdin)


@pytest.mark.parametrize("overrides,needle", [
    ({"vxlanID": 0}, "vxlanID"),
    ({"vxlanID": 16777216}, "vxlanID"),
    ({"vxlanID": "10"}, "vxlanID"),
    ({"vxlanID": None}, "vxlanID"),
    ({"subnet": "10.244.0.0/33"}, "subnet"),
    ({"subnet": "not-a-cidr"}, "subnet"),
    ({"subnet": "10.244.0.1/16"}, "subnet"),
    ({"subnet": None}, "subnet"),
    ({"gateway": "10.99.0.1"}, "gateway"),
    ({"gateway": "10.244.0.0"}, "gateway"),
    ({"hostInterface": None}, "hostInterface"),
    ({"hostInterface": "nosuch0"}, "nosuch0"),
    ({"mtu": "1500"}, "mtu"),
    ({"name": None}, "name"),
    ({"ipam": {"subnet": "10.0.0.0/8"}}, "ipam"),
])
def test_bad_config(host: Host, overrides: dict[str, Any], needle: str) -> None:
    assert needle in _expect(host, 7, host.config(**overrides))


def test_host_interface_without_ipv4(host: Host) -> None:
    assert "no IPv4" in _expect(host, 7, host.config(hostInterface="lo"))


def test_unsupported_version(host: Host) -> None:
    _expect(host, 1, host.config("9.9.9"))


def test_netns_that_is_not_a_netns(host: Host, tmp_path: Any) -> None:
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    _expect(host, 4, host.config(), netns=str(plain))
    _expect(host, 4, host.config(), netns="/run/netns/does-not-exist-xvm")


def test_ifname_too_long(host: Host) -> None:
    _expect(host, 4, host.config(), ifname="a" * 16)


@pytest.mark.parametrize("missing", ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME",
                                     "CNI_NETNS"])
def test_missing_environment(host: Host, missing: str) -> None:
    pod = host.new_pod()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "envc", "CNI_NETNS": pod,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    del env[missing]
    _expect(host, 4, host.config(), env=env)


def test_existing_interface_in_container_is_rolled_back(host: Host) -> None:
    """A failure after allocation undoes the allocation and the devices."""
    pod = host.new_pod()
    ip("-n", pod.rsplit("/", 1)[1], "link", "add", "eth0", "type", "bridge")
    before = host.snapshot()
    res = host.cni("ADD", host.config(), "dup", pod)
    assert res.rc == 1 and res.out and res.out["code"] == 4
    after = host.snapshot()
    assert after["links"] == before["links"] and after["nft"] == before["nft"]
    # The address went back: the next container gets the slice's first address.
    ok = host.add(host.config(), "next", host.new_pod())
    assert host.cni("DEL", host.config(), "next", "").rc == 0
    assert ok["ips"][0]["address"]
