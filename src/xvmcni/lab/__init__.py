"""``xvmctl lab``: several simulated hosts on one machine, wired like a real LAN.

Shape of a lab called ``NAME`` (every object lives in a namespace of its own, the
root namespace is never touched):

    NAME-sw          underlay switch: bridge br0, multicast snooping off,
                     one veth port per host (h1, h2, ...)
    NAME-h<i>        a host: eth0 = 172.30.0.(10+i)/24, MTU 1500, lo up
    NAME-h<i>-p<j>   a pod, attached to its host by running the real plugin
                     executable inside the host's namespace
    NAME-etcd        with --control etcd: etcd on the underlay, 172.30.0.2:2379

Files live under /run/xvm-cni/lab/NAME/: ``state.json`` (what was created, written
after every step so ``down`` works after a crash) and one directory per host with
its CNI config and its own ``dataDir``, so simulated hosts never share state.

Agent mode (the default): like a real installation, every host runs its own node
agent ``xvm-cnid`` inside its namespace (socket ``NAME/h<i>/xvm-cnid.sock``, log
``NAME/h<i>/xvm-cnid.log``, metrics on the host's own 127.0.0.1:9472), and the pods
are attached by the thin plugin ``make install`` would write (``NAME/bin/xvm-cni``),
which hands each ADD to its host's agent. With ``agent=False`` (``--no-agent``) the
plugin does the work in-process.

Modules, each with one job (imports point down this list):

    names     lab names, namespace names, paths (pure; no netlink)
    model     Lab/Host/Pod records, the address plan, the state file
    plumbing  named namespaces and links via pyroute2
    simhost   a simulated host: a netns with eth0 on an underlay switch
    invoke    run a CNI plugin as a runtime does
    plugin    which plugin and config a lab uses; one CNI call for one pod
    procs     xvm-cnid processes by command line; stopping them
    agents    one xvm-cnid per host: start, stop, restart, health
    etcdnode  the lab's etcd (--control etcd) in namespace NAME-etcd
    status    what exists of a lab right now
    teardown  lab down
    build     lab up
    grow      a host joining / leaving a running etcd lab
    icmp      ICMP echo from inside a namespace
    probes    ping matrix and path-MTU check
    view      text rendering

This package resolves its public names on first use, so ``import xvmcni.lab`` (or
``xvmcni.lab.names``) costs no pyroute2: ``xvmctl status`` builds a parser that
knows the lab's defaults without loading the lab.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from xvmcni.lab.names import DEFAULT_NAME, STATE_FILE, LabError, check_name, lab_dir

if TYPE_CHECKING:
    from xvmcni.lab.agents import (
        AGENT_METRICS_PORT,
        AgentAction,
        AgentHealth,
        agent_restart,
        agent_start,
        agent_stop,
        lab_agents,
    )
    from xvmcni.lab.build import lab_up
    from xvmcni.lab.icmp import PingReply, echo, ping, probe
    from xvmcni.lab.model import UNDERLAY_MTU, Host, Lab, PluginError, Pod, load_lab
    from xvmcni.lab.plugin import find_plugin, plugin_flavor
    from xvmcni.lab.probes import GATEWAY, Matrix, MtuCheck, mtu_check, ping_matrix
    from xvmcni.lab.status import LabStatus, known_labs, lab_netns, lab_status
    from xvmcni.lab.teardown import DownReport, lab_down

_WHERE = {
    "xvmcni.lab.agents": ("AGENT_METRICS_PORT", "AgentAction", "AgentHealth", "agent_restart",
                          "agent_start", "agent_stop", "lab_agents"),
    "xvmcni.lab.build": ("lab_up",),
    "xvmcni.lab.icmp": ("PingReply", "echo", "ping", "probe"),
    "xvmcni.lab.model": ("UNDERLAY_MTU", "Host", "Lab", "Pod", "PluginError", "load_lab"),
    "xvmcni.lab.plugin": ("find_plugin", "plugin_flavor"),
    "xvmcni.lab.probes": ("GATEWAY", "Matrix", "MtuCheck", "mtu_check", "ping_matrix"),
    "xvmcni.lab.status": ("LabStatus", "known_labs", "lab_netns", "lab_status"),
    "xvmcni.lab.teardown": ("DownReport", "lab_down"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "AGENT_METRICS_PORT", "DEFAULT_NAME", "GATEWAY", "STATE_FILE", "UNDERLAY_MTU",
    "AgentAction", "AgentHealth", "DownReport", "Host", "Lab", "LabError", "LabStatus",
    "Matrix", "MtuCheck", "PingReply", "PluginError", "Pod", "agent_restart", "agent_start",
    "agent_stop", "check_name", "echo", "find_plugin", "known_labs", "lab_agents", "lab_dir",
    "lab_down", "lab_netns", "lab_status", "lab_up", "load_lab", "mtu_check", "ping",
    "ping_matrix", "plugin_flavor", "probe",
]


def __getattr__(name: str) -> object:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
