"""The routed model across simulated hosts (issue 8): pods on different hosts reach
each other over VXLAN or plain routes, the kernel holds exactly one neighbour, one
FDB entry and one route per remote host, and nothing that is not ours is touched."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xvmcni import networks, plugin_file
from xvmcni.lab import plumbing
from xvmcni.models.routed import RoutedModel
from xvmcni.runtime import Runtime

from .conftest import Host, agent_op, start_agent
from .routed_lab import HOSTS, Lab, fdb, ip, neighbours, ping, routes_of, sysctl

VXLAN_DEV = "xvmrv1"
BRIDGE = "xvmrb1"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.destroy()


def test_vxlan_pods_reach_each_other_across_a_router(lab: Lab) -> None:
    lab.build()
    pods = {n: lab.add_pod(n, lab.config(n), f"c-{n}") for n in lab.hosts}
    for src, (pod, _) in pods.items():
        for dst, (_, address) in pods.items():
            if src != dst:
                assert ping(lab.hosts[src], pod, address), f"{src} -> {dst} ({address})"
    # Exactly one neighbour, one FDB entry and one route per remote host.
    h1 = lab.hosts["h1"].name
    routes = routes_of(h1)
    assert sorted(r["dst"] for r in routes) == ["10.250.2.0/24", "10.250.3.0/24"]
    assert all(r["dev"] == VXLAN_DEV and "onlink" in r["flags"] for r in routes)
    assert sorted(r["gateway"] for r in routes) == ["10.250.2.0", "10.250.3.0"]
    neigh = neighbours(h1, VXLAN_DEV)
    assert sorted(n["dst"] for n in neigh) == ["10.250.2.0", "10.250.3.0"]
    entries = fdb(h1, VXLAN_DEV)
    assert sorted(e["dst"] for e in entries) == ["172.31.1.12", "172.31.2.13"]
    assert {e["mac"] for e in entries} == {n["lladdr"] for n in neigh}
    # Each host's VTEP MAC is the one every peer derived for it.
    h2_mac = json.loads(ip("-j", "-n", lab.hosts["h2"].name, "link", "show", VXLAN_DEV))[0]
    assert {n["lladdr"] for n in neigh if n["dst"] == "10.250.2.0"} == {h2_mac["address"]}


def test_a_pod_reaches_another_hosts_own_address_under_loose_rp_filter(lab: Lab) -> None:
    """The request leaves h1 on the underlay, unmasqueraded; h2 answers through its
    tunnel, so the reply reaches h1 out of the VXLAN device from a source h1 routes
    through eth0 (and the request reached h2's eth0 from a source h2 routes through
    its tunnel: both hosts need loose filtering, as doctor says). Loose filtering
    accepts that only on an interface with an IPv4 address: the VXLAN device holds
    exactly the network address of its host's pod CIDR."""
    lab.build(("h1", "h2"))
    pod, _ = lab.add_pod("h1", lab.config("h1"), "u-h1")
    lab.add_pod("h2", lab.config("h2"), "u-h2")
    h1 = lab.hosts["h1"].name
    addresses = json.loads(ip("-j", "-n", h1, "-4", "addr", "show", "dev", VXLAN_DEV))
    assert [(a["local"], a["prefixlen"]) for a in addresses[0]["addr_info"]] == \
        [("10.250.1.0", 32)]
    for host in lab.hosts.values():
        sysctl(host.name, "net.ipv4.conf.all.rp_filter", "2")
    assert ping(lab.hosts["h1"], pod, HOSTS["h2"][1].split("/")[0])


def test_plain_routes_on_one_subnet(lab: Lab) -> None:
    lab.build(("h1", "h2"), router=False)
    pods = {n: lab.add_pod(n, lab.config(n, encap="none"), f"n-{n}") for n in lab.hosts}
    assert ping(lab.hosts["h1"], pods["h1"][0], pods["h2"][1])
    assert ping(lab.hosts["h2"], pods["h2"][0], pods["h1"][1])
    h1 = lab.hosts["h1"].name
    routes = routes_of(h1)
    assert [(r["dst"], r["gateway"], r["dev"]) for r in routes] == \
        [("10.250.2.0/24", "172.31.1.12", "eth0")]
    assert VXLAN_DEV not in ip("-n", h1, "-o", "link", "show")


