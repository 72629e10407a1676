"""The ``controlPlane`` section of a network that follows Kubernetes Node objects,
validated; the agent's environment (xcluster-cni's variables) fills what the
section leaves out; and the file in which the agent tells the plugin what it
learnt about its own Node.

Pure: no client import, so the thin plugin and agents without Kubernetes networks
validate configs without loading one.

    "controlPlane": {"type": "kubernetes",
                     "kubeconfig": "/etc/kubernetes/xvm-cni.kubeconfig",  # else $KUBECONFIG,
                                                                          # in-cluster, ~/.kube
                     "nodeName": "...",            # else $NODE_NAME, then the host name
                     "cidrAnnotation": "...",      # else $CIDR_ANNOTATION; else spec.podCIDRs
                     "addressAnnotation": "...",   # else $ADDRESS_ANNOTATION; else InternalIP
                     "ipv6Prefix": "1000::1:",     # else $IPV6_PREFIX
                     "resync": 600, "watchTimeout": 300}

The route protocol comes from the network's ``routeProtocol``, else ``$PROTOCOL``,
else 202.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvmcni.config import fail, get

KIND = "kubernetes"
DEFAULT_RESYNC = 600
DEFAULT_WATCH_TIMEOUT = 300
# xcluster-cni's environment, read by the agent (the plugin gets what the agent used
# through NODE_FILE).
ENV_NODE_NAME = "NODE_NAME"
ENV_CIDR_ANNOTATION = "CIDR_ANNOTATION"
ENV_ADDRESS_ANNOTATION = "ADDRESS_ANNOTATION"
ENV_IPV6_PREFIX = "IPV6_PREFIX"
ENV_PROTOCOL = "PROTOCOL"
# A qualified Kubernetes annotation key: optional DNS-subdomain prefix, '/', a name of
# up to 63 characters (alphanumerics, '-', '_', '.', alphanumeric at both ends).
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
ANNOTATION_KEY = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
# What the agent publishes on its Node, per network (README, "Node annotations").
PUBLISH_PREFIX = "xvm-cni.io"
NODE_FILE = "k8s-node.json"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class K8sSettings:
    kubeconfig: str = ""
    node_name: str = ""
    cidr_annotation: str = ""
    address_annotation: str = ""
    ipv6_prefix: str = ""
    resync: int = DEFAULT_RESYNC
    watch_timeout: int = DEFAULT_WATCH_TIMEOUT


def node_name(settings: K8sSettings) -> str:
    return settings.node_name or socket.gethostname()


def publish_keys(network: str) -> tuple[str, str]:
    """(VTEP MAC key, underlay addresses key) this network's agent sets on its Node."""
    return (f"{PUBLISH_PREFIX}/vtep-mac.{network}", f"{PUBLISH_PREFIX}/underlay.{network}")


