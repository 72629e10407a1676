"""Rendering of the lab's tables and matrix: pure functions from records to text."""

from __future__ import annotations

from typing import Any

from xvmcni.lab import view
from xvmcni.lab.agents import AgentHealth
from xvmcni.lab.icmp import PingReply
from xvmcni.lab.model import Host, Lab, Pod
from xvmcni.lab.plumbing import LinkInfo
from xvmcni.lab.probes import GATEWAY, Matrix, MtuCheck
from xvmcni.lab.status import LabStatus, NsStatus

PLAIN = view.Style(ok="ok", bad="--", self_=".", times="x")


def two_by_two() -> Matrix:
    pods = [f"h{h}-p{p}" for h in (1, 2) for p in (1, 2)]
    cells = {(a, b): PingReply(ok=(a, b) != ("h1-p1", "h2-p2"), rtt_ms=0.1, tries=1)
             for a in pods for b in pods if a != b}
    cells.update({(a, GATEWAY): PingReply(True, 0.1, 1) for a in pods})
    targets = {key: "10.244.0.9" for key in cells}
    return Matrix(rows=pods, columns=[*pods, GATEWAY], targets=targets, cells=cells,
                  host_of={p: p.split("-")[0] for p in pods})


def test_matrix_rendering_pod_by_pod_and_grouped_by_host() -> None:
    """A wide terminal gets the pod grid, a narrow one the per-host summary."""
    matrix = two_by_two()
    wide = view.render_matrix(matrix, PLAIN, width=200)
    assert "15/16 reachable" in wide
    assert "h1-p1 -> h2-p2 10.244.0.9" in wide
    row = next(line for line in wide.splitlines() if line.startswith("  h1-p1 "))
    assert row.split() == ["h1-p1", ".", "ok", "ok", "--", "ok"]
    narrow = view.render_matrix(matrix, PLAIN, width=20)
    row = next(line for line in narrow.splitlines() if line.startswith("  h1 "))
    assert row.split() == ["h1", "2/2", "3/4", "2/2"]


def test_matrix_lists_at_most_ten_failures() -> None:
    pods = [f"h1-p{i}" for i in range(1, 6)]
    cells = {(a, b): PingReply(False, tries=3, error="no reply")
             for a in pods for b in pods if a != b}
    matrix = Matrix(rows=pods, columns=pods, targets={k: "10.244.0.9" for k in cells},
                    cells=cells, host_of={p: "h1" for p in pods})
    text = view.render_matrix(matrix, PLAIN, width=200)
    assert "0/20 reachable" in text
    assert sum(1 for line in text.splitlines() if line.startswith("  -- ")) == 10
    assert "... and 10 more failed pairs" in text


def test_mtu_line_names_the_failed_pairs() -> None:
    check = MtuCheck(size=1450, results=[("h1-p1", "h2-p1", PingReply(True, 0.2, 1)),
                                         ("h2-p1", "h1-p1", PingReply(False, error="too big"))])
    lines = view.render_mtu(check, PLAIN).splitlines()
    assert lines[0].endswith("1450-byte packets with DF set, host to host (first pods): 1/2 --")
    assert lines[1:] == ["  -- h2-p1 -> h1-p1: too big"]


def test_summary_table_has_a_row_per_pod_and_the_host_once() -> None:
    lab = Lab(name="xtv", plugin="/x/bin/xvm-cni", flavor="xvm",
              hosts=[Host("h1", "xtv-h1", "172.30.0.11/24", agent_adds=2)],
              pods=[Pod(f"h1-p{i}", "h1", f"xtv-h1-p{i}", "", address=f"10.244.0.{i + 1}/16",
                        gateway="10.244.0.1", mtu=1450) for i in (1, 2)], agent=True)
    text = view.render_summary(lab, PLAIN).splitlines()
    assert text[0].startswith("Lab xtv: 1 host x 2 pods")
    assert "underlay 172.30.0.0/24 on switch netns xtv-sw" in text[1]
    rows = [line.split() for line in text if "xtv-h1-p" in line]
    assert rows == [["h1", "172.30.0.11/24", "h1-p1", "xtv-h1-p1", "10.244.0.2/16",
                     "10.244.0.1", "1450", "-"],
                    ["h1-p2", "xtv-h1-p2", "10.244.0.3/16", "10.244.0.1", "1450", "-"]]
    assert any("served   2/2 ADDs by the agents" in line for line in text)


