"""Install xvm-cni onto a host from inside a container (the DaemonSet's init step),
and remove it again.

What lands under the host root (``--host-root``, ``/host`` in the DaemonSet, a
temporary directory in the tests):

- ``opt/xvm-cni/lib-<version>/``: the ``xvmcni`` package and pyroute2, pure Python,
  for the plugin's in-process fallback (used only while the agent is down). One
  directory per version, so the switch to a new version is one rename: the plugin
  file's.
- ``opt/cni/bin/xvm-cni``: the thin plugin (``plugin_file.render``), started by the
  host's own ``python3 -IS`` (``--host-python``); it hands every call to the agent's
  socket, ``/run/xvm-cni/xvm-cnid.sock`` on the host.
- ``etc/cni/net.d/<name>``: the CNI configuration, from ``--config`` (a file, e.g. a
  mounted ConfigMap) or ``$XVM_CNI_CONFIG`` (its JSON text). Written last: a runtime
  takes a node's network as ready once a configuration exists, and the plugin must be
  there by then.

Version-aware, as xcluster-cni's installer: the plugin (and its library) is written
only if absent or of another version (the version is the package version plus a
digest of the installed files, so a rebuilt image with unchanged version number
still upgrades); the configuration only if absent, or ours (it carries an
``xvmCniInstall`` stamp) from another version or another source. A configuration
without our stamp was written by someone else and is never overwritten.

Every file is written to a temporary name in its directory and renamed over the
target: a runtime never reads a half-written plugin or configuration, and a write
that fails half-way leaves the old file (or none) and no temporary behind.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xvmcni
from xvmcni import plugin_file
from xvmcni.errors import CniError

log = logging.getLogger("xvmcni.install")

PLUGIN_NAME = "xvm-cni"
CNI_BIN_DIR = "opt/cni/bin"
CNI_CONF_DIR = "etc/cni/net.d"
LIB_PARENT = "opt/xvm-cni"
LIB_PREFIX = "lib-"
DEFAULT_CONFIG_NAME = "10-xvm.conflist"
CONFIG_ENV = "XVM_CNI_CONFIG"
STAMP_KEY = "xvmCniInstall"
# The plugin file's second line names its version (plugin_file.render's first is the
# shebang).
VERSION_MARK = "# xvm-cni-version: "
# The packages the plugin's in-process fallback imports (both pure Python).
PACKAGES = ("xvmcni", "pyroute2")


@dataclass
class Layout:
    """Where things go, as seen from here (``root``-prefixed) and from the host."""

    root: Path
    config_name: str = DEFAULT_CONFIG_NAME

    @property
    def plugin(self) -> Path:
        return self.root / CNI_BIN_DIR / PLUGIN_NAME

    @property
    def config(self) -> Path:
        return self.root / CNI_CONF_DIR / self.config_name

    @property
    def lib_parent(self) -> Path:
        return self.root / LIB_PARENT

    def lib(self, version: str) -> Path:
        return self.lib_parent / f"{LIB_PREFIX}{version}"

    @staticmethod
    def host_lib(version: str) -> str:
        return f"/{LIB_PARENT}/{LIB_PREFIX}{version}"


@dataclass
class Report:
    """What one run did, one line per step (also logged)."""

    actions: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        log.info("%s", text)
        self.actions.append(text)


class InstallError(Exception):
    """The installation cannot be done as asked (bad configuration, no host python)."""


# --- files -----------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """``data`` at ``path`` by write + fsync + rename; on any failure the temporary file
    is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A leading dot and no .conf/.conflist/.json suffix: libcni never loads it.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _package_files() -> Iterator[tuple[Path, Path]]:
    """(source file, path relative to the lib dir) of every file to ship, sorted."""
    import importlib
    for name in PACKAGES:
        src = Path(importlib.import_module(name).__file__ or "").resolve().parent
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts \
                    and path.suffix not in (".pyc", ".pyo"):
                yield path, Path(src.name) / path.relative_to(src)


@functools.cache  # the shipped files do not change while this process runs
def version() -> str:
    """The package version and a digest of every shipped file (content and name)."""
    digest = hashlib.sha256()
    for path, rel in _package_files():
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{getattr(xvmcni, '__version__', '') or _dist_version()}-{digest.hexdigest()[:12]}"


def _dist_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("xvm-cni")
    except PackageNotFoundError:
        return "0"


