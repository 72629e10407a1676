"""Model macvlan (issue 10) through the real plugin on three simulated hosts: pods of
one network talk directly (TTL unchanged), pods of different networks through the
node routers (TTL decremented twice), hosts reach pods on other hosts, networks are
separate L2 domains, the last pod leaving removes everything, the network is chosen
per pod, requested addresses are honoured or refused, IPv6 and dual-stack work."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from xvmcni import plugin_file

from .conftest import agent_op, start_agent
from .macvlan_lab import HOSTS, Lab, address, ip, links, ping_ttl, rules

PROTO = "204"


@pytest.fixture(params=["inprocess", "agent"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """Three hosts; every test runs twice: plugin in-process, and the thin plugin
    talking to an xvm-cnid on each host."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    made = Lab(tmp_path)
    try:
        made.build()
        if request.param == "agent":
            for name, host in made.hosts.items():
                host.plugin = str(plugin_file.write(tmp_path / name / "bin" / "xvm-cni"))
                start_agent(host)
        yield made
        for host in made.hosts.values():
            if host.agent is not None and host.calls:
                served = sum(agent_op(host, "status")["agent"]["requests"].values())
                assert served == host.calls, f"agent served {served} of {host.calls} calls"
    finally:
        made.destroy()


def network_args(name: str) -> str:
    return f"XVM_NETWORK={name}"


def ours_left(netns: str) -> list[str]:
    """Every kernel object of the model still on host ``netns``."""
    left = [n for n in links(netns) if n.startswith(("xvmmx", "xvmmh"))]
    for family in ("-4", "-6"):
        left += [f"rule {r}" for r in rules(netns, family) if r.get("protocol") == PROTO]
        routes = json.loads(ip(family, "-j", "-n", netns, "route", "show", "table", "all")
                            or "[]")
        left += [f"route {r}" for r in routes if str(r.get("protocol")) == PROTO]
    return left


def test_same_network_direct_other_network_through_routers(lab: Lab) -> None:
    h1, h2 = lab.config("h1"), lab.config("h2")
    a, ra = lab.add_pod("h1", h1, "a-blue")                      # default network: blue
    b, rb = lab.add_pod("h2", h2, "b-blue", network_args("blue"))
    _, rc = lab.add_pod("h2", h2, "c-red", network_args("red"))
    # h1 has joined red too: red's slices are routed over red's own L2 (the case of a
    # host without a red pod is test_every_host_routes_into_networks_it_has_not_joined).
    lab.add_pod("h1", h1, "d-red", network_args("red"))
    assert address(ra).startswith("10.10.11.") and address(rb).startswith("10.10.12.")
    assert address(rc).startswith("10.20.12.")
    # The router address of each host is the first of its slice, the pods' gateway.
    assert ra["ips"][0]["gateway"] == "10.10.11.1"
    assert rc["ips"][0]["gateway"] == "10.20.12.1"
    host1 = lab.hosts["h1"]
    # Same network: straight over the L2, no router in between.
    assert ping_ttl(host1, a, address(rb)) == 64
    # Different networks: through h1's router, then h2's (each decrements the TTL once).
    assert ping_ttl(host1, a, address(rc)) == 62
    # A host reaches pods on other hosts (their own router on the far side answers for
    # nothing: the pod itself replies).
    assert host1.in_ns(host1.path, "ping", "-c", "1", "-W", "2", address(rb)).returncode == 0
    assert host1.in_ns(host1.path, "ping", "-c", "1", "-W", "2", address(rc)).returncode == 0
    # One route per remote host's slice, via that host's router, on the host macvlan.
    routes = json.loads(ip("-j", "-n", host1.name, "route", "show", "proto", PROTO))
    blue = {r["dst"]: r["gateway"] for r in routes if r["dev"] == "xvmmh110"}
    assert blue == {"10.10.12.0/24": "10.10.12.1", "10.10.13.0/24": "10.10.13.1"}
    # The bypass rule: subnet to subnet looks up table 192 first.
    bypass = [r for r in rules(host1.name) if r.get("protocol") == PROTO]
    assert {(r["src"], r["dst"], r["table"]) for r in bypass} == {
        ("10.10.0.0", "10.10.0.0", "192"), ("10.20.0.0", "10.20.0.0", "192")}
    del b


