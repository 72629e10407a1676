"""network.json: durable writes, and a failed write is code 5 with no temp file left."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from xvmcni.errors import CniError
from xvmcni.state import netstate

CONF = {"cniVersion": "1.0.0", "name": "n1", "type": "xvm-cni", "vxlanID": 7}


def test_remember_writes_and_fsyncs_file_and_directory(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    state_dir = tmp_path / "n1"
    state_dir.mkdir()
    netstate.remember(state_dir, {**CONF, "prevResult": {"x": 1}})
    assert netstate.remembered(tmp_path) == [CONF]
    # The new file's data before the rename, then the directory entry after it.
    assert len(synced) == 2
    assert synced[1] == str(state_dir)
    assert synced[0].startswith(str(state_dir / ".")) and synced[0] != str(state_dir)
    assert sorted(p.name for p in state_dir.iterdir()) == [netstate.CONFIG_FILE]


def test_unchanged_config_is_not_rewritten(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    netstate.remember(tmp_path, CONF)
    calls: list[Any] = []
    monkeypatch.setattr(os, "replace", lambda *a: calls.append(a))
    netstate.remember(tmp_path, CONF)
    assert calls == []


def test_failed_rename_is_code_5_and_leaves_no_temp_file(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CniError) as info:
        netstate.remember(tmp_path, CONF)
    assert info.value.code == 5
    assert str(tmp_path / netstate.CONFIG_FILE) in info.value.msg
    assert list(tmp_path.iterdir()) == []


def test_failed_write_is_code_5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(_: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CniError) as info:
        netstate.remember(tmp_path, CONF)
    assert info.value.code == 5
    assert list(tmp_path.iterdir()) == []


def test_missing_state_directory_is_code_5(tmp_path: Path) -> None:
    with pytest.raises(CniError) as info:
        netstate.remember(tmp_path / "gone", CONF)
    assert info.value.code == 5 and "gone" in info.value.msg


def test_damaged_remembered_configs_are_skipped(tmp_path: Path) -> None:
    for name, text in (("list", "[1, 2]"), ("garbage", "\x00{"), ("deep", "[" * 100000),
                       ("ok", '{"name": "ok"}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / netstate.CONFIG_FILE).write_text(text)
    assert netstate.remembered(tmp_path) == [{"name": "ok"}]
