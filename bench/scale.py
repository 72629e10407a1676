"""Scale: a lab of many hosts x many pods with the etcd control plane on this machine.

    sudo .venv/bin/python bench/scale.py [--hosts 100] [--pods 10] [--idle 30]
        [--model routed] [--encap vxlan] [--out FILE]

Builds ``--hosts`` x ``--pods`` with ``xvmctl lab up --control etcd`` (one xvm-cnid
per host, pods attached through them), lets it settle, then measures:

- per agent: RSS, PSS and USS (``/proc/<pid>/smaps_rollup``: PSS shares the
  libraries among the agents that map them, USS is what the agent alone holds),
  threads, and idle CPU over ``--idle`` seconds (utime + stime; % of one core);
- where an agent's RSS goes: fresh interpreters importing the agent's modules step
  by step (python, the agent, grpc, the etcd client), each step's RSS;
- etcd: RSS, idle CPU, watchers and watch streams (its /metrics, read from inside
  its namespace), and what one more host joining costs it: revisions, events sent
  to watchers (``etcd_debugging_mvcc_events_total``), time until every host
  programmed the new peer;
- per host: kernel state of our routed network (routes of protocol 202, permanent
  neighbour and FDB entries on our VXLAN device; with ``encap: vxlan`` each should
  be hosts - 1), and every host's count of pods served;
- the machine: MemAvailable before the build and with the lab idle, build time.

When the machine cannot hold ``--hosts``, run smaller sizes and extrapolate: the
JSON keeps the per-agent figures, which are what scales. Everything is removed at
the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as bl

from xvmcni import lab as labapi
from xvmcni.lab import etcdnode, grow, plumbing
from xvmcni.lab.model import ETCD_CLIENT_PORT
from xvmcni.lab.names import etcd_netns, netns_path
from xvmcni.lab.status import programmed_peers

TICKS = os.sysconf("SC_CLK_TCK")
TARGET_RSS_MIB = 40.0
# Fresh interpreters, one import more each step: where an agent's RSS goes.
IMPORT_STEPS = [("python", ""), ("+ xvmcni.agent.server (pyroute2, our code)",
                                 "xvmcni.agent.server"),
                ("+ grpc", "grpc"), ("+ pyetcd (etcd-sdk-python, its protobufs)", "pyetcd")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=100, help="simulated hosts (default 100)")
    p.add_argument("--pods", type=int, default=10, help="pods per host (default 10)")
    p.add_argument("--idle", type=float, default=30.0,
                   help="seconds of the idle CPU sample (default 30)")
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds between lab up and the measurements (default 30)")
    p.add_argument("--model", choices=["routed", "l2"], default="routed")
    p.add_argument("--encap", choices=["vxlan", "none", "auto"], default="vxlan")
    p.add_argument("--out", help="JSON output (default bench/results/scale.json)")
    return p.parse_args(argv)


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (MiB) and thread count of a process."""
    rollup: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            rollup[key] = int(rest.split()[0])
    threads = next(int(line.split()[1]) for line in
                   Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Threads:"))
    return {"rss": rollup.get("Rss", 0) / 1024, "pss": rollup.get("Pss", 0) / 1024,
            "uss": (rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)) / 1024,
            "threads": threads}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def idle_cpu(pids: list[int], seconds: float) -> list[float]:
    """% of one core each process used over ``seconds``."""
    before = {pid: cpu_seconds(pid) for pid in pids}
    began = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    return [(cpu_seconds(pid) - before[pid]) / elapsed * 100 for pid in pids]


