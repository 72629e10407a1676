"""Recognising a lab's xvm-cnid by its command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xvmcni.lab import procs


@pytest.mark.parametrize(("argv", "sock"), [
    (["/v/bin/xvm-cnid", "--socket", "/run/l/h1/s"], "/run/l/h1/s"),
    (["/usr/bin/python3", "/v/bin/xvm-cnid", "--socket=/x"], "/x"),
    (["python3", "-m", "xvmcni.agent.main", "--data-dir", "/d", "--socket", "/y"], "/y"),
    (["/v/bin/xvm-cnid"], None),                     # default socket: the machine's agent
    (["/v/bin/xvm-cnid", "--socket"], None),         # cut short
    (["sleep", "--socket", "/z"], None),             # not an agent
    (["a", "b", "c", "xvm-cnid", "--socket", "/z"], None),  # the name is not the program
])
def test_socket_in_argv(argv: list[str], sock: str | None) -> None:
    assert procs.socket_in_argv(argv) == sock


def test_this_test_process_is_alive_and_no_agent() -> None:
    assert procs.alive(os.getpid())
    assert procs.agent_socket_of(os.getpid()) is None
    assert not procs.is_agent(os.getpid(), "/any")


def test_an_etcd_is_found_by_its_data_dir_and_stopped(tmp_path: Path) -> None:
    """The lab finds its etcd by command line (argv[0] named etcd, --data-dir under the
    lab's directory), also without a recorded pid, and stops only that one."""
    assert procs.etcd_data_dir_of(os.getpid()) is None   # python, not etcd
    assert procs.etcds_under(tmp_path) == {}
    data = str(tmp_path / "etcd" / "data")
    # A stand-in named etcd: Python under argv[0] "etcd", sleeping.
    proc = subprocess.Popen(["etcd", "-c", "import time; time.sleep(60)", "--data-dir", data],
                            executable=sys.executable)
    try:
        deadline = time.monotonic() + 10
        while procs.etcds_under(tmp_path) != {proc.pid: data} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procs.etcds_under(tmp_path) == {proc.pid: data}
        assert procs.etcds_under(tmp_path / "other") == {}
        assert procs.is_etcd(proc.pid, data) and not procs.is_etcd(proc.pid, "/elsewhere")
        stopped = procs.stop({proc.pid: data}, still=procs.is_etcd)
        assert stopped.stopped == [proc.pid] and not stopped.survivors
        assert proc.wait(timeout=5) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_tail_of_a_log(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    assert procs.tail(log).startswith("no log")
    log.write_text("")
    assert procs.tail(log) == f"log {log} is empty"
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert procs.tail(log, 2) == f"log {log}: line 8 | line 9"