def test_networks_are_separate_l2_domains(lab: Lab) -> None:
    h1, h2 = lab.config("h1"), lab.config("h2")
    a, _ = lab.add_pod("h1", h1, "a", network_args("blue"))
    _, rc = lab.add_pod("h2", h2, "c", network_args("red"))
    host = lab.hosts["h1"]
    target = address(rc)
    # Pretend the red pod were on blue's L2: a route on the link, then ARP for it.
    ip("-n", a.rsplit("/", 1)[-1], "route", "add", f"{target}/32", "dev", "eth0")
    assert ping_ttl(host, a, target) is None
    neigh = ip("-n", a.rsplit("/", 1)[-1], "neigh", "show", target)
    assert "lladdr" not in neigh, f"pod on blue resolved a red pod's MAC: {neigh}"


def test_last_pod_leaving_removes_everything(lab: Lab) -> None:
    conf = lab.config("h1", vxlans=[{**n, "isolated": True} if n["name"] == "red" else n
                                    for n in lab.config("h1")["vxlans"]])
    host = lab.hosts["h1"]
    pods = [(lab.add_pod("h1", conf, f"p{i}", network_args(net))[0], f"p{i}", net)
            for i, net in enumerate(("blue", "blue", "red", "green"))]
    assert ours_left(host.name)
    assert any("xvm_" in t for t in host.nft_tables())   # red is isolated
    for pod, container, _net in pods[:-1]:
        assert host.cni("DEL", conf, container, pod).rc == 0
    left = ours_left(host.name)
    assert left and all("xvmmx110" not in x and "xvmmh120" not in x for x in left)
    pod, container, net = pods[-1]
    assert host.cni("DEL", conf, container, pod, args=network_args(net)).rc == 0
    assert ours_left(host.name) == []
    assert not [t for t in host.nft_tables() if t.startswith("inet xvm_")]
    # A second DEL finds nothing and still succeeds.
    assert host.cni("DEL", conf, container, pod).rc == 0


def test_network_chosen_per_pod_and_requested_address(lab: Lab) -> None:
    host = lab.hosts["h1"]
    annotated = lab.config("h1", args={"annotations": {
        "vxlan-cni.phdata.io/NetworkName": "red",
        "vxlan-cni.phdata.io/RequestedAddress": "10.20.11.77"}})
    _, result = lab.add_pod("h1", annotated, "ann")
    assert address(result) == "10.20.11.77"
    # By address alone (the 'ips' capability) the network is the one holding it.
    by_ip = lab.config("h1", runtimeConfig={"ips": ["10.10.11.99/16"]})
    _, result = lab.add_pod("h1", by_ip, "cap")
    assert address(result) == "10.10.11.99"
    # From the namespace's name.
    by_ns = lab.config("h1", k8sNetworkFromNamespace=True, defaultNetwork=None)
    _, result = lab.add_pod("h1", by_ns, "ns", "K8S_POD_NAMESPACE=green")
    assert address(result).startswith("10.30.11.")
    # Refused cleanly, the host unchanged: unknown network, taken address, an address
    # outside the named network, no network at all.
    for conf, args, code, words in (
            (lab.config("h1"), network_args("purple"), 7, "not one of"),
            (annotated, "", 103, "in use"),
            (lab.config("h1"), "XVM_NETWORK=blue;IP=10.20.11.5", 7, "not inside"),
            (by_ns, "K8S_POD_NAMESPACE=default", 7, "no network for this pod")):
        before = host.snapshot()
        res = host.cni("ADD", conf, "refused", host.new_pod(), args=args)
        assert res.rc == 1 and res.out is not None and res.out["code"] == code, res.stdout
        assert words in str(res.out["msg"]), res.out
        after = host.snapshot()
        assert (after["links"], after["nft"]) == (before["links"], before["nft"])


def test_dual_stack_network(lab: Lab) -> None:
    a, ra = lab.add_pod("h1", lab.config("h1"), "g1", network_args("green"))
    b, rb = lab.add_pod("h2", lab.config("h2"), "g2", network_args("green"))
    _, rr = lab.add_pod("h2", lab.config("h2"), "r2", network_args("red"))
    lab.add_pod("h1", lab.config("h1"), "r1", network_args("red"))
    host = lab.hosts["h1"]
    v6a, v6b = address(ra, 6), address(rb, 6)
    assert v6a.startswith("fd00:30::b:") and v6b.startswith("fd00:30::c:")
    gateways = {item["address"].split("/")[0]: item.get("gateway") for item in ra["ips"]}
    assert gateways[v6a] == "fd00:30::b:0:0:1"
    assert ping_ttl(host, a, v6b) == 64                  # same L2, IPv6
    assert ping_ttl(host, a, address(rb)) == 64          # same L2, IPv4
    assert ping_ttl(host, a, address(rr)) == 62          # green -> red, IPv4
    v6routes = json.loads(ip("-6", "-j", "-n", host.name, "route", "show", "proto", PROTO))
    assert {ipaddress.ip_network(r["dst"]) for r in v6routes} == {
        ipaddress.ip_network("fd00:30:0:0:c::/80"), ipaddress.ip_network("fd00:30:0:0:d::/80")}
    # The host reaches the other host's pod over IPv6 too (slice route, then the L2).
    assert host.in_ns(host.path, "ping", "-c", "3", "-i", "0.2", "-W", "2", v6b).returncode == 0
    assert [r for r in rules(host.name, "-6") if r.get("protocol") == PROTO]
    del b


