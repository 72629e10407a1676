"""A damaged store does not take the host down (issue 7 item 4): a corrupt ipam.db is
code 5 naming the file for every command; the real xvm-cnid starts, binds its socket,
serves the other networks, shows the broken one as not ready with the reason, and
still answers /metrics; ``xvmctl ipam rebuild`` recovers the registry from the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xvmcni import plugin_file

from .conftest import Host, agent_op, destroy_host, ip, make_host, start_agent

XVMCTL = str(Path(sys.executable).with_name("xvmctl"))
METRICS_PORT = 9472  # inside the simulated host's own namespace: no clash possible


def corrupt(db: Path) -> None:
    """Garbage where the pages were (a bad disk, a botched restore), as a new file: an
    agent holding the old one open would otherwise go on reading its own WAL."""
    size = max(db.stat().st_size, 8192)
    garbage = db.with_name("garbage")
    garbage.write_bytes(os.urandom(64) + b"\xde\xad" * (size // 2))
    os.replace(garbage, db)
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def registry_file(host: Host, network: str = "xvm-network") -> Path:
    return host.data_dir / network / "ipam.db"


def test_corrupt_store_is_code_5_naming_the_file(host: Host) -> None:
    conf = host.config("1.1.0")
    pod = host.new_pod()
    host.add(conf, "c1", pod)
    db = registry_file(host)
    corrupt(db)
    before = host.snapshot()
    for command, container, netns in (("DEL", "c1", pod), ("ADD", "c2", host.new_pod()),
                                      ("CHECK", "c1", pod)):
        extra = {"prevResult": {"cniVersion": "1.1.0", "ips": []}} if command == "CHECK" \
            else {}
        res = host.cni(command, {**conf, **extra}, container, netns)
        assert res.rc == 1 and res.out is not None, (command, res.stdout, res.stderr)
        assert res.out["code"] == 5, (command, res.out)
        assert str(db) in res.out["msg"], res.out
        assert "Traceback" not in res.stderr
    gc = host.cni("GC", dict(conf, **{"cni.dev/valid-attachments": []}), "", "", "")
    assert gc.rc == 1 and gc.out is not None and gc.out["code"] == 5, gc.out
    status = host.cni("STATUS", conf, "", "", "")
    assert status.rc == 1 and status.out is not None and status.out["code"] in (5, 50)
    assert str(db) in status.out["msg"] + status.out.get("details", "")
    after = host.snapshot()
    after["pod_links"] = {k: v for k, v in after["pod_links"].items()
                          if k in before["pod_links"]}
    assert after == before  # nothing was touched, the live pod's veth included


@pytest.fixture
def two_networks(tmp_path: Path) -> Iterator[Host]:
    """A host with two networks that have pods, the first one's store corrupt, and
    no agent yet."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    host = make_host(tmp_path)
    try:
        host.add(host.config(), "a1", host.new_pod())
        host.add(other(host), "b1", host.new_pod())
        corrupt(registry_file(host))
        yield host
    finally:
        destroy_host(host)


def other(host: Host) -> dict[str, Any]:
    return host.config(name="other-net", vxlanID=11, subnet="10.245.0.0/16",
                       gateway="10.245.0.1")


def metrics(host: Host) -> str:
    code = ("import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=10).read().decode())")
    deadline = time.monotonic() + 10
    while True:
        res = host.in_ns(host.path, sys.executable, "-c", code)
        if res.returncode == 0 or time.monotonic() > deadline:
            assert res.returncode == 0, res.stderr
            return res.stdout
        time.sleep(0.1)


def test_agent_serves_the_healthy_network(two_networks: Host, tmp_path: Path) -> None:
    host = two_networks
    # The real xvm-cnid: reconcile at start must not keep it from binding its socket.
    start_agent(host, "--metrics-port", str(METRICS_PORT))
    assert host.agent is not None and host.agent.poll() is None
    status = agent_op(host, "status")
    rows = {n["name"]: n for n in status["networks"]}
    assert rows["xvm-network"]["ready"] is False
    assert str(registry_file(host)) in rows["xvm-network"]["reason"]
    assert "damaged" in rows["xvm-network"]["reason"]
    assert rows["other-net"]["ready"] is True and rows["other-net"]["containers"] == 1
    # The operator's view.
    shown = subprocess.run([XVMCTL, "status", "--socket", host.agent_socket],
                           capture_output=True, text=True, timeout=30, check=False)
    assert shown.returncode == 0, shown.stderr
    line = next(ln for ln in shown.stdout.splitlines() if "xvm-network" in ln)
    assert "NO" in line and "damaged" in line
    # Metrics answer, with the healthy network's gauges.
    text = metrics(host)
    assert 'xvmcni_containers{network="other-net"} 1.0' in text
    # A periodic pass does not stop at the broken network either.
    gc = agent_op(host, "gc")
    reports = {r["name"]: r for r in gc["networks"]}
    assert "damaged" in reports["xvm-network"]["error"]
    assert reports["other-net"]["error"] == ""
    # CNI calls through the agent: the healthy network works, the broken one is 5.
    host.plugin = str(plugin_file.write(tmp_path / "bin" / "xvm-cni"))
    added = host.add(other(host), "b2", host.new_pod())
    assert added["ips"][0]["address"].startswith("10.245.")
    broken = host.cni("ADD", host.config(), "a2", host.new_pod())
    assert broken.out is not None and broken.out["code"] == 5
    assert sum(agent_op(host, "status")["agent"]["requests"].values()) == 2
    assert host.agent.poll() is None
    assert "xvmbr11" in ip("-n", host.name, "link", "show")


