"""Hosts joining and leaving a running lab with ``--control etcd``.

With etcd no other host's configuration names a new host: it claims its pod CIDR
(or address blocks), publishes itself and is found through the watch, so a lab can
grow by one host at a time (``bench/convergence.py`` measures how fast the others
learn about it). A host's pods can be attached before its agent runs (the thin
plugin then works in-process), so that the agent's start is the moment the host
appears to the cluster.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from xvmcni.lab import neightable, plumbing, procs, simhost
from xvmcni.lab.agents import lab_agents, spawn_agent, wait_agent_ready
from xvmcni.lab.build import apply_result, make_host
from xvmcni.lab.model import (
    MAX_HOSTS,
    Host,
    Lab,
    Progress,
    StateFile,
    load_lab,
    new_host,
    new_pod,
    quiet,
)
from xvmcni.lab.names import LabError
from xvmcni.lab.plugin import run_plugin


def add_host(name: str, pods: int = 1, *, agent: bool = True, index: int = 0,
             progress: Progress = quiet) -> tuple[Lab, Host]:
    """Host ``h<index>`` (default: highest + 1) with ``pods`` attached pods; its agent
    started (and answering) when ``agent``, else not yet (``start_agent``). Everything
    is recorded in state.json before it is made: ``lab down`` removes it, also after a
    failure."""
    lab = load_lab(name)
    if lab.control != "etcd" or not lab.agent:
        raise LabError(f"lab {name} cannot grow", "only a lab made with --control etcd can: "
                       "with static peers every host's config lists every host")
    index = index or max((int(h.name[1:]) for h in lab.hosts), default=0) + 1
    if any(h.name == f"h{index}" for h in lab.hosts):
        raise LabError(f"lab {name} already has host h{index}")
    if not 1 <= index <= MAX_HOSTS:
        raise LabError(f"lab {name} has no host address left", f"at most {MAX_HOSTS} hosts")
    state = StateFile(lab)

    def record(ns: str) -> None:
        lab.netns_created.append(ns)
        state.save()

    host = new_host(lab.name, index, lab.underlay == "routed")
    lab.hosts.append(host)
    state.save()
    neightable.ensure_room(len(lab.hosts), pods, progress)
    make_host(lab, host, index, record, progress)
    for j in range(1, pods + 1):
        pod = new_pod(lab.name, host.name, j)
        lab.pods.append(pod)
        record(pod.netns)
        plumbing.bring_up_lo(plumbing.create_netns(pod.netns))
    config_text = Path(host.config_path).read_text()
    for pod in lab.pods_of(host.name):
        pod.attached = True
        state.save()
        apply_result(pod, run_plugin(lab, "ADD", pod, config_text.encode()),
                     json.loads(config_text))
        state.save()
        progress(f"attach  {pod.name}: ADD -> {pod.address}")
    if agent:
        start_agent(lab, host)
    return lab, host


def start_agent(lab: Lab, host: Host) -> int:
    """Start the host's agent, record it, wait until it answers; its pid."""
    host.agent_pid = spawn_agent(lab, host)
    StateFile(lab).save()
    wait_agent_ready(lab, host, host.agent_pid)
    return host.agent_pid


def remove_host(lab: Lab, host_name: str, progress: Progress = quiet) -> None:
    """Take a host out of the lab as an operator would drain it: DEL its pods (through
    its agent, which withdraws its record from etcd once no pod is left), stop the
    agent, remove its namespaces and files. ``lab`` is updated and saved."""
    host = lab.host(host_name)
    config = Path(host.config_path).read_bytes()
    for pod in lab.pods_of(host.name):
        if pod.attached:
            run_plugin(lab, "DEL", pod, config)
            pod.attached = False
    sock = lab.agent_socket(host.name)
    pids = {pid: s for pid, s in lab_agents(lab.name).items() if s == sock}
    stopped = procs.stop(pids)
    if stopped.survivors:
        raise LabError(f"xvm-cnid of {host.name} survived SIGKILL",
                       "pids " + " ".join(map(str, stopped.survivors)))
    gone = [p.netns for p in lab.pods_of(host.name)] + [host.netns]
    failed = simhost.remove_all(gone)
    if failed:
        raise LabError(f"cannot remove namespaces of {host.name}", " ".join(failed))
    lab.pods = [p for p in lab.pods if p.host != host.name]
    lab.hosts = [h for h in lab.hosts if h.name != host.name]
    lab.netns_created = [ns for ns in lab.netns_created if ns not in gone]
    StateFile(lab).save()
    try:
        shutil.rmtree(lab.state_dir / host.name)
    except OSError as exc:  # harmless: lab down removes the whole directory
        progress(f"warning: cannot remove {lab.state_dir / host.name}: {exc}")
    progress(f"host    {host.name} removed")
