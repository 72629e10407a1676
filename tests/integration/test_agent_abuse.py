"""The agent under a hostile or unlucky caller (issue 7 items 2 and 8): it never acts
after its caller gave up, and its socket holds under slow, oversized, numerous and
foreign clients."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xvmcni.agent.listener import DEFAULT_MAX_CONNECTIONS
from xvmcni.cni import wire

from .conftest import Host, agent_op, start_agent

CLIENT = str(Path(__file__).with_name("agent_client.py"))
METRICS_PORT = 9472   # the simulated host's own loopback: no clash with anything


def _client(host: Host, *argv: str, stdin: bytes = b"") -> dict[str, Any]:
    proc = subprocess.run(["nsenter", f"--net={host.path}", sys.executable, CLIENT, *argv],
                          input=stdin, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _request(host: Host, command: str, config: dict[str, Any], container: str,
             netns: str = "", deadline: float | None = None) -> bytes:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni:/opt/cni/bin",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return wire.encode_request(env, json.dumps(config),
                               deadline if deadline is not None else time.time() + 60)


def _requests_served(host: Host) -> dict[str, int]:
    counts: dict[str, int] = agent_op(host, "status")["agent"]["requests"]
    return counts


def _blocker_config(host: Host, **overrides: Any) -> dict[str, Any]:
    """A second network on the same host, whose lock the test holds to pin workers."""
    return host.config(name="xvm-block", vxlanID=20, subnet="10.245.0.0/16",
                       gateway="10.245.0.1", **overrides)


@contextlib.contextmanager
def _network_locked(host: Host, name: str) -> Iterator[None]:
    """Hold the network's flock, as a long operation of another process would."""
    state = host.data_dir / name
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _wait_for_log(host: Host, text: str) -> None:
    log = host.data_dir.parent / "agent.log"
    deadline = time.monotonic() + 30
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the agent never logged {text!r}"
        time.sleep(0.05)


def _has_attachment(host: Host, config: dict[str, Any], container: str) -> bool:
    db = host.data_dir / config["name"] / "ipam.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT 1 FROM attachments WHERE container_id = ?",
                            (container,)).fetchall()
    return bool(rows)


# --- issue 7 item 2 --------------------------------------------------------------------------

def test_a_del_the_caller_gave_up_on_never_runs_after_a_re_add(thin_host: Host) -> None:
    """The replay: one worker, busy; a DEL times out (code 11) and the plugin does it
    in-process; the runtime re-ADDs the same container ID; when the worker frees up, the
    agent must not run the stale DEL against the new attachment. (Before: it did, and the
    re-ADDed container lost its veth and address.)"""
    host = thin_host
    start_agent(host, "--workers", "1", "--log-level", "debug")
    conf = host.config("1.1.0", agentTimeout=1)
    blocker = _blocker_config(host, agentTimeout=60)
    first_pod = host.new_pod()
    added = host.add(conf, "replay", first_pod)
    veth = added["interfaces"][1]["name"]
    with _network_locked(host, "xvm-block"):
        # The single worker takes a DEL on the other network and waits for its lock.
        pinned = subprocess.Popen(
            ["nsenter", f"--net={host.path}", host.plugin],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": os.environ["PATH"], "CNI_COMMAND": "DEL",
                 "CNI_CONTAINERID": "blocker", "CNI_NETNS": "", "CNI_IFNAME": "eth0",
                 "CNI_PATH": "/usr/lib/cni:/opt/cni/bin"})
        assert pinned.stdin is not None
        pinned.stdin.write(json.dumps(blocker).encode())
        pinned.stdin.close()
        _wait_for_log(host, "container=blocker")
        # The runtime's DEL: queued behind the pinned worker, given up after 1 s.
        deleted = host.cni("DEL", conf, "replay", first_pod)
        assert deleted.rc == 0, deleted.stdout   # done in-process by the plugin
        assert veth not in host.links()
        # The runtime's re-ADD (podman restart), served while the agent is stuck: here
        # by the in-process plugin, as a second worker would.
        in_process = dict(conf, agentSocket=str(host.data_dir.parent / "nobody.sock"))
        again = host.add(in_process, "replay", host.new_pod())
        assert again["interfaces"][1]["name"] == veth
    try:
        assert pinned.wait(timeout=60) == 0, pinned.stdout.read() if pinned.stdout else ""
    finally:
        if pinned.stdout is not None:
            pinned.stdout.close()
        if pinned.stderr is not None:
            pinned.stderr.close()
    # Anything still queued in the agent has run once this request, queued after it, is
    # answered.
    assert host.cni("DEL", dict(conf, agentTimeout=60), "unrelated", "").rc == 0
    assert veth in host.links(), "the stale DEL ran and removed the re-ADDed container"
    assert _has_attachment(host, conf, "replay")
    assert "DEL not started" in (host.data_dir.parent / "agent.log").read_text()
    assert host.cni("DEL", dict(conf, agentTimeout=60), "replay", "").rc == 0


def test_work_already_running_finishes_and_the_answer_says_so(thin_host: Host) -> None:
    """A request a worker has started can't be stopped half-way: at the caller's deadline
    the agent answers code 11 saying it still runs (the plugin then repeats a DEL
    in-process, under the same lock, after it). Before: the caller got nothing until
    the agent's own timeout."""
    host = thin_host
    start_agent(host)
    conf = host.config()
    with _network_locked(host, "xvm-network"):
        out = _client(host, "raw", host.agent_socket,
                      stdin=_request(host, "DEL", conf, "running",
                                     deadline=time.time() + 1.5))
    reply = out["reply"]
    assert reply["exit"] == 1 and reply["code"] == 11, reply
    assert "still running" in json.loads(reply["stdout"])["msg"]
    assert agent_op(host, "ping") == {"pong": True}


