"""xvm-cni changes or deletes only what it created, and knows which network owns
it (issue 7, item 1). Each test is a way the code before ownership marks damaged
the host; here it must refuse, or clean up only its own."""

from __future__ import annotations

import json
from typing import Any

from xvmcni.dataplane.ownership import legacy_table_name, table_name

from .conftest import Host, agent_op, ip


def link(host: Host, name: str) -> dict[str, Any] | None:
    return host.links().get(name)


def alias(host: Host, name: str) -> str:
    found = link(host, name)
    assert found is not None, f"{name} is missing"
    return str(found.get("ifalias", ""))


def test_devices_carry_the_networks_mark(host: Host) -> None:
    conf = host.config()
    result = host.add(conf, "mark1", host.new_pod())
    veth = result["interfaces"][1]["name"]
    assert alias(host, "xvmbr10") == "xvm-cni:xvm-network"
    assert alias(host, "xvmvx10") == "xvm-cni:xvm-network"
    assert alias(host, veth) == "xvm-cni:xvm-network:mark1:eth0"
    assert f"bridge {table_name('xvm-network')}" in host.nft_tables()
    assert host.cni("DEL", conf, "mark1", "").rc == 0


def test_two_networks_with_one_vxlan_id_do_not_destroy_each_other(host: Host) -> None:
    first = host.config()
    renamed = host.config(name="renamed-net")  # same vxlanID 10, e.g. after a rename
    pod = host.new_pod()
    result = host.add(first, "own1", pod)
    veth = result["interfaces"][1]["name"]

    refused = host.cni("ADD", renamed, "own2", host.new_pod())
    assert refused.rc == 1 and refused.out is not None
    assert refused.out["code"] == 7
    assert "belongs to xvm-cni network 'xvm-network'" in refused.out["msg"]
    # DEL and GC of the other network never touch the first one's devices.
    assert host.cni("DEL", renamed, "own2", "").rc == 0
    renamed_gc = dict(renamed, cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    assert host.cni("GC", renamed_gc, "", "").rc == 0
    if host.agent is not None:
        report = agent_op(host, "gc")
        assert all(not n.get("released") for n in report["networks"]), report
    links = host.links()
    assert {"xvmbr10", "xvmvx10", veth} <= set(links)
    assert links[veth].get("master") == "xvmbr10"
    assert host.cni("DEL", first, "own1", pod).rc == 0
    assert "xvmbr10" not in host.links()


def test_bridge_naming_a_foreign_device_is_refused_and_kept(host: Host) -> None:
    ip("-n", host.name, "link", "add", "bond7", "type", "veth", "peer", "name", "bond7p")
    before = host.snapshot()
    res = host.cni("ADD", host.config(bridge="bond7"), "own3", host.new_pod())
    assert res.rc == 1 and res.out is not None and res.out["code"] == 7
    assert "bond7" in host.links()
    after = host.snapshot()
    assert after["links"] == before["links"]
    assert after["nft"] == before["nft"]


def test_an_existing_host_bridge_is_never_taken_over(host: Host) -> None:
    ip("-n", host.name, "link", "add", "br7", "address", "02:00:00:00:07:07", "mtu", "9000",
       "type", "bridge")
    conf = host.config(bridge="br7")
    res = host.cni("ADD", conf, "own4", host.new_pod())
    assert res.rc == 1 and res.out is not None and res.out["code"] == 7
    assert "br7" in res.out["msg"]
    br = link(host, "br7")
    assert br is not None
    assert br["address"] == "02:00:00:00:07:07" and br["mtu"] == 9000
    assert ip("-n", host.name, "-4", "addr", "show", "dev", "br7").strip() == ""
    # A later DEL of that network does not delete the operator's bridge either.
    assert host.cni("DEL", conf, "own4", "").rc == 0
    assert "br7" in host.links()
    assert host.nft_tables() == []
    assert not (host.data_dir / "xvm-network" / "network.json").exists()


def test_rollback_keeps_a_containers_own_interface(host: Host) -> None:
    pod = host.new_pod()
    ip("-n", pod.rsplit("/", 1)[-1], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    res = host.cni("ADD", host.config(), "own5", pod)
    assert res.rc == 1 and res.out is not None and res.out["code"] == 4
    assert "already exists" in res.out["msg"]
    assert "eth0" in ip("-n", pod.rsplit("/", 1)[-1], "-o", "link", "show")
    assert "xvmbr10" not in host.links()  # the host left again


def test_networks_with_similar_names_have_their_own_tables(host: Host) -> None:
    dash = host.config(name="pod-net", vxlanID=21, subnet="10.21.0.0/16", gateway=None,
                       ipMasq=True)
    dot = host.config(name="pod.net", vxlanID=22, subnet="10.22.0.0/16", gateway=None,
                      ipMasq=True)
    pod_dash, pod_dot = host.new_pod(), host.new_pod()
    host.add(dash, "sim1", pod_dash)
    host.add(dot, "sim2", pod_dot)
    tables = set(host.nft_tables())
    for name in ("pod-net", "pod.net"):
        assert {f"bridge {table_name(name)}", f"ip {table_name(name)}"} <= tables
    assert table_name("pod-net") != table_name("pod.net")
    assert host.cni("DEL", dash, "sim1", pod_dash).rc == 0
    tables = set(host.nft_tables())
    assert f"ip {table_name('pod-net')}" not in tables
    assert {f"bridge {table_name('pod.net')}", f"ip {table_name('pod.net')}"} <= tables
    rules = host.in_ns(host.path, "nft", "list", "table", "bridge", table_name("pod.net"))
    assert "xvmvx22" in rules.stdout
    assert host.cni("DEL", dot, "sim2", pod_dot).rc == 0


def test_devices_of_an_earlier_version_are_adopted_only_with_the_networks_state(
        host: Host) -> None:
    conf = host.config()
    first = host.add(conf, "old1", host.new_pod())
    veth = first["interfaces"][1]["name"]
    # What an xvm-cni before ownership marks left: no aliases, the shared table name.
    for name in ("xvmbr10", "xvmvx10", veth):
        ip("-n", host.name, "link", "set", "dev", name, "alias", "")
    legacy = legacy_table_name("xvm-network")
    host.in_ns(host.path, "nft", "add", "table", "bridge", legacy)
    assert alias(host, "xvmbr10") == ""
    # The network has a container here, so its next ADD adopts the devices.
    second = host.add(conf, "old2", host.new_pod())
    assert alias(host, "xvmbr10") == "xvm-cni:xvm-network"
    assert alias(host, "xvmvx10") == "xvm-cni:xvm-network"
    assert f"bridge {legacy}" not in host.nft_tables()
    for container, result in (("old1", first), ("old2", second)):
        sandbox = result["interfaces"][2]["sandbox"]
        assert host.cni("DEL", conf, container, sandbox).rc == 0
    assert "xvmbr10" not in host.links()
    assert host.nft_tables() == []


def test_config_written_by_a_failed_first_add_is_removed(host: Host) -> None:
    ip("-n", host.name, "link", "add", "bond8", "type", "veth", "peer", "name", "bond8p")
    state = host.data_dir / "xvm-network"
    res = host.cni("ADD", host.config(bridge="bond8"), "own6", host.new_pod())
    assert res.rc == 1
    assert not (state / "network.json").exists()
    assert json.loads(json.dumps(res.out))["code"] == 7
