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

from xvmcni.lab import invoke, plumbing
from xvmcni.lab.model import POD_IFNAME, Lab, PluginError, Pod
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
    config = ({**XVM_CONFIG, "dataDir": data_dir} if lab.model == "l2"
              else routed_config(lab, index, data_dir))
    if lab.agent:
        config["agentSocket"] = lab.agent_socket(host_dir.name)
    return config


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
