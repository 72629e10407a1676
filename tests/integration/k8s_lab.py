"""The routed lab (routed_lab.py) with a real Kubernetes control plane: etcd +
kube-apiserver + kube-controller-manager (node IPAM) in a namespace of their own on
switch A (172.31.1.6), reachable from every host (h3 through the router). Kubelet
does not run: the test creates the Node objects a kubelet would (name,
status.addresses) and the controller-manager assigns spec.podCIDRs.

Agents run per host with NODE_NAME=<host> and the admin kubeconfig.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

from tests.support.k8s import K8sCluster, require_k8s
from xvmcni.lab import simhost

from . import routed_lab
from .conftest import AGENT, Host, agent_op, start_agent, stop_agent
from .routed_lab import CLUSTER, Lab, ip

K8S_ADDRESS = "172.31.1.6"
CLUSTER6 = "fd00:250::/48"
# A fourth host on switch A: encap none needs three hosts on one subnet.
routed_lab.HOSTS.setdefault("h4", ("a", "172.31.1.14/24", "10.250.4.0/24"))


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class K8sLab(Lab):
    cluster: K8sCluster | None = None
    extra_agents: list[tuple[Host, subprocess.Popen[bytes], Path]]

    def start_k8s(self, dual_stack: bool = False, **kwargs: Any) -> K8sCluster:
        assets = require_k8s()
        self.extra_agents = []
        netns = simhost.unique_name("xrK")
        simhost.create_host(self.switches["a"], netns, "pk8s", f"{K8S_ADDRESS}/24",
                            record=self.record)
        if self.router:
            ip("-n", netns, "route", "add", "default", "via", "172.31.1.254")
        cidr = f"{CLUSTER},{CLUSTER6}" if dual_stack else CLUSTER
        self.cluster = K8sCluster(assets, self.tmp / "k8s", netns, K8S_ADDRESS,
                                  cluster_cidr=cidr, **kwargs)
        self.cluster.start()
        return self.cluster

    def destroy(self) -> None:
        for name, host in self.hosts.items():  # kept for a failure's diagnosis
            log = host.data_dir.parent / "agent.log"
            if log.exists():
                shutil.copy(log, self.tmp / f"{name}-agent.log")
        for _host, proc, _sock in getattr(self, "extra_agents", []):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        try:
            super().destroy()  # agents first
        finally:
            if self.cluster is not None:
                self.cluster.stop()

    # --- Node objects, as a kubelet would make them -----------------------------------

    @property
    def api(self) -> K8sCluster:
        assert self.cluster is not None
        return self.cluster

    def add_node(self, name: str, addresses: list[str] | None = None) -> None:
        self.api.request("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        self.set_addresses(name, addresses or [self.address(name)])

    def set_addresses(self, name: str, addresses: list[str]) -> None:
        # status is a subresource: a kubelet patches it there.
        self.api.request("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"addresses": [
            *({"type": "InternalIP", "address": a} for a in addresses),
            {"type": "Hostname", "address": name}]}},
            content_type="application/merge-patch+json")

    def annotate(self, name: str, annotations: dict[str, str | None]) -> None:
        self.api.request("PATCH", f"/api/v1/nodes/{name}",
                         {"metadata": {"annotations": annotations}},
                         content_type="application/merge-patch+json")

    def delete_node(self, name: str) -> None:
        self.api.request("DELETE", f"/api/v1/nodes/{name}")

    def node(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.api.request("GET", f"/api/v1/nodes/{name}"))
        except HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def pod_cidrs(self, name: str, count: int = 1) -> list[str]:
        def got() -> list[str]:
            node = self.node(name) or {}
            cidrs = list((node.get("spec") or {}).get("podCIDRs") or [])
            return cidrs if len(cidrs) >= count else []
        return list(wait_for(got, 30, f"podCIDRs of Node {name}"))

    def address(self, name: str) -> str:
        return routed_lab.HOSTS[name][1].split("/")[0]

    # --- configuration and agents -----------------------------------------------------

    def k8s_config(self, name: str, encap: str = "vxlan", network: str = routed_lab.NETWORK,
                   **extra: Any) -> dict[str, Any]:
        section = {"type": "kubernetes", "kubeconfig": str(self.api.kubeconfig),
                   "resync": 30, "watchTimeout": 20,
                   **extra.pop("controlPlane", {})}
        conf = self.config(name, encap=encap, podCIDR=None, controlPlane=section, **extra)
        conf["name"] = network
        return conf

    def boot(self, name: str, env: dict[str, str] | None = None, **conf: Any) -> None:
        """Write the host's network config and start its agent (NODE_NAME=<host>)."""
        host = self.hosts[name]
        conf_dir = host.data_dir.parent / "conf"
        conf_dir.mkdir(exist_ok=True)
        body = {k: v for k, v in self.k8s_config(name, **conf).items() if k != "agentSocket"}
        (conf_dir / "10-k8s.conf").write_text(json.dumps(body))
        start_agent(host, env={"NODE_NAME": name, **(env or {})})

    def instance_dir(self, name: str, tag: str) -> Path:
        return self.hosts[name].data_dir.parent / f"agent-{tag}"

    def boot_instance(self, name: str, tag: str, conf: dict[str, Any],
                      env: dict[str, str]) -> str:
        """A second xvm-cnid on host ``name`` (xcluster-cni's one instance per
        network): its own socket, config dir, data dir (``conf`` must name it) and
        environment; its socket path."""
        host = self.hosts[name]
        base = self.instance_dir(name, tag)
        (base / "conf").mkdir(parents=True, exist_ok=True)
        sock = base / "xvm-cnid.sock"
        body = {k: v for k, v in conf.items() if k != "agentSocket"}
        (base / "conf" / "10-k8s.conf").write_text(json.dumps(body))
        with open(base / "agent.log", "ab") as log, host.sim.entered():
            proc = subprocess.Popen(
                [AGENT, "--socket", str(sock), "--data-dir", str(body["dataDir"]),
                 "--cni-conf-dir", str(base / "conf"), "--metrics-port", "0",
                 "--gc-interval", "0", "--log-format", "text"],
                stdout=log, stderr=log, env={**os.environ, "NODE_NAME": name, **env})
        self.extra_agents.append((host, proc, base / "agent.log"))
        probe = Host(sim=host.sim, data_dir=host.data_dir, agent_socket=str(sock))
        wait_for(lambda: agent_op(probe, "ping").get("pong"), 30, f"agent {tag} on {name}")
        return str(sock)

    def restart_agent(self, name: str, env: dict[str, str] | None = None) -> None:
        stop_agent(self.hosts[name], signal.SIGTERM)
        start_agent(self.hosts[name], env={"NODE_NAME": name, **(env or {})})

    def agent_log(self, name: str) -> str:
        path = self.hosts[name].data_dir.parent / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def own_cidrs(self, name: str, network: str = routed_lab.NETWORK) -> list[str]:
        path = self.hosts[name].data_dir / network / "k8s-node.json"
        try:
            return list(json.loads(path.read_text())["podCIDRs"])
        except (FileNotFoundError, ValueError, KeyError):
            return []

    def vtep_mac(self, name: str, dev: str = "xvmrv1") -> str:
        out = json.loads(ip("-j", "-n", self.hosts[name].name, "link", "show", dev))
        return str(out[0]["address"])


def in_cidr(address: str, cidr: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr)