def unmark(host: Host, device: str) -> None:
    ip("-n", host.name, "link", "set", "dev", device, "alias", "")
    assert "alias" not in ip("-n", host.name, "-d", "link", "show", device)


def rebuild(host: Host, *extra: str) -> subprocess.CompletedProcess[str]:
    return host.in_ns(host.path, XVMCTL, "ipam", "rebuild", "--network", "xvm-network",
                      "--data-dir", str(host.data_dir), *extra)


def recorded(host: Host) -> dict[tuple[str, str], Any]:
    from xvmcni.state.attachments import AttachmentRegistry

    with AttachmentRegistry(registry_file(host)) as registry:
        return {a.key: a for a in registry.all()}


def test_rebuild_from_the_live_host(host: Host) -> None:
    conf = host.config("1.1.0")
    pods = {c: host.new_pod() for c in ("named", "unnamed", "withmac")}
    results = {c: host.add(conf, c, p, args="MAC=02:aa:bb:cc:dd:07" if c == "withmac" else "")
               for c, p in pods.items()}
    address = {c: r["ips"][0]["address"] for c, r in results.items()}
    device = {c: r["interfaces"][1]["name"] for c, r in results.items()}
    # ADD marks the host veth with its owner; the rebuild reads the container ID there.
    assert "alias xvm-cni:xvm-network:named:eth0" in ip("-n", host.name, "-d", "link", "show",
                                                        device["named"])
    # Devices an xvm-cni without marks made have no alias.
    for container in ("unnamed", "withmac"):
        unmark(host, device[container])
    corrupt(registry_file(host))
    assert (host.cni("DEL", conf, "named", pods["named"]).out or {}).get("code") == 5

    done = rebuild(host, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert Path(report["kept_as"]).name.startswith("ipam.db.corrupt-")
    assert Path(report["kept_as"]).exists() and report["skipped"] == []
    records = recorded(host)
    # Without an alias the container ID is unknown: recorded by device.
    unnamed_key = (f"rebuilt:{device['unnamed']}", "eth0")
    mac_key = (f"rebuilt:{device['withmac']}", "eth0")
    assert set(records) == {("named", "eth0"), mac_key, unnamed_key}
    for key, container in ((("named", "eth0"), "named"), (unnamed_key, "unnamed"),
                           (mac_key, "withmac")):
        assert [str(a) for a in records[key].addresses] == [address[container]]
        assert records[key].netns == pods[container]
        assert records[key].host_ifname == device[container]
    assert records[mac_key].mac == "02:aa:bb:cc:dd:07"
    assert records[("named", "eth0")].mac == ""

    # Nothing held is handed out again, the requested MAC stays taken.
    fresh = host.add(conf, "fresh", host.new_pod())
    assert fresh["ips"][0]["address"] not in address.values()
    thief = host.cni("ADD", conf, "thief", host.new_pod(), args="MAC=02:aa:bb:cc:dd:07")
    assert thief.out is not None and thief.out["code"] == 7
    # CHECK and DEL work again; the unnamed attachment is found by its device.
    check = host.cni("CHECK", dict(conf, prevResult=results["named"]), "named", pods["named"])
    assert check.rc == 0, check.stdout
    assert host.cni("DEL", conf, "named", pods["named"]).rc == 0
    assert host.cni("DEL", conf, "unnamed", pods["unnamed"]).rc == 0
    assert set(recorded(host)) == {mac_key, ("fresh", "eth0")}
    assert device["unnamed"] not in host.links()
    # A healthy registry is left alone.
    again = rebuild(host)
    assert again.returncode == 1 and "nothing to rebuild" in again.stderr
    for c in ("withmac", "fresh"):
        assert host.cni("DEL", conf, c, "").rc == 0
    assert "xvmbr10" not in host.links()


def test_unnamed_attachment_is_named_by_gc(host: Host) -> None:
    conf = host.config("1.1.0")
    pod = host.new_pod()
    result = host.add(conf, "gckeep", pod)
    unmark(host, result["interfaces"][1]["name"])
    corrupt(registry_file(host))
    assert rebuild(host).returncode == 0
    assert set(recorded(host)) == {(f"rebuilt:{result['interfaces'][1]['name']}", "eth0")}
    valid = [{"containerID": "gckeep", "ifname": "eth0"}]
    gc = host.cni("GC", dict(conf, **{"cni.dev/valid-attachments": valid}), "", "", "")
    assert gc.rc == 0, gc.stdout
    assert set(recorded(host)) == {("gckeep", "eth0")}
    assert result["interfaces"][1]["name"] in host.links()
    assert host.cni("DEL", conf, "gckeep", pod).rc == 0
