"""Finding and stopping xvm-cnid (and the lab's etcd) processes by their command line.

A lab's agents outlive the process that started them, so they are found again by
pid (state.json) or, after a crash, by command line: an xvm-cnid whose ``--socket``
lies under the lab's directory. A pid is only ever signalled after checking it is
still that agent (pids are reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT = 10.0      # SIGTERM, then SIGKILL

# Agents this process started: reaped here, so a stopped one never lingers as a
# zombie of a long-lived caller (a test run).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def adopt(proc: subprocess.Popen[bytes]) -> int:
    """Remember a child we started, to reap it once it exits; its pid."""
    with _children_lock:
        _children[proc.pid] = proc
    return proc.pid


def _reap(pid: int) -> None:
    with _children_lock:
        proc = _children.get(pid)
        if proc is not None and proc.poll() is not None:
            del _children[pid]


def socket_in_argv(argv: list[str]) -> str | None:
    """The ``--socket`` of an xvm-cnid command line; None for another program or the
    default socket (the machine's agent, never a lab's)."""
    if not any(os.path.basename(arg) == "xvm-cnid" or arg == "xvmcni.agent.main"
               for arg in argv[:3]):
        return None
    for i, arg in enumerate(argv):
        if arg == "--socket" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--socket="):
            return arg.split("=", 1)[1]
    return None


def agent_socket_of(pid: int) -> str | None:
    """The ``--socket`` of process ``pid`` if it is an xvm-cnid, else None (also for a
    process that is gone, or a zombie: its command line is empty)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # exited between listing and reading: not an agent any more
    return socket_in_argv([arg.decode(errors="replace") for arg in raw.split(b"\0")])


def is_agent(pid: int, socket_path: str) -> bool:
    """True while ``pid`` is an xvm-cnid serving ``socket_path`` (not a reused pid)."""
    _reap(pid)
    return agent_socket_of(pid) == socket_path


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie.

    Not by command line: right after ``Popen`` returns, the kernel has closed the
    exec'd process's close-on-exec fds (which is what Popen waits for) but may not
    have set up its argument area yet, so /proc/<pid>/cmdline can still be empty.
    """
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no such process
    return stat[stat.rindex(")") + 2:].split(" ", 1)[0] not in ("Z", "X")


def agents_under(root: Path) -> dict[int, str]:
    """Running xvm-cnid processes whose socket lies under ``root`` (pid -> socket)."""
    return _scan(agent_socket_of, root)


def etcd_data_dir_of(pid: int) -> str | None:
    """The ``--data-dir`` of process ``pid`` if it is an etcd, else None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [arg.decode(errors="replace") for arg in raw.split(b"\0")]
    if not argv or os.path.basename(argv[0]) != "etcd":
        return None
    for i, arg in enumerate(argv):
        if arg == "--data-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--data-dir="):
            return arg.split("=", 1)[1]
    return None


def is_etcd(pid: int, data_dir: str) -> bool:
    """True while ``pid`` is an etcd on ``data_dir`` (not a reused pid)."""
    _reap(pid)
    return etcd_data_dir_of(pid) == data_dir


def etcds_under(root: Path) -> dict[int, str]:
    """Running etcd processes whose data dir lies under ``root`` (pid -> data dir)."""
    return _scan(etcd_data_dir_of, root)


def _scan(key_of: Callable[[int], str | None], root: Path) -> dict[int, str]:
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        key = key_of(int(entry))
        if key is not None and Path(key).is_relative_to(root):
            found[int(entry)] = key
    return found


@dataclass
class Stopped:
    stopped: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)


# Is pid still the process we mean (by its key: an agent's socket, etcd's data dir)?
StillOurs = Callable[[int, str], bool]


def stop(pids: dict[int, str], sig: int = signal.SIGTERM,
         timeout: float = STOP_TIMEOUT, still: StillOurs | None = None) -> Stopped:
    """Signal every agent at once, wait for all, SIGKILL whoever outlives ``timeout``.
    ``still``: how to tell a pid is still ours (default: an xvm-cnid on that socket)."""
    result = Stopped()
    check = still or is_agent
    left = _signal_and_wait(pids, sig, timeout, check)
    if left and sig != signal.SIGKILL:
        result.forced = sorted(left)
        left = _signal_and_wait(left, signal.SIGKILL, 5.0, check)
    result.survivors = sorted(left)
    result.stopped = sorted(set(pids) - set(left))
    return result


def _signal_and_wait(pids: dict[int, str], sig: int, timeout: float,
                     still: StillOurs) -> dict[int, str]:
    """Send ``sig`` to each process; return those still running after ``timeout``."""
    for pid, sock in pids.items():
        if still(pid, sock):  # never signal a pid that was reused meanwhile
            with contextlib.suppress(ProcessLookupError):  # exited just now: fine
                os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    left = dict(pids)
    while True:
        left = {pid: sock for pid, sock in left.items() if still(pid, sock)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError as exc:
        return f"no log ({exc.strerror or exc})"
    return f"log {path}: " + " | ".join(text[-lines:]) if text else f"log {path} is empty"
