"""The etcd host record's lease, as doctor judges it: kept alive, stuck, expired,
or missing (the agent refreshes it every TTL/3)."""

from __future__ import annotations

from typing import Any

from xvmcni import networks
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.peersource import _freshness

RAW: dict[str, Any] = {"cniVersion": "1.0.0", "name": "n", "type": "xvm-cni",
                       "hostInterface": "eth0", "vxlanID": 10, "subnet": "10.9.0.0/16",
                       "controlPlane": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"],
                                        "ttl": 15}}


def _status(lease: tuple[int, int] | None) -> str:
    return _freshness(networks.parse(RAW), "h1", lease).status


def test_a_lease_refreshed_every_third_of_its_ttl_is_fresh() -> None:
    assert _status((15, 15)) == fd.OK
    assert _status((10, 15)) == fd.OK     # just before the next refresh
    assert _status((4, 15)) == fd.OK      # a refresh a second late, rounded down


def test_a_lease_that_stopped_being_refreshed_fails() -> None:
    assert _status((3, 15)) == fd.FAIL
    assert _status((0, 15)) == fd.FAIL
    assert _status((-1, 15)) == fd.FAIL   # expired: etcd says -1


def test_a_record_without_lease_is_a_warning() -> None:
    assert _status(None) == fd.WARN
