"""Cluster-wide IPAM blocks for ``l2`` with etcd, through the in-process plugin on
one simulated host whose etcd runs inside it: the first ADD claims a block, a full
block makes the next ADD claim another, the last one ends in a clear "exhausted"
error, the host finds its blocks by name after losing claims.json, and with no
block known and etcd down an ADD answers code 11."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.etcd import EtcdServer
from xvmcni.errors import ADDRESS_EXHAUSTED, TRY_AGAIN_LATER

from .conftest import Host, destroy_host, make_host

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd-server")]


@pytest.fixture
def etcd_host(tmp_path: Path) -> Iterator[tuple[Host, EtcdServer]]:
    host = make_host(tmp_path)
    server = EtcdServer(tmp_path / "etcd", netns=host.name, client_port=2379, peer_port=2380)
    try:
        server.start()
        yield host, server
    finally:
        server.stop()
        destroy_host(host)


def conf(host: Host, server: EtcdServer, block_size: int = 30) -> dict[str, Any]:
    # A /28 cut into /30 blocks: 4 blocks; the first loses .0 and the gateway .1.
    return host.config(subnet="10.244.0.0/28", gateway="10.244.0.1", blockSize=block_size,
                       controlPlane={"type": "etcd", "endpoints": [server.endpoint],
                                     "prefix": f"/xvm-blk-{os.getpid()}"})


def claims(host: Host) -> list[str]:
    return sorted(json.loads((host.data_dir / "xvm-network" / "claims.json")
                             .read_text())["blocks"])


def test_blocks_are_claimed_as_needed_until_exhausted(
        etcd_host: tuple[Host, EtcdServer]) -> None:
    host, server = etcd_host
    config = conf(host, server)
    got = []
    for i in range(13):  # 2 + 4 + 4 + 3: no network, gateway or broadcast address
        got.append(host.add(config, f"b{i}", host.new_pod())["ips"][0]["address"])
    assert len(set(got)) == 13
    assert not {"10.244.0.0/28", "10.244.0.1/28", "10.244.0.15/28"} & set(got)
    assert claims(host) == ["10.244.0.0_30", "10.244.0.12_30", "10.244.0.4_30",
                            "10.244.0.8_30"]
    full = host.cni("ADD", config, "b-last", host.new_pod())
    assert full.rc == 1 and full.out is not None
    assert full.out["code"] == ADDRESS_EXHAUSTED
    assert "every block of 10.244.0.0/28 is held by a host" in full.out["msg"]
    held = server.ctl("get", "--prefix", f"/xvm-blk-{os.getpid()}/xvm-network/blocks/",
                      "--print-value-only")
    assert held.count('"host"') == 4


def test_a_host_finds_its_blocks_by_name_and_etcd_down_with_none_known_is_code_11(
        etcd_host: tuple[Host, EtcdServer]) -> None:
    host, server = etcd_host
    config = conf(host, server, block_size=29)  # room for 6 or 7 pods in either block
    first = host.add(config, "k1", host.new_pod())["ips"][0]["address"]
    before = claims(host)
    (host.data_dir / "xvm-network" / "claims.json").unlink()
    # Its blocks are full? No: the block lookup by name finds the one it holds.
    host.add(config, "k2", host.new_pod())
    assert claims(host) == before, "the host claimed a new block instead of its own"

    # etcd down: ADDs keep working from the known block.
    server.stop()
    assert host.add(config, "k3", host.new_pod())["ips"][0]["address"] != first
    (host.data_dir / "xvm-network" / "claims.json").unlink()
    res = host.cni("ADD", config, "k4", host.new_pod())
    assert res.rc == 1 and res.out is not None and res.out["code"] == TRY_AGAIN_LATER
    assert "no address block is known on this host" in res.out["msg"]
    assert "etcd cannot be reached" in res.out["msg"]
