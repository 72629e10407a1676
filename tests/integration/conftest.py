"""Fixtures for integration tests: a simulated host (its own netns with an eth0 on
an underlay) and pod namespaces, all named uniquely per run and removed even when
a test fails. Tests drive the real ``xvm-cni`` executable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

PLUGIN = str(Path(sys.executable).with_name("xvm-cni"))
CNI_PATH = "/usr/lib/cni:/opt/cni/bin"
ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid():x}{uuid.uuid4().hex[:6]}"


@dataclass
class Outcome:
    rc: int
    out: dict[str, Any] | None
    stdout: str
    stderr: str


@dataclass
class Host:
    name: str
    underlay: str
    address: str
    data_dir: Path
    pods: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def config(self, version: str = "1.0.0", **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": version, "name": "xvm-network", "type": "xvm-cni",
            "hostInterface": "eth0", "vxlanID": 10, "mtu": 1500,
            "subnet": "10.244.0.0/16", "gateway": "10.244.0.1",
            "dataDir": str(self.data_dir),
        }
        conf.update(overrides)
        return {k: v for k, v in conf.items() if v is not None}

    def new_pod(self) -> str:
        name = unique("xtp")
        ip("netns", "add", name)
        self.pods.append(name)
        return f"/run/netns/{name}"

    def cni(self, command: str, config: dict[str, Any] | bytes, container: str = "c1",
            netns: str = "", ifname: str = "eth0", args: str = "",
            env: dict[str, str] | None = None) -> Outcome:
        stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
        environ = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                   "CNI_COMMAND": command, "CNI_CONTAINERID": container,
                   "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": args,
                   "CNI_PATH": CNI_PATH}
        if env is not None:
            environ = {**{"PATH": environ["PATH"]}, **env}
        proc = subprocess.run(["nsenter", f"--net={self.path}", PLUGIN], input=stdin,
                              env=environ, capture_output=True, timeout=60, check=False)
        text = proc.stdout.decode()
        try:
            parsed = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            pytest.fail(f"plugin printed non-JSON on stdout: {text!r}\n{proc.stderr.decode()}")
        return Outcome(proc.returncode, parsed, text, proc.stderr.decode())

    def add(self, config: dict[str, Any], container: str, netns: str, **kw: Any) -> dict[str, Any]:
        res = self.cni("ADD", config, container, netns, **kw)
        assert res.rc == 0, f"ADD failed: {res.stdout} {res.stderr}"
        assert res.out is not None
        return res.out

    def in_ns(self, netns_path: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={netns_path}", *argv], capture_output=True,
                              text=True, timeout=30, check=False)

    def links(self) -> dict[str, dict[str, Any]]:
        data = json.loads(ip("-d", "-j", "-n", self.name, "link", "show"))
        return {link["ifname"]: link for link in data}

    def nft_tables(self) -> list[str]:
        out = self.in_ns(self.path, "nft", "-j", "list", "tables").stdout
        return [f"{i['table']['family']} {i['table']['name']}"
                for i in json.loads(out or '{"nftables": []}')["nftables"] if "table" in i]

    def snapshot(self) -> dict[str, Any]:
        """What a failed call must leave untouched."""
        files = sorted(str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*")) \
            if self.data_dir.exists() else []
        return {"links": sorted(self.links()), "nft": self.nft_tables(), "files": files,
                "pod_links": {p: ip("-n", p, "-o", "link", "show").count("\n")
                              for p in self.pods}}


def make_host(tmp_path: Path, address: str = "172.30.0.11/24") -> Host:
    host = Host(name=unique("xth"), underlay=unique("xtu"), address=address,
                data_dir=tmp_path / "data")
    ip("netns", "add", host.name)
    ip("netns", "add", host.underlay)
    ip("link", "add", "eth0", "netns", host.name, "type", "veth", "peer", "name", "up0",
       "netns", host.underlay)
    ip("-n", host.name, "addr", "add", address, "dev", "eth0")
    for ns, dev in ((host.name, "eth0"), (host.name, "lo"), (host.underlay, "up0")):
        ip("-n", ns, "link", "set", dev, "up")
    return host


def destroy_host(host: Host) -> None:
    for name in [*host.pods, host.name, host.underlay]:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    shutil.rmtree(host.data_dir, ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    h = make_host(tmp_path)
    try:
        yield h
    finally:
        destroy_host(h)
