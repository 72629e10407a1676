"""controlplane.k8sapi against a real API server: kubeconfig and in-cluster
configuration (token re-read on rotation), paged list, watch with bookmarks, and
410 Gone after an etcd compaction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.k8s import K8sCluster, running_k8s
from xvmcni.controlplane import k8sapi
from xvmcni.controlplane.k8sapi import ApiError, KubeApi, ResourceGone


@pytest.fixture(scope="module")
def cluster() -> Iterator[K8sCluster]:
    # Without the watch cache a watch is served by etcd itself, so a compaction
    # makes an older resourceVersion answer 410 at once.
    with running_k8s(start_kcm=False,
                     extra_env={"APISERVER_EXTRA_ARGS": "--watch-cache=false"}) as c:
        yield c


def _node(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def test_kubeconfig_list_in_pages_and_patch(cluster: K8sCluster) -> None:
    api = KubeApi(str(cluster.kubeconfig))
    try:
        for i in range(5):
            api.request("POST", "/api/v1/nodes", _node(f"page{i}"))
        version, items = api.list("/api/v1/nodes", page=2)
        assert {f"page{i}" for i in range(5)} <= {n["metadata"]["name"] for n in items}
        assert version.isdigit()
        api.patch("/api/v1/nodes/page0", {"metadata": {"annotations": {"x/y": "z"}}})
        assert api.get("/api/v1/nodes/page0")["metadata"]["annotations"]["x/y"] == "z"
        with pytest.raises(ApiError) as err:
            api.get("/api/v1/nodes/nosuch")
        assert err.value.status == 404
    finally:
        api.close()


def test_watch_sees_changes_then_410_after_compaction(cluster: K8sCluster) -> None:
    api = KubeApi(str(cluster.kubeconfig))
    try:
        version, _ = api.list("/api/v1/nodes")
        api.request("POST", "/api/v1/nodes", _node("w1"))
        api.request("DELETE", "/api/v1/nodes/w1")
        seen = []
        for event in api.watch("/api/v1/nodes", version, timeout_seconds=5):
            seen.append((event["type"], event["object"]["metadata"].get("name")))
            if seen[-1] == ("DELETED", "w1"):
                break
        assert ("ADDED", "w1") in seen and ("DELETED", "w1") in seen
        api.request("POST", "/api/v1/nodes", _node("w2"))
        cluster.compact()
        with pytest.raises(ResourceGone):
            for _ in api.watch("/api/v1/nodes", version, timeout_seconds=5):
                pass
    finally:
        api.close()


def test_in_cluster_token_is_read_again_when_rotated(
        cluster: K8sCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = tmp_path / "sa"
    account.mkdir()
    (account / "ca.crt").write_bytes(cluster.ca_file.read_bytes())
    (account / "namespace").write_text("default")
    (account / "token").write_text("not-a-valid-token")
    host, port = cluster.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setattr(k8sapi, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    api = KubeApi()
    try:
        assert api.source.startswith("service account")
        with pytest.raises(ApiError) as err:
            api.get("/api/v1/nodes")
        assert err.value.status == 401
        # The kubelet swaps a new token in by rename: the next request uses it.
        (account / "token.new").write_text(cluster.token)
        (account / "token.new").rename(account / "token")
        assert api.get("/api/v1/nodes")["kind"] == "NodeList"
    finally:
        api.close()


def test_close_ends_a_watch_waiting_on_another_thread(cluster: K8sCluster) -> None:
    api = KubeApi(str(cluster.kubeconfig))
    version, _ = api.list("/api/v1/nodes")
    ended = threading.Event()

    def follow() -> None:
        try:
            for _ in api.watch("/api/v1/nodes", version, timeout_seconds=300):
                pass
        except k8sapi.ApiUnavailable:
            pass  # the expected end: the connection was closed under it
        ended.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert not ended.wait(1.0)
    api.close()
    assert ended.wait(10.0)


def test_reflector_sees_a_deletion_made_while_its_watch_was_gone(
        cluster: K8sCluster) -> None:
    """The reflector lists, then (held back by the test) watches from a version etcd
    has compacted: the server answers 410, the reflector lists again and reports the
    node deleted in the gap."""
    from xvmcni.controlplane.k8swatch import Reflector

    api = KubeApi(str(cluster.kubeconfig))
    api.request("POST", "/api/v1/nodes", _node("gap-kept"))
    api.request("POST", "/api/v1/nodes", _node("gap-deleted"))
    gate = threading.Event()
    reports: list[tuple[set[str], set[str]]] = []

    class Held(Reflector):
        def _watch(self, api: KubeApi, listed_at: float) -> None:
            gate.wait(30)
            super()._watch(api, listed_at)

    reflector = Held(lambda: KubeApi(str(cluster.kubeconfig)), "/api/v1/nodes", "nodes",
                     lambda items, changed: reports.append((set(items), changed)))
    reflector.start()
    try:
        assert reflector.synced.wait(20)
        assert {"gap-kept", "gap-deleted"} <= set(reflector.items())
        api.request("DELETE", "/api/v1/nodes/gap-deleted")
        api.request("POST", "/api/v1/nodes", _node("gap-new"))
        cluster.compact()
        gate.set()
        assert reflector.wait_for("gap-new", 20) is not None
        assert reflector.gone == 1 and reflector.lists == 2
        assert "gap-deleted" not in reflector.items()
        names, changed = reports[-1]
        assert "gap-deleted" in changed and "gap-deleted" not in names
        # And it follows the watch from the new list on.
        api.request("DELETE", "/api/v1/nodes/gap-kept")
        deadline = threading.Event()
        for _ in range(100):
            if reflector.get("gap-kept") is None:
                break
            deadline.wait(0.1)
        assert reflector.get("gap-kept") is None
    finally:
        gate.set()
        reflector.stop()
        api.close()