def test_auto_routes_directly_on_the_subnet_and_tunnels_across_the_router(lab: Lab) -> None:
    lab.build()
    pods = {n: lab.add_pod(n, lab.config(n, encap="auto"), f"a-{n}") for n in lab.hosts}
    for src, dst in (("h1", "h2"), ("h1", "h3"), ("h3", "h2")):
        assert ping(lab.hosts[src], pods[src][0], pods[dst][1]), f"{src} -> {dst}"
    h1 = lab.hosts["h1"].name
    by_dst = {r["dst"]: r for r in routes_of(h1)}
    assert set(by_dst) == {"10.250.2.0/24", "10.250.3.0/24"}
    assert (by_dst["10.250.2.0/24"]["dev"], by_dst["10.250.2.0/24"]["gateway"]) == \
        ("eth0", "172.31.1.12")
    assert by_dst["10.250.3.0/24"]["dev"] == VXLAN_DEV
    assert [n["dst"] for n in neighbours(h1, VXLAN_DEV)] == ["10.250.3.0"]
    assert [e["dst"] for e in fdb(h1, VXLAN_DEV)] == ["172.31.2.13"]


@pytest.mark.parametrize("encap", ["vxlan", "none"])
def test_a_removed_peer_leaves_nothing_behind(lab: Lab, encap: str) -> None:
    lab.build(("h1", "h2"), router=False)
    # h3 is listed but does not exist: its entries are programmed all the same.
    peers = ("h1", "h2", "h3")
    if encap == "none":
        # A plain route needs an on-link next hop: give h3 an address on our subnet.
        lab_peers = lab.peers(peers)
        lab_peers[2]["address"] = "172.31.1.13"
        conf = lab.config("h1", encap=encap, controlPlane={"type": "static",
                                                           "peers": lab_peers})
    else:
        conf = lab.config("h1", encap=encap, peers=peers)
    lab.add_pod("h1", conf, "r1")
    h1 = lab.hosts["h1"].name
    assert len(routes_of(h1)) == 2
    # The next ADD carries the configuration without h3: h3 goes, all of it.
    lab.add_pod("h1", lab.config("h1", encap=encap, peers=("h1", "h2")), "r2")
    assert [r["dst"] for r in routes_of(h1)] == ["10.250.2.0/24"]
    if encap == "vxlan":
        assert [n["dst"] for n in neighbours(h1, VXLAN_DEV)] == ["10.250.2.0"]
        assert [e["dst"] for e in fdb(h1, VXLAN_DEV)] == ["172.31.1.12"]


