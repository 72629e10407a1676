"""The network config each host remembers next to its IPAM store.

ADD writes ``<dataDir>/<name>/network.json`` so that the node agent, after a
restart, knows every network that has containers on this host, whatever
config directory or runtime they came from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from xvmcni.errors import IO_FAILURE, CniError

log = logging.getLogger(__name__)

CONFIG_FILE = "network.json"
# Per-invocation fields: not part of the network's identity.
_TRANSIENT = ("prevResult", "runtimeConfig", "args", "cni.dev/valid-attachments",
              "cni.dev/attachments")


def remember(state_dir: Path, raw: dict[str, Any]) -> bool:
    """Write the config durably, only when it changed; True when there was none.

    Temp file, fsync, rename, fsync of the directory: after a power cut the file is
    the old one or the new one, never empty or half written (the agent's reconcile
    reads it to find the network). A failure is CniError(IO_FAILURE) naming the
    file, and leaves no temp file behind.
    """
    clean = {k: v for k, v in raw.items() if k not in _TRANSIENT}
    text = json.dumps(clean, indent=2, sort_keys=True)
    path = state_dir / CONFIG_FILE
    try:
        if path.read_text() == text:
            return False
        existed = True
    except FileNotFoundError:
        existed = False
    except (OSError, ValueError) as exc:  # unreadable or not UTF-8: rewrite it
        log.warning("rewriting unreadable %s: %s", path, exc)
        existed = True
    tmp = path.with_name(f".{CONFIG_FILE}.tmp{os.getpid()}")
    try:
        _write_synced(tmp, text.encode())
        os.replace(tmp, path)
        _fsync_dir(state_dir)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise CniError(IO_FAILURE, f"cannot write {path}",
                       exc.strerror or str(exc)) from exc
    return not existed


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def forget(state_dir: Path) -> None:
    """Remove the remembered config (a first ADD failed: the host never joined)."""
    (state_dir / CONFIG_FILE).unlink(missing_ok=True)


def remembered(data_dir: Path) -> list[dict[str, Any]]:
    """Every network config remembered under ``data_dir``."""
    out: list[dict[str, Any]] = []
    if not data_dir.is_dir():
        return out
    for path in sorted(data_dir.glob(f"*/{CONFIG_FILE}")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            continue
        if isinstance(data, dict):
            out.append(data)
        else:
            log.warning("ignoring %s: not a network config object", path)
    return out
