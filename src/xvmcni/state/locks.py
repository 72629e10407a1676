"""One lock per network per host, shared by every plugin process and the agent.

ADD, DEL and GC of a network run one at a time: otherwise the last DEL could
remove the bridge while a concurrent ADD is plugging a veth into it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from xvmcni.errors import IO_FAILURE, TRY_AGAIN_LATER, CniError

# Threads of one process (the agent's workers) queue here first: a blocking wait on
# a threading lock wakes the next waiter at once, where polling flock would sleep.
_in_process: dict[Path, threading.Lock] = {}
_in_process_guard = threading.Lock()


def _thread_lock(state_dir: Path) -> threading.Lock:
    with _in_process_guard:
        return _in_process.setdefault(state_dir, threading.Lock())


@contextlib.contextmanager
def network_lock(state_dir: Path, timeout: float) -> Iterator[None]:
    """Hold ``state_dir/lock`` exclusively; CniError(11) after ``timeout`` seconds.

    flock is released by the kernel when the process dies, so a crashed plugin
    never leaves the network locked. Within one process, threads first queue on a
    threading lock, so only the head of the queue polls the flock.
    """
    deadline = time.monotonic() + timeout
    local = _thread_lock(state_dir)
    if not local.acquire(timeout=timeout):
        raise CniError(TRY_AGAIN_LATER,
                       f"network state {state_dir} is busy: another operation holds "
                       f"its lock for more than {timeout:g}s")
    try:
        with _file_lock(state_dir, deadline, timeout):
            yield
    finally:
        local.release()


@contextlib.contextmanager
def _file_lock(state_dir: Path, deadline: float, timeout: float) -> Iterator[None]:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot open lock file in {state_dir}",
                       exc.strerror or str(exc)) from exc
    try:
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise CniError(IO_FAILURE, f"cannot lock {state_dir}/lock",
                                   exc.strerror or str(exc)) from exc
            if time.monotonic() >= deadline:
                raise CniError(TRY_AGAIN_LATER,
                               f"network state {state_dir} is busy: another operation holds "
                               f"its lock for more than {timeout:g}s")
            time.sleep(pause)
            pause = min(pause * 2, 0.01)  # short: a waiting runtime is a waiting pod
        yield
    finally:
        os.close(fd)  # closing drops the flock
