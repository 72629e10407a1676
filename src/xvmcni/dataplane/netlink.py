"""pyroute2 sockets bound to the right namespace, and kernel errors made readable."""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netns import entered

# A warm socket is replaced after RECYCLE_AFTER uses: pyroute2 0.9.7 queues the
# kernel's late ACK of every "get" on a long-lived sync socket and never reads it
# (about 5 KiB of RSS per ADD, measured by bench/footprint.py), so a socket must
# not live for ever.
RECYCLE_AFTER = 20
IFF_UP = 0x1


class HostSockets:
    """One warm netlink socket per thread for the thread's own (host) netns.

    For long-lived processes (the agent): opening a socket costs more than most
    requests' netlink work.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> Any:
        warm = getattr(self._local, "ipr", None)
        uses = getattr(self._local, "uses", 0)
        if warm is not None and uses >= RECYCLE_AFTER:
            warm.close()
            warm = None
        if warm is None:
            warm, uses = IPRoute(), 0
            self._local.ipr = warm
        self._local.uses = uses + 1
        return warm


@contextlib.contextmanager
def rtnl(netns_fd: int | None = None, warm: HostSockets | None = None) -> Iterator[Any]:
    """An IPRoute socket in the calling thread's netns, or in ``netns_fd``'s.

    The socket is created while the thread is inside the target namespace and
    stays bound to it after the thread switches back (sockets keep their netns).
    Use it from this thread only: pyroute2 0.9 opens a fresh socket per thread.
    ``warm`` (host namespace only) lends a cached socket instead of a new one.
    """
    if netns_fd is None and warm is not None:
        yield warm.get()
        return
    if netns_fd is None:
        ipr = IPRoute()
    else:
        with entered(netns_fd):
            ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def kernel_error(action: str, exc: NetlinkError) -> DataplaneError:
    code = exc.code if isinstance(exc.code, int) else 0
    reason = errno.errorcode.get(code, str(code))
    return DataplaneError(DataplaneError.KERNEL, f"kernel refused to {action}",
                          f"{reason}: {exc}")


def get_link(ipr: Any, ifname: str) -> Any | None:
    """One link by name, or None: a single RTM_GETLINK the kernel answers by name."""
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def link_index(ipr: Any, ifname: str) -> int | None:
    link = get_link(ipr, ifname)
    return int(link["index"]) if link is not None else None


def link_kind(link: Any) -> str:
    info = link.get("IFLA_LINKINFO")
    return str(info.get("IFLA_INFO_KIND")) if info is not None else ""


def ipv4_addresses(ipr: Any, index: int) -> list[tuple[str, int]]:
    return [
        (str(a.get("IFA_ADDRESS")), int(a["prefixlen"]))
        for a in ipr.get_addr(index=index, family=2)
    ]


def delete_link(ipr: Any, ifname: str) -> bool:
    """Delete ``ifname`` if it exists; True when something was removed."""
    try:
        ipr.link("del", ifname=ifname)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:  # not there (any more): the outcome we wanted
            return False
        raise kernel_error(f"delete link {ifname}", exc) from exc
    return True
