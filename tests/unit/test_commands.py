"""The command flow's contract, against an in-memory model and IPAM: the order of
steps, rollback of exactly what succeeded (newest first) at every failure point,
idempotent DEL, CHECK, and kernel-layer errors mapped to CNI codes. No root."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xvmcni import commands, networks
from xvmcni.cni.request import Request
from xvmcni.cni.result import Interface, Route
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.errors import (
    CHECK_FAILED,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    NETLINK_FAILURE,
    NFTABLES_FAILURE,
    UNKNOWN_CONTAINER,
    CniError,
)
from xvmcni.ipam.base import Usage
from xvmcni.models.base import Plugged, Pod
from xvmcni.runtime import Runtime
from xvmcni.state.attachments import Attachment, AttachmentRegistry, Given

SUBNET = ipaddress.IPv4Network("10.244.0.0/16")


class FakeModel:
    """Records every step; raises a DataplaneError at the step named in ``fail``."""

    kind = "fake"

    def __init__(self, log: list[str], fail: set[str], problems: list[str]) -> None:
        self.log = log
        self.fail = fail
        self._problems = problems

    def _step(self, name: str) -> None:
        self.log.append(name)
        if name in self.fail:
            raise DataplaneError(DataplaneError.KERNEL, f"{name} failed")

    def prepare(self) -> None:
        self._step("prepare")

    def readiness(self) -> str:
        return ""

    def underlay_address(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address("192.168.1.11")

    def host_ifname(self, container_id: str, ifname: str) -> str:
        return f"h-{container_id}-{ifname}"

    def join(self, in_use: bool) -> None:
        self._step("join" if not in_use else "join(in use)")

    @contextlib.contextmanager
    def enter(self, pod: Pod) -> Iterator[str]:
        self._step("enter")
        yield "pod-ns"

    def plug(self, pod_ns: Any, pod: Pod, addresses: list[Any], mac: str) -> Plugged:
        self._step("plug" if addresses else "plug(bare)")
        return Plugged([Interface("br"), Interface(pod.host_ifname),
                        Interface(pod.ifname, sandbox=pod.netns)], 2,
                       ipaddress.IPv4Address("10.244.0.1"),
                       [Route(ipaddress.IPv4Network("0.0.0.0/0"),
                              ipaddress.IPv4Address("10.244.0.1"))])

    def unplug(self, pod: Pod, owned: bool) -> None:
        self._step(f"unplug(owned={owned})")

    def check(self, pod_ns: Any, pod: Pod, addresses: list[Any], mac: str) -> list[str]:
        self._step("check")
        return list(self._problems)

    def leave(self, unmarked_is_ours: bool = False) -> None:
        self._step("leave")

    def problems(self) -> list[str]:
        return []

    def repair(self, pods: list[Any]) -> list[Pod]:
        return []

    def remove_orphans(self, known: set[str]) -> list[str]:
        self._step("remove_orphans")
        return []

    def on_peers(self, peers: list[Any]) -> None:
        return None

    def local_peer(self, name: str) -> Any:
        return None

    def describe(self) -> dict[str, Any]:
        return {"model": "fake"}


class FakeIpam:
    """Hands out 10.244.0.10, .11, ... through the real registry; logs its steps."""

    def __init__(self, log: list[str], fail: set[str], needs_interface: bool) -> None:
        self.log = log
        self.fail = fail
        self.needs_interface = needs_interface

    def _step(self, name: str) -> None:
        self.log.append(name)
        if name in self.fail:
            raise CniError(IO_FAILURE, f"{name} failed")

    def allocate(self, registry: AttachmentRegistry, record: Attachment,
                 requested: list[Any]) -> tuple[Attachment, bool]:
        self._step("allocate")
        addr = ipaddress.IPv4Interface((int(SUBNET.network_address) + 10 + registry.count(),
                                        SUBNET.prefixlen))
        return registry.attach(record, Given((addr,)))

    def validate(self, requested: list[Any]) -> None:
        return None

    def release(self, registry: AttachmentRegistry, container_id: str,
                ifname: str) -> Attachment | None:
        self._step("release")
        return registry.detach(container_id, ifname)

    def forget(self, released: list[Attachment]) -> None:
        return None

    def gc(self, registry: AttachmentRegistry, valid: set[tuple[str, str]]) -> list[Attachment]:
        self._step("gc")
        return registry.gc(valid)

    def check(self) -> None:
        self._step("ipam-check")

    def dns(self) -> dict[str, Any]:
        return {}

    def usage(self, registry: AttachmentRegistry | None) -> Usage:
        return Usage(0, 10)

    def status(self, registry: AttachmentRegistry | None) -> None:
        return None


class Rig:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.data_dir = tmp_path / "data"
        self.log: list[str] = []
        self.fail: set[str] = set()
        self.problems: list[str] = []
        self.needs_interface = False

        @contextlib.contextmanager
        def open_model(network: Any, runtime: Any) -> Iterator[FakeModel]:
            yield FakeModel(self.log, self.fail, self.problems)

        monkeypatch.setattr(networks, "open_model", open_model)
        monkeypatch.setattr(networks, "ipam", lambda network, request, address, planes=None:
                            FakeIpam(self.log, self.fail, self.needs_interface))

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"cniVersion": "1.1.0", "name": "net", "type": "xvm-cni",
                "hostInterface": "eth0", "vxlanID": 7, "subnet": str(SUBNET),
                "dataDir": str(self.data_dir), **extra}

    def run(self, command: str, container: str = "c1", **extra: Any) -> Any:
        self.log.clear()
        request = Request(command, container, f"/run/netns/{container}", "eth0",
                          config=self.config(**extra))
        return commands.run(request, Runtime.in_process())

    def count(self) -> int:
        with AttachmentRegistry(self.data_dir / "net" / "ipam.db") as registry:
            return registry.count()


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return Rig(tmp_path, monkeypatch)


def test_add_runs_the_steps_in_order(rig: Rig) -> None:
    result = rig.run("ADD")
    assert rig.log == ["prepare", "enter", "join", "allocate", "plug"]
    assert result["ips"] == [{"address": "10.244.0.10/16", "gateway": "10.244.0.1",
                              "interface": 2}]
    assert rig.count() == 1


def test_repeated_add_keeps_the_address_and_joins_in_use(rig: Rig) -> None:
    first = rig.run("ADD")
    again = rig.run("ADD")
    assert again["ips"] == first["ips"]
    assert rig.log == ["prepare", "enter", "join(in use)", "allocate", "plug"]
    assert rig.count() == 1


# Failing step -> the undo steps that must run, newest first.
ROLLBACKS = [
    ("prepare", []),
    ("enter", []),
    ("join", []),
    ("allocate", ["leave"]),
    ("plug", ["release", "leave"]),
]


@pytest.mark.parametrize(("failing", "undo"), ROLLBACKS, ids=[r[0] for r in ROLLBACKS])
def test_a_failed_first_add_undoes_exactly_what_succeeded(rig: Rig, failing: str,
                                                          undo: list[str]) -> None:
    rig.fail.add(failing)
    with pytest.raises(CniError) as info:
        rig.run("ADD")
    done = rig.log.index(failing) + 1
    assert rig.log[done:] == undo
    assert info.value.msg == f"{failing} failed"  # the original error, not an undo's
    assert rig.count() == 0


def test_rollback_in_a_network_in_use_keeps_the_host_side(rig: Rig) -> None:
    rig.run("ADD", "c0")
    rig.fail.add("plug")
    with pytest.raises(CniError):
        rig.run("ADD", "c1")
    assert rig.log == ["prepare", "enter", "join(in use)", "allocate", "plug", "release"]
    assert rig.count() == 1


@pytest.mark.parametrize(("failing", "undo"), [
    ("plug(bare)", ["leave"]),
    ("allocate", ["unplug(owned=True)", "leave"]),
    ("plug", ["release", "unplug(owned=True)", "leave"]),
])
def test_plug_first_ipam_rolls_back_in_reverse(rig: Rig, failing: str,
                                               undo: list[str]) -> None:
    rig.needs_interface = True
    rig.fail.add(failing)
    with pytest.raises(CniError):
        rig.run("ADD")
    assert rig.log[:rig.log.index(failing) + 1] == (
        ["prepare", "enter", "join", "plug(bare)", "allocate", "plug"]
        [:rig.log.index(failing) + 1])
    assert rig.log[rig.log.index(failing) + 1:] == undo


def test_a_failing_undo_step_does_not_stop_the_others(rig: Rig) -> None:
    rig.needs_interface = True
    rig.fail.update({"allocate", "unplug(owned=True)"})
    with pytest.raises(CniError) as info:
        rig.run("ADD")
    assert rig.log[-3:] == ["allocate", "unplug(owned=True)", "leave"]
    assert info.value.msg == "allocate failed"


def test_del_is_idempotent_and_leaves_with_the_last_container(rig: Rig) -> None:
    rig.run("ADD", "c1")
    rig.run("ADD", "c2")
    assert rig.run("DEL", "c1") is None
    assert rig.log == ["unplug(owned=True)", "release"]
    assert rig.run("DEL", "c1") is None  # again: nothing recorded, still success
    assert rig.log == ["unplug(owned=False)", "release"]
    rig.run("DEL", "c2")
    assert rig.log == ["unplug(owned=True)", "release", "leave"]
    assert rig.count() == 0


def test_check(rig: Rig) -> None:
    result = rig.run("ADD")
    with pytest.raises(CniError) as missing_prev:
        rig.run("CHECK")
    assert missing_prev.value.code == INVALID_CONFIG
    assert rig.run("CHECK", prevResult=result) is None
    assert rig.log == ["enter", "check", "ipam-check"]
    rig.problems.append("bridge br is down")
    with pytest.raises(CniError) as broken:
        rig.run("CHECK", prevResult=result)
    assert broken.value.code == CHECK_FAILED
    assert "bridge br is down" in broken.value.details
    wrong = dict(result, ips=[{"address": "10.244.9.9/16", "interface": 2}])
    rig.problems.clear()
    with pytest.raises(CniError) as differs:
        rig.run("CHECK", prevResult=wrong)
    assert "10.244.9.9/16" in differs.value.details
    with pytest.raises(CniError) as unknown:
        rig.run("CHECK", "nobody", prevResult=result)
    assert unknown.value.code == UNKNOWN_CONTAINER


def test_gc_releases_what_is_not_valid(rig: Rig) -> None:
    rig.run("ADD", "keep")
    rig.run("ADD", "stale")
    rig.run("GC", **{"cni.dev/valid-attachments": [{"containerID": "keep",
                                                     "ifname": "eth0"}]})
    assert rig.log == ["gc", "unplug(owned=True)", "remove_orphans"]
    assert rig.count() == 1
    rig.run("GC", **{"cni.dev/valid-attachments": None})
    assert rig.log == ["gc", "unplug(owned=True)", "remove_orphans", "leave"]
    assert rig.count() == 0


@pytest.mark.parametrize(("kind", "code"), [
    (DataplaneError.KERNEL, NETLINK_FAILURE),
    (DataplaneError.NFTABLES, NFTABLES_FAILURE),
    (DataplaneError.SYSTEM, IO_FAILURE),
    (DataplaneError.HOST_CONFLICT, INVALID_CONFIG),
    (DataplaneError.CONTAINER, INVALID_ENV),
])
def test_kernel_layer_errors_become_cni_codes(kind: str, code: int) -> None:
    err = commands.to_cni(DataplaneError(kind, "what", "why"))
    assert (err.code, err.msg, err.details) == (code, "what", "why")
