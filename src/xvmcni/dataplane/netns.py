"""Network namespaces: open them without creating them, enter them per thread.

pyroute2's own helpers are avoided on purpose: ``IPRoute(netns=path)`` creates a
missing namespace (O_CREAT) and forks a helper, and ``pushns/popns`` keep a
process-global stack that is not thread-safe. ``setns(2)`` moves only the
calling thread, so ``entered()`` is safe in the agent's worker threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator

from xvmcni.cni.errors import INVALID_ENV, CniError

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind ``fd``."""
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """Open ``path`` read-only and check it is a network namespace.

    Raises CniError(INVALID_ENV) with a readable message for a missing path or one
    that is not a netns; the caller owns the returned fd.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise CniError(INVALID_ENV, f"network namespace {path!r} does not exist") from exc
    except OSError as exc:
        raise CniError(INVALID_ENV, f"cannot open network namespace {path!r}",
                       exc.strerror or str(exc)) from exc
    if not _is_netns(fd):
        os.close(fd)
        raise CniError(INVALID_ENV, f"{path!r} is not a network namespace")
    return fd


def _is_netns(fd: int) -> bool:
    # A bind-mounted netns (or /proc/<pid>/ns/net) is an nsfs inode; the kernel
    # refuses setns() on anything else with EINVAL, which we turn into a clear error
    # before changing anything. Probe with setns into it and straight back.
    with contextlib.suppress(OSError), entered(fd):
        return True
    return False


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the block with the calling thread inside the netns behind ``fd``."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(original)
    finally:
        os.close(original)


def netns_gone(path: str) -> bool:
    """True when ``path`` no longer names a live network namespace (DEL tolerates it)."""
    if not path:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EINVAL)
    try:
        return not _is_netns(fd)
    finally:
        os.close(fd)
