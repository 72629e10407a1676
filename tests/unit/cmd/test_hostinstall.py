"""The DaemonSet's installer against a temporary host root: fresh install, same
version untouched, upgrade, foreign files kept, uninstall, and interrupted writes
that leave neither a partial file nor a temporary one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xvmcni.cmd import hostinstall
from xvmcni.cmd.hostinstall import InstallError, Layout

CONFIG = json.dumps({
    "cniVersion": "1.0.0", "name": "k8s-pods",
    "plugins": [{"type": "xvm-cni", "model": "routed", "podCIDR": "10.244.1.0/24",
                 "hostInterface": "eth0",
                 "clusterCIDR": "10.244.0.0/16", "k8sReadAnnotations": True},
                {"type": "portmap", "capabilities": {"portMappings": True}}]})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    (host / "usr/bin").mkdir(parents=True)
    fake_python(host / "usr/bin/python3")
    return host


def fake_python(path: Path) -> None:
    """The host's interpreter, as far as the installer looks: an executable file."""
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (but the fake python) with its inode and mtime."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() \
                and path.relative_to(root).parts[0] != "usr":
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns)
    return out


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


def test_fresh_install(root: Path) -> None:
    report = hostinstall.install(root, CONFIG)
    layout = Layout(root)
    ver = hostinstall.version()
    assert os.access(layout.plugin, os.X_OK)
    assert hostinstall.installed_version(layout) == ver
    assert (layout.lib(ver) / "xvmcni" / "commands.py").is_file()
    assert (layout.lib(ver) / "pyroute2" / "__init__.py").is_file()
    assert not list(layout.lib(ver).rglob("__pycache__"))
    plugin = layout.plugin.read_text()
    assert plugin.startswith("#!/usr/bin/python3 -IS\n")
    assert f"sys.path.insert(0, '/opt/xvm-cni/lib-{ver}')" in plugin  # the host's path
    written = json.loads(layout.config.read_text())
    assert written["xvmCniInstall"]["version"] == ver
    assert written["plugins"] == json.loads(CONFIG)["plugins"]
    assert len(report.actions) == 3 and not temporaries(root)


def test_the_installed_plugin_runs_on_a_bare_python(root: Path) -> None:
    """The host's python (no venv, no site) answers VERSION and imports the in-process
    path from the shipped library alone."""
    hostinstall.install(root, CONFIG)
    layout = Layout(root)
    lib = layout.lib(hostinstall.version())
    text = layout.plugin.read_text().replace("'/opt/xvm-cni/", f"'{root}/opt/xvm-cni/")
    out = subprocess.run([sys.executable, "-IS", "-c", text], input=b'{"cniVersion":"1.0.0"}',
                         env={"CNI_COMMAND": "VERSION"}, capture_output=True, check=True)
    assert json.loads(out.stdout)["cniVersion"] == "1.0.0"
    probe = (f"import sys; sys.path.insert(0, {str(lib)!r}); import xvmcni.cmd.plugin, "
             "pyroute2; print(pyroute2.__file__)")
    out = subprocess.run([sys.executable, "-IS", "-c", probe], capture_output=True,
                         check=True, text=True)
    assert out.stdout.startswith(str(lib))


def test_same_version_touches_nothing(root: Path) -> None:
    hostinstall.install(root, CONFIG)
    before = files(root)
    report = hostinstall.install(root, CONFIG)
    assert files(root) == before
    assert any("already" in a for a in report.actions)
    assert any("up to date" in a for a in report.actions)


def test_upgrade_replaces_plugin_library_and_our_config(root: Path) -> None:
    layout = Layout(root)
    old = "0.0.9-oldoldoldold"
    (layout.lib(old) / "xvmcni").mkdir(parents=True)
    layout.plugin.parent.mkdir(parents=True)
    layout.plugin.write_text(hostinstall.render_plugin("/usr/bin/python3", old))
    text, _ = hostinstall.render_config(CONFIG, old)
    layout.config.parent.mkdir(parents=True)
    layout.config.write_bytes(text)
    assert hostinstall.installed_version(layout) == old

    hostinstall.install(root, CONFIG)
    ver = hostinstall.version()
    assert hostinstall.installed_version(layout) == ver
    assert not layout.lib(old).exists() and layout.lib(ver).is_dir()
    assert json.loads(layout.config.read_text())["xvmCniInstall"]["version"] == ver


