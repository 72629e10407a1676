"""A network that fails in an unexpected way (a bug, an untranslated error) is shown
as not ready and reported, and never hides or stops the others: status, /metrics
and reconcile handle each network on its own (issue 7 item 4)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_networks import config
from xvmcni import networks
from xvmcni.agent import reconcile
from xvmcni.agent.server import Agent, AgentOptions
from xvmcni.runtime import REGISTRY_FILE, Runtime


@pytest.fixture
def two_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, vni in (("broken", 7), ("fine", 8)):
        state = tmp_path / name
        state.mkdir()
        (state / "network.json").write_text(json.dumps(
            config(name=name, vxlanID=vni, dataDir=str(tmp_path))))
        (state / REGISTRY_FILE).write_bytes(b"")  # an empty file is an empty database

    class Model:
        def describe(self) -> dict[str, Any]:
            return {}

        def prepare(self) -> None:
            return None

        def underlay_address(self) -> Any:
            import ipaddress

            return ipaddress.IPv4Address("192.168.1.11")

        def remove_orphans(self, *_: Any, **__: Any) -> list[str]:
            return []

        def leave(self, *_: Any, **__: Any) -> None:
            return None

    @contextlib.contextmanager
    def open_model(network: Any, runtime: Any) -> Iterator[Model]:
        if network.name == "broken":
            raise RuntimeError("an error nobody translated")
        yield Model()

    monkeypatch.setattr(networks, "open_model", open_model)
    return tmp_path


def test_status_shows_the_broken_network_and_the_others(two_networks: Path) -> None:
    agent = Agent(AgentOptions(conf_dirs=[], data_dirs=[two_networks], metrics_port=0))
    try:
        rows = {row["name"]: row for row in agent.usage()}
    finally:
        agent.pool.shutdown()
    assert rows["broken"]["ready"] is False
    assert "an error nobody translated" in rows["broken"]["reason"]
    assert rows["fine"]["ready"] is True


def test_reconcile_reports_the_broken_network_and_goes_on(two_networks: Path) -> None:
    found = reconcile.known_networks([], [two_networks])
    reports = {r.name: r for r in (reconcile.reconcile(n, Runtime.in_process())
                                   for n in found)}
    assert "an error nobody translated" in reports["broken"].error
    assert reports["fine"].error == ""
