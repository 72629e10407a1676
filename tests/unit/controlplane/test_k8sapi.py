"""k8sapi without a server: the client library stays unloaded until a connection is
made, and HTTP answers map to the errors the watch loop acts on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xvmcni.controlplane import k8sapi
from xvmcni.controlplane.k8sapi import ApiError, ApiUnavailable, ResourceGone, raise_for


def test_importing_the_module_and_the_networks_does_not_load_lightkube() -> None:
    code = ("import sys, xvmcni.controlplane.k8sapi, xvmcni.networks; "
            "print(sorted(m for m in sys.modules if m.startswith(('lightkube', 'httpx'))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("status", "error"), [
    (410, ResourceGone), (404, ApiError), (403, ApiError), (401, ApiError),
    (500, ApiUnavailable), (503, ApiUnavailable), (429, ApiUnavailable)])
def test_statuses_map_to_errors(status: int, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        raise_for(status, b'{"kind":"Status","message":"the reason"}')
    assert "the reason" in str(caught.value)
    if status == 404:
        assert not isinstance(caught.value, ResourceGone)


def test_success_raises_nothing() -> None:
    raise_for(200, b"{}")
    raise_for(201, b"")


def test_no_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(k8sapi, "DEFAULT_KUBECONFIG", "/nonexistent/kubeconfig")
    with pytest.raises(k8sapi.ConfigMissing, match="/nonexistent/kubeconfig"):
        k8sapi.KubeApi()
