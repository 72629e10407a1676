"""The ICMP echo request the lab's probes send."""

from __future__ import annotations

import struct

from xvmcni.lab import icmp


def test_checksum_of_a_known_packet() -> None:
    # RFC 1071's example words: 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is ~ddf2.
    assert icmp.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert icmp.checksum(b"\x01") == icmp.checksum(b"\x01\x00")   # odd length: zero pad


def test_echo_request_verifies_and_carries_the_token_first() -> None:
    payload = icmp._payload(b"TOKEN123", 20)
    assert payload == b"TOKEN123TOKEN123TOKE"
    packet = icmp._echo_request(0x1234, 3, payload)
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    assert (kind, code, ident, seq) == (icmp.ICMP_ECHO_REQUEST, 0, 0x1234, 3)
    assert icmp.checksum(packet) == 0          # a correct checksum sums to zero
    assert icmp._payload(b"T", 0) == b""
