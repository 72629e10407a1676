"""Our own kernel objects: what the network's model says it should have (devices,
addresses, nftables tables) while it has containers here, and anything carrying our
mark that belongs to no network this host knows any more."""

from __future__ import annotations

from xvmcni.dataplane import ownership
from xvmcni.dataplane.netlink import link_kind
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import Host
from xvmcni.diagnose.target import Target

NAME = "objects"


def run(t: Target) -> list[Finding]:
    if not t.in_use():
        return [fd.ok(NAME, t.name, "no containers here: the host side is not expected",
                      t.name)]
    problems = t.model.problems()
    if not problems:
        return [fd.ok(NAME, t.name, "devices, gateway address and nftables tables present "
                      "and ours", t.name)]
    return [fd.fail(NAME, t.name, f"{p}, although {len(t.records())} containers use the "
                    "network here", "xvmctl gc (the agent recreates what is missing "
                    "without touching the rest)", t.name) for p in problems]


def run_host(host: Host) -> list[Finding]:
    known = {n.name for n in host.networks}
    found: list[Finding] = []
    for link in host.ipr.get_links():
        mark = ownership.owner(link)
        if mark is None or mark.network in known:
            continue
        name = str(link.get("IFLA_IFNAME"))
        kind = link_kind(link) or "device"
        found.append(fd.warn(NAME, name, f"{kind} {name} carries the mark of network "
                             f"{mark.network!r}, which this host no longer knows (no config, "
                             "no state): a leftover", f"ip link del {name}"))
    tables = {ownership.table_name(n) for n in known} | \
        {ownership.guard_table_name(n) for n in known}
    for item in host.ruleset():
        table = item.get("table")
        if not isinstance(table, dict):
            continue
        name = str(table.get("name", ""))
        if name.startswith(("xvm_", "xvmg_")) and name not in tables:
            found.append(fd.warn(NAME, f"table {table.get('family')} {name}", "an nftables "
                                 "table named like ours that belongs to no network this host "
                                 "knows: a leftover",
                                 f"nft delete table {table.get('family')} {name}"))
    if not found:
        found.append(fd.ok(NAME, "leftovers", "nothing of ours from a network that no "
                           "longer exists"))
    return found
