"""The etcd control plane against a real etcd (Debian's etcd-server), each test with
its own server on loopback: records and leases, the watch across an etcd kill -9
and restart, compaction, and compare-and-create claims raced by two processes."""

from __future__ import annotations

import ipaddress
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.etcd import EtcdServer, make_tls, running_etcd
from xvmcni.controlplane import etcdconfig
from xvmcni.controlplane.base import Peer
from xvmcni.controlplane.etcd import ClaimsExhausted, EtcdControlPlane

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="needs etcd (Debian package etcd-server)")


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path) as server:
        yield server


def settings(server: EtcdServer, **extra: object) -> etcdconfig.EtcdSettings:
    return etcdconfig.parse({"endpoints": [server.endpoint], "ttl": 3, **extra})


def peer(name: str, last: int, block: str = "") -> Peer:
    return Peer(name, ipaddress.ip_address(f"10.0.0.{last}"), f"02:00:00:00:00:{last:02x}",
                (block,) if block else ())


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def planes() -> Iterator[list[EtcdControlPlane]]:
    made: list[EtcdControlPlane] = []
    yield made
    for plane in made:
        plane.close()


def plane(planes: list[EtcdControlPlane], server: EtcdServer, me: str,
          network: str = "n1", **extra: object) -> EtcdControlPlane:
    made = EtcdControlPlane(settings(server, **extra), network, me)
    planes.append(made)
    return made


def names(peers: list[Peer]) -> list[str]:
    return [p.name for p in peers]


def test_peers_appear_change_and_expire_with_their_lease(
        etcd: EtcdServer, planes: list[EtcdControlPlane]) -> None:
    a, b = plane(planes, etcd, "a"), plane(planes, etcd, "b")
    seen: list[list[Peer]] = []
    b.watch(seen.append)
    a.publish(peer("a", 1, "10.1.0.0/26"))
    b.publish(peer("b", 2))
    wait_for(lambda: names(b.peers()) == ["a"], 5, "a to appear at b")
    assert b.peers()[0] == peer("a", 1, "10.1.0.0/26")  # its own record is not a peer
    a.publish(peer("a", 9))
    wait_for(lambda: b.peers() == [peer("a", 9)], 5, "a's change to reach b")
    assert seen[-1] == [peer("a", 9)]

    # a stops refreshing (its agent is gone): etcd expires its lease within the TTL.
    a.close()
    planes.remove(a)
    wait_for(lambda: b.peers() == [], 3 + 2, "a's record to expire")
    assert seen[-1] == []
    # b itself is alive: it refreshed past its TTL.
    assert "/xvm-cni/n1/hosts/b" in etcd.ctl("get", "--prefix", "--keys-only",
                                            "/xvm-cni/n1/hosts/")


def test_watch_survives_etcd_kill_and_restart_without_losing_a_peer(
        etcd: EtcdServer, planes: list[EtcdControlPlane]) -> None:
    a, b, c = plane(planes, etcd, "a"), plane(planes, etcd, "b"), plane(planes, etcd, "c")
    a.publish(peer("a", 1))
    c.watch(lambda _: None)
    wait_for(lambda: names(c.peers()) == ["a"], 5, "a at c")
    relists = c.relists

    etcd.kill()
    time.sleep(4)  # longer than the TTL: etcd re-arms leases when it is back
    assert names(c.peers()) == ["a"], "a peer was dropped while etcd was away"
    etcd.start()
    b.publish(peer("b", 2))
    wait_for(lambda: names(c.peers()) == ["a", "b"], 15, "the watch to resume")
    assert c.relists == relists, "the watch resumed from its revision, not by a re-list"
    time.sleep(4)  # a kept its record alive after the restart
    assert names(c.peers()) == ["a", "b"]


