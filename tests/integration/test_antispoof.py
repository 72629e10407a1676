"""A pod cannot pretend to be another (issue 7 item 9), on a real kernel.

A simulated host namespace holds a bridge with the anycast gateway (its address
and fixed MAC); three pod namespaces are plugged into it through veths named as
the product names them, plus a "remote" namespace on a port standing in for the
VXLAN port. Pod A (root in its netns, as a container with CAP_NET_ADMIN is) forges
frames with raw AF_PACKET sockets; pod B captures. Each forgery is first shown to
arrive with no table (the control), then to be dropped and counted with it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.support import frames
from xvmcni.dataplane import antispoof, names, nft
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netns import entered, open_netns

pytestmark = pytest.mark.root

VNI = 4242
BRIDGE = f"xvmbr{VNI}"
UPLINK = f"xvmvx{VNI}"
GATEWAY_IP = "10.99.0.1"
GATEWAY_MAC = names.gateway_mac(VNI)
TABLE = "xvm_antispoof_test"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Pod:
    netns: str
    fd: int
    port: str  # host end of its veth
    mac: str
    address: str


@dataclass
class Lab:
    host: str
    host_fd: int
    pods: dict[str, Pod] = field(default_factory=dict)
    remote: Pod | None = None

    def nft(self, batch: list[dict[str, object]]) -> None:
        # nft runs as a child process: it inherits the namespace of this thread.
        with entered(self.host_fd):
            nft.run_batch(batch)

    def install(self, *admitted: str) -> None:
        batch = antispoof.table_batch(TABLE, GATEWAY_MAC, [GATEWAY_IP])
        for name in admitted:
            pod = self.pods[name]
            batch += antispoof.admit_batch(TABLE, pod.port, pod.mac, [pod.address + "/24"])
        self.nft(batch)

    def counters(self) -> dict[str, int]:
        with entered(self.host_fd):
            found = antispoof.drop_counters(TABLE)
        assert found is not None, "the table is missing"
        return {name: packets for name, (packets, _) in found.items()}

    def members(self) -> antispoof.Members | None:
        with entered(self.host_fd):
            return antispoof.members(TABLE)

    def in_pod(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.pods[name].netns}", *argv],
                              capture_output=True, text=True, timeout=30, check=False)


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid():x}{uuid.uuid4().hex[:6]}"


def _plug(lab: Lab, key: str, index: int, port: str) -> Pod:
    netns = _unique("xas")
    ip("netns", "add", netns)
    fd = open_netns(f"/run/netns/{netns}")
    mac = f"0a:58:0a:63:00:{index:02x}"
    pod = Pod(netns=netns, fd=fd, port=port, mac=mac, address=f"10.99.0.{index}")
    ip("-n", lab.host, "link", "add", port, "type", "veth", "peer", "name", "eth0",
       "netns", netns)
    ip("-n", lab.host, "link", "set", port, "master", BRIDGE, "up")
    ip("-n", netns, "link", "set", "eth0", "address", mac)
    # No IPv6 from the pods' own kernels (DAD, MLD, router solicitations): the drop
    # counters then move only with what a test sends. IPv6 frames are forged raw.
    subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "sysctl", "-qw",
                    "net.ipv6.conf.eth0.disable_ipv6=1"], check=True, capture_output=True)
    ip("-n", netns, "addr", "add", f"{pod.address}/24", "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "route", "add", "default", "via", GATEWAY_IP)
    return pod


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    host = _unique("xah")
    ip("netns", "add", host)
    made = Lab(host=host, host_fd=open_netns(f"/run/netns/{host}"))
    try:
        ip("-n", host, "link", "add", BRIDGE, "address", GATEWAY_MAC, "type", "bridge")
        ip("-n", host, "addr", "add", f"{GATEWAY_IP}/24", "dev", BRIDGE)
        ip("-n", host, "link", "set", BRIDGE, "up")
        for i, key in enumerate(("a", "b", "c")):
            made.pods[key] = _plug(made, key, 2 + i, names.host_veth_name(f"{host}-{key}",
                                                                          "eth0"))
        made.remote = _plug(made, "remote", 0x20, UPLINK)
        yield made
    finally:
        every = [*made.pods.values(), *([made.remote] if made.remote else [])]
        for pod in every:
            os.close(pod.fd)
            subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True, check=False)
        os.close(made.host_fd)
        subprocess.run(["ip", "netns", "del", host], capture_output=True, check=False)


def _udp(src_mac: str, src_ip: str, marker: bytes, dst_ip: str = "10.99.0.255",
         sport: int = 40000, dport: int = 9) -> bytes:
    return frames.ethernet(frames.BROADCAST, src_mac, frames.ETH_P_IP,
                           frames.ipv4_udp(src_ip, dst_ip, sport, dport, marker))


def _arp(op: int, sender_mac: str, sender_ip: str, target_ip: str, marker: bytes,
         src_mac: str = "") -> bytes:
    body = frames.arp(op, sender_mac, sender_ip, "00:00:00:00:00:00" if op == 1
                      else frames.BROADCAST, target_ip)
    # The marker rides in the padding after the ARP body; the bridge forwards it as is.
    return frames.ethernet(frames.BROADCAST, src_mac or sender_mac, frames.ETH_P_ARP,
                           body + marker)


def _udp6(src_mac: str, src_ip: str, marker: bytes, dst_ip: str = "ff02::1") -> bytes:
    return frames.ethernet("33:33:00:00:00:01", src_mac, frames.ETH_P_IPV6,
                           frames.ipv6(src_ip, dst_ip, frames.IPPROTO_UDP,
                                       frames.udp(40000, 9, marker)))


def _icmp6(src_mac: str, src_ip: str, type_: int, body: bytes, dst_ip: str = "ff02::1") -> bytes:
    return frames.ethernet("33:33:00:00:00:01", src_mac, frames.ETH_P_IPV6,
                           frames.ipv6(src_ip, dst_ip, frames.IPPROTO_ICMPV6,
                                       frames.icmpv6(type_, 0, body), hop_limit=255))


def _lla(pod: Pod) -> str:
    return str(antispoof.eui64_link_local(pod.mac))


def arrives(lab: Lab, frame: bytes, marker: bytes, sender: str = "a", to: str = "b") -> bool:
    """Send ``frame`` from ``sender``'s eth0 and tell whether ``to`` receives it."""
    src = lab.remote if sender == "remote" else lab.pods[sender]
    assert src is not None
    with entered(lab.pods[to].fd):
        cap = frames.capture("eth0")
    with entered(src.fd):
        out = frames.sender("eth0")
    try:
        frames.drain(cap)
        out.send(frame)
        sentinel = b"sentinel-" + uuid.uuid4().hex.encode()
        # A legitimate frame from the same port, after the one under test.
        out.send(_udp(src.mac, src.address, sentinel))
        return any(marker in f for f in frames.receive_until(cap, sentinel))
    finally:
        cap.close()
        out.close()


