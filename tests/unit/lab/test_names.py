"""Lab names and namespace names: what belongs to which lab, in which order."""

from __future__ import annotations

import pytest

from xvmcni.lab import names


@pytest.mark.parametrize("name", ["a", "xvmlab", "lab2", "a" * 24])
def test_valid_lab_names(name: str) -> None:
    assert names.check_name(name) == name


@pytest.mark.parametrize("name", ["", "2lab", "Lab", "my-lab", "lab_1", "a" * 25, "lab/.."])
def test_invalid_lab_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(names.LabError) as info:
        names.check_name(name)
    assert "lower-case letters and digits" in str(info.value)


def test_namespace_names_of_a_lab() -> None:
    assert names.switch_netns("lab") == "lab-sw"
    assert names.host_netns("lab", "h3") == "lab-h3"
    assert names.pod_netns("lab", "h3", 2) == "lab-h3-p2"
    assert names.netns_path("lab-h3") == "/run/netns/lab-h3"
    assert names.etcd_netns("lab") == "lab-etcd"


@pytest.mark.parametrize(("netns", "mine"), [
    ("lab-sw", True), ("lab-h1", True), ("lab-h12-p3", True), ("lab-etcd", True),
    ("lab-etcd2", False),
    ("lab2-h1", False), ("lab-h1-p", False), ("lab-x1", False), ("xlab-sw", False),
    ("lab-h1-p1-p1", False),
])
def test_a_lab_claims_only_its_own_namespaces(netns: str, mine: bool) -> None:
    assert names.is_lab_netns("lab", netns) is mine


def test_split_and_lab_of_netns() -> None:
    assert names.split_netns("lab", "lab-h1") == ("h1", "")
    assert names.split_netns("lab", "lab-h1-p2") == ("h1", "-p2")
    assert names.split_netns("lab", "lab-sw") is None
    assert names.split_netns("lab", "other-h1") is None
    assert names.lab_of_netns("lab7-h2-p1") == "lab7"
    assert names.lab_of_netns("xth1a2b3c") is None     # an integration test's host


def test_status_order_is_numeric_and_teardown_goes_pods_first() -> None:
    found = ["l-h10", "l-h2-p1", "l-sw", "l-h2", "l-h9-p10", "l-h9-p2"]
    assert sorted(found, key=names.netns_order) == [
        "l-sw", "l-h2", "l-h2-p1", "l-h9-p2", "l-h9-p10", "l-h10"]
    down = sorted(found, key=names.teardown_order)
    assert down.index("l-h2-p1") < down.index("l-h2") < down.index("l-sw")


def test_every_host_has_its_own_agent_socket_under_the_lab() -> None:
    a = names.agent_socket_path("lab", "h1")
    assert a == names.lab_dir("lab") / "h1" / names.AGENT_SOCKET
    assert a != names.agent_socket_path("lab", "h2")
