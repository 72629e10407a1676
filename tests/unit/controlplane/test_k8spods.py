"""The pod watch cache against a fake API client: list + watch, 410 re-list, the
wait-then-fetch-once path, and the CNI errors an unreachable API server gives."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from xvmcni.cni.request import Request
from xvmcni.controlplane import k8spods, podselect
from xvmcni.controlplane.k8sapi import ApiError, ApiUnavailable, ResourceGone
from xvmcni.controlplane.podselect import SelectionSettings
from xvmcni.errors import TRY_AGAIN_LATER, CniError

NODE = "node-a"


def obj(name: str, namespace: str = "", node: str = NODE, **annotations: str) -> Any:
    return {"metadata": {"name": name, "namespace": namespace, "annotations": annotations,
                         "resourceVersion": "11"},
            "spec": {"nodeName": node}}


class FakeApi:
    """Pods/namespaces as the server holds them; watch events fed through a queue."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str, str], Any]] = {"pods": {}, "namespaces": {}}
        self.events: dict[str, queue.Queue[Any]] = {"pods": queue.Queue(),
                                                   "namespaces": queue.Queue()}
        self.gets: list[str] = []
        self.down = False
        self.closed = 0

    def list(self, path: str, params: dict[str, str]) -> tuple[str, list[Any]]:
        kind = path.rsplit("/", 1)[1]
        if kind == "pods":
            assert params == {"fieldSelector": f"spec.nodeName={NODE}"}
        return "10", list(self.objects[kind].values())

    def watch(self, path: str, version: str, timeout: int,
              params: dict[str, str]) -> Iterator[dict[str, Any]]:
        events = self.events[path.rsplit("/", 1)[1]]
        while True:
            try:
                item = events.get(timeout=0.05)
            except queue.Empty:
                if self.closed:
                    raise ApiUnavailable("closed") from None
                continue
            if isinstance(item, Exception):
                raise item
            if item is None:  # the server ends the watch
                return
            yield {"type": item[0], "object": item[1]}

    def get(self, path: str) -> Any:
        self.gets.append(path)
        if self.down:
            raise ApiUnavailable("connection refused")
        parts = path.split("/")
        key = (parts[4], parts[6]) if "pods" in parts else ("", parts[4])
        found = self.objects["pods" if "pods" in parts else "namespaces"].get(key)
        if found is None:
            raise ApiError(404, "not found")
        return found

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def client() -> FakeApi:
    fake = FakeApi()
    fake.objects["namespaces"][("", "ns")] = obj("ns", **{podselect.NETWORK_KEY: "nsnet"})
    return fake


@pytest.fixture
def cache(client: FakeApi) -> Iterator[k8spods.PodCache]:
    made = k8spods.PodCache(lambda: client, NODE, wait=0.5)
    made.start()
    assert made.pods.synced.wait(5) and made.namespaces.synced.wait(5)
    yield made
    made.stop()


