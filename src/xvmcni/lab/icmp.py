"""ICMP echo from inside a lab namespace: ``dataplane.icmp.echo`` run in the source
namespace by the calling thread (the echo itself lives in the dataplane, where the
agent's connectivity probes use it too)."""

from __future__ import annotations

from xvmcni.dataplane.icmp import (
    DEFAULT_SIZE,
    ICMP_ECHO_REQUEST,
    ICMP_HEADER,
    IP6_HEADER,
    IP_HEADER,
    PingReply,
    _echo_request,
    _payload,
    checksum,
    echo,
    ip_header_size,
)
from xvmcni.lab.plumbing import NetnsError, inside

__all__ = ["DEFAULT_SIZE", "ICMP_ECHO_REQUEST", "ICMP_HEADER", "IP6_HEADER", "IP_HEADER",
           "PingReply", "_echo_request", "_payload", "checksum", "echo", "ip_header_size",
           "ping", "probe"]


def probe(src_netns_path: str, dst_ip: str, *, size: int = DEFAULT_SIZE, df: bool = False,
          timeout: float = 1.0, tries: int = 3) -> PingReply:
    """``echo`` from inside the namespace at ``src_netns_path`` (calling thread only)."""
    try:
        with inside(src_netns_path):
            return echo(dst_ip, size=size, df=df, timeout=timeout, tries=tries)
    except NetnsError as exc:
        return PingReply(False, error=str(exc))


def ping(src_netns_path: str, dst_ip: str, *, size: int = DEFAULT_SIZE, df: bool = False,
         timeout: float = 1.0, tries: int = 3) -> bool:
    """True when ``dst_ip`` answers an ICMP echo sent from ``src_netns_path``."""
    return probe(src_netns_path, dst_ip, size=size, df=df, timeout=timeout, tries=tries).ok
