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
from xvmcni.dataplane.errors import DataplaneError

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


# --- a foreign forward policy DROP (Docker) ----------------------------------------------
#
# Every base chain on the forward hook must accept a packet: an accept in our own
# table cannot override the drop policy of Docker's ``ip filter FORWARD`` (an nft
# verdict ends only the chain it is in). Docker's documented place for other
# software's rules is its DOCKER-USER chain, jumped to first from FORWARD. When that
# chain exists we insert, at its top, accept rules for traffic from and to this
# host's pod CIDR, marked by the comment ``xvm-cni:<network>`` (iptables-nft shows
# them as ``-m comment``); we change nothing else in Docker's table and remove
# exactly our rules on leave. Without a DOCKER-USER chain nothing is added: a host
# firewall that drops forwarding must allow the pod CIDR itself (README).

DOCKER_TABLE = "filter"
DOCKER_CHAIN = "DOCKER-USER"


def rule_comment(network: str) -> str:
    return f"{ownership.PREFIX}:{network}"


def _docker_rules(family: str) -> list[dict[str, Any]] | None:
    """The rules of ``<family> filter DOCKER-USER``; None when the chain is absent."""
    try:
        items = nft.query(f"list chain {family} {DOCKER_TABLE} {DOCKER_CHAIN}")
    except DataplaneError as exc:
        if "No such file or directory" in exc.details:
            return None
        raise
    return [item["rule"] for item in items if "rule" in item]


def _accept_rule(family: str, network: str, field: str,
                 cidr: IPNetwork) -> dict[str, Any]:
    return {"family": family, "table": DOCKER_TABLE, "chain": DOCKER_CHAIN,
            "comment": rule_comment(network),
            "expr": [{"match": {"op": "==",
                                "left": {"payload": {"protocol": family, "field": field}},
                                "right": _prefix(cidr)}},
                     {"counter": None}, {"accept": None}]}


def _signature(rule: dict[str, Any]) -> tuple[str, str]:
    """(field, prefix) of one of our accept rules, for comparison."""
    match = rule["expr"][0]["match"]
    right = match["right"]
    prefix = f"{right['prefix']['addr']}/{right['prefix']['len']}" \
        if isinstance(right, dict) else str(right)
    return (str(match["left"]["payload"]["field"]), prefix)


def forward_accept_batch(network: str,
                         pod_cidrs: tuple[IPNetwork, ...]) -> list[dict[str, Any]]:
    """What makes the DOCKER-USER chains (where they exist) hold exactly our accept
    rules for ``pod_cidrs`` (empty: none of ours). [] when nothing needs changing."""
    batch: list[dict[str, Any]] = []
    for version, family in FAMILY.items():
        rules = _docker_rules(family)
        if rules is None:
            continue
        ours = [r for r in rules if r.get("comment") == rule_comment(network)]
        cidr = next((c for c in pod_cidrs if c.version == version), None)
        wanted = [] if cidr is None else [_accept_rule(family, network, f, cidr)
                                          for f in ("saddr", "daddr")]
        if sorted(map(_signature, ours)) == sorted(map(_signature, wanted)):
            continue
        for rule in ours:
            batch.append({"delete": {"rule": {"family": family, "table": DOCKER_TABLE,
                                              "chain": DOCKER_CHAIN,
                                              "handle": rule["handle"]}}})
        # "insert" puts a rule first: Docker's chain ends in a RETURN.
        batch += [{"insert": {"rule": rule}} for rule in reversed(wanted)]
    return batch