def test_a_changed_configmap_rewrites_our_config(root: Path) -> None:
    hostinstall.install(root, CONFIG)
    changed = json.loads(CONFIG)
    changed["plugins"][0]["mtu"] = 1400
    hostinstall.install(root, json.dumps(changed))
    assert json.loads(Layout(root).config.read_text())["plugins"][0]["mtu"] == 1400


def test_a_foreign_config_is_kept_and_a_foreign_plugin_replaced(root: Path) -> None:
    layout = Layout(root)
    layout.config.parent.mkdir(parents=True)
    layout.config.write_text('{"cniVersion": "1.0.0", "name": "mine", "plugins": []}')
    layout.plugin.parent.mkdir(parents=True)
    layout.plugin.write_text("#!/bin/sh\necho an older hand-installed plugin\n")
    report = hostinstall.install(root, CONFIG)
    assert "mine" in layout.config.read_text()
    assert any("not written by this installer" in a for a in report.actions)
    assert hostinstall.installed_version(layout) == hostinstall.version()


@pytest.mark.parametrize("source, why", [
    ("{not json", "not JSON"),
    ('{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}]}', "no plugin"),
    ('{"cniVersion": "1.0.0", "name": "x", "type": "xvm-cni", "model": "nope"}', "not valid"),
])
def test_a_bad_configuration_changes_nothing(root: Path, source: str, why: str) -> None:
    with pytest.raises(InstallError, match=why):
        hostinstall.install(root, source)
    assert files(root) == {}


def test_no_host_python_changes_nothing(root: Path) -> None:
    (root / "usr/bin/python3").unlink()
    with pytest.raises(InstallError, match="python"):
        hostinstall.install(root, CONFIG)
    assert files(root) == {}


def test_uninstall(root: Path) -> None:
    hostinstall.install(root, CONFIG)
    state = root / "var/lib/cni/xvm-cni/k8s-pods/ipam.db"
    state.parent.mkdir(parents=True)
    state.write_text("pods' addresses")
    report = hostinstall.uninstall(root)
    layout = Layout(root)
    assert not layout.plugin.exists() and not layout.config.exists()
    assert not list(layout.lib_parent.iterdir())
    assert state.exists() and len(report.actions) == 3
    assert hostinstall.uninstall(root).actions == []  # twice is fine


def test_uninstall_keeps_what_is_not_ours(root: Path) -> None:
    layout = Layout(root)
    layout.config.parent.mkdir(parents=True)
    layout.config.write_text('{"name": "mine"}')
    layout.plugin.parent.mkdir(parents=True)
    layout.plugin.write_text("#!/bin/sh\n")
    hostinstall.uninstall(root)
    assert layout.config.exists() and layout.plugin.exists()


