#!/usr/bin/env python3
"""Convergence with the Kubernetes control plane: from a new Node object to every
existing pod reaching the new node's pod.

Usage (root; needs $XVM_TEST_K8S, the directory of kube-apiserver.xz etc.):

    sudo XVM_TEST_K8S=$PWD/../shared/k8s .venv/bin/python bench/convergence_k8s.py \\
        --nodes 10,50 --rounds 5 [--encap vxlan|none]

Per size N: a private etcd + kube-apiserver + kube-controller-manager (node IPAM) in
a namespace of its own on the underlay switch (tests/support/k8s.py), N simulated
hosts each with an xvm-cnid (NODE_NAME=<host>) and one pod. Then per round a new
host is made with its agent running, and the clock starts at the Node POST (then its
status.addresses, as a kubelet registers); the new host's ADD is retried every
50 ms until its agent knows the pod CIDR the controller-manager assigned; the clock
stops when the last of the N existing pods got an ICMP echo reply from the new pod.
Reported per N: p50 / p99 (nearest rank: with 5 rounds the p99 is the maximum) of
that, and of its parts (pod CIDR assigned, ADD done). Pods are attached
through the thin plugin, which hands every ADD to the host's agent (as deployed).

``measure(nodes, rounds, encap, progress)`` is the function bench/convergence.py
calls for ``--control kubernetes``; it returns the samples in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchlib import (
    AGENT,
    CNI_PATH,
    PATH,
    RESULTS_DIR,
    Agent,
    Workspace,
    agent_op,
    fmt,
    install_signal_handlers,
    machine,
    percentile,
    require_root,
    table,
    write_thin_plugin,
)
from tests.support.k8s import K8sCluster, assets_dir, skip_reason

from xvmcni.lab import icmp, invoke, neightable, plumbing, simhost
from xvmcni.lab.names import netns_path

K8S_ADDRESS = "172.30.0.5"
CLUSTER = "10.244.0.0/16"
NETWORK = "kbench"
Progress = Callable[[str], None]


class Bench:
    """One cluster and its hosts, all registered with the workspace."""

    def __init__(self, ws: Workspace, encap: str, progress: Progress) -> None:
        self.ws = ws
        self.encap = encap
        self.progress = progress
        self.switch = simhost.unique_name("xks")
        simhost.create_switch(self.switch, ws.namespaces.append)
        k8s_ns = simhost.unique_name("xkk")
        simhost.create_host(self.switch, k8s_ns, "pk8s", f"{K8S_ADDRESS}/24",
                            record=ws.namespaces.append)
        assets = assets_dir()
        assert assets is not None
        self.cluster = K8sCluster(assets, ws.tmp / "k8s", k8s_ns, K8S_ADDRESS,
                                  cluster_cidr=CLUSTER)
        ws.extra.append(self.cluster.stop)
        self.cluster.start()
        self.hosts: dict[str, simhost.SimHost] = {}
        self.pods: dict[str, tuple[str, str]] = {}   # host -> (pod netns path, address)
        self.count = 0
        # The plugin file `make install` writes: every ADD goes to the host's agent (as
        # in a deployment), which programs the peers right after the host joined.
        self.plugin = write_thin_plugin(ws.tmp / "bin" / "xvm-cni")

    def new_host(self) -> str:
        """A host with its agent running (its Node not created yet); its name."""
        self.count += 1
        name = f"n{self.count}"
        if self.count > 240:
            raise RuntimeError("at most 240 hosts on the /24 underlay")
        host = simhost.create_host(self.switch, simhost.unique_name("xkh"), f"p{name}",
                                   f"172.30.0.{10 + self.count}/24",
                                   record=self.ws.namespaces.append)
        self.hosts[name] = host
        workdir = self.ws.tmp / name
        (workdir / "conf").mkdir(parents=True)
        (workdir / "conf" / "10-k8s.conf").write_text(json.dumps(self.config(name)))
        sock = workdir / "agent" / "xvm-cnid.sock"
        log_path = workdir / "agent.log"
        with open(log_path, "ab") as log, host.entered():
            proc = subprocess.Popen(
                [AGENT, "--socket", str(sock), "--data-dir", str(workdir / "data"),
                 "--cni-conf-dir", str(workdir / "conf"), "--metrics-port", "0",
                 "--gc-interval", "0"], stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "NODE_NAME": name})
        self.ws.agents.append(Agent(proc, sock, log_path))
        deadline = time.monotonic() + 60
        while not agent_op(sock, "ping").get("pong"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"xvm-cnid of {name}: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return name

    def config(self, name: str) -> dict[str, Any]:
        workdir = self.ws.tmp / name
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "xvm-cni",
                "model": "routed", "hostInterface": "eth0", "encap": self.encap,
                "clusterCIDR": CLUSTER, "dataDir": str(workdir / "data"),
                "agentSocket": str(workdir / "agent" / "xvm-cnid.sock"),
                "controlPlane": {"type": "kubernetes",
                                 "kubeconfig": str(self.cluster.kubeconfig)}}

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """One API request, retried on a timeout (a loaded 2-core machine)."""
        for attempt in range(3):
            try:
                return self.cluster.request(method, path, body, timeout=30, **kw)
            except (TimeoutError, urllib.error.URLError) as exc:
                if isinstance(exc, urllib.error.HTTPError) or attempt == 2:
                    raise
                self.progress(f"{method} {path}: {exc}; again")
        return None

    def register(self, name: str) -> None:
        """What a kubelet does: the Node, then its status.addresses."""
        self.request("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        address = self.hosts[name].address.split("/")[0]
        self.request("PATCH", f"/api/v1/nodes/{name}/status", {"status": {
            "addresses": [{"type": "InternalIP", "address": address}]}},
            content_type="application/merge-patch+json")

    def cidr_assigned(self, name: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.request("GET", f"/api/v1/nodes/{name}")
            if (node.get("spec") or {}).get("podCIDRs"):
                return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError(f"{name} got no pod CIDR")

    def add_pod(self, name: str, timeout: float = 60) -> float:
        """ADD one pod on ``name``, retried until its agent knows the pod CIDR; when."""
        pod = self.ws.add_netns("xkp")
        plumbing.bring_up_lo(netns_path(pod))
        stdin = json.dumps(self.config(name)).encode()
        deadline = time.monotonic() + timeout
        self.add_failures: list[str] = []
        while True:
            env = invoke.cni_env("ADD", f"c-{name}", netns_path(pod), cni_path=CNI_PATH,
                                 path=PATH, agent_socket=str(self.config(name)["agentSocket"]))
            call = invoke.run(self.plugin, stdin, env, host=self.hosts[name].path)
            if call.rc == 0:
                address = call.json()["ips"][0]["address"].split("/")[0]
                self.pods[name] = (netns_path(pod), address)
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"ADD on {name}: {call.stdout} {call.stderr[-500:]}")
            self.add_failures.append(call.stdout.strip()[:200])
            time.sleep(0.05)

    def all_reach(self, target: str, sources: list[str],
                  timeout: float = 120) -> tuple[float, str]:
        """When the last of ``sources``' pods got an echo reply from ``target``'s pod,
        and which source that was."""
        address = self.pods[target][1]

        def until_reply(src: str) -> tuple[float, str]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if icmp.ping(self.pods[src][0], address, timeout=0.1, tries=1):
                    return time.monotonic(), src
            raise RuntimeError(f"{src} never reached {target} ({address})")

        with ThreadPoolExecutor(max_workers=min(16, len(sources))) as pool:
            return max(pool.map(until_reply, sources))

    def keep_log(self, name: str, dest: Path) -> None:
        """A copy of ``name``'s agent log (the workspace is removed at the end)."""
        dest.mkdir(parents=True, exist_ok=True)
        source = self.ws.tmp / name / "agent.log"
        dest.joinpath(f"{name}-agent.log").write_bytes(source.read_bytes())


