"""A pod cannot pretend to be another (issue 7, item 9), through the real plugin: the
l2 model admits each pod's own MAC and address in the network's anti-spoofing table
on ADD and removes them on DEL. The frame-level forgeries (ARP for the gateway, other
pods' MACs, router advertisements) are tested against the table itself in
test_antispoof.py."""

from __future__ import annotations

import time

from xvmcni.dataplane import antispoof, nft
from xvmcni.dataplane.ownership import guard_table_name
from xvmcni.lab.plumbing import inside

from .conftest import Host, ip

GUARD = guard_table_name("xvm-network")


def ping(host: Host, pod: str, target: str, *extra: str) -> bool:
    return host.in_ns(pod, "ping", "-c", "1", "-W", "1", *extra, target).returncode == 0


def counters(host: Host) -> dict[str, int]:
    with inside(host.path):
        found = antispoof.drop_counters(GUARD)
    assert found is not None, "the anti-spoofing table is missing"
    return {name: packets for name, (packets, _bytes) in found.items()}


def addr(result: dict[str, object]) -> str:
    ips = result["ips"]
    assert isinstance(ips, list)
    return str(ips[0]["address"]).split("/")[0]


def test_a_pod_sends_only_as_itself(host: Host) -> None:
    conf = host.config()
    pod_a, pod_b = host.new_pod(), host.new_pod()
    a = host.add(conf, "idA", pod_a)
    b = host.add(conf, "idB", pod_b)
    a_ip, b_ip = addr(a), addr(b)
    ns_a = pod_a.rsplit("/", 1)[-1]
    assert ping(host, pod_a, b_ip), "normal traffic must pass"
    before = counters(host)

    # A takes a second address (it has CAP_NET_ADMIN in its own namespace) and
    # sends from it: dropped at its host port, and counted.
    ip("-n", ns_a, "addr", "add", "10.244.77.77/16", "dev", "eth0")
    assert not ping(host, pod_a, b_ip, "-I", "10.244.77.77")
    # B's own address, claimed by A: dropped as well.
    ip("-n", ns_a, "addr", "add", f"{b_ip}/32", "dev", "eth0")
    assert not ping(host, pod_a, host.config()["gateway"], "-I", b_ip)
    after = counters(host)
    assert after["drop_ipv4"] + after["drop_arp"] > before["drop_ipv4"] + before["drop_arp"]

    # A changes its MAC: nothing it sends passes any more.
    ip("-n", ns_a, "addr", "del", f"{b_ip}/32", "dev", "eth0")
    ip("-n", ns_a, "link", "set", "eth0", "address", "0a:58:0a:f4:99:99")
    assert not ping(host, pod_a, b_ip)
    assert counters(host)["drop_mac"] > after["drop_mac"]
    assert ping(host, pod_b, host.config()["gateway"]), "B is not affected"
    assert a_ip != b_ip

    with inside(host.path):
        members = antispoof.members(GUARD)
    assert members is not None
    assert {a["interfaces"][1]["name"], b["interfaces"][1]["name"]} <= set(members.ports)
    assert host.cni("DEL", conf, "idA", pod_a).rc == 0
    # The agent evicts with its veth reaper, off the request path (within ~50 ms).
    deadline = time.monotonic() + 5
    while True:
        with inside(host.path):
            members = antispoof.members(GUARD)
        assert members is not None
        if a["interfaces"][1]["name"] not in members.ports:
            break
        assert time.monotonic() < deadline, "the DEL'd pod's port was never evicted"
        time.sleep(0.02)
    assert host.cni("DEL", conf, "idB", pod_b).rc == 0
    assert f"bridge {GUARD}" not in host.nft_tables()


def test_check_sees_a_pod_that_is_not_admitted(host: Host) -> None:
    conf = host.config("1.0.0")
    pod = host.new_pod()
    result = host.add(conf, "idC", pod)
    veth = result["interfaces"][1]["name"]
    assert host.cni("CHECK", {**conf, "prevResult": result}, "idC", pod).rc == 0
    with inside(host.path):
        members = antispoof.members(GUARD)
        assert members is not None
        nft.run_batch(antispoof.evict_recorded_batch(GUARD, members, veth))
    broken = host.cni("CHECK", {**conf, "prevResult": result}, "idC", pod)
    assert broken.rc == 1 and broken.out is not None and broken.out["code"] == 105
    assert "not admitted" in broken.out.get("details", "")
    assert host.cni("DEL", conf, "idC", pod).rc == 0


def test_a_readd_right_after_del_stays_admitted(host: Host) -> None:
    """The agent's reaper evicts a DEL'd port in its next batch; a re-ADD of the same
    container and interface in between (podman restart) must keep its admission."""
    conf = host.config()
    pod, peer = host.new_pod(), host.new_pod()
    host.add(conf, "idP", peer)
    first = host.add(conf, "idR", pod)
    assert host.cni("DEL", conf, "idR", pod).rc == 0
    again = host.add(conf, "idR", pod)
    port = again["interfaces"][1]["name"]
    assert port == first["interfaces"][1]["name"]
    time.sleep(0.5)  # several reaper batch windows
    with inside(host.path):
        members = antispoof.members(GUARD)
    assert members is not None and port in members.ports
    assert members.port(port).macs, "the re-added pod's MAC was evicted"
    peer_ip = addr(host.add(conf, "idP", peer))
    assert ping(host, pod, peer_ip)
    for container, netns in (("idR", pod), ("idP", peer)):
        assert host.cni("DEL", conf, container, netns).rc == 0


def test_gc_evicts_admissions_no_container_explains(host: Host) -> None:
    """An agent killed between a DEL and its reaper's batch leaves the port admitted;
    GC (and the agent's reconcile, which runs the same step) evicts it."""
    conf = host.config("1.1.0")
    pod = host.new_pod()
    result = host.add(conf, "idG", pod)
    live = result["interfaces"][1]["name"]
    with inside(host.path):
        nft.run_batch(antispoof.admit_batch(GUARD, "xvm00000000dead", "0a:58:0a:f4:63:63",
                                            ["10.244.99.99"]))
    valid = [{"containerID": "idG", "ifname": "eth0"}]
    gc = host.cni("GC", {**conf, "cni.dev/valid-attachments": valid}, "", "")
    assert gc.rc == 0, gc.stdout
    with inside(host.path):
        members = antispoof.members(GUARD)
    assert members is not None
    assert "xvm00000000dead" not in members.ports
    assert live in members.ports and members.port(live).macs
    assert host.cni("DEL", conf, "idG", pod).rc == 0
