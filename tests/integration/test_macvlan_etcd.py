"""Model macvlan with the etcd control plane: three hosts and an etcd on one underlay
switch, an xvm-cnid on every host. Each host publishes, per network, only the networks
it has joined; the others' VXLAN devices flood to exactly those hosts (no multicast
group) and route exactly their address blocks (claimed cluster-wide; the first usable
address of a block is its host's router address) via the owner's router address; a
host that leaves a network drops out of every other host's flood list and routes
within the lease TTL."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.etcd import EtcdServer
from xvmcni import plugin_file
from xvmcni.ipam.hostslices import cidr_range
from xvmcni.lab import simhost

from .conftest import Host, ip, start_agent, stop_agent
from .macvlan_lab import Lab, address, ping_ttl

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd-server")]

TTL = 3
ETCD_ADDRESS = "172.29.0.5"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Lab, EtcdServer]]:
    made = Lab(tmp_path)
    etcd: EtcdServer | None = None
    try:
        made.build()
        etcd_ns = simhost.unique_name("xmet")
        simhost.create_host(made.switch, etcd_ns, "petcd", f"{ETCD_ADDRESS}/24",
                            record=made.made.append)
        etcd = EtcdServer(tmp_path / "etcd", host=ETCD_ADDRESS, netns=etcd_ns,
                          client_port=2379, peer_port=2380)
        etcd.start()
        for name, host in made.hosts.items():
            host.plugin = str(plugin_file.write(tmp_path / name / "bin" / "xvm-cni"))
            conf = config(made, etcd, name)
            conf_dir = host.data_dir.parent / "conf"
            conf_dir.mkdir(parents=True, exist_ok=True)
            (conf_dir / "10-xvm.conf").write_text(json.dumps(conf))
            start_agent(host, env={"XVM_CNI_HOSTNAME": name})
        yield made, etcd
    finally:
        for host in made.hosts.values():
            stop_agent(host, signal.SIGKILL)
        if etcd is not None:
            etcd.stop()
        made.destroy()


def config(lab: Lab, etcd: EtcdServer, name: str) -> dict[str, Any]:
    conf = lab.config(name, static=False)
    conf["controlPlane"] = {"type": "etcd", "endpoints": [etcd.endpoint], "ttl": TTL,
                            "prefix": f"/xvm-mv-{os.getpid()}"}
    return conf


def flood(host: Host, dev: str) -> list[str]:
    out = json.loads(ip("-j", "-n", host.name, "link", "show") or "[]")
    if dev not in {link["ifname"] for link in out}:
        return []
    fdb = subprocess.run(["bridge", "-j", "-n", host.name, "fdb", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return sorted(e["dst"] for e in json.loads(fdb or "[]")
                  if e.get("mac") == "00:00:00:00:00:00" and "dst" in e)


def slice_routes(host: Host, dev: str) -> dict[str, str]:
    routes = json.loads(ip("-j", "-n", host.name, "route", "show", "proto", "204") or "[]")
    return {r["dst"]: r["gateway"] for r in routes if r.get("dev") == dev}


def block_route(result: dict[str, Any]) -> tuple[str, str]:
    """(block, its router) of a pod's IPv4 address: /26 blocks, router = first usable."""
    block = ipaddress.ip_network(f"{address(result)}/26", strict=False)
    rng = cidr_range(ipaddress.IPv4Network("10.10.0.0/16"), block, exclude_first=5,
                     exclude_last=5)
    return str(block), str(rng.router)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_peers_per_network_through_etcd(lab: tuple[Lab, EtcdServer]) -> None:
    made, etcd = lab
    h1, h2, h3 = (made.hosts[n] for n in ("h1", "h2", "h3"))
    confs = {n: config(made, etcd, n) for n in made.hosts}
    a, ra = made.add_pod("h1", {**confs["h1"], "agentSocket": h1.agent_socket}, "a",
                         "XVM_NETWORK=blue")
    b, rb = made.add_pod("h2", {**confs["h2"], "agentSocket": h2.agent_socket}, "b",
                         "XVM_NETWORK=blue")
    c, rc = made.add_pod("h3", {**confs["h3"], "agentSocket": h3.agent_socket}, "c",
                         "XVM_NETWORK=red")
    # blue: h1 and h2 flood to each other only; h3 (red only) is in no blue list.
    wait_for(lambda: flood(h1, "xvmmx110") == ["172.29.0.12"], 15, "h1's blue flood list")
    wait_for(lambda: flood(h2, "xvmmx110") == ["172.29.0.11"], 15, "h2's blue flood list")
    assert flood(h3, "xvmmx120") == [] and "xvmmx110" not in ip("-n", h3.name, "link")
    block_b, router_b = block_route(rb)
    block_a, router_a = block_route(ra)
    assert block_a != block_b
    # The pod's gateway is its own host's router in the pod's block.
    assert ra["ips"][0]["gateway"] == router_a
    wait_for(lambda: slice_routes(h1, "xvmmh110") == {block_b: router_b}, 15,
             "h1's route to h2's blue block")
    assert ping_ttl(h1, a, address(rb)) == 64
    # h3 joins blue: everyone learns it from etcd.
    d, rd = made.add_pod("h3", {**confs["h3"], "agentSocket": h3.agent_socket}, "d",
                         "XVM_NETWORK=blue")
    wait_for(lambda: flood(h1, "xvmmx110") == ["172.29.0.12", "172.29.0.13"], 15,
             "h1's blue flood list with h3")
    block_d, router_d = block_route(rd)
    assert block_d not in (block_a, block_b)
    wait_for(lambda: slice_routes(h1, "xvmmh110").get(block_d) == router_d, 15,
             "h1's route to h3's blue block")
    assert ping_ttl(h1, a, address(rd)) == 64
    # h3 leaves blue: its record goes, h1 forgets its flood entry and slice route.
    assert h3.cni("DEL", {**confs["h3"], "agentSocket": h3.agent_socket}, "d", d).rc == 0
    wait_for(lambda: flood(h1, "xvmmx110") == ["172.29.0.12"], 5 * TTL,
             "h3 gone from h1's blue flood list")
    wait_for(lambda: block_d not in slice_routes(h1, "xvmmh110"), 5 * TTL,
             "h1's route to h3's blue block removed")
    del b, c, ra, rc