def test_a_compacted_watch_revision_makes_a_full_list(
        etcd: EtcdServer, planes: list[EtcdControlPlane]) -> None:
    a, b = plane(planes, etcd, "a"), plane(planes, etcd, "b")
    a.publish(peer("a", 1))
    b.publish(peer("b", 2))
    start = etcd.revision()
    wait_for(lambda: "hosts/b" in etcd.ctl("get", "--prefix", "--keys-only", "/xvm-cni/"),
             5, "b's record")
    b.close()
    planes.remove(b)
    etcd.ctl("del", "/xvm-cni/n1/hosts/b")
    etcd.ctl("compact", str(etcd.revision()))
    c = plane(planes, etcd, "c")
    c.watch(lambda _: None, from_revision=start)  # a watch resumed from before compaction
    wait_for(lambda: c.relists == 1, 10, "the re-list after compaction")
    assert names(c.peers()) == ["a"]  # b's delete, compacted away, is not missed


def test_claims_are_kept_across_restarts_and_handed_back_after_the_grace_period(
        etcd: EtcdServer, planes: list[EtcdControlPlane]) -> None:
    a = plane(planes, etcd, "a", reclaimAfter=3)
    assert a.claim("blocks", ["x", "y"]) == "x"  # a is up (not joined): it keeps x alive
    b = plane(planes, etcd, "b", reclaimAfter=3)
    assert b.claim("blocks", ["x", "y"]) == "y"
    with pytest.raises(ClaimsExhausted):
        b.claim("blocks", ["x", "y"])
    b.close()  # b goes away
    planes.remove(b)
    assert plane(planes, etcd, "b", reclaimAfter=3).owned("blocks") == ["y"]  # a restart
    planes.pop().close()
    time.sleep(4)  # past the grace period: a refreshed, b is gone
    assert plane(planes, etcd, "a", reclaimAfter=3).owned("blocks") == ["x"]
    assert plane(planes, etcd, "b", reclaimAfter=3).owned("blocks") == []
    assert plane(planes, etcd, "c", reclaimAfter=3).claim("blocks", ["x", "y"]) == "y"


def _race(endpoint: str, network: str, me: str, barrier: object,
          results: object) -> None:
    made = EtcdControlPlane(etcdconfig.parse({"endpoints": [endpoint]}), network, me)
    try:
        made.owned("blocks")  # connected before the start line
        barrier.wait()  # type: ignore[attr-defined]
        try:
            results.put((me, made.claim("blocks", ["last"])))  # type: ignore[attr-defined]
        except ClaimsExhausted:
            results.put((me, "exhausted"))  # type: ignore[attr-defined]
    finally:
        made.close()


def test_two_processes_racing_for_the_last_block_exactly_one_wins(etcd: EtcdServer) -> None:
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(5):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(etcd.endpoint, f"race{round_}", me,
                                                 barrier, results)) for me in ("p", "q")]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        got = sorted(results.get(timeout=5)[1] for _ in procs)
        assert got == ["exhausted", "last"]
        owner = etcd.ctl("get", f"/xvm-cni/race{round_}/blocks/last", "--print-value-only")
        assert owner.count('"host"') == 1


def test_mutual_tls(tmp_path: Path, planes: list[EtcdControlPlane]) -> None:
    tls = make_tls(tmp_path / "tls")
    with running_etcd(tmp_path, tls=tls) as server:
        assert server.endpoint.startswith("https://")
        cp = {"caFile": str(tls.ca), "certFile": str(tls.client_cert),
              "keyFile": str(tls.client_key)}
        a, b = plane(planes, server, "a", **cp), plane(planes, server, "b", **cp)
        b.watch(lambda _: None)
        a.publish(peer("a", 1))
        wait_for(lambda: names(b.peers()) == ["a"], 10, "a at b over TLS")
        assert a.claim("blocks", ["x"]) == "x"
        # Without a client certificate etcd refuses us: the record never arrives.
        anonymous = plane(planes, server, "c", caFile=str(tls.ca))
        anonymous.publish(peer("c", 3))
        time.sleep(2)
        assert names(b.peers()) == ["a"]
