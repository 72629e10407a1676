"""Run real podman containers on a simulated host (a network namespace), for e2e tests.

A ``PodmanRig`` owns one private podman world under a temporary directory:

* its own ``containers.conf`` (passed through ``CONTAINERS_CONF``) and ``storage.conf``
  (``CONTAINERS_STORAGE_CONF``): runc, cgroupfs, ``default_ulimits = []``, file locks,
  no event log, the CNI network backend with *our* plugin directories and a network
  config directory holding only the networks the test wrote;
* its own ``--root`` (storage driver vfs), ``tmp_dir``, ``HOME`` and ``XDG_*``
  directories under the ``tmp_dir`` it is given, and a ``--runroot`` in a short
  /tmp/xvmrig.* directory (podman wants runroot paths under 50 characters), so
  nothing under /etc/containers, /var/lib/containers, /run/containers or ~/.config
  is read or written.

Containers run from a tiny root filesystem made of Debian's static busybox
(``/bin/busybox`` from busybox-static, plus one symlink per applet: sh, ping, nc, ip,
wget, ...), started with ``podman run --rootfs``. Why not ``podman import`` of that tree:
podman 4.3 records every imported blob in ``/var/lib/containers/cache/
blob-info-cache-v1.boltdb`` whatever ``--root`` says, i.e. it writes to the machine's
container storage; ``--rootfs`` needs no image store at all, and the network path
(CNI ADD/DEL from podman) is the same.

To run a container "on" a simulated host, podman is started inside that host's
network namespace only: ``nsenter --net=/run/netns/<host> podman ...``. Not
``ip netns exec``: it remounts /sys, which hides the cgroup mounts runc needs. Podman
runs the CNI plugins in its own network namespace, so the host side of the
attachment (bridge, veth, VXLAN) lands in the simulated host, and the container gets a
fresh network namespace of its own. For the same reason everything that makes podman
run CNI DEL (``--rm`` at exit, ``stop``, ``cleanup``) is run in the container's host
namespace too.

Outside the temporary directory only two things are touched, both by podman/libcni
itself: the container's network namespace file in /run/netns (removed when the
container goes) and libcni's result cache in /var/lib/cni/results (removed by CNI DEL).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

PODMAN = "podman"
RUNTIME = "runc"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
NETNS_DIR = Path("/run/netns")
SHORT_TMP = "/tmp"
# Applets the tests are expected to use; all applets the binary lists are linked anyway.
ESSENTIAL_APPLETS = ("sh", "ping", "nc", "ip", "ifconfig", "sleep", "cat", "wget")


class RigError(RuntimeError):
    """The rig could not be set up, or podman failed for reasons outside the test."""


def _toml_str(value: str | Path) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value))


def _toml_list(values: Sequence[str | Path]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF":
            return False
        little = head[5] == 1
        is64 = head[4] == 2
        order = "<" if little else ">"
        if is64:
            phoff, = struct.unpack_from(order + "Q", head, 0x20)
            phentsize, phnum = struct.unpack_from(order + "HH", head, 0x36)
        else:
            phoff, = struct.unpack_from(order + "I", head, 0x1C)
            phentsize, phnum = struct.unpack_from(order + "HH", head, 0x2A)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, = struct.unpack(order + "I", f.read(4))
            if p_type == 3:  # PT_INTERP: dynamically linked
                return False
    return True


def find_static_busybox() -> Path | None:
    """Debian's busybox-static binary, or None when only a dynamic busybox (or none) exists."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and _is_static_elf(path):
            return path
    return None


def netns_path(host: str | Path) -> Path:
    """``/run/netns/<host>`` for a name, or the path itself when one is given."""
    text = str(host)
    return Path(text) if "/" in text else NETNS_DIR / text