def until(check: Any, timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def test_listed_pods_are_served_without_a_request(client: FakeApi) -> None:
    client.objects["pods"][("ns", "p1")] = obj("p1", "ns", **{podselect.ADDRESS_KEY: "10.0.0.5"})
    made = k8spods.PodCache(lambda: client, NODE, wait=0.5)
    made.start()
    try:
        info = made.lookup("ns", "p1")
        assert info is not None and info.annotations[podselect.ADDRESS_KEY] == "10.0.0.5"
        assert info.namespace_annotations == {podselect.NETWORK_KEY: "nsnet"}
        assert client.gets == [] and made.fetches == 0
    finally:
        made.stop()


def test_a_pod_arriving_by_watch_during_the_wait_needs_no_fetch(
        client: FakeApi, cache: k8spods.PodCache) -> None:
    def later() -> None:
        threading.Event().wait(0.1)
        client.events["pods"].put(("ADDED", obj("p2", "ns", a="b")))
    threading.Thread(target=later).start()
    info = cache.lookup("ns", "p2")
    assert info is not None and info.annotations == {"a": "b"}
    assert cache.fetches == 0 and client.gets == []


def test_a_pod_not_in_the_cache_is_fetched_once(client: FakeApi,
                                                cache: k8spods.PodCache) -> None:
    client.objects["pods"][("ns", "late")] = obj("late", "ns", x="1")  # no watch event
    info = cache.lookup("ns", "late")
    assert info is not None and info.annotations == {"x": "1"}
    assert client.gets == ["/api/v1/namespaces/ns/pods/late"] and cache.fetches == 1
    # Once the watch brings it, the next lookup asks nobody.
    client.events["pods"].put(("ADDED", obj("late", "ns", x="1")))
    until(lambda: cache.pods.get("ns/late") is not None)
    assert cache.lookup("ns", "late") is not None
    assert client.gets == ["/api/v1/namespaces/ns/pods/late"]


def test_an_unknown_pod_is_none_and_another_nodes_pod_is_not_cached(
        client: FakeApi, cache: k8spods.PodCache) -> None:
    assert cache.lookup("ns", "nobody") is None
    client.objects["pods"][("ns", "elsewhere")] = obj("elsewhere", "ns", node="node-b")
    assert cache.lookup("ns", "elsewhere") is not None
    assert cache.pods.get("ns/elsewhere") is None


def test_watch_events_update_and_delete(client: FakeApi, cache: k8spods.PodCache) -> None:
    client.events["pods"].put(("ADDED", obj("p", "ns", v="1")))
    until(lambda: k8spods._annotations(cache.pods.get("ns/p")) == {"v": "1"})
    client.events["pods"].put(("MODIFIED", obj("p", "ns", v="2")))
    until(lambda: k8spods._annotations(cache.pods.get("ns/p")) == {"v": "2"})
    client.events["pods"].put(("DELETED", obj("p", "ns")))
    until(lambda: cache.pods.get("ns/p") is None)


def test_410_relists_and_forgets_pods_deleted_in_the_gap(
        client: FakeApi, cache: k8spods.PodCache) -> None:
    client.events["pods"].put(("ADDED", obj("gone", "ns")))
    until(lambda: cache.pods.get("ns/gone") is not None)
    # Deleted while the watch was broken: the server has it no more, no event came.
    client.objects["pods"][("ns", "kept")] = obj("kept", "ns")
    before = cache.pods.lists
    client.events["pods"].put(ResourceGone(410, "too old resource version"))
    until(lambda: cache.pods.lists > before)
    assert cache.pods.get("ns/gone") is None
    assert cache.pods.get("ns/kept") is not None


def test_a_watch_the_server_ends_is_resumed_without_a_relist(
        client: FakeApi, cache: k8spods.PodCache) -> None:
    before = cache.pods.lists
    client.events["pods"].put(None)
    client.events["pods"].put(("ADDED", obj("after", "ns")))
    until(lambda: cache.pods.get("ns/after") is not None)
    assert cache.pods.lists == before


def test_an_unavailable_api_server_keeps_the_copy_and_resumes(
        client: FakeApi, cache: k8spods.PodCache) -> None:
    client.events["pods"].put(("ADDED", obj("kept", "ns")))
    until(lambda: cache.pods.get("ns/kept") is not None)
    client.events["pods"].put(ApiUnavailable("reset"))
    client.events["pods"].put(("ADDED", obj("next", "ns")))
    until(lambda: cache.pods.get("ns/next") is not None)
    assert cache.pods.get("ns/kept") is not None


class Sources(k8spods.PodSources):
    def __init__(self, made: k8spods.PodCache) -> None:
        super().__init__(lambda _path, _node: made)


def test_selection_through_the_cache(client: FakeApi, cache: k8spods.PodCache) -> None:
    client.events["pods"].put(("ADDED", obj("p", "ns", **{podselect.SEED_ADDRESS_KEY: "10.1.1.9",
                                                        podselect.SEED_NETWORK_KEY: "blue"})))
    until(lambda: cache.pods.get("ns/p") is not None)
    request = Request("ADD", args={"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p"})
    chosen = k8spods.selection(request, SelectionSettings(read_annotations=True),
                               ["blue"], Sources(cache))
    assert chosen.network == "blue" and [str(a) for a in chosen.addresses] == ["10.1.1.9"]
    # The namespace's annotation names the network when the pod's does not.
    client.events["pods"].put(("ADDED", obj("q", "ns")))
    until(lambda: cache.pods.get("ns/q") is not None)
    request = Request("ADD", args={"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "q"})
    chosen = k8spods.selection(request, SelectionSettings(read_annotations=True),
                               ["nsnet"], Sources(cache))
    assert chosen.network == "nsnet"


def test_unreachable_api_server_is_code_11(client: FakeApi,
                                           cache: k8spods.PodCache) -> None:
    client.down = True
    request = Request("ADD", args={"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "absent"})
    with pytest.raises(CniError) as err:
        k8spods.selection(request, SelectionSettings(read_annotations=True, default_network="d"),
                          ["d"], Sources(cache))
    assert err.value.code == TRY_AGAIN_LATER and "ns/absent" in err.value.msg


def test_without_pod_args_or_reading_nothing_is_asked(client: FakeApi) -> None:
    def explode(_path: str, _node: str) -> k8spods.PodCache:
        raise AssertionError("no cache may be made")
    sources = k8spods.PodSources(explode)
    settings = SelectionSettings(read_annotations=True, default_network="d")
    assert k8spods.selection(Request("ADD"), settings, ["d"], sources).network == "d"
    off = SelectionSettings(default_network="d")
    request = Request("ADD", args={"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p"})
    assert k8spods.selection(request, off, ["d"], sources).network == "d"


def test_node_name_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "worker-7")
    assert k8spods.node_name() == "worker-7"
    monkeypatch.delenv("NODE_NAME")
    assert k8spods.node_name()


def test_one_cache_per_kubeconfig_and_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-env")
    made: list[tuple[str, str]] = []

    class Idle:
        node = "?"

        def start(self) -> None:
            return None

    def factory(path: str, node: str) -> k8spods.PodCache:
        made.append((path, node))
        return Idle()  # type: ignore[return-value]

    sources = k8spods.PodSources(factory)
    first = sources.cache("/k")
    assert sources.cache("/k", "") is first and sources.cache("/k", "from-env") is first
    assert sources.cache("/k", "other") is not first
    assert made == [("/k", "from-env"), ("/k", "other")]
