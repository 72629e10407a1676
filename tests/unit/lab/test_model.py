"""Lab records: the address plan and the state file round trip."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from xvmcni.lab import model
from xvmcni.lab.names import LabError


def test_underlay_addresses_are_unique_and_inside_the_underlay() -> None:
    addresses = [model.underlay_address(i) for i in range(1, model.MAX_HOSTS + 1)]
    assert addresses[0] == "172.30.0.11/24"
    assert len(set(addresses)) == model.MAX_HOSTS
    for text in addresses:
        iface = ipaddress.IPv4Interface(text)
        assert iface.network == model.UNDERLAY
        assert iface.ip not in (model.UNDERLAY.network_address, model.UNDERLAY.broadcast_address)


@pytest.mark.parametrize("index", [0, model.MAX_HOSTS + 1])
def test_host_index_out_of_range_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="host index"):
        model.underlay_address(index)


def test_new_host_and_pod_names() -> None:
    host = model.new_host("lab", 3)
    assert (host.name, host.netns, host.underlay) == ("h3", "lab-h3", "172.30.0.13/24")
    pod = model.new_pod("lab", "h3", 2)
    assert (pod.name, pod.host, pod.netns, pod.container_id) == \
        ("h3-p2", "h3", "lab-h3-p2", "lab-h3-p2")
    assert pod.netns_path == "/run/netns/lab-h3-p2"


def test_state_file_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("xvmcni.lab.names.LAB_ROOT", tmp_path)
    lab = model.Lab(name="xtm", plugin="/p", flavor="xvm", agent=True,
                    hosts=[model.new_host("xtm", 1)], netns_created=["xtm-sw", "xtm-h1"])
    lab.pods.append(model.new_pod("xtm", "h1", 1))
    lab.pods[0].address = "10.244.0.2/16"
    lab.state_dir.mkdir()
    model.StateFile(lab).save()
    assert model.load_state("xtm") == lab
    assert model.load_lab("xtm").pods[0].ip == "10.244.0.2"
    assert model.load_state("other") is None
    with pytest.raises(LabError, match="does not exist"):
        model.load_lab("other")


def test_a_damaged_state_file_is_a_lab_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("xvmcni.lab.names.LAB_ROOT", tmp_path)
    (tmp_path / "xtd").mkdir()
    (tmp_path / "xtd" / "state.json").write_text('{"plugin": "/p"}')  # no name
    with pytest.raises(LabError, match="damaged"):
        model.load_state("xtd")


def test_lab_finds_hosts_and_their_pods() -> None:
    lab = model.Lab(name="l", plugin="", flavor="xvm",
                    hosts=[model.new_host("l", 1), model.new_host("l", 2)],
                    pods=[model.new_pod("l", h, j) for h in ("h1", "h2") for j in (1, 2)])
    assert lab.host("h2").netns == "l-h2"
    assert [p.name for p in lab.pods_of("h2")] == ["h2-p1", "h2-p2"]
    with pytest.raises(KeyError):
        lab.host("h3")
