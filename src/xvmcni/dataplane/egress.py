"""Egress of a routed network: masquerade pods' traffic that leaves the cluster.

One nat table per family (``ip`` / ``ip6``) named ``ownership.table_name(network)``:

    postrouting (nat, priority 100):
        ip saddr <this host's pod CIDR> ip daddr != <cluster CIDR> masquerade

- pod -> pod (any host): the destination is inside the cluster CIDR, no NAT;
- pod -> this host: delivered locally (input), never reaches postrouting;
- pod -> anything else (other hosts' underlay addresses included): the host's
  address on the outgoing interface.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from xvmcni.dataplane import nft, ownership

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FAMILY = {4: "ip", 6: "ip6"}


def _prefix(net: IPNetwork) -> dict[str, Any]:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def masquerade_batch(network: str, pod_cidr: IPNetwork,
                     cluster_cidr: IPNetwork) -> list[dict[str, Any]]:
    """Create or rebuild the family's nat table (one transaction)."""
    family = FAMILY[pod_cidr.version]
    name = ownership.table_name(network)
    table = {"family": family, "name": name}
    proto = family  # the payload protocol is named like the family
    rule = [
        {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                   "right": _prefix(pod_cidr)}},
        {"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "daddr"}},
                   "right": _prefix(cluster_cidr)}},
        {"counter": None},
        {"masquerade": None},
    ]
    return [
        {"add": {"table": table}},
        {"flush": {"table": table}},
        {"add": {"chain": {"family": family, "table": name, "name": "postrouting",
                           "type": "nat", "hook": "postrouting", "prio": 100,
                           "policy": "accept"}}},
        {"add": {"rule": {"family": family, "table": name, "chain": "postrouting",
                          "expr": rule}}},
    ]


def delete_batch(network: str, version: int) -> list[dict[str, Any]]:
    return nft.delete_table_batch(FAMILY[version], network)