def installed_version(layout: Layout) -> str:
    """The version named in the installed plugin file; '' when absent or not ours."""
    try:
        lines = layout.plugin.read_text(errors="replace").splitlines()[:3]
    except FileNotFoundError:
        return ""
    for line in lines:
        if line.startswith(VERSION_MARK):
            return line[len(VERSION_MARK):].strip()
    return ""


def render_plugin(host_python: str, ver: str) -> str:
    text = plugin_file.render(host_python, Layout.host_lib(ver))
    shebang, rest = text.split("\n", 1)
    return f"{shebang}\n{VERSION_MARK}{ver}\n{rest}"


def in_root(root: Path, path: str, hops: int = 40) -> Path | None:
    """``path`` as the host resolves it, seen under ``root``: symbolic links are
    followed inside the root (``/usr/bin/python3 -> /etc/alternatives/python3`` must not
    lead into this container's own /etc). None when it does not resolve."""
    parts = [p for p in path.split("/") if p]
    here = root
    while parts:
        part = parts.pop(0)
        if part == "..":
            here = here.parent if here != root else root
            continue
        nxt = here / part
        if nxt.is_symlink():
            hops -= 1
            if hops < 0:
                return None
            target = os.readlink(nxt)
            if target.startswith("/"):
                here = root
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not nxt.exists():
            return None
        here = nxt
    return here


# --- the library directory -------------------------------------------------------------

def _install_lib(layout: Layout, ver: str, report: Report) -> None:
    target = layout.lib(ver)
    if target.is_dir():
        return
    layout.lib_parent.mkdir(parents=True, exist_ok=True)
    staging = layout.lib_parent / f".{LIB_PREFIX}{ver}.tmp{os.getpid()}"
    try:
        for src, rel in _package_files():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        os.rename(staging, target)  # a directory appears whole, or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.add(f"installed library {target}")


def _remove_libs(layout: Layout, keep: str, report: Report) -> None:
    """Every library directory but ``keep``'s (and stale staging directories)."""
    if not layout.lib_parent.is_dir():
        return
    for path in sorted(layout.lib_parent.iterdir()):
        name = path.name.lstrip(".")
        if not name.startswith(LIB_PREFIX) or path == layout.lib(keep):
            continue
        shutil.rmtree(path)
        report.add(f"removed old library {path}")


# --- the configuration -----------------------------------------------------------------

def load_config(config_file: str, environ: dict[str, str]) -> str:
    """The configuration text: ``config_file``, else $XVM_CNI_CONFIG."""
    if config_file:
        try:
            return Path(config_file).read_text()
        except OSError as exc:
            raise InstallError(f"cannot read the CNI configuration {config_file}: "
                               f"{exc.strerror or exc}") from exc
    text = environ.get(CONFIG_ENV, "")
    if not text.strip():
        raise InstallError(f"no CNI configuration: give --config FILE or ${CONFIG_ENV}")
    return text


