"""The node-local filter: host-local gets this node's IPv4 pod CIDR as its range,
the gateway named, every other field as written."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from xvmcni.errors import CniError
from xvmcni.ipam import nodelocal


def test_ranges_of_the_node_injected_into_host_local() -> None:
    raw: dict[str, Any] = {"name": "k", "ipam": {"type": "node-local",
                                                 "dataDir": "/var/lib/x",
                                                 "routes": [{"dst": "0.0.0.0/0"}]}}
    cidrs = (ipaddress.ip_network("10.244.3.0/24"), ipaddress.ip_network("fd00:1::/64"))
    out = nodelocal.delegated_config(raw, cidrs)
    assert out["ipam"] == {"type": "host-local", "dataDir": "/var/lib/x",
                           "routes": [{"dst": "0.0.0.0/0"}],
                           "ranges": [[{"subnet": "10.244.3.0/24",
                                        "gateway": "10.244.3.1"}]]}
    assert raw["ipam"]["type"] == "node-local", "the original is left alone"
    other = nodelocal.delegated_config({"ipam": {"type": "node-local",
                                                 "delegate": "my-ipam"}}, cidrs[:1])
    assert other["ipam"]["type"] == "my-ipam"


@pytest.mark.parametrize("ipam", [
    {"type": "node-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]},
    {"type": "node-local", "subnet": "10.0.0.0/24"},
    {"type": "node-local", "delegate": "../evil"},
    {"type": "node-local", "delegate": "node-local"},
])
def test_refused(ipam: dict[str, Any]) -> None:
    with pytest.raises(CniError):
        nodelocal.validate(ipam)
