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
import stat
from collections.abc import Iterator

from xvmcni.dataplane.errors import DataplaneError

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

# What "this path is no (longer a) network namespace" looks like; anything else
# (EMFILE, ENOMEM, EACCES, ...) says nothing about the namespace and must not be
# taken as its death: the container would lose its address to the next pod.
_GONE_ERRNOS = (errno.ENOENT, errno.ENOTDIR)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind ``fd``."""
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _open(path: str) -> int:
    # O_NONBLOCK: opening a FIFO (a bad CNI_NETNS) would otherwise wait for a writer
    # for ever and pin the worker. It changes nothing for nsfs files.
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)


def open_netns(path: str) -> int:
    """Open ``path`` read-only and check it is a network namespace.

    Raises DataplaneError(CONTAINER) with a readable message for a missing path or
    one that is not a netns; the caller owns the returned fd.
    """
    try:
        fd = _open(path)
    except FileNotFoundError as exc:
        raise DataplaneError(DataplaneError.CONTAINER,
                             f"network namespace {path!r} does not exist") from exc
    except OSError as exc:
        raise DataplaneError(DataplaneError.CONTAINER,
                             f"cannot open network namespace {path!r}",
                             exc.strerror or str(exc)) from exc
    try:
        is_netns = _is_netns(fd)
    except OSError as exc:
        os.close(fd)
        raise DataplaneError(DataplaneError.CONTAINER,
                             f"cannot enter network namespace {path!r}",
                             exc.strerror or str(exc)) from exc
    if not is_netns:
        os.close(fd)
        raise DataplaneError(DataplaneError.CONTAINER,
                             f"{path!r} is not a network namespace")
    return fd


def _is_netns(fd: int) -> bool:
    """True for an nsfs network-namespace file; False for anything else.

    A bind-mounted netns (or /proc/<pid>/ns/net) is an nsfs inode; the kernel
    refuses setns() on anything else with EINVAL. Probe with setns into it and
    straight back. Other errors (EPERM, ENOMEM) are raised: they do not tell.
    """
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return False  # a directory, FIFO or device is never a namespace
    try:
        with entered(fd):
            return True
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise


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
    """True when ``path`` no longer names a live network namespace (DEL tolerates it).

    Raises OSError when the answer is unknown (too many open files, no memory,
    permission): the caller must not treat the container as gone then.
    """
    if not path:
        return True
    try:
        fd = _open(path)
    except OSError as exc:
        if exc.errno in _GONE_ERRNOS:
            return True
        raise
    try:
        return not _is_netns(fd)
    finally:
        os.close(fd)
