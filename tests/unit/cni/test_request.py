"""cni.request: CNI_* environment and stdin into one validated Request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from xvmcni.cni.request import IFNAME_MAX, Request, from_environ, parse_cni_args
from xvmcni.errors import DECODE_FAILURE, INVALID_ENV, CniError

CONFIG: dict[str, Any] = {"cniVersion": "1.0.0", "name": "xvm-network", "type": "xvm-cni"}
STDIN = json.dumps(CONFIG).encode()


def env(**overrides: str | None) -> dict[str, str]:
    base = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "3f2a9c",
        "CNI_NETNS": "/var/run/netns/c1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/libexec/cni",
    }
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def test_full_add_request() -> None:
    req = from_environ(env(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.0.9"), STDIN)
    assert req.command == "ADD"
    assert req.container_id == "3f2a9c"
    assert req.netns == "/var/run/netns/c1"
    assert req.ifname == "eth0"
    assert req.path == ["/opt/cni/bin", "/usr/libexec/cni"]
    assert req.config == CONFIG
    assert req.cni_version == "1.0.0"
    assert req.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "x", "IP": "10.244.0.9"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.0.9",
         {"IgnoreUnknown": "1", "K8S_POD_NAME": "x", "IP": "10.244.0.9"}),
        ("K8S_POD_NAMESPACE=default;", {"K8S_POD_NAMESPACE": "default"}),
        (";;A=1;;", {"A": "1"}),
        ("EMPTY=", {"EMPTY": ""}),
        ("TOKEN=a=b=c", {"TOKEN": "a=b=c"}),  # only the first '=' separates
        ("A=1;A=2", {"A": "2"}),
        ("SomethingNobodyKnows=42", {"SomethingNobodyKnows": "42"}),
    ],
)
def test_parse_cni_args(raw: str, expected: dict[str, str]) -> None:
    assert parse_cni_args(raw) == expected


@pytest.mark.parametrize("raw", ["justaword", "=value", "A=1;broken"])
def test_parse_cni_args_rejects_entries_without_key(raw: str) -> None:
    with pytest.raises(CniError) as info:
        parse_cni_args(raw)
    assert info.value.code == INVALID_ENV
    assert "CNI_ARGS" in info.value.msg


BAD_ENV: list[tuple[str, dict[str, str | None], str]] = [
    ("no-command", {"CNI_COMMAND": None}, "CNI_COMMAND"),
    ("empty-command", {"CNI_COMMAND": ""}, "CNI_COMMAND"),
    ("bogus-command", {"CNI_COMMAND": "FROB"}, "FROB"),
    ("lowercase-command", {"CNI_COMMAND": "add"}, "add"),
    ("no-container-id", {"CNI_CONTAINERID": None}, "CNI_CONTAINERID"),
    ("no-ifname", {"CNI_IFNAME": None}, "CNI_IFNAME"),
    ("ifname-16-chars", {"CNI_IFNAME": "a" * 16}, "a" * 16),
    ("ifname-slash", {"CNI_IFNAME": "eth/0"}, "eth/0"),
    ("ifname-colon", {"CNI_IFNAME": "eth0:1"}, "eth0:1"),
    ("ifname-space", {"CNI_IFNAME": "eth 0"}, "eth 0"),
    ("ifname-dot", {"CNI_IFNAME": "."}, "'.'"),
    ("ifname-dotdot", {"CNI_IFNAME": ".."}, "'..'"),
    ("add-without-netns", {"CNI_NETNS": ""}, "CNI_NETNS"),
    ("check-without-netns", {"CNI_COMMAND": "CHECK", "CNI_NETNS": None}, "CNI_NETNS"),
    ("del-without-container", {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": ""},
     "CNI_CONTAINERID"),
    ("bad-cni-args", {"CNI_ARGS": "IgnoreUnknown"}, "CNI_ARGS"),
]


@pytest.mark.parametrize(("overrides", "fragment"), [b[1:] for b in BAD_ENV],
                         ids=[b[0] for b in BAD_ENV])
def test_bad_environment(overrides: dict[str, str | None], fragment: str) -> None:
    with pytest.raises(CniError) as info:
        from_environ(env(**overrides), STDIN)
    assert info.value.code == INVALID_ENV
    assert fragment in str(info.value)


def test_ifname_of_max_length_accepted() -> None:
    name = "a" * IFNAME_MAX
    assert IFNAME_MAX == 15
    assert from_environ(env(CNI_IFNAME=name), STDIN).ifname == name


@pytest.mark.parametrize("stdin", [b"{not json", b"", b"   ", b"[1, 2]", b'"text"',
                                   b"\xff\xfe{}", b"null"])
def test_bad_stdin_for_add(stdin: bytes) -> None:
    with pytest.raises(CniError) as info:
        from_environ(env(), stdin)
    assert info.value.code == DECODE_FAILURE


def test_malformed_json_reported_even_for_version() -> None:
    with pytest.raises(CniError) as info:
        from_environ({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": ')
    assert info.value.code == DECODE_FAILURE
    assert "JSON" in info.value.msg


def test_del_with_empty_netns_accepted() -> None:
    req = from_environ(env(CNI_COMMAND="DEL", CNI_NETNS=""), STDIN)
    assert req.command == "DEL"
    assert req.netns == ""
    req = from_environ(env(CNI_COMMAND="DEL", CNI_NETNS=None), STDIN)
    assert req.netns == ""


@pytest.mark.parametrize("stdin", [b"", b"\n"])
def test_version_with_empty_stdin_accepted(stdin: bytes) -> None:
    req = from_environ({"CNI_COMMAND": "VERSION"}, stdin)
    assert req.command == "VERSION"
    assert req.config == {}
    assert req.cni_version == "0.1.0"


@pytest.mark.parametrize("command", ["VERSION", "GC", "STATUS"])
def test_commands_without_an_attachment_need_no_container(command: str) -> None:
    req = from_environ({"CNI_COMMAND": command}, STDIN)
    assert req.command == command
    assert req.container_id == ""


@pytest.mark.parametrize(("config", "expected"), [
    ({"cniVersion": "0.4.0"}, "0.4.0"),
    ({}, "0.1.0"),
    # Not a string: no version to repeat, so errors use the newest stable format (as
    # the thin plugin and the agent answer too).
    ({"cniVersion": 1}, "1.0.0"),
])
def test_cni_version_property(config: dict[str, Any], expected: str) -> None:
    assert Request(command="VERSION", config=config).cni_version == expected


def test_request_json_round_trip() -> None:
    req = from_environ(env(CNI_ARGS="K8S_POD_NAME=web-0"), STDIN)
    again = Request.from_json(req.to_json())
    assert again == req
