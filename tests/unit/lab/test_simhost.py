"""Names of simulated hosts: unique per call and per process, never a lab's."""

from __future__ import annotations

import os

from xvmcni.lab import simhost
from xvmcni.lab.names import lab_of_netns


def test_unique_names_differ_and_carry_prefix_and_pid() -> None:
    found = {simhost.unique_name("xth") for _ in range(500)}
    assert len(found) == 500
    assert all(n.startswith(f"xth{os.getpid():x}-") for n in found)
    # A lab scan must never take a test's or a benchmark's host for a lab's.
    assert all(lab_of_netns(n) is None for n in found)