def _marker() -> bytes:
    return b"forged-" + uuid.uuid4().hex.encode()


# (name, frame builder given the lab and a marker, counter that must count it)
Forgery = tuple[str, Callable[[Lab, bytes], bytes], str]
FORGERIES: list[Forgery] = [
    ("ip_of_another_pod",
     lambda lab, m: _udp(lab.pods["a"].mac, lab.pods["c"].address, m), antispoof.IPV4_DROP),
    ("mac_of_another_pod",
     lambda lab, m: _udp(lab.pods["c"].mac, lab.pods["a"].address, m), antispoof.MAC),
    ("unknown_ip",
     lambda lab, m: _udp(lab.pods["a"].mac, "10.99.0.77", m), antispoof.IPV4_DROP),
    ("gratuitous_arp_for_gateway",
     lambda lab, m: _arp(1, lab.pods["a"].mac, GATEWAY_IP, GATEWAY_IP, m), antispoof.GATEWAY),
    ("arp_reply_claiming_another_pod",
     lambda lab, m: _arp(2, lab.pods["a"].mac, lab.pods["c"].address, lab.pods["b"].address, m),
     antispoof.ARP_DROP),
    ("gratuitous_arp_for_another_pod",
     lambda lab, m: _arp(1, lab.pods["a"].mac, lab.pods["c"].address, lab.pods["c"].address, m),
     antispoof.ARP_DROP),
    ("arp_sender_mac_of_another_pod",
     lambda lab, m: _arp(2, lab.pods["c"].mac, lab.pods["c"].address, lab.pods["b"].address, m,
                         src_mac=lab.pods["a"].mac),
     antispoof.ARP_DROP),
    ("gateway_mac_as_source",
     lambda lab, m: _udp(GATEWAY_MAC, lab.pods["a"].address, m), antispoof.GATEWAY),
    ("gateway_ip_as_source",
     lambda lab, m: _udp(lab.pods["a"].mac, GATEWAY_IP, m), antispoof.GATEWAY),
    ("vlan_tagged",
     lambda lab, m: frames.ethernet(frames.BROADCAST, lab.pods["a"].mac, 0x8100,
                                    b"\x00\x05\x08\x00" + frames.ipv4_udp(
                                        lab.pods["c"].address, "10.99.0.255", 1, 9, m)),
     antispoof.OTHER),
    ("ipv6_source_of_another_pod",
     lambda lab, m: _udp6(lab.pods["a"].mac, _lla(lab.pods["c"]), m), antispoof.IPV6_DROP),
    ("router_advertisement_from_a_pod",  # type 134, from the pod's own link-local address
     lambda lab, m: _icmp6(lab.pods["a"].mac, _lla(lab.pods["a"]), 134, bytes(12) + m),
     antispoof.ND_DROP),
]


