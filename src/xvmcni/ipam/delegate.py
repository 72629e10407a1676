"""Run an external IPAM plugin (host-local, static, dhcp, ...) the way libcni would.

The same environment and the same network configuration are handed on; only
the executable changes, found in CNI_PATH as the ``ipam.type``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xvmcni.cni.errors import DELEGATE_FAILURE, INVALID_CONFIG, CniError
from xvmcni.cni.request import Request
from xvmcni.cni.result import Result

DELEGATE_TIMEOUT = 60.0


def find_plugin(plugin_type: str, cni_path: list[str]) -> Path:
    if "/" in plugin_type or plugin_type in ("", ".", ".."):
        raise CniError(INVALID_CONFIG, f"ipam type {plugin_type!r} is not a plugin name")
    for directory in cni_path:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"IPAM plugin {plugin_type!r} not found in CNI_PATH",
                   "searched: " + (":".join(cni_path) or "(CNI_PATH is empty)"))


def _environment(request: Request, command: str, container_id: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CNI_")}
    env.update({
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id or request.container_id,
        "CNI_NETNS": request.netns,
        "CNI_IFNAME": request.ifname,
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in request.args.items()),
        "CNI_PATH": ":".join(request.path),
    })
    return env


def invoke(request: Request, command: str, config: Mapping[str, Any],
           container_id: str | None = None) -> dict[str, Any] | None:
    """Exec the IPAM plugin for ``command``; its JSON answer, or None when it printed nothing.

    A failure of the plugin is passed on with its own message under code 104.
    """
    ipam = config.get("ipam") or {}
    plugin = find_plugin(str(ipam.get("type", "")), request.path)
    try:
        proc = subprocess.run([str(plugin)], input=json.dumps(config).encode(),
                              env=_environment(request, command, container_id),
                              capture_output=True, timeout=DELEGATE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(DELEGATE_FAILURE, f"cannot run IPAM plugin {plugin}", str(exc)) from exc
    out = proc.stdout.strip()
    answer: Any = None
    if out:
        try:
            answer = json.loads(out)
        except json.JSONDecodeError as exc:
            raise CniError(DELEGATE_FAILURE, f"IPAM plugin {plugin.name} printed invalid JSON",
                           out[:200].decode(errors="replace")) from exc
    if proc.returncode != 0:
        msg = answer.get("msg") if isinstance(answer, dict) else None
        detail = answer.get("details", "") if isinstance(answer, dict) else ""
        stderr = proc.stderr.decode(errors="replace").strip()
        raise CniError(DELEGATE_FAILURE,
                       f"IPAM plugin {plugin.name} {command} failed: {msg or 'no message'}",
                       detail or stderr[:500])
    return answer if isinstance(answer, dict) else None


def add(request: Request, config: Mapping[str, Any]) -> Result:
    answer = invoke(request, "ADD", config)
    if answer is None:
        raise CniError(DELEGATE_FAILURE, "IPAM plugin returned no result for ADD")
    result = Result.from_dict(answer)
    if not result.ips:
        raise CniError(DELEGATE_FAILURE, "IPAM plugin returned no address")
    return result