def test_routes_of_other_protocols_are_never_touched(lab: Lab) -> None:
    lab.build(("h1", "h2"), router=False)
    h1 = lab.hosts["h1"].name
    # An operator's route to a peer's CIDR (proto static) and one elsewhere (proto 99).
    ip("-n", h1, "route", "add", "10.250.2.0/24", "via", "172.31.1.200", "proto", "static")
    ip("-n", h1, "route", "add", "10.250.9.0/24", "via", "172.31.1.201", "proto", "99")
    # A route with our protocol number on a device that is not ours stays too.
    ip("-n", h1, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    ip("-n", h1, "addr", "add", "172.31.5.1/24", "dev", "other0")
    ip("-n", h1, "link", "set", "other0", "up")
    ip("-n", h1, "route", "add", "10.250.8.0/24", "via", "172.31.5.2", "proto", "202")
    # And one with our number on the underlay outside clusterCIDR (another instance's).
    ip("-n", h1, "route", "add", "10.99.0.0/24", "via", "172.31.1.202", "proto", "202")
    before = sorted(ip("-n", h1, "route", "show").splitlines())
    conf = lab.config("h1", encap="none", peers=("h1", "h2"))
    pod, _ = lab.add_pod("h1", conf, "p1")
    # h2's CIDR is routed by someone else: left alone, and nothing of ours added.
    assert sorted(r["dst"] for r in routes_of(h1)) == ["10.250.8.0/24", "10.99.0.0/24"]
    assert "10.250.2.0/24 via 172.31.1.200 dev eth0 proto static" in ip("-n", h1, "route")
    assert lab.hosts["h1"].cni("DEL", conf, "p1", pod).rc == 0
    after = sorted(ip("-n", h1, "route", "show").splitlines())
    assert after == before


def test_rerunning_join_with_the_same_peers_changes_nothing(lab: Lab) -> None:
    """An agent restart (or any later ADD) reprograms the same peers: no route, FDB or
    neighbour may flap, so running pods lose nothing."""
    lab.build()
    conf = lab.config("h1")
    lab.add_pod("h1", conf, "s1")
    h1 = lab.hosts["h1"].name
    # Strict reverse-path filtering really is on in the lab's hosts.
    assert ip("netns", "exec", h1, "sysctl", "-n", "net.ipv4.conf.all.rp_filter").strip() \
        == "1"
    state = (routes_of(h1), neighbours(h1, VXLAN_DEV), fdb(h1, VXLAN_DEV))
    # The monitors print every change, deletion and re-creation of a route, neighbour
    # or FDB entry (stdbuf: they must not hold lines back when stopped).
    monitors = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True)
                for argv in (["stdbuf", "-oL", "ip", "-n", h1, "monitor", "route", "neigh"],
                             ["stdbuf", "-oL", "bridge", "-n", h1, "monitor", "fdb"])]
    try:
        time.sleep(0.5)  # let the monitors subscribe (not a timing assertion)
        lab.add_pod("h1", conf, "s2")
        lab.hosts["h1"].cni("DEL", conf, "s2", "")
        # A restarted agent: a fresh model repairs the host and programs the peers.
        network = networks.parse(conf)
        assert network.static_peers is not None
        with plumbing.inside(lab.hosts["h1"].path), \
                networks.open_model(network, Runtime.in_process()) as model:
            model.repair([])
            model.on_peers(list(network.static_peers))
            assert isinstance(model, RoutedModel)
            me = model.me("h1")
        time.sleep(0.3)
    finally:
        for mon in monitors:
            mon.terminate()
    events = [line for mon in monitors for line in mon.communicate(timeout=10)[0].splitlines()
              if VXLAN_DEV in line or "proto 202" in line]
    assert events == []
    assert (routes_of(h1), neighbours(h1, VXLAN_DEV), fdb(h1, VXLAN_DEV)) == state
    # What this host would publish is its VXLAN device's real MAC (and every peer
    # derives the same: test_vxlan_pods_reach_each_other_across_a_router).
    vxlan = json.loads(ip("-j", "-n", h1, "link", "show", VXLAN_DEV))[0]
    assert (str(me.underlay), me.vtep_mac, me.pod_cidrs) == \
        ("172.31.1.11", vxlan["address"], ("10.250.1.0/24",))


def test_the_last_pod_takes_everything_with_it(lab: Lab) -> None:
    lab.build(("h1", "h2"), router=False)
    h1 = lab.hosts["h1"]
    before = h1.snapshot()
    conf = lab.config("h1", encap="auto", ipMasq=True)
    pod, _ = lab.add_pod("h1", conf, "l1")
    assert routes_of(h1.name) and BRIDGE in h1.links()
    assert h1.cni("DEL", conf, "l1", pod).rc == 0
    assert routes_of(h1.name) == []
    after = h1.snapshot()
    assert after["links"] == before["links"] and after["nft"] == before["nft"]


def nft(netns: str, *args: str, script: str = "") -> str:
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    return subprocess.run(["nsenter", f"--net={path}", "nft", *args], input=script,
                          capture_output=True, text=True, check=True).stdout


def observe(netns: str, table: str, sources: list[str]) -> None:
    """A counter per source address for ICMP echo requests arriving in ``netns``."""
    rules = "".join(f"ip saddr {s} icmp type echo-request counter\n" for s in sources)
    nft(netns, "-f", "-", script=f"table inet {table} {{\n chain input {{\n"
                                  f"type filter hook input priority 0;\n{rules}}}\n}}\n")


def counts(netns: str, table: str) -> list[int]:
    out = nft(netns, "-j", "list", "table", "inet", table)
    return [e["counter"]["packets"] for item in json.loads(out)["nftables"]
            if "rule" in item for e in item["rule"]["expr"] if "counter" in e]


