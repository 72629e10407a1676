"""Names and values are checked as the kernel checks them, before the host is touched
(issue 7 item 6): interface names in bytes and by full match, bounded network names,
absolute paths, and numbers that no message fails to show."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.test_networks import config
from xvmcni import networks
from xvmcni.cni.request import from_environ
from xvmcni.errors import INVALID_CONFIG, INVALID_ENV, CniError

from .test_request import STDIN, env

BAD_IFNAMES = [
    "eth0\n",            # "$" matches before a trailing newline
    "\neth0",
    "é" * 8,             # 8 characters, 16 bytes
    "e\u00a0th0",        # no-break space
    "eth\u20280",        # line separator
    "eth\u30000",        # ideographic space
    "a/b", "a:b", ".", "..", "eth%d", "eth\x01", "eth\x7f", "x" * 16,
]


@pytest.mark.parametrize("name", BAD_IFNAMES, ids=repr)
def test_bad_cni_ifname_is_code_4(name: str) -> None:
    with pytest.raises(CniError) as info:
        from_environ(env(CNI_IFNAME=name), STDIN)
    assert info.value.code == INVALID_ENV
    assert "CNI_IFNAME" in info.value.msg


@pytest.mark.parametrize("name", ["eth0", "net1", "é" * 7 + "a", "x" * 15, "eth0.100",
                                  "a-b_c"])
def test_good_cni_ifname_accepted(name: str) -> None:
    assert from_environ(env(CNI_IFNAME=name), STDIN).ifname == name


def refused(**changes: Any) -> CniError:
    with pytest.raises(CniError) as info:
        networks.parse(config(**changes))
    assert info.value.code == INVALID_CONFIG, info.value
    # Every message can be shown (and sent as JSON) in full.
    json.dumps(info.value.to_dict("1.0.0"))
    return info.value


@pytest.mark.parametrize("name", BAD_IFNAMES, ids=repr)
def test_bad_bridge_is_code_7(name: str) -> None:
    assert "bridge" in refused(bridge=name).msg


@pytest.mark.parametrize("name", ["eth0\n", "eth0\x00x", "é" * 8])
def test_bad_host_interface_is_code_7(name: str) -> None:
    assert "hostInterface" in refused(hostInterface=name).msg


@pytest.mark.parametrize("name", ["net\n", "net\nx", "a" * 65, "-net", ".net", "né"])
def test_bad_network_name_is_code_7(name: str) -> None:
    assert "name" in refused(name=name).msg


def test_network_name_of_64_characters_accepted() -> None:
    assert networks.parse(config(name="n" * 64)).name == "n" * 64


@pytest.mark.parametrize("key", ["dataDir", "logFile"])
@pytest.mark.parametrize("value", ["relative/dir", "data", "./x", "/ok\x00no"])
def test_paths_must_be_absolute(key: str, value: str) -> None:
    assert key in refused(**{key: value}).msg


def test_absolute_paths_accepted() -> None:
    net = networks.parse(config(dataDir="/tmp/x", logFile="/tmp/x.log"))
    assert str(net.state_dir) == "/tmp/x/xvm-network"
    assert net.config.log_file == "/tmp/x.log"


HUGE = int("9" * 4000)  # JSON can carry it (Python's limit is 4300 digits)


@pytest.mark.parametrize("changes", [
    {"vxlanID": HUGE}, {"vxlanID": -HUGE}, {"mtu": HUGE}, {"port": HUGE},
    {"perHostPrefix": HUGE}, {"vxlanID": 10.0}, {"mtu": 1500.5}, {"vxlanID": [HUGE]},
    {"routes": [{"dst": "10.0.0.0/8", "gw": 167772161}]},
    {"routes": [{"dst": "10.0.0.0/8", "gw": HUGE}]},
    {"routes": [{"dst": HUGE}]},
    {"routes": [HUGE]},
], ids=lambda c: next(iter(c)))
def test_numbers_are_code_7_with_a_short_message(changes: dict[str, Any]) -> None:
    err = refused(**changes)
    assert len(err.msg) + len(err.details) < 400, err


def test_message_never_converts_an_over_limit_integer() -> None:
    # Not reachable through JSON (the parser refuses such a number first), but a
    # message must not be the thing that fails.
    err = refused(vxlanID=10 ** 5000)
    assert "too large" in err.msg
