"""Per-host pod CIDRs of a ``routed`` network claimed through a control plane (etcd).

With ``controlPlane`` etcd and no ``podCIDR``, every host claims one pod CIDR per
family of ``clusterCIDR`` (``podCIDRPrefix``, default /24, and
``podCIDRPrefixIPv6``, default /64) by compare-and-create under
``<prefix>/<network>/cidrs/<address>_<length>``. A host looks its own claims up by
name first, so it keeps its CIDRs across agent restarts and reboots.

The CIDRs held are written to ``claims.json`` in the network's state dir (the
file ``l2``'s address blocks use; the ``blocks`` list holds the CIDR keys), so an
ADD allocates from them with the agent or etcd away.
"""

from __future__ import annotations

import ipaddress
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvmcni.config import fail, get
from xvmcni.ipam.blocks import Claimer, read_claims, write_claims

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CLAIM_KIND = "cidrs"
DEFAULT_PREFIX = {4: 24, 6: 64}
# As the routed model requires: room for a gateway and pods; IPv6 from /64 to /120.
PREFIX_LIMITS = {4: (1, 30), 6: (64, 120)}
PREFIX_KEYS = {4: "podCIDRPrefix", 6: "podCIDRPrefixIPv6"}


@dataclass(frozen=True)
class CidrClaimSettings:
    """Where this host's pod CIDRs come from: one claim per cluster CIDR."""

    cluster_cidrs: tuple[IPNetwork, ...]
    prefixes: tuple[int, ...]   # the pod CIDR length, per cluster CIDR

    def prefix(self, version: int) -> int:
        return next(p for c, p in zip(self.cluster_cidrs, self.prefixes, strict=True)
                    if c.version == version)


def parse_settings(raw: dict[str, Any],
                   cluster_cidrs: tuple[IPNetwork, ...]) -> CidrClaimSettings:
    if not cluster_cidrs:
        raise fail("'clusterCIDR' is required with controlPlane etcd and no 'podCIDR'",
                   "hosts claim their pod CIDRs from it, e.g. \"10.244.0.0/16\"")
    prefixes = []
    for cluster in cluster_cidrs:
        key = PREFIX_KEYS[cluster.version]
        prefix = int(get(raw, key, int, DEFAULT_PREFIX[cluster.version]))
        lo, hi = PREFIX_LIMITS[cluster.version]
        if not max(lo, cluster.prefixlen) <= prefix <= hi:
            raise fail(f"{key!r} /{prefix} does not fit 'clusterCIDR' {cluster}",
                       f"allowed: /{max(lo, cluster.prefixlen)} to /{hi}")
        prefixes.append(prefix)
    for version, key in PREFIX_KEYS.items():
        if raw.get(key) is not None and not any(c.version == version for c in cluster_cidrs):
            raise fail(f"{key!r} needs an IPv{version} 'clusterCIDR'")
    return CidrClaimSettings(cluster_cidrs, tuple(prefixes))


def cidr_key(cidr: IPNetwork) -> str:
    """The CIDR as an etcd key part ('/' would look like a deeper key)."""
    return f"{cidr.network_address}_{cidr.prefixlen}"


def cidr_of_key(key: str) -> IPNetwork:
    return ipaddress.ip_network(key.replace("_", "/"))


def candidates(cluster: IPNetwork, prefix: int, host: str) -> Iterator[str]:
    """Every pod CIDR of ``cluster``, from a start derived from the host name (hosts
    starting together do not all race for the first). Computed lazily: an IPv6
    cluster holds more /64s than could be listed."""
    count = 1 << (prefix - cluster.prefixlen)
    size = 1 << (cluster.max_prefixlen - prefix)
    start = zlib.crc32(host.encode()) % count
    base = int(cluster.network_address)
    for i in range(count):
        address = base + ((start + i) % count) * size
        yield cidr_key(ipaddress.ip_network((address, prefix)))


def _valid(key: str, cluster: IPNetwork, prefix: int) -> bool:
    try:
        cidr = cidr_of_key(key)
    except ValueError:
        return False
    return cidr.version == cluster.version and cidr.prefixlen == prefix \
        and cidr.subnet_of(cluster)  # type: ignore[arg-type]


def held(state_dir: Path, settings: CidrClaimSettings) -> tuple[IPNetwork, ...]:
    """This host's pod CIDRs as ``claims.json`` lists them (IPv4 first); () before
    the first claim."""
    out: list[IPNetwork] = []
    for key in read_claims(state_dir):
        for cluster, prefix in zip(settings.cluster_cidrs, settings.prefixes, strict=True):
            if _valid(key, cluster, prefix) and not any(c.version == cluster.version
                                                        for c in out):
                out.append(cidr_of_key(key))
    return tuple(sorted(out, key=lambda c: c.version))


def hold_cidrs(claimer: Claimer, settings: CidrClaimSettings,
               state_dir: Path) -> tuple[IPNetwork, ...]:
    """This host's pod CIDR per family: the one etcd says it holds (restart, reboot),
    else the one claims.json lists when it is still free, else a new claim. Written
    to claims.json. Raises what the claimer raises (ClaimsExhausted: none free)."""
    known = read_claims(state_dir)
    owned = claimer.owned(CLAIM_KIND)
    keys: list[str] = []
    for cluster, prefix in zip(settings.cluster_cidrs, settings.prefixes, strict=True):
        mine = sorted(k for k in owned if _valid(k, cluster, prefix))
        if len(mine) > 1:
            log.warning("this host holds %d pod CIDRs of %s: using %s", len(mine), cluster,
                        mine[0])
        if mine:
            keys.append(mine[0])
            continue
        before = [k for k in known if _valid(k, cluster, prefix)]
        keys.append(claimer.claim(CLAIM_KIND, _chain(before, cluster, prefix, claimer.me)))
    write_claims(state_dir, claimer.me, keys)
    return held(state_dir, settings)


def _chain(first: list[str], cluster: IPNetwork, prefix: int, host: str) -> Iterator[str]:
    yield from first
    yield from (c for c in candidates(cluster, prefix, host) if c not in first)