def measure(nodes: int, rounds: int, encap: str = "vxlan",
            progress: Progress = lambda line: None,
            settle: Callable[[], object] = lambda: None,
            slow: float = 3.0, logs: Path | None = None) -> dict[str, list[float]]:
    """Samples (seconds) of convergence and its parts at ``nodes`` existing nodes.
    ``settle`` runs before each round (the etcd figures wait for a quiet machine too);
    a round slower than ``slow`` seconds names its last pod's host and, with ``logs``,
    keeps that host's and the new host's agent logs there."""
    # The machine's neighbour table holds every simulated host's entries (see
    # xvmcni.lab.neightable): sized before the first host, put back after the last.
    neightable.ensure_room(nodes + rounds, 1, progress)
    try:
        return _measure(nodes, rounds, encap, progress, settle, slow, logs)
    finally:
        neightable.restore_if_last(progress)


def _measure(nodes: int, rounds: int, encap: str, progress: Progress,
             settle: Callable[[], object], slow: float,
             logs: Path | None) -> dict[str, list[float]]:
    with Workspace() as ws:
        bench = Bench(ws, encap, progress)
        names = [bench.new_host() for _ in range(nodes)]
        for name in names:
            bench.register(name)
        for name in names:
            bench.add_pod(name)
        progress(f"{nodes} nodes up, each with a pod; checking they reach n1")
        bench.all_reach("n1", names[1:])
        samples: dict[str, list[float]] = {"converged": [], "cidr": [], "add": []}
        for r in range(rounds):
            new = bench.new_host()
            settle()
            began = time.monotonic()
            bench.register(new)
            cidr = bench.cidr_assigned(new)
            added = bench.add_pod(new)
            done, last = bench.all_reach(new, names)
            if done - began > slow:
                progress(f"N={nodes} round {r + 1}: slow; the last to reach {new} was "
                         f"{last}" + (f", agent logs kept in {logs}" if logs else ""))
                if logs is not None:
                    for host in (last, new):
                        bench.keep_log(host, logs / f"n{nodes}-r{r + 1}")
            samples["converged"].append(done - began)
            samples["cidr"].append(cidr - began)
            samples["add"].append(added - began)
            progress(f"N={nodes} round {r + 1}: converged in {done - began:.2f} s "
                     f"(CIDR {cidr - began:.2f} s, ADD {added - began:.2f} s after "
                     f"{len(bench.add_failures)} refused ADDs"
                     + (f", last: {bench.add_failures[-1]}" if bench.add_failures else "")
                     + ")")
            names.append(new)
        return samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="10,50", help="existing node counts (default 10,50)")
    p.add_argument("--rounds", type=int, default=5, help="new nodes per size (default 5)")
    p.add_argument("--encap", choices=["vxlan", "none"], default="vxlan")
    p.add_argument("--out", default=str(RESULTS_DIR / "convergence_k8s.json"))
    args = p.parse_args()
    require_root()
    reason = skip_reason()
    if reason:
        sys.exit(f"convergence_k8s: {reason}")
    install_signal_handlers()
    load_before = os.getloadavg()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: dict[int, dict[str, list[float]]] = {}
    for n in (int(x) for x in args.nodes.split(",")):
        results[n] = measure(n, args.rounds, args.encap, progress)
    rows = [[str(n), str(len(s["converged"])),
             *(fmt(percentile(s[k], q), 2) for k in ("converged", "cidr", "add")
               for q in (50, 99))] for n, s in results.items()]
    print(table(["nodes", "rounds", "converged p50 s", "p99 s", "CIDR p50 s", "p99 s",
                 "ADD p50 s", "p99 s"], rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"encap": args.encap, "load_before": load_before,
                               "machine": machine(),
                               "samples": {str(n): s for n, s in results.items()}},
                              indent=1))


if __name__ == "__main__":
    main()
