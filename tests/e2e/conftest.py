"""Fixtures for lab tests: unique lab names, a lab torn down even when a test fails,
and a way to run a function inside a namespace in a thread of its own."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from xvmcni.cli import lab as labmod
from xvmcni.dataplane.netns import entered, open_netns

T = TypeVar("T")


def unique_lab_name(tag: str = "") -> str:
    """Short, unique per run and per call: parallel runs never share a namespace."""
    return f"xt{tag}{os.getpid():x}{secrets.token_hex(2)}"


def lab_plugin() -> str | None:
    """XVM_LAB_PLUGIN points the lab at another plugin (e.g. /usr/lib/cni/bridge to
    check the plumbing alone); default: the real xvm-cni."""
    return os.environ.get("XVM_LAB_PLUGIN") or None


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in the calling thread while it is inside the namespace at ``path``."""
    fd = open_netns(path)
    try:
        with entered(fd):
            return fn()
    finally:
        os.close(fd)


def run_in_threads(*calls: tuple[str, Callable[[], object]], timeout: float = 60) -> list[object]:
    """Each (netns path, fn) in its own thread inside that namespace; results in order,
    the first exception re-raised."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(in_netns, path, fn) for path, fn in calls]
        return [f.result(timeout=timeout) for f in futures]


def leftovers(name: str) -> list[str]:
    found = list(labmod.lab_netns(name))
    if labmod.lab_dir(name).exists():
        found += [str(p) for p in labmod.lab_dir(name).rglob("*")] or [str(labmod.lab_dir(name))]
    return found


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")


@pytest.fixture(scope="module")
def lab3x2() -> Iterator[labmod.Lab]:
    """A 3-host x 2-pod lab for the whole module, removed even if a test fails."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    name = unique_lab_name()
    try:
        lab = labmod.lab_up(name, hosts=3, pods=2, plugin=lab_plugin())
        yield lab
    finally:
        labmod.lab_down(name)
