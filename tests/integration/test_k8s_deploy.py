"""deploy/kubernetes against a real kube-apiserver (issue 9, item 5): ``kubectl apply
-k`` creates every object, and the agent's service account may do exactly what its
ClusterRole lists: checked by SubjectAccessReview for a matrix of verbs and
resources, and by real requests with a token issued to that service account."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.k8s import K8sCluster, running_k8s

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
NAMESPACE = "kube-system"
ACCOUNT = "xvm-cni"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"

# (API group, resource, subresource): the verbs the role grants; every other verb on
# these, and every verb on the rest, must be refused.
GRANTED = {
    ("", "nodes", ""): {"get", "list", "watch", "patch"},
    ("", "pods", ""): {"get", "list", "watch"},
    ("", "namespaces", ""): {"get", "list", "watch"},
}
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
OTHERS = [("", "secrets", ""), ("", "configmaps", ""), ("", "services", ""),
          ("", "endpoints", ""), ("", "serviceaccounts", ""), ("", "events", ""),
          ("", "pods", "exec"), ("", "pods", "log"), ("", "nodes", "status"),
          ("", "nodes", "proxy"), ("", "serviceaccounts", "token"),
          ("apps", "daemonsets", ""), ("rbac.authorization.k8s.io", "clusterroles", ""),
          ("rbac.authorization.k8s.io", "clusterrolebindings", ""),
          ("coordination.k8s.io", "leases", ""), ("discovery.k8s.io", "endpointslices", "")]


@pytest.fixture(scope="module")
def deployed() -> Iterator[K8sCluster]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian package kubernetes-client)")
    with running_k8s(start_kcm=False) as cluster:
        done = subprocess.run(
            [kubectl, "--kubeconfig", str(cluster.kubeconfig),
             "--cache-dir", str(cluster.workdir / "kubectl-cache"),
             "apply", "-k", str(DEPLOY)],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"kubectl apply failed:\n{done.stdout}\n{done.stderr}"
        yield cluster


def test_apply_creates_every_object(deployed: K8sCluster) -> None:
    ds = deployed.request("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/xvm-cnid")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["serviceAccountName"] == ACCOUNT
    assert {"operator": "Exists"} in spec["tolerations"]
    agent = spec["containers"][0]
    caps = agent["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN"]}
    assert agent["securityContext"].get("privileged") in (None, False)
    init = spec["initContainers"][0]
    assert init["command"][:2] == ["xvmctl", "install"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {
        "apiVersion": "v1", "fieldPath": "spec.nodeName"}}} in agent["env"]
    cm = deployed.request("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/xvm-cni-config")
    conf = json.loads(cm["data"]["10-xvm.conflist"])
    assert conf["plugins"][0]["type"] == "xvm-cni"
    deployed.request("GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{ACCOUNT}")
    role = deployed.request("GET", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{ACCOUNT}")
    assert len(role["rules"]) == 2


def _allowed(cluster: K8sCluster, group: str, resource: str, sub: str, verb: str) -> bool:
    review = cluster.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": USER, "groups": ["system:serviceaccounts",
                                          f"system:serviceaccounts:{NAMESPACE}",
                                          "system:authenticated"],
                 "resourceAttributes": {"group": group, "resource": resource,
                                        "subresource": sub, "verb": verb,
                                        "namespace": "default"}}})
    return bool(review["status"].get("allowed"))


def test_the_service_account_may_do_exactly_what_the_role_lists(deployed: K8sCluster) -> None:
    wrong = []
    for key in [*GRANTED, *OTHERS]:
        for verb in VERBS:
            expected = verb in GRANTED.get(key, set())
            if _allowed(deployed, *key, verb) != expected:
                wrong.append(f"{verb} {'/'.join(p for p in key if p)}: "
                             f"{'refused' if expected else 'allowed'}")
    assert not wrong, "RBAC differs from the role:\n" + "\n".join(wrong)


def _as_account(cluster: K8sCluster, token: str, method: str, path: str,
                body: Any = None, content_type: str = "application/json") -> int:
    """The HTTP status of one request made with the service account's own token."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(cluster.server + path, data=data, method=method,  # noqa: S310
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, context=cluster._ssl(), timeout=10) as reply:  # noqa: S310
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_real_requests_with_the_accounts_token(deployed: K8sCluster) -> None:
    issued = deployed.request(
        "POST", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{ACCOUNT}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 600}})
    token = issued["status"]["token"]
    deployed.request("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                               "metadata": {"name": "rbac-node"}})
    ok = [("GET", "/api/v1/nodes"), ("GET", "/api/v1/nodes/rbac-node"),
          ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Drbac-node"),
          ("GET", "/api/v1/namespaces"), ("GET", "/api/v1/namespaces/default")]
    for method, path in ok:
        assert _as_account(deployed, token, method, path) == 200, f"{method} {path}"
    patch = {"metadata": {"annotations": {"xvm-cni.io/test": "1"}}}
    assert _as_account(deployed, token, "PATCH", "/api/v1/nodes/rbac-node", patch,
                       "application/merge-patch+json") == 200
    refused = [("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets", None),
               ("GET", "/api/v1/configmaps", None),
               ("DELETE", "/api/v1/nodes/rbac-node", None),
               ("POST", "/api/v1/namespaces", {"metadata": {"name": "x"}}),
               ("POST", "/api/v1/namespaces/default/pods",
                {"metadata": {"name": "x"}, "spec": {"containers": [
                    {"name": "c", "image": "x"}]}}),
               ("PATCH", "/api/v1/nodes/rbac-node/status", patch),
               ("GET", "/apis/apps/v1/daemonsets", None)]
    for method, path, body in refused:
        kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
        assert _as_account(deployed, token, method, path, body, kind) == 403, f"{method} {path}"
