"""The soak's audit finds each kind of difference between hosts and live pods (a
checker that cannot fail would let every leak through), and the reachability
sample covers every host."""

from __future__ import annotations

import random

from xvmcni.dataplane import ownership
from xvmcni.lab.audit import HostView, LivePod, audit, expected_tables
from xvmcni.lab.reach import sample_pairs

NET = "xvm-network"


def pod(name: str, address: str) -> LivePod:
    host = name.split("-")[0]
    return LivePod(name, host, f"lab-{name}", "eth0", f"/run/netns/lab-{name}", address)


def view_of(host: str, pods: list[LivePod]) -> HostView:
    """What a healthy host with ``pods`` looks like."""
    view = HostView(host)
    for i, p in enumerate(pods):
        view.veths[f"xvm{i:012x}"] = (p.container_id, p.ifname)
        view.registry[(p.container_id, p.ifname)] = [p.address]
    if pods:
        view.devices = ["xvmbr10", "xvmvx10"]
        view.tables = expected_tables(NET)
    return view


def healthy() -> tuple[list[HostView], list[LivePod], dict[str, list[str]]]:
    pods = [pod("h1-p1", "10.244.1.2/16"), pod("h1-p2", "10.244.1.3/16"),
            pod("h2-p1", "10.244.2.2/16")]
    views = [view_of("h1", pods[:2]), view_of("h2", pods[2:]), view_of("h3", [])]
    return views, pods, {p.name: [p.address] for p in pods}


def test_a_healthy_lab_passes() -> None:
    views, pods, kernel = healthy()
    found = audit(NET, views, pods, kernel)
    assert found.ok, found.problems()


def test_an_empty_clean_lab_passes() -> None:
    assert audit(NET, [view_of("h1", []), view_of("h2", [])], [], {}).ok


def kinds(found_counts: dict[str, int]) -> set[str]:
    return {kind for kind, n in found_counts.items() if n}


def test_duplicate_address_across_hosts() -> None:
    views, pods, kernel = healthy()
    twin = pod("h2-p1", "10.244.1.2/16")  # same address as h1-p1, on another host
    pods[2] = twin
    views[1] = view_of("h2", [twin])
    kernel[twin.name] = [twin.address]
    assert kinds(audit(NET, views, pods, kernel).counts()) == {"duplicates"}


def test_leaked_and_missing_veths() -> None:
    views, pods, kernel = healthy()
    views[0].veths["xvm0000000000ff"] = ("lab-h1-p9", "eth0")   # a deleted pod's
    views[1].veths.clear()                                       # h2-p1 lost its veth
    found = audit(NET, views, pods, kernel)
    assert kinds(found.counts()) == {"leaked_veths", "missing_veths"}
    assert any("lab-h1-p9" in line for line in found.leaked_veths)


def test_two_veths_for_one_pod() -> None:
    views, pods, kernel = healthy()
    views[1].veths["xvm0000000000ee"] = (pods[2].container_id, "eth0")
    assert kinds(audit(NET, views, pods, kernel).counts()) == {"leaked_veths"}


def test_retired_veths_and_devices_left() -> None:
    views, pods, kernel = healthy()
    views[0].retired = ["xvm000000000001"]
    views[2].devices = ["xvmbr10"]        # h3 has no pods any more
    assert kinds(audit(NET, views, pods, kernel).counts()) == {"retired_left",
                                                               "leaked_devices"}


def test_tables_exactly_where_pods_are() -> None:
    views, pods, kernel = healthy()
    views[2].tables = {("bridge", ownership.table_name(NET))}   # no pods on h3
    views[0].tables = set()                                       # pods on h1
    found = audit(NET, views, pods, kernel)
    assert kinds(found.counts()) == {"leaked_tables", "missing_tables"}
    assert len(found.missing_tables) == 2  # gateway isolation and anti-spoofing


def test_masquerade_table_only_with_ipmasq() -> None:
    views, pods, kernel = healthy()
    assert not audit(NET, views, pods, kernel, ip_masq=True).ok
    for view in views[:2]:
        view.tables |= {("ip", ownership.table_name(NET))}
    assert audit(NET, views, pods, kernel, ip_masq=True).ok
    assert kinds(audit(NET, views, pods, kernel).counts()) == {"leaked_tables"}


def test_registry_differs_from_live_pods() -> None:
    views, pods, kernel = healthy()
    views[0].registry[("lab-h1-p9", "eth0")] = ["10.244.1.9/16"]     # a stale record
    views[1].registry[(pods[2].container_id, "eth0")] = ["10.244.2.7/16"]
    del views[0].registry[(pods[1].container_id, "eth0")]
    found = audit(NET, views, pods, kernel)
    assert kinds(found.counts()) == {"registry"}
    assert len(found.registry) == 3


def test_pod_interface_without_its_address() -> None:
    views, pods, kernel = healthy()
    kernel["h1-p2"] = []
    assert kinds(audit(NET, views, pods, kernel).counts()) == {"addresses"}


def test_all_pairs_when_few_pods() -> None:
    pods = [pod(f"h{h}-p{i}", f"10.244.{h}.{i}/16") for h in (1, 2, 3) for i in (1, 2, 3)]
    pairs = sample_pairs(pods, random.Random(1))  # noqa: S311
    assert len(pairs) == 9 * 8
    assert all(p.src is not p.dst for p in pairs)


def test_sample_reaches_every_host_from_every_pod() -> None:
    pods = [pod(f"h{h}-p{i}", f"10.244.{h}.{i}/16") for h in (1, 2, 3) for i in range(1, 16)]
    pairs = sample_pairs(pods, random.Random(1))  # noqa: S311
    assert len(pairs) < len(pods) * (len(pods) - 1)
    for src in pods:
        hosts = {p.dst.host for p in pairs if p.src is src and p.dst is not src}
        assert hosts == {"h1", "h2", "h3"}


def with_guard(views: list[HostView], pods: list[LivePod]) -> None:
    """Give each host with pods the anti-spoofing members a healthy host has."""
    for view in views:
        if not view.tables:
            continue
        view.admitted = {}
        for port, key in view.veths.items():
            p = next(p for p in pods if (p.container_id, p.ifname) == key)
            view.admitted[port] = ({p.mac}, {f"{p.mac} {p.ip}"})


def test_anti_spoofing_members_match_live_pods() -> None:
    views, pods, kernel = healthy()
    pods = [LivePod(**{**vars(p), "mac": f"02:00:00:00:00:0{i}"}) for i, p in enumerate(pods)]
    with_guard(views, pods)
    assert audit(NET, views, pods, kernel).ok
    views[0].admitted["xvm0000000000aa"] = ({"02:00:00:00:00:aa"}, set())  # stale member
    port = next(iter(views[1].veths))
    views[1].admitted[port] = ({pods[2].mac}, {f"{pods[2].mac} 10.244.9.9"})  # wrong address
    found = audit(NET, views, pods, kernel)
    assert kinds(found.counts()) == {"admitted"}
    assert len(found.admitted) == 2
