"""``xvmctl``: the operator's command. Subcommands register themselves on one parser.

Today: ``status`` and ``gc`` (ask the node agent), ``lab up|down|status`` and
``lab agent start|stop|restart``. Another subcommand is one more ``add_*`` function
in ``build_parser`` that sets ``func`` on its parser.

The lab (pyroute2 and all) is imported inside the lab commands only: ``status`` and
``gc`` run on a node that may have nothing but the agent's client.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from xvmcni.cli import status
from xvmcni.cli.connectivity import add_connectivity
from xvmcni.cli.doctor import add_doctor
from xvmcni.config import DEFAULT_DATA_DIR
from xvmcni.lab.model import PluginError
from xvmcni.lab.names import DEFAULT_NAME, LabError, check_name, lab_dir

EXIT_OK = 0
EXIT_FAIL = 1          # an operation failed (plugin error, lab exists, not root, ...)
EXIT_UNREACHABLE = 3   # the lab is up but some pairs cannot reach each other


def _lab_name(text: str) -> str:
    try:
        return check_name(text)
    except LabError as exc:
        raise argparse.ArgumentTypeError(f"{exc.msg} ({exc.details})") from exc


def _stderr_progress(name: str) -> Callable[[str], None]:
    """One line per step on stderr, with elapsed time; a lock keeps lines from the
    parallel ADD threads whole."""
    started = time.monotonic()
    lock = threading.Lock()
    style = status.style_for(sys.stderr)

    def emit(line: str) -> None:
        with lock:
            stamp = style.dim(f"[{time.monotonic() - started:5.1f}s]")
            print(f"{stamp} {name}: {line}", file=sys.stderr, flush=True)

    return emit


def _one_line(config: str) -> str:
    try:
        return json.dumps(json.loads(config))
    except ValueError:
        return " ".join(config.split())


def _error(exc: LabError) -> int:
    style = status.style_for(sys.stderr)
    print(style.red("error: ") + exc.msg, file=sys.stderr)
    if isinstance(exc, PluginError):
        code = f"{exc.code}" if exc.code is not None else f"none (exit status {exc.status})"
        print(f"  plugin said: {exc.plugin_msg}", file=sys.stderr)
        if exc.plugin_details:
            print(f"  details:     {exc.plugin_details}", file=sys.stderr)
        print(f"  CNI code:    {code}", file=sys.stderr)
        if exc.request:
            print(f"  request:     {exc.request}", file=sys.stderr)
        if exc.config:
            print(f"  config:      {_one_line(exc.config)}", file=sys.stderr)
        if exc.stderr:
            print("  plugin stderr:", file=sys.stderr)
            for line in exc.stderr.splitlines()[-20:]:
                print(f"    {line}", file=sys.stderr)
    elif exc.details:
        print(f"  {exc.details}", file=sys.stderr)
    return EXIT_FAIL


def cmd_lab_up(args: argparse.Namespace) -> int:
    from xvmcni.lab import build, probes, view

    progress = _stderr_progress(args.name)
    try:
        lab = build.lab_up(args.name, args.hosts, args.pods, plugin=args.plugin,
                            progress=progress, agent=not args.no_agent, model=args.model,
                            encap=args.encap, underlay=args.underlay, family=args.family,
                            control=args.control)
    except LabError as exc:
        return _error(exc)
    progress(f"pinging {len(lab.pods)} pods pairwise and their gateway, then full-size "
             "packets between hosts")
    style = status.style_for(sys.stdout)
    print()
    print(view.render_summary(lab, style))
    all_ok = True
    for family in probes.lab_families(lab) or [4]:
        matrix = probes.ping_matrix(lab, family=family)
        mtu = probes.mtu_check(lab, family=family)
        print()
        print(view.render_matrix(matrix, style))
        if mtu is not None:
            print(view.render_mtu(mtu, style))
        all_ok = all_ok and matrix.ok and (mtu is None or mtu.ok)
    print()
    if lab.pods:
        hints = [(f"ip netns exec {lab.pods[0].netns} ip addr", "look inside a pod"),
                 (f"xvmctl lab status --name {lab.name}", "what exists, live")]
        if lab.agent:
            first = lab.hosts[0].name
            hints += [(f"xvmctl status --socket {lab.agent_socket(first)}",
                       f"{first}'s agent in detail"),
                      (f"xvmctl lab agent restart --name {lab.name} --host {first}",
                       "restart an agent (pods keep their traffic)")]
        hints.append((f"xvmctl lab down --name {lab.name}", "remove everything"))
        width = max(len(cmd) for cmd, _ in hints)
        for i, (cmd, what) in enumerate(hints):
            lead = "  next: " if i == 0 else "        "
            print(lead + style.dim(f"{cmd.ljust(width)}  # {what}"))
    return EXIT_OK if all_ok else EXIT_UNREACHABLE


def cmd_lab_down(args: argparse.Namespace) -> int:
    from xvmcni.lab import teardown

    progress = _stderr_progress(args.name)
    try:
        report = teardown.lab_down(args.name, plugin=args.plugin, progress=progress)
    except LabError as exc:
        return _error(exc)
    style = status.style_for(sys.stdout)
    if not (report.removed_netns or report.removed_dir or report.deleted
            or report.agents_stopped or report.etcd_stopped):
        print(f"lab {args.name}: nothing to remove")
        return EXIT_OK
    if report.leftovers:
        print(style.red(f"lab {args.name}: left behind: ") + " ".join(report.leftovers))
        return EXIT_FAIL
    note = ""
    if report.del_failures:
        note = style.red(f" ({len(report.del_failures)} CNI DEL failed, see above)")
    pods = "pod" if len(report.deleted) == 1 else "pods"
    agents = f"{len(report.agents_stopped)} xvm-cnid stopped, " if report.agents_stopped else ""
    if report.etcd_stopped:
        agents += "etcd stopped, "
    print(f"lab {args.name} removed: {len(report.deleted)} {pods} detached, {agents}"
          f"{len(report.removed_netns)} namespaces and {lab_dir(args.name)} deleted" + note)
    return EXIT_OK


def cmd_lab_status(args: argparse.Namespace) -> int:
    from xvmcni.lab import status as labstatus
    from xvmcni.lab import view

    names = [args.name] if args.name else labstatus.known_labs()
    style = status.style_for(sys.stdout)
    if not names:
        print("no labs (create one: xvmctl lab up)")
        return EXIT_OK
    try:
        for i, name in enumerate(names):
            if i:
                print()
            print(view.render_status(labstatus.lab_status(name), style))
    except LabError as exc:
        return _error(exc)
    return EXIT_OK


def cmd_lab_agent(args: argparse.Namespace) -> int:
    from xvmcni.lab import agents

    try:
        if args.action == "stop":
            action = agents.agent_stop(args.name, args.host, kill=args.kill)
        elif args.action == "start":
            action = agents.agent_start(args.name, args.host)
        else:
            action = agents.agent_restart(args.name, args.host, kill=args.kill)
    except LabError as exc:
        return _error(exc)
    how = f"{action.signal}" + (", SIGKILL after the timeout" if action.forced else "")
    stopped = (f"pid {action.old_pid} stopped ({how}, {action.stop_seconds:.2f} s)"
               if action.old_pid else "was not running")
    started = f"pid {action.new_pid} answering ({action.start_seconds:.2f} s)"
    if args.action == "stop":
        print(f"{action.host}: xvm-cnid {stopped}")
    elif args.action == "start":
        print(f"{action.host}: xvm-cnid {started}")
    else:
        print(f"{action.host}: xvm-cnid restarted: {stopped}, {started}; no agent answered "
              f"for {action.down_seconds:.2f} s")
    return EXIT_OK


def _agent_unavailable(exc: status.AgentUnavailable) -> int:
    style = status.style_for(sys.stderr)
    print(style.red("error: ") + exc.msg, file=sys.stderr)
    if exc.hint:
        print(f"  {exc.hint}", file=sys.stderr)
    return EXIT_FAIL


def cmd_status(args: argparse.Namespace) -> int:
    try:
        reply = status.agent_request(args.socket, "status", timeout=args.timeout)
    except status.AgentUnavailable as exc:
        return _agent_unavailable(exc)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    else:
        print(status.render_status(reply, status.style_for(sys.stdout)))
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    try:
        reply = status.agent_request(args.socket, "gc", timeout=args.timeout)
    except status.AgentUnavailable as exc:
        return _agent_unavailable(exc)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    else:
        print(status.render_gc(reply, status.style_for(sys.stdout)))
    return EXIT_FAIL if status.gc_failed(reply) else EXIT_OK


def add_agent_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--socket", default=status.default_socket(), metavar="PATH",
                       help=f"the agent's unix socket (default: ${status.SOCKET_ENV}, else "
                            f"{status.DEFAULT_SOCKET})")
        p.add_argument("--json", action="store_true", help="print the agent's raw JSON answer")
        p.add_argument("--timeout", type=float, default=status.DEFAULT_TIMEOUT, metavar="S",
                       help="seconds to wait for the answer (default: %(default)g)")

    st = sub.add_parser(
        "status", help="the node agent (xvm-cnid): requests served, networks, IPAM usage",
        description="Ask the node agent for its status: pid, uptime, CNI requests served "
                    "since it started, metrics URL, and per network its bridge, VNI, "
                    "subnet, address pool and usage, and whether it is ready.",
        epilog="exit status: 0 the agent answered, 1 no agent answers on the socket")
    common(st)
    st.set_defaults(func=cmd_status)
    gc = sub.add_parser(
        "gc", help="make the node agent reconcile and garbage-collect now",
        description="What the agent does every --gc-interval, now: release containers "
                    "whose netns is gone, recreate missing bridges/VXLANs/rules for the "
                    "rest, remove orphan veths, leave networks without containers.",
        epilog="exit status: 0 done, 1 no agent answers or a network failed")
    common(gc)
    gc.set_defaults(func=cmd_gc)


def cmd_ipam_rebuild(args: argparse.Namespace) -> int:
    from xvmcni.cli import ipam_rebuild
    from xvmcni.errors import CniError

    style = status.style_for(sys.stderr)
    if os.geteuid() != 0:
        print(style.red("error: ") + "xvmctl ipam rebuild needs root (it reads every "
              "network namespace of the host)", file=sys.stderr)
        return EXIT_FAIL
    try:
        report = ipam_rebuild.rebuild(args.network, Path(args.data_dir), force=args.force)
    except (ipam_rebuild.RebuildError, CniError) as exc:
        print(style.red("error: ") + str(exc), file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(ipam_rebuild.render(report))
    return EXIT_OK


def add_ipam(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ipam = sub.add_parser("ipam", help="the per-network address registry (ipam.db)")
    ipam_sub = ipam.add_subparsers(dest="ipam_command", metavar="{rebuild}", required=True)
    rebuild = ipam_sub.add_parser(
        "rebuild", help="rebuild a damaged ipam.db from the live host",
        description="Recreate <data-dir>/<network>/ipam.db from the host-side veths on the "
                    "network's bridge and their containers' interfaces (addresses, "
                    "namespace, interface name; the container ID where the device's "
                    "alias names it). The old file is kept as ipam.db.corrupt-<time>. Run "
                    "as root on the host, in its network namespace.",
        epilog="exit status: 0 rebuilt, 1 failed (nothing was changed unless it says so)")
    rebuild.add_argument("--network", required=True, metavar="NAME",
                         help="the network's name (its state directory under --data-dir)")
    rebuild.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), metavar="DIR",
                         help="the network's dataDir (default: %(default)s)")
    rebuild.add_argument("--force", action="store_true",
                         help="replace a registry that still reads fine (kept as "
                              "ipam.db.old-<time>)")
    rebuild.add_argument("--json", action="store_true", help="print the report as JSON")
    rebuild.set_defaults(func=cmd_ipam_rebuild)


def add_lab(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser(
        "lab", help="a multi-host cluster simulated with network namespaces",
        description="Simulated hosts on one machine: one netns per host joined by an "
                    "isolated underlay switch, pods attached by the real plugin.")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="{up,down,status,agent}",
                                 required=True)

    def name_arg(p: argparse.ArgumentParser, default: str | None) -> None:
        p.add_argument("--name", default=default, type=_lab_name,
                       help=f"lab name, lower-case letters and digits (default: "
                            f"{default or 'all labs'})")

    up = lab_sub.add_parser(
        "up", help="create hosts and pods, then test reachability",
        epilog="exit status: 0 every pair reachable, 1 error (nothing is left behind), "
               "3 lab up but some pairs unreachable")
    up.add_argument("--hosts", type=int, default=3, help="simulated hosts (default: 3)")
    up.add_argument("--pods", type=int, default=2, help="pods per host (default: 2)")
    name_arg(up, DEFAULT_NAME)
    up.add_argument("--plugin", metavar="PATH",
                    help="plugin executable (default: xvm-cni next to this Python, else "
                         "PATH); a file named 'bridge' gets a reference bridge+host-local "
                         "config instead")
    up.add_argument("--no-agent", action="store_true",
                    help="no xvm-cnid in the hosts: the plugin does every ADD in-process "
                         "(default: one agent per host, pods attached through the thin "
                         "plugin that hands each ADD to its host's agent)")
    up.add_argument("--model", choices=["l2", "routed", "macvlan"], default="l2",
                    help="network model: l2 (one subnet over VXLAN, the default), routed "
                         "(a pod CIDR per host, static peers) or macvlan (networks blue "
                         "and red spanning every host, each host a router; pod j joins "
                         "blue when j is odd, red when even)")
    up.add_argument("--encap", choices=["vxlan", "none", "auto"], default="vxlan",
                    help="routed model: how remote pod CIDRs are reached (default: vxlan)")
    up.add_argument("--family", choices=["ipv4", "ipv6", "dual"], default="ipv4",
                    help="routed and macvlan models: the pods' address families "
                         "(default: ipv4)")
    up.add_argument("--underlay", choices=["flat", "routed"], default="flat",
                    help="flat: one underlay subnet; routed: two subnets behind a router "
                         "that carries no multicast (default: flat)")
    up.add_argument("--control", choices=["none", "etcd", "kubernetes"], default="none",
                    help="control plane: none (l2 floods by multicast, routed lists every "
                         "host as a static peer; the default), etcd (an etcd in its own "
                         "namespace on the underlay: hosts publish themselves and claim pod "
                         "CIDRs or address blocks there, l2 floods by unicast) or kubernetes "
                         "(routed model: etcd + kube-apiserver + controller-manager in the "
                         "lab, a Node per host; binaries from $XVM_LAB_K8S)")
    up.set_defaults(func=cmd_lab_up)

    down = lab_sub.add_parser("down", help="detach every pod (CNI DEL), remove everything")
    name_arg(down, DEFAULT_NAME)
    down.add_argument("--plugin", metavar="PATH",
                      help="plugin for CNI DEL (default: the one recorded by up)")
    down.set_defaults(func=cmd_lab_down)

    status_p = lab_sub.add_parser("status",
                                  help="show what exists of a lab, or of all labs, and "
                                       "the health of its agents")
    name_arg(status_p, None)
    status_p.set_defaults(func=cmd_lab_status)

    agent = lab_sub.add_parser(
        "agent", help="stop, start or restart one simulated host's xvm-cnid",
        description="Operate one host's node agent. The agent is not on the data path: "
                    "pods keep their traffic while it is down, and a new one reconciles "
                    "without touching healthy devices.")
    agent.add_argument("action", choices=["start", "stop", "restart"])
    agent.add_argument("--host", required=True, metavar="hN", help="the host, e.g. h1")
    name_arg(agent, DEFAULT_NAME)
    agent.add_argument("--kill", action="store_true",
                       help="stop with SIGKILL (a crash) instead of SIGTERM")
    agent.set_defaults(func=cmd_lab_agent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xvmctl",
                                     description="Operate xvm-cni networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_agent_commands(sub)
    add_doctor(sub)
    add_connectivity(sub)
    add_ipam(sub)
    add_lab(sub)
    from xvmcni.cmd import hostinstall  # install / uninstall onto a host root (DaemonSet)
    hostinstall.add_commands(sub)
    return parser


def _terminate(signum: int, _frame: object) -> None:
    # SystemExit unwinds like Ctrl-C does, so a half-built lab is removed on SIGTERM.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
