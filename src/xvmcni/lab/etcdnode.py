"""The lab's etcd (``--control etcd``): Debian's etcd-server in namespace ``NAME-etcd``,
cabled to the underlay like a host (172.30.0.2), data and log under ``<lab>/etcd/``.

It runs in a session of its own so that it outlives ``up``; ``down`` finds it
again by pid (state.json) or by its command line (an etcd whose ``--data-dir``
lies under the lab's directory, so also after a crash) and stops it before the
namespaces and files go.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import time
from pathlib import Path

from xvmcni.lab import plumbing, procs, simhost
from xvmcni.lab.model import (
    ETCD_CLIENT_PORT,
    UNDERLAY,
    UNDERLAY_MTU,
    Lab,
    Progress,
    StateFile,
    etcd_address,
    etcd_endpoint,
    router_address,
)
from xvmcni.lab.names import ETCD_DIR, LabError, etcd_netns, lab_dir, netns_path

ETCD_ENV = "XVM_LAB_ETCD"       # another etcd binary (e.g. 3.5) instead of Debian's
ETCD_PORT_NAME = "etcd"         # its port on the underlay switch
PEER_URL = "http://127.0.0.1:2380"   # a one-member cluster: peers only on its loopback
START_TIMEOUT = 30.0


def etcd_binary() -> str:
    path = os.environ.get(ETCD_ENV) or shutil.which("etcd") or "/usr/bin/etcd"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise LabError("--control etcd needs etcd, which is not installed",
                       f"apt-get install etcd-server, or point ${ETCD_ENV} at an etcd binary")
    return path


def data_dir(name: str) -> Path:
    return lab_dir(name) / ETCD_DIR / "data"


def log_path(name: str) -> Path:
    return lab_dir(name) / ETCD_DIR / "etcd.log"


def etcd_argv(binary: str, data: Path) -> list[str]:
    """One member listening on the underlay and on its own loopback (health checks).
    Short heartbeat and election timeouts: a one-member cluster elects itself at
    once instead of after a second."""
    client = etcd_endpoint()
    local = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
    return [binary, "--name", "lab", "--data-dir", str(data),
            "--listen-client-urls", f"{client},{local}", "--advertise-client-urls", client,
            "--listen-peer-urls", PEER_URL, "--initial-advertise-peer-urls", PEER_URL,
            "--initial-cluster", f"lab={PEER_URL}", "--log-level", "warn",
            "--heartbeat-interval", "50", "--election-timeout", "500"]


def start_etcd(lab: Lab, state: StateFile, record: simhost.Record, progress: Progress) -> None:
    """etcd's namespace on the first underlay subnet (with a routed underlay, a default
    route via the router for the hosts behind it), then etcd, until it is healthy."""
    binary = etcd_binary()
    netns = etcd_netns(lab.name)
    simhost.create_host(lab.switch_netns, netns, ETCD_PORT_NAME, str(etcd_address()),
                        UNDERLAY_MTU, record)
    if lab.underlay == "routed":
        plumbing.add_default_route(netns_path(netns), router_address(UNDERLAY).ip)
    data = data_dir(lab.name)
    data.mkdir(parents=True, mode=0o700)
    began = time.monotonic()
    try:
        with open(log_path(lab.name), "ab") as log, plumbing.inside(netns_path(netns)):
            proc = subprocess.Popen(etcd_argv(binary, data), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, cwd="/", start_new_session=True)
    except OSError as exc:
        raise LabError(f"cannot start {binary}", str(exc)) from exc
    lab.etcd_pid = procs.adopt(proc)
    state.save()  # recorded before it is up: a crash now still finds it
    _wait_healthy(lab.name, lab.etcd_pid)
    progress(f"etcd    {netns}: {binary} pid {lab.etcd_pid} serves {etcd_endpoint()} "
             f"({time.monotonic() - began:.1f} s), data {data}")


def healthy(name: str) -> bool:
    """etcd's /health says true, asked from inside its namespace."""
    try:
        with plumbing.inside(netns_path(etcd_netns(name))):
            conn = http.client.HTTPConnection("127.0.0.1", ETCD_CLIENT_PORT, timeout=2.0)
            try:
                conn.request("GET", "/health")
                reply = conn.getresponse()
                body = reply.read()
            finally:
                conn.close()
    except (OSError, http.client.HTTPException, plumbing.NetnsError):
        return False  # not listening yet, or gone: the caller decides which
    return reply.status == 200 and b'"true"' in body


def _wait_healthy(name: str, pid: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(name):
        if not procs.alive(pid):
            raise LabError(f"etcd (pid {pid}) exited while starting", procs.tail(log_path(name)))
        if time.monotonic() > deadline:
            raise LabError(f"etcd (pid {pid}) not healthy within {timeout:g} s",
                           procs.tail(log_path(name)))
        time.sleep(0.05)


def lab_etcds(name: str) -> dict[int, str]:
    """Running etcd processes of lab ``name`` (pid -> data dir), by command line."""
    # Only the lab's own etcd (<lab>/etcd/): a --control kubernetes lab's etcd lives
    # under <lab>/k8s/ and is stopped with its API server by lab/k8s.py, after it.
    return procs.etcds_under(lab_dir(name) / ETCD_DIR)


def stop_lab_etcd(lab: Lab, progress: Progress) -> procs.Stopped:
    """Stop the lab's etcd: found by command line and by recorded pid."""
    pids = lab_etcds(lab.name)
    recorded = str(data_dir(lab.name))
    if lab.etcd_pid and lab.etcd_pid not in pids and procs.is_etcd(lab.etcd_pid, recorded):
        pids[lab.etcd_pid] = recorded
    if not pids:
        return procs.Stopped()
    result = procs.stop(pids, still=procs.is_etcd)
    progress(f"etcd    stopped pid {' '.join(map(str, sorted(pids)))}"
             + (" (SIGKILL)" if result.forced else ""))
    for pid in result.survivors:
        progress(f"warning: etcd pid {pid} survived SIGKILL")
    return result
