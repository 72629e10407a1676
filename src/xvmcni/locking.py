"""One lock per network per host, shared by every plugin process and the agent.

ADD, DEL and GC of a network run one at a time: otherwise the last DEL could
remove the bridge while a concurrent ADD is plugging a veth into it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from xvmcni.cni.errors import IO_FAILURE, TRY_AGAIN_LATER, CniError


@contextlib.contextmanager
def network_lock(state_dir: Path, timeout: float) -> Iterator[None]:
    """Hold ``state_dir/lock`` exclusively; CniError(11) after ``timeout`` seconds.

    flock is released by the kernel when the process dies, so a crashed plugin
    never leaves the network locked.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot open lock file in {state_dir}",
                       exc.strerror or str(exc)) from exc
    try:
        deadline = time.monotonic() + timeout
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
            pause = min(pause * 2, 0.05)
        yield
    finally:
        os.close(fd)  # closing drops the flock
