"""Names and paths of a lab: what ``NAME-h1-p2`` means, where its files live.

Pure and light (no netlink): ``xvmctl`` validates ``--name`` with these while it
builds its parser, and ``xvmctl status`` must not pay for pyroute2.
"""

from __future__ import annotations

import re
from pathlib import Path

NETNS_DIR = "/run/netns"
LAB_ROOT = Path("/run/xvm-cni/lab")
DEFAULT_NAME = "xvmlab"
STATE_FILE = "state.json"
AGENT_SOCKET = "xvm-cnid.sock"
AGENT_LOG = "xvm-cnid.log"
PLUGIN_DIR = "bin"             # the thin plugin of agent mode: <lab>/bin/xvm-cni
# Lower-case letters and digits only: a '-' in the lab name would make
# "<name>-h1" of one lab look like a lab of its own to the prefix scan.
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,23}$")
ETCD_DIR = "etcd"              # <lab>/etcd/: the lab's etcd data dir and log
# The lab's own infrastructure: the underlay switch(es), with a routed underlay the
# router between the two underlay subnets, with --control etcd etcd's own host,
# with --control kubernetes the Kubernetes control plane's.
_INFRA = "sw|sw2|rt|etcd|k8s"
_ANY_LAB_NETNS = re.compile(rf"^([a-z][a-z0-9]*)-({_INFRA}|h\d+(-p\d+)?)$")


class LabError(Exception):
    """A lab operation failed; ``details`` says what to do about it."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


def netns_path(netns: str) -> str:
    """Where ``ip netns`` (and pyroute2) keep the named namespace ``netns``."""
    return f"{NETNS_DIR}/{netns}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise LabError(f"invalid lab name {name!r}",
                       "use 1-24 lower-case letters and digits, starting with a letter")
    return name


def lab_dir(name: str) -> Path:
    return LAB_ROOT / name


def agent_socket_path(name: str, host: str) -> Path:
    """Each simulated host's own agent socket (used as XVM_CNID_SOCKET even without
    agents, so the plugin never reaches an agent serving the real machine)."""
    return lab_dir(name) / host / AGENT_SOCKET


def switch_netns(name: str) -> str:
    return f"{name}-sw"


def second_switch_netns(name: str) -> str:
    """The second underlay subnet's switch (routed underlay)."""
    return f"{name}-sw2"


def router_netns(name: str) -> str:
    """The router between the two underlay subnets (routed underlay)."""
    return f"{name}-rt"


def etcd_netns(name: str) -> str:
    """The namespace etcd runs in (--control etcd), cabled to the underlay like a host."""
    return f"{name}-etcd"


def k8s_netns(name: str) -> str:
    """The Kubernetes control plane's namespace (``--control kubernetes``)."""
    return f"{name}-k8s"


def host_netns(name: str, host: str) -> str:
    return f"{name}-{host}"


def pod_netns(name: str, host: str, index: int) -> str:
    return f"{name}-{host}-p{index}"


def is_lab_netns(name: str, netns: str) -> bool:
    """True when ``netns`` is infrastructure, a host or a pod of lab ``name``."""
    return re.match(rf"^{re.escape(name)}-({_INFRA}|h\d+(-p\d+)?)$", netns) is not None


def split_netns(name: str, netns: str) -> tuple[str, str] | None:
    """``(host, pod suffix)`` of a host or pod namespace of lab ``name``: ("h1", "")
    for ``NAME-h1``, ("h1", "-p2") for ``NAME-h1-p2``; None for anything else."""
    match = re.match(rf"^{re.escape(name)}-(h\d+)(-p\d+)?$", netns)
    return (match.group(1), match.group(2) or "") if match else None


def lab_of_netns(netns: str) -> str | None:
    """The lab a namespace's name says it belongs to, if it looks like a lab's."""
    match = _ANY_LAB_NETNS.match(netns)
    return match.group(1) if match else None


def netns_order(netns: str) -> tuple[int, ...]:
    """switch, then h1, h1-p1, h1-p2, h2, ... (numeric, not lexical: h10 after h9)."""
    match = re.search(r"-h(\d+)(?:-p(\d+))?$", netns)
    if not match:
        return (0,)
    return (1, int(match.group(1)), int(match.group(2) or 0))


def teardown_order(netns: str) -> tuple[int, str]:
    """Pods before hosts before the switch: the reverse of creation."""
    return (-netns.count("-"), netns)