def test_isolated_network_is_cut_off_from_the_others(lab: Lab) -> None:
    isolated = [{**n, "isolated": True} if n["name"] == "red" else n
                for n in lab.config("h1")["vxlans"]]
    h1, h2 = lab.config("h1", vxlans=isolated), lab.config("h2", vxlans=isolated)
    a, _ = lab.add_pod("h1", h1, "a", network_args("blue"))
    lab.add_pod("h1", h1, "d", network_args("red"))
    _, rc = lab.add_pod("h2", h2, "c", network_args("red"))
    _, rb = lab.add_pod("h2", h2, "b", network_args("blue"))
    host = lab.hosts["h1"]
    assert ping_ttl(host, a, address(rb)) == 64
    assert ping_ttl(host, a, address(rc)) is None


def test_all_three_hosts(lab: Lab) -> None:
    pods = {n: lab.add_pod(n, lab.config(n), f"x-{n}") for n in HOSTS}
    for src in HOSTS:
        for dst in HOSTS:
            if src != dst:
                assert ping_ttl(lab.hosts[src], pods[src][0], address(pods[dst][1])) == 64


@pytest.mark.skipif(not os.access("/usr/lib/cni/host-local", os.X_OK),
                    reason="needs the reference host-local plugin")
def test_delegated_ipam_per_network(lab: Lab) -> None:
    """A network with its own 'ipam' section: the delegated plugin chooses (here the
    reference host-local with a range an operator keeps apart per host), we plumb."""
    host = lab.hosts["h1"]
    store = str(host.data_dir / "host-local")
    nets = [{**n, "ipam": {"type": "host-local", "dataDir": store,
                           "ranges": [[{"subnet": "10.20.0.0/16",
                                        "rangeStart": "10.20.200.10",
                                        "rangeEnd": "10.20.200.20"}]]}}
            if n["name"] == "red" else n for n in lab.config("h1")["vxlans"]]
    conf = lab.config("h1", vxlans=nets)
    # IgnoreUnknown=1, as Kubernetes runtimes send it: host-local refuses our own key.
    pod, result = lab.add_pod("h1", conf, "dl", "IgnoreUnknown=1;" + network_args("red"))
    assert address(result) == "10.20.200.10"
    assert result["ips"][0]["gateway"] == "10.20.11.1"
    _, other = lab.add_pod("h2", lab.config("h2"), "o", network_args("red"))
    assert ping_ttl(host, pod, address(other)) == 64
    assert host.cni("DEL", conf, "dl", pod).rc == 0
    assert not list((host.data_dir / "host-local").rglob("10.20.200.10"))


def test_every_host_routes_into_networks_it_has_not_joined(lab: Lab) -> None:
    """h1 has only a blue pod, h2 only a red one: each host reaches the other network
    through the host that serves it (one route per remote slice via its underlay
    address), under strict rp_filter; when h1's last pod goes, so do those routes."""
    h1, h2 = lab.config("h1"), lab.config("h2")
    a, _ = lab.add_pod("h1", h1, "a", network_args("blue"))
    _, rc = lab.add_pod("h2", h2, "c", network_args("red"))
    host = lab.hosts["h1"]
    via_underlay = json.loads(ip("-j", "-n", host.name, "route", "show", "proto", PROTO,
                                 "dev", "eth0"))
    assert {r["dst"]: r["gateway"] for r in via_underlay if r["dst"].startswith("10.")} \
        == {"10.20.12.0/24": "172.29.0.12", "10.20.13.0/24": "172.29.0.13",
            "10.30.12.0/24": "172.29.0.12", "10.30.13.0/24": "172.29.0.13"}
    assert ping_ttl(host, a, address(rc)) == 62
    assert host.cni("DEL", h1, "a", a).rc == 0
    assert ours_left(host.name) == []


