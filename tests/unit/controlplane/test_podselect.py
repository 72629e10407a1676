"""The pod-selection rule: which annotation wins, the fallbacks, and refusals."""

from __future__ import annotations

import ipaddress

import pytest

from xvmcni.controlplane import podselect
from xvmcni.controlplane.podselect import SelectionSettings, select
from xvmcni.errors import INVALID_CONFIG, CniError

KNOWN = ["blue", "red", "default"]


def settings(**kw: object) -> SelectionSettings:
    base: dict[str, object] = {"read_annotations": True, "default_network": "default"}
    base.update(kw)
    return SelectionSettings(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [podselect.NETWORK_KEY, podselect.SEED_NETWORK_KEY])
def test_a_pod_annotation_names_the_network(key: str) -> None:
    chosen = select(settings(), KNOWN, pod={key: "blue"}, namespace="red")
    assert (chosen.network, chosen.source, chosen.key) == ("blue", podselect.FROM_POD, key)
    assert chosen.named and chosen.addresses == ()


@pytest.mark.parametrize("key", [podselect.ADDRESS_KEY, podselect.SEED_ADDRESS_KEY])
def test_a_pod_annotation_requests_an_address(key: str) -> None:
    chosen = select(settings(), KNOWN, pod={key: "10.1.2.3/24"}, namespace="ns",
                    pod_name="p")
    assert chosen.addresses == (ipaddress.ip_address("10.1.2.3"),)
    assert chosen.address_origin == f"pod annotation {key} of pod ns/p"
    assert chosen.network == "default"


def test_dual_stack_address_list() -> None:
    chosen = select(settings(), KNOWN, pod={podselect.ADDRESS_KEY: "10.1.2.3, fd00::3"})
    assert [str(a) for a in chosen.addresses] == ["10.1.2.3", "fd00::3"]


def test_both_spellings_agreeing_are_fine_disagreeing_are_refused() -> None:
    same = {podselect.NETWORK_KEY: "blue", podselect.SEED_NETWORK_KEY: "blue"}
    assert select(settings(), KNOWN, pod=same).network == "blue"
    differ = {podselect.NETWORK_KEY: "blue", podselect.SEED_NETWORK_KEY: "red"}
    with pytest.raises(CniError) as err:
        select(settings(), KNOWN, pod=differ, namespace="ns", pod_name="p")
    assert err.value.code == INVALID_CONFIG
    assert "disagree" in err.value.msg and "ns/p" in err.value.msg


def test_args_annotations_win_over_the_pod() -> None:
    chosen = select(settings(args_annotations={podselect.SEED_NETWORK_KEY: "red",
                                               podselect.SEED_ADDRESS_KEY: "10.9.9.9"}),
                    KNOWN, pod={podselect.NETWORK_KEY: "blue",
                                podselect.ADDRESS_KEY: "10.1.1.1"})
    assert chosen.network == "red" and chosen.source == podselect.FROM_ARGS
    assert chosen.addresses == (ipaddress.ip_address("10.9.9.9"),)


def test_namespace_annotation_is_below_the_pods_and_gives_no_address() -> None:
    ns = {podselect.NETWORK_KEY: "red", podselect.ADDRESS_KEY: "10.5.5.5"}
    chosen = select(settings(), KNOWN, pod={}, namespace="x", namespace_annotations=ns)
    assert (chosen.network, chosen.source) == ("red", podselect.FROM_NAMESPACE_ANNOTATION)
    assert chosen.addresses == ()
    chosen = select(settings(), KNOWN, pod={podselect.NETWORK_KEY: "blue"}, namespace="x",
                    namespace_annotations=ns)
    assert chosen.network == "blue"


def test_namespace_name_only_when_enabled_and_known() -> None:
    on = settings(network_from_namespace=True)
    assert select(on, KNOWN, pod={}, namespace="red").source == podselect.FROM_NAMESPACE_NAME
    assert select(on, KNOWN, pod={}, namespace="red").network == "red"
    # A namespace that is no network falls through to the default.
    assert select(on, KNOWN, pod={}, namespace="kube-system").network == "default"
    assert select(settings(), KNOWN, pod={}, namespace="red").network == "default"


