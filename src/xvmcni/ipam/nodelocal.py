"""``"ipam": {"type": "node-local", ...}``: xcluster-cni's node-local IPAM, a filter
that hands ``host-local`` (or the plugin named in ``delegate``) the ranges of this
host's pod CIDRs, so users who want host-local's files get them with per-node
ranges, without ``jq`` or a shell.

    "ipam": {"type": "node-local", "dataDir": "/var/lib/cni/networks"}
      -> {"type": "host-local", "dataDir": "/var/lib/cni/networks",
          "ranges": [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]}

Every other field is passed on as written. The gateway (the first address, on our
bridge) is named so host-local never hands it out. Only IPv4 ranges are injected:
a delegated IPAM gives pods IPv4 addresses only (ipam/delegated.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from xvmcni.config import fail

KIND = "node-local"
DEFAULT_DELEGATE = "host-local"
_OURS = ("type", "delegate", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_node_local(ipam: Mapping[str, Any] | None) -> bool:
    return ipam is not None and ipam.get("type") == KIND


def validate(ipam: Mapping[str, Any]) -> None:
    """Refuse what would fight the injected ranges."""
    for key in ("ranges", "subnet", "rangeStart", "rangeEnd", "gateway"):
        if key in ipam:
            raise fail(f"ipam {key!r} does not go with type node-local",
                       "the ranges are this node's pod CIDRs")
    delegate = ipam.get("delegate", DEFAULT_DELEGATE)
    if not isinstance(delegate, str) or not delegate or "/" in delegate \
            or delegate == KIND:
        raise fail(f"ipam 'delegate' {delegate!r} is not an IPAM plugin name",
                   f'e.g. "{DEFAULT_DELEGATE}"')


def delegated_config(raw: Mapping[str, Any], pod_cidrs: Iterable[IPNetwork]) -> dict[str, Any]:
    """The network config with its ``ipam`` section rewritten for the delegate."""
    ipam = dict(raw.get("ipam") or {})
    delegate = str(ipam.get("delegate", DEFAULT_DELEGATE))
    passed = {k: v for k, v in ipam.items() if k not in _OURS}
    ranges = [[{"subnet": str(c), "gateway": str(c.network_address + 1)}]
              for c in pod_cidrs if c.version == 4]
    return {**raw, "ipam": {"type": delegate, **passed, "ranges": ranges}}