def etcd_metrics(name: str) -> dict[str, float]:
    """etcd's Prometheus metrics (the unlabelled ones we read), from inside its netns."""
    with plumbing.inside(netns_path(etcd_netns(name))):
        conn = http.client.HTTPConnection("127.0.0.1", ETCD_CLIENT_PORT, timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
    found = {}
    for line in text.splitlines():
        match = re.match(r"^(etcd_debugging_mvcc_[a-z_]+|etcd_mvcc_[a-z_]+|"
                         r"etcd_server_[a-z_]+|process_resident_memory_bytes)\s+(\S+)$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def import_rss() -> list[dict[str, Any]]:
    steps = []
    modules: list[str] = []
    for label, module in IMPORT_STEPS:
        if module:
            modules.append(module)
        code = "".join(f"import {m}\n" for m in modules) + (
            "print([l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmRSS')][0])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        steps.append({"step": label, "rss_mib": int(out.strip()) / 1024})
    return steps


def kernel_state(lab: labapi.Lab) -> list[dict[str, Any]]:
    rows = []
    for host in lab.hosts:
        found = programmed_peers(host.name, host.netns_path)
        rows.append({"host": host.name, "routes": len(found.routes),
                     "neigh": found.neighbours, "fdb": found.fdb, "error": found.error})
    return rows


def measure_join(lab: labapi.Lab, name: str) -> dict[str, Any]:
    """One more host (its pods attached, then its agent started): what it costs etcd
    and how long until every other host programmed it (their kernel state)."""
    before = etcd_metrics(name)
    lab, host = grow.add_host(name, 1, agent=False, index=len(lab.hosts) + 1)
    began = time.monotonic()
    grow.start_agent(lab, host)
    others = [h for h in lab.hosts if h.name != host.name]
    want = len(others)   # each other host now has one peer more
    pending = {h.name: h for h in others}
    done: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for h in list(pending.values()):
            found = programmed_peers(h.name, h.netns_path)
            if len(found.routes) + len(found.flood) >= want:  # routed; l2 floods
                done[h.name] = time.monotonic() - began
                del pending[h.name]
        time.sleep(0.05)
    after = etcd_metrics(name)
    result = {
        "host": host.name,
        "all_programmed_seconds": max(done.values()) if not pending else None,
        "not_programmed": sorted(pending),
        "revisions": after.get("etcd_debugging_mvcc_current_revision", 0)
        - before.get("etcd_debugging_mvcc_current_revision", 0),
        "events_sent_to_watchers": after.get("etcd_debugging_mvcc_events_total", 0)
        - before.get("etcd_debugging_mvcc_events_total", 0),
        "puts": after.get("etcd_debugging_mvcc_put_total", 0)
        - before.get("etcd_debugging_mvcc_put_total", 0),
    }
    grow.remove_host(lab, host.name)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    name = f"xs{os.getpid():x}{secrets.token_hex(2)}"
    data: dict[str, Any] = {"params": vars(args), "load_before": os.getloadavg(),
                            "lab": name, "mem_available_before_mib": mem_available_mib()}
    data["import_rss"] = import_rss()
    try:
        began = time.monotonic()
        print(f"lab {name}: up, {args.hosts} hosts x {args.pods} pods, etcd", file=sys.stderr)
        lab = labapi.lab_up(name, hosts=args.hosts, pods=args.pods, model=args.model,
                            encap=args.encap, control="etcd")
        data["build_seconds"] = time.monotonic() - began
        print(f"lab {name}: up in {data['build_seconds']:.0f} s; settling {args.settle:g} s",
              file=sys.stderr)
        time.sleep(args.settle)
        pids = [h.agent_pid for h in lab.hosts]
        etcd_pid = lab.etcd_pid
        data["agents"] = [memory(pid) | {"host": h.name, "adds_served": h.agent_adds}
                          for pid, h in zip(pids, lab.hosts, strict=True)]
        print(f"sampling idle CPU for {args.idle:g} s", file=sys.stderr)
        cpus = idle_cpu([*pids, etcd_pid], args.idle)
        for agent, cpu in zip(data["agents"], cpus, strict=False):
            agent["idle_cpu_pct"] = cpu
        data["etcd"] = memory(etcd_pid) | {"idle_cpu_pct": cpus[-1]}
        data["etcd_metrics"] = etcd_metrics(name)
        data["mem_available_idle_mib"] = mem_available_mib()
        data["kernel_state"] = kernel_state(lab)
        print("one more host joins", file=sys.stderr)
        data["join"] = measure_join(lab, name)
        data["load_after"] = os.getloadavg()
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            began = time.monotonic()
            try:
                report = labapi.lab_down(name)
                data["down"] = {"clean": report.clean, "leftovers": report.leftovers,
                                "seconds": time.monotonic() - began}
            except labapi.LabError as exc:
                print(f"lab {name}: {exc}", file=sys.stderr)
        with contextlib.suppress(OSError):
            if etcdnode.lab_etcds(name):
                print(f"lab {name}: etcd still runs", file=sys.stderr)
    return data


def spread(values: list[float], digits: int = 1) -> str:
    return (f"{bl.fmt(min(values), digits)} / {bl.fmt(bl.median(values), digits)} / "
            f"{bl.fmt(max(values), digits)}") if values else "-"


def report(data: dict[str, Any]) -> None:
    agents = data["agents"]
    hosts = len(agents)
    print(f"scale: {hosts} hosts x {data['params']['pods']} pods, etcd control plane, model "
          f"{data['params']['model']} (encap {data['params']['encap']}); lab built in "
          f"{data['build_seconds']:.0f} s")
    rows = [
        ["agent RSS MiB (min / median / max)", spread([a["rss"] for a in agents]),
         f"target <= {TARGET_RSS_MIB:g}"],
        ["agent PSS MiB", spread([a["pss"] for a in agents]), "libraries shared"],
        ["agent USS MiB", spread([a["uss"] for a in agents]), "its own pages"],
        ["agent threads", spread([float(a["threads"]) for a in agents], 0), ""],
        ["agent idle CPU % of a core", spread([a["idle_cpu_pct"] for a in agents], 2),
         f"all agents: {sum(a['idle_cpu_pct'] for a in agents):.0f} %"],
        ["etcd RSS MiB / idle CPU %", f"{data['etcd']['rss']:.0f} / "
         f"{data['etcd']['idle_cpu_pct']:.1f}", ""],
        ["MemAvailable MiB before / lab idle",
         f"{data['mem_available_before_mib']:.0f} / {data['mem_available_idle_mib']:.0f}",
         f"{(data['mem_available_before_mib'] - data['mem_available_idle_mib']) / hosts:.0f} "
         "MiB per host (agent, namespaces, etcd share)"],
    ]
    metrics = data["etcd_metrics"]
    rows.append(["etcd watchers / watch streams",
                 f"{metrics.get('etcd_debugging_mvcc_watcher_total', 0):.0f} / "
                 f"{metrics.get('etcd_debugging_mvcc_watch_stream_total', 0):.0f}",
                 "one watch per agent and network"])
    join = data["join"]
    rows.append(["one host joins: revisions / puts / events to watchers",
                 f"{join['revisions']:.0f} / {join['puts']:.0f} / "
                 f"{join['events_sent_to_watchers']:.0f}",
                 f"every host programmed it after {join['all_programmed_seconds']} s"])
    state = data["kernel_state"]
    for key in ("routes", "neigh", "fdb"):
        counts = [float(s[key]) for s in state]
        rows.append([f"per host {key}", spread(counts, 0),
                     f"expected {hosts - 1}: {sum(c == hosts - 1 for c in counts)}/{hosts} "
                     "hosts exactly"])
    print(bl.table(["what", "figure", "note"], rows))
    print("\nwhere an agent's RSS goes (fresh interpreters, one import more each):")
    print(bl.table(["step", "RSS MiB"],
                   [[s["step"], f"{s['rss_mib']:.1f}"] for s in data["import_rss"]]))
    median_rss = bl.median([a["rss"] for a in agents])
    print(f"\nagent RSS median {median_rss:.1f} MiB, target {TARGET_RSS_MIB:g} MiB: "
          + ("meets" if median_rss <= TARGET_RSS_MIB else "MISSES"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    if "agents" in data:
        report(data)
    print(f"wrote {bl.write_json('scale', args.out, data)}")


if __name__ == "__main__":
    main()
