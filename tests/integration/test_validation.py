"""Names and values are validated before the host is touched (issue 7 item 6), through
the real plugin executable: the right code, and no bridge, nft table, network.json,
sysctl change or file anywhere."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest

from .conftest import Host

SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/disable_ipv6",
           "net/ipv6/conf/default/disable_ipv6")


def sysctls(host: Host) -> dict[str, str]:
    """The host namespace's sysctls an ADD may set (read from inside it: /proc/sys/net
    shows the opener's namespace)."""
    out = host.in_ns(host.path, "cat", *(f"/proc/sys/{s}" for s in SYSCTLS)).stdout.split()
    assert len(out) == len(SYSCTLS)
    return dict(zip(SYSCTLS, out, strict=True))


def expect_refused(host: Host, code: int, config: dict[str, Any] | bytes,
                   ifname: str = "eth0") -> dict[str, Any]:
    before = {**host.snapshot(), "sysctl": sysctls(host)}
    pod = host.new_pod()
    res = host.cni("ADD", config, "val", pod, ifname=ifname)
    assert res.rc == 1, res.stdout
    assert res.out is not None and res.out["code"] == code, res.out
    assert isinstance(res.out["msg"], str) and res.out["msg"]
    assert "Traceback" not in res.stdout + res.stderr
    after = {**host.snapshot(), "sysctl": sysctls(host)}
    after["pod_links"] = {k: v for k, v in after["pod_links"].items()
                          if k in before["pod_links"]}
    assert after == before
    # The pod namespace holds nothing but lo.
    assert host.in_ns(pod, "ip", "-o", "link").stdout.count("\n") == 1
    assert not (host.data_dir / "xvm-network" / "network.json").exists()
    return res.out


@pytest.mark.parametrize("ifname", ["eth0\n", "é" * 8, "e\u00a0th0", "eth%d", "..",
                                    "a:b"], ids=repr)
def test_bad_cni_ifname(host: Host, ifname: str) -> None:
    out = expect_refused(host, 4, host.config(), ifname=ifname)
    assert "CNI_IFNAME" in out["msg"]


@pytest.mark.parametrize("bridge", ["br\n", "é" * 8, "br%d", "b/r", "b r", ".."], ids=repr)
def test_bad_bridge(host: Host, bridge: str) -> None:
    out = expect_refused(host, 7, host.config(bridge=bridge))
    assert "bridge" in out["msg"]


@pytest.mark.parametrize("name", ["net\n", "n" * 65, "-x"], ids=repr)
def test_bad_network_name(host: Host, name: str) -> None:
    out = expect_refused(host, 7, host.config(name=name))
    assert "name" in out["msg"]


@pytest.mark.parametrize("key", ["dataDir", "logFile"])
def test_relative_paths(host: Host, key: str) -> None:
    relative = f"xvm-reltest-{os.getpid()}-{secrets.token_hex(3)}"
    # The plugin (and an agent) run in this process's working directory.
    stray = Path.cwd() / relative
    try:
        out = expect_refused(host, 7, host.config(**{key: relative}))
        assert key in out["msg"]
        assert not stray.exists()
    finally:
        if stray.is_dir():
            shutil.rmtree(stray)
        elif stray.exists():
            stray.unlink()


@pytest.mark.parametrize("changes", [
    {"routes": [{"dst": "10.9.0.0/16", "gw": 167772161}]},
    {"vxlanID": int("9" * 4000)},
    {"mtu": int("9" * 4000)},
    {"port": -int("9" * 4000)},
    {"perHostPrefix": int("9" * 4000)},
    {"vxlanID": 10.0},
], ids=["gw-number", "vxlanID-4000-digits", "mtu-4000-digits", "port", "perHostPrefix",
        "vxlanID-float"])
def test_numbers(host: Host, changes: dict[str, Any]) -> None:
    out = expect_refused(host, 7, host.config(**changes))
    assert len(out["msg"]) < 300


def test_number_over_pythons_digit_limit(host: Host) -> None:
    conf = json.dumps(host.config()).replace('"vxlanID": 10', '"vxlanID": ' + "9" * 5000)
    expect_refused(host, 7, conf.encode())
