"""``xvmctl lab up --model macvlan``: two networks (blue, red) over three hosts, every
host a router into both; every pod reaches every pod and its gateway, same-network
pods directly (TTL unchanged), the others through two routers; dual-stack too; and a
podman container on the macvlan model reaches pods on another host."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.podman import PodmanRig, find_static_busybox
from xvmcni import lab as labmod
from xvmcni import plugin_file
from xvmcni.lab import probes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")


def ttl(netns_path: str, target: str) -> int | None:
    res = subprocess.run(["nsenter", f"--net={netns_path}", "ping", "-c", "2", "-i", "0.2",
                          "-W", "2", target], capture_output=True, text=True, check=False)
    words = [w for w in res.stdout.split() if w.startswith(("ttl=", "hlim="))]
    return int(words[0].split("=")[1]) if res.returncode == 0 and words else None


def test_two_networks_over_three_hosts(make_lab_name: Callable[[str], str]) -> None:
    name = make_lab_name("mv")
    try:
        lab = labmod.lab_up(name, hosts=3, pods=2, model="macvlan")
        nets = {p.name: ("blue" if p.ip.startswith("10.10.") else "red") for p in lab.pods}
        assert sorted(nets.values()) == ["blue"] * 3 + ["red"] * 3
        matrix = probes.ping_matrix(lab)
        assert matrix.ok, matrix.failures()
        for src in lab.pods:
            for dst in lab.pods:
                if src.host == dst.host or src is dst:
                    continue
                want = 64 if nets[src.name] == nets[dst.name] else 62
                assert ttl(src.netns_path, dst.ip) == want, (src.name, dst.name)
        # Every host reaches the pods of every other host.
        for host in lab.hosts:
            for pod in lab.pods:
                assert ttl(host.netns_path, pod.ip) is not None, (host.name, pod.name)
    finally:
        labmod.lab_down(name)


@pytest.mark.parametrize("family", ["dual", "ipv6"])
def test_dual_stack_and_ipv6_labs(make_lab_name: Callable[[str], str], family: str) -> None:
    name = make_lab_name("mv6")
    wanted = [4, 6] if family == "dual" else [6]
    try:
        lab = labmod.lab_up(name, hosts=2, pods=2, model="macvlan", family=family)
        assert probes.lab_families(lab) == wanted
        # Pods of one network share an L2 across hosts: their MACs must differ (IPv6
        # slices repeat the last 32 bits on every host).
        assert len({p.mac for p in lab.pods}) == len(lab.pods)
        for version in wanted:
            matrix = probes.ping_matrix(lab, family=version)
            assert matrix.ok, matrix.failures()
    finally:
        labmod.lab_down(name)


def _podman_missing() -> str | None:
    for tool in ("podman", "runc", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/bootstrap.sh --test)"
    if find_static_busybox() is None:
        return "no static busybox (busybox-static)"
    return None


def test_podman_container_on_the_macvlan_model(make_lab_name: Callable[[str], str],
                                               tmp_path: Path) -> None:
    reason = _podman_missing()
    if reason:
        pytest.skip(reason)
    name = f"xtpv{os.getpid():x}{secrets.token_hex(2)}"
    del make_lab_name
    try:
        lab = labmod.lab_up(name, hosts=2, pods=2, model="macvlan")
        h1 = lab.host("h1")
        entry: dict[str, Any] = json.loads(Path(h1.config_path).read_text())
        conflist = {"cniVersion": entry.pop("cniVersion"), "name": entry.pop("name"),
                    "plugins": [entry]}
        bin_dir = tmp_path / "cni-bin"
        plugin_file.write(bin_dir / "xvm-cni")
        rig = PodmanRig(tmp_path, bin_dir, conflist)
        try:
            remote = [p for p in lab.pods if p.host == "h2"]
            targets = " && ".join(f"ping -c 2 -W 2 {p.ip}" for p in remote)
            proc = rig.run(h1.netns, ["sh", "-c",
                                      f"ip -4 -o addr show dev eth0 && {targets}"])
            assert proc.returncode == 0, proc.stdout + proc.stderr
            # On the default network (blue), from h1's slice; not a lab pod's address.
            address = proc.stdout.split()[3].split("/")[0]
            assert address.startswith("10.10.11.")
            assert address not in {p.ip for p in lab.pods}
        finally:
            rig.cleanup()
    finally:
        labmod.lab_down(name)


def test_across_a_routed_underlay(make_lab_name: Callable[[str], str]) -> None:
    """The seed needed one L2 underlay; here h2 sits behind a router carrying no
    multicast: unicast flooding to the static peers carries blue across it, and red
    (joined nowhere) is routed over the underlay only to on-link hosts."""
    name = make_lab_name("mvr")
    try:
        lab = labmod.lab_up(name, hosts=3, pods=1, model="macvlan", underlay="routed")
        matrix = probes.ping_matrix(lab)
        assert matrix.ok, matrix.failures()
        h1 = lab.host("h1").netns
        routes = subprocess.run(["ip", "-n", h1, "route", "show", "proto", "204", "dev",
                                 "eth0"], capture_output=True, text=True,
                                check=True).stdout.split("\n")
        assert [r.split()[0] for r in routes if r] == ["10.20.13.0/24"]  # h3 is on-link
    finally:
        labmod.lab_down(name)


@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd-server")
def test_two_networks_with_the_etcd_control_plane(
        make_lab_name: Callable[[str], str]) -> None:
    """``--control etcd``: the same reachability as the static lab (same network
    directly, the other through two routers, hosts to every pod), every agent
    publishes its host in etcd for each network, and ``down`` leaves nothing."""
    from tests.e2e.test_lab_etcd import assert_gone, etcd_keys, root_links
    name = make_lab_name("mve")
    links_before = root_links()
    try:
        lab = labmod.lab_up(name, hosts=3, pods=2, model="macvlan", control="etcd")
        assert lab.etcd_pid and all(h.agent_adds == 2 for h in lab.hosts)
        nets = {p.name: ("blue" if p.ip.startswith("10.10.") else "red") for p in lab.pods}
        assert sorted(nets.values()) == ["blue"] * 3 + ["red"] * 3
        keys = etcd_keys(name)
        conf = json.loads(Path(lab.host("h1").config_path).read_text())
        assert conf["controlPlane"]["type"] == "etcd", conf
        lab_net = conf["name"]
        published = sorted(k.split("/hosts/")[0].rsplit("/", 1)[1] + ":" + k.rsplit("/", 1)[1]
                           for k in keys if "/hosts/" in k)
        assert published == sorted(f"{lab_net}@{seg}:{h}" for h in ("h1", "h2", "h3")
                                   for seg in ("blue", "red")), keys
        matrix = probes.ping_matrix(lab)
        assert matrix.ok, matrix.failures()
        for src in lab.pods:
            for dst in lab.pods:
                if src.host == dst.host or src is dst:
                    continue
                want = 64 if nets[src.name] == nets[dst.name] else 62
                assert ttl(src.netns_path, dst.ip) == want, (src.name, dst.name)
        for host in lab.hosts:
            for pod in lab.pods:
                assert ttl(host.netns_path, pod.ip) is not None, (host.name, pod.name)
    finally:
        report = labmod.lab_down(name)
    assert report.clean, report.leftovers
    assert report.etcd_stopped and len(report.agents_stopped) == 3
    assert_gone(name, links_before)