def render_config(source: str, ver: str) -> tuple[bytes, dict[str, Any]]:
    """The configuration to write (with our stamp) and the stamp; InstallError when
    it is not a configuration xvm-cni accepts (checked here, not at the first pod)."""
    try:
        data = json.loads(source)
    except ValueError as exc:
        raise InstallError(f"the CNI configuration is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InstallError("the CNI configuration must be a JSON object")
    from xvmcni import networks  # the whole parser: only when installing
    data.pop(STAMP_KEY, None)
    entries = data.get("plugins") if "plugins" in data else [data]
    if not isinstance(entries, list):
        raise InstallError("'plugins' must be a list")
    ours = [e for e in entries if isinstance(e, dict) and e.get("type") == PLUGIN_NAME]
    if not ours:
        raise InstallError(f"the CNI configuration has no plugin of type {PLUGIN_NAME!r}")
    for entry in ours:
        merged = {"cniVersion": data.get("cniVersion"), "name": data.get("name"), **entry}
        try:
            networks.parse({k: v for k, v in merged.items() if v is not None})
        except CniError as err:
            raise InstallError(f"the CNI configuration is not valid: {err.msg}"
                               + (f" ({err.details})" if err.details else "")) from err
    stamp = {"version": ver, "source": hashlib.sha256(source.encode()).hexdigest()[:16]}
    data[STAMP_KEY] = stamp
    return (json.dumps(data, indent=2) + "\n").encode(), stamp


def _installed_stamp(path: Path) -> dict[str, Any] | None:
    """Our stamp in the installed configuration; None when it has none (not ours, or
    unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    stamp = data.get(STAMP_KEY) if isinstance(data, dict) else None
    return stamp if isinstance(stamp, dict) else None


def _install_config(layout: Layout, source: str, ver: str, report: Report) -> None:
    text, stamp = render_config(source, ver)
    path = layout.config
    if path.exists():
        have = _installed_stamp(path)
        if have is None:
            report.add(f"keeping {path}: it was not written by this installer")
            return
        if have == stamp:
            report.add(f"{path} is up to date")
            return
    write_atomic(path, text, 0o644)
    report.add(f"wrote {path}")


# --- install / uninstall ---------------------------------------------------------------

def install(root: Path, source: str, host_python: str = "/usr/bin/python3",
            config_name: str = DEFAULT_CONFIG_NAME) -> Report:
    layout = Layout(root, config_name)
    report = Report()
    ver = version()
    if not host_python.startswith("/"):
        raise InstallError(f"--host-python {host_python!r} must be an absolute path")
    python_here = in_root(root, host_python)
    if python_here is None or not os.access(python_here, os.X_OK):
        raise InstallError(f"the host has no {host_python} (looked under {root}): the "
                           "plugin runs on the host's Python >= 3.10")
    render_config(source, ver)  # refuse a bad configuration before changing anything
    have = installed_version(layout)
    if have == ver and layout.lib(ver).is_dir():
        report.add(f"{layout.plugin} is version {ver} already")
    else:
        _install_lib(layout, ver, report)
        write_atomic(layout.plugin, render_plugin(host_python, ver).encode(), 0o755)
        report.add(f"wrote {layout.plugin} version {ver}"
                   + (f" (was {have})" if have else ""))
    _remove_libs(layout, ver, report)
    _install_config(layout, source, ver, report)
    return report


def uninstall(root: Path, config_name: str = DEFAULT_CONFIG_NAME) -> Report:
    """Remove the plugin (if ours), every library directory and the configuration (if
    ours). State in the data directory (addresses of running pods) is left."""
    layout = Layout(root, config_name)
    report = Report()
    if layout.config.exists():
        if _installed_stamp(layout.config) is not None:
            layout.config.unlink()
            report.add(f"removed {layout.config}")
        else:
            report.add(f"keeping {layout.config}: it was not written by this installer")
    if layout.plugin.exists():
        if installed_version(layout):
            layout.plugin.unlink()
            report.add(f"removed {layout.plugin}")
        else:
            report.add(f"keeping {layout.plugin}: it was not written by this installer")
    _remove_libs(layout, "", report)
    return report


# --- command line ----------------------------------------------------------------------

def add_commands(sub: Any) -> None:
    """``install`` and ``uninstall`` (for xvmctl and this module's own main)."""
    inst = sub.add_parser(
        "install", help="install the plugin and CNI configuration onto a host root",
        description="What the Kubernetes DaemonSet's init container runs: the plugin into "
                    "<host-root>/opt/cni/bin and the configuration into "
                    "<host-root>/etc/cni/net.d, each only if absent or of another version, "
                    "by write-and-rename.")
    uninst = sub.add_parser(
        "uninstall", help="remove what install put onto a host root",
        description="Removes the plugin and its library, and the configuration if this "
                    "installer wrote it. Pod state (dataDir) is left.")
    for p in (inst, uninst):
        p.add_argument("--host-root", type=Path, default=Path("/host"),
                       help="where the host's / is mounted (default %(default)s)")
        p.add_argument("--config-name", default=DEFAULT_CONFIG_NAME,
                       help="file name in <host-root>/etc/cni/net.d (default %(default)s)")
    inst.add_argument("--config", default="",
                      help=f"the CNI configuration file (default: the JSON in ${CONFIG_ENV})")
    inst.add_argument("--host-python", default="/usr/bin/python3",
                      help="the host's python3 (>= 3.10) as the host sees it "
                           "(default %(default)s)")
    inst.set_defaults(func=lambda args: run("install", args, dict(os.environ)))
    uninst.set_defaults(func=lambda args: run("uninstall", args, dict(os.environ)))


def run(action: str, args: argparse.Namespace, environ: dict[str, str]) -> int:
    try:
        if action == "install":
            source = load_config(args.config, environ)
            report = install(args.host_root, source, args.host_python, args.config_name)
        else:
            report = uninstall(args.host_root, args.config_name)
    except (InstallError, OSError) as exc:
        print(f"xvm-cni {action}: {exc}", file=sys.stderr)
        return 1
    for line in report.actions:
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xvmcni.cmd.hostinstall",
                                     description="install xvm-cni onto a host root")
    add_commands(parser.add_subparsers(dest="action", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
