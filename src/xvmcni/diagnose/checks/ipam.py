"""IPAM: addresses used against what this host may hand out (from the agent, which
reads the allocator), exhaustion, and addresses recorded for containers whose
network namespace is gone."""

from __future__ import annotations

from xvmcni.cli.status import AgentUnavailable
from xvmcni.dataplane.netns import netns_gone
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.target import Target

NAME = "ipam"
NEARLY_FULL = 0.9


def run(t: Target) -> list[Finding]:
    found: list[Finding] = []
    reply = t.host.agent()
    rows = [] if isinstance(reply, AgentUnavailable) else list(reply.get("networks") or [])
    row = next((r for r in rows if r.get("name") == t.name), None)
    if row is not None:
        used, size = int(row.get("used", 0)), int(row.get("size", 0))
        pool = row.get("pool") or "-"
        if size and used >= size:
            found.append(fd.fail(NAME, f"pool {pool}", f"all {size} addresses are in use: "
                                 "every ADD on this host fails", "remove unused containers "
                                 "(xvmctl gc releases those that are gone), or give the "
                                 "network a larger subnet/range", t.name))
        elif size and used >= NEARLY_FULL * size:
            found.append(fd.warn(NAME, f"pool {pool}", f"{used} of {size} addresses in use",
                                 "plan a larger subnet/range before it runs out", t.name))
        else:
            found.append(fd.ok(NAME, f"pool {pool}", f"{used} of {size or '?'} addresses in "
                               "use", t.name))
    gone = []
    for record in t.records():
        try:
            if record.netns and netns_gone(record.netns):
                gone.append(record)
        except OSError:
            continue  # cannot tell: not reported as gone
    for record in gone:
        found.append(fd.warn(NAME, f"{record.container_id[:12]}/{record.ifname}",
                             f"{', '.join(record.addresses) or 'an address'} is recorded for "
                             f"a container whose netns {record.netns} no longer exists",
                             "xvmctl gc (releases it)", t.name))
    if not gone:
        found.append(fd.ok(NAME, "records", f"{len(t.records())} containers recorded, all "
                           "alive", t.name))
    return found
