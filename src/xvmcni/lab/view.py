"""Text rendering for ``xvmctl lab``: the pod table, the ping matrix, status.

Pure functions from lab objects to strings, so the layout is testable without
namespaces. Symbols fall back to ASCII when the terminal can't encode them, and
colour is used only on a TTY without NO_COLOR.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from xvmcni.cli.status import (
    Style,
    format_requests,
    format_uptime,
    format_usage,
    style_for,
    table,
)
from xvmcni.lab.agents import AGENT_METRICS_PORT, AgentHealth
from xvmcni.lab.icmp import PingReply
from xvmcni.lab.model import UNDERLAY, Lab, etcd_endpoint
from xvmcni.lab.names import AGENT_SOCKET, etcd_netns, lab_dir
from xvmcni.lab.plugin import ROUTED_CLUSTER
from xvmcni.lab.probes import GATEWAY, Matrix, MtuCheck
from xvmcni.lab.status import HostPeers, LabStatus

__all__ = ["Style", "render_agents", "render_matrix", "render_mode", "render_mtu",
           "render_status", "render_summary", "style_for"]

MAX_FAILURES_SHOWN = 10


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render_summary(lab: Lab, style: Style) -> str:
    pods_per_host = len(lab.pods) // max(1, len(lab.hosts))
    plugin = os.path.basename(lab.plugin)
    lines = [
        style.bold(f"Lab {lab.name}: {_plural(len(lab.hosts), 'host')} {style.times} "
                   f"{_plural(pods_per_host, 'pod')}")
        + f"   plugin {plugin} ({lab.plugin})",
        f"  underlay {UNDERLAY} on switch netns {lab.switch_netns} "
        "(bridge br0, multicast snooping off)",
    ]
    if lab.flavor == "xvm" and lab.model == "routed":
        how = "claimed through etcd" if lab.control == "etcd" else "static peers"
        lines.append(f"  network xvm-routed: a pod CIDR per host ({how}) from "
                     f"{', '.join(ROUTED_CLUSTER[lab.family])}, encap {lab.encap}")
    elif lab.flavor == "xvm":
        lines.append("  network xvm-network 10.244.0.0/16, gateway 10.244.0.1 (anycast on "
                     "every host), VXLAN 10 over eth0")
    else:
        lines.append("  reference bridge plugin: one 10.88.<host>.0/24 per host, "
                     "no cross-host network")
    if lab.control == "etcd":
        lines.append(f"  control  etcd {etcd_endpoint()} in netns {etcd_netns(lab.name)}: "
                     "hosts publish themselves there and watch each other")
    lines += render_mode(lab, style)
    lines.append("")
    rows = []
    for host in lab.hosts:
        first = True
        for pod in (p for p in lab.pods if p.host == host.name):
            rows.append([host.name if first else "", host.underlay if first else "",
                         pod.name, pod.netns, pod.address or "-", pod.gateway or "-",
                         str(pod.mtu or "-"), pod.mac or "-"])
            first = False
    lines += table(["HOST", "UNDERLAY eth0", "POD", "NETNS", "ADDRESS", "GATEWAY", "MTU",
                     "MAC"], rows)
    return "\n".join(lines)


def render_mode(lab: Lab, style: Style) -> list[str]:
    """Which mode ran, and in agent mode whether the agents really served the ADDs
    (their own request counts, asked right after the last ADD)."""
    if lab.flavor != "xvm":
        return ["  mode     in-process: the reference plugin has no agent"]
    if not lab.agent:
        return [f"  mode     in-process (--no-agent): {os.path.basename(lab.plugin)} did each "
                "ADD itself, inside its host's namespace"]
    lines = [f"  mode     agent: one xvm-cnid per host, socket {lab_dir(lab.name)}/<host>/"
             f"{AGENT_SOCKET}, metrics 127.0.0.1:{AGENT_METRICS_PORT} inside each host"]
    per_host = []
    served = expected = 0
    known = True
    for host in lab.hosts:
        pods = sum(1 for p in lab.pods if p.host == host.name and p.address)
        expected += pods
        if host.agent_adds < 0:
            known = False
            per_host.append(f"{host.name} ?/{pods}")
        else:
            served += host.agent_adds
            per_host.append(f"{host.name} {host.agent_adds}/{pods}")
    detail = ", ".join(per_host)
    if known and served == expected:
        lines.append("  served   " + style.green(f"{served}/{expected} ADDs by the agents")
                     + f" ({detail})")
    else:
        lines.append("  served   " + style.red(f"only {served} of {expected} ADDs by the "
                                               "agents") + f" ({detail}): the rest ran "
                     "in-process (agent logs: <lab>/<host>/xvm-cnid.log)")
    return lines


def _cell(replies: list[PingReply], style: Style, width: int) -> str:
    """One cell: a tick or cross, or "ok/total" when it stands for a block of pairs.
    Padded before colouring: escape codes take no room on screen."""
    if not replies:
        return style.dim(style.self_.center(width))
    good = sum(1 for r in replies if r.ok)
    single = style.ok if good else style.bad
    text = single if len(replies) == 1 else f"{good}/{len(replies)}"
    paint = style.green if good == len(replies) else style.red
    return paint(text.center(width))


def _grid(rows: list[str], columns: list[str],
          cell: Callable[[str, str], list[PingReply]], style: Style) -> list[str]:
    widths = {c: max(len(c), 2) for c in columns}
    if any(len(cell(r, c)) > 1 for r in rows for c in columns):
        widths = {c: max(w, 5) for c, w in widths.items()}  # room for "16/16"
    first_w = max([len(r) for r in rows] + [4])
    lines = [("  " + "".ljust(first_w) + "  "
              + "  ".join(c.center(widths[c]) for c in columns)).rstrip()]
    for src in rows:
        lines.append("  " + src.ljust(first_w) + "  "
                     + "  ".join(_cell(cell(src, c), style, widths[c]) for c in columns))
    return lines


def render_matrix(matrix: Matrix, style: Style, width: int | None = None) -> str:
    """Pod by pod when it fits ``width`` columns (the terminal's), else host by host
    with "reachable/total" per block of pairs."""
    what = (f"ICMP{'v6' if matrix.family == 6 else ''} echo, {matrix.size} bytes"
            + (", DF set" if matrix.df else ""))
    lines = [style.bold("Reachability") + f"  ({what}; row = from, column = to)", ""]
    if width is None:
        # Never narrower than 80: a tiny or odd terminal still gets the pod grid.
        width = max(shutil.get_terminal_size((100, 24)).columns, 80)
    full_width = 4 + max(len(r) for r in matrix.rows) + sum(max(len(c), 2) + 2
                                                             for c in matrix.columns)
    if full_width <= width or not matrix.host_of:
        lines += _grid(matrix.rows, matrix.columns,
                       lambda r, c: [matrix.cells[(r, c)]] if (r, c) in matrix.cells else [],
                       style)
    else:
        hosts = list(dict.fromkeys(matrix.host_of[r] for r in matrix.rows))
        columns = hosts + [c for c in matrix.columns if c == GATEWAY]

        def block(src_host: str, col: str) -> list[PingReply]:
            return [reply for (src, dst), reply in matrix.cells.items()
                    if matrix.host_of[src] == src_host
                    and (dst == col if col == GATEWAY else matrix.host_of.get(dst) == col)]

        lines.append(style.dim("  pods of the row's host to pods of the column's host"))
        lines += _grid(hosts, columns, block, style)
    gateways = sorted({addr for (_, col), addr in matrix.targets.items() if col == GATEWAY})
    if gateways:
        lines.append(style.dim(f"  {GATEWAY} = the pod's own gateway, "
                               + ", ".join(gateways)))
    lines.append("")
    rtts = [r.rtt_ms for r in matrix.cells.values() if r.ok and r.rtt_ms is not None]
    summary = f"{matrix.reachable}/{matrix.total} reachable"
    if rtts:
        summary += f"   rtt min/max {min(rtts):.2f}/{max(rtts):.2f} ms"
    lines.append("  " + (style.green(summary) if matrix.ok else style.red(summary)))
    failures = matrix.failures()
    for src, col, addr, reply in failures[:MAX_FAILURES_SHOWN]:
        target = f"{col} ({addr})" if col == GATEWAY else f"{col} {addr}"
        lines.append(f"  {style.bad} {src} -> {target}: {reply.error or 'no reply'}"
                     f" after {reply.tries} tries")
    if len(failures) > MAX_FAILURES_SHOWN:
        lines.append(f"  ... and {len(failures) - MAX_FAILURES_SHOWN} more failed pairs")
    return "\n".join(lines)


def render_mtu(check: MtuCheck, style: Style) -> str:
    good = sum(1 for _, _, r in check.results if r.ok)
    text = (f"  path MTU  {check.size}-byte packets with DF set, host to host "
            f"(first pods): {good}/{len(check.results)} ")
    lines = [text + (style.green(style.ok) if check.ok else style.red(style.bad))]
    for src, dst, reply in check.results:
        if not reply.ok:
            lines.append(f"  {style.bad} {src} -> {dst}: {reply.error or 'no reply'}")
    return "\n".join(lines)


def _role(lab: Lab | None, ns: str) -> str:
    if ns.endswith("-sw"):
        return "switch"
    if lab is not None:
        for pod in lab.pods:
            if pod.netns == ns:
                return f"pod {pod.name}"
        for host in lab.hosts:
            if host.netns == ns:
                return f"host {host.name}"
    return ""


def render_status(status: LabStatus, style: Style) -> str:
    """One row per link, grouped by namespace: what the kernel has right now."""
    lab = status.lab
    if lab is None and not status.state_error and not status.namespaces and not status.files:
        return f"Lab {status.name}: does not exist"
    title = style.bold(f"Lab {status.name}")
    if lab is not None:
        mode = "agent mode" if lab.agent else "in-process"
        title += f"  {lab.phase}, {mode}, plugin {lab.plugin or '?'}"
    elif status.state_error:
        title += "  " + style.red(status.state_error)
    else:
        title += "  no state file (leftovers of a crashed run?)"
    if status.files:
        title += f", {len(status.files)} files under {lab_dir(status.name)}"
    lines = [title]
    if not status.namespaces:
        lines.append("  no namespaces" + ("" if status.files else ", no files: nothing exists"))
        if status.agents:
            lines += ["", render_agents(status.agents, style)]
        return "\n".join(lines)
    rows = []
    for ns in status.namespaces:
        role = _role(lab, ns.netns)
        if not ns.exists or ns.error:
            rows.append([ns.netns, role, style.red(ns.error or "missing"), "", "", "", ""])
            continue
        shown = [link for link in ns.links if link.name != "lo"]
        if not shown:
            rows.append([ns.netns, role, "(no links)", "", "", "", ""])
        for i, link in enumerate(shown):
            where = " ".join(link.addresses) or (f"master {link.master}" if link.master else "")
            rows.append([ns.netns if i == 0 else "", role if i == 0 else "", link.name,
                         link.kind or "-", "up" if link.up else style.red("DOWN"),
                         str(link.mtu), where])
    lines += table(["NETNS", "ROLE", "LINK", "KIND", "STATE", "MTU", "ADDRESS / MASTER"],
                    rows)
    if status.agents:
        lines += ["", render_agents(status.agents, style)]
    if status.peers:
        lines += ["", render_peers(status.peers, style)]
    return "\n".join(lines)


def render_peers(peers: list[HostPeers], style: Style) -> str:
    """Per host, the peers as the kernel has them programmed (routed model; l2 with
    etcd: the hosts it floods to)."""
    rows = []
    for host in peers:
        if host.error:
            rows.append([host.host, style.red(host.error), "", ""])
            continue
        first, *rest = host.routes + [f"flood to {dst}" for dst in host.flood] or ["(none)"]
        rows.append([host.host, first, str(host.neighbours), str(host.fdb)])
        rows += [["", route, "", ""] for route in rest]
    lines = [style.bold("Peers") + "  (programmed in each host's kernel: our routes, "
             "permanent neighbour and FDB entries of our VXLAN devices)"]
    lines += table(["HOST", "ROUTES (protocol 202) / FLOOD (l2)", "NEIGH", "FDB"], rows)
    return "\n".join(lines)


def render_agents(agents: list[AgentHealth], style: Style) -> str:
    """One row per host's xvm-cnid: running, answering, what it served, its networks."""
    rows = []
    for agent in agents:
        agent_info = (agent.reply or {}).get("agent") or {}
        if agent.ok:
            state = style.green("ok")
        elif agent.pid:
            state = style.red(f"NOT ANSWERING: {agent.error}")
        else:
            state = style.red("NOT RUNNING")
        pid = str(agent.pid) if agent.pid else "-"
        if agent.recorded_pid and agent.pid and agent.recorded_pid != agent.pid:
            pid += f" (state.json: {agent.recorded_pid})"
        nets = [f"{n.get('name')} {format_usage(int(n.get('used', 0)), int(n.get('size', 0)))}"
                + ("" if n.get("ready") else " " + style.red(f"NOT READY: {n.get('reason')}"))
                for n in (agent.reply or {}).get("networks") or []]
        rows.append([agent.host, pid, state,
                     format_uptime(float(agent_info["uptime"])) if "uptime" in agent_info
                     else "-",
                     format_requests(agent_info["requests"]) if "requests" in agent_info
                     else "-",
                     "; ".join(nets) or "-"])
    healthy = sum(1 for a in agents if a.ok)
    summary = f"{healthy}/{len(agents)} answering"
    lines = [style.bold("Agents") + "  (xvm-cnid, one per host; "
             + (style.green(summary) if healthy == len(agents) else style.red(summary)) + ")"]
    lines += table(["HOST", "PID", "STATE", "UPTIME", "REQUESTS", "NETWORKS (used/pool)"], rows)
    return "\n".join(lines)
