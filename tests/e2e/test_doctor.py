"""``xvmctl doctor`` and ``xvmctl connectivity`` in the lab: a healthy lab passes
both; each fault, injected alone and removed again, is named by doctor as the only
problem, with its fix, and connectivity shows exactly the pairs it breaks.

One l2 (multicast) lab and one routed (static peers) lab per module, shared by the
tests: each test undoes its fault in ``finally`` and the next starts healthy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from xvmcni import lab as labmod
from xvmcni.lab import icmp

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")

Problem = tuple[str, str, str]  # (check, status, subject)


def doctor(lab: labmod.Lab, host: str = "h1") -> tuple[int, list[dict[str, Any]]]:
    """Run ``xvmctl doctor --json`` in ``host``'s namespace against its agent, config
    and state, as an operator on that host would."""
    h = lab.host(host)
    argv = ["nsenter", f"--net={h.netns_path}", sys.executable, "-m", "xvmcni.cli.xvmctl",
            "doctor", "--json", "--socket", lab.agent_socket(host),
            "--cni-conf-dir", str(lab.state_dir / host), "--data-dir", h.data_dir,
            "--cni-bin-dir", str(lab.state_dir / "bin")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    assert report["exit"] == proc.returncode
    return proc.returncode, list(report["findings"])


def problems(found: list[dict[str, Any]]) -> list[Problem]:
    return sorted((f["check"], f["status"], f["subject"]) for f in found
                  if f["status"] != "ok")


def only_problem(lab: labmod.Lab, host: str = "h1") -> dict[str, Any]:
    """Doctor's single problem on ``host`` (exit status 1), with a cause and a fix."""
    status, found = doctor(lab, host)
    bad = [f for f in found if f["status"] != "ok"]
    assert status == 1 and len(bad) == 1, json.dumps(bad, indent=1)
    assert bad[0]["cause"] and bad[0]["fix"], bad[0]
    return bad[0]


def in_host(lab: labmod.Lab, host: str, *argv: str) -> None:
    subprocess.run(["nsenter", f"--net={lab.host(host).netns_path}", *argv], check=True,
                   capture_output=True, timeout=30)


def in_switch(lab: labmod.Lab, *argv: str) -> None:
    subprocess.run(["nsenter", f"--net=/run/netns/{lab.switch_netns}", *argv], check=True,
                   capture_output=True, timeout=30)


def pod_reaches(lab: labmod.Lab, src: str, dst: str, **kwargs: Any) -> bool:
    source = next(p for p in lab.pods if p.name == src)
    target = next(p for p in lab.pods if p.name == dst)
    return icmp.ping(source.netns_path, target.ip, timeout=0.5, tries=2, **kwargs)


def healthy(lab: labmod.Lab) -> None:
    for host in ("h1", "h2"):
        status, found = doctor(lab, host)
        assert (status, problems(found)) == (0, []), json.dumps(found, indent=1)


Cell = tuple[str, str, str]  # (from host, kind, to host)


def connectivity(lab: labmod.Lab, network: str = "") -> tuple[set[Cell], set[Cell]]:
    """``xvmctl connectivity --lab``: (tested, failed) cells; no probe is left."""
    chosen = ["--network", network] if network else []
    proc = subprocess.run([sys.executable, "-m", "xvmcni.cli.xvmctl", "connectivity",
                           "--lab", lab.name, "--json", *chosen], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["ok"] else 1)
    assert not [n for n in os.listdir("/run/netns") if n.startswith("xvmprobe-")]
    cells = {(c["src"], c["kind"], c["dst"]): c for c in report["cells"]}
    failed = {k for k, c in cells.items() if not c["ok"]}
    assert all(cells[k]["why"] for k in failed)
    return set(cells), failed


def pairs_with(host: str, tested: set[Cell], kinds: tuple[str, ...]) -> set[Cell]:
    return {c for c in tested if c[1] in kinds and host in (c[0], c[2]) and c[0] != c[2]}


def make_lab(name: str, pods: int = 1, **kwargs: Any) -> Iterator[labmod.Lab]:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    try:
        lab = labmod.lab_up(name, hosts=3, pods=pods, agent=True, **kwargs)
        if not lab.agent:
            pytest.skip(f"{lab.plugin} runs without agents (reference plugin)")
        yield lab
    finally:
        labmod.lab_down(name)


@pytest.fixture(scope="module")
def l2_lab() -> Iterator[labmod.Lab]:
    yield from make_lab(f"xd{os.getpid():x}{os.urandom(2).hex()}")


