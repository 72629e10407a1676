"""The plugin a lab attaches its pods with: which executable, which configuration
each host gets, and one CNI call for one pod (``run_plugin``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from xvmcni.controlplane.etcdconfig import HOSTNAME_ENV
from xvmcni.lab import invoke, plumbing
from xvmcni.lab.model import POD_IFNAME, Lab, PluginError, Pod, etcd_endpoint
from xvmcni.lab.names import PLUGIN_DIR, LabError

PLUGIN_TIMEOUT = invoke.TIMEOUT

# The seed's configuration, verbatim except dataDir (per simulated host).
XVM_CONFIG: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "xvm-network",
    "type": "xvm-cni",
    "hostInterface": "eth0",
    "vxlanID": 10,
    "mtu": 1500,
    "subnet": "10.244.0.0/16",
    "gateway": "10.244.0.1",
}


def find_plugin(explicit: str | None = None) -> str:
    """The plugin executable: ``explicit``, else ``xvm-cni`` next to this Python
    (the venv's bin), else on PATH."""
    if explicit:
        path = os.path.abspath(explicit)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise LabError(f"plugin {explicit!r} is not an executable file")
        return path
    # Not resolved: a venv's python is a symlink, its bin/ is what we want.
    beside = Path(sys.executable).parent / "xvm-cni"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("xvm-cni")
    if found:
        return os.path.abspath(found)
    raise LabError("cannot find the xvm-cni plugin executable",
                   "install the package (pip install -e .) or pass --plugin PATH")


def plugin_flavor(plugin: str) -> str:
    """Which configuration the plugin gets: the reference ``bridge`` plugin (to tell
    lab problems from plugin problems) or xvm-cni's seed format for anything else."""
    return "bridge" if os.path.basename(plugin) == "bridge" else "xvm"


def host_config(lab: Lab, index: int, host_dir: Path) -> dict[str, Any]:
    """Host ``h<index>``'s CNI configuration, with a dataDir of its own."""
    data_dir = str(host_dir / "data")
    if lab.flavor == "bridge":
        # Reference plugins: one subnet per host, so only same-host pods meet.
        return {"cniVersion": "1.0.0", "name": "xvm-lab-reference", "type": "bridge",
                "bridge": "br0", "isGateway": True,
                "ipam": {"type": "host-local", "subnet": f"10.88.{index}.0/24",
                         "dataDir": data_dir}}
    if lab.model == "macvlan":
        config = macvlan_config(lab, data_dir)
    elif lab.model == "l2":
        config = {**XVM_CONFIG, "dataDir": data_dir}
    elif lab.control == "etcd":
        config = routed_etcd_config(lab, data_dir)
    else:
        config = routed_config(lab, index, data_dir)
    if lab.control == "etcd":
        config["controlPlane"] = etcd_section()
    if lab.agent:
        config["agentSocket"] = lab.agent_socket(host_dir.name)
    return config


ETCD_TTL = 10
ROUTED_CLUSTER = {"ipv4": ["10.244.0.0/16"], "ipv6": ["fd00:10:244::/48"],
                  "dual": ["10.244.0.0/16", "fd00:10:244::/48"]}


def pod_cidrs(index: int, family: str = "ipv4") -> list[str]:
    """Host ``h<index>``'s pod CIDRs in a routed lab: 10.244.<index>.0/24 and/or
    fd00:10:244:<index>::/64."""
    v4, v6 = f"10.244.{index}.0/24", f"fd00:10:244:{index:x}::/64"
    return {"ipv4": [v4], "ipv6": [v6], "dual": [v4, v6]}[family]


def routed_config(lab: Lab, index: int, data_dir: str) -> dict[str, Any]:
    """The routed model with a static control plane: every host lists every host
    (each skips its own entry), as an operator without etcd would write it."""
    if lab.control == "kubernetes":
        return k8s_config(lab, index, data_dir)
    peers = [{"name": h.name, "address": h.underlay.split("/")[0],
              "podCIDRs": pod_cidrs(int(h.name[1:]), lab.family)} for h in lab.hosts]
    return {"cniVersion": "1.0.0", "name": "xvm-routed", "type": "xvm-cni",
            "model": "routed", "hostInterface": "eth0",
            "podCIDR": pod_cidrs(index, lab.family),
            "clusterCIDR": ROUTED_CLUSTER[lab.family], "encap": lab.encap, "vxlanID": 10,
            "mtu": 1500, "dataDir": data_dir,
            "controlPlane": {"type": "static", "peers": peers}}


# The macvlan lab's networks (seed 004): pod j of every host joins
# MACVLAN_NETWORKS[(j - 1) % 2], so with two pods per host every host routes into both.
MACVLAN_NETWORKS = ("blue", "red")
MACVLAN_SUBNETS = {"blue": ("10.10.0.0/16", "fd00:10:10::/64"),
                   "red": ("10.20.0.0/16", "fd00:10:20::/64")}


def macvlan_network(pod_index: int) -> str:
    return MACVLAN_NETWORKS[(pod_index - 1) % len(MACVLAN_NETWORKS)]


def macvlan_config(lab: Lab, data_dir: str) -> dict[str, Any]:
    """The macvlan model in the seed's own spelling (``vxlans``), every host listed
    as a static peer so each routes to the others' slices; pods pick their network
    through ``args.annotations`` (``pod_config``)."""
    wanted = {"ipv4": (0,), "ipv6": (1,), "dual": (0, 1)}[lab.family]
    vxlans = [{"id": 100 + i * 10, "name": name,
               "cidr": [MACVLAN_SUBNETS[name][k] for k in wanted],
               "options": {"vtepdev": "eth0"}}
              for i, name in enumerate(MACVLAN_NETWORKS, start=1)]
    peers = [{"name": h.name, "address": h.underlay.split("/")[0]} for h in lab.hosts]
    return {"cniVersion": "1.0.0", "name": "xvm-macvlan", "type": "xvm-cni",
            "model": "macvlan", "vxlans": vxlans, "defaultNetwork": MACVLAN_NETWORKS[0],
            "dataDir": data_dir, "controlPlane": {"type": "static", "peers": peers}}


def pod_config(lab: Lab, pod: Pod, config_text: str) -> str:
    """The configuration one pod's ADD gets: the host's, plus (macvlan) the seed's
    per-pod annotation that names the pod's network."""
    if lab.model != "macvlan":
        return config_text
    config = json.loads(config_text)
    network = macvlan_network(int(pod.name.rsplit("-p", 1)[1]))
    config["args"] = {"annotations": {"vxlan-cni.phdata.io/NetworkName": network}}
    return json.dumps(config)


def routed_etcd_config(lab: Lab, data_dir: str) -> dict[str, Any]:
    """The routed model with etcd: no 'podCIDR', every host claims its own from the
    cluster CIDR (a /24 and/or a /64) and finds the others in etcd."""
    return {"cniVersion": "1.0.0", "name": "xvm-routed", "type": "xvm-cni",
            "model": "routed", "hostInterface": "eth0",
            "clusterCIDR": ROUTED_CLUSTER[lab.family], "encap": lab.encap, "vxlanID": 10,
            "mtu": 1500, "dataDir": data_dir}


def etcd_section() -> dict[str, Any]:
    """``controlPlane`` of a lab with ``--control etcd``: its own etcd, so the default
    prefix; a short TTL so a host that goes disappears from its peers quickly."""
    return {"type": "etcd", "endpoints": [etcd_endpoint()], "ttl": ETCD_TTL}


def k8s_config(lab: Lab, index: int, data_dir: str) -> dict[str, Any]:
    """The routed model following the lab's Kubernetes Nodes: no pod CIDR written, the
    Node h<index> (its agent's nodeName) has the one the controller-manager gave it."""
    return {"cniVersion": "1.0.0", "name": "xvm-routed", "type": "xvm-cni",
            "model": "routed", "hostInterface": "eth0",
            "clusterCIDR": ROUTED_CLUSTER[lab.family], "encap": lab.encap, "vxlanID": 10,
            "mtu": 1500, "dataDir": data_dir,
            "controlPlane": {"type": "kubernetes", "nodeName": f"h{index}",
                             "kubeconfig": str(lab.state_dir / "k8s" / "admin.kubeconfig")}}


def config_file_name(flavor: str) -> str:
    return "10-xvm.conf" if flavor == "xvm" else "10-reference.conf"


def plugin_from_configs(lab: Lab) -> str:
    """Without a state file, pick the plugin the way a runtime does: by the config's
    ``type``, xvm-cni where ``find_plugin`` looks, anything else in CNI_PATH."""
    for host in lab.hosts:
        try:
            kind = json.loads(Path(host.config_path).read_text()).get("type")
        except (OSError, ValueError, AttributeError):
            continue
        if kind == "xvm-cni" or not isinstance(kind, str):
            # The thin plugin of agent mode, when up wrote one: DELs reach the agents.
            thin = lab.state_dir / PLUGIN_DIR / "xvm-cni"
            if thin.is_file() and os.access(thin, os.X_OK):
                return str(thin)
            break
        for directory in invoke.CNI_PATH.split(":"):
            candidate = os.path.join(directory, os.path.basename(kind))
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise LabError(f"plugin {kind!r} not found in {invoke.CNI_PATH}")
    return find_plugin()


def run_plugin(lab: Lab, command: str, pod: Pod, config: bytes,
               timeout: float = PLUGIN_TIMEOUT) -> dict[str, Any] | None:
    """Run the plugin once, as a runtime would, inside the pod's host namespace; the
    result object (None when the plugin printed nothing).

    Raises ``PluginError`` (with the request, to reproduce it by hand) when the
    plugin failed or answered nonsense, ``LabError`` when it could not run at all.
    """
    # XVM_CNID_SOCKET: each host's own path. Its agent listens there in agent mode
    # (the config's agentSocket says the same); with --no-agent nothing does, and
    # the plugin runs in-process inside the host's namespace.
    env = invoke.cni_env(command, pod.container_id, pod.netns_path, ifname=POD_IFNAME,
                         agent_socket=lab.agent_socket(pod.host),
                         path=os.environ.get("PATH") or invoke.DEFAULT_PATH)
    # The host's name in etcd (lab hosts share the machine's host name): an ADD that
    # runs in-process claims CIDRs or blocks under it, as the host's agent does.
    env[HOSTNAME_ENV] = pod.host
    host = lab.host(pod.host)

    def failed(code: int | None, msg: str, details: str = "", stderr: str = "",
               status: int = 1) -> PluginError:
        exc = PluginError(command, pod.name, code, msg, details, stderr, status)
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith(("CNI_", "XVM_")))
        exc.request = f"{shown} (in host netns {host.netns})"
        exc.config = config.decode(errors="replace")
        return exc

    try:
        call = invoke.run(lab.plugin, config, env, host=host.netns_path, timeout=timeout)
    except plumbing.NetnsError as exc:
        raise LabError(f"host namespace of pod {pod.name} is gone", str(exc)) from exc
    except subprocess.TimeoutExpired as exc:
        raise failed(None, f"no answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise LabError(f"cannot run plugin {lab.plugin}", str(exc)) from exc
    err = call.stderr.strip()
    error = call.error
    if error is not None:
        raise failed(error.code, error.msg, error.details, err, call.rc)
    out = call.stdout.strip()
    if not out:
        return None
    try:
        result = call.json()
    except ValueError as exc:
        raise failed(None, "result is not JSON", out[:200], err, 0) from exc
    if not isinstance(result, dict):
        raise failed(None, "result is not a JSON object", out[:200], err, 0)
    return result
