"""``lab up``: the underlay switch, the hosts (each with its config, dataDir and in
agent mode its xvm-cnid), the pods, and a CNI ADD for every pod.

On any failure (Ctrl-C included) what this call made is removed again.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from xvmcni import plugin_file
from xvmcni.lab import neightable, plumbing, simhost
from xvmcni.lab.agents import count_served, lab_agents, start_agents
from xvmcni.lab.etcdnode import etcd_binary, lab_etcds, start_etcd
from xvmcni.lab.model import (
    MAX_HOSTS,
    MAX_PODS,
    POD_IFNAME,
    SECOND_UNDERLAY,
    UNDERLAY,
    UNDERLAY_MTU,
    Host,
    Lab,
    PluginError,
    Pod,
    Progress,
    StateFile,
    new_host,
    new_pod,
    quiet,
    router_address,
)
from xvmcni.lab.names import (
    DEFAULT_NAME,
    PLUGIN_DIR,
    LabError,
    check_name,
    lab_dir,
    router_netns,
    second_switch_netns,
)
from xvmcni.lab.plugin import (
    config_file_name,
    find_plugin,
    host_config,
    plugin_flavor,
    pod_config,
    run_plugin,
)
from xvmcni.lab.status import lab_netns
from xvmcni.lab.teardown import lab_down

MODELS = ("l2", "routed", "macvlan")
ENCAPS = ("vxlan", "none", "auto")
UNDERLAYS = ("flat", "routed")
FAMILIES = ("ipv4", "ipv6", "dual")
CONTROLS = ("none", "etcd", "kubernetes")


def lab_up(name: str = DEFAULT_NAME, hosts: int = 3, pods: int = 2, plugin: str | None = None,
           progress: Progress = quiet, agent: bool = True, model: str = "l2",
           encap: str = "vxlan", underlay: str = "flat", family: str = "ipv4",
           control: str = "none") -> Lab:
    """Build the lab and attach every pod; on failure remove what this call made.

    ``agent``: start one ``xvm-cnid`` per host and, unless ``plugin`` names another
    one, attach through the thin plugin (written to ``<lab>/bin/xvm-cni``) that hands
    every ADD to its host's agent. Without: ``plugin`` or the in-process xvm-cni.
    The reference ``bridge`` plugin never gets agents.

    ``model``: the network model of the hosts' config (``l2``, or ``routed`` with a
    pod CIDR per host, ``encap`` vxlan | none | auto, and every host listed as a
    static peer). ``underlay``: ``flat`` (one subnet) or ``routed`` (odd hosts in
    172.30.0.0/24, even ones in 172.30.1.0/24, behind a router carrying no multicast).
    ``control``: ``none`` (l2 floods by multicast, routed lists every host as a static
    peer) or ``etcd`` (an etcd in namespace ``NAME-etcd`` on the underlay; every
    agent publishes its host and watches the others, routed hosts claim their pod
    CIDRs and l2 hosts their address blocks from it, l2 floods by unicast) or
    ``kubernetes`` (routed model: a Node object per host in a Kubernetes control plane
    run inside the lab, lab/k8s.py).

    Raises ``LabError`` (``PluginError`` when the plugin refused an ADD).
    """
    if model not in MODELS:
        raise LabError(f"--model {model!r} is not a lab model", "use " + " or ".join(MODELS))
    if encap not in ENCAPS:
        raise LabError(f"--encap {encap!r} is unknown", "use " + ", ".join(ENCAPS))
    if underlay not in UNDERLAYS:
        raise LabError(f"--underlay {underlay!r} is unknown", "use " + " or ".join(UNDERLAYS))
    if family not in FAMILIES:
        raise LabError(f"--family {family!r} is unknown", "use " + ", ".join(FAMILIES))
    if model == "routed" and encap == "none" and (underlay != "flat" or family != "ipv4"):
        # Plain routes need a next hop on the host's own subnet, of the pods' family.
        raise LabError("--encap none needs --underlay flat and --family ipv4",
                       "the lab's underlay is IPv4, and a host behind the router is no "
                       "direct next hop; --encap auto tunnels exactly those")
    if control not in CONTROLS:
        raise LabError(f"--control {control!r} is unknown", "use " + " or ".join(CONTROLS))
    if control == "kubernetes" and model != "routed":
        raise LabError("--control kubernetes needs --model routed")
    if family != "ipv4" and model not in ("routed", "macvlan"):
        raise LabError(f"--family {family} needs --model routed or macvlan",
                       "the l2 model carries IPv4 only")
    check_name(name)
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"--hosts {hosts} is out of range", f"allowed: 1..{MAX_HOSTS}")
    if not 1 <= pods <= MAX_PODS:
        raise LabError(f"--pods {pods} is out of range", f"allowed: 1..{MAX_PODS}")
    if os.geteuid() != 0:
        raise LabError("the lab needs root", "it creates network namespaces")
    thin = agent and not plugin
    if control == "etcd":
        if not agent or (plugin and plugin_flavor(find_plugin(plugin)) != "xvm"):
            raise LabError("--control etcd needs xvm-cni with its agents",
                           "the agents publish the hosts and watch each other in etcd")
        etcd_binary()  # fail before building anything when etcd is missing
    plugin_path = str(lab_dir(name) / PLUGIN_DIR / "xvm-cni") if thin else find_plugin(plugin)
    if model == "macvlan" and plugin_flavor(plugin_path) != "xvm":
        raise LabError("--model macvlan needs the xvm-cni plugin")
    if lab_dir(name).exists() or lab_netns(name):
        raise LabError(f"lab {name!r} already exists",
                       f"remove it first: xvmctl lab down --name {name}")
    stray = lab_agents(name) or lab_etcds(name)
    if stray:
        raise LabError(f"processes of an earlier lab {name!r} still run "
                       f"(pids {' '.join(map(str, sorted(stray)))})",
                       f"remove them first: xvmctl lab down --name {name}")

    flavor = plugin_flavor(plugin_path)
    lab = Lab(name=name, plugin=plugin_path, flavor=flavor, agent=agent and flavor == "xvm",
              model=model, encap=encap, underlay=underlay, family=family, control=control)
    lab.state_dir.mkdir(parents=True, mode=0o700)
    state = StateFile(lab)
    state.save()
    try:
        if thin:
            plugin_file.write(Path(plugin_path))
            progress(f"plugin  {plugin_path}: the thin plugin of make install "
                     "(python3 -IS, hands each call to its host's xvm-cnid)")
        _build(lab, state, hosts, pods, progress)
    except BaseException:
        # Ctrl-C included: leave nothing half-made behind.
        progress("cleaning up after the failure")
        try:
            report = lab_down(name, progress=progress)
            if report.leftovers:
                progress("cleanup incomplete, left: " + " ".join(report.leftovers))
        except (LabError, OSError) as exc:
            # Report and fall through: the original failure is what the user needs.
            progress(f"cleanup incomplete: {exc}; run: xvmctl lab down --name {name}")
        raise
    return lab


def _build(lab: Lab, state: StateFile, hosts: int, pods: int, progress: Progress) -> None:
    def record(ns: str) -> None:
        # Saved before creation: a crash between the two still gets it removed.
        lab.netns_created.append(ns)
        state.save()

    started = time.monotonic()
    routed = lab.underlay == "routed"
    neightable.ensure_room(hosts, pods, progress)
    simhost.create_switch(lab.switch_netns, record)
    progress(f"switch  {lab.switch_netns}: bridge {plumbing.SWITCH_BRIDGE}, "
             "multicast snooping off")
    if routed:
        _build_router(lab, record, progress)
    if lab.control == "etcd":
        start_etcd(lab, state, record, progress)

    if lab.control == "kubernetes":
        from xvmcni.lab import k8s
        from xvmcni.lab.plugin import ROUTED_CLUSTER
        k8s.start(lab, ROUTED_CLUSTER[lab.family], record, progress)

    # Every host's record first: a routed config lists all hosts as peers.
    lab.hosts.extend(new_host(lab.name, i, routed) for i in range(1, hosts + 1))
    for i, host in enumerate(lab.hosts, start=1):
        make_host(lab, host, i, record, progress)

    if lab.control == "kubernetes":
        k8s.register_nodes(lab, progress)
    if lab.agent:
        start_agents(lab, state, progress)

    for host in lab.hosts:
        for j in range(1, pods + 1):
            pod = new_pod(lab.name, host.name, j)
            lab.pods.append(pod)
            record(pod.netns)
            plumbing.bring_up_lo(plumbing.create_netns(pod.netns))
    progress(f"pods    {len(lab.pods)} namespaces created ({lab.name}-h<i>-p<j>)")

    _attach_all(lab, state, progress)
    if lab.agent:
        count_served(lab, progress)
    lab.phase = "up"
    state.save()
    progress(f"lab {lab.name} is up ({time.monotonic() - started:.1f} s)")


def make_host(lab: Lab, host: Host, index: int, record: Callable[[str], None],
              progress: Progress) -> None:
    """Host ``h<index>``: its directory, CNI config and dataDir, its namespace cabled
    to its subnet's switch (and, on a routed underlay, a default route via the router)."""
    host_dir = lab.state_dir / host.name
    (host_dir / "data").mkdir(parents=True)
    config = host_config(lab, index, host_dir)
    host.config_path = str(host_dir / config_file_name(lab.flavor))
    host.data_dir = str(config.get("dataDir") or config["ipam"]["dataDir"])
    Path(host.config_path).write_text(json.dumps(config, indent=2) + "\n")
    switch = _switch_of(lab, host)
    simhost.create_host(switch, host.netns, host.name, host.underlay, UNDERLAY_MTU, record)
    if lab.underlay == "routed":
        subnet = ipaddress.IPv4Interface(host.underlay).network
        plumbing.add_default_route(host.netns_path, router_address(subnet).ip)
    progress(f"host    {host.netns}: eth0 {host.underlay} on {switch} port {host.name}, "
             f"config {host.config_path}")