@pytest.fixture(scope="module")
def routed_lab() -> Iterator[labmod.Lab]:
    yield from make_lab(f"xr{os.getpid():x}{os.urandom(2).hex()}", model="routed")


# --- l2, multicast ----------------------------------------------------------------------


def test_a_healthy_l2_lab_passes(l2_lab: labmod.Lab) -> None:
    assert pod_reaches(l2_lab, "h1-p1", "h2-p1")
    healthy(l2_lab)
    tested, failed = connectivity(l2_lab)
    assert failed == set()
    # Per probe: its gateway, and each other probe small and full-size (no underlay:
    # l2 without ipMasq cannot reach other hosts' own addresses).
    assert len(tested) == 3 * (1 + 2 * 2)


def test_forward_drop_with_bridge_nf_call(l2_lab: labmod.Lab) -> None:
    """Docker's setup: bridged frames go through iptables, FORWARD policy DROP."""
    in_host(l2_lab, "h1", "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    in_host(l2_lab, "h1", "nft", "add table ip xdfilter")
    try:
        in_host(l2_lab, "h1", "nft", "add chain ip xdfilter FORWARD { type filter hook "
                "forward priority 0; policy drop; }")
        assert not pod_reaches(l2_lab, "h1-p1", "h2-p1")
        bad = only_problem(l2_lab)
        assert (bad["check"], bad["subject"]) == ("firewall", "FORWARD")
        assert "bridge-nf-call-iptables" in bad["cause"] and "xvmbr" in bad["fix"]
        tested, failed = connectivity(l2_lab)
        assert failed == pairs_with("h1", tested, ("pod", "mtu"))
    finally:
        in_host(l2_lab, "h1", "nft", "delete table ip xdfilter")
    assert pod_reaches(l2_lab, "h1-p1", "h2-p1")


def test_vxlan_port_dropped_in_input(l2_lab: labmod.Lab) -> None:
    """A host firewall without an exception for VXLAN (nft; iptables-nft rules look the
    same to doctor: see the unit tests)."""
    in_host(l2_lab, "h1", "nft", "add table inet xdfw")
    try:
        in_host(l2_lab, "h1", "nft", "add chain inet xdfw input { type filter hook input "
                "priority 0; policy accept; }")
        in_host(l2_lab, "h1", "nft", "add rule inet xdfw input udp dport 8472 drop")
        assert not pod_reaches(l2_lab, "h2-p1", "h1-p1")
        bad = only_problem(l2_lab)
        assert (bad["check"], bad["subject"]) == ("firewall", "UDP 8472")
        assert "inet xdfw input" in bad["cause"] and "--dport 8472 -j ACCEPT" in bad["fix"]
        tested, failed = connectivity(l2_lab)
        assert failed == pairs_with("h1", tested, ("pod", "mtu"))
    finally:
        in_host(l2_lab, "h1", "nft", "delete table inet xdfw")


def test_underlay_mtu_lowered(l2_lab: labmod.Lab) -> None:
    in_host(l2_lab, "h1", "ip", "link", "set", "eth0", "mtu", "1400")
    try:
        # Small packets still pass; full-size ones do not.
        assert pod_reaches(l2_lab, "h1-p1", "h2-p1")
        assert not pod_reaches(l2_lab, "h1-p1", "h2-p1", size=1450 - 28, df=True)
        bad = only_problem(l2_lab)
        assert (bad["check"], bad["subject"]) == ("hostif", "eth0")
        assert "MTU 1400" in bad["cause"] and "mtu 1500" in bad["fix"]
    finally:
        in_host(l2_lab, "h1", "ip", "link", "set", "eth0", "mtu", "1500")
        # The tunnel learned a path MTU of 1400 towards the other hosts meanwhile.
        in_host(l2_lab, "h1", "ip", "route", "flush", "cache")


def test_stale_network_left_behind(l2_lab: labmod.Lab) -> None:
    """A bridge and a table of a network this host no longer knows."""
    in_host(l2_lab, "h1", "ip", "link", "add", "xvmbr77", "type", "bridge")
    try:
        in_host(l2_lab, "h1", "ip", "link", "set", "xvmbr77", "alias", "xvm-cni:gone-net")
        status, found = doctor(l2_lab)
        assert status == 1
        assert problems(found) == [("objects", "warn", "xvmbr77")]
        assert next(f for f in found if f["subject"] == "xvmbr77")["fix"] == \
            "ip link del xvmbr77"
    finally:
        in_host(l2_lab, "h1", "ip", "link", "del", "xvmbr77")


def test_a_config_that_does_not_parse(l2_lab: labmod.Lab) -> None:
    bad = l2_lab.state_dir / "h1" / "20-broken.conf"
    bad.write_text(json.dumps({"cniVersion": "1.0.0", "name": "broken", "type": "xvm-cni",
                               "vxlanID": 20, "subnet": "10.99.0.0/16"}))
    try:
        bad_one = only_problem(l2_lab)
        assert (bad_one["check"], bad_one["subject"]) == ("config", f"{bad.parent}: broken")
        assert "hostInterface" in bad_one["cause"]
    finally:
        bad.unlink()


def test_a_deleted_vxlan_device_is_named(l2_lab: labmod.Lab) -> None:
    """One of our devices removed by hand: the objects check names it (and, as the
    device took the group membership with it, the multicast check says so)."""
    in_host(l2_lab, "h1", "ip", "link", "del", "xvmvx10")
    try:
        status, found = doctor(l2_lab)
        assert status == 1
        assert problems(found) == [("multicast", "fail", "group 239.1.1.1"),
                                   ("objects", "fail", "xvm-network")]
        assert any("xvmvx10 is missing" in f["cause"] for f in found)
    finally:
        gc(l2_lab, "h1")
    healthy(l2_lab)


def gc(lab: labmod.Lab, host: str) -> None:
    from xvmcni.cli.status import agent_request
    reply = agent_request(lab.agent_socket(host), "gc", timeout=30)
    assert not any(r.get("error") for r in reply["networks"]), reply


def test_multicast_dropped_on_the_switch(l2_lab: labmod.Lab) -> None:
    """The underlay stops carrying the group (no IGMP querier, a router): a host that
    joins afterwards (here: its VXLAN device re-created) learns no other host."""
    in_switch(l2_lab, "nft", "add table bridge xdmcast")
    try:
        in_switch(l2_lab, "nft", "add chain bridge xdmcast drop_group { type filter hook "
                  "forward priority 0; policy accept; }")
        in_switch(l2_lab, "nft", "add rule bridge xdmcast drop_group ip daddr 224.0.0.0/4 "
                  "drop")
        in_host(l2_lab, "h1", "ip", "link", "del", "xvmvx10")
        gc(l2_lab, "h1")
        assert not pod_reaches(l2_lab, "h1-p1", "h2-p1")
        bad = only_problem(l2_lab)
        assert (bad["check"], bad["subject"]) == ("multicast", "xvmvx10")
        assert "multicast does not cross your underlay" in bad["cause"]
        assert "IGMP querier" in bad["fix"] and "etcd" in bad["fix"]
        # New probes on every host must find each other by flooding: all pairs fail.
        tested, failed = connectivity(l2_lab)
        assert failed == {c for c in tested if c[1] in ("pod", "mtu")}
    finally:
        in_switch(l2_lab, "nft", "delete table bridge xdmcast")
    # Healthy again once the underlay carries the group: h1 floods, others answer.
    assert pod_reaches(l2_lab, "h1-p1", "h2-p1")
    healthy(l2_lab)


# --- routed, static peers ---------------------------------------------------------------


def test_a_healthy_routed_lab_passes(routed_lab: labmod.Lab) -> None:
    assert pod_reaches(routed_lab, "h1-p1", "h3-p1")
    healthy(routed_lab)
    tested, failed = connectivity(routed_lab)
    assert failed == set()
    assert len(tested) == 3 * (1 + 2 * 3)  # gateway; per other host pod, mtu, underlay


def _cidr_of(lab: labmod.Lab, host: str) -> str:
    pod = lab.pods_of(host)[0]
    return pod.address.rsplit(".", 1)[0] + ".0/24"


def test_a_deleted_route_is_named(routed_lab: labmod.Lab) -> None:
    cidr = _cidr_of(routed_lab, "h3")
    in_host(routed_lab, "h1", "ip", "route", "del", cidr)
    try:
        assert not pod_reaches(routed_lab, "h1-p1", "h3-p1")
        bad = only_problem(routed_lab)
        assert bad["check"] == "peers"
        assert f"route to {cidr} (host h3)" in bad["cause"] and "missing" in bad["cause"]
    finally:
        gc(routed_lab, "h1")
    assert pod_reaches(routed_lab, "h1-p1", "h3-p1")


def _fdb_mac(lab: labmod.Lab, host: str, dst: str) -> str:
    out = subprocess.run(["bridge", "-n", os.path.basename(lab.host(host).netns_path), "-j",
                          "fdb", "show", "dev", "xvmrv10"], capture_output=True, text=True,
                         check=True).stdout
    return next(str(e["mac"]) for e in json.loads(out) if e.get("dst") == dst)


def test_a_deleted_fdb_entry_is_named(routed_lab: labmod.Lab) -> None:
    h2 = routed_lab.host("h2").underlay.split("/")[0]
    mac = _fdb_mac(routed_lab, "h1", h2)
    in_host(routed_lab, "h1", "bridge", "fdb", "del", mac, "dev", "xvmrv10", "dst", h2)
    try:
        assert not pod_reaches(routed_lab, "h1-p1", "h2-p1")
        bad = only_problem(routed_lab)
        assert bad["check"] == "peers"
        assert f"FDB entry {mac} -> {h2}" in bad["cause"]
    finally:
        gc(routed_lab, "h1")
    assert pod_reaches(routed_lab, "h1-p1", "h2-p1")


def test_strict_rp_filter_with_a_conflicting_route(routed_lab: labmod.Lab) -> None:
    """A more specific route sends h1's traffic to h2's pods over the underlay, while
    their answers come back through the tunnel: strict rp_filter on the tunnel drops
    them."""
    cidr = _cidr_of(routed_lab, "h2")
    half = cidr.replace("/24", "/25")
    h2 = routed_lab.host("h2").underlay.split("/")[0]
    in_host(routed_lab, "h1", "sysctl", "-qw", "net.ipv4.conf.xvmrv10.rp_filter=1")
    try:
        in_host(routed_lab, "h1", "ip", "route", "add", half, "via", h2, "dev", "eth0")
        try:
            assert not pod_reaches(routed_lab, "h1-p1", "h2-p1")
            bad = only_problem(routed_lab)
            assert (bad["check"], bad["subject"]) == ("kernel", "rp_filter xvmrv10")
            assert "leaves through eth0" in bad["cause"] and "rp_filter=2" in bad["fix"]
            tested, failed = connectivity(routed_lab)
            assert {("h1", "pod", "h2"), ("h2", "pod", "h1"), ("h1", "underlay", "h3")} \
                <= failed <= pairs_with("h1", tested, ("pod", "mtu", "underlay"))
            assert ("h1", "pod", "h3") not in failed  # its route is not the conflicting one
        finally:
            in_host(routed_lab, "h1", "ip", "route", "del", half)
    finally:
        in_host(routed_lab, "h1", "sysctl", "-qw", "net.ipv4.conf.xvmrv10.rp_filter=0")
    assert pod_reaches(routed_lab, "h1-p1", "h2-p1")


def test_a_stopped_agent_is_named(routed_lab: labmod.Lab) -> None:
    labmod.agent_stop(routed_lab.name, "h1")
    try:
        status, found = doctor(routed_lab)
        assert status == 1
        assert problems(found) == [("agent", "fail", "xvm-cnid")]
    finally:
        labmod.agent_start(routed_lab.name, "h1")
    healthy(routed_lab)


def test_path_mtu_lowered_on_the_underlay(routed_lab: labmod.Lab) -> None:
    """The switch port of h2 takes smaller frames than the hosts send: small packets
    pass, full-size ones to and from h2 vanish. Doctor on a host cannot see a link
    beyond its own (it passes); connectivity names the pairs."""
    in_switch(routed_lab, "ip", "link", "set", "h2", "mtu", "1400")
    try:
        tested, failed = connectivity(routed_lab)
        assert failed == pairs_with("h2", tested, ("mtu",))
        healthy(routed_lab)
    finally:
        in_switch(routed_lab, "ip", "link", "set", "h2", "mtu", "1500")


def test_connectivity_removes_its_probes_on_ctrl_c(routed_lab: labmod.Lab) -> None:
    """Interrupted right after the first probe is attached: that probe is deleted
    (CNI DEL: its address is free again, its namespace gone) before the interrupt
    goes on."""
    from xvmcni.diagnose import connectivity as conn

    def interrupt(line: str) -> None:
        if "attached" in line:
            raise KeyboardInterrupt

    agents = [(h.name, routed_lab.agent_socket(h.name)) for h in routed_lab.hosts]
    with pytest.raises(KeyboardInterrupt):
        conn.run(agents, None, interrupt)
    assert not [n for n in os.listdir("/run/netns") if n.startswith("xvmprobe-")]
    status, found = doctor(routed_lab, "h1")
    assert status == 0
    records = next(f for f in found if f["check"] == "ipam" and f["subject"] == "records")
    assert records["cause"].startswith("1 containers recorded")  # the lab's pod only
