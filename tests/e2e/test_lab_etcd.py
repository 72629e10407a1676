"""``xvmctl lab up --control etcd``: a real etcd in the lab's own namespace on a routed
underlay; every agent publishes its host there under its own name and programs the
others; every pod reaches every other pod, across the router too; ``down`` leaves
nothing (no namespace, no process, no link, no file), also without a state file."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest

from xvmcni import lab as labmod
from xvmcni.lab import etcdnode, grow, plumbing, probes
from xvmcni.lab.names import STATE_FILE, etcd_netns, lab_dir

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd-server")]


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True,
                         text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def etcd_keys(name: str) -> list[str]:
    """The keys in the lab's etcd, asked from inside its namespace."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{etcd_netns(name)}", "etcdctl",
                          "--endpoints", "http://127.0.0.1:2379", "get", "--prefix",
                          "--keys-only", "/xvm-cni/"],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, "ETCDCTL_API": "3"}).stdout
    return sorted(line for line in out.splitlines() if line)


def assert_gone(name: str, links_before: set[str]) -> None:
    assert labmod.lab_netns(name) == []
    assert not plumbing.netns_exists(etcd_netns(name))
    assert etcdnode.lab_etcds(name) == {} and labmod.lab_agents(name) == {}
    assert not lab_dir(name).exists()  # etcd's data dir with it
    new = root_links() - links_before
    assert not {link for link in new if link.startswith("xvm") or name in link}, new


@pytest.mark.parametrize(("model", "encap"), [("routed", "vxlan"), ("routed", "auto"),
                                              ("l2", "vxlan")])
def test_etcd_lab_on_a_routed_underlay(make_lab_name: Callable[[str], str], model: str,
                                       encap: str) -> None:
    name = make_lab_name("e")
    links_before = root_links()
    try:
        lab = labmod.lab_up(name, hosts=3, pods=2, model=model, encap=encap,
                            underlay="routed", control="etcd")
        assert lab.etcd_pid and etcdnode.lab_etcds(name) == {
            lab.etcd_pid: str(etcdnode.data_dir(name))}
        assert all(h.agent_adds == 2 for h in lab.hosts)  # the agents served every ADD
        # Each agent published its host under its own name (not the machine's).
        hosts = [k.rsplit("/", 1)[1] for k in etcd_keys(name) if "/hosts/" in k]
        assert sorted(hosts) == ["h1", "h2", "h3"]
        matrix = probes.ping_matrix(lab)
        assert matrix.ok, matrix.failures()
        assert matrix.total == 6 * 6  # five other pods and the gateway, from each pod
        underlay = {h.name: h.underlay.split("/")[0] for h in lab.hosts}
        peers = {p.host: p for p in labmod.lab_status(name).peers}
        assert set(peers) == {"h1", "h2", "h3"}
        for host, found in peers.items():
            assert not found.error, found.error
            others = sorted(a for h, a in underlay.items() if h != host)
            if model == "l2":  # unicast flooding: one all-zeros entry per remote host
                assert (found.flood, found.routes) == (others, []), (host, found)
                continue
            assert len(found.routes) == 2, (host, found.routes)
            tunnelled = 2 if encap == "vxlan" else (2 if host == "h2" else 1)
            assert (found.neighbours, found.fdb) == (tunnelled, tunnelled), (host, found)
        # Every host claimed a pod CIDR (routed) or address block (l2) of its own.
        if model == "routed":
            assert len({p.address.rsplit(".", 1)[0] for p in lab.pods}) == 3
    finally:
        report = labmod.lab_down(name)
    assert report.clean, report.leftovers
    assert report.etcd_stopped and len(report.agents_stopped) == 3
    assert_gone(name, links_before)


def test_down_removes_an_etcd_lab_without_its_state_file(
        make_lab_name: Callable[[str], str]) -> None:
    """A crash that lost state.json: down still finds etcd (and the agents) by their
    command lines and removes everything."""
    name = make_lab_name("s")
    links_before = root_links()
    try:
        labmod.lab_up(name, hosts=2, pods=1, model="routed", control="etcd")
        (lab_dir(name) / STATE_FILE).unlink()
        assert etcdnode.lab_etcds(name)
    finally:
        report = labmod.lab_down(name)
    assert report.clean, report.leftovers
    assert report.etcd_stopped
    assert_gone(name, links_before)


def test_a_host_joins_and_leaves_a_running_etcd_lab(
        make_lab_name: Callable[[str], str]) -> None:
    """No other host's configuration changes: a new host is found through etcd (every
    pod reaches its pod and back), and once drained it disappears from every peer."""
    name = make_lab_name("g")
    links_before = root_links()
    try:
        labmod.lab_up(name, hosts=2, pods=1, model="routed", underlay="routed",
                      control="etcd")
        lab, host = grow.add_host(name, 1)
        assert host.name == "h3" and host.agent_pid
        matrix = probes.ping_matrix(lab)
        assert matrix.ok, matrix.failures()
        peers = {p.host: p for p in labmod.lab_status(name).peers}
        assert all(len(peers[h].routes) == 2 for h in ("h1", "h2")), peers
        grow.remove_host(lab, "h3")
        assert labmod.load_lab(name).host("h1") and not plumbing.netns_exists(host.netns)
        # Within 5 s, under the TTL (10 s): the record was withdrawn, not left to expire.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            peers = {p.host: p for p in labmod.lab_status(name).peers}
            if all(len(p.routes) == 1 for p in peers.values()):
                break
            time.sleep(0.1)
        assert set(peers) == {"h1", "h2"}
        assert all(len(p.routes) == 1 for p in peers.values()), peers
        assert probes.ping_matrix(labmod.load_lab(name)).ok
    finally:
        report = labmod.lab_down(name)
    assert report.clean, report.leftovers
    assert_gone(name, links_before)
