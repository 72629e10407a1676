"""A private Kubernetes control plane for one test: etcd + kube-apiserver (+
kube-controller-manager with node IPAM) started by the shared
``start-test-cluster.sh``, on ports free for this run, in a temporary workdir,
optionally inside a network namespace (the API server then listens on
``address``, e.g. a lab underlay address, so other namespaces reach it).

The binaries come from the directory named by ``$XVM_TEST_K8S`` (it holds
``kube-apiserver.xz``, ``kube-controller-manager.xz`` and ``start-test-cluster.sh``),
as controller-runtime's envtest uses ``KUBEBUILDER_ASSETS``. They are decompressed
once into ``~/.cache/xvm-cni/k8s/<sha256 of the .xz files>/`` and linked into each
workdir, so a cluster start costs no decompression after the first. Without the
variable, ``require_k8s()`` skips the test and says why.

Everything started is stopped on teardown (the script's own ``stop``, which kills
exactly the PIDs it recorded), even when the test failed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.etcd import ETCDCTL, free_port

K8S_ENV = "XVM_TEST_K8S"
BINARIES = ("kube-apiserver", "kube-controller-manager")
SCRIPT = "start-test-cluster.sh"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xvm-cni" / "k8s"


def assets_dir() -> Path | None:
    """The directory named by $XVM_TEST_K8S, or None when unset."""
    value = os.environ.get(K8S_ENV, "")
    return Path(value).resolve() if value else None


def skip_reason() -> str:
    """Why Kubernetes tests cannot run here; '' when they can."""
    assets = assets_dir()
    if assets is None:
        return (f"${K8S_ENV} is not set (it names the directory holding kube-apiserver.xz, "
                f"kube-controller-manager.xz and {SCRIPT}; .ci/run sets ../shared/k8s)")
    missing = [n for n in (SCRIPT, "kube-apiserver.xz") if not (assets / n).exists()
               and not (assets / n.removesuffix(".xz")).exists()]
    if missing:
        return f"${K8S_ENV}={assets} lacks {', '.join(missing)}"
    if shutil.which("etcd") is None and not os.environ.get("ETCD_BIN"):
        return "etcd is not installed (Debian package etcd-server)"
    if os.geteuid() != 0:
        return "the Kubernetes tests need root (network namespaces)"
    return ""


def require_k8s() -> Path:
    """The assets directory, or skip the calling test with the reason."""
    import pytest
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    assets = assets_dir()
    assert assets is not None
    return assets


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_binaries(assets: Path) -> Path:
    """A directory holding the decompressed binaries, made once per content (keyed by
    the .xz files' sha256) and shared by parallel runs (a lock file serialises the
    first decompression; each binary is written to a temporary name and renamed)."""
    sources = [assets / f"{n}.xz" for n in BINARIES if (assets / f"{n}.xz").exists()]
    key = hashlib.sha256("".join(_sha256(s) for s in sources).encode()).hexdigest()[:16]
    target = CACHE / key
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in BINARIES:
            out = target / name
            if out.exists():
                continue
            xz, plain = assets / f"{name}.xz", assets / name
            tmp = target / f".{name}.{os.getpid()}"
            if xz.exists():
                with lzma.open(xz) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            elif plain.exists():
                shutil.copyfile(plain, tmp)
            else:
                continue  # no controller-manager: the script runs without one
            tmp.chmod(0o755)
            tmp.rename(out)
    return target


def _netns_prefix(netns: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}"] if netns else []


@dataclass
class K8sCluster:
    """One throw-away control plane. ``start()`` / ``stop()``; ``stop_apiserver()`` and
    ``start_apiserver()`` take the API server alone away and back (a real outage)."""

    assets: Path
    workdir: Path
    netns: str = ""
    address: str = "127.0.0.1"
    # Two CIDRs (comma-separated) for dual-stack node CIDRs.
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_mask: int = 24
    # e.g. {"KCM_EXTRA_ARGS": "--node-cidr-mask-size-ipv6=120"}.
    extra_env: Mapping[str, str] = field(default_factory=dict)
    start_kcm: bool = True

    def __post_init__(self) -> None:
        # Free on the machine's loopback: then free in a fresh namespace too.
        self.ports = {"ETCD_CLIENT_PORT": free_port(), "ETCD_PEER_PORT": free_port(),
                      "APISERVER_PORT": free_port(), "KCM_PORT": free_port()}
        self._apiserver_argv: list[str] = []

    # --- what tests use -------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def token(self) -> str:
        return (self.workdir / "admin.token").read_text().strip()

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def server(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.ports['APISERVER_PORT']}"

    @property
    def etcd_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['ETCD_CLIENT_PORT']}"

    def log(self, component: str) -> str:
        path = self.workdir / "logs" / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- lifecycle ------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **{k: str(v) for k, v in self.ports.items()},
               "APISERVER_ADDRESS": self.address, "K8S_BIN_DIR": str(self.assets),
               "CLUSTER_CIDR": self.cluster_cidr,
               "NODE_CIDR_MASK_SIZE": str(self.node_cidr_mask),
               "START_KCM": "1" if self.start_kcm else "0"}
        env.update(self.extra_env)
        return env

    def _script(self, *args: str, netns: str = "") -> subprocess.CompletedProcess[str]:
        argv = [*_netns_prefix(netns), "bash", str(self.assets / SCRIPT), *args,
                str(self.workdir)]
        return subprocess.run(argv, env=self._env(), capture_output=True, text=True,
                              timeout=300, check=False)

    def start(self) -> None:
        bindir = self.workdir / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        cache = cached_binaries(self.assets)
        for name in BINARIES:
            # The script uses an executable it finds in <workdir>/bin as is.
            if (cache / name).exists() and not (bindir / name).exists():
                (bindir / name).symlink_to(cache / name)
        done = self._script("start", netns=self.netns)
        if done.returncode != 0:
            raise RuntimeError(f"start-test-cluster.sh failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")

    def stop(self) -> None:
        # By recorded PID: works even when the namespace is already gone.
        done = self._script("stop")
        if done.returncode != 0:
            raise RuntimeError(f"start-test-cluster.sh stop failed: {done.stderr[-2000:]}")

    def _pid(self, component: str) -> int:
        return int((self.workdir / f"{component}.pid").read_text().split()[0])

    def stop_apiserver(self) -> None:
        """Stop the API server alone (etcd and the controller-manager keep running);
        ``start_apiserver`` brings it back with the same command line."""
        pid = self._pid("kube-apiserver")
        self._apiserver_argv = (Path(f"/proc/{pid}/cmdline").read_bytes()
                                .rstrip(b"\0").decode().split("\0"))
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def start_apiserver(self, timeout: float = 120) -> None:
        assert self._apiserver_argv, "stop_apiserver() first"
        old = self._pid("kube-apiserver")
        with open(self.workdir / "logs" / "kube-apiserver.log", "ab") as log:
            proc = subprocess.Popen([*_netns_prefix(self.netns), *self._apiserver_argv],
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        # The nsenter'd process keeps nsenter's PID (it execs): record it for stop().
        (self.workdir / "kube-apiserver.pid").write_text(f"{proc.pid}\n")
        pids = (self.workdir / "pids").read_text().split()
        (self.workdir / "pids").write_text(
            "".join(f"{proc.pid if p == str(old) else p}\n" for p in pids))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self.get_raw("/readyz") == "ok":
                    return
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready:\n{self.log('kube-apiserver')[-3000:]}")

    # --- direct access --------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        """One API request as the admin token; the decoded JSON reply (run from the
        test's own namespace: with ``netns`` the caller must reach ``address``)."""
        data = None if body is None else json.dumps(body).encode()
        # S310: the URL is always our own https:// server.
        req = urllib.request.Request(self.server + path, data=data, method=method,  # noqa: S310
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": content_type,
                                              "Accept": "application/json"})
        with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as reply:  # noqa: S310
            text = reply.read().decode()
        return json.loads(text) if text.startswith(("{", "[")) else text

    def get_raw(self, path: str) -> str:
        req = urllib.request.Request(self.server + path,  # noqa: S310
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, context=self._ssl(), timeout=5) as reply:  # noqa: S310
            return str(reply.read().decode())

    def etcdctl(self, *args: str) -> str:
        argv = [*_netns_prefix(self.netns), ETCDCTL, "--endpoints", self.etcd_endpoint,
                "--command-timeout=5s", *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True,
                              env={**os.environ, "ETCDCTL_API": "3"}).stdout

    def compact(self) -> int:
        """Compact etcd at its current revision (watches from older revisions then
        get 410 Gone); the revision compacted at."""
        status = json.loads(self.etcdctl("endpoint", "status", "-w", "json"))
        revision = int(status[0]["Status"]["header"]["revision"])
        self.etcdctl("compact", str(revision))
        return revision

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        """A kubeconfig naming this server with a bearer token (for agents)."""
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": self.server,
                                                   "certificate-authority-data": ca}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}]}))
        path.chmod(0o600)
        return path


@contextlib.contextmanager
def running_k8s(netns: str = "", address: str = "127.0.0.1",
                **kwargs: Any) -> Iterator[K8sCluster]:
    """A started cluster for the ``with`` block (skips the test without $XVM_TEST_K8S);
    stopped and its workdir removed afterwards, even on failure."""
    assets = require_k8s()
    workdir = Path(tempfile.mkdtemp(prefix=f"xvm-k8s-{os.getpid()}-"))
    cluster = K8sCluster(assets, workdir, netns, address, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            if os.environ.get("XVM_TEST_KEEP_K8S"):
                print(f"k8s workdir kept: {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
