"""The ``controlPlane`` section of a network that uses etcd, validated.

Pure parsing, no client import: the thin plugin and agents without etcd networks
validate configs without paying for gRPC.

    "controlPlane": {"type": "etcd", "endpoints": ["http://10.0.0.5:2379"],
                     "prefix": "/xvm-cni", "ttl": 15, "reclaimAfter": 86400,
                     "certFile": "...", "keyFile": "...", "caFile": "..."}
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from xvmcni.config import fail, get

DEFAULT_PREFIX = "/xvm-cni"
DEFAULT_TTL = 15
MIN_TTL = 3              # refreshed every TTL/3: below 3 s one slow call expires us
MAX_TTL = 3600
DEFAULT_RECLAIM_AFTER = 24 * 3600
DEFAULT_PORT = 2379
# This host's name in etcd; the environment overrides the kernel's host name (lab
# hosts are network namespaces sharing one UTS namespace).
HOSTNAME_ENV = "XVM_CNI_HOSTNAME"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    secure: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{host}:{self.port}"


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[Endpoint, ...]
    prefix: str = DEFAULT_PREFIX
    ttl: int = DEFAULT_TTL
    reclaim_after: int = DEFAULT_RECLAIM_AFTER
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    @property
    def secure(self) -> bool:
        return any(e.secure for e in self.endpoints)


def host_name() -> str:
    """This host's name as the other hosts see it in etcd."""
    return os.environ.get(HOSTNAME_ENV) or socket.gethostname()


def parse_endpoint(text: str) -> Endpoint:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise fail(f"etcd endpoint {text!r} must start with http:// or https://")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise fail(f"etcd endpoint {text!r} is not host:port")
    else:
        host, _, port_text = rest.partition(":")
    if not host or "/" in host or ("[" not in rest and host.count(":")):
        raise fail(f"etcd endpoint {text!r} has no valid host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise fail(f"etcd endpoint {text!r}: {host!r} is not an IPv6 address") from exc
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise fail(f"etcd endpoint {text!r} has no valid port")
        port = int(port_text)
    return Endpoint(host, port, scheme == "https")


def parse(section: dict[str, Any]) -> EtcdSettings:
    """Validate ``controlPlane`` of type etcd; CniError(7) naming the bad field."""
    raw_endpoints = get(section, "endpoints", list)
    if not raw_endpoints:
        raise fail("controlPlane 'endpoints' is required for etcd",
                   'for example "endpoints": ["http://10.0.0.5:2379"]')
    endpoints = []
    for item in raw_endpoints:
        if not isinstance(item, str):
            raise fail(f"controlPlane 'endpoints' holds {item!r}: each must be a URL string")
        endpoints.append(parse_endpoint(item))
    if len({e.secure for e in endpoints}) > 1:
        raise fail("controlPlane 'endpoints' mixes http:// and https://")

    prefix = get(section, "prefix", str, DEFAULT_PREFIX)
    if not prefix.startswith("/") or (prefix.endswith("/") and prefix != "/") \
            or any(c.isspace() for c in prefix):
        raise fail(f"controlPlane 'prefix' {prefix!r} must start with '/', not end with "
                   "one, and hold no spaces")
    ttl = get(section, "ttl", int, DEFAULT_TTL)
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise fail(f"controlPlane 'ttl' {ttl} is out of range", f"allowed: {MIN_TTL}..{MAX_TTL}")
    reclaim = get(section, "reclaimAfter", int, DEFAULT_RECLAIM_AFTER)
    if not ttl <= reclaim <= 10 * 365 * 86400:
        raise fail(f"controlPlane 'reclaimAfter' {reclaim} is out of range",
                   f"seconds, at least the ttl ({ttl})")

    files = {}
    for key in ("certFile", "keyFile", "caFile"):
        value = get(section, key, str, "")
        if value and not os.path.isabs(value):
            raise fail(f"controlPlane {key!r} {value!r} must be an absolute path")
        files[key] = value
    if bool(files["certFile"]) != bool(files["keyFile"]):
        raise fail("controlPlane 'certFile' and 'keyFile' go together")
    secure = endpoints[0].secure
    if secure and not files["caFile"]:
        raise fail("controlPlane 'caFile' is required with https:// endpoints",
                   "the CA that signed etcd's server certificate")
    if not secure and (files["caFile"] or files["certFile"]):
        raise fail("controlPlane TLS files are set but the endpoints are http://")
    return EtcdSettings(tuple(endpoints), prefix, ttl, reclaim, files["certFile"],
                        files["keyFile"], files["caFile"])
