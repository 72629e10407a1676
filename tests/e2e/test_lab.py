"""The lab end to end: 3 simulated hosts x 2 pods attached by the real plugin, each
host with its own node agent (xvm-cnid) unless a test asks for --no-agent.

Traffic stays inside the lab's namespaces: every socket here is created in a thread
that entered a lab namespace, and every address probed belongs to the lab (the
agents' sockets are unix sockets in the lab's directory; their metrics endpoints
listen on each host namespace's own loopback).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.pinging import PingRun, ping_continuously
from xvmcni import lab as labmod
from xvmcni.cli import status as statusmod
from xvmcni.lab import plumbing, view
from xvmcni.lab.icmp import probe

# Marked root and e2e by tests/conftest.py, as everything under tests/e2e.
pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="lab tests need root (network namespaces)")

VXLAN_MTU = 1450          # 1500 underlay - 50 VXLAN/UDP/IP overhead
IP_TCP_HEADERS = 40
TCPOLEN_TIMESTAMP = 12    # aligned timestamp option, present on every segment when negotiated
TCPI_OPT_TIMESTAMPS = 1
ONE_MIB = 1 << 20


def xvmctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xvmcni.cli.xvmctl", *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "NO_COLOR": "1"})


T = TypeVar("T")


def plugin_args(plugin: str | None) -> list[str]:
    return ["--plugin", plugin] if plugin else []


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in the calling thread while it is inside the namespace at ``path``."""
    with plumbing.inside(path):
        return fn()


