"""One doctor run: find the networks, run the host checks once and the network
checks per network, each guarded, and return every finding."""

from __future__ import annotations

from dataclasses import dataclass

from xvmcni import networks
from xvmcni.agent.reconcile import configs_in_dir, known_networks
from xvmcni.dataplane.netlink import rtnl
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import Host, Options
from xvmcni.diagnose.models import inspector
from xvmcni.diagnose.registry import HOST_CHECKS, NETWORK_CHECKS, guarded
from xvmcni.diagnose.target import Target
from xvmcni.errors import CniError
from xvmcni.runtime import Runtime


@dataclass
class Report:
    networks: list[str]
    findings: list[Finding]

    @property
    def exit_status(self) -> int:
        return fd.exit_status(self.findings)


def diagnose(options: Options, only: str | None = None) -> Report:
    known = known_networks(options.conf_dirs, options.data_dirs)
    chosen = [n for n in known if only is None or n.name == only]
    found: list[Finding] = []
    if only is not None and not chosen:
        names = ", ".join(sorted(n.name for n in known)) or "none"
        found.append(fd.error("networks", only, f"no xvm-cni network {only!r} on this host "
                              f"(known: {names})"))
        return Report([], found)
    if only is None:
        found += _unparsable(options)
    runtime = Runtime.in_process()
    with rtnl() as ipr:
        host = Host(options, ipr, known)
        for name, check in HOST_CHECKS:
            found += guarded(name, lambda check=check: check(host))  # type: ignore[misc]
        for network in chosen:
            found += _network(host, network, runtime)
    return Report([n.name for n in chosen], found)


def _network(host: Host, network: networks.Network, runtime: Runtime) -> list[Finding]:
    what = inspector(network)
    if what is None:
        return [fd.error("networks", network.name, f"doctor has no checks for model "
                         f"{network.config.model!r}", network.name)]
    found: list[Finding] = []
    with networks.open_model(network, runtime) as model:
        target = Target(host, network, what, model)
        for name, check in NETWORK_CHECKS:
            found += guarded(name, lambda check=check: check(target),  # type: ignore[misc]
                             network.name)
    return found


def _unparsable(options: Options) -> list[Finding]:
    """Configs naming our plugin that do not parse: every ADD of them fails."""
    found = []
    for conf_dir in options.conf_dirs:
        for raw in configs_in_dir(conf_dir):
            try:
                networks.parse(raw)
            except CniError as err:
                name = str(raw.get("name", "?"))
                found.append(fd.fail("config", f"{conf_dir}: {name}", f"the network's config "
                                     f"is refused: {err}", "fix the field it names; until "
                                     "then every ADD of this network fails with code 7"))
    return found