@pytest.mark.parametrize("forgery", FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forged_frame_is_dropped_and_counted(lab: Lab, forgery: Forgery) -> None:
    _, build, counter = forgery
    marker = _marker()
    frame = build(lab, marker)
    assert arrives(lab, frame, marker), "control: without the table the forgery gets through"
    lab.install("a", "b", "c")
    before = lab.counters()
    assert not arrives(lab, frame, marker)
    after = lab.counters()
    assert after[counter] == before[counter] + 1, (before, after)


def test_changed_mac_on_the_interface_is_dropped(lab: Lab) -> None:
    lab.install("a", "b", "c")
    ping = lab.in_pod("a", "ping", "-c", "1", "-W", "2", lab.pods["b"].address)
    assert ping.returncode == 0, "control: the admitted MAC talks " + ping.stdout + ping.stderr
    new_mac = "0a:58:0a:63:00:99"
    ip("-n", lab.pods["a"].netns, "link", "set", "eth0", "address", new_mac)
    ip("-n", lab.pods["a"].netns, "neigh", "flush", "dev", "eth0")
    before = lab.counters()
    ping = lab.in_pod("a", "ping", "-c", "1", "-W", "1", lab.pods["b"].address)
    assert ping.returncode != 0
    assert lab.counters()[antispoof.MAC] > before[antispoof.MAC]
    marker = _marker()
    assert not arrives(lab, _udp(new_mac, lab.pods["a"].address, marker), marker)
    # Control: the same frame passes once the table is gone.
    lab.nft(antispoof.delete_table_batch(TABLE))
    assert arrives(lab, _udp(new_mac, lab.pods["a"].address, marker), marker)


def test_normal_traffic_passes(lab: Lab) -> None:
    lab.install("a", "b", "c")
    ping = lab.in_pod("a", "ping", "-c", "2", "-W", "2", lab.pods["b"].address)
    assert ping.returncode == 0, ping.stdout + ping.stderr  # ARP resolution and ICMP
    ping = lab.in_pod("b", "ping", "-c", "1", "-W", "2", GATEWAY_IP)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    neigh = lab.in_pod("a", "ip", "neigh", "show", lab.pods["b"].address).stdout
    assert lab.pods["b"].mac in neigh
    marker = _marker()
    dhcp = _udp(lab.pods["a"].mac, "0.0.0.0", marker, "255.255.255.255", 68, 67)  # noqa: S104
    assert arrives(lab, dhcp, marker)
    assert arrives(lab, _udp(lab.pods["a"].mac, lab.pods["a"].address, marker), marker)
    probe = _arp(1, lab.pods["a"].mac, "0.0.0.0", lab.pods["a"].address, marker)  # noqa: S104
    assert arrives(lab, probe, marker)
    a = lab.pods["a"]
    assert arrives(lab, _udp6(a.mac, _lla(a), marker), marker)  # its own link-local
    # Duplicate-address detection: a neighbour solicitation from ::, type 135.
    dad = _icmp6(a.mac, "::", 135, bytes(4) + antispoof.ipaddress.IPv6Address(_lla(a)).packed
                 + marker, dst_ip="ff02::1:ff00:2")
    assert arrives(lab, dad, marker)
    assert not any(lab.counters().values()), lab.counters()


def test_dhcp_client_before_it_has_an_address(lab: Lab) -> None:
    lab.install("b", "c")
    a = lab.pods["a"]
    lab.nft(antispoof.admit_batch(TABLE, a.port, a.mac))  # MAC known, no address yet
    marker = _marker()
    dhcp = _udp(a.mac, "0.0.0.0", marker, "255.255.255.255", 68, 67)  # noqa: S104
    assert _arrives_raw(lab, dhcp, marker, a)
    # Not a way around the address check: other 0.0.0.0 traffic, or DHCP from another MAC.
    not_dhcp = _udp(a.mac, "0.0.0.0", marker, "255.255.255.255", 68, 9)  # noqa: S104
    other_mac = _udp(lab.pods["c"].mac, "0.0.0.0", marker, "255.255.255.255", 68, 67)  # noqa: S104
    before = lab.counters()
    for frame in (not_dhcp, other_mac):
        assert not _arrives_raw(lab, frame, marker, a)
    after = lab.counters()
    assert after[antispoof.IPV4_DROP] == before[antispoof.IPV4_DROP] + 1
    assert after[antispoof.MAC] == before[antispoof.MAC] + 1
    # The lease arrives: the model admits the address, and it may use it.
    lab.nft(antispoof.admit_batch(TABLE, a.port, a.mac, [a.address]))
    assert arrives(lab, _udp(a.mac, a.address, marker), marker)


def _arrives_raw(lab: Lab, frame: bytes, marker: bytes, src: Pod) -> bool:
    """``arrives`` for a sender whose address is not admitted yet: the sentinel comes
    from pod C's port instead (still sent after the frame under test)."""
    with entered(lab.pods["b"].fd):
        cap = frames.capture("eth0")
    with entered(src.fd):
        out = frames.sender("eth0")
    with entered(lab.pods["c"].fd):
        other = frames.sender("eth0")
    try:
        frames.drain(cap)
        out.send(frame)
        sentinel = b"sentinel-" + uuid.uuid4().hex.encode()
        other.send(_udp(lab.pods["c"].mac, lab.pods["c"].address, sentinel))
        # Frames from two ports can be reordered; a second sentinel from A's own MAC
        # would be dropped too, so wait for C's and then for one more round trip.
        seen = frames.receive_until(cap, sentinel)
        sentinel2 = b"sentinel-" + uuid.uuid4().hex.encode()
        other.send(_udp(lab.pods["c"].mac, lab.pods["c"].address, sentinel2))
        seen += frames.receive_until(cap, sentinel2)
        return any(marker in f for f in seen)
    finally:
        cap.close()
        out.close()
        other.close()


def test_registered_port_without_mac_drops_everything(lab: Lab) -> None:
    lab.install("b", "c")
    a = lab.pods["a"]
    lab.nft(antispoof.admit_batch(TABLE, a.port, ""))
    marker = _marker()
    before = lab.counters()
    assert not _arrives_raw(lab, _udp(a.mac, a.address, marker), marker, a)
    assert lab.counters()[antispoof.MAC] == before[antispoof.MAC] + 1


def test_gateway_cannot_be_admitted_by_mistake(lab: Lab) -> None:
    lab.install("b", "c")
    a = lab.pods["a"]
    # A buggy caller admits the gateway's address for pod A: the guard rules still win.
    lab.nft(antispoof.admit_batch(TABLE, a.port, a.mac, [a.address, GATEWAY_IP]))
    lab.nft(antispoof.admit_batch(TABLE, a.port, GATEWAY_MAC, [GATEWAY_IP]))
    before = lab.counters()
    for frame_of in (lambda m: _arp(1, a.mac, GATEWAY_IP, GATEWAY_IP, m),
                     lambda m: _arp(2, GATEWAY_MAC, GATEWAY_IP, lab.pods["b"].address, m),
                     lambda m: _udp(a.mac, GATEWAY_IP, m),
                     lambda m: _udp(GATEWAY_MAC, a.address, m)):
        marker = _marker()
        assert not arrives(lab, frame_of(marker), marker)
    assert lab.counters()[antispoof.GATEWAY] == before[antispoof.GATEWAY] + 4


def test_uplink_port_is_not_checked(lab: Lab) -> None:
    lab.install("a", "b", "c")
    assert lab.remote is not None
    marker = _marker()
    # A remote pod is checked on its own host; here its frames are passed as they are,
    # even one claiming a local pod's MAC and address.
    frame = _udp(lab.pods["c"].mac, lab.pods["c"].address, marker)
    assert arrives(lab, frame, marker, sender="remote")
    assert not any(lab.counters().values())


def test_refresh_keeps_members_and_counters(lab: Lab) -> None:
    lab.install("a", "b", "c")
    marker = _marker()
    forged = _udp(lab.pods["a"].mac, lab.pods["c"].address, marker)
    assert not arrives(lab, forged, marker)
    members, counters = lab.members(), lab.counters()
    assert members is not None and len(members.ports) == 3
    lab.nft(antispoof.table_batch(TABLE, GATEWAY_MAC, [GATEWAY_IP]))  # a reconcile pass
    assert lab.members() == members
    assert lab.counters() == counters
    assert not arrives(lab, forged, marker)
    ping = lab.in_pod("a", "ping", "-c", "1", "-W", "2", lab.pods["b"].address)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_evict_removes_and_tolerates_absent_elements(lab: Lab) -> None:
    lab.install("a", "b", "c")
    a = lab.pods["a"]
    members = lab.members()
    assert members is not None
    assert members.port(a.port).macs == {a.mac}
    assert (a.mac, antispoof.ipaddress.ip_address(a.address)) in members.port(a.port).addresses
    evict = antispoof.evict_batch(TABLE, a.port, a.mac, [a.address])
    lab.nft(evict)
    lab.nft(evict)  # again: every element is absent now, the batch still succeeds
    members = lab.members()
    assert members is not None
    assert a.port not in members.ports and members.port(a.port) == antispoof.PortMembers()
    assert set(members.ports) == {lab.pods["b"].port, lab.pods["c"].port}
    # A plain delete of an absent element fails the batch: why evict adds first.
    with pytest.raises(DataplaneError):
        lab.nft([b for b in evict if "delete" in b])
    # Reconcile's way: evict whatever the table records for a port (here B's).
    b = lab.pods["b"]
    lab.nft(antispoof.evict_recorded_batch(TABLE, members, b.port))
    members = lab.members()
    assert members is not None and members.ports == {lab.pods["c"].port}
    assert all(p == lab.pods["c"].port for p, _ in members.macs)
    # keep_port: registered but nothing admitted, so everything from A is dropped.
    lab.nft(antispoof.admit_batch(TABLE, a.port, a.mac, [a.address]))
    lab.nft(antispoof.evict_batch(TABLE, a.port, a.mac, [a.address], keep_port=True))
    marker = _marker()
    assert not _arrives_raw(lab, _udp(a.mac, a.address, marker), marker, a)


def test_members_of_absent_table_is_none(lab: Lab) -> None:
    assert lab.members() is None
    lab.install("a")
    lab.nft(antispoof.delete_table_batch(TABLE))
    lab.nft(antispoof.delete_table_batch(TABLE))  # idempotent
    assert lab.members() is None
    with entered(lab.host_fd):
        assert antispoof.drop_counters(TABLE) is None