def _fail_midway(monkeypatch: pytest.MonkeyPatch, name: str, after: int) -> None:
    """Make ``os.<name>`` fail from its ``after``-th call on (a full disk, a kill)."""
    real = getattr(os, name)
    calls = {"n": 0}

    def broken(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(28, "No space left on device")
        if name == "write":  # write half of what was asked
            fd, data = args
            return real(fd, bytes(data[: max(1, len(data) // 2)]))
        return real(*args)

    monkeypatch.setattr(os, name, broken)


@pytest.mark.parametrize("name, after", [("write", 1), ("fsync", 0), ("replace", 0)])
def test_an_interrupted_config_write_leaves_the_old_file(
        root: Path, monkeypatch: pytest.MonkeyPatch, name: str, after: int) -> None:
    hostinstall.install(root, CONFIG)
    layout = Layout(root)
    before = layout.config.read_bytes()
    changed = CONFIG.replace("10.244.1.0/24", "10.244.2.0/24")
    with monkeypatch.context() as m:
        _fail_midway(m, name, after)
        with pytest.raises(OSError):
            hostinstall._install_config(layout, changed, hostinstall.version(),
                                        hostinstall.Report())
    assert layout.config.read_bytes() == before
    assert not temporaries(root)


def test_an_interrupted_fresh_plugin_write_leaves_no_file(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        _fail_midway(m, "write", 1)
        with pytest.raises(OSError):
            hostinstall.write_atomic(Layout(root).plugin, b"x" * 100_000, 0o755)
    assert not Layout(root).plugin.exists() and not temporaries(root)


def test_an_interrupted_library_copy_leaves_no_directory(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.copyfile
    calls = {"n": 0}

    def copy(src: Any, dst: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(shutil, "copyfile", copy)
    with pytest.raises(OSError):
        hostinstall.install(root, CONFIG)
    layout = Layout(root)
    assert not layout.plugin.exists() and not layout.config.exists()
    assert list(layout.lib_parent.iterdir()) == []


def test_command_line(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "cm.conflist"
    conf.write_text(CONFIG)
    assert hostinstall.main(["install", "--host-root", str(root), "--config", str(conf)]) == 0
    assert "wrote" in capsys.readouterr().out
    env_args = ["install", "--host-root", str(root), "--config-name", "20-x.conflist"]
    args = hostinstall_args(env_args)
    assert hostinstall.run("install", args, {hostinstall.CONFIG_ENV: CONFIG}) == 0
    assert (root / "etc/cni/net.d/20-x.conflist").exists()
    assert hostinstall.run("install", hostinstall_args(["install", "--host-root", str(root)]),
                           {}) == 1
    assert "XVM_CNI_CONFIG" in capsys.readouterr().err
    assert hostinstall.main(["uninstall", "--host-root", str(root)]) == 0


def hostinstall_args(argv: list[str]) -> Any:
    import argparse
    parser = argparse.ArgumentParser()
    hostinstall.add_commands(parser.add_subparsers(dest="action"))
    return parser.parse_args(argv)


def test_the_configmaps_configuration_is_accepted() -> None:
    """The configuration deploy/kubernetes ships passes the installer's validation (so
    the init container does not refuse it on every node)."""
    import yaml

    from xvmcni import networks
    if "kubernetes" not in networks.CONTROL_PLANES:
        pytest.skip("the kubernetes control plane is not in this tree yet (issue 9, item 1)")
    manifest = Path(__file__).resolve().parents[3] / "deploy/kubernetes/configmap.yaml"
    source = yaml.safe_load(manifest.read_text())["data"]["10-xvm.conflist"]
    text, stamp = hostinstall.render_config(source, "1")
    assert json.loads(text)["plugins"][0]["type"] == "xvm-cni" and stamp["version"] == "1"


def test_the_host_python_is_found_through_links_inside_the_root(root: Path) -> None:
    """Debian links /usr/bin/python3 relatively, other systems through an absolute
    /etc/alternatives link: both resolve inside the host root, not in ours."""
    (root / "usr/bin/python3").unlink()
    fake_python(root / "usr/bin/python3.11")
    (root / "etc/alternatives").mkdir(parents=True)
    (root / "etc/alternatives/python3").symlink_to("/usr/bin/python3.11")
    (root / "usr/bin/python3").symlink_to("/etc/alternatives/python3")
    assert hostinstall.in_root(root, "/usr/bin/python3") == root / "usr/bin/python3.11"
    hostinstall.install(root, CONFIG)
    # An absolute link that exists only outside the root is not taken for the host's.
    (root / "usr/bin/python3").unlink()
    (root / "usr/bin/python3").symlink_to("/usr/bin/env")
    assert hostinstall.in_root(root, "/usr/bin/python3") is None
    loop = root / "usr/bin/loop"
    loop.symlink_to("loop")
    assert hostinstall.in_root(root, "/usr/bin/loop") is None
