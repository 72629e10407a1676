"""CNI error codes and the error object every failure turns into.

Stdlib only: the plugin's fast path imports this.
"""

from __future__ import annotations

from typing import Any

# Codes from the CNI specification ("Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# STATUS only (CNI 1.1).
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51

# Ours: 100 and above, as the spec reserves them for plugins.
INTERNAL = 100          # a bug: the message says what we were doing
NETLINK_FAILURE = 101   # the kernel refused a change
ADDRESS_EXHAUSTED = 102
ADDRESS_IN_USE = 103    # a requested static address belongs to another container
DELEGATE_FAILURE = 104  # the delegated IPAM plugin failed (its own message follows)
CHECK_FAILED = 105      # CHECK found the attachment different from prevResult
NFTABLES_FAILURE = 106


class CniError(Exception):
    """A failure the plugin reports to the runtime as the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details
        # The code a delegated plugin answered with, when this error passes its answer on.
        self.plugin_code: int | None = None

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg
