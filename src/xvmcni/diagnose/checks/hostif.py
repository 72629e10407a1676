"""``hostInterface``: exists, is up, has an address of the family the overlay
needs, and its MTU leaves room for the pods' MTU plus the overlay's overhead."""

from __future__ import annotations

from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import IFF_UP, get_link
from xvmcni.dataplane.routednet import lookup_underlay
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.target import Target

NAME = "hostif"


def run(t: Target) -> list[Finding]:
    name = t.inspector.host_interface(t.network)
    try:
        under = lookup_underlay(t.host.ipr, name)
    except DataplaneError as exc:
        return [fd.fail(NAME, name, exc.msg, exc.details or "set hostInterface in the "
                        "network's config", t.name)]
    if not under.up:
        return [fd.fail(NAME, name, f"{name} is down: pods cannot reach other hosts",
                        f"ip link set {name} up", t.name)]
    if t.network.config.model == "l2" and under.address.version != 4:
        return [fd.fail(NAME, name, f"{name} has no IPv4 address: the l2 model's VXLAN needs "
                        "one as tunnel source", f"ip addr add <address>/<prefix> dev {name}",
                        t.name)]
    overhead = t.inspector.overhead(t.network, under.address.version)
    fits = under.mtu - overhead
    bridge = get_link(t.host.ipr, t.inspector.bridge(t.network))
    if bridge is not None and bridge["flags"] & IFF_UP:
        pods = int(bridge.get("IFLA_MTU"))
        if pods > fits:
            return [fd.fail(NAME, name, f"{name} has MTU {under.mtu}, too small for the pods' "
                            f"MTU {pods} plus {overhead} bytes of overlay: full-size packets "
                            "to other hosts are dropped", f"raise the MTU of {name} to "
                            f"{pods + overhead} (ip link set {name} mtu {pods + overhead}), or "
                            f"set \"mtu\": {fits} in the config and re-create the pods",
                            t.name)]
        return [fd.ok(NAME, name, f"up, {under.address}, MTU {under.mtu} fits pods' "
                      f"{pods} + {overhead} overhead", t.name)]
    return [fd.ok(NAME, name, f"up, {under.address}, MTU {under.mtu} (pods will get at most "
                  f"{fits})", t.name)]
