"""The node agent: socket safety, fallbacks, crash recovery, reconcile."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import (
    AGENT,
    INPROCESS_PLUGIN,
    Host,
    agent_op,
    destroy_host,
    ip,
    make_host,
    start_agent,
    stop_agent,
)


@pytest.fixture
def agent_host(thin_host: Host) -> Host:
    start_agent(thin_host)
    return thin_host


def _served(host: Host) -> int:
    return sum(agent_op(host, "status")["agent"]["requests"].values())


def test_socket_is_root_only(agent_host: Host) -> None:
    info = os.stat(agent_host.agent_socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == 0


def test_second_agent_refuses_a_live_socket(agent_host: Host) -> None:
    second = subprocess.run(
        ["nsenter", f"--net={agent_host.path}", AGENT, "--socket", agent_host.agent_socket,
         "--data-dir", str(agent_host.data_dir), "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 1
    assert "already serving" in second.stderr
    assert agent_host.agent is not None and agent_host.agent.poll() is None
    assert agent_op(agent_host, "ping") == {"pong": True}


def test_stopped_agent_falls_back_in_process(agent_host: Host) -> None:
    conf = agent_host.config()
    pod = agent_host.new_pod()
    agent_host.add(conf, "fb1", pod)
    assert _served(agent_host) == 1
    stop_agent(agent_host)
    assert not Path(agent_host.agent_socket).exists()  # removed on clean stop
    added = agent_host.add(conf, "fb2", agent_host.new_pod())   # in-process now
    assert added["ips"][0]["address"]
    assert agent_host.cni("DEL", conf, "fb1", pod).rc == 0
    assert agent_host.cni("DEL", conf, "fb2", "").rc == 0
    assert "xvmbr10" not in agent_host.links()


def test_stale_socket_after_kill_falls_back(agent_host: Host) -> None:
    stop_agent(agent_host, signal.SIGKILL)
    assert Path(agent_host.agent_socket).exists()  # a dead agent leaves its socket
    conf = agent_host.config()
    pod = agent_host.new_pod()
    agent_host.add(conf, "stale", pod)
    assert agent_host.cni("DEL", conf, "stale", pod).rc == 0


def test_hung_agent_gives_try_again_but_del_still_succeeds(agent_host: Host) -> None:
    conf = agent_host.config(agentTimeout=1)
    pod = agent_host.new_pod()
    agent_host.add(conf, "hung", pod)
    assert agent_host.agent is not None
    os.kill(agent_host.agent.pid, signal.SIGSTOP)
    try:
        res = agent_host.cni("ADD", conf, "hung2", agent_host.new_pod())
        assert res.rc == 1 and res.out and res.out["code"] == 11
        assert "try again" in res.out["msg"]
        deleted = agent_host.cni("DEL", conf, "hung", pod)
        assert deleted.rc == 0, deleted.stdout
        assert "xvmbr10" not in agent_host.links()
    finally:
        os.kill(agent_host.agent.pid, signal.SIGCONT)


def test_restart_recreates_missing_network_devices_without_new_addresses(
        agent_host: Host) -> None:
    conf = agent_host.config()
    pod = agent_host.new_pod()
    result = agent_host.add(conf, "rc", pod)
    stop_agent(agent_host)
    ip("-n", agent_host.name, "link", "del", "xvmbr10")   # the operator's accident
    ip("-n", agent_host.name, "link", "del", "xvmvx10")
    start_agent(agent_host)
    links = agent_host.links()
    assert links["xvmbr10"]["address"] == "02:78:76:00:00:0a"
    assert links["xvmvx10"]["master"] == "xvmbr10"
    assert links[result["interfaces"][1]["name"]]["master"] == "xvmbr10"
    ping = agent_host.in_ns(pod, "busybox", "ping", "-c", "1", "-W", "2", "10.244.0.1")
    assert ping.returncode == 0
    check = agent_host.cni("CHECK", dict(conf, prevResult=result), "rc", pod)
    assert check.rc == 0, check.stdout
    assert agent_host.cni("DEL", conf, "rc", pod).rc == 0


def test_restart_releases_containers_whose_netns_is_gone(agent_host: Host) -> None:
    conf = agent_host.config()
    keep, lose = agent_host.new_pod(), agent_host.new_pod()
    agent_host.add(conf, "keep", keep)
    lost = agent_host.add(conf, "lose", lose)
    stop_agent(agent_host)
    name = lose.rsplit("/", 1)[1]
    ip("netns", "del", name)
    agent_host.pods.remove(name)
    start_agent(agent_host)
    assert lost["interfaces"][1]["name"] not in agent_host.links()
    usage = agent_op(agent_host, "status")["networks"][0]
    assert usage["containers"] == 1 and usage["used"] == 1
    assert agent_host.cni("DEL", conf, "keep", keep).rc == 0


def test_sigkill_during_100_adds_leaves_no_duplicate_or_leak(agent_host: Host) -> None:
    conf = agent_host.config("1.1.0")
    pods = [agent_host.new_pod() for _ in range(100)]
    results: dict[int, dict[str, object]] = {}
    failed: list[int] = []

    def add(i: int) -> None:
        res = agent_host.cni("ADD", conf, f"k{i}", pods[i])
        if res.rc == 0 and res.out is not None:
            results[i] = res.out
        else:
            failed.append(i)

    threads = []
    for i in range(100):
        threads.append(threading.Thread(target=add, args=(i,)))
        threads[-1].start()
        if i == 40:
            stop_agent(agent_host, signal.SIGKILL)   # mid-storm
        if i == 60:
            start_agent(agent_host)
    for t in threads:
        t.join()
    assert results, "no ADD survived"
    # The runtime's view: it keeps what succeeded and asks to GC everything else.
    valid = [{"containerID": f"k{i}", "ifname": "eth0"} for i in results]
    gc = agent_host.cni("GC", dict(conf, **{"cni.dev/valid-attachments": valid}), "", "", "")
    assert gc.rc == 0, gc.stdout
    addresses = [str(r["ips"][0]["address"]) for r in results.values()]  # type: ignore[index]
    assert len(addresses) == len(set(addresses)), "duplicate address"
    status = agent_op(agent_host, "status")["networks"][0]
    assert status["used"] == len(results) == status["containers"]
    host_veths = [n for n in agent_host.links() if n.startswith("xvm") and n != "xvmbr10"
                  and n != "xvmvx10"]
    assert len(host_veths) == len(results), "leaked or missing veths"
    for i in list(results)[:: max(1, len(results) // 10)]:
        ping = agent_host.in_ns(pods[i], "busybox", "ping", "-c", "1", "-W", "2", "10.244.0.1")
        assert ping.returncode == 0, f"k{i} lost connectivity"
    for i in range(100):
        if i in failed:
            leftovers = ip("-n", pods[i].rsplit("/", 1)[1], "-o", "link").count("\n")
            assert leftovers == 1, f"k{i} failed but left an interface in its netns"
    gc = agent_host.cni("GC", dict(conf, **{"cni.dev/valid-attachments": []}), "", "", "")
    assert gc.rc == 0 and "xvmbr10" not in agent_host.links()


def test_agent_and_in_process_give_identical_results(agent_host: Host) -> None:
    for version in ("0.2.0", "0.4.0", "1.1.0"):
        conf = agent_host.config(version)
        pod = agent_host.new_pod()
        via_agent = agent_host.add(conf, "same", pod)
        agent_host.plugin, thin = INPROCESS_PLUGIN, agent_host.plugin
        try:
            in_process = agent_host.add(conf, "same", pod)  # idempotent re-ADD
        finally:
            agent_host.plugin = thin
        assert json.dumps(via_agent, sort_keys=True) == json.dumps(in_process, sort_keys=True)
        assert agent_host.cni("DEL", conf, "same", pod).rc == 0


def test_agent_refuses_callers_from_another_netns(agent_host: Host, tmp_path: Path) -> None:
    """A plugin run in some other host namespace must not have its work done in the
    agent's: the agent says so and the plugin runs in-process where it is."""
    other = make_host(tmp_path / "other", address="172.30.0.12/24")
    try:
        conf = agent_host.config()
        conf["dataDir"] = str(other.data_dir)
        other.plugin = agent_host.plugin
        pod = other.new_pod()
        result = other.add(conf, "foreign", pod)
        assert result["ips"][0]["address"].startswith("10.244.12.")  # other's slice
        assert "xvmbr10" in other.links() and "xvmbr10" not in agent_host.links()
        assert _served(agent_host) == 0
        assert other.cni("DEL", conf, "foreign", pod).rc == 0
    finally:
        destroy_host(other)