def run_in_threads(*calls: tuple[str, Callable[[], object]], timeout: float = 60) -> list[object]:
    """Each (netns path, fn) in its own thread inside that namespace; results in order,
    the first exception re-raised."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(in_netns, path, fn) for path, fn in calls]
        return [f.result(timeout=timeout) for f in futures]


def leftovers(name: str) -> list[str]:
    """Namespaces, files and agent processes of lab ``name`` that still exist."""
    found = list(labmod.lab_netns(name))
    if labmod.lab_dir(name).exists():
        found += [str(p) for p in labmod.lab_dir(name).rglob("*")] or [str(labmod.lab_dir(name))]
    found += [f"xvm-cnid pid {pid} ({sock})" for pid, sock in labmod.lab_agents(name).items()]
    return found


def needs_agents(lab: labmod.Lab) -> None:
    if not lab.agent:
        pytest.skip(f"{os.path.basename(lab.plugin)} runs without agents")


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def needs_cross_host(lab: labmod.Lab) -> None:
    """The reference bridge plugin (XVM_LAB_PLUGIN=/usr/lib/cni/bridge, for checking
    the lab's plumbing alone) has no network between hosts."""
    if lab.flavor != "xvm":
        pytest.skip("the reference bridge plugin has no cross-host network")


def _cross_host_pair(lab: labmod.Lab) -> tuple[labmod.Pod, labmod.Pod]:
    src = lab.pods[0]
    dst = next(p for p in lab.pods if p.host != src.host)
    return src, dst


def _tcp_info(sock: socket.socket) -> dict[str, int]:
    """The fields of struct tcp_info we need (linux/tcp.h: 8 u8, then u32s)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    u8 = struct.unpack_from("8B", raw)
    u32 = struct.unpack_from("24I", raw, 8)
    return {"options": u8[5], "snd_mss": u32[2], "rcv_mss": u32[3], "pmtu": u32[13]}


# ---------------------------------------------------------------------------
# The 3 x 2 lab.


def test_every_pod_reaches_every_pod_and_the_gateway(lab3x2: labmod.Lab) -> None:
    needs_cross_host(lab3x2)
    assert len(lab3x2.hosts) == 3
    assert len(lab3x2.pods) == 6
    matrix = labmod.ping_matrix(lab3x2)
    failed = [(src, col, addr, reply.error) for src, col, addr, reply in matrix.failures()]
    assert failed == []
    # 6 pods x (5 other pods + the gateway)
    assert matrix.total == matrix.reachable == 36


def test_pod_addresses_are_unique_across_hosts(lab3x2: labmod.Lab) -> None:
    needs_cross_host(lab3x2)
    addresses = [pod.ip for pod in lab3x2.pods]
    assert all(addresses)
    assert len(set(addresses)) == len(addresses)
    gateways = {pod.gateway for pod in lab3x2.pods}
    assert len(gateways) == 1, "one anycast gateway for the whole network"
    assert gateways.isdisjoint(addresses)


def test_each_host_has_its_own_config_and_data_dir(lab3x2: labmod.Lab) -> None:
    data_dirs = set()
    for host in lab3x2.hosts:
        config = json.loads(Path(host.config_path).read_text())
        assert Path(host.config_path).is_relative_to(lab3x2.state_dir)
        data_dirs.add(config.get("dataDir") or config["ipam"]["dataDir"])
    assert len(data_dirs) == 3


def test_underlay_hosts_reach_each_other(lab3x2: labmod.Lab) -> None:
    for src in lab3x2.hosts:
        for dst in lab3x2.hosts:
            if dst is not src:
                ip = dst.underlay.split("/")[0]
                assert probe(src.netns_path, ip).ok, f"{src.name} -> {dst.name} ({ip})"


def test_underlay_floods_multicast_to_every_host(lab3x2: labmod.Lab) -> None:
    """What VXLAN flood-and-learn relies on: a group reaches every host without any
    IGMP state in the switch. Own group and port, so the plugin's VXLAN sees nothing."""
    group, port = "239.255.77.7", 47999
    sender, *receivers = lab3x2.hosts
    token = secrets.token_bytes(16)
    ready = threading.Barrier(len(receivers) + 1, timeout=10)

    def receive(host: labmod.Host) -> bytes:
        local = host.underlay.split("/")[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((group, port))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            socket.inet_aton(group) + socket.inet_aton(local))
            sock.settimeout(5)
            ready.wait()
            data, _ = sock.recvfrom(100)
            return data

    def send() -> None:
        local = sender.underlay.split("/")[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            ready.wait()
            for _ in range(3):  # UDP: a few copies, any one will do
                sock.sendto(token, (group, port))
                time.sleep(0.05)

    results = run_in_threads(*[(h.netns_path, lambda h=h: receive(h)) for h in receivers],
                             (sender.netns_path, send))
    assert results[:-1] == [token] * len(receivers)


def test_one_mib_tcp_crosses_hosts_intact_with_full_size_segments(lab3x2: labmod.Lab) -> None:
    needs_cross_host(lab3x2)
    server_pod, client_pod = _cross_host_pair(lab3x2)
    payload = os.urandom(ONE_MIB)
    ports: queue.Queue[int] = queue.Queue()

    def server() -> dict[str, object]:
        with socket.socket() as listener:
            listener.bind((server_pod.ip, 0))
            listener.listen(1)
            listener.settimeout(20)
            ports.put(listener.getsockname()[1])
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(20)
                digest, size = hashlib.sha256(), 0
                while chunk := conn.recv(65536):
                    digest.update(chunk)
                    size += len(chunk)
                return {"sha256": digest.hexdigest(), "size": size, "info": _tcp_info(conn)}

    def client() -> dict[str, object]:
        port = ports.get(timeout=20)
        with socket.create_connection((server_pod.ip, port), timeout=20) as conn:
            maxseg = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
            conn.sendall(payload)
            info = _tcp_info(conn)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # wait for the server's close: everything was read
            return {"maxseg": maxseg, "info": info}

    got, sent = run_in_threads((server_pod.netns_path, server), (client_pod.netns_path, client))
    assert isinstance(got, dict) and isinstance(sent, dict)
    assert got["size"] == ONE_MIB
    assert got["sha256"] == hashlib.sha256(payload).hexdigest()

    info = sent["info"]
    assert isinstance(info, dict)
    assert info["pmtu"] == VXLAN_MTU
    # TCP_MAXSEG is the payload per segment *after* options: with timestamps on
    # (Linux default) every segment carries 12 option bytes, so the full-size
    # segment at MTU 1450 carries 1450 - 40 - 12 = 1398 bytes of data.
    options = TCPOLEN_TIMESTAMP if info["options"] & TCPI_OPT_TIMESTAMPS else 0
    full = VXLAN_MTU - IP_TCP_HEADERS - options
    assert sent["maxseg"] == full
    assert sent["maxseg"] + options >= 1400
    # The receiver saw segments that large (its estimate of the peer's MSS), so
    # nothing on the path clamped or fragmented them.
    server_info = got["info"]
    assert isinstance(server_info, dict)
    assert server_info["rcv_mss"] == full


def test_df_ping_of_full_mtu_crosses_hosts(lab3x2: labmod.Lab) -> None:
    needs_cross_host(lab3x2)
    src, dst = _cross_host_pair(lab3x2)
    biggest = VXLAN_MTU - 28  # 20 IP + 8 ICMP: 1422 bytes of payload
    reply = probe(src.netns_path, dst.ip, size=biggest, df=True)
    assert reply.ok, reply.error
    # One byte more cannot leave the pod with DF set: the pod MTU is exactly 1450.
    too_big = probe(src.netns_path, dst.ip, size=biggest + 1, df=True, tries=1)
    assert not too_big.ok
    assert "MTU" in too_big.error


def test_pods_have_the_vxlan_mtu(lab3x2: labmod.Lab) -> None:
    needs_cross_host(lab3x2)
    assert {pod.mtu for pod in lab3x2.pods} == {VXLAN_MTU}


def test_status_shows_the_lab(lab3x2: labmod.Lab) -> None:
    status = labmod.lab_status(lab3x2.name)
    assert status.lab is not None and status.lab.phase == "up"
    present = {ns.netns for ns in status.namespaces if ns.exists}
    assert present == set(lab3x2.netns_created)
    out = xvmctl("lab", "status", "--name", lab3x2.name)
    assert out.returncode == 0, out.stderr
    for pod in lab3x2.pods:
        assert pod.netns in out.stdout
        assert pod.address in out.stdout
    if lab3x2.agent:
        assert [(a.host, a.pid, a.ok) for a in status.agents] == \
            [(h.name, h.agent_pid, True) for h in lab3x2.hosts]
        assert "3/3 answering" in out.stdout
        for host in lab3x2.hosts:
            row = next(line for line in out.stdout.splitlines()
                       if line.split()[:2] == [host.name, str(host.agent_pid)])
            assert row.split()[2] == "ok", row
            assert "  ADD 2  " in row and "xvm-network 2/254 (0.8%)" in row, row


# ---------------------------------------------------------------------------
# Lifecycle: the CLI, teardown, half-made labs, plugin errors.


def test_cli_up_status_down_leaves_nothing(make_lab_name: Callable[[str], str],
                                           lab_plugin: str | None) -> None:
    name = make_lab_name("c")
    plugin = plugin_args(lab_plugin)
    agents = not lab_plugin  # the default: thin plugin + one agent per host
    try:
        up = xvmctl("lab", "up", "--name", name, "--hosts", "2", "--pods", "1", *plugin)
        if labmod.plugin_flavor(lab_plugin or "xvm-cni") == "xvm":
            assert up.returncode == 0, up.stdout + up.stderr
            assert "4/4 reachable" in up.stdout
            assert "path MTU  1450-byte packets with DF set, host to host (first pods): 2/2" \
                in up.stdout
        else:  # reference plugin: each pod reaches its gateway only; exit 3 says so
            assert up.returncode == 3, up.stdout + up.stderr
            assert "2/4 reachable" in up.stdout
        assert f"{name}-h2-p1" in up.stdout
        assert "attach  h2-p1" in up.stderr  # progress, one line per step
        if agents:
            assert "mode     agent: one xvm-cnid per host" in up.stdout
            assert "served   2/2 ADDs by the agents (h1 1/1, h2 1/1)" in up.stdout
            assert up.stderr.count("xvm-cnid pid") == 2
            assert len(labmod.lab_agents(name)) == 2
            status = xvmctl("lab", "status", "--name", name)
            assert "agent mode" in status.stdout
            assert "2/2 answering" in status.stdout
        again = xvmctl("lab", "up", "--name", name, *plugin)
        assert again.returncode == 1
        assert "already exists" in again.stderr
    finally:
        down = xvmctl("lab", "down", "--name", name)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "2 pods detached" in down.stdout
    assert "DEL ok" in down.stderr
    if agents:
        assert "2 xvm-cnid stopped" in down.stdout
        assert "agents  stopped 2 xvm-cnid" in down.stderr
    assert leftovers(name) == []
    assert "nothing to remove" in xvmctl("lab", "down", "--name", name).stdout


def test_lab_down_removes_everything_and_deletes_through_the_plugin(
        make_lab_name: Callable[[str], str], lab_plugin: str | None) -> None:
    name = make_lab_name("d")
    lab = labmod.lab_up(name, hosts=2, pods=2, plugin=lab_plugin)
    try:
        assert len(labmod.lab_netns(name)) == 1 + 2 + 4
    finally:
        report = labmod.lab_down(name)
    assert sorted(report.deleted) == sorted(p.name for p in lab.pods)
    assert report.del_failures == []
    assert report.clean
    assert leftovers(name) == []


def test_lab_down_cleans_up_a_lab_killed_half_way(make_lab_name: Callable[[str], str],
                                                  lab_plugin: str | None) -> None:
    """SIGKILL ``lab up`` once the hosts exist: no chance to clean up itself."""
    name = make_lab_name("k")
    plugin = plugin_args(lab_plugin)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xvmcni.cli.xvmctl", "lab", "up", "--name", name,
         "--hosts", "3", "--pods", "2", *plugin],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if f"host    {name}-h3" in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "lab up finished before it was killed"
        assert f"{name}-h3" in labmod.lab_netns(name)
        assert labmod.lab_dir(name).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        report = labmod.lab_down(name)
    assert report.clean, report.leftovers
    assert leftovers(name) == []


def test_sigterm_during_up_removes_the_half_made_lab(make_lab_name: Callable[[str], str],
                                                     lab_plugin: str | None) -> None:
    name = make_lab_name("t")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xvmcni.cli.xvmctl", "lab", "up", "--name", name,
         "--hosts", "3", "--pods", "2", *plugin_args(lab_plugin)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if f"host    {name}-h2" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stderr.read()
        proc.wait(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM
        assert "cleaning up after the failure" in rest
        assert leftovers(name) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        labmod.lab_down(name)


def test_lab_down_without_state_file_removes_by_name(make_lab_name: Callable[[str], str],
                                                     lab_plugin: str | None) -> None:
    name = make_lab_name("s")
    labmod.lab_up(name, hosts=2, pods=1, plugin=lab_plugin)
    try:
        (labmod.lab_dir(name) / labmod.STATE_FILE).unlink()
    finally:
        report = labmod.lab_down(name)
    # Container IDs and configs are derived from names, so DEL still ran.
    assert sorted(report.deleted) == ["h1-p1", "h2-p1"]
    assert leftovers(name) == []


def test_plugin_error_is_shown_and_the_run_cleans_up(
        tmp_path: Path, make_lab_name: Callable[[str], str]) -> None:
    fake = tmp_path / "failing-plugin"
    fake.write_text("#!/bin/sh\n"
                    "cat >/dev/null\n"
                    "echo 'something on stderr' >&2\n"
                    'echo \'{"cniVersion":"1.0.0","code":7,"msg":"bad config",'
                    '"details":"vxlanID missing"}\'\n'
                    "exit 1\n")
    fake.chmod(0o755)
    name = make_lab_name("e")
    try:
        out = xvmctl("lab", "up", "--name", name, "--hosts", "2", "--pods", "1",
                     "--plugin", str(fake))
    finally:
        labmod.lab_down(name)
    assert out.returncode == 1
    assert "CNI ADD for pod" in out.stderr
    assert "bad config" in out.stderr
    assert "vxlanID missing" in out.stderr
    assert "CNI code:    7" in out.stderr
    assert "something on stderr" in out.stderr
    assert leftovers(name) == []


def test_unreachable_destination_is_reported(lab3x2: labmod.Lab) -> None:
    """The probe says no, fast, for an unused address in the pod subnet (stays
    inside the lab: the address is on the pods' own L2 segment)."""
    src = lab3x2.pods[0]
    unused = "10.244.255.254" if lab3x2.flavor == "xvm" else "10.88.1.254"
    assert src.ip != unused
    reply = probe(src.netns_path, unused, timeout=0.3, tries=2)
    assert not reply.ok


def test_plugin_runs_in_the_host_netns_and_never_reaches_the_machine_agent(
        tmp_path: Path, make_lab_name: Callable[[str], str]) -> None:
    """A unix socket ignores namespaces: a simulated host must not hand its ADD to an
    xvm-cnid serving the real machine. Each host gets its own agent socket path."""
    record = tmp_path / "calls"
    record.mkdir()
    fake = tmp_path / "recording-plugin"
    fake.write_text(
        "#!/bin/sh\n"
        "cat >/dev/null\n"
        f'f="{record}/$CNI_COMMAND-$CNI_CONTAINERID"\n'
        'env > "$f"\n'
        'readlink /proc/self/ns/net > "$f.ns"\n'
        'case "$CNI_CONTAINERID" in *h1*) ip=10.99.0.2 ;; *) ip=10.99.0.3 ;; esac\n'
        'echo "{\\"cniVersion\\":\\"1.0.0\\",\\"ips\\":[{\\"address\\":\\"$ip/24\\"}]}"\n')
    fake.chmod(0o755)
    name = make_lab_name("r")
    try:
        lab = labmod.lab_up(name, hosts=2, pods=1, plugin=str(fake))
        host_ns = {h.name: h.netns_path for h in lab.hosts}
        sockets = set()
        for pod in lab.pods:
            env = dict(line.split("=", 1) for line in
                       (record / f"ADD-{pod.container_id}").read_text().splitlines()
                       if "=" in line)
            assert env["CNI_NETNS"] == pod.netns_path
            assert env["CNI_IFNAME"] == "eth0"
            sock = Path(env["XVM_CNID_SOCKET"])
            assert sock.is_relative_to(labmod.lab_dir(name))
            sockets.add(sock)
            # The plugin process itself ran inside its host's namespace.
            seen = (record / f"ADD-{pod.container_id}.ns").read_text().strip()
            st = os.stat(host_ns[pod.host])
            assert seen == f"net:[{st.st_ino}]"
        assert len(sockets) == 2
    finally:
        labmod.lab_down(name)
    assert leftovers(name) == []


def test_lab_with_the_installed_thin_plugin(
        tmp_path: Path, make_lab_name: Callable[[str], str], lab_plugin: str | None) -> None:
    """The shape `make install` puts in /opt/cni/bin (python -IS shim), written to a
    temporary path, without agents (--no-agent): it falls back to in-process."""
    if lab_plugin:
        pytest.skip("XVM_LAB_PLUGIN selects another plugin")
    from xvmcni import plugin_file

    plugin = plugin_file.write(tmp_path / "xvm-cni")
    name = make_lab_name("i")
    try:
        lab = labmod.lab_up(name, hosts=2, pods=1, plugin=str(plugin), agent=False)
        assert not lab.agent
        assert labmod.lab_agents(name) == {}
        assert labmod.ping_matrix(lab).ok
    finally:
        report = labmod.lab_down(name)
    assert report.del_failures == []
    assert leftovers(name) == []


# ---------------------------------------------------------------------------
# Node agents: one xvm-cnid per simulated host.


def test_lab_adds_were_served_by_the_agents(lab3x2: labmod.Lab) -> None:
    """Each host's own agent, running inside that host's namespace, counted exactly its
    pods' ADDs: nothing fell back to in-process on the way."""
    needs_agents(lab3x2)
    for host in lab3x2.hosts:
        pods = [p for p in lab3x2.pods if p.host == host.name]
        reply = statusmod.agent_request(lab3x2.agent_socket(host.name), "status")
        assert reply["agent"]["pid"] == host.agent_pid
        assert reply["agent"]["requests"] == {"ADD": len(pods)}
        assert host.agent_adds == len(pods)     # what up recorded and printed
        assert netns_inode(f"/proc/{host.agent_pid}/ns/net") == netns_inode(host.netns_path)
        (network,) = reply["networks"]
        assert (network["name"], network["containers"], network["used"], network["ready"]) \
            == ("xvm-network", len(pods), len(pods), True)
    text = "\n".join(view.render_mode(lab3x2, view.Style()))
    assert "served   6/6 ADDs by the agents (h1 2/2, h2 2/2, h3 2/2)" in text


def test_xvmctl_status_and_gc_ask_a_host_agent(lab3x2: labmod.Lab, tmp_path: Path) -> None:
    needs_agents(lab3x2)
    host = lab3x2.hosts[1]
    sock = lab3x2.agent_socket(host.name)
    out = xvmctl("status", "--socket", sock)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"xvm-cnid pid {host.agent_pid}, up ")
    assert lines[0].endswith(f"socket {sock}")
    assert "  requests  ADD 2" in lines
    assert "  metrics   http://127.0.0.1:9472/metrics" in lines
    row = next(line for line in lines if line.startswith("  xvm-network "))
    assert row.split() == ["xvm-network", "xvmbr10", "10", "10.244.0.0/16",
                           "10.244.12.1-10.244.12.254", "2", "2/254", "(0.8%)", "yes"]

    raw = xvmctl("status", "--socket", sock, "--json")
    assert raw.returncode == 0, raw.stderr
    reply = json.loads(raw.stdout)
    assert reply["agent"]["pid"] == host.agent_pid
    assert reply["networks"][0]["pool"] == "10.244.12.1-10.244.12.254"

    gc = xvmctl("gc", "--socket", sock)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    row = next(line for line in gc.stdout.splitlines() if line.startswith("  xvm-network "))
    assert row.split() == ["xvm-network", "2", "-", "-", "ok"]  # nothing to release
    assert labmod.ping_matrix(lab3x2).ok

    missing = xvmctl("status", "--socket", str(tmp_path / "nothing.sock"))
    assert missing.returncode == 1
    assert f"no xvm-cnid socket at {tmp_path / 'nothing.sock'}" in missing.stderr
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound:
        unbound.bind(str(stale))  # a socket file nobody listens on: a dead agent's
    gone = xvmctl("gc", "--socket", str(stale))
    assert gone.returncode == 1
    assert f"no xvm-cnid listens on {stale}" in gone.stderr


def test_agent_metrics_endpoint_inside_a_host(lab3x2: labmod.Lab) -> None:
    """The metric names the README documents, read on the host namespace's loopback."""
    needs_agents(lab3x2)
    host = lab3x2.hosts[0]

    def scrape() -> str:
        conn = http.client.HTTPConnection("127.0.0.1", labmod.AGENT_METRICS_PORT, timeout=10)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200
            return response.read().decode()
        finally:
            conn.close()

    text = in_netns(host.netns_path, scrape)
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['xvmcni_containers{network="xvm-network"}'] == 2
    assert samples['xvmcni_ipam_used_addresses{network="xvm-network"}'] == 2
    assert samples['xvmcni_ipam_pool_addresses{network="xvm-network"}'] == 254
    assert samples['xvmcni_cni_request_seconds_count{command="ADD"}'] == 2
    assert "# TYPE xvmcni_cni_errors_total counter" in text


def record_result(name: str, figure: dict[str, Any]) -> None:
    """Print the figure (pytest -s / -rA show it) and keep it in $XVM_RESULTS_DIR."""
    print(f"\n{name}: " + json.dumps(figure))
    results = os.environ.get("XVM_RESULTS_DIR")
    if results:
        Path(results).mkdir(parents=True, exist_ok=True)
        (Path(results) / f"{name}.json").write_text(json.dumps(figure, indent=2) + "\n")


def test_continuous_ping_counts_an_outage(agent_lab: labmod.Lab) -> None:
    """The control for the zero-loss test below: the same ping sees a 200 ms break
    of the path (h2's pod veth down on the host side) as lost packets."""
    src = next(p for p in agent_lab.pods if p.host == "h1")
    dst = next(p for p in agent_lab.pods if p.host == "h2")
    h2 = agent_lab.host("h2")
    (port,) = [link.name for link in plumbing.links(h2.netns_path)
               if link.kind == "veth" and link.master == "xvmbr10"]
    stop, run = threading.Event(), PingRun()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pinger = pool.submit(ping_continuously, src, dst.ip, stop, run)
        try:
            deadline = time.monotonic() + 10
            while run.received < 20 and time.monotonic() < deadline and not pinger.done():
                time.sleep(0.01)
            subprocess.run(["ip", "-n", h2.netns, "link", "set", port, "down"], check=True)
            time.sleep(0.2)
            subprocess.run(["ip", "-n", h2.netns, "link", "set", port, "up"], check=True)
            deadline = time.monotonic() + 10
            received = run.received
            while run.received < received + 20 and time.monotonic() < deadline:
                time.sleep(0.01)  # the path is back
        finally:
            stop.set()
        pinger.result(timeout=30)
    assert run.received >= 40
    # The outage lasted 200 ms; a lost echo blocks the pinger for its 1 s timeout, so at
    # least one probe is lost, and no late reply made up for it.
    assert len(run.lost) >= 1
    assert run.sent - run.received == len(run.lost)


RESTARTS = 3  # per variant, back to back, under one continuous ping


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_agent_restart_loses_no_packet(agent_lab: labmod.Lab, kill: bool) -> None:
    """A pod on h1 pings a pod on h2 every 10 ms while h1's agent is stopped (SIGTERM,
    or SIGKILL: a crash) and started again, three times: the agent is not on the data
    path, and each new one reconciles without recreating anything that works."""
    src = next(p for p in agent_lab.pods if p.host == "h1")
    dst = next(p for p in agent_lab.pods if p.host == "h2")
    h1 = agent_lab.host("h1")
    links_before = {link.name: link.index for link in plumbing.links(h1.netns_path)}
    stop, run = threading.Event(), PingRun()
    actions: list[labmod.AgentAction] = []
    windows: list[tuple[float, float]] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pinger = pool.submit(ping_continuously, src, dst.ip, stop, run)
        try:
            deadline = time.monotonic() + 10
            while run.received < 20 and time.monotonic() < deadline and not pinger.done():
                time.sleep(0.01)  # warm: ARP resolved, FDB learned, pings flowing
            assert run.received >= 20 and not run.lost, f"no steady ping before: {run}"
            for _ in range(RESTARTS):
                began = time.monotonic()
                actions.append(labmod.agent_restart(agent_lab.name, "h1", kill=kill))
                windows.append((began, time.monotonic()))
                time.sleep(0.3)  # a loss caused by the new agent's start shows by now
        finally:
            stop.set()
        pinger.result(timeout=30)

    during = [sum(1 for t in run.sent_at if a <= t <= b) for a, b in windows]
    figure = {
        "variant": "SIGKILL" if kill else "SIGTERM",
        "restarts": RESTARTS, "interval_ms": 10,
        "sent": run.sent, "received": run.received, "lost": run.sent - run.received,
        "sent_during_restarts": during,
        "restart_seconds": [round(b - a, 3) for a, b in windows],
        "stop_seconds": [round(a.stop_seconds, 3) for a in actions],
        "start_seconds": [round(a.start_seconds, 3) for a in actions],
        "max_rtt_ms": round(run.max_rtt_ms, 2),
        "pids": [actions[0].old_pid] + [a.new_pid for a in actions],
    }
    record_result(f"lab-agent-restart-{figure['variant'].lower()}", figure)
    assert run.lost == [], f"lost {len(run.lost)}: {run.lost[:5]}"
    assert run.sent == run.received
    # The pings really covered every restart (one per 10 ms: at least half of them).
    for (a, b), count in zip(windows, during, strict=True):
        assert count >= (b - a) / 0.01 / 2, figure

    pids = figure["pids"]
    assert isinstance(pids, list) and len(set(pids)) == RESTARTS + 1 and all(pids)
    assert {a.signal for a in actions} == {"SIGKILL" if kill else "SIGTERM"}
    assert not any(a.forced for a in actions)
    final = actions[-1].new_pid
    assert labmod.load_lab(agent_lab.name).host("h1").agent_pid == final
    assert labmod.lab_agents(agent_lab.name).get(final) == agent_lab.agent_socket("h1")
    reply = statusmod.agent_request(agent_lab.agent_socket("h1"), "status")
    assert reply["agent"]["pid"] == final
    assert (reply["networks"][0]["containers"], reply["networks"][0]["ready"]) == (1, True)
    # Reconcile recreated nothing: bridge, VXLAN port and veth keep their ifindex.
    assert {link.name: link.index for link in plumbing.links(h1.netns_path)} == links_before


def test_cli_lab_agent_stop_start_restart(agent_lab: labmod.Lab) -> None:
    name = agent_lab.name
    src = next(p for p in agent_lab.pods if p.host == "h1")
    dst = next(p for p in agent_lab.pods if p.host == "h2")
    sock = agent_lab.agent_socket("h2")
    old = labmod.load_lab(name).host("h2").agent_pid

    stopped = xvmctl("lab", "agent", "stop", "--name", name, "--host", "h2")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"h2: xvm-cnid pid {old} stopped (SIGTERM, ")
    assert sock not in labmod.lab_agents(name).values()
    assert not Path(sock).exists()  # a clean stop removes its socket
    assert labmod.load_lab(name).host("h2").agent_pid == 0
    status = xvmctl("lab", "status", "--name", name)
    assert "1/2 answering" in status.stdout
    assert any(line.split()[:4] == ["h2", "-", "NOT", "RUNNING"]
               for line in status.stdout.splitlines()), status.stdout
    assert probe(src.netns_path, dst.ip).ok, "pods must not need their agent"
    again = xvmctl("lab", "agent", "stop", "--name", name, "--host", "h2")
    assert again.stdout.strip() == "h2: xvm-cnid was not running"

    started = xvmctl("lab", "agent", "start", "--name", name, "--host", "h2")
    assert started.returncode == 0, started.stderr
    new = labmod.load_lab(name).host("h2").agent_pid
    assert new not in (0, old)
    assert started.stdout.startswith(f"h2: xvm-cnid pid {new} answering (")
    assert statusmod.agent_request(sock, "ping") == {"pong": True}
    twice = xvmctl("lab", "agent", "start", "--name", name, "--host", "h2")
    assert twice.returncode == 1
    assert f"already runs (pid {new})" in twice.stderr

    restarted = xvmctl("lab", "agent", "restart", "--kill", "--name", name, "--host", "h2")
    assert restarted.returncode == 0, restarted.stderr
    newest = labmod.load_lab(name).host("h2").agent_pid
    assert f"pid {new} stopped (SIGKILL, " in restarted.stdout
    assert f"pid {newest} answering" in restarted.stdout
    assert "no agent answered for" in restarted.stdout
    assert statusmod.agent_request(sock, "status")["agent"]["pid"] == newest

    unknown = xvmctl("lab", "agent", "restart", "--name", name, "--host", "h9")
    assert unknown.returncode == 1
    assert "has no host 'h9'" in unknown.stderr


