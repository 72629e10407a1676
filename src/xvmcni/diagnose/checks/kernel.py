"""The kernel: the modules the overlay needs, IPv4 forwarding, and reverse-path
filtering that would drop packets our routes deliver."""

from __future__ import annotations

import ipaddress

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import Host, module_available, rp_filter, sysctl
from xvmcni.diagnose.models import inspector
from xvmcni.diagnose.target import Target

NAME = "kernel"
# nf_tables is known to work when the ruleset could be read (the firewall check).
MODULES = ("bridge", "veth", "vxlan")


def run_host(host: Host) -> list[Finding]:
    found = []
    known = {m: module_available(m) for m in MODULES}
    missing = [m for m, there in known.items() if there is False]
    if missing:
        found.append(fd.fail(NAME, "modules", f"kernel modules {', '.join(missing)} are not "
                             "available: devices of those kinds cannot be created",
                             f"apt install linux-image-$(uname -r) (or modprobe "
                             f"{' '.join(missing)})"))
    else:
        built_in = [m for m, there in known.items() if there is None]
        note = f" ({', '.join(built_in)}: no module tree, taken as built in)" \
            if built_in else ""
        found.append(fd.ok(NAME, "modules", ", ".join(MODULES) + " available" + note))
    if host.networks:
        forward = sysctl("net.ipv4.ip_forward")
        if forward != "1":
            found.append(fd.fail(NAME, "ip_forward", "IPv4 forwarding is off: pods cannot "
                                 "reach anything beyond this host's bridge",
                                 "sysctl -w net.ipv4.ip_forward=1 (and set it in "
                                 "/etc/sysctl.d/)"))
        else:
            found.append(fd.ok(NAME, "ip_forward", "net.ipv4.ip_forward = 1"))
    found += _ipv6_forwarding(host)
    return found


def _ipv6_forwarding(host: Host) -> list[Finding]:
    """Networks whose pods have IPv6 addresses route them through this host."""
    routing = sorted(n.name for n in host.networks if n.config.model != "l2"
                     and (what := inspector(n)) is not None
                     and any(p.version == 6 for p in what.pod_prefixes(n)))
    if not routing:
        return []
    if sysctl("net.ipv6.conf.all.forwarding") != "1":
        return [fd.fail(NAME, "ipv6 forwarding", f"IPv6 forwarding is off while "
                        f"{', '.join(routing)} route IPv6 pods: their IPv6 traffic ends at "
                        "this host", "sysctl -w net.ipv6.conf.all.forwarding=1 (and set it "
                        "in /etc/sysctl.d/)")]
    return [fd.ok(NAME, "ipv6 forwarding", "net.ipv6.conf.all.forwarding = 1")]


def _route_dev(t: Target, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The interface the route back to ``prefix`` leaves through ('' unknown)."""
    address = prefix.network_address if prefix.num_addresses == 1 \
        else prefix.network_address + 1
    try:
        routes = t.host.ipr.route("get", dst=str(address))
    except NetlinkError:  # no route at all: nothing for rp_filter to compare
        return ""
    for route in routes:
        oif = route.get("RTA_OIF")
        if oif is not None:
            links = t.host.ipr.get_links(oif)
            return str(links[0].get("IFLA_IFNAME")) if links else ""
    return ""


def run(t: Target) -> list[Finding]:
    peers = t.peers().peers
    if not peers:
        return []
    # Per interface with strict filtering: the prefixes arriving there whose route
    # back leaves elsewhere, by that other interface.
    conflicts: dict[str, dict[str, list[str]]] = {}
    for prefix, dev in t.inspector.arrivals(t.network, t.model, peers):
        if prefix.version != 4 or rp_filter(dev) != 1:
            continue
        back = _route_dev(t, prefix)
        if back and back != dev:
            conflicts.setdefault(dev, {}).setdefault(back, []).append(str(prefix))
    found = []
    for dev, by_back in sorted(conflicts.items()):
        backs = ", ".join(sorted(by_back))
        prefixes = sorted({p for ps in by_back.values() for p in ps})
        found.append(fd.fail(
            NAME, f"rp_filter {dev}", f"strict reverse-path filtering on {dev} drops "
            f"packets from {', '.join(prefixes)}: they arrive on {dev} but the route back "
            f"to them leaves through {backs}", f"sysctl -w net.ipv4.conf.{dev}.rp_filter=2 "
            f"(and net.ipv4.conf.all.rp_filter=2 if 'all' is 1), or remove the conflicting "
            f"route (ip route get {prefixes[0].split('/')[0]})", t.name))
    if not found:
        found.append(fd.ok(NAME, "rp_filter", "no strict reverse-path filter conflicts with "
                           "the routes to this network's peers", t.name))
    return found
