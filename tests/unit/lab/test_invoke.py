"""Invoking a plugin as a runtime does: environment, stdin, and reading its answer.

These run a small fake plugin in the test's own namespace (``host=None``), so they
need no root; running inside a simulated host is covered by tests/integration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xvmcni.lab import invoke

FAKE = """#!/bin/sh
# Echo what a plugin gets: CNI_* variables and stdin, as a JSON result.
stdin=$(cat)
case "$CNI_COMMAND" in
ADD) printf '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"}],"env":"%s","stdin":%s}' \
        "$CNI_CONTAINERID $CNI_NETNS $CNI_IFNAME $XVM_CNID_SOCKET" "$stdin" ;;
DEL) ;;
FAIL) printf '{"code":7,"msg":"bad thing","details":"why"}'; echo oops >&2; exit 1 ;;
JUNK) echo 'not json'; exit 2 ;;
esac
"""


@pytest.fixture
def fake(tmp_path: Path) -> str:
    path = tmp_path / "fake-plugin"
    path.write_text(FAKE)
    path.chmod(0o755)
    return str(path)


def test_env_is_what_a_runtime_sets() -> None:
    env = invoke.cni_env("ADD", "c1", "/run/netns/p", agent_socket="/s")
    assert env == {"PATH": invoke.DEFAULT_PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                   "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0", "CNI_ARGS": "",
                   "CNI_PATH": invoke.CNI_PATH, "XVM_CNID_SOCKET": "/s"}
    assert "XVM_CNID_SOCKET" not in invoke.cni_env("DEL", "c1", "")


def test_add_result_is_parsed_and_the_plugin_got_env_and_stdin(fake: str) -> None:
    config = {"cniVersion": "1.0.0", "name": "n"}
    env = invoke.cni_env("ADD", "c9", "/run/netns/p9", agent_socket="/a.sock")
    call = invoke.run(fake, json.dumps(config).encode(), env)
    assert call.ok and call.rc == 0 and call.error is None
    assert call.address == "10.0.0.5/24"
    assert call.result is not None
    assert call.result["env"] == "c9 /run/netns/p9 eth0 /a.sock"
    assert call.result["stdin"] == config
    assert call.ns > 0


def test_empty_del_answer_is_ok(fake: str) -> None:
    call = invoke.run(fake, b"{}", invoke.cni_env("DEL", "c9", ""))
    assert call.ok and call.json() is None and call.result is None


def test_cni_error_object_is_read_from_stdout(fake: str) -> None:
    call = invoke.run(fake, b"{}", invoke.cni_env("FAIL", "c9", ""))
    assert not call.ok
    assert call.error == invoke.CniErrorReply(7, "bad thing", "why")
    assert call.stderr.strip() == "oops"
    assert "rc=1 code=7 bad thing oops" in call.describe()


def test_non_json_failure_keeps_the_raw_output(fake: str) -> None:
    call = invoke.run(fake, b"{}", invoke.cni_env("JUNK", "c9", ""))
    assert call.error == invoke.CniErrorReply(None, "not json")
    with pytest.raises(ValueError):
        call.json()


@pytest.mark.parametrize(("command", "stdout", "ok"), [
    ("ADD", '{"ips": []}', False),                      # a result without an address
    ("ADD", '{"code": 11, "msg": "x"}', False),         # an error object with exit 0
    ("CHECK", "", True),
    ("VERSION", '{"supportedVersions": []}', True),
    ("DEL", "[1]", False),                              # JSON, but not an object
])
def test_ok_needs_exit_zero_and_a_sensible_answer(command: str, stdout: str, ok: bool) -> None:
    assert invoke.Invocation(command, 0, stdout, "", 1).ok is ok
