"""Issue 7 item 5 (plugin side): the real thin plugin file (what `make install` puts in
/opt/cni/bin) answers every bad config with the CNI error JSON, never a traceback.

Every input here fails while the config is parsed, before the host is touched, so
these run without root. The config names an agent socket where nothing listens, so a
running agent on this machine can't change the outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from xvmcni import plugin_file


@pytest.fixture(scope="module")
def thin_plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(plugin_file.write(tmp_path_factory.mktemp("bin") / "xvm-cni"))


def _config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "robust", "type": "xvm-cni",
            "hostInterface": "eth0", "vxlanID": 10, "subnet": "10.244.0.0/16",
            "gateway": "10.244.0.1", "dataDir": str(tmp_path / "data"),
            "agentSocket": str(tmp_path / "nobody.sock"), **overrides}


def _run(plugin: str, command: str, stdin: bytes) -> tuple[int, dict[str, Any]]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": "robust1", "CNI_NETNS": "/run/netns/nonexistent-robust",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    proc = subprocess.run([plugin], input=stdin, env=env, capture_output=True, timeout=60,
                          check=False)
    assert "Traceback" not in proc.stderr.decode(errors="replace"), proc.stderr.decode()
    assert proc.stdout.strip(), f"no answer on stdout; stderr: {proc.stderr.decode()}"
    reply = json.loads(proc.stdout)
    assert isinstance(reply, dict)
    return proc.returncode, reply


def _nested(depth: int) -> bytes:
    return b'{"cniVersion": "1.0.0", "x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"])
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_a_decode_error(thin_plugin: str, command: str,
                                              depth: int) -> None:
    """Before: RecursionError traceback and empty stdout (ADD and VERSION)."""
    rc, reply = _run(thin_plugin, command, _nested(depth))
    assert rc == 1 and reply["code"] == 6, reply
    assert "nested too deeply" in reply["msg"]


# JSON text for each value: NaN and Infinity are what Python's json reads as such.
BAD_TIMEOUTS = {"zero": "0", "negative": "-1", "negative-fraction": "-0.5",
                "nan": "NaN", "infinity": "Infinity", "overflowing-float": "1e999",
                "true": "true", "string": '"30"', "2000-digits": "9" * 2000,
                "5000-digits": "9" * 5000, "more-than-an-hour": "3601"}


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "STATUS"])
@pytest.mark.parametrize("value", list(BAD_TIMEOUTS.values()), ids=list(BAD_TIMEOUTS))
def test_unusable_agent_timeout_is_code_7(thin_plugin: str, tmp_path: Path, command: str,
                                          value: str) -> None:
    """Before: ValueError/OverflowError tracebacks (-1, NaN, inf, huge ints), or a DEL
    that went ahead with NaN."""
    text = json.dumps(_config(tmp_path, cniVersion="1.1.0", agentTimeout=12345))
    stdin = text.replace("12345", value).encode()
    rc, reply = _run(thin_plugin, command, stdin)
    assert rc == 1 and reply["code"] == 7, reply
    assert "agentTimeout" in reply["msg"] or "digits" in reply["msg"], reply
    assert not (tmp_path / "data").exists(), "a refused config must not touch the dataDir"


@pytest.mark.parametrize("command", ["ADD", "DEL", "VERSION"])
def test_huge_number_anywhere_is_an_answer(thin_plugin: str, tmp_path: Path,
                                           command: str) -> None:
    stdin = json.dumps(_config(tmp_path, mtu=1)).replace('"mtu": 1', '"mtu": ' + "7" * 6000)
    rc, reply = _run(thin_plugin, command, stdin.encode())
    assert rc == 1 and reply["code"] == 7, reply
