"""The nftables evaluator against rulesets as nft 1.0 prints them (iptables-nft
rules included): what drops the VXLAN port, Docker's FORWARD policy, and rules it
cannot read, which it skips and marks uncertain."""

from __future__ import annotations

from typing import Any

from xvmcni.diagnose.nfeval import ACCEPT, DROP, Ruleset

# `iptables -P FORWARD DROP; -A FORWARD -m conntrack ... -j ACCEPT; -A FORWARD -i docker0
# -j ACCEPT; -A INPUT -p udp --dport 8472 -j DROP`, then `nft -j list ruleset`.
IPTABLES_NFT: list[dict[str, Any]] = [
    {"table": {"family": "ip", "name": "filter", "handle": 1}},
    {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1,
               "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
    {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 4,
               "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
    {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 2, "expr": [
        {"xt": {"type": "match", "name": "conntrack"}},
        {"counter": {"packets": 0, "bytes": 0}}, {"accept": None}]}},
    {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 3, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "docker0"}},
        {"counter": {"packets": 0, "bytes": 0}}, {"accept": None}]}},
    {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 5, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                   "right": 8472}},
        {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]}},
]

VXLAN = {"iifname": "eth0", "l4proto": "udp", "dport": 8472}
BRIDGED = {"iifname": "xvmbr10", "oifname": "xvmbr10", "l4proto": "udp", "dport": 53,
           "saddr": "10.244.0.2", "daddr": "10.244.0.3"}


def test_the_vxlan_port_dropped_in_input_is_found() -> None:
    verdict = Ruleset(IPTABLES_NFT).verdict("input", ("ip", "inet"), VXLAN)
    assert (verdict.verdict, verdict.chain, verdict.uncertain) == (DROP, "ip filter INPUT",
                                                                   False)


def test_another_port_passes() -> None:
    packet = {**VXLAN, "dport": 4789}
    assert Ruleset(IPTABLES_NFT).verdict("input", ("ip",), packet).verdict == ACCEPT


def test_forward_policy_drop_without_an_accept_for_our_bridge() -> None:
    verdict = Ruleset(IPTABLES_NFT).verdict("forward", ("ip", "inet"), BRIDGED)
    # The conntrack rule cannot be read (an xt match): skipped, so "may drop".
    assert (verdict.verdict, verdict.chain, verdict.uncertain) == (
        DROP, "ip filter FORWARD (policy)", True)


def test_an_accept_for_our_bridge_lets_it_through() -> None:
    rules = [*IPTABLES_NFT, {"rule": {
        "family": "ip", "table": "filter", "chain": "FORWARD", "handle": 9, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "xvmbr*"}},
            {"accept": None}]}}]
    assert Ruleset(rules).verdict("forward", ("ip",), BRIDGED).verdict == ACCEPT


def test_jumps_sets_and_prefixes_are_followed() -> None:
    rules: list[dict[str, Any]] = [
        {"chain": {"family": "inet", "table": "fw", "name": "input", "type": "filter",
                   "hook": "input", "prio": 0, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "fw", "name": "udp_in"}},
        {"rule": {"family": "inet", "table": "fw", "chain": "input", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
            {"jump": {"target": "udp_in"}}]}},
        {"rule": {"family": "inet", "table": "fw", "chain": "udp_in", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "172.30.0.0", "len": 24}}}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": {"set": [4789, {"range": [8000, 9000]}]}}},
            {"reject": None}]}},
    ]
    ruleset = Ruleset(rules)
    inside = {**VXLAN, "saddr": "172.30.0.12"}
    assert ruleset.verdict("input", ("ip", "inet"), inside).verdict == DROP
    outside = {**VXLAN, "saddr": "192.0.2.1"}
    assert ruleset.verdict("input", ("ip", "inet"), outside).verdict == ACCEPT
    # Source unknown (multicast: no peer list): the rule cannot be decided.
    unknown = ruleset.verdict("input", ("ip", "inet"), VXLAN)
    assert (unknown.verdict, unknown.uncertain) == (ACCEPT, True)


def test_established_only_rules_do_not_match_a_new_packet() -> None:
    rules: list[dict[str, Any]] = [
        {"chain": {"family": "ip", "table": "t", "name": "in", "type": "filter",
                   "hook": "input", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "ip", "table": "t", "chain": "in", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                       "right": ["established", "related"]}}, {"accept": None}]}},
    ]
    assert Ruleset(rules).verdict("input", ("ip",), VXLAN).verdict == DROP
