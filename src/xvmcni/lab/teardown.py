"""``lab down``: CNI DEL for every pod, then the agents, the namespaces, the files.

Works on half-made labs and without a state file: namespaces are found by name,
agents by their command line, and enough of the lab is rebuilt from names to send
the DELs a runtime would.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from xvmcni.lab import neightable, plumbing
from xvmcni.lab.agents import lab_agents, stop_lab_agents
from xvmcni.lab.etcdnode import lab_etcds, stop_lab_etcd
from xvmcni.lab.model import Host, Lab, Pod, Progress, load_state, quiet
from xvmcni.lab.names import (
    DEFAULT_NAME,
    LabError,
    check_name,
    host_netns,
    lab_dir,
    split_netns,
    teardown_order,
)
from xvmcni.lab.plugin import find_plugin, plugin_from_configs, run_plugin
from xvmcni.lab.status import lab_netns


@dataclass
class DownReport:
    deleted: list[str] = field(default_factory=list)       # pods whose DEL succeeded
    del_failures: list[str] = field(default_factory=list)
    removed_netns: list[str] = field(default_factory=list)
    removed_dir: bool = False
    leftovers: list[str] = field(default_factory=list)
    agents_stopped: list[int] = field(default_factory=list)   # xvm-cnid pids
    agents_forced: list[int] = field(default_factory=list)    # of those: needed SIGKILL
    etcd_stopped: list[int] = field(default_factory=list)     # the lab's etcd (pids)

    @property
    def clean(self) -> bool:
        return not self.leftovers


def lab_down(name: str = DEFAULT_NAME, plugin: str | None = None,
             progress: Progress = quiet) -> DownReport:
    """Remove lab ``name``: CNI DEL for every pod through the plugin, then the
    hosts' agents, then the namespaces (by state file and by name prefix), then the
    files. A failing DEL is reported and teardown goes on: deleting the namespaces
    removes what the plugin made.
    """
    check_name(name)
    if os.geteuid() != 0:
        raise LabError("the lab needs root", "it removes network namespaces")
    report = DownReport()
    try:
        lab = load_state(name)
    except LabError as exc:
        progress(f"warning: {exc}; removing by name instead")
        lab = None
    present = set(lab_netns(name))
    if lab is None and not present and not lab_dir(name).exists() and not lab_agents(name) \
            and not lab_etcds(name):
        return report

    if lab is None:
        lab = lab_from_names(name, present)
    if plugin or not lab.plugin:
        try:
            lab.plugin = find_plugin(plugin) if plugin else plugin_from_configs(lab)
        except LabError as exc:
            progress(f"warning: {exc}; skipping CNI DEL")
    if lab.plugin and lab.hosts:
        _detach_all(lab, present, report, progress)

    # Before the namespaces: an agent keeps its host's namespace alive, and one left
    # running would serve (and reconcile) a lab that no longer exists.
    stopped = stop_lab_agents(lab, progress)
    report.agents_stopped, report.agents_forced = stopped.stopped, stopped.forced
    # After the agents (their DELs withdraw records from it), before its namespace.
    report.etcd_stopped = stop_lab_etcd(lab, progress).stopped
    from xvmcni.lab import k8s  # --control kubernetes: its processes, by recorded PID
    control = k8s.stop(name)
    if control:
        progress("k8s     stopped etcd, kube-apiserver, controller-manager: "
                 + " ".join(map(str, control)))

    for ns in sorted(set(lab.netns_created) | present, key=teardown_order):
        try:
            if plumbing.remove_netns(ns):
                report.removed_netns.append(ns)
        except plumbing.NetnsError as exc:
            # Keep going: the rest can still go; leftovers are listed at the end.
            progress(f"warning: {exc}")
    if report.removed_netns:
        progress(f"netns   removed {len(report.removed_netns)}: "
                 + " ".join(sorted(report.removed_netns)))
    if lab_dir(name).exists():
        try:
            shutil.rmtree(lab_dir(name))
            report.removed_dir = True
            progress(f"files   removed {lab_dir(name)}")
        except OSError as exc:
            progress(f"warning: cannot remove {lab_dir(name)}: {exc}")

    neightable.restore_if_last(progress)
    report.leftovers = lab_netns(name) + ([str(lab_dir(name))] if lab_dir(name).exists() else [])
    report.leftovers += [f"xvm-cnid pid {pid}" for pid in sorted(lab_agents(name))]
    report.leftovers += [f"etcd pid {pid}" for pid in sorted(lab_etcds(name))]
    return report


def _detach_all(lab: Lab, present: set[str], report: DownReport, progress: Progress) -> None:
    """DEL every attached pod; hosts in parallel, like up. In agent mode the DELs go
    through the agents, which still run. list.append is atomic: the report is safe."""

    def detach_host(host: Host) -> None:
        if host.netns not in present:
            return  # host gone: whatever the plugin made there went with it
        try:
            config = Path(host.config_path).read_bytes()
        except OSError as exc:
            progress(f"detach  {host.name}: no CNI config ({exc.strerror}), skipping DEL")
            return
        for pod in lab.pods_of(host.name):
            if not pod.attached:
                continue
            try:
                run_plugin(lab, "DEL", pod, config)
                report.deleted.append(pod.name)
                progress(f"detach  {pod.name}: {os.path.basename(lab.plugin)} DEL ok")
            except LabError as exc:
                report.del_failures.append(f"{pod.name}: {exc}")
                progress(f"detach  {pod.name}: DEL FAILED: {exc}")

    with ThreadPoolExecutor(max_workers=min(8, len(lab.hosts))) as pool:
        for future in [pool.submit(detach_host, host) for host in lab.hosts]:
            future.result()


def lab_from_names(name: str, present: set[str]) -> Lab:
    """Rebuild enough of a lab from namespace names (no state file) to send DELs:
    container IDs and config paths are derived from names the same way up does."""
    lab = Lab(name=name, plugin="", flavor="xvm", phase="unknown")
    hosts: dict[str, Host] = {}
    for ns in sorted(present):
        parts = split_netns(name, ns)
        if parts is None:
            continue
        host_name, pod_suffix = parts
        if host_name not in hosts:
            host_dir = lab_dir(name) / host_name
            config = next(iter(sorted(host_dir.glob("10-*.conf"))), host_dir / "10-xvm.conf")
            hosts[host_name] = Host(name=host_name, netns=host_netns(name, host_name),
                                    underlay="", config_path=str(config))
        if pod_suffix:
            lab.pods.append(Pod(name=f"{host_name}{pod_suffix}", host=host_name, netns=ns,
                                container_id=f"{name}-{host_name}{pod_suffix}",
                                attached=True))
    lab.hosts = list(hosts.values())
    return lab