def test_masquerade_only_traffic_leaving_the_cluster(lab: Lab) -> None:
    lab.build(("h1", "h2"), router=False, outside=True)
    pod1, addr1 = lab.add_pod("h1", lab.config("h1", ipMasq=True), "m1")
    pod2, pod2_address = lab.add_pod("h2", lab.config("h2", ipMasq=True), "m2")
    h1_address = "172.31.1.11"
    observe(lab.outside, "xrobs", [h1_address, addr1])
    observe(lab.hosts["h1"].name, "xrobs", [addr1])
    observe(pod2, "xrobs", [addr1])
    host1 = lab.hosts["h1"]
    assert ping(host1, pod1, "172.31.1.100", count=3)        # outside the cluster
    assert ping(host1, pod1, pod2_address, count=3)          # pod to pod, other host
    assert ping(host1, pod1, h1_address, count=3)            # pod to its own host
    outside = counts(lab.outside, "xrobs")
    assert outside[0] >= 3 and outside[1] == 0, outside      # seen as the host
    assert counts(pod2, "xrobs")[0] >= 3                      # pod source kept
    assert counts(lab.hosts["h1"].name, "xrobs")[0] >= 3      # pod source kept


@pytest.mark.parametrize("change", [
    {"podCIDR": "10.250.1.0/33"},
    {"podCIDR": ["10.250.1.0/24", "10.250.7.0/24"]},
    {"encap": "gre"},
    {"routeProtocol": 4},
    {"ipMasq": True, "clusterCIDR": None},
    {"podCIDR": "10.251.1.0/24"},                       # outside clusterCIDR
    {"controlPlane": {"type": "static", "peers": [{"address": "not-an-ip",
                                                    "podCIDRs": ["10.250.2.0/24"]}]}},
    {"controlPlane": {"type": "static", "peers": [{"address": "172.31.1.12"}]}},
    {"vxlanID": 0},
])
def test_bad_configs_are_refused_and_change_nothing(lab: Lab, change: dict[str, Any]) -> None:
    lab.build(("h1",), router=False)
    host = lab.hosts["h1"]
    pod = host.new_pod()
    before = host.snapshot()
    conf = {k: v for k, v in {**lab.config("h1"), **change}.items() if v is not None}
    res = host.cni("ADD", conf, "bad1", pod)
    assert res.rc == 1 and res.out is not None and res.out["code"] == 7, res.stdout
    assert host.snapshot() == before


def test_a_foreign_bridge_of_our_name_is_refused_untouched(lab: Lab) -> None:
    lab.build(("h1",), router=False)
    host = lab.hosts["h1"]
    ip("-n", host.name, "link", "add", BRIDGE, "type", "bridge")
    pod = host.new_pod()
    before = host.snapshot()
    res = host.cni("ADD", lab.config("h1"), "bad2", pod)
    assert res.rc == 1 and res.out is not None and res.out["code"] == 7, res.stdout
    assert "was not created by xvm-cni" in res.out["msg"]
    after = host.snapshot()  # (the registry file is the command flow's, and stays)
    assert (after["links"], after["nft"]) == (before["links"], before["nft"])
    assert routes_of(host.name) == []


def test_seed_003_bvcni_configuration(lab: Lab) -> None:
    """bvcni's own file with only "type" and "hostInterface" changed: a routed network
    (no "model": a pod CIDR and no shared subnet say so), VXLAN, VNI 1."""
    lab.build(("h1",), router=False)
    host = lab.hosts["h1"]
    conf = {"cniVersion": "0.3.1", "name": "bvcni", "type": "xvm-cni",
            "podcidr": "10.244.1.0/24", "hostInterface": "eth0",
            "dataDir": str(host.data_dir)}
    pod = host.new_pod()
    result = host.add(conf, "b1", pod)
    assert result["ips"][0]["address"] == "10.244.1.2/24"
    assert result["ips"][0]["gateway"] == "10.244.1.1"
    links = host.links()
    assert links[VXLAN_DEV]["linkinfo"]["info_data"]["learning"] is False
    assert host.cni("DEL", conf, "b1", pod).rc == 0
    assert VXLAN_DEV not in host.links()


DOCKER_LIKE = ["-P FORWARD DROP", "-N DOCKER-USER", "-A FORWARD -j DOCKER-USER",
               "-A DOCKER-USER -j RETURN"]


def iptables(netns: str, *args: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "iptables-nft", *args],
                          capture_output=True, text=True, check=True).stdout


