"""The lab end to end: 3 simulated hosts x 2 pods attached by the real plugin.

Traffic stays inside the lab's namespaces: every socket here is created in a thread
that entered a lab namespace, and every address probed belongs to the lab.
"""

from __future__ import annotations

import hashlib
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
from typing import TypeVar

import pytest

from xvmcni.cli import lab as labmod
from xvmcni.cli.icmp import probe
from xvmcni.dataplane.netns import entered, open_netns

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (network namespaces)"),
]

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
    fd = open_netns(path)
    try:
        with entered(fd):
            return fn()
    finally:
        os.close(fd)


def run_in_threads(*calls: tuple[str, Callable[[], object]], timeout: float = 60) -> list[object]:
    """Each (netns path, fn) in its own thread inside that namespace; results in order,
    the first exception re-raised."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(in_netns, path, fn) for path, fn in calls]
        return [f.result(timeout=timeout) for f in futures]


def leftovers(name: str) -> list[str]:
    """Namespaces and files of lab ``name`` that still exist."""
    found = list(labmod.lab_netns(name))
    if labmod.lab_dir(name).exists():
        found += [str(p) for p in labmod.lab_dir(name).rglob("*")] or [str(labmod.lab_dir(name))]
    return found


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


# ---------------------------------------------------------------------------
# Lifecycle: the CLI, teardown, half-made labs, plugin errors.


def test_cli_up_status_down_leaves_nothing(make_lab_name: Callable[[str], str],
                                           lab_plugin: str | None) -> None:
    name = make_lab_name("c")
    plugin = plugin_args(lab_plugin)
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
        again = xvmctl("lab", "up", "--name", name, *plugin)
        assert again.returncode == 1
        assert "already exists" in again.stderr
    finally:
        down = xvmctl("lab", "down", "--name", name)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "2 pods detached" in down.stdout
    assert "DEL ok" in down.stderr
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


def test_matrix_rendering_pod_by_pod_and_grouped_by_host() -> None:
    """Layout only (no namespaces): a narrow terminal gets the per-host summary."""
    from xvmcni.cli import lab_view
    from xvmcni.cli.icmp import PingReply

    pods = [f"h{h}-p{p}" for h in (1, 2) for p in (1, 2)]
    cells = {(a, b): PingReply(ok=(a, b) != ("h1-p1", "h2-p2"), rtt_ms=0.1, tries=1)
             for a in pods for b in pods if a != b}
    cells.update({(a, labmod.GATEWAY): PingReply(True, 0.1, 1) for a in pods})
    targets = {key: "10.244.0.9" for key in cells}
    matrix = labmod.Matrix(rows=pods, columns=[*pods, labmod.GATEWAY], targets=targets,
                           cells=cells, host_of={p: p.split("-")[0] for p in pods})
    style = lab_view.Style(ok="ok", bad="--", self_=".", times="x")
    wide = lab_view.render_matrix(matrix, style, width=200)
    assert "15/16 reachable" in wide
    assert "h1-p1 -> h2-p2 10.244.0.9" in wide
    row = next(line for line in wide.splitlines() if line.startswith("  h1-p1 "))
    assert row.split() == ["h1-p1", ".", "ok", "ok", "--", "ok"]
    narrow = lab_view.render_matrix(matrix, style, width=20)
    row = next(line for line in narrow.splitlines() if line.startswith("  h1 "))
    assert row.split() == ["h1", "2/2", "3/4", "2/2"]


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
    temporary path: with no agent for the simulated hosts it runs in-process."""
    if lab_plugin:
        pytest.skip("XVM_LAB_PLUGIN selects another plugin")
    from xvmcni import plugin_file

    plugin = plugin_file.write(tmp_path / "xvm-cni")
    name = make_lab_name("i")
    try:
        lab = labmod.lab_up(name, hosts=2, pods=1, plugin=str(plugin))
        assert labmod.ping_matrix(lab).ok
    finally:
        report = labmod.lab_down(name)
    assert report.del_failures == []
    assert leftovers(name) == []
