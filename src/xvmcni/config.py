"""The fields every xvm-cni network has, whatever its model: name, version, where
its state lives, logging, DNS, and which model / IPAM / control plane it uses.

Pure parsing: nothing here looks at the host. Each network model parses its own
section (``models/<name>.py``), each IPAM its own (``ipam/``); ``networks.py``
puts the three together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni.cni import wire
from xvmcni.cni.names import shown
from xvmcni.cni.result import Result, check_version
from xvmcni.cni.wire import timeout_problem
from xvmcni.errors import INVALID_CONFIG, CniError

DEFAULT_DATA_DIR = Path(wire.DEFAULT_DATA_DIR)
DEFAULT_MODEL = "l2"
DEFAULT_CONTROL_PLANE = "multicast"
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# The network name becomes part of derived names: the state directory (a path
# component, 255 bytes), the nftables table name (256) and the host veth's alias
# "xvm-cni:<network>:<containerID>:<ifname>" (IFALIASZ, 256 bytes with a 64-character
# container ID). 64 leaves each of them room.
NAME_MAX = 64


@dataclass
class NetworkConfig:
    cni_version: str
    name: str
    model: str = DEFAULT_MODEL
    control_plane: str = DEFAULT_CONTROL_PLANE
    data_dir: Path = DEFAULT_DATA_DIR
    dns: dict[str, Any] = field(default_factory=dict)
    log_file: str = ""
    log_level: str = "info"
    # The delegated IPAM plugin's section, or None for our own allocator.
    ipam: dict[str, Any] | None = None
    prev_result: Result | None = None
    runtime_config: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """Everything this network keeps on this host lives here."""
        return self.data_dir / self.name


def fail(msg: str, details: str = "") -> CniError:
    return CniError(INVALID_CONFIG, msg, details)


def get(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``raw[key]`` checked against ``kind``; ``default`` when absent or null."""
    value = raw.get(key, default)
    if value is None:
        return default
    # bool is an int in Python; a JSON true where a number belongs is still wrong.
    if isinstance(value, bool) and kind is not bool:
        raise fail(f"{key!r} must be {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        got = {str: "a string", float: "a fraction", list: "a list", dict: "an object",
               int: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)
        wanted = "a whole number" if kind is int else _kind_name(kind)
        raise fail(f"{key!r} must be {wanted}, got {got}: {_short(value)}")
    return value


def _short(value: Any) -> str:
    return shown(value)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "a number", bool: "true or false", dict: "an object",
             list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse(raw: dict[str, Any]) -> NetworkConfig:
    """Validate the common fields of a network configuration (single config or one
    conflist entry). The model's and the IPAM's own fields are left to them."""
    cni_version = check_version(get(raw, "cniVersion", str, "0.1.0"))
    name = get(raw, "name", str)
    if not name:
        raise fail("'name' is required")
    # fullmatch: with match() and "$", a trailing newline would pass.
    if not _NAME_RE.fullmatch(name):
        raise fail(f"'name' {_short(name)} may hold only letters, digits, '_', '.' and '-', "
                   "and must begin with a letter or digit")
    if len(name) > NAME_MAX:
        raise fail(f"'name' is {len(name)} characters long; at most {NAME_MAX} are allowed",
                   "it becomes part of the state directory, nftables table and device "
                   "alias names")

    model = get(raw, "model", str, DEFAULT_MODEL)
    control_plane = _control_plane(raw)

    log_level = get(raw, "logLevel", str, "info").lower()
    if log_level not in LOG_LEVELS:
        raise fail(f"'logLevel' {log_level!r} is not one of " + ", ".join(LOG_LEVELS))

    ipam = get(raw, "ipam", dict)
    if ipam is not None and not isinstance(ipam.get("type"), str):
        raise fail("'ipam' needs a \"type\": the IPAM plugin to run, e.g. \"host-local\"")

    # Read by the thin plugin before any parsing; checked here so a mistyped value is an
    # error rather than a silent in-process run.
    get(raw, "agentSocket", str)
    agent_timeout = raw.get("agentTimeout")
    if agent_timeout is not None and (why := timeout_problem(agent_timeout)):
        # The value is not echoed: a number with thousands of digits is not printable.
        raise fail(f"'agentTimeout' {why}")

    prev = raw.get("prevResult")
    return NetworkConfig(
        cni_version=cni_version,
        name=name,
        model=model,
        control_plane=control_plane,
        data_dir=Path(_absolute_path(raw, "dataDir") or DEFAULT_DATA_DIR),
        dns=get(raw, "dns", dict, {}),
        log_file=_absolute_path(raw, "logFile"),
        log_level=log_level,
        ipam=ipam,
        prev_result=Result.from_dict(prev) if prev is not None else None,
        runtime_config=get(raw, "runtimeConfig", dict, {}),
        raw=raw,
    )


def _absolute_path(raw: dict[str, Any], key: str) -> str:
    """An absolute path, or '' when absent. A relative one would depend on the directory
    the runtime happens to start the plugin in (and the agent in another)."""
    text: str = get(raw, key, str, "")
    if not text:
        return ""
    if "\0" in text:
        raise fail(f"{key!r} contains a NUL character")
    if not text.startswith("/"):
        raise fail(f"{key!r} {_short(text)} must be an absolute path")
    return text


def _control_plane(raw: dict[str, Any]) -> str:
    section = get(raw, "controlPlane", dict)
    if section is None:
        return DEFAULT_CONTROL_PLANE
    kind = get(section, "type", str, DEFAULT_CONTROL_PLANE)
    return str(kind)
