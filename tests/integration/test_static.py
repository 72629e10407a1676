"""Static requests can't collide (issue 7 item 7), through the real plugin: an address
in another host's slice, two addresses, and reserved or taken MACs are refused with
code 7 before the host changes; "staticIPs": "subnet" allows the whole subnet."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Host

# The host is 172.30.0.11: its slice of 10.244.0.0/16 is 10.244.11.0/24.
OTHER_HOSTS_SLICE = "10.244.12.7"


def refused(host: Host, conf: dict[str, Any], container: str, **kw: Any) -> str:
    before = host.snapshot()
    res = host.cni("ADD", conf, container, host.new_pod(), **kw)
    assert res.rc == 1 and res.out is not None, res.stdout
    assert res.out["code"] == 7, res.out
    after = host.snapshot()
    assert (after["links"], after["nft"], after["files"]) == \
        (before["links"], before["nft"], before["files"])
    return str(res.out["msg"]) + " " + str(res.out.get("details", ""))


def test_address_in_another_hosts_slice(host: Host) -> None:
    why = refused(host, host.config(), "s1", args=f"IP={OTHER_HOSTS_SLICE}")
    assert "outside this host's pool" in why and "staticIPs" in why
    capability = host.config(runtimeConfig={"ips": [f"{OTHER_HOSTS_SLICE}/16"]})
    assert "outside this host's pool" in refused(host, capability, "s2")
    # In this host's own slice: fine.
    pod = host.new_pod()
    assert host.add(host.config(), "s3", pod, args="IP=10.244.11.77")["ips"][0]["address"] \
        == "10.244.11.77/16"
    assert host.cni("DEL", host.config(), "s3", pod).rc == 0


def test_static_ips_subnet_allows_the_whole_subnet(host: Host) -> None:
    conf = host.config(staticIPs="subnet")
    pod = host.new_pod()
    result = host.add(conf, "s4", pod, args=f"IP={OTHER_HOSTS_SLICE}")
    assert result["ips"][0]["address"] == f"{OTHER_HOSTS_SLICE}/16"
    assert host.cni("DEL", conf, "s4", pod).rc == 0


def test_static_ips_within_a_range(host: Host) -> None:
    conf = host.config(rangeStart="10.244.9.10", rangeEnd="10.244.9.20")
    assert "outside this host's pool" in refused(host, conf, "r1", args="IP=10.244.11.5")
    pod = host.new_pod()
    assert host.add(conf, "r2", pod, args="IP=10.244.9.15")["ips"][0]["address"] == \
        "10.244.9.15/16"
    assert host.cni("DEL", conf, "r2", pod).rc == 0


def test_at_most_one_address(host: Host) -> None:
    assert "at most one" in refused(host, host.config(), "m1",
                                    args="IP=10.244.11.5,10.244.11.6")
    both = host.config(runtimeConfig={"ips": ["10.244.11.6/16"]})
    assert "at most one" in refused(host, both, "m2", args="IP=10.244.11.5")


@pytest.mark.parametrize(("mac", "why"), [
    ("00:00:00:00:00:00", "all-zero"),
    ("02:78:76:00:00:0a", "gateway"),
    ("0a:58:0a:f4:0b:05", "10.244.11.5"),
])
def test_reserved_mac(host: Host, mac: str, why: str) -> None:
    assert why in refused(host, host.config(), "mac1", args=f"MAC={mac}")


def test_mac_of_another_pod(host: Host) -> None:
    conf = host.config()
    first = host.new_pod()
    host.add(conf, "owner", first, args="MAC=02:aa:bb:cc:dd:01")
    why = refused(host, host.config(runtimeConfig={"mac": "02:aa:bb:cc:dd:01"}), "thief")
    assert "owner" in why
    assert host.cni("DEL", conf, "owner", first).rc == 0
    # Free again once its pod is gone.
    pod = host.new_pod()
    host.add(conf, "heir", pod, args="MAC=02:aa:bb:cc:dd:01")
    assert host.cni("DEL", conf, "heir", pod).rc == 0
