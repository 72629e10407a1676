"""The routed model with the Kubernetes control plane, against a real kube-apiserver
and kube-controller-manager (tests/support/k8s.py; skipped without $XVM_TEST_K8S).

The hosts are the routed lab's namespaces; Node objects are made by the test as a
kubelet would; the controller-manager assigns their pod CIDRs; an xvm-cnid per host
follows the Nodes and programs routes / FDB / neighbours through the routed model.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from xvmcni.controlplane.k8sconfig import publish_keys

from .k8s_lab import CLUSTER6, K8sLab, in_cidr, wait_for
from .routed_lab import CLUSTER, NETWORK, fdb, ip, neighbours, ping, routes_of, sysctl

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

VXLAN_DEV = "xvmrv1"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[K8sLab]:
    made = K8sLab(tmp_path)
    try:
        yield made
    finally:
        made.destroy()


def state(lab: K8sLab, name: str, vxlan: bool = True) -> tuple[list[str], ...]:
    """Host ``name``'s programmed peers: route destinations, and with VXLAN the
    neighbour addresses and FDB destinations."""
    netns = lab.hosts[name].name
    routes = sorted(r["dst"] for r in routes_of(netns) + routes6(netns))
    if not vxlan:
        return (routes,)
    return (routes, sorted(n["dst"] for n in neighbours(netns, VXLAN_DEV)),
            sorted(e["dst"] for e in fdb(netns, VXLAN_DEV)))


def routes6(netns: str, proto: str = "202") -> list[dict[str, object]]:
    out = json.loads(ip("-j", "-6", "-n", netns, "route", "show", "proto", proto) or "[]")
    return [r for r in out if isinstance(r, dict)]


def expected(lab: K8sLab, name: str, members: list[str], cidrs: dict[str, list[str]],
             vxlan: bool = True) -> tuple[list[str], ...]:
    others = [m for m in members if m != name]
    routes = sorted(c for m in others for c in cidrs[m])
    if not vxlan:
        return (routes,)
    return (routes,
            sorted(str(ipaddress.ip_network(c).network_address) for m in others
                   for c in cidrs[m]),
            sorted(lab.address(m) for m in others))


def expect_peers(lab: K8sLab, hosts: list[str], members: list[str],
                 cidrs: dict[str, list[str]], vxlan: bool = True, timeout: float = 15) -> None:
    for name in hosts:
        want = expected(lab, name, members, cidrs, vxlan)
        try:
            wait_for(lambda n=name, w=want: state(lab, n, vxlan) == w,  # type: ignore[misc]
                     timeout, f"peers of {name} to be {want}")
        except AssertionError as exc:
            peers = lab.hosts[name].data_dir / NETWORK / "peers.json"
            raise AssertionError(
                f"{exc}; they are {state(lab, name, vxlan)}\n"
                f"{peers.read_text() if peers.exists() else 'no peers.json'}\n"
                f"{ip('-n', lab.hosts[name].name, '-6', 'route')}\n"
                f"{lab.agent_log(name)[-3000:]}") from None


def all_reach(lab: K8sLab, pods: dict[str, tuple[str, list[str]]]) -> None:
    for src, (src_ns, _) in pods.items():
        for dst, (_, addresses) in pods.items():
            if src == dst:
                continue
            for address in addresses:
                assert ping(lab.hosts[src], src_ns, address), f"{src} -> {dst} {address}"


def add_pod(lab: K8sLab, name: str, container: str, **conf: object) -> tuple[str, list[str]]:
    host = lab.hosts[name]
    pod = host.new_pod()
    from xvmcni.lab import plumbing
    plumbing.bring_up_lo(pod)
    result = host.add(lab.k8s_config(name, **conf), container, pod)  # type: ignore[arg-type]
    return pod, [i["address"].split("/")[0] for i in result["ips"]]


@pytest.mark.parametrize("dual", [False, True],
                         ids=["ipv4", "dual-stack"])
def test_vxlan_three_nodes_added_and_removed(lab: K8sLab, dual: bool) -> None:
    """h1, h2 (switch A) and h3 (behind the router) over VXLAN: Nodes get pod CIDRs
    from the controller-manager (IPv4, or IPv4 + IPv6 over the IPv4 underlay); pods
    on every host reach every other; a Node added later joins everywhere; the agents
    publish their VTEP MAC (the one the kernel has) and underlay address on their
    Node; a deleted Node leaves every peer."""
    names = ["h1", "h2", "h3"]
    count = 2 if dual else 1
    conf = {"clusterCIDR": [CLUSTER, CLUSTER6]} if dual else {}
    lab.build(tuple(names))
    lab.start_k8s(dual_stack=dual)
    for name in ("h1", "h2"):
        lab.add_node(name)
    for name in names:
        lab.boot(name, **conf)
    cidrs = {n: lab.pod_cidrs(n, count) for n in ("h1", "h2")}
    assert cidrs["h1"] != cidrs["h2"]
    assert all(ipaddress.ip_network(c[0]).subnet_of(ipaddress.ip_network(CLUSTER))
               for c in cidrs.values())
    wait_for(lambda: lab.own_cidrs("h1") == cidrs["h1"], 15, "h1's agent to know its CIDR")

    pods = {n: add_pod(lab, n, f"k{n}", **conf) for n in ("h1", "h2")}
    assert all(in_cidr(a, c) for a, c in zip(pods["h1"][1], cidrs["h1"], strict=True))

    # h3's Node does not exist yet: its ADD says so instead of guessing a range.
    res = lab.hosts["h3"].cni("ADD", lab.k8s_config("h3", **conf), "kh3-early",
                              lab.hosts["h3"].new_pod())
    assert res.rc != 0 and res.out is not None and res.out["code"] == 11, res.stdout
    assert "h3" in res.out["msg"], res.out

    lab.add_node("h3")
    cidrs["h3"] = lab.pod_cidrs("h3", count)
    wait_for(lambda: lab.own_cidrs("h3") == cidrs["h3"], 15, "h3's agent to know its CIDR")
    if dual:
        pods["h3"] = add_pod(lab, "h3", "kh3", **conf)
    else:
        # h3 uses node-local IPAM: host-local allocates from h3's pod CIDR.
        pods["h3"] = add_pod(lab, "h3", "kh3", ipam={
            "type": "node-local", "dataDir": str(lab.hosts["h3"].data_dir / "host-local")})
        assert in_cidr(pods["h3"][1][0], cidrs["h3"][0]), pods["h3"]
        leases = lab.hosts["h3"].data_dir / "host-local" / NETWORK
        assert (leases / pods["h3"][1][0]).exists(), "host-local's own lease file"
    expect_peers(lab, names, names, cidrs)
    all_reach(lab, pods)

    mac_key, underlay_key = publish_keys(NETWORK)
    for name in names:
        want = {mac_key: lab.vtep_mac(name), underlay_key: lab.address(name)}

        def published(n: str = name, w: dict[str, str] = want) -> bool:
            annotations = (lab.node(n) or {})["metadata"].get("annotations") or {}
            return all(annotations.get(k) == v for k, v in w.items())
        wait_for(published, 15, f"{name}'s annotations {want}")

    lab.delete_node("h2")
    expect_peers(lab, ["h1", "h3"], ["h1", "h3"], cidrs)
    assert all(ping(lab.hosts["h1"], pods["h1"][0], a) for a in pods["h3"][1])


def test_none_dual_stack_with_ipv6_prefix_and_readdressing(lab: K8sLab) -> None:
    """encap none, dual-stack pod CIDRs (the controller-manager with two cluster
    CIDRs), Nodes with an IPv4 InternalIP only: every host's IPv6 address is
    IPV6_PREFIX + its IPv4 address (seed 002), so IPv6 pod CIDRs are routed via
    those. Then h2 is readdressed (host and Node): the others follow."""
    names = ["h1", "h2", "h4"]
    prefix = "fd00:31::"
    lab.build(tuple(names))
    lab.start_k8s(dual_stack=True)
    for name in names:
        ip("-n", lab.hosts[name].name, "-6", "addr", "add",
           f"{prefix}{lab.address(name)}/64", "dev", "eth0", "nodad")
        lab.add_node(name)
    dual = {"clusterCIDR": [CLUSTER, CLUSTER6]}
    for name in names:
        lab.boot(name, env={"IPV6_PREFIX": prefix}, encap="none", **dual)
    cidrs = {n: lab.pod_cidrs(n, count=2) for n in names}
    for name in names:
        wait_for(lambda n=name: lab.own_cidrs(n) == cidrs[n],  # type: ignore[misc]
                 15, f"{name}'s agent to know its CIDRs")
    pods = {n: add_pod(lab, n, f"d{n}", encap="none", **dual) for n in names}
    assert all(len(p[1]) == 2 for p in pods.values()), pods
    expect_peers(lab, names, names, cidrs, vxlan=False)
    v6_routes = {r["dst"]: r.get("gateway") for r in routes6(lab.hosts["h1"].name)}
    assert v6_routes[cidrs["h2"][1]] == str(ipaddress.ip_address(f"{prefix}172.31.1.12"))
    all_reach(lab, pods)

    # h2 moves to 172.31.1.22 (and its IPv6 address with it).
    h2 = lab.hosts["h2"].name
    # Deleting a primary address takes its secondaries along unless promoted.
    sysctl(h2, "net.ipv4.conf.eth0.promote_secondaries", "1")
    ip("-n", h2, "addr", "add", "172.31.1.22/24", "dev", "eth0")
    ip("-n", h2, "-6", "addr", "add", f"{prefix}172.31.1.22/64", "dev", "eth0", "nodad")
    ip("-n", h2, "addr", "del", "172.31.1.12/24", "dev", "eth0")
    ip("-n", h2, "-6", "addr", "del", f"{prefix}172.31.1.12/64", "dev", "eth0")
    lab.set_addresses("h2", ["172.31.1.22"])

    def via_new() -> bool:
        netns = lab.hosts["h1"].name
        gateways = {r["dst"]: r.get("gateway") for r in routes_of(netns) + routes6(netns)}
        return gateways.get(cidrs["h2"][0]) == "172.31.1.22" \
            and gateways.get(cidrs["h2"][1]) == str(ipaddress.ip_address(
                f"{prefix}172.31.1.22"))
    wait_for(via_new, 20, "h1 to route h2's CIDRs via its new addresses")
    all_reach(lab, pods)


CIDR_KEY, ADDRESS_KEY = "cidr.example.com/net3", "node-ip.nordix.org/net3"
NET3 = {"h1": ("192.168.55.0/26,fd00:5::1:0/112", "172.31.1.11,fd00:31::ac1f:10b"),
        "h2": ("192.168.55.64/26,fd00:5::2:0/112", "172.31.1.12,fd00:31::ac1f:10c")}


def test_secondary_network_from_annotations_with_its_own_protocol(lab: K8sLab) -> None:
    """xcluster-cni's multi-networking: besides the primary network (spec.podCIDRs,
    protocol 202), a second xvm-cnid per host serves network net3 from seed 001's
    annotations (CIDR_ANNOTATION, ADDRESS_ANNOTATION, PROTOCOL=200 in its
    environment) on two of three nodes. Each instance programs and removes only its
    own protocol's routes; a malformed annotation on the third node is logged and
    leaves the other two working."""
    names = ["h1", "h2", "h4"]
    lab.build(tuple(names))
    lab.start_k8s()
    for name in names:
        ip("-n", lab.hosts[name].name, "-6", "addr", "add",
           f"fd00:31::{lab.address(name)}/64", "dev", "eth0", "nodad")
        lab.add_node(name)
        lab.boot(name, encap="none")
    cidrs = {n: lab.pod_cidrs(n) for n in names}
    for name, (cidr_value, address_value) in NET3.items():
        lab.annotate(name, {CIDR_KEY: cidr_value, ADDRESS_KEY: address_value})
    env = {"CIDR_ANNOTATION": CIDR_KEY, "ADDRESS_ANNOTATION": ADDRESS_KEY,
           "PROTOCOL": "200", "LOG_LEVEL": "debug"}
    net3: dict[str, dict[str, object]] = {}
    for name in names:
        conf = lab.k8s_config(name, encap="none", network="net3", vxlanID=3,
                              clusterCIDR=["192.168.55.0/24", "fd00:5::/96"],
                              dataDir=str(lab.instance_dir(name, "net3") / "data"))
        conf["agentSocket"] = lab.boot_instance(name, "net3", conf, env)
        net3[name] = conf

    primary = {n: add_pod(lab, n, f"p{n}", encap="none") for n in names}
    expect_peers(lab, names, names, cidrs, vxlan=False)
    second = {}
    for name in ("h1", "h2"):
        host = lab.hosts[name]
        pod = host.new_pod()
        from xvmcni.lab import plumbing
        plumbing.bring_up_lo(pod)
        result = host.add(net3[name], f"s{name}", pod)  # type: ignore[arg-type]
        second[name] = (pod, [i["address"].split("/")[0] for i in result["ips"]])
        assert all(in_cidr(a, c) for a, c in zip(second[name][1],
                                                  NET3[name][0].split(","), strict=True))
    # h4 is not on net3: its ADD says so.
    res = lab.hosts["h4"].cni("ADD", net3["h4"], "sh4", lab.hosts["h4"].new_pod())
    assert res.rc != 0 and res.out is not None and res.out["code"] == 11, res.stdout

    def proto200(name: str) -> dict[str, object]:
        netns = lab.hosts[name].name
        return {r["dst"]: r.get("gateway") for r in routes_of(netns, "200")
                + routes6(netns, "200")}
    wait_for(lambda: proto200("h1") == {"192.168.55.64/26": "172.31.1.12",
                                        "fd00:5::2:0/112": "fd00:31::ac1f:10c"}, 15,
             f"h1's net3 routes (protocol 200); {proto200('h1')}")
    assert proto200("h4") == {}
    all_reach(lab, second)
    all_reach(lab, primary)

    # A malformed annotation on h4: a clear log line, the others unaffected.
    lab.annotate("h4", {CIDR_KEY: "192.168.55.128/33", ADDRESS_KEY: "172.31.1.14"})
    log = lab.instance_dir("h1", "net3") / "agent.log"
    wait_for(lambda: "node h4 left out: annotation cidr.example.com/net3: "
             "'192.168.55.128/33' is not a CIDR" in log.read_text(), 15,
             "the malformed annotation to be reported")
    all_reach(lab, second)

    # net3 leaves h2: only protocol 200 routes go; the primary's stay.
    lab.annotate("h2", {CIDR_KEY: None, ADDRESS_KEY: None})
    wait_for(lambda: proto200("h1") == {}, 15, "h1 to drop h2's net3 routes")
    expect_peers(lab, names, names, cidrs, vxlan=False)
    all_reach(lab, primary)