def _switch_of(lab: Lab, host: Host) -> str:
    if lab.underlay == "routed" and ipaddress.IPv4Interface(host.underlay) in SECOND_UNDERLAY:
        return second_switch_netns(lab.name)
    return lab.switch_netns


def _build_router(lab: Lab, record: Callable[[str], None], progress: Progress) -> None:
    second = second_switch_netns(lab.name)
    simhost.create_switch(second, record)
    legs = [(lab.switch_netns, "rt", str(router_address(UNDERLAY))),
            (second, "rt", str(router_address(SECOND_UNDERLAY)))]
    simhost.create_router(router_netns(lab.name), legs, record)
    progress(f"router  {router_netns(lab.name)}: {legs[0][2]} on {lab.switch_netns}, "
             f"{legs[1][2]} on {second}; forwards unicast, never multicast")


def _attach_all(lab: Lab, state: StateFile, progress: Progress) -> None:
    """ADD every pod: hosts in parallel (they are separate machines), pods of one
    host one after another (as a runtime starting containers would)."""
    plugin_name = os.path.basename(lab.plugin)
    failed = threading.Event()

    def attach_host(host: Host) -> None:
        config_text = Path(host.config_path).read_text()
        config = json.loads(config_text)
        for pod in lab.pods_of(host.name):
            if failed.is_set():
                return  # another host failed: stop adding, cleanup follows
            pod.attached = True
            state.save()
            began = time.monotonic()
            try:
                result = run_plugin(lab, "ADD", pod,
                                    pod_config(lab, pod, config_text).encode())
                apply_result(pod, result, config)
            except BaseException as exc:
                failed.set()
                if isinstance(exc, PluginError):
                    progress(f"attach  {pod.name}: {plugin_name} ADD FAILED: {exc.plugin_msg}")
                raise
            state.save()
            progress(f"attach  {pod.name}: {plugin_name} ADD -> {pod.address} "
                     f"({(time.monotonic() - began) * 1000:.0f} ms)")

    with ThreadPoolExecutor(max_workers=min(8, len(lab.hosts))) as pool:
        futures = [pool.submit(attach_host, host) for host in lab.hosts]
        errors = [f.exception() for f in futures]
    for exc in errors:
        if exc is not None:
            raise exc


