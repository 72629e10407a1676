"""A CNI invocation (environment + stdin) as one plain, serialisable object.

The command flow takes a ``Request`` and nothing else, so the same request can run
in-process or be shipped to the node agent as JSON. Stdlib only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from xvmcni.cni import wire
from xvmcni.cni.names import interface_name_problem
from xvmcni.errors import DECODE_FAILURE, INVALID_CONFIG, INVALID_ENV, CniError

COMMANDS = wire.COMMANDS
# Commands that act on one attachment and so need the container's identity.
ATTACHMENT_COMMANDS = ("ADD", "DEL", "CHECK")
IFNAME_MAX = 15  # IFNAMSIZ - 1


@dataclass
class Request:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def cni_version(self) -> str:
        """The version the caller speaks (a config without one means 0.1.0, as libcni)."""
        return wire.caller_version(self.config)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Request:
        data = json.loads(text)
        return cls(**data)


def parse_cni_args(raw: str) -> dict[str, str]:
    """Parse ``K1=V1;K2=V2``. Unknown keys are kept and ignored later, never fatal:
    Kubernetes runtimes always send K8S_POD_* and IgnoreUnknown."""
    out: dict[str, str] = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS entry {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_stdin(data: bytes) -> dict[str, Any]:
    try:
        config = json.loads(data.decode("utf-8"), parse_int=_parse_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network configuration on stdin is not valid JSON",
                       str(exc)) from exc
    except RecursionError:
        raise CniError(DECODE_FAILURE, "network configuration on stdin is nested too deeply",
                       "more levels of arrays and objects than the parser follows") from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network configuration on stdin must be a JSON object")
    return config


def _parse_int(digits: str) -> int:
    """An integer too long for Python's int() is valid JSON but no valid value here."""
    try:
        return int(digits)
    except ValueError:
        raise CniError(INVALID_CONFIG, "network configuration has a number with "
                       f"{len(digits)} digits", "no field takes a number that large") from None


def from_environ(environ: dict[str, str] | Any, stdin: bytes) -> Request:
    """Build a Request from CNI_* variables and stdin, validating what the spec requires."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "CNI_COMMAND is not set",
                       "expected one of " + ", ".join(COMMANDS))
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not a CNI command",
                       "expected one of " + ", ".join(COMMANDS))
    config = parse_stdin(stdin) if stdin.strip() or command != "VERSION" else {}
    request = Request(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=[p for p in environ.get("CNI_PATH", "").split(":") if p],
        config=config,
    )
    validate_environment(request)
    return request


def validate_environment(request: Request) -> None:
    if request.command not in ATTACHMENT_COMMANDS:
        return
    if not request.container_id:
        raise CniError(INVALID_ENV, "CNI_CONTAINERID is not set")
    if not request.ifname:
        raise CniError(INVALID_ENV, "CNI_IFNAME is not set")
    why = interface_name_problem(request.ifname)
    if why:
        raise CniError(
            INVALID_ENV,
            f"CNI_IFNAME {request.ifname!r} is not a valid interface name: {why}",
            f"at most {IFNAME_MAX} bytes, no whitespace, '/', ':' or '%', not '.' or '..'",
        )
    # DEL must work with an empty netns (the runtime may have lost it already).
    if request.command != "DEL" and not request.netns:
        raise CniError(INVALID_ENV, "CNI_NETNS is not set")
