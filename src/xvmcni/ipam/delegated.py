"""Run an external IPAM plugin (host-local, static, dhcp, ...) the way libcni would.

The same environment and the same network configuration are handed on; only
the executable changes, found in CNI_PATH as the ``ipam.type``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xvmcni.cni.request import Request
from xvmcni.cni.result import Result
from xvmcni.errors import (
    DELEGATE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    LIMITED_CONNECTIVITY,
    NOT_AVAILABLE,
    CniError,
)
from xvmcni.ipam.base import Usage
from xvmcni.state.attachments import Attachment, AttachmentRegistry, Given, IPAddress

log = logging.getLogger(__name__)

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
        err = CniError(DELEGATE_FAILURE,
                       f"IPAM plugin {plugin.name} {command} failed: {msg or 'no message'}",
                       detail or stderr[:500])
        code = answer.get("code") if isinstance(answer, dict) else None
        err.plugin_code = code if isinstance(code, int) else None
        raise err
    return answer if isinstance(answer, dict) else None


def add(request: Request, config: Mapping[str, Any]) -> Result:
    answer = invoke(request, "ADD", config)
    if answer is None:
        raise CniError(DELEGATE_FAILURE, "IPAM plugin returned no result for ADD")
    result = Result.from_dict(answer)
    if not result.ips:
        raise CniError(DELEGATE_FAILURE, "IPAM plugin returned no address")
    return result


class DelegatedIpam:
    """Addresses from an external IPAM plugin (host-local, static, dhcp, ...), run as
    libcni would run it, and recorded in our registry like our own."""

    # The dhcp plugin leases through the container's interface: plug it first.
    needs_interface = True

    def __init__(self, request: Request, config: Mapping[str, Any], prefixlen: int) -> None:
        self.request = request
        self.config = config
        self.prefixlen = prefixlen
        self._dns: dict[str, Any] = {}

    def allocate(self, registry: AttachmentRegistry, record: Attachment,
                 requested: list[IPAddress]) -> tuple[Attachment, bool]:
        existing = registry.get(record.container_id, record.ifname)
        if existing is not None:
            return existing, False
        result = add(self.request, self.config)
        self._dns = dict(result.dns)
        addresses = tuple(ipaddress.IPv4Interface(f"{ip.address.ip}/{self.prefixlen}")
                          for ip in result.ips if ip.address.version == 4)
        if not addresses:
            self._del(record.container_id, record.ifname)
            raise CniError(INVALID_CONFIG, "the IPAM plugin gave no IPv4 address",
                           "this network carries IPv4")
        try:
            return registry.attach(record, Given(addresses))
        except BaseException:
            self._del(record.container_id, record.ifname)
            raise

    def validate(self, requested: list[IPAddress]) -> None:
        return None  # the delegated plugin judges CNI_ARGS IP= itself

    def release(self, registry: AttachmentRegistry, container_id: str,
                ifname: str) -> Attachment | None:
        self._del(container_id, ifname)
        return registry.detach(container_id, ifname)

    def forget(self, released: list[Attachment]) -> None:
        for attachment in released:
            try:
                self._del(attachment.container_id, attachment.ifname)
            except CniError as err:
                log.warning("delegated IPAM DEL for %s/%s failed: %s",
                            attachment.container_id[:12], attachment.ifname, err)

    def gc(self, registry: AttachmentRegistry,
           valid: set[tuple[str, str]]) -> list[Attachment]:
        stale = registry.gc(valid)
        self.forget(stale)
        # The spec (1.1, GC): a plugin MUST pass GC on to its delegated plugins, so
        # they drop what they hold for attachments we never recorded.
        try:
            invoke(self.request, "GC", self.config)
        except CniError as err:
            if not self._predates_1_1(err):
                raise
            log.info("IPAM plugin predates CNI 1.1 and cannot GC (%s); released %d stale "
                     "attachment(s) with DEL", err, len(stale))
        return stale

    def check(self) -> None:
        invoke(self.request, "CHECK", self.config)

    def dns(self) -> dict[str, Any]:
        return self._dns

    def usage(self, registry: AttachmentRegistry | None) -> Usage:
        return Usage(registry.used_addresses() if registry is not None else 0, None, "")

    def status(self, registry: AttachmentRegistry | None) -> None:
        plugin_type = str((self.config.get("ipam") or {}).get("type", ""))
        try:
            find_plugin(plugin_type, self.request.path)
        except CniError as err:
            raise CniError(NOT_AVAILABLE, err.msg, err.details) from err
        try:
            invoke(self.request, "STATUS", self.config)
        except CniError as err:
            if self._predates_1_1(err):
                return  # a plugin older than CNI 1.1 cannot say more than "present"
            raise CniError(NOT_AVAILABLE, f"IPAM plugin {plugin_type} is not ready: "
                           f"{err.msg}", err.details) from err

    def _predates_1_1(self, err: CniError) -> bool:
        """True when the plugin's failure of a CNI 1.1 command (STATUS, GC) means "I do
        not know it": what it says, or, when that is unclear, its own VERSION answer.
        (Debian 12's host-local 1.1.1 answers STATUS without a container ID with code 3
        "missing containerID": it checks the environment before the command.)"""
        if _predates_status(err):
            return True
        if err.plugin_code in (NOT_AVAILABLE, LIMITED_CONNECTIVITY):
            return False  # a STATUS answer: it knows the command
        try:
            answer = invoke(self.request, "VERSION", self.config)
        except CniError:
            return False  # cannot tell: the failure stands
        versions = answer.get("supportedVersions") if answer else None
        return isinstance(versions, list) and "1.1.0" not in versions

    def _del(self, container_id: str, ifname: str) -> None:
        sub = dataclasses.replace(self.request, container_id=container_id, ifname=ifname)
        invoke(sub, "DEL", self.config)


def _predates_status(err: CniError) -> bool:
    """True when the plugin's failure means "I do not know STATUS" (CNI < 1.1 plugins
    answer an unknown command or version), not "I am not ready"."""
    text = f"{err.msg} {err.details}".lower()
    return (err.plugin_code in (INCOMPATIBLE_VERSION, INVALID_ENV)
            or "unknown cni_command" in text or ("status" in text and "support" in text))