def test_docker_forward_drop_is_passed_through_docker_user(lab: Lab) -> None:
    """Docker's iptables-nft FORWARD policy DROP: an accept in our own table cannot
    override it; accept rules of ours at the top of DOCKER-USER do, and go on leave."""
    lab.build(("h1", "h2"), router=False)
    for host in lab.hosts.values():
        for line in DOCKER_LIKE:
            iptables(host.name, *line.split())
    docker_before = iptables(lab.hosts["h1"].name, "-S")
    pods = {n: lab.add_pod(n, lab.config(n), f"d-{n}") for n in lab.hosts}
    assert ping(lab.hosts["h1"], pods["h1"][0], pods["h2"][1])
    rules = iptables(lab.hosts["h1"].name, "-S", "DOCKER-USER").splitlines()
    assert rules[1:] == [
        '-A DOCKER-USER -s 10.250.1.0/24 -m comment --comment "xvm-cni:routed-net" -j ACCEPT',
        '-A DOCKER-USER -d 10.250.1.0/24 -m comment --comment "xvm-cni:routed-net" -j ACCEPT',
        "-A DOCKER-USER -j RETURN"], rules
    # A repeated join leaves them as they are (no duplicates).
    lab.add_pod("h1", lab.config("h1"), "d-again")
    assert len(iptables(lab.hosts["h1"].name, "-S", "DOCKER-USER").splitlines()) == 4
    h1 = lab.hosts["h1"]
    for container in ("d-h1", "d-again"):
        assert h1.cni("DEL", lab.config("h1"), container, "").rc == 0
    assert iptables(h1.name, "-S") == docker_before


V6 = {"h1": "fd00:250:0:1::/64", "h2": "fd00:250:0:2::/64", "h3": "fd00:250:0:3::/64"}


def dual_config(lab: Lab, name: str, encap: str = "vxlan") -> dict[str, Any]:
    peers = [dict(p, podCIDRs=[*p["podCIDRs"], V6[p["name"]]]) for p in lab.peers()]
    return lab.config(name, encap=encap, podCIDR=[HOSTS[name][2], V6[name]],
                      clusterCIDR=["10.250.0.0/16", "fd00:250::/56"], ipMasq=True,
                      controlPlane={"type": "static", "peers": peers})


def ping6(host: Host, pod: str, target: str) -> bool:
    # A fresh IPv6 address is tentative for a moment (duplicate address detection).
    for _ in range(10):
        if ping(host, pod, target):
            return True
        time.sleep(0.5)
    return False


def test_dual_stack_pods_over_vxlan_across_a_router(lab: Lab) -> None:
    lab.build()
    results = {}
    for n in lab.hosts:
        host = lab.hosts[n]
        pod = host.new_pod()
        results[n] = (pod, host.add(dual_config(lab, n), f"ds-{n}", pod))
    result = results["h1"][1]
    assert [ip_["address"] for ip_ in result["ips"]] == ["10.250.1.2/24",
                                                         "fd00:250:0:1::2/64"]
    assert {(r["dst"], r["gw"]) for r in result["routes"]} == {
        ("0.0.0.0/0", "10.250.1.1"), ("::/0", "fd00:250:0:1::1")}
    for src, dst in (("h1", "h3"), ("h3", "h2"), ("h2", "h1")):
        host, pod = lab.hosts[src], results[src][0]
        v4, v6 = (a["address"].split("/")[0] for a in results[dst][1]["ips"])
        assert ping(host, pod, v4), f"{src} -> {dst} {v4}"
        assert ping6(host, pod, v6), f"{src} -> {dst} {v6}"
    h1 = lab.hosts["h1"].name
    v6_routes = json.loads(ip("-6", "-j", "-n", h1, "route", "show", "proto", "202"))
    assert sorted(r["dst"] for r in v6_routes) == ["fd00:250:0:2::/64", "fd00:250:0:3::/64"]
    assert len(neighbours(h1, VXLAN_DEV)) == 4      # one per family and remote host
    assert len(fdb(h1, VXLAN_DEV)) == 2             # one per remote host


