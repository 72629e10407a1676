"""Reconcile releases a container only when its namespace is known to be gone
(issue 7, item 3): a namespace that cannot be inspected (too many open files, no
memory, permission) is kept and retried, or its address would be handed out twice."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.unit.test_commands import Rig, rig  # noqa: F401 - the fixture
from xvmcni import networks
from xvmcni.agent import reconcile
from xvmcni.dataplane import netns
from xvmcni.runtime import Runtime


def _reconcile(rig: Rig) -> reconcile.NetworkReport:  # noqa: F811 - the fixture's name
    network = networks.parse(rig.config())
    return reconcile.reconcile(network, Runtime.in_process())


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENOMEM, errno.EACCES, errno.EIO])
def test_a_namespace_that_cannot_be_inspected_is_not_gone(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, err: int) -> None:  # noqa: F811
    rig.run("ADD", "live")

    def refuse(path: str, flags: int, *args: object) -> int:
        raise OSError(err, os.strerror(err), path)

    monkeypatch.setattr(netns.os, "open", refuse)
    report = _reconcile(rig)
    assert report.released == []
    assert rig.count() == 1
    assert "unplug(owned=True)" not in rig.log


def test_a_missing_namespace_is_gone(rig: Rig) -> None:  # noqa: F811
    rig.run("ADD", "dead")  # its netns path /run/netns/dead never existed
    report = _reconcile(rig)
    assert report.released == ["dead/eth0"]
    assert rig.count() == 0


def test_netns_gone_tells_missing_from_unknown(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert netns.netns_gone(str(tmp_path / "missing"))
    assert netns.netns_gone("")
    plain = tmp_path / "file"
    plain.write_text("not a namespace")
    assert netns.netns_gone(str(plain))  # setns answers EINVAL: not a namespace

    def busy(path: str, flags: int, *args: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files", path)

    monkeypatch.setattr(netns.os, "open", busy)
    with pytest.raises(OSError):
        netns.netns_gone(str(plain))