def ipv6_from_prefix(prefix: str, v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """Seed 002's node IPv6 address: the prefix with the IPv4 address appended.
    ``prefix`` is either text that an IPv4 address completes ("1000::1:" ->
    1000::1:c0a8:203 for 192.168.2.3) or a network of /96 or shorter
    ("1000:1::/96" -> 1000:1::c0a8:102)."""
    if "/" in prefix:
        net = ipaddress.IPv6Network(prefix, strict=False)
        return ipaddress.IPv6Address(int(net.network_address) | int(v4))
    return ipaddress.IPv6Address(f"{prefix}{v4}")


def _check_prefix(prefix: str) -> None:
    try:
        if "/" in prefix:
            net = ipaddress.IPv6Network(prefix, strict=False)
            if net.prefixlen > 96:
                raise ValueError(f"/{net.prefixlen} leaves no room for an IPv4 address")
        ipv6_from_prefix(prefix, ipaddress.IPv4Address("192.0.2.1"))
    except ValueError as exc:
        raise fail(f"ipv6Prefix / $IPV6_PREFIX {prefix!r} is not usable",
                   'e.g. "1000::1:" or "1000:1::/96" (the node\'s IPv4 address is '
                   f"appended): {exc}") from exc


def parse(section: dict[str, Any], network: str,
          environ: Mapping[str, str] | None = None) -> K8sSettings:
    """Validate ``controlPlane`` of type kubernetes, the environment filling unset
    fields; CniError(7) naming the bad field."""
    env = os.environ if environ is None else environ

    def field(key: str, env_key: str = "") -> str:
        value = get(section, key, str, "")
        return value or (env.get(env_key, "") if env_key else "")

    kubeconfig = field("kubeconfig")
    if kubeconfig and not os.path.isabs(kubeconfig):
        raise fail(f"controlPlane 'kubeconfig' {kubeconfig!r} must be an absolute path")
    name = field("nodeName", ENV_NODE_NAME)
    if len(name) > 253 or any(c.isspace() or c == "/" for c in name):
        raise fail(f"controlPlane 'nodeName' / $NODE_NAME {name!r} is not a Node name")
    annotations = {}
    for key, env_key in (("cidrAnnotation", ENV_CIDR_ANNOTATION),
                         ("addressAnnotation", ENV_ADDRESS_ANNOTATION)):
        value = field(key, env_key)
        if value and not ANNOTATION_KEY.match(value):
            raise fail(f"controlPlane {key!r} / ${env_key} {value!r} is not an annotation key",
                       'e.g. "cidr.example.com/net3"')
        annotations[key] = value
    prefix = field("ipv6Prefix", ENV_IPV6_PREFIX)
    if prefix:
        _check_prefix(prefix)
    for key in publish_keys(network):
        if not ANNOTATION_KEY.match(key):
            raise fail(f"network name {network!r} cannot be part of a Node annotation key",
                       "with controlPlane kubernetes use up to 50 letters, digits, '-', "
                       "'_' and '.', starting and ending with a letter or digit")
    resync = int(get(section, "resync", int, DEFAULT_RESYNC))
    watch_timeout = int(get(section, "watchTimeout", int, DEFAULT_WATCH_TIMEOUT))
    if not 10 <= resync <= 86400:
        raise fail(f"controlPlane 'resync' {resync} is out of range", "seconds: 10..86400")
    if not 5 <= watch_timeout <= 3600:
        raise fail(f"controlPlane 'watchTimeout' {watch_timeout} is out of range",
                   "seconds: 5..3600")
    return K8sSettings(kubeconfig, name, annotations["cidrAnnotation"],
                       annotations["addressAnnotation"], prefix, resync, watch_timeout)


def route_protocol(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> int | None:
    """``$PROTOCOL`` when the config sets no ``routeProtocol`` (None: the default)."""
    env = os.environ if environ is None else environ
    if raw.get("routeProtocol") is not None or not env.get(ENV_PROTOCOL):
        return None
    text = env[ENV_PROTOCOL]
    if not text.isdigit():
        raise fail(f"$PROTOCOL {text!r} is not a route protocol number", "5..255")
    return int(text)


# --- what the agent learnt about its own Node, for the plugin ------------------------

@dataclass(frozen=True)
class NodeState:
    """What the agent knows of its Node, and the settings from its environment the
    plugin (run by a container runtime without that environment) must use too."""

    node: str
    pod_cidrs: tuple[IPNetwork, ...]   # IPv4 first
    route_protocol: int
    cidr_annotation: str = ""


def write_node_state(state_dir: Path, state: NodeState) -> None:
    """Atomically; safe against other writers, threads of this process included (the
    agent's watch and an ADD reading the Node once may write at the same time)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{NODE_FILE}.", dir=state_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"node": state.node,
                                "podCIDRs": [str(c) for c in state.pod_cidrs],
                                "routeProtocol": state.route_protocol,
                                "cidrAnnotation": state.cidr_annotation}))
        os.replace(tmp, state_dir / NODE_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_node_state(state_dir: Path) -> NodeState | None:
    """What the agent wrote; None before it wrote anything (or unreadable)."""
    try:
        data = json.loads((state_dir / NODE_FILE).read_text())
        cidrs = tuple(sorted((ipaddress.ip_network(c) for c in data["podCIDRs"]),
                             key=lambda c: c.version))
        return NodeState(str(data["node"]), cidrs, int(data["routeProtocol"]),
                         str(data.get("cidrAnnotation", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