def build_rootfs(dest: Path, busybox: Path | None = None) -> Path:
    """A root filesystem holding bin/busybox and one symlink per applet."""
    source = busybox or find_static_busybox()
    if source is None:
        raise RigError("no static busybox found (apt-get install busybox-static)")
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    # A copy, never a hard link: a container writing to its rootfs must not reach the host's file.
    shutil.copy2(source, bin_dir / "busybox")
    listed = subprocess.run([str(source), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    for applet in {*listed, *ESSENTIAL_APPLETS} - {"busybox"}:
        if "/" not in applet:
            link = bin_dir / applet
            if not link.exists():
                link.symlink_to("busybox")
    for sub in ("etc", "tmp", "proc", "sys", "dev", "run"):
        (dest / sub).mkdir(exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    return dest


class PodmanRig:
    """A private podman installation whose containers attach through CNI plugins.

    ``cni_bin_dir``: the directory (or directories) podman searches for plugins, e.g. a
    temporary dir holding ``xvm-cni`` (and any delegated IPAM plugin), or ``/usr/lib/cni``.
    ``conflist``: the network, as a CNI conflist dict; its ``name`` is the network name.
    """

    def __init__(
        self,
        tmp_dir: str | Path,
        cni_bin_dir: str | Path | Sequence[str | Path],
        conflist: Mapping[str, Any],
        *,
        podman: str = PODMAN,
        runtime: str = RUNTIME,
    ) -> None:
        if isinstance(cni_bin_dir, (str, Path)):
            self.cni_bin_dirs = [Path(cni_bin_dir)]
        else:
            self.cni_bin_dirs = [Path(d) for d in cni_bin_dir]
        self.podman_bin = podman
        self.base = Path(tmp_dir) / f"podman-rig-{uuid.uuid4().hex[:8]}"
        self.root = self.base / "root"
        # podman refuses a runroot longer than 50 characters (socket paths live below it),
        # so it gets a short directory of its own instead of one inside ``tmp_dir``.
        self.runroot = Path(tempfile.mkdtemp(prefix="xvmrig.", dir=SHORT_TMP))
        self.tmp = self.base / "tmp"
        self.home = self.base / "home"
        self.net_dir = self.base / "net.d"
        self.rootfs = self.base / "rootfs"
        self.containers_conf = self.base / "containers.conf"
        self.storage_conf = self.base / "storage.conf"
        # container name -> host netns it was started in (for DEL in the right namespace)
        self._containers: dict[str, Path] = {}
        self._cleaned = False

        try:
            for d in (self.root, self.runroot, self.tmp, self.home, self.net_dir):
                d.mkdir(parents=True, exist_ok=True)
            build_rootfs(self.rootfs)
            self.network = self.add_network(conflist)
            self._write_configs(runtime)
        except BaseException:
            _rmtree(self.base)
            _rmtree(self.runroot)
            raise

    # -- configuration -----------------------------------------------------------------

    def add_network(self, conflist: Mapping[str, Any]) -> str:
        """Write a conflist into the rig's network config dir; returns the network name."""
        name = conflist.get("name")
        if not isinstance(name, str) or not name:
            raise RigError("the conflist needs a \"name\"")
        if not isinstance(conflist.get("plugins"), list):
            raise RigError("the conflist needs a \"plugins\" list")
        (self.net_dir / f"{name}.conflist").write_text(json.dumps(conflist, indent=2) + "\n")
        return name

    def _write_configs(self, runtime: str) -> None:
        self.containers_conf.write_text(
            "\n".join([
                "[containers]",
                "default_ulimits = []",
                'log_driver = "k8s-file"',
                "",
                "[engine]",
                'cgroup_manager = "cgroupfs"',
                f"runtime = {_toml_str(runtime)}",
                'events_logger = "none"',
                'lock_type = "file"',
                f"tmp_dir = {_toml_str(self.tmp)}",
                f"image_copy_tmp_dir = {_toml_str(self.tmp)}",
                f"volume_path = {_toml_str(self.root / 'volumes')}",
                "",
                "[network]",
                'network_backend = "cni"',
                f"cni_plugin_dirs = {_toml_list(self.cni_bin_dirs)}",
                f"network_config_dir = {_toml_str(self.net_dir)}",
                f"default_network = {_toml_str(self.network)}",
                "",
            ])
        )
        self.storage_conf.write_text(
            "\n".join([
                "[storage]",
                'driver = "vfs"',
                f"graphroot = {_toml_str(self.root)}",
                f"runroot = {_toml_str(self.runroot)}",
                "",
            ])
        )

    def env(self) -> dict[str, str]:
        """The environment every podman call of this rig gets."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CONTAINERS_", "XDG_", "REGISTRY_AUTH"))}
        env.update(
            CONTAINERS_CONF=str(self.containers_conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            TMPDIR=str(self.tmp),
        )
        return env

    # -- running podman ----------------------------------------------------------------

    def podman(
        self,
        args: Sequence[str],
        *,
        host: str | Path | None = None,
        isolated: bool = False,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman <global options> args``.

        ``host``: run podman inside that network namespace (name or path).
        ``isolated``: run it in a brand-new empty network namespace instead, so a CNI DEL
        whose host is gone cannot act on the machine's own namespace.
        """
        argv = [self.podman_bin, "--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", "vfs", *args]
        if host is not None:
            path = netns_path(host)
            if not path.exists():
                raise RigError(f"network namespace {path} does not exist")
            argv = ["nsenter", f"--net={path}", "--", *argv]
        elif isolated:
            argv = ["unshare", "--net", "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(),
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RigError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def _new_name(self) -> str:
        return f"xvmrig-{uuid.uuid4().hex[:10]}"

    def _run_args(self, name: str, network: str | None, extra: Sequence[str],
                  argv: Sequence[str]) -> list[str]:
        return ["--name", name, "--network", network or self.network, *extra,
                "--rootfs", str(self.rootfs), *argv]

    def run(
        self,
        host: str | Path,
        argv: Sequence[str],
        network: str | None = None,
        *,
        extra: Sequence[str] = (),
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """``podman run --rm --network <network> <busybox rootfs> argv...`` on ``host``.

        Returns the CompletedProcess (stdout/stderr as text); its returncode is the
        command's exit status, or podman's own (125-127) when podman failed.
        """
        name = self._new_name()
        self._containers[name] = netns_path(host)
        try:
            return self.podman(["run", "--rm", *self._run_args(name, network, extra, argv)],
                               host=host, timeout=timeout)
        except subprocess.TimeoutExpired:
            self._remove(name)
            raise
        finally:
            if not self._exists(name):
                self._containers.pop(name, None)

    def start(
        self,
        host: str | Path,
        argv: Sequence[str] = ("sleep", "3600"),
        network: str | None = None,
        *,
        extra: Sequence[str] = (),
        name: str | None = None,
        timeout: float = 120,
    ) -> str:
        """Start a detached container on ``host``; returns its name (stop it with ``stop``)."""
        name = name or self._new_name()
        self._containers[name] = netns_path(host)
        proc = self.podman(["run", "--detach", *self._run_args(name, network, extra, argv)],
                           host=host, timeout=timeout)
        if proc.returncode != 0:
            self._remove(name)
            raise RigError(f"podman run --detach failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
        return name

    def exec(self, name: str, argv: Sequence[str],
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``podman exec`` in a running container (joins its namespaces; no CNI involved)."""
        return self.podman(["exec", name, *argv], timeout=timeout)

    def address(self, name: str, network: str | None = None) -> str:
        """The IPv4 address podman recorded for the container on ``network``."""
        proc = self.podman(["inspect", "--format", "{{json .NetworkSettings.Networks}}", name],
                           check=True)
        networks = json.loads(proc.stdout)
        entry = networks.get(network or self.network) or {}
        address = entry.get("IPAddress", "")
        if not address:
            raise RigError(f"container {name} has no address on {network or self.network}: "
                           f"{proc.stdout.strip()}")
        return str(address)

    def stop(self, name: str) -> subprocess.CompletedProcess[str]:
        """Remove a container (stop + CNI DEL), in the namespace of the host it runs on."""
        return self._remove(name)

    def _exists(self, name: str) -> bool:
        return self.podman(["container", "exists", name], timeout=60).returncode == 0

    def _remove(self, name: str) -> subprocess.CompletedProcess[str]:
        host = self._containers.pop(name, None)
        args = ["rm", "--force", "--ignore", "--time", "0", name]
        if host is not None and host.exists():
            return self.podman(args, host=host, timeout=60)
        return self.podman(args, isolated=True, timeout=60)

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove every container (CNI DEL in its host namespace), then the whole rig.

        Safe to call twice and after failures half-way through; never raises for
        podman errors, only if the directory cannot be removed.
        """
        if self._cleaned:
            return
        self._cleaned = True
        if self.containers_conf.exists():
            for name in list(self._containers):
                with contextlib.suppress(subprocess.SubprocessError, RigError, OSError):
                    self._remove(name)
            # Anything left (untracked): removed from an empty namespace, never from the
            # machine's own.
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.podman(["rm", "--all", "--force", "--time", "0"], isolated=True, timeout=120)
        for path in (self.base, self.runroot):
            _unmount_below(path)
            _rmtree(path)

    def __enter__(self) -> PodmanRig:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def _unmount_below(base: Path) -> None:
    """Lazily unmount anything podman left mounted under ``base`` (deepest first)."""
    prefix = str(base.resolve()) + "/"
    mounts: list[str] = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    point = fields[4].encode().decode("unicode_escape")
                    if point.startswith(prefix):
                        mounts.append(point)
    except OSError:
        return
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _rmtree(path: Path) -> None:
    """rm -rf that also gets through directories podman left without write permission."""

    def make_writable_and_retry(func: Any, target: str, _exc: Any) -> None:
        parent = os.path.dirname(target)
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
        except OSError:
            pass
        func(target)

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=make_writable_and_retry)