def result_fields(pod: Pod, result: dict[str, Any] | None, config: dict[str, Any]) -> None:
    """Address, gateway and MAC of an ADD result into ``pod``; PluginError without ips."""
    ips = (result or {}).get("ips") or []
    if not ips or not isinstance(ips[0], dict) or "address" not in ips[0]:
        raise PluginError("ADD", pod.name, None, "result has no ips[0].address",
                          json.dumps(result)[:300])
    pod.address = str(ipaddress.ip_interface(ips[0]["address"]))
    pod.gateway = str(ips[0].get("gateway") or config.get("gateway") or "")
    pod.addresses = [str(ipaddress.ip_interface(ip["address"])) for ip in ips
                     if isinstance(ip, dict) and "address" in ip]
    pod.gateways = [str(ip.get("gateway") or "") for ip in ips
                    if isinstance(ip, dict) and "address" in ip]
    for iface in (result or {}).get("interfaces") or []:
        if isinstance(iface, dict) and iface.get("sandbox") and iface.get("name") == POD_IFNAME:
            pod.mac = str(iface.get("mac", ""))


def apply_result(pod: Pod, result: dict[str, Any] | None, config: dict[str, Any]) -> None:
    """``result_fields``, then the MTU the pod's eth0 really got (from the kernel)."""
    result_fields(pod, result, config)
    for link in plumbing.links(pod.netns_path):
        if link.name == POD_IFNAME:
            pod.mtu = link.mtu
