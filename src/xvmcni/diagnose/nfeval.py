"""Would nftables drop this packet? A small, conservative evaluator over
``nft -j list ruleset`` (iptables-nft rules are there too, as native expressions).

A packet is a dict of what is known about it ("iifname", "oifname", "l4proto",
"dport", "saddr", "daddr", "ct"). A rule whose matches all hold decides; a rule
with a match we cannot evaluate (an unknown expression, a field the packet does
not say) is skipped and the answer marked uncertain: doctor then says "may".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

Packet = dict[str, Any]
ACCEPT, DROP = "accept", "drop"
_UNKNOWN = object()
MAX_DEPTH = 16
# Statements that neither match nor decide: a rule with only these and matches that
# hold goes on to its verdict.
_HARMLESS = ("counter", "log", "comment", "notrack")


@dataclass
class Verdict:
    verdict: str            # accept or drop
    chain: str              # "family table chain" that decided
    uncertain: bool = False


def _field(left: Any, packet: Packet) -> Any:
    if not isinstance(left, dict):
        return _UNKNOWN
    if "meta" in left:
        key = left["meta"].get("key")
        if key in ("iifname", "oifname", "l4proto"):
            return packet.get(key, _UNKNOWN)
        if key == "nfproto":
            return "ipv4"
        return _UNKNOWN
    if "payload" in left:
        proto, name = left["payload"].get("protocol"), left["payload"].get("field")
        if name == "dport" and proto in ("udp", "th"):
            return packet.get("dport", _UNKNOWN) if packet.get("l4proto") == "udp" \
                or proto == "th" else _UNKNOWN
        if proto == "ip" and name == "protocol":
            return packet.get("l4proto", _UNKNOWN)
        if proto == "ip" and name in ("saddr", "daddr"):
            return packet.get(name, _UNKNOWN)
        return _UNKNOWN
    if "ct" in left and left["ct"].get("key") == "state":
        return packet.get("ct", "new")
    return _UNKNOWN


def _contains(right: Any, value: Any) -> bool | None:
    """Does ``right`` (a value, set, prefix or range) hold ``value``? None: unknown."""
    if isinstance(right, dict) and "set" in right:
        items = right["set"]
        results = [_contains(i, value) for i in (items if isinstance(items, list) else [items])]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if isinstance(right, list):
        return _contains({"set": right}, value)
    if isinstance(right, dict) and "prefix" in right:
        try:
            net = ipaddress.ip_network(f"{right['prefix']['addr']}/{right['prefix']['len']}",
                                       strict=False)
            return ipaddress.ip_address(str(value)) in net
        except ValueError:
            return None
    if isinstance(right, dict) and "range" in right:
        lo, hi = right["range"]
        try:
            return int(lo) <= int(value) <= int(hi)
        except (TypeError, ValueError):
            return None
    if isinstance(right, dict):
        return None
    if isinstance(right, str) and right.endswith("*") and isinstance(value, str):
        return value.startswith(right[:-1])  # iptables' "eth+" wildcard
    if isinstance(value, str) and "/" not in str(right):
        try:
            return ipaddress.ip_address(value) == ipaddress.ip_address(str(right))
        except ValueError:
            return str(value) == str(right)
    return str(value) == str(right)


def _match(expr: dict[str, Any], packet: Packet) -> bool | None:
    value = _field(expr.get("left"), packet)
    if value is _UNKNOWN:
        return None
    if isinstance(value, str) and value == "new" and isinstance(expr.get("left"), dict) \
            and "ct" in expr["left"]:
        right = expr.get("right")
        if isinstance(right, dict) and "set" in right:
            right = right["set"]
        states = right if isinstance(right, list) else [right]
        is_new = "new" in [str(s) for s in states]
        return is_new if expr.get("op", "==") in ("==", "in") else not is_new
    held = _contains(expr.get("right"), value)
    if held is None:
        return None
    return held if expr.get("op", "==") in ("==", "in") else not held


class Ruleset:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.chains: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for item in items:
            if "chain" in item:
                c = item["chain"]
                self.chains[(c["family"], c["table"], c["name"])] = c
            elif "rule" in item:
                r = item["rule"]
                self.rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)

    def base_chains(self, hook: str, families: tuple[str, ...]) -> list[dict[str, Any]]:
        found = [c for c in self.chains.values()
                 if c.get("hook") == hook and c.get("family") in families]
        return sorted(found, key=lambda c: int(c.get("prio", 0))
                      if isinstance(c.get("prio"), int) else 0)

    def _walk(self, key: tuple[str, str, str], packet: Packet,
              depth: int) -> tuple[str | None, bool, str]:
        """(verdict or None to fall through, uncertain, deciding chain)."""
        uncertain = False
        where = " ".join(key)
        for rule in self.rules.get(key, []):
            applies: bool | None = True
            for expr in rule.get("expr", []):
                if not isinstance(expr, dict):
                    continue
                if "match" in expr:
                    held = _match(expr["match"], packet)
                    if held is False:
                        applies = False
                        break
                    if held is None:
                        applies = None
                        break
                    continue
                if applies is not True:
                    break
                if "accept" in expr:
                    return ACCEPT, uncertain, where
                if "drop" in expr or "reject" in expr:
                    return DROP, uncertain, where
                if "return" in expr:
                    return None, uncertain, where
                for kind in ("jump", "goto"):
                    if kind in expr and depth < MAX_DEPTH:
                        target = (key[0], key[1], str(expr[kind].get("target")))
                        verdict, unsure, there = self._walk(target, packet, depth + 1)
                        uncertain |= unsure
                        if verdict is not None:
                            return verdict, uncertain, there
                        if kind == "goto":
                            return None, uncertain, where
                if not any(k in expr for k in _HARMLESS):
                    applies = None  # a match or action we cannot evaluate: skip the rule
                    break
            if applies is None:
                uncertain = True
        return None, uncertain, where

    def verdict(self, hook: str, families: tuple[str, ...], packet: Packet) -> Verdict:
        """The verdict of every base chain on ``hook``: the first drop wins."""
        uncertain = False
        for chain in self.base_chains(hook, families):
            key = (chain["family"], chain["table"], chain["name"])
            verdict, unsure, where = self._walk(key, packet, 0)
            uncertain |= unsure
            if verdict is None:
                verdict, where = str(chain.get("policy", ACCEPT)), " ".join(key) + " (policy)"
            if verdict == DROP:
                return Verdict(DROP, where, uncertain)
        return Verdict(ACCEPT, "", uncertain)
