"""ADD/DEL/GC/STATUS over a container's life: idempotence, nothing leaked."""

from __future__ import annotations

import json

from .conftest import Host, ip


def test_repeated_add_del_leaves_nothing_behind(host: Host) -> None:
    before = host.snapshot()
    conf = host.config()
    pod = host.new_pod()
    seen = set()
    for i in range(15):
        result = host.add(conf, f"loop{i}", pod)
        seen.add(result["ips"][0]["address"])
        assert host.cni("DEL", conf, f"loop{i}", pod).rc == 0
    # Round robin: a released address is not handed out again at once.
    assert len(seen) == 15
    after = host.snapshot()
    assert after["links"] == before["links"]
    assert after["nft"] == before["nft"] == []
    assert ip("-n", pod.rsplit("/", 1)[1], "-o", "link").count("\n") == 1  # only lo


def test_add_is_idempotent_per_container_and_ifname(host: Host) -> None:
    conf = host.config()
    pod = host.new_pod()
    first = host.add(conf, "same", pod)
    second = host.add(conf, "same", pod)
    assert first["ips"] == second["ips"]
    assert first["interfaces"][2]["mac"] == second["interfaces"][2]["mac"]
    other = host.add(conf, "same", pod, ifname="net1")
    assert other["ips"][0]["address"] != first["ips"][0]["address"]
    for ifname in ("eth0", "net1"):
        assert host.cni("DEL", conf, "same", pod, ifname=ifname).rc == 0


def test_bridge_stays_while_used_and_goes_with_the_last_container(host: Host) -> None:
    conf = host.config()
    pod_a, pod_b = host.new_pod(), host.new_pod()
    host.add(conf, "a", pod_a)
    bridge_index = host.links()["xvmbr10"]["ifindex"]
    host.add(conf, "b", pod_b)
    assert host.cni("DEL", conf, "a", pod_a).rc == 0
    # Same device, never recreated while a container uses it.
    assert host.links()["xvmbr10"]["ifindex"] == bridge_index
    ping = host.in_ns(pod_b, "busybox", "ping", "-c", "1", "-W", "2", "10.244.0.1")
    assert ping.returncode == 0
    assert host.cni("DEL", conf, "b", pod_b).rc == 0
    assert "xvmbr10" not in host.links() and "xvmvx10" not in host.links()


def test_del_tolerates_vanished_netns_missing_interface_and_released_address(
        host: Host) -> None:
    conf = host.config()
    pod = host.new_pod()
    result = host.add(conf, "gone", pod)
    host_veth = result["interfaces"][1]["name"]
    name = pod.rsplit("/", 1)[1]
    ip("netns", "del", name)
    host.pods.remove(name)
    assert host.cni("DEL", conf, "gone", pod).rc == 0        # netns vanished
    assert host_veth not in host.links()
    assert host.cni("DEL", conf, "gone", pod).rc == 0        # already released
    assert host.cni("DEL", conf, "gone", "").rc == 0         # empty CNI_NETNS
    pod2 = host.new_pod()
    host.add(conf, "noif", pod2)
    host.in_ns(pod2, "busybox", "ip", "link", "del", "eth0")
    assert host.cni("DEL", conf, "noif", pod2).rc == 0       # interface already gone
    assert host.snapshot()["links"] == sorted(["lo", "eth0"])


def test_static_ip_from_cni_args(host: Host) -> None:
    conf = host.config(staticIPs="subnet")
    pod, pod2 = host.new_pod(), host.new_pod()
    result = host.add(conf, "st", pod, args="IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.77.7")
    assert result["ips"][0]["address"] == "10.244.77.7/16"
    taken = host.cni("ADD", conf, "st2", pod2, args="IP=10.244.77.7")
    assert taken.rc == 1 and taken.out and taken.out["code"] == 103
    outside = host.cni("ADD", conf, "st3", pod2, args="IP=10.99.0.1")
    assert outside.rc == 1 and outside.out and outside.out["code"] == 7
    assert host.cni("DEL", conf, "st", pod).rc == 0


