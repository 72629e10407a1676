"""Fixtures for lab tests: unique lab names, the plugin to use, a 3 x 2 lab and a
2 x 1 lab whose agents tests may restart, each torn down even when a test fails."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest

from xvmcni import lab as labmod


def _unique_lab_name(tag: str = "") -> str:
    """Short, unique per run and per call: parallel runs never share a namespace."""
    return f"xt{tag}{os.getpid():x}{secrets.token_hex(2)}"


def _lab_plugin() -> str | None:
    """XVM_LAB_PLUGIN points the lab at another plugin (e.g. /usr/lib/cni/bridge to
    check the plumbing alone); default: the real xvm-cni."""
    return os.environ.get("XVM_LAB_PLUGIN") or None


@pytest.fixture
def make_lab_name() -> Callable[[str], str]:
    """Unique lab names for tests that build their own lab."""
    return _unique_lab_name


@pytest.fixture
def lab_plugin() -> str | None:
    return _lab_plugin()


@pytest.fixture(scope="module")
def lab3x2() -> Iterator[labmod.Lab]:
    """A 3-host x 2-pod lab for the whole module, removed even if a test fails."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    name = _unique_lab_name()
    try:
        lab = labmod.lab_up(name, hosts=3, pods=2, plugin=_lab_plugin())
        yield lab
    finally:
        labmod.lab_down(name)


@pytest.fixture(scope="module")
def agent_lab() -> Iterator[labmod.Lab]:
    """A 2-host x 1-pod lab in agent mode (one xvm-cnid per host) for tests that stop
    and restart agents; removed, agents included, even if a test fails."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    name = _unique_lab_name("a")
    try:
        lab = labmod.lab_up(name, hosts=2, pods=1, plugin=_lab_plugin(), agent=True)
        if not lab.agent:
            pytest.skip(f"{lab.plugin} runs without agents (reference plugin)")
        yield lab
    finally:
        labmod.lab_down(name)
