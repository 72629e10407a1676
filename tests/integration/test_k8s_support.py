"""The test rig itself: a private API server + controller-manager assign pod CIDRs
to Node objects a test creates, and the API server comes back after a real stop."""

from __future__ import annotations

import time
import urllib.error

import pytest

from tests.support.k8s import K8sCluster, running_k8s


def _pod_cidrs(cluster: K8sCluster, name: str) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        node = cluster.request("GET", f"/api/v1/nodes/{name}")
        if node["spec"].get("podCIDRs"):
            return list(node["spec"]["podCIDRs"])
        time.sleep(0.2)
    raise AssertionError(f"{name} got no podCIDRs:\n{cluster.log('kube-controller-manager')}")


def test_nodes_get_distinct_pod_cidrs_and_apiserver_restarts() -> None:
    with running_k8s() as cluster:
        for name in ("n1", "n2"):
            cluster.request("POST", "/api/v1/nodes",
                            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        first, second = _pod_cidrs(cluster, "n1"), _pod_cidrs(cluster, "n2")
        assert first != second and all(c.startswith("10.244.") for c in first + second)

        cluster.stop_apiserver()
        with pytest.raises((urllib.error.URLError, OSError)):
            cluster.get_raw("/readyz")
        cluster.start_apiserver()
        assert cluster.request("GET", "/api/v1/nodes/n1")["spec"]["podCIDRs"] == first
