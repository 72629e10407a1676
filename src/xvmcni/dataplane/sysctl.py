"""sysctls through /proc/sys: per network namespace, no subprocess."""

from __future__ import annotations

import os
from pathlib import Path

from xvmcni.dataplane.errors import DataplaneError

# In a container that is not privileged /proc/sys is read-only; the Kubernetes
# DaemonSet mounts the node's /proc/sys/net writable elsewhere and names it here. The
# net.* entries resolve against the writer's network namespace, wherever mounted.
PROC_SYS = Path(os.environ.get("XVM_CNI_PROC_SYS") or "/proc/sys")


def ensure(key: str, value: str) -> None:
    """Set ``key`` (dotted, e.g. net.ipv4.ip_forward) unless it already holds ``value``."""
    path = PROC_SYS / key.replace(".", "/")
    try:
        if path.read_text().strip() == value:
            return
        path.write_text(value)
    except OSError as exc:
        raise DataplaneError(DataplaneError.SYSTEM, f"cannot set sysctl {key}={value}",
                             exc.strerror or str(exc)) from exc


def ensure_if_present(key: str, value: str) -> None:
    """Like ``ensure``, for sysctls that exist only with some kernel options (IPv6)."""
    if (PROC_SYS / key.replace(".", "/")).exists():
        ensure(key, value)