def test_status_shows_links_missing_namespaces_and_roles() -> None:
    lab = Lab(name="xts", plugin="p", flavor="xvm", phase="up",
              hosts=[Host("h1", "xts-h1", "")], pods=[Pod("h1-p1", "h1", "xts-h1-p1", "")])
    status = LabStatus(name="xts", lab=lab, namespaces=[
        NsStatus("xts-sw", True, [LinkInfo("br0", "bridge", True, 1500, [])]),
        NsStatus("xts-h1", True, [LinkInfo("lo", "", True, 65536, ["127.0.0.1/8"]),
                                  LinkInfo("eth0", "veth", False, 1500, ["172.30.0.11/24"])]),
        NsStatus("xts-h1-p1", False)])
    rows = [line.split() for line in view.render_status(status, PLAIN).splitlines()[2:]]
    assert rows == [["xts-sw", "switch", "br0", "bridge", "up", "1500"],
                    ["xts-h1", "host", "h1", "eth0", "veth", "DOWN", "1500", "172.30.0.11/24"],
                    ["xts-h1-p1", "pod", "h1-p1", "missing"]]
    assert view.render_status(LabStatus(name="xtn", lab=None), PLAIN) == \
        "Lab xtn: does not exist"


def test_agent_views_render_without_a_lab() -> None:
    """The mode lines and the agents table."""
    lab = Lab(name="xtview", plugin="/x/bin/xvm-cni", flavor="xvm", agent=True,
              hosts=[Host("h1", "xtview-h1", "", agent_pid=11, agent_adds=2),
                     Host("h2", "xtview-h2", "", agent_pid=12, agent_adds=1)],
              pods=[Pod(f"h{h}-p{p}", f"h{h}", "", "", address="10.244.0.9/16")
                    for h in (1, 2) for p in (1, 2)])
    assert view.render_mode(lab, PLAIN)[1] == (
        "  served   only 3 of 4 ADDs by the agents (h1 2/2, h2 1/2): the rest ran in-process "
        "(agent logs: <lab>/<host>/xvm-cnid.log)")
    lab.agent = False
    assert view.render_mode(lab, PLAIN) == [
        "  mode     in-process (--no-agent): xvm-cni did each ADD itself, inside its host's "
        "namespace"]

    reply: dict[str, Any] = {
        "agent": {"pid": 11, "uptime": 3725.4, "requests": {"ADD": 3}},
        "networks": [{"name": "n1", "used": 14, "size": 14, "ready": False, "reason": "full"}]}
    agents = [AgentHealth("h1", "/s1", 11, 11, reply),
              AgentHealth("h2", "/s2", 0, 12, None, "not running")]
    table = view.render_agents(agents, PLAIN).splitlines()
    assert table[0] == "Agents  (xvm-cnid, one per host; 1/2 answering)"
    assert table[2].split()[:6] == ["h1", "11", "ok", "1h", "02m", "ADD"]
    assert table[3].split() == ["h2", "-", "NOT", "RUNNING", "-", "-", "-"]
    assert table[2].endswith("n1 14/14 (100.0%) NOT READY: full")


def test_render_peers_lists_routes_and_counts() -> None:
    from xvmcni.cli.status import Style
    from xvmcni.lab.status import HostPeers
    from xvmcni.lab.view import render_peers

    text = render_peers([HostPeers("h1", ["10.244.2.0/24 via 10.244.2.0",
                                          "10.244.3.0/24 via 172.30.0.13"], 1, 1),
                         HostPeers("h2", error="netns gone")], Style(color=False))
    lines = text.splitlines()
    assert "h1" in lines[2] and "10.244.2.0/24 via 10.244.2.0" in lines[2]
    assert lines[2].split()[-2:] == ["1", "1"]
    assert "10.244.3.0/24 via 172.30.0.13" in lines[3]
    assert "netns gone" in text
