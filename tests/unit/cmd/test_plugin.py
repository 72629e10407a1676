"""cmd.plugin.run(): what the runtime sees on stdout and as exit status.

ADD/DEL/CHECK need root and the handler; here ``dispatch`` is replaced where a test
needs to get past request parsing, so only the plumbing of ``run`` is exercised.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xvmcni.cmd import plugin as cni_main
from xvmcni.cni.request import Request
from xvmcni.cni.result import SUPPORTED_VERSIONS
from xvmcni.errors import (
    DECODE_FAILURE,
    INTERNAL,
    INVALID_ENV,
    UNKNOWN_CONTAINER,
    CniError,
)

SRC = Path(__file__).resolve().parents[2] / "src"
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}


def run(environ: dict[str, str], stdin: bytes = b"") -> tuple[int, dict[str, Any], str]:
    out = io.StringIO()
    status = cni_main.run(environ, stdin, out)
    text = out.getvalue()
    # json.loads refuses trailing data, so this also proves it is a single object.
    return status, json.loads(text), text


def config(version: str = "1.0.0") -> bytes:
    return json.dumps({"cniVersion": version, "name": "xvm-network",
                       "type": "xvm-cni"}).encode()


def add_env(**extra: str) -> dict[str, str]:
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/c1",
            "CNI_IFNAME": "eth0", **extra}


@pytest.fixture
def no_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: Request, runtime: object = None) -> dict[str, Any] | None:
        raise AssertionError(f"dispatch must not run for {request.command}")

    monkeypatch.setattr(cni_main, "dispatch", refuse)


@pytest.mark.usefixtures("no_dispatch")
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_version_answers_in_the_callers_version(version: str) -> None:
    status, reply, _ = run({"CNI_COMMAND": "VERSION"}, config(version))
    assert status == 0
    assert reply == {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


@pytest.mark.usefixtures("no_dispatch")
def test_version_with_empty_stdin() -> None:
    status, reply, _ = run({"CNI_COMMAND": "VERSION"}, b"")
    assert status == 0
    assert reply["supportedVersions"] == list(SUPPORTED_VERSIONS)
    assert reply["cniVersion"] == "0.1.0"


@pytest.mark.usefixtures("no_dispatch")
def test_version_does_not_import_the_command_flow() -> None:
    # VERSION must answer without the kernel side; a broken handler must not matter.
    before = set(sys.modules)
    run({"CNI_COMMAND": "VERSION"}, config())
    heavy = ("xvmcni.commands", "xvmcni.dataplane", "pyroute2")
    assert not {m for m in set(sys.modules) - before if m.startswith(heavy)}


ERRORS: list[tuple[str, dict[str, str], bytes, int]] = [
    ("no-command", {}, config(), INVALID_ENV),
    ("bogus-command", {"CNI_COMMAND": "EXPLODE"}, config(), INVALID_ENV),
    ("no-container", {"CNI_COMMAND": "ADD", "CNI_NETNS": "/n", "CNI_IFNAME": "eth0"}, config(),
     INVALID_ENV),
    ("long-ifname", add_env(CNI_IFNAME="x" * 16), config(), INVALID_ENV),
    ("bad-json", add_env(), b"{oops", DECODE_FAILURE),
    ("json-array", add_env(), b"[]", DECODE_FAILURE),
    ("empty-stdin-add", add_env(), b"", DECODE_FAILURE),
    ("bad-json-version", {"CNI_COMMAND": "VERSION"}, b"{oops", DECODE_FAILURE),
]


@pytest.mark.usefixtures("no_dispatch")
@pytest.mark.parametrize(("environ", "stdin", "code"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_errors_are_one_json_object(environ: dict[str, str], stdin: bytes, code: int) -> None:
    status, reply, text = run(environ, stdin)
    assert status == 1
    assert reply["code"] == code
    assert isinstance(reply["msg"], str) and reply["msg"]
    assert set(reply) <= ERROR_KEYS
    assert {"cniVersion", "code", "msg"} <= set(reply)
    assert "Traceback" not in text


def test_environment_error_carries_the_callers_version() -> None:
    status, reply, _ = run({"CNI_COMMAND": "ADD", "CNI_NETNS": "/n", "CNI_IFNAME": "eth0"},
                           config("0.4.0"))
    assert status == 1
    assert reply["code"] == INVALID_ENV
    assert reply["cniVersion"] == "0.4.0"


def test_dispatch_result_is_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Request] = []

    def fake(request: Request, runtime: object = None) -> dict[str, Any] | None:
        seen.append(request)
        return {"cniVersion": request.cni_version, "ips": []}

    monkeypatch.setattr(cni_main, "dispatch", fake)
    status, reply, _ = run(add_env(), config("0.4.0"))
    assert status == 0
    assert reply == {"cniVersion": "0.4.0", "ips": []}
    assert [r.container_id for r in seen] == ["c1"]


def test_dispatch_returning_nothing_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cni_main, "dispatch", lambda request, runtime=None: None)
    out = io.StringIO()
    assert cni_main.run(add_env(CNI_COMMAND="DEL"), config(), out) == 0
    assert out.getvalue() == ""


def test_cni_error_from_dispatch_uses_the_callers_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(request: Request, runtime: object = None) -> dict[str, Any] | None:
        raise CniError(UNKNOWN_CONTAINER, "no such container", "c1")

    monkeypatch.setattr(cni_main, "dispatch", fail)
    status, reply, _ = run(add_env(CNI_COMMAND="CHECK"), config("0.4.0"))
    assert status == 1
    assert reply == {"cniVersion": "0.4.0", "code": UNKNOWN_CONTAINER,
                     "msg": "no such container", "details": "c1"}


def test_unexpected_exception_becomes_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(request: Request, runtime: object = None) -> dict[str, Any] | None:
        raise KeyError("surprise")

    monkeypatch.setattr(cni_main, "dispatch", crash)
    status, reply, text = run(add_env(), config("1.1.0"))
    assert status == 1
    assert reply["cniVersion"] == "1.1.0"
    assert reply["code"] == INTERNAL
    assert "surprise" in reply["details"]
    assert "Traceback" not in text


def _run_process(environ: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), clean.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "xvmcni.cmd.plugin"], input=stdin,
                          env={**clean, **environ}, capture_output=True, timeout=60,
                          check=False)


def test_executable_version() -> None:
    proc = _run_process({"CNI_COMMAND": "VERSION"}, config("1.0.0"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)
    assert proc.stderr == b""


def test_executable_error_is_json_without_traceback() -> None:
    proc = _run_process({"CNI_COMMAND": "ADD"}, b"{broken")
    assert proc.returncode == 1
    reply = json.loads(proc.stdout)
    assert reply["code"] == DECODE_FAILURE
    assert b"Traceback" not in proc.stderr