def test_check_gc_and_status(lab: Lab) -> None:
    host = lab.hosts["h1"]
    conf = lab.config("h1")
    pod, result = lab.add_pod("h1", conf, "k", network_args("red"))
    lab.add_pod("h1", conf, "g")   # blue, the default network
    check = {**conf, "prevResult": result}
    # CHECK finds the pod's network by its record (no XVM_NETWORK needed).
    assert host.cni("CHECK", check, "k", pod).rc == 0, host.cni("CHECK", check, "k", pod)
    ip("-n", pod.rsplit("/", 1)[-1], "route", "del", "default")
    res = host.cni("CHECK", check, "k", pod)
    assert res.rc == 1 and res.out is not None and res.out["code"] == 105, res.out
    assert "route" in str(res.out.get("details", "")), res.out
    assert host.cni("STATUS", {**conf, "cniVersion": "1.1.0"}).rc == 0
    # GC with only "k" valid: "g" goes, and with it blue from this host.
    gc = {**conf, "cniVersion": "1.1.0",
          "cni.dev/valid-attachments": [{"containerID": "k", "ifname": "eth0"}]}
    assert host.cni("GC", gc).rc == 0
    names = links(host.name)
    assert "xvmmx120" in names and "xvmmx110" not in names and "xvmmh110" not in names
    assert host.cni("DEL", conf, "k", pod).rc == 0
    assert ours_left(host.name) == []


def test_agent_reconcile_rebuilds_a_broken_host_side(lab: Lab) -> None:
    """Someone deletes the network's VXLAN device (the pods' macvlans go with it) and
    the bypass rule: the agent's reconcile rebuilds both and re-plugs the pod, which
    reaches its peer on another host again with its address."""
    host = lab.hosts["h1"]
    if host.agent is None:
        pytest.skip("reconcile is the agent's")
    a, ra = lab.add_pod("h1", lab.config("h1"), "a", network_args("blue"))
    _, rb = lab.add_pod("h2", lab.config("h2"), "b", network_args("blue"))
    assert ping_ttl(host, a, address(rb)) == 64
    ip("-n", host.name, "rule", "del", "table", "192", "from", "10.10.0.0/16")
    ip("-n", host.name, "link", "del", "xvmmx110")
    assert "eth0" not in ip("-n", a.rsplit("/", 1)[-1], "-o", "link")
    report = agent_op(host, "gc")["networks"]
    blue = next(r for r in report if r["name"] == "mvnet@blue")
    assert not blue["error"] and blue["replugged"] == ["a/eth0"], blue
    assert ping_ttl(host, a, address(rb)) == 64
    assert address(ra) in ip("-n", a.rsplit("/", 1)[-1], "-o", "addr")
    assert [r for r in rules(host.name) if r.get("protocol") == PROTO
            and r.get("src") == "10.10.0.0"]


def test_parallel_adds_on_two_networks(lab: Lab) -> None:
    """Six ADDs at once on one host, three per network (each network's first one joins
    while the other network's run): every pod gets a distinct address, and the routes
    settle as a serial run leaves them (slice routes on each network's macvlan, none
    over the underlay, since this host has joined both)."""
    host = lab.hosts["h1"]
    conf = lab.config("h1")
    pods = [(host.new_pod(), f"par{i}", ("blue", "red")[i % 2]) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(
            lambda p: host.add(conf, p[1], p[0], args=network_args(p[2])), pods))
    addresses = [address(r) for r in results]
    assert len(set(addresses)) == 6
    routes = json.loads(ip("-j", "-n", host.name, "route", "show", "proto", PROTO))
    by_dev = {(r["dev"], r["dst"]) for r in routes}
    assert by_dev == {("xvmmh110", "10.10.12.0/24"), ("xvmmh110", "10.10.13.0/24"),
                      ("xvmmh120", "10.20.12.0/24"), ("xvmmh120", "10.20.13.0/24"),
                      ("eth0", "10.30.12.0/24"), ("eth0", "10.30.13.0/24")}
    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(lambda p: host.cni("DEL", conf, p[1], p[0]).rc, pods))
    assert codes == [0] * 6
    assert ours_left(host.name) == []


def test_a_foreign_device_of_our_name_is_never_touched(lab: Lab) -> None:
    host = lab.hosts["h1"]
    ip("-n", host.name, "link", "add", "xvmmh110", "type", "bridge")
    before = host.snapshot()
    res = host.cni("ADD", lab.config("h1"), "f", host.new_pod(), args=network_args("blue"))
    assert res.rc == 1 and res.out is not None and res.out["code"] == 7, res.stdout
    assert "xvmmh110" in str(res.out["msg"]) and "someone else" in str(res.out["msg"])
    after = host.snapshot()
    assert after["links"] == before["links"] and "xvmmx110" not in after["links"]
    assert links(host.name)["xvmmh110"]["linkinfo"]["info_kind"] == "bridge"
    # Only the foreign device itself: the VXLAN device the join made is gone again,
    # and no rule or route of ours was left.
    assert ours_left(host.name) == ["xvmmh110"]