def test_no_network_at_all_is_code_7_with_the_reason() -> None:
    with pytest.raises(CniError) as err:
        select(settings(default_network=""), KNOWN, pod={}, namespace="ns", pod_name="p")
    assert err.value.code == INVALID_CONFIG
    assert "no network for pod ns/p" in err.value.msg
    assert "blue" in err.value.details


@pytest.mark.parametrize("text", ["nonsense", "10.1.2.3,10.1.2.4", "300.1.1.1"])
def test_malformed_addresses_are_refused_naming_the_key(text: str) -> None:
    with pytest.raises(CniError) as err:
        select(settings(), KNOWN, pod={podselect.SEED_ADDRESS_KEY: text})
    assert err.value.code == INVALID_CONFIG
    assert podselect.SEED_ADDRESS_KEY in err.value.msg


def test_empty_values_count_as_absent() -> None:
    chosen = select(settings(), KNOWN, pod={podselect.NETWORK_KEY: "  ",
                                            podselect.SEED_NETWORK_KEY: "blue"})
    assert chosen.network == "blue"


def test_require_known() -> None:
    chosen = select(settings(), KNOWN, pod={podselect.NETWORK_KEY: "green"})
    with pytest.raises(CniError) as err:
        podselect.require_known(chosen, KNOWN)
    assert "green" in err.value.msg and podselect.NETWORK_KEY in err.value.msg
    assert podselect.require_known(select(settings(), KNOWN, pod={}), KNOWN).network == "default"


def test_addresses_for_a_single_network_configuration() -> None:
    addr = {podselect.ADDRESS_KEY: "10.1.2.3"}
    unnamed = select(settings(default_network="net"), ["net"], pod=addr)
    assert podselect.addresses_for(unnamed, "net") == unnamed.addresses != ()
    mine = select(settings(), ["net"], pod={**addr, podselect.NETWORK_KEY: "net"})
    assert podselect.addresses_for(mine, "net") == mine.addresses
    other = select(settings(), ["net"], pod={**addr, podselect.NETWORK_KEY: "other"})
    assert podselect.addresses_for(other, "net") == ()


def test_parse_settings_reads_the_seed_fields() -> None:
    parsed = podselect.parse_settings({
        "k8sReadAnnotations": True, "k8sNetworkFromNamespace": True,
        "defaultNetwork": "blue", "k8sConfigPath": "/etc/kube.conf",
        "args": {"annotations": {podselect.SEED_NETWORK_KEY: "red"}}})
    assert parsed == SelectionSettings(True, True, "blue", "/etc/kube.conf",
                                       {podselect.SEED_NETWORK_KEY: "red"})
    assert podselect.parse_settings({}) == SelectionSettings()
    # Without k8sConfigPath, a Kubernetes control plane's kubeconfig is used.
    plane = {"controlPlane": {"type": "kubernetes", "kubeconfig": "/etc/k.conf",
                              "nodeName": "n7"}}
    assert podselect.parse_settings(plane).kubeconfig == "/etc/k.conf"
    assert podselect.parse_settings(plane).node == "n7"
    assert podselect.parse_settings({**plane, "k8sConfigPath": "/x"}).kubeconfig == "/x"
    assert not podselect.wants_pod(podselect.parse_settings({}))


@pytest.mark.parametrize("raw", [
    {"k8sReadAnnotations": "yes"},
    {"k8sConfigPath": "relative/kubeconfig"},
    {"args": {"annotations": {"k": 1}}},
    {"args": {"annotations": ["k"]}},
])
def test_parse_settings_refuses_bad_fields(raw: dict[str, object]) -> None:
    with pytest.raises(CniError) as err:
        podselect.parse_settings(raw)
    assert err.value.code == INVALID_CONFIG