# --- issue 7 item 8 --------------------------------------------------------------------------

def test_a_client_trickling_its_request_is_cut_off(thin_host: Host) -> None:
    """Before: each recv waited up to 10 s, so a byte every second was served."""
    host = thin_host
    start_agent(host)
    conf = host.config()
    request = _request(host, "ADD", conf, "trickle", host.new_pod())
    out = _client(host, "slow", host.agent_socket, "6", "1", stdin=request)
    assert out["reply"] is not None and "error" in out["reply"], out
    assert "not complete" in out["reply"]["error"]
    assert not (host.data_dir / "xvm-network" / "ipam.db").exists()
    assert agent_op(host, "ping") == {"pong": True}


def test_an_oversized_request_runs_in_process(thin_host: Host) -> None:
    """Before: the agent dropped a > 4 MiB request without a word and the plugin answered
    code 11 (try again: it never would work)."""
    host = thin_host
    start_agent(host)
    conf = host.config(padding="x" * (wire.MAX_REQUEST_BYTES + 1))
    pod = host.new_pod()
    added = host.add(conf, "big", pod)
    assert added["ips"][0]["address"]
    assert "ADD" not in _requests_served(host)   # done by the plugin itself
    # A raw client that sends one anyway is told to run in-process.
    out = _client(host, "raw", host.agent_socket,
                  stdin=_request(host, "DEL", conf, "big", pod))
    assert "fallback" in out["reply"] and "larger" in out["reply"]["fallback"]
    assert host.cni("DEL", conf, "big", pod).rc == 0
    assert agent_op(host, "ping") == {"pong": True}


def test_connections_beyond_the_cap_are_refused_and_the_plugin_copes(thin_host: Host) -> None:
    """Before: every connection got a thread, without limit."""
    host = thin_host
    start_agent(host)
    conf = host.config(agentTimeout=5)
    blocker = _blocker_config(host)
    hold = None
    with _network_locked(host, "xvm-block"):
        try:
            # Requests pinned on the locked network fill every connection slot.
            hold = subprocess.Popen(
                ["nsenter", f"--net={host.path}", sys.executable, CLIENT, "hold",
                 host.agent_socket, str(DEFAULT_MAX_CONNECTIONS)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert hold.stdin is not None and hold.stdout is not None
            hold.stdin.write(_request(host, "DEL", blocker, "pinned") + b"\n")
            hold.stdin.flush()
            first = json.loads(hold.stdout.readline() or b"{}")
            assert "error" in first.get("extra", {}), first   # the next one is refused
            assert "connections" in first["extra"]["error"]
            add = host.cni("ADD", conf, "capped", host.new_pod())
            assert add.rc == 1 and add.out is not None and add.out["code"] == 11, add.stdout
            assert "connections" in add.out.get("details", "")
            # DEL must not fail: the plugin does it in-process.
            deleted = host.cni("DEL", conf, "capped", "")
            assert deleted.rc == 0, deleted.stdout
        finally:
            if hold is not None:
                if hold.stdin is not None:
                    hold.stdin.close()   # the held clients hang up
                hold.wait(timeout=60)
                for stream in (hold.stdout, hold.stderr):
                    if stream is not None:
                        stream.close()
    # The agent drops the work of the clients that hung up (each connection notices
    # within a fraction of a second) and serves again.
    deadline = time.monotonic() + 30
    while agent_op(host, "ping") != {"pong": True}:
        assert time.monotonic() < deadline, "the agent never freed its connections"
        time.sleep(0.1)
    added = host.add(conf, "after", host.new_pod())
    assert added["ips"][0]["address"]
    assert host.cni("DEL", conf, "after", "").rc == 0


def test_made_up_commands_do_not_become_metric_labels(thin_host: Host) -> None:
    """Before: 3000 bogus CNI_COMMAND values made 3001 label values."""
    host = thin_host
    start_agent(host, "--metrics-port", str(METRICS_PORT))
    out = _client(host, "flood", host.agent_socket, "3000")
    assert out["codes"] == {"4": 3000}   # each refused as an invalid environment
    metrics = _client(host, "scrape", str(METRICS_PORT))["metrics"]
    commands = set(re.findall(r'xvmcni_cni_request_seconds_count\{command="([^"]*)"\}',
                              metrics))
    assert commands == {"invalid"}, sorted(commands)[:10]
    assert set(_requests_served(host)) == {"invalid"}


def test_a_caller_in_another_mount_namespace_is_not_served(thin_host: Host) -> None:
    """The agent must not open the caller's paths (dataDir, CNI_NETNS, CNI_PATH) in its
    own filesystem view: the plugin runs the request in-process where it is. Before:
    only the network namespace was compared."""
    host = thin_host
    start_agent(host)
    conf = host.config()
    pod = host.new_pod()
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "mnt",
           "CNI_NETNS": pod, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni:/opt/cni/bin"}
    proc = subprocess.run(["nsenter", f"--net={host.path}", "unshare", "--mount", host.plugin],
                          input=json.dumps(conf).encode(), env=env, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert json.loads(proc.stdout)["ips"][0]["address"]
    assert "ADD" not in _requests_served(host)
    assert "another mount namespace" in (host.data_dir.parent / "agent.log").read_text()
    assert host.cni("DEL", conf, "mnt", pod).rc == 0   # from the host's mount namespace
    assert _requests_served(host) == {"DEL": 1}