def test_no_agent_runs_the_plugin_in_process(make_lab_name: Callable[[str], str],
                                             lab_plugin: str | None) -> None:
    if lab_plugin:
        pytest.skip("XVM_LAB_PLUGIN selects another plugin")
    name = make_lab_name("n")
    try:
        up = xvmctl("lab", "up", "--no-agent", "--name", name, "--hosts", "2", "--pods", "1")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "4/4 reachable" in up.stdout
        assert "mode     in-process (--no-agent): xvm-cni did each ADD itself" in up.stdout
        assert "served" not in up.stdout
        assert "xvm-cnid" not in up.stderr
        lab = labmod.load_lab(name)
        assert not lab.agent
        assert labmod.lab_agents(name) == {}
        assert lab.plugin == labmod.find_plugin()   # today's plugin, not the thin one
        for host in lab.hosts:
            assert "agentSocket" not in json.loads(Path(host.config_path).read_text())
            assert not Path(lab.agent_socket(host.name)).exists()
        status = xvmctl("lab", "status", "--name", name)
        assert "in-process" in status.stdout
        assert "Agents" not in status.stdout
        refused = xvmctl("lab", "agent", "restart", "--name", name, "--host", "h1")
        assert refused.returncode == 1
        assert "runs without agents" in refused.stderr
    finally:
        down = xvmctl("lab", "down", "--name", name)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "xvm-cnid" not in down.stdout
    assert leftovers(name) == []


def test_lab_down_kills_agents_a_crash_left_behind(make_lab_name: Callable[[str], str],
                                                   lab_plugin: str | None) -> None:
    """SIGKILL ``lab up`` once the agents run, and lose state.json too: down still finds
    the agents (by their --socket under the lab's directory) and stops them."""
    if lab_plugin:
        pytest.skip("XVM_LAB_PLUGIN selects another plugin")
    name = make_lab_name("x")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xvmcni.cli.xvmctl", "lab", "up", "--name", name,
         "--hosts", "2", "--pods", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "attach  " in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "lab up finished before it was killed"
        agents = labmod.lab_agents(name)
        assert sorted(Path(sock).parent.name for sock in agents.values()) == ["h1", "h2"]
        (labmod.lab_dir(name) / labmod.STATE_FILE).unlink()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        report = labmod.lab_down(name)
    assert sorted(report.agents_stopped) == sorted(agents)
    assert report.agents_forced == []  # SIGTERM was enough
    assert report.clean, report.leftovers
    assert leftovers(name) == []
