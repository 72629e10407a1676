"""The network config each host remembers next to its IPAM store.

ADD writes ``<dataDir>/<name>/network.json`` so that the node agent, after a
restart, knows every network that has containers on this host, whatever
config directory or runtime they came from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONFIG_FILE = "network.json"
# Per-invocation fields: not part of the network's identity.
_TRANSIENT = ("prevResult", "runtimeConfig", "args", "cni.dev/valid-attachments",
              "cni.dev/attachments")


def remember(state_dir: Path, raw: dict[str, Any]) -> bool:
    """Write the config atomically, only when it changed; True when there was none."""
    clean = {k: v for k, v in raw.items() if k not in _TRANSIENT}
    text = json.dumps(clean, indent=2, sort_keys=True)
    path = state_dir / CONFIG_FILE
    try:
        if path.read_text() == text:
            return False
        existed = True
    except FileNotFoundError:
        existed = False
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return not existed


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
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
    return out
