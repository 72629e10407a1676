"""GC and STATUS with a delegated IPAM plugin, as spec 1.1 words them (issue 7 item
10), through the real plugin, in-process and through the agent: GC is passed on to the
IPAM plugin, STATUS runs the plugin's STATUS and reports its not-ready answer as 50, a
plugin older than STATUS (Debian's host-local 1.1.1) does not make STATUS fail.

The IPAM plugin here is a small recording double written by the test: it logs every
call (command, container, what the config carried) and answers as told."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from xvmcni.lab import invoke

from .conftest import Host, Outcome

HOST_LOCAL = "/usr/lib/cni/host-local"

RECORDING_IPAM = """#!{python}
import json, os, sys

conf = json.loads(sys.stdin.read() or "{{}}")
ipam = conf.get("ipam", {{}})
command = os.environ.get("CNI_COMMAND", "")
with open(ipam["log"], "a") as log:
    log.write(json.dumps({{
        "command": command,
        "container": os.environ.get("CNI_CONTAINERID", ""),
        "ifname": os.environ.get("CNI_IFNAME", ""),
        "valid": conf.get("cni.dev/valid-attachments", "absent"),
    }}) + "\\n")
version = conf.get("cniVersion", "1.0.0")


def fail(code, msg):
    print(json.dumps({{"cniVersion": version, "code": code, "msg": msg}}))
    sys.exit(1)


mode = ipam.get("mode", "ready")
if mode == "old" and command in ("STATUS", "GC"):
    fail(4, "unknown CNI_COMMAND: " + command)  # what a plugin older than CNI 1.1 says
if command == "ADD":
    counter = ipam["log"] + ".next"
    n = int(open(counter).read()) if os.path.exists(counter) else 10
    open(counter, "w").write(str(n + 1))
    print(json.dumps({{"cniVersion": version, "ips": [{{"address": "10.244.60.%d/16" % n}}]}}))
elif command == "STATUS" and mode == "notready":
    fail(50, "address pool offline")
elif command == "VERSION":
    print(json.dumps({{"cniVersion": version, "supportedVersions": ["1.0.0", "1.1.0"]}}))
"""


@pytest.fixture
def recipam(tmp_path: Path) -> Path:
    """The recording plugin's directory (for CNI_PATH)."""
    bindir = tmp_path / "ipam-bin"
    bindir.mkdir()
    script = bindir / "recipam"
    script.write_text(RECORDING_IPAM.format(python=sys.executable))
    script.chmod(0o755)
    return bindir


def config(host: Host, tmp_path: Path, mode: str = "ready") -> dict[str, Any]:
    return host.config("1.1.0", ipam={"type": "recipam", "mode": mode,
                                      "log": str(tmp_path / "recipam.log")})


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "recipam.log"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def run(host: Host, bindir: Path, command: str, conf: dict[str, Any], container: str = "",
        netns: str = "") -> Outcome:
    env = invoke.cni_env(command, container, netns, cni_path=f"{bindir}:{invoke.CNI_PATH}",
                         path=os.environ.get("PATH", invoke.DEFAULT_PATH))
    return host.cni(command, conf, container, netns, env=env)


def test_gc_is_passed_on_to_the_ipam_plugin(host: Host, tmp_path: Path,
                                            recipam: Path) -> None:
    conf = config(host, tmp_path)
    keep, drop = host.new_pod(), host.new_pod()
    for container, pod in (("keep", keep), ("drop", drop)):
        assert run(host, recipam, "ADD", conf, container, pod).rc == 0
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    gc = run(host, recipam, "GC", dict(conf, **{"cni.dev/valid-attachments": valid}))
    assert gc.rc == 0 and gc.stdout == "", gc.stdout
    seen = calls(tmp_path)
    # The stale attachment's addresses are released with the plugin, then GC itself is
    # passed on with the same valid list, so it drops what we never recorded.
    assert [(c["container"], c["ifname"]) for c in seen if c["command"] == "DEL"] == \
        [("drop", "eth0")]
    forwarded = [c for c in seen if c["command"] == "GC"]
    assert len(forwarded) == 1 and forwarded[0]["valid"] == valid
    assert not any(c["command"] == "DEL" and c["container"] == "keep" for c in seen)
    assert run(host, recipam, "DEL", conf, "keep", keep).rc == 0