def test_gc_releases_what_is_not_valid(host: Host) -> None:
    conf = host.config("1.1.0")
    pods = [host.new_pod() for _ in range(3)]
    results = [host.add(conf, f"gc{i}", p) for i, p in enumerate(pods)]
    keep = [{"containerID": "gc1", "ifname": "eth0"}]
    gc = host.cni("GC", dict(conf, **{"cni.dev/valid-attachments": keep}), "", "", "")
    assert gc.rc == 0 and gc.stdout == ""
    links = host.links()
    assert results[1]["interfaces"][1]["name"] in links
    for i in (0, 2):
        assert results[i]["interfaces"][1]["name"] not in links
    # A released address can be taken by a new container.
    freed = results[0]["ips"][0]["address"].split("/")[0]
    again = host.add(conf, "gc9", host.new_pod(), args=f"IP={freed}")
    assert again["ips"][0]["address"].startswith(freed)
    gc = host.cni("GC", dict(conf, **{"cni.dev/attachments": []}), "", "", "")
    assert gc.rc == 0
    assert "xvmbr10" not in host.links()


def test_status_reports_missing_interface_and_exhausted_range(host: Host) -> None:
    conf = host.config("1.1.0", rangeStart="10.244.9.1", rangeEnd="10.244.9.2",
                       staticIPs="subnet")
    assert host.cni("STATUS", conf, "", "", "").rc == 0
    pods = [host.new_pod() for _ in range(2)]
    # A static address outside the range does not use the range up (spec 1.1: STATUS
    # must not say "exhausted" while ADDs still succeed).
    host.add(conf, "static", host.new_pod(), args="IP=10.244.200.7")
    assert host.cni("STATUS", conf, "", "", "").rc == 0
    for i, p in enumerate(pods):
        host.add(conf, f"ex{i}", p)
    # Exhausted: no ADD can be served, which is 50 ("not available"), not 51.
    full = host.cni("STATUS", conf, "", "", "")
    assert full.rc == 1 and full.out and full.out["code"] == 50
    assert "exhausted" in full.out["msg"]
    third = host.cni("ADD", conf, "ex3", host.new_pod())
    assert third.rc == 1 and third.out and third.out["code"] == 102
    missing = host.cni("STATUS", dict(conf, hostInterface="nope0"), "", "", "")
    assert missing.rc == 1 and missing.out and missing.out["code"] == 50
    for i, p in enumerate(pods):
        assert host.cni("DEL", conf, f"ex{i}", p).rc == 0
    assert host.cni("DEL", conf, "static", "").rc == 0


def test_status_is_limited_while_the_host_interface_is_down(host: Host) -> None:
    conf = host.config("1.1.0")
    pod = host.new_pod()
    host.add(conf, "down1", pod)
    ip("-n", host.name, "link", "set", "eth0", "down")
    try:
        down = host.cni("STATUS", conf, "", "", "")
        assert down.rc == 1 and down.out and down.out["code"] == 51
        assert "down" in down.out["msg"]
    finally:
        ip("-n", host.name, "link", "set", "eth0", "up")
    assert host.cni("STATUS", conf, "", "", "").rc == 0
    assert host.cni("DEL", conf, "down1", pod).rc == 0


def test_gc_with_a_null_attachment_list_releases_everything(host: Host) -> None:
    conf = host.config("1.1.0")
    host.add(conf, "nul1", host.new_pod())
    # What CRI-O sends through libcni for a network with no pods left.
    gc = host.cni("GC", dict(conf, **{"cni.dev/valid-attachments": None}), "", "", "")
    assert gc.rc == 0, gc.stdout
    assert gc.stdout == ""
    assert "xvmbr10" not in host.links()


def test_state_lives_under_data_dir(host: Host) -> None:
    conf = host.config()
    host.add(conf, "dd", host.new_pod())
    assert (host.data_dir / "xvm-network" / "ipam.db").exists()
    assert host.cni("DEL", conf, "dd", "").rc == 0
    assert json.loads(json.dumps(conf))["dataDir"] == str(host.data_dir)
