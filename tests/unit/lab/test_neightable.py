"""The lab sizes the machine's shared neighbour tables and puts them back."""

from __future__ import annotations

from pathlib import Path

import pytest

from xvmcni.lab import neightable

V4, V6 = neightable.LIMITS


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A /proc/sys of the two limits at the kernel's defaults, and a private record."""
    root = tmp_path / "sys"
    for key in neightable.LIMITS:
        (root / key).parent.mkdir(parents=True)
        (root / key).write_text("1024\n")
    monkeypatch.setattr(neightable, "PROC_SYS", root)
    monkeypatch.setattr(neightable, "RECORD", tmp_path / "run" / "limits.json")
    return root


def restore(monkeypatch: pytest.MonkeyPatch, progress: neightable.Progress,
            other_labs: bool) -> None:
    """restore_if_last with another lab still up, or none."""
    monkeypatch.setattr(neightable, "known_labs", lambda: ["other"] if other_labs else [])
    neightable.restore_if_last(progress)


def value(root: Path, key: str) -> int:
    return int((root / key).read_text())


def test_a_large_lab_raises_both_tables_and_the_last_one_down_restores(
        proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    neightable.ensure_room(50, 1, lines.append)
    want = neightable.needed(50, 1)
    assert want > 1024
    assert (value(proc, V4), value(proc, V6)) == (want, want)
    assert len(lines) == 2 and "1024 -> " in lines[0]
    # A second, larger lab raises again; the value to restore stays the original.
    neightable.ensure_room(60, 1, lines.append)
    assert value(proc, V4) == neightable.needed(60, 1)
    restore(monkeypatch, lines.append, other_labs=True)
    assert value(proc, V4) == neightable.needed(60, 1)
    restore(monkeypatch, lines.append, other_labs=False)
    assert (value(proc, V4), value(proc, V6)) == (1024, 1024)
    assert not neightable.RECORD.exists()


def test_a_small_lab_or_a_larger_limit_is_left_alone(proc: Path) -> None:
    (proc / V6).write_text("100000\n")
    lines: list[str] = []
    neightable.ensure_room(3, 2, lines.append)
    neightable.ensure_room(50, 1, lines.append)
    assert value(proc, V6) == 100000
    assert len(lines) == 1 and V4.replace("/", ".") in lines[0]


def test_a_value_changed_by_someone_else_is_not_put_back(
        proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    neightable.ensure_room(50, 1, lambda line: None)
    (proc / V4).write_text("9999\n")
    restore(monkeypatch, lambda line: None, other_labs=False)
    assert value(proc, V4) == 9999
    assert value(proc, V6) == 1024