def test_gc_with_a_null_list_releases_everything_and_is_passed_on(
        host: Host, tmp_path: Path, recipam: Path) -> None:
    conf = config(host, tmp_path)
    assert run(host, recipam, "ADD", conf, "n1", host.new_pod()).rc == 0
    gc = run(host, recipam, "GC", dict(conf, **{"cni.dev/valid-attachments": None}))
    assert gc.rc == 0, gc.stdout
    seen = calls(tmp_path)
    assert [c["container"] for c in seen if c["command"] == "DEL"] == ["n1"]
    assert [c["valid"] for c in seen if c["command"] == "GC"] == [None]
    assert "xvmbr10" not in host.links()


def test_status_runs_the_plugins_status(host: Host, tmp_path: Path, recipam: Path) -> None:
    ready = run(host, recipam, "STATUS", config(host, tmp_path))
    assert ready.rc == 0 and ready.stdout == "", ready.stdout
    assert [c["command"] for c in calls(tmp_path)] == ["STATUS"]
    notready = run(host, recipam, "STATUS", config(host, tmp_path, "notready"))
    assert notready.rc == 1 and notready.out is not None
    assert notready.out["code"] == 50, notready.out
    assert "address pool offline" in notready.out["msg"]
    assert [c["command"] for c in calls(tmp_path)] == ["STATUS", "STATUS"]


def test_a_plugin_older_than_status_and_gc(host: Host, tmp_path: Path,
                                          recipam: Path) -> None:
    conf = config(host, tmp_path, "old")
    status = run(host, recipam, "STATUS", conf)
    assert status.rc == 0, status.stdout
    pod = host.new_pod()
    assert run(host, recipam, "ADD", conf, "o1", pod).rc == 0
    # Our own GC still happens; the plugin's "unknown command" does not fail it.
    gc = run(host, recipam, "GC", dict(conf, **{"cni.dev/valid-attachments": []}))
    assert gc.rc == 0, gc.stdout
    assert "xvmbr10" not in host.links()
    assert [c["command"] for c in calls(tmp_path)] == ["STATUS", "ADD", "DEL", "GC"]


def test_status_is_50_when_the_ipam_plugin_is_missing(host: Host, tmp_path: Path,
                                                       recipam: Path) -> None:
    conf = config(host, tmp_path)
    conf["ipam"]["type"] = "no-such-ipam"
    missing = run(host, recipam, "STATUS", conf)
    assert missing.rc == 1 and missing.out is not None and missing.out["code"] == 50
    assert "no-such-ipam" in missing.out["msg"]


@pytest.mark.skipif(not os.access(HOST_LOCAL, os.X_OK),
                    reason="containernetworking-plugins is not installed")
def test_debian_host_local_predates_status_and_gc(host: Host) -> None:
    """Debian 12's host-local (plugins 1.1.1) answers STATUS and GC with "unknown
    CNI_COMMAND" (code 4): neither may fail."""
    ipam = {"type": "host-local", "dataDir": str(host.data_dir / "host-local"),
            "ranges": [[{"subnet": "10.244.0.0/16", "rangeStart": "10.244.50.10",
                         "rangeEnd": "10.244.50.20"}]]}
    conf = host.config("1.1.0", subnet=None, ipam=ipam)
    status = host.cni("STATUS", conf, "", "", "")
    assert status.rc == 0, status.stdout
    gc = host.cni("GC", dict(conf, **{"cni.dev/valid-attachments": []}), "", "", "")
    assert gc.rc == 0, gc.stdout


def test_status_does_not_count_static_addresses_outside_the_range(host: Host) -> None:
    conf = host.config("1.1.0", rangeStart="10.244.9.1", rangeEnd="10.244.9.1",
                       staticIPs="subnet")
    static = host.new_pod()
    host.add(conf, "static", static, args="IP=10.244.200.7")
    assert host.cni("STATUS", conf, "", "", "").rc == 0  # the range is still free
    pod = host.new_pod()
    host.add(conf, "ranged", pod)
    full = host.cni("STATUS", conf, "", "", "")
    assert full.rc == 1 and full.out is not None and full.out["code"] == 50
    assert host.cni("DEL", conf, "ranged", pod).rc == 0
    assert host.cni("DEL", conf, "static", static).rc == 0
