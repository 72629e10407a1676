"""The kernel state ADD builds: devices, addresses, routes, MTU, filters."""

from __future__ import annotations

from xvmcni.dataplane.ownership import table_name
from xvmcni.lab.plumbing import SWITCH_BRIDGE

from .conftest import Host, ip

# The nftables tables of the test network "xvm-network".
TABLE = table_name("xvm-network")


def test_devices_addresses_routes_and_mtu(host: Host) -> None:
    pod = host.new_pod()
    conf = host.config(routes=[{"dst": "192.0.2.0/24"}])
    result = host.add(conf, "dp1", pod)
    links = host.links()
    bridge, vxlan = links["xvmbr10"], links["xvmvx10"]
    # 1500 on a 1500 underlay is clamped so full-size frames fit in VXLAN.
    assert bridge["mtu"] == vxlan["mtu"] == 1450
    assert bridge["address"] == "02:78:76:00:00:0a"
    data = vxlan["linkinfo"]["info_data"]
    assert data["id"] == 10 and data["port"] == 8472 and data["group"] == "239.1.1.1"
    assert data["local"] == "172.30.0.11" and data["learning"] is True
    assert vxlan["master"] == "xvmbr10"
    host_veth = result["interfaces"][1]["name"]
    assert links[host_veth]["master"] == "xvmbr10" and links[host_veth]["mtu"] == 1450
    gw = host.in_ns(host.path, "busybox", "ip", "-4", "addr", "show", "xvmbr10").stdout
    assert "10.244.0.1/16" in gw
    inside = host.in_ns(pod, "busybox", "ip", "link", "show", "eth0").stdout
    assert "mtu 1450" in inside
    routes = host.in_ns(pod, "busybox", "ip", "route").stdout
    assert "default via 10.244.0.1" in routes
    assert "192.0.2.0/24 via 10.244.0.1" in routes
    forward = host.in_ns(host.path, "cat", "/proc/sys/net/ipv4/ip_forward").stdout
    assert forward.strip() == "1"
    assert f"bridge {TABLE}" in host.nft_tables()
    ping = host.in_ns(pod, "busybox", "ping", "-c", "1", "-W", "2", "10.244.0.1")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert host.cni("DEL", conf, "dp1", pod).rc == 0


def test_smaller_mtu_is_kept(host: Host) -> None:
    pod = host.new_pod()
    conf = host.config(mtu=1300)
    result = host.add(conf, "mtu", pod)
    assert host.links()["xvmbr10"]["mtu"] == 1300
    assert host.links()[result["interfaces"][1]["name"]]["mtu"] == 1300
    assert host.cni("DEL", conf, "mtu", pod).rc == 0


def test_two_pods_on_one_host_talk(host: Host) -> None:
    conf = host.config()
    pods = [host.new_pod(), host.new_pod()]
    addrs = [host.add(conf, f"two{i}", p)["ips"][0]["address"].split("/")[0]
             for i, p in enumerate(pods)]
    assert addrs[0] != addrs[1]
    ping = host.in_ns(pods[0], "busybox", "ping", "-c", "1", "-W", "2", addrs[1])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    for i, p in enumerate(pods):
        assert host.cni("DEL", conf, f"two{i}", p).rc == 0


def test_ip_masq_table_lives_with_the_network(host: Host) -> None:
    pod = host.new_pod()
    conf = host.config(ipMasq=True)
    host.add(conf, "masq", pod)
    assert f"ip {TABLE}" in host.nft_tables()
    rules = host.in_ns(host.path, "nft", "list", "table", "ip", TABLE).stdout
    assert "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade" in rules
    assert host.cni("DEL", conf, "masq", pod).rc == 0
    assert host.nft_tables() == []


def test_ip_masq_lets_pods_reach_outside_the_subnet(host: Host) -> None:
    """A peer on the underlay has no route back to the pod subnet: only masquerading
    (source rewritten to the host's eth0 address) makes the reply come back."""
    ip("-n", host.underlay, "addr", "add", "172.30.0.1/24", "dev", SWITCH_BRIDGE)
    plain, masq = host.config(), host.config(ipMasq=True)
    pod = host.new_pod()
    host.add(plain, "nomasq", pod)
    blocked = host.in_ns(pod, "busybox", "ping", "-c", "1", "-W", "1", "172.30.0.1")
    assert blocked.returncode != 0, "reply without masquerade: the test proves nothing"
    assert host.cni("DEL", plain, "nomasq", pod).rc == 0
    host.add(masq, "masq2", pod)
    reached = host.in_ns(pod, "busybox", "ping", "-c", "1", "-W", "2", "172.30.0.1")
    assert reached.returncode == 0, reached.stdout + reached.stderr
    assert host.cni("DEL", masq, "masq2", pod).rc == 0


def test_dns_is_passed_through_to_the_result(host: Host) -> None:
    dns = {"nameservers": ["10.244.0.10"], "search": ["svc.local"], "options": ["ndots:2"]}
    conf = host.config(dns=dns)
    result = host.add(conf, "dns", host.new_pod())
    assert result["dns"] == dns
    assert host.cni("DEL", conf, "dns", "").rc == 0


def test_log_file_receives_the_plugins_log(host: Host) -> None:
    log = host.data_dir.parent / "xvm.log"
    conf = host.config(logFile=str(log), logLevel="debug")
    host.add(conf, "log", host.new_pod())
    assert host.cni("DEL", conf, "log", "").rc == 0
    text = log.read_text() if log.exists() else ""
    if host.agent is None:  # in-process: the plugin writes the file itself
        assert "ADD log/eth0" in text and "DEL log/eth0" in text
    else:  # the agent owns its logging (its own --log-file), never a request's
        assert text == ""