def test_ipv6_underlay_clamps_the_mtu(lab: Lab) -> None:
    lab.build(("h1", "h2"), router=False)
    v6_underlay = {"h1": "fd00:31::11", "h2": "fd00:31::12"}
    for n, address in v6_underlay.items():
        ip("-n", lab.hosts[n].name, "addr", "flush", "dev", "eth0", "scope", "global")
        ip("-n", lab.hosts[n].name, "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
    peers = [{"name": n, "address": a, "podCIDRs": [HOSTS[n][2]]}
             for n, a in v6_underlay.items()]
    pods = {}
    for n in lab.hosts:
        conf = lab.config(n, controlPlane={"type": "static", "peers": peers})
        host = lab.hosts[n]
        pod = host.new_pod()
        pods[n] = (pod, host.add(conf, f"u6-{n}", pod))
    pod_link = json.loads(ip("-j", "-n", os.path.basename(pods["h1"][0]), "link", "show",
                             "eth0"))[0]
    assert pod_link["mtu"] == 1500 - 70
    target = pods["h2"][1]["ips"][0]["address"].split("/")[0]
    assert ping(lab.hosts["h1"], pods["h1"][0], target)
    # A full-size packet (no fragmentation allowed) crosses the tunnel.
    res = lab.hosts["h1"].in_ns(pods["h1"][0], "ping", "-c", "1", "-W", "2", "-M", "do",
                                "-s", str(1430 - 28), target)
    assert res.returncode == 0, res.stdout
    entries = fdb(lab.hosts["h1"].name, VXLAN_DEV)
    assert [e["dst"] for e in entries] == ["fd00:31::12"]


def test_routed_through_the_agent(lab: Lab, tmp_path: Path) -> None:
    """The thin plugin and xvm-cnid serve the routed model as they serve l2."""
    lab.build(("h1", "h2"), router=False)
    h1 = lab.hosts["h1"]
    h1.plugin = str(plugin_file.write(tmp_path / "bin" / "xvm-cni"))
    start_agent(h1)
    pods = {n: lab.add_pod(n, lab.config(n, encap="auto"), f"ag-{n}") for n in lab.hosts}
    assert ping(h1, pods["h1"][0], pods["h2"][1])
    assert [r["dst"] for r in routes_of(h1.name)] == ["10.250.2.0/24"]
    # Damage: the pod's host veth and the peer route vanish. The agent's reconcile
    # re-plugs the pod and reprograms the peer.
    veth = next(name for name, link in h1.links().items()
                if link.get("ifalias", "").startswith("xvm-cni:routed-net:ag-h1"))
    ip("-n", h1.name, "link", "del", veth)
    ip("-n", h1.name, "route", "del", "10.250.2.0/24", "proto", "202")
    assert not ping(h1, pods["h1"][0], pods["h2"][1], count=1)
    report = agent_op(h1, "gc")["networks"]
    assert [n["replugged"] for n in report] == [["ag-h1/eth0"]], report
    assert ping(h1, pods["h1"][0], pods["h2"][1])
    assert [r["dst"] for r in routes_of(h1.name)] == ["10.250.2.0/24"]
    status = agent_op(h1, "status")
    assert "routed" in json.dumps(status), status
    assert h1.cni("DEL", lab.config("h1", encap="auto"), "ag-h1", pods["h1"][0]).rc == 0
    assert routes_of(h1.name) == [] and BRIDGE not in h1.links()
    served = sum(agent_op(h1, "status")["agent"]["requests"].values())
    assert served == h1.calls == 2


def test_del_succeeds_after_the_host_interface_vanished(lab: Lab) -> None:
    lab.build(("h1", "h2"), router=False)
    h1 = lab.hosts["h1"]
    conf = lab.config("h1", encap="auto")
    pod, _ = lab.add_pod("h1", conf, "gone1")
    ip("-n", h1.name, "link", "del", "eth0")
    res = h1.cni("DEL", conf, "gone1", pod)
    assert res.rc == 0, res.stdout
    assert BRIDGE not in h1.links() and VXLAN_DEV not in h1.links()


def test_check_and_gc(lab: Lab) -> None:
    lab.build(("h1", "h2"), router=False)
    h1 = lab.hosts["h1"]
    conf = lab.config("h1", encap="auto")
    pod = h1.new_pod()
    result = h1.add(conf, "ck1", pod)
    assert h1.cni("CHECK", {**conf, "prevResult": result}, "ck1", pod).rc == 0
    # The host side broken: CHECK says what is wrong.
    ip("-n", h1.name, "link", "set", BRIDGE, "down")
    broken = h1.cni("CHECK", {**conf, "prevResult": result}, "ck1", pod)
    assert broken.rc == 1 and broken.out is not None and broken.out["code"] == 105
    assert f"bridge {BRIDGE} is down" in broken.out["details"]
    ip("-n", h1.name, "link", "set", BRIDGE, "up")
    # GC with no valid attachment: the pod and then the host side go.
    gc = {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}
    assert h1.cni("GC", gc, "", "").rc == 0
    assert BRIDGE not in h1.links() and routes_of(h1.name) == []
