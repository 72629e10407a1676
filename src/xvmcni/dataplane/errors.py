"""The kernel layer's own failure type.

Dataplane code knows nothing of CNI: it says *what kind* of thing went wrong
and the command flow (``xvmcni.commands``) turns that into a CNI error code at
its edge. The kinds are few on purpose; each maps to one code there.
"""

from __future__ import annotations


class DataplaneError(Exception):
    # The kernel refused a netlink request.
    KERNEL = "kernel"
    # nft is missing or rejected a batch.
    NFTABLES = "nftables"
    # /proc/sys or another file of the host could not be read or written.
    SYSTEM = "system"
    # The host has something that contradicts the configuration: a device of that
    # name of another kind or owner, a host interface that is missing or unusable.
    HOST_CONFLICT = "host-conflict"
    # The container side is not usable: its netns path, or an interface already there.
    CONTAINER = "container"
    # A value the kernel objects cannot take (e.g. a MAC the filters cannot admit).
    INVALID = "invalid"

    def __init__(self, kind: str, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.kind = kind
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg
