"""Pod-selected addresses against a real kube-apiserver (issue 9, item 4).

A private API server runs inside the simulated host's network namespace (on its
loopback), so the plugin and the agent there reach it. Pod objects are created
through the API as the scheduler leaves them (``spec.nodeName`` set; no kubelet
runs); the ADD names the pod in ``CNI_ARGS`` as a kubelet's runtime does. Each test
runs in-process (one GET per ADD) and through xvm-cnid (its watch cache). One host
and one API server serve all tests of a variant (a start costs ~10 s); each test has
its own network (name, pod CIDR, state) and its own Kubernetes namespaces.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.k8s import K8sCluster, running_k8s, skip_reason
from xvmcni import plugin_file
from xvmcni.controlplane import podselect
from xvmcni.lab import plumbing

from .conftest import Host, agent_op, destroy_host, make_host, start_agent

NODE = "xvm-k8spods-node"


@pytest.fixture(scope="module", params=["inprocess", "agent"])
def k8s_host(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, K8sCluster]]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if skip_reason():
        pytest.skip(skip_reason())
    tmp_path = tmp_path_factory.mktemp(f"k8spods-{request.param}")
    host = make_host(tmp_path)
    try:
        with running_k8s(netns=host.name, start_kcm=False) as cluster:
            if request.param == "agent":
                host.plugin = str(plugin_file.write(tmp_path / "bin" / "xvm-cni"))
                start_agent(host, env={"NODE_NAME": NODE})
            yield host, cluster
            if host.agent is not None:
                served = sum(agent_op(host, "status")["agent"]["requests"].values())
                assert served == host.calls, f"agent served {served} of {host.calls} calls"
    finally:
        destroy_host(host)


def _namespace(cluster: K8sCluster, name: str, existing: str = "",
               annotations: dict[str, str] | None = None) -> str:
    """A namespace (``existing``: only its ServiceAccount) with the ``default``
    ServiceAccount pods need (nothing else creates it: only nodeipam runs)."""
    ns = existing or name
    if not existing:
        cluster.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "annotations": annotations or {}}})
    cluster.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})
    return ns


def _pod(cluster: K8sCluster, namespace: str, name: str,
         annotations: dict[str, str] | None = None) -> None:
    cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"nodeName": NODE, "automountServiceAccountToken": False,
                 "containers": [{"name": "c", "image": "example.invalid/none"}]}})


def _config(host: Host, cluster: K8sCluster, net: int, **extra: Any) -> dict[str, Any]:
    """Network ``k8spods<net>`` with pod CIDR 10.250.<net>.0/24."""
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": f"k8spods{net}", "type": "xvm-cni",
        "model": "routed", "hostInterface": "eth0", "podCIDR": f"10.250.{net}.0/24",
        "encap": "none", "bridge": f"xvmkp{net}", "vxlanID": 40 + net,
        "controlPlane": {"type": "static", "peers": []},
        "dataDir": str(host.data_dir), "k8sReadAnnotations": True,
        "k8sConfigPath": str(cluster.kubeconfig)}
    if host.agent_socket:
        conf["agentSocket"] = host.agent_socket
    conf.update(extra)
    return conf


def _args(namespace: str, name: str) -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            "K8S_POD_INFRA_CONTAINER_ID=x")


def _add(host: Host, conf: dict[str, Any], namespace: str, name: str) -> Any:
    pod = host.new_pod()
    plumbing.bring_up_lo(pod)
    return host.cni("ADD", conf, f"c-{name}", pod, args=_args(namespace, name))


def _address(result: Any) -> str:
    assert result.rc == 0, f"ADD failed: {result.stdout} {result.stderr}"
    return str(result.out["ips"][0]["address"].split("/")[0])


def test_annotated_addresses_are_given_and_refused_when_taken_or_outside(
        k8s_host: tuple[Host, K8sCluster]) -> None:
    host, cluster = k8s_host
    with host.sim.entered():
        ns = _namespace(cluster, "xvm-apps")
        _pod(cluster, ns, "ours", {podselect.ADDRESS_KEY: "10.250.1.77"})
        _pod(cluster, ns, "seed", {podselect.SEED_ADDRESS_KEY: "10.250.1.78/24",
                                   podselect.SEED_NETWORK_KEY: "k8spods1"})
        _pod(cluster, ns, "thief", {podselect.ADDRESS_KEY: "10.250.1.77"})
        _pod(cluster, ns, "outside", {podselect.ADDRESS_KEY: "10.99.0.5"})
        _pod(cluster, ns, "elsewhere", {podselect.ADDRESS_KEY: "10.250.1.79",
                                        podselect.NETWORK_KEY: "another-network"})
        _pod(cluster, ns, "plain")
    conf = _config(host, cluster, 1)
    assert _address(_add(host, conf, ns, "ours")) == "10.250.1.77"
    assert _address(_add(host, conf, ns, "seed")) == "10.250.1.78"
    taken = _add(host, conf, ns, "thief")
    assert taken.rc == 1 and taken.out is not None
    assert "10.250.1.77" in taken.out["msg"] and podselect.ADDRESS_KEY in taken.out["msg"]
    outside = _add(host, conf, ns, "outside")
    assert outside.rc == 1 and outside.out is not None and outside.out["code"] == 7
    assert "10.99.0.5" in outside.out["msg"]
    # An address meant for another network is not taken on this one.
    assert _address(_add(host, conf, ns, "elsewhere")) != "10.250.1.79"
    plain = _address(_add(host, conf, ns, "plain"))
    assert plain not in ("10.250.1.77", "10.250.1.78")
    # IP= from the runtime wins over the annotation.
    pod = host.new_pod()
    plumbing.bring_up_lo(pod)
    with host.sim.entered():
        _pod(cluster, ns, "runtime-wins", {podselect.ADDRESS_KEY: "10.250.1.90"})
    res = host.cni("ADD", conf, "c-rw", pod, args=_args(ns, "runtime-wins") + ";IP=10.250.1.91")
    assert _address(res) == "10.250.1.91"
    # Without k8sReadAnnotations nothing is asked (a kubeconfig that does not exist).
    off = {k: v for k, v in conf.items() if k != "k8sReadAnnotations"}
    off["k8sConfigPath"] = "/nonexistent/kubeconfig"
    with host.sim.entered():
        _pod(cluster, ns, "unread", {podselect.ADDRESS_KEY: "10.250.1.95"})
    assert _address(_add(host, off, ns, "unread")) != "10.250.1.95"


def test_namespace_named_network_and_namespace_annotation(
        k8s_host: tuple[Host, K8sCluster]) -> None:
    """A single-network config honours an address when the pod's namespace (by name
    or by its annotation) selects this network, and ignores it for another."""
    host, cluster = k8s_host
    with host.sim.entered():
        ns = _namespace(cluster, "k8spods2")  # named like the network
        _pod(cluster, ns, "by-name", {podselect.ADDRESS_KEY: "10.250.2.50"})
        other = _namespace(cluster, "xvm-other",
                           annotations={podselect.NETWORK_KEY: "not-this-one"})
        _pod(cluster, other, "by-annotation", {podselect.ADDRESS_KEY: "10.250.2.51"})
        mine = _namespace(cluster, "xvm-mine", annotations={podselect.NETWORK_KEY: "k8spods2"})
        _pod(cluster, mine, "by-ns-annotation", {podselect.ADDRESS_KEY: "10.250.2.52"})
    conf = _config(host, cluster, 2, k8sNetworkFromNamespace=True)
    assert _address(_add(host, conf, ns, "by-name")) == "10.250.2.50"
    assert _address(_add(host, conf, other, "by-annotation")) != "10.250.2.51"
    assert _address(_add(host, conf, mine, "by-ns-annotation")) == "10.250.2.52"


def test_a_pod_missing_from_the_cache_is_waited_for_then_fetched_once(
        k8s_host: tuple[Host, K8sCluster]) -> None:
    """The pod exists only on another node's list (a different spec.nodeName: the
    watch of this node never shows it), so the ADD waits, then asks once; and an
    unknown pod gets an address without annotations; with the API server unreachable, a
    pod the cache does not hold is refused with code 11 and one it holds is served."""
    host, cluster = k8s_host
    with host.sim.entered():
        ns = _namespace(cluster, "xvm-late")
        cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "moved", "annotations": {podselect.ADDRESS_KEY:
                                                          "10.250.3.60"}},
            "spec": {"nodeName": "some-other-node", "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "example.invalid/none"}]}})
        _pod(cluster, ns, "cached", {podselect.ADDRESS_KEY: "10.250.3.61"})
    conf = _config(host, cluster, 3)
    assert _address(_add(host, conf, ns, "moved")) == "10.250.3.60"
    if host.agent is not None:  # the cache missed it, waited, then asked once
        log = (host.data_dir.parent / "agent.log").read_text()
        assert log.count("pod xvm-late/moved not in the watch cache") == 1
    unknown = _address(_add(host, conf, ns, "nobody"))
    assert unknown.startswith("10.250.3.")
    # The API server unreachable: a pod the cache does not hold cannot be placed (try
    # again later).
    with _unreachable(host, cluster):
        res = _add(host, conf, "xvm-gone", "pod")
        assert res.rc == 1 and res.out is not None and res.out["code"] == 11, res.stdout
        assert "xvm-gone/pod" in res.out["msg"]
        cached = _add(host, conf, ns, "cached")
        if host.agent is not None:
            # ...while one its watch cache holds still gets its annotated address.
            assert _address(cached) == "10.250.3.61"
        else:
            assert cached.rc == 1 and cached.out is not None and cached.out["code"] == 11


@contextlib.contextmanager
def _unreachable(host: Host, cluster: K8sCluster) -> Iterator[None]:
    """Every packet to the API server's port is answered with a TCP reset, open watch
    streams included (faster than stopping it, and the other tests share it)."""
    port = cluster.ports["APISERVER_PORT"]
    table = "xvmk8soutage"
    script = (f"add table inet {table}\n"
              f"add chain inet {table} out {{ type filter hook output priority 0 ; }}\n"
              f"add rule inet {table} out tcp dport {port} reject with tcp reset\n")
    done = subprocess.run(["nsenter", f"--net={host.path}", "nft", "-f", "-"], input=script,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        subprocess.run(["nsenter", f"--net={host.path}", "nft", "delete", "table", "inet",
                        table], check=True)


def _macvlan_config(host: Host, cluster: K8sCluster, **extra: Any) -> dict[str, Any]:
    """A macvlan configuration (issue 10) with two networks, 'blue' the default;
    this host (172.30.0.11) holds the slices 10.61.11.0/24 and 10.62.11.0/24."""
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": "k8smv", "type": "xvm-cni", "model": "macvlan",
        "dataDir": str(host.data_dir), "defaultNetwork": "blue",
        "vxlans": [{"id": 161, "name": "blue", "cidr": "10.61.0.0/16",
                    "options": {"vtepdev": "eth0"}},
                   {"id": 162, "name": "xvm-mvred", "cidr": "10.62.0.0/16",
                    "options": {"vtepdev": "eth0"}}],
        "controlPlane": {"type": "static", "peers": []},
        "k8sReadAnnotations": True, "k8sConfigPath": str(cluster.kubeconfig)}
    if host.agent_socket:
        conf["agentSocket"] = host.agent_socket
    conf.update(extra)
    return conf


def test_macvlan_network_and_address_from_pod_annotations(
        k8s_host: tuple[Host, K8sCluster]) -> None:
    """The macvlan model chooses each pod's network from its Kubernetes annotations
    (seed 004's keys and ours), its namespace's annotation, or its namespace's name."""
    host, cluster = k8s_host
    with host.sim.entered():
        ns = _namespace(cluster, "xvm-mvapps")
        _pod(cluster, ns, "named", {podselect.SEED_NETWORK_KEY: "xvm-mvred"})
        _pod(cluster, ns, "asks", {podselect.SEED_ADDRESS_KEY: "10.62.11.77"})
        _pod(cluster, ns, "ours", {podselect.NETWORK_KEY: "xvm-mvred",
                                   podselect.ADDRESS_KEY: "10.62.11.78"})
        _pod(cluster, ns, "plain")
        red = _namespace(cluster, "xvm-mvred")  # named like a network
        _pod(cluster, red, "by-name")
        tagged = _namespace(cluster, "xvm-mvtagged",
                            annotations={podselect.NETWORK_KEY: "xvm-mvred"})
        _pod(cluster, tagged, "by-ns-annotation")
    conf = _macvlan_config(host, cluster)
    assert _address(_add(host, conf, ns, "named")).startswith("10.62.11.")
    assert _address(_add(host, conf, ns, "asks")) == "10.62.11.77"
    assert _address(_add(host, conf, ns, "ours")) == "10.62.11.78"
    assert _address(_add(host, conf, ns, "plain")).startswith("10.61.11.")
    assert _address(_add(host, conf, tagged, "by-ns-annotation")).startswith("10.62.11.")
    # The namespace's name counts only with k8sNetworkFromNamespace.
    assert _address(_add(host, conf, red, "by-name")).startswith("10.61.11.")
    from_ns = _macvlan_config(host, cluster, k8sNetworkFromNamespace=True)
    pod = host.new_pod()
    plumbing.bring_up_lo(pod)
    res = host.cni("ADD", from_ns, "c-by-name2", pod, args=_args(red, "by-name"))
    assert _address(res).startswith("10.62.11.")
