"""nftables through ``nft -j`` (JSON in, atomic batches).

Two tables per network, both named after the network
(``ownership.table_name``: ``xvm_<letters and digits>_<hash>``), so ``nft list
tables`` shows at once what belongs to whom and no two networks share one:

- family ``bridge``: keeps the anycast gateway local. Frames leaving through
  the VXLAN port with the gateway's MAC as source, and ARP asking for the
  gateway's IP, are dropped; so is the same arriving from the VXLAN port. Every
  host answers for the gateway itself and never hears another host's answer.
- family ``ip`` (only with ``ipMasq``): masquerade from the subnet to anything
  outside it. Pod-to-pod traffic is never NATed.

A batch is applied by the kernel as one transaction: all or nothing.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from typing import Any

from xvmcni.dataplane import libnft, ownership
from xvmcni.dataplane.errors import DataplaneError

_FALLBACK_PATHS = ("/usr/sbin/nft", "/sbin/nft")
NFT_TIMEOUT = 10.0


def table_name(network: str) -> str:
    return ownership.table_name(network)


def nft_binary() -> str:
    # CNI runtimes pass their own PATH, which often lacks /usr/sbin.
    found = shutil.which("nft")
    if found:
        return found
    for path in _FALLBACK_PATHS:
        if shutil.which(path):
            return path
    raise DataplaneError(DataplaneError.NFTABLES, "the nft command is not installed",
                   "install the nftables package")


def run(command: str) -> str:
    """Run one nft command (text, or a JSON document) in this thread's netns; its
    JSON output. Through libnftables when it loads, else the ``nft`` program."""
    if libnft.LIBRARY is not None:
        rc, out, err = libnft.LIBRARY.run(command)
    else:
        try:
            proc = subprocess.run([nft_binary(), "-j", "-f", "-"], input=command.encode(),
                                  capture_output=True, timeout=NFT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataplaneError(DataplaneError.NFTABLES, "cannot run nft", str(exc)) from exc
        rc, out = proc.returncode, proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
    if rc != 0:
        first = command.split("\n", 1)[0][:80]
        raise DataplaneError(DataplaneError.NFTABLES, "nftables refused our request",
                             f"{err.strip()} (request: {first})")
    return out


def run_batch(commands: list[dict[str, Any]]) -> None:
    """Apply ``commands`` as one transaction: all or nothing."""
    run(json.dumps({"nftables": commands}))


def query(command: str) -> list[dict[str, Any]]:
    """The objects a ``list ...`` command prints; [] for no output."""
    out = run(command)
    data = json.loads(out) if out.strip() else {"nftables": []}
    items = data.get("nftables", []) if isinstance(data, dict) else []
    return [item for item in items if isinstance(item, dict)]


def list_tables() -> set[tuple[str, str]]:
    """(family, name) of every table in the current netns."""
    return {(item["table"]["family"], item["table"]["name"])
            for item in query("list tables") if "table" in item}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _replace_table(family: str, name: str) -> list[dict[str, Any]]:
    # add (no-op if present) + flush: the batch then rebuilds the rules exactly.
    table = {"family": family, "name": name}
    return [{"add": {"table": table}}, {"flush": {"table": table}}]


def gateway_isolation_batch(network: str, vxlan_port: str, gateway: ipaddress.IPv4Address,
                            gateway_mac: str) -> list[dict[str, Any]]:
    name = table_name(network)
    batch = _replace_table("bridge", name)
    for chain, hook, direction in (("to_vxlan", "postrouting", "oifname"),
                                   ("from_vxlan", "prerouting", "iifname")):
        batch.append({"add": {"chain": {"family": "bridge", "table": name, "name": chain,
                                        "type": "filter", "hook": hook, "prio": 0,
                                        "policy": "accept"}}})
        port = _match(_meta(direction), vxlan_port)
        # Counters let an operator (and our tests) see that the filter is doing its job.
        for rule in (
            [port, _match(_payload("ether", "saddr"), gateway_mac), {"counter": None},
             {"drop": None}],
            [port, _match(_payload("arp", "daddr ip"), str(gateway)), {"counter": None},
             {"drop": None}],
        ):
            batch.append({"add": {"rule": {"family": "bridge", "table": name, "chain": chain,
                                           "expr": rule}}})
    return batch


def masquerade_batch(network: str, subnet: ipaddress.IPv4Network) -> list[dict[str, Any]]:
    name = table_name(network)
    prefix = {"prefix": {"addr": str(subnet.network_address), "len": subnet.prefixlen}}
    batch = _replace_table("ip", name)
    batch.append({"add": {"chain": {"family": "ip", "table": name, "name": "postrouting",
                                    "type": "nat", "hook": "postrouting", "prio": 100,
                                    "policy": "accept"}}})
    batch.append({"add": {"rule": {"family": "ip", "table": name, "chain": "postrouting",
                                   "expr": [_match(_payload("ip", "saddr"), prefix),
                                            _match(_payload("ip", "daddr"), prefix, "!="),
                                            {"masquerade": None}]}}})
    return batch


def delete_table_batch(family: str, network: str) -> list[dict[str, Any]]:
    return delete_named_table_batch(family, table_name(network))


def delete_named_table_batch(family: str, name: str) -> list[dict[str, Any]]:
    # "add" first makes the delete succeed whether or not the table existed.
    table = {"family": family, "name": name}
    return [{"add": {"table": table}}, {"delete": {"table": table}}]
