"""``lab up --control kubernetes``: a throw-away Kubernetes control plane inside the
lab, and a Node object per simulated host (as its kubelet would register it).

etcd + kube-apiserver + kube-controller-manager (node IPAM) run in namespace
``NAME-k8s`` on the underlay switch at 172.30.0.5, started by the
``start-test-cluster.sh`` found with the binaries in ``$XVM_LAB_K8S`` (else
``$XVM_TEST_K8S``: the directory holding ``kube-apiserver.xz`` etc.), workdir
``<lab dir>/k8s`` (certificates, ``admin.kubeconfig``, logs). The binaries are
decompressed once into ``/var/cache/xvm-cni/k8s/<digest>``. ``lab down`` stops the
processes recorded in ``<lab dir>/k8s/pids`` (only those whose command line names
that directory) before the namespaces go.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from xvmcni.lab import plumbing, simhost
from xvmcni.lab.model import Lab, Progress, router_address
from xvmcni.lab.names import LabError, k8s_netns, lab_dir, netns_path

ASSETS_ENVS = ("XVM_LAB_K8S", "XVM_TEST_K8S")
SCRIPT = "start-test-cluster.sh"
BINARIES = ("kube-apiserver", "kube-controller-manager")
CACHE = Path("/var/cache/xvm-cni/k8s")
ADDRESS = "172.30.0.5"
PORT = 6443
CIDR_WAIT = 60.0


def assets() -> Path:
    for env in ASSETS_ENVS:
        if os.environ.get(env):
            path = Path(os.environ[env])
            if (path / SCRIPT).exists():
                return path
            raise LabError(f"${env}={path} holds no {SCRIPT}")
    raise LabError("--control kubernetes needs the Kubernetes binaries",
                   "set XVM_LAB_K8S to the directory holding kube-apiserver.xz, "
                   f"kube-controller-manager.xz and {SCRIPT}")


def workdir(name: str) -> Path:
    return lab_dir(name) / "k8s"


def _cached(source: Path) -> Path:
    """The decompressed binaries, made once per content of the .xz files."""
    digest = hashlib.sha256()
    for name in BINARIES:
        xz = source / f"{name}.xz"
        if xz.exists():
            digest.update(f"{name}:{xz.stat().st_size}:{xz.stat().st_mtime_ns}".encode())
    target = CACHE / digest.hexdigest()[:16]
    target.mkdir(parents=True, exist_ok=True)
    for name in BINARIES:
        out, xz = target / name, source / f"{name}.xz"
        if out.exists() or not xz.exists():
            continue
        tmp = target / f".{name}.{os.getpid()}"
        with lzma.open(xz) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.chmod(0o755)
        tmp.rename(out)
    return target


def start(lab: Lab, cluster_cidrs: list[str], record: Any, progress: Progress) -> None:
    """The control plane's namespace and processes; LabError when it does not start."""
    source = assets()
    netns = k8s_netns(lab.name)
    simhost.create_host(lab.switch_netns, netns, "k8s", f"{ADDRESS}/24", record=record)
    if lab.underlay == "routed":
        from xvmcni.lab.model import UNDERLAY
        plumbing.add_default_route(netns_path(netns), router_address(UNDERLAY).ip)
    work = workdir(lab.name)
    (work / "bin").mkdir(parents=True, exist_ok=True)
    cache = _cached(source)
    for name in BINARIES:
        if (cache / name).exists():
            (work / "bin" / name).symlink_to(cache / name)
    v6_only = all(":" in c for c in cluster_cidrs)
    env = {**os.environ, "APISERVER_ADDRESS": ADDRESS, "APISERVER_PORT": str(PORT),
           "CLUSTER_CIDR": ",".join(cluster_cidrs), "START_KCM": "1",
           "NODE_CIDR_MASK_SIZE": "64" if v6_only else "24", "K8S_BIN_DIR": str(source)}
    if len(cluster_cidrs) > 1:
        env["NODE_CIDR_MASK_SIZE"] = "0"  # two families: one mask per family instead
        env["KCM_EXTRA_ARGS"] = "--node-cidr-mask-size-ipv4=24 --node-cidr-mask-size-ipv6=64"
    began = time.monotonic()
    with plumbing.inside(netns_path(netns)):
        done = subprocess.run(["bash", str(source / SCRIPT), "start", str(work)], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise LabError("the Kubernetes control plane did not start",
                       (done.stderr or done.stdout)[-1500:])
    progress(f"k8s     {netns}: etcd, kube-apiserver https://{ADDRESS}:{PORT}, "
             f"controller-manager (node IPAM {','.join(cluster_cidrs)}) "
             f"in {time.monotonic() - began:.1f} s; kubeconfig {work / 'admin.kubeconfig'}")


def stop(name: str) -> list[int]:
    """Stop the control plane's processes (those recorded whose command line names its
    workdir); the PIDs stopped."""
    work = workdir(name)
    pids_file = work / "pids"
    if not pids_file.exists():
        return []
    pids = [int(p) for p in pids_file.read_text().split() if p.isdigit()]

    def ours(pid: int) -> bool:
        try:
            return f"{work}/" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(
                b"\0", b" ").decode(errors="replace")
        except OSError:
            return False

    stopped = [p for p in reversed(pids) if ours(p)]
    for pid in stopped:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(ours(p) for p in stopped) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in stopped:
        if ours(pid):
            os.kill(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: wait until each is gone (or a zombie).
    deadline = time.monotonic() + 5
    while any(ours(p) for p in stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in stopped:
        # Ours to reap when this process is their subreaper (the lab's agents' is).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    pids_file.unlink()
    return stopped


def _request(lab: Lab, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> Any:
    work = workdir(lab.name)
    token = (work / "admin.token").read_text().strip()
    # S310: always our own https:// server.
    req = urllib.request.Request(
        f"https://{ADDRESS}:{PORT}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
    context = ssl.create_default_context(cafile=str(work / "pki" / "ca.crt"))
    with plumbing.inside(netns_path(k8s_netns(lab.name))), \
            urllib.request.urlopen(req, context=context, timeout=10) as reply:  # noqa: S310
        return json.loads(reply.read() or b"null")


def register_nodes(lab: Lab, progress: Progress) -> None:
    """A Node per host (name h<i>, InternalIP its eth0 address), then wait until the
    controller-manager gave each its pod CIDRs."""
    for host in lab.hosts:
        _request(lab, "POST", "/api/v1/nodes",
                 {"apiVersion": "v1", "kind": "Node", "metadata": {"name": host.name}})
        _request(lab, "PATCH", f"/api/v1/nodes/{host.name}/status", {"status": {
            "addresses": [{"type": "InternalIP", "address": host.underlay.split("/")[0]},
                          {"type": "Hostname", "address": host.name}]}},
            content_type="application/merge-patch+json")
    deadline = time.monotonic() + CIDR_WAIT
    missing = [h.name for h in lab.hosts]
    while missing:
        nodes = _request(lab, "GET", "/api/v1/nodes")["items"]
        given = {n["metadata"]["name"]: n.get("spec", {}).get("podCIDRs") for n in nodes}
        missing = [m for m in missing if not given.get(m)]
        if missing and time.monotonic() > deadline:
            raise LabError(f"Nodes {' '.join(missing)} got no pod CIDRs in {CIDR_WAIT:.0f}s",
                           f"see {workdir(lab.name) / 'logs'}")
        time.sleep(0.1)
    progress(f"nodes   {len(lab.hosts)} Node objects registered, pod CIDRs assigned")
