"""ICMP echo from the calling thread's network namespace, in pure Python (no
``ping`` binary): the lab's probes and the agent's connectivity probes use it.

A raw socket belongs to the namespace its creating thread was in, so callers
enter the source namespace in the *calling* thread, create the socket there
(``echo``) and leave afterwards. Callers run pairs in parallel by calling from
several threads; a socket is never shared between threads.

Every raw ICMP socket of a namespace sees every ICMP packet arriving there, so
replies are matched on identifier, sequence, source address and a random token in
the payload: parallel pings from the same pod never take each other's replies.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_FRAG_NEEDED = 4  # code of DEST_UNREACH
IP_HEADER = 20
ICMP_HEADER = 8
DEFAULT_SIZE = 56  # payload bytes, as ping(8)
# Linux values; the socket module has no names for them.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
# ICMPv6 (RFC 4443): a raw ICMPv6 socket gets messages without the IPv6 header, and
# the kernel fills in the checksum (it covers a pseudo-header we cannot see).
ICMP6_DEST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
IP6_HEADER = 40


def ip_header_size(address: str) -> int:
    """Bytes of IP header in front of an ICMP message to ``address``."""
    return IP6_HEADER if ipaddress.ip_address(address).version == 6 else IP_HEADER


@dataclass
class PingReply:
    """Outcome of one ``probe``: ``ok`` with the round trip of the first reply."""

    ok: bool
    rtt_ms: float | None = None
    tries: int = 0
    error: str = ""


def checksum(data: bytes) -> int:
    """RFC 1071 internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _echo_request(ident: int, seq: int, payload: bytes, v6: bool = False) -> bytes:
    if v6:  # the kernel fills in an ICMPv6 checksum (it covers a pseudo-header)
        return struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + payload
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def _payload(token: bytes, size: int) -> bytes:
    # The token leads the payload so even a truncated reply can be matched.
    return (token * (size // len(token) + 1))[:size] if size else b""


def echo(dst: str, *, size: int = DEFAULT_SIZE, df: bool = False, timeout: float = 1.0,
         tries: int = 3) -> PingReply:
    """ICMP echo to ``dst`` from the calling thread's current namespace.

    ``size`` is the payload length (ping -s); ``df`` sets Don't Fragment
    (IP_PMTUDISC_DO), so a packet larger than the path MTU fails instead of being
    fragmented, which is what an MTU test needs. Each try waits ``timeout`` seconds.
    """
    v6 = ipaddress.ip_address(dst).version == 6
    addr = str(ipaddress.ip_address(dst))
    ident = secrets.randbits(16)
    payload = _payload(secrets.token_bytes(8), size)
    if v6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        dontfrag = (socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        header, wait = IP6_HEADER, _wait_reply6
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        dontfrag = (socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        header, wait = IP_HEADER, _wait_reply
    last_error = "no reply"
    try:
        if df:
            sock.setsockopt(*dontfrag)
        for seq in range(1, tries + 1):
            sent = time.monotonic()
            try:
                sock.sendto(_echo_request(ident, seq, payload, v6), (addr, 0))
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    return PingReply(False, tries=seq,
                                     error=f"{size + ICMP_HEADER + header} bytes exceed "
                                           "the route's MTU (DF set)")
                # No route / unreachable are answers too: try again, the
                # neighbour may just be resolving.
                last_error = exc.strerror or str(exc)
                time.sleep(min(timeout, 0.2))
                continue
            reply = wait(sock, addr, ident, seq, payload[:8], sent + timeout)
            if reply is True:
                return PingReply(True, (time.monotonic() - sent) * 1000.0, seq)
            if reply:
                last_error = reply
    finally:
        sock.close()
    return PingReply(False, tries=tries, error=last_error)


def _wait_reply(sock: socket.socket, addr: str, ident: int, seq: int, head: bytes,
                deadline: float) -> bool | str:
    """True on our echo reply, an error text on an ICMP error about our request,
    "" on timeout."""
    error = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return error
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return error
        packet, (src, _) = sock.recvfrom(65535)
        ihl = (packet[0] & 0x0F) * 4
        icmp = packet[ihl:]
        if len(icmp) < ICMP_HEADER:
            continue
        kind, code, _, r_ident, r_seq = struct.unpack("!BBHHH", icmp[:ICMP_HEADER])
        if kind == ICMP_ECHO_REPLY:
            # A late reply to an earlier try still proves the path works.
            if (src == addr and r_ident == ident and 1 <= r_seq <= seq
                    and icmp[ICMP_HEADER:ICMP_HEADER + len(head)] == head):
                return True
        elif kind in (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED):
            # The error quotes our IP header + the first 8 bytes of our ICMP.
            inner = icmp[ICMP_HEADER:]
            if len(inner) < IP_HEADER + ICMP_HEADER:
                continue
            inner_ihl = (inner[0] & 0x0F) * 4
            inner_dst = socket.inet_ntoa(inner[16:20])
            q_kind, _, _, q_ident, q_seq = struct.unpack(
                "!BBHHH", inner[inner_ihl:inner_ihl + ICMP_HEADER])
            if (inner_dst == addr and q_kind == ICMP_ECHO_REQUEST
                    and q_ident == ident and 1 <= q_seq <= seq):
                error = _describe(kind, code, src)


def _wait_reply6(sock: socket.socket, addr: str, ident: int, seq: int, head: bytes,
                 deadline: float) -> bool | str:
    """As ``_wait_reply``, for ICMPv6 (no IP header in front of what we read)."""
    error = ""
    want = ipaddress.IPv6Address(addr)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return error
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return error
        icmp, peer = sock.recvfrom(65535)
        if len(icmp) < ICMP_HEADER:
            continue
        src = str(peer[0]).split("%")[0]
        kind, code, _, r_ident, r_seq = struct.unpack("!BBHHH", icmp[:ICMP_HEADER])
        if kind == ICMP6_ECHO_REPLY:
            if (ipaddress.IPv6Address(src) == want and r_ident == ident and 1 <= r_seq <= seq
                    and icmp[ICMP_HEADER:ICMP_HEADER + len(head)] == head):
                return True
        elif kind in (ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED):
            inner = icmp[ICMP_HEADER:]  # the offending packet: IPv6 header + our ICMPv6
            if len(inner) < IP6_HEADER + ICMP_HEADER:
                continue
            inner_dst = ipaddress.IPv6Address(inner[24:40])
            q_kind, _, _, q_ident, q_seq = struct.unpack(
                "!BBHHH", inner[IP6_HEADER:IP6_HEADER + ICMP_HEADER])
            if (inner_dst == want and q_kind == ICMP6_ECHO_REQUEST and q_ident == ident
                    and 1 <= q_seq <= seq):
                names = {ICMP6_PACKET_TOO_BIG: "packet too big",
                         ICMP6_TIME_EXCEEDED: "time exceeded"}
                unreach = {0: "no route", 1: "administratively prohibited",
                           3: "address unreachable", 4: "port unreachable"}
                what = names.get(kind) or unreach.get(code, f"unreachable code {code}")
                error = f"{what} (from {src})"


def _describe(kind: int, code: int, src: str) -> str:
    if kind == ICMP_TIME_EXCEEDED:
        return f"time exceeded (from {src})"
    names = {0: "network unreachable", 1: "host unreachable", 3: "port unreachable",
             ICMP_FRAG_NEEDED: "fragmentation needed"}
    return f"{names.get(code, f'destination unreachable code {code}')} (from {src})"