def test_a_burst_of_adds_is_served_by_the_agent_not_the_fallback(agent_host: Host) -> None:
    """50 plugins connecting at once must queue at the agent (deep listen backlog,
    EAGAIN waited out), not fall back to 50 slow in-process runs."""
    conf = agent_host.config("1.1.0")
    pods = [agent_host.new_pod() for _ in range(50)]
    outcomes: list[int] = []

    def add(i: int) -> None:
        outcomes.append(agent_host.cni("ADD", conf, f"burst{i}", pods[i]).rc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(50)]
    assert agent_host.agent is not None
    # Frozen, the agent accepts nothing: all 50 connections pile up in its backlog, as
    # they would behind a busy accept loop. (With socketserver's default backlog of 5,
    # 45 of them got EAGAIN and ran in-process.)
    os.kill(agent_host.agent.pid, signal.SIGSTOP)
    try:
        for t in threads:
            t.start()
        time.sleep(2)
    finally:
        os.kill(agent_host.agent.pid, signal.SIGCONT)
    for t in threads:
        t.join()
    assert outcomes == [0] * 50
    assert _served(agent_host) == 50, "some ADDs fell back to in-process"
    gc = agent_host.cni("GC", dict(conf, **{"cni.dev/valid-attachments": []}), "", "", "")
    assert gc.rc == 0
