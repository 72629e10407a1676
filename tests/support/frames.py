"""A tiny Ethernet frame builder and AF_PACKET helpers for tests that forge traffic.

Only what the anti-spoofing tests need: Ethernet II, ARP (Ethernet/IPv4), and
IPv4/UDP with a payload marker the receiver looks for. No scapy.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

from xvmcni.lab.icmp import checksum

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST = "ff:ff:ff:ff:ff:ff"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ethernet(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    frame = mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload
    return frame.ljust(60, b"\0")  # minimum frame size without FCS


def arp(op: int, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    """An Ethernet/IPv4 ARP body (op 1 request, 2 reply)."""
    return (struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op)
            + mac_bytes(sender_mac) + ipaddress.IPv4Address(sender_ip).packed
            + mac_bytes(target_mac) + ipaddress.IPv4Address(target_ip).packed)


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 packet carrying UDP (UDP checksum 0: allowed for IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def sender(ifname: str) -> socket.socket:
    """A raw socket on ``ifname`` in the calling thread's netns (it stays bound there)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    return sock


def capture(ifname: str) -> socket.socket:
    """A raw socket receiving every frame that arrives on ``ifname``."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> None:
    while select.select([sock], [], [], 0)[0]:
        sock.recv(65535)


def receive_until(sock: socket.socket, sentinel: bytes, limit: float = 5.0) -> list[bytes]:
    """Frames received up to and including the first containing ``sentinel``.

    The sentinel is sent after the frames under test, from the same port: once it
    is here, anything sent before it that the bridge forwarded is here too, so the
    absence of a frame is shown without sleeping. ``limit`` only guards a hang.
    """
    frames: list[bytes] = []
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("the sentinel frame never arrived: the path itself is broken")
        if not select.select([sock], [], [], left)[0]:
            continue
        frame = sock.recv(65535)
        frames.append(frame)
        if sentinel in frame:
            return frames


ETH_P_IPV6 = 0x86DD
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    """An IPv6 packet (no extension headers; upper-layer checksums are left at 0:
    the bridge does not verify them and the receiver only captures)."""
    return (struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmpv6(type_: int, code: int, body: bytes) -> bytes:
    return struct.pack("!BBH", type_, code, 0) + body
