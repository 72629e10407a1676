"""Where an ADD/DEL through xvm-cnid spends its time: py-spy on the live agent, plus the
agent's own per-request timings against what the runtime sees.

    sudo .venv/bin/pip install py-spy        # once; not a project dependency
    sudo .venv/bin/python bench/profile_agent.py [--pods 50] [--rounds 3] [--rate 500]

Starts the agent setup of addel.py (thin plugin file -> xvm-cnid in a simulated
host), does the untimed anchor ADD and warm-up, then runs ``--rounds`` sequential
blocks of ``--pods`` ADDs and DELs while ``py-spy record --format raw`` samples the
agent (active threads only; py-spy slows the agent a little). Prints: the split of
a request's wall time (runtime-side, from perf_counter_ns; agent-side, from the
agent's own log line per request), and, per thread role, the samples attributed to
the innermost xvmcni function of each stack (so pyroute2, sqlite and kernel time
count for the project function that asked for it) and the package the sampled
frame was in. The JSON also keeps the 15 most frequent stacks per role.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as bl

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")
AGENT_LINE = re.compile(r"^(?P<cmd>[A-Z]+) container=\S* ifname=\S* exit=\d+ (?P<ms>[\d.]+)ms$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25, help="functions to list")
    p.add_argument("--out", help="JSON output (default bench/results/profile_agent.json)")
    return p.parse_args(argv)


def py_spy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    if found.exists():
        return str(found)
    which = shutil.which("py-spy")
    if which is None:
        sys.exit("profile_agent: py-spy not found; install it: .venv/bin/pip install py-spy")
    return which


def frame_name(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    return f"{match['file']}:{match['func']}"


def _role(frames: list[str]) -> str:
    if any(f.startswith("xvmcni/agent/server.py:") and f.endswith("._run") for f in frames):
        return "CNI worker threads"
    if any(f.startswith("xvmcni/dataplane/reaper.py:") for f in frames):
        return "veth reaper thread"
    if any(f.startswith("xvmcni/agent/server.py:") and f.endswith(".handle") for f in frames):
        return "connection threads (socket, JSON)"
    return "other threads"


def aggregate(raw: str) -> dict[str, dict[str, Any]]:
    """Per thread role: samples attributed to the innermost project (xvmcni) frame of
    each stack, so library and kernel time counts for the project function that asked
    for it; plus the innermost frame's module (where the CPU actually was)."""
    owners: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    stacks: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        role = _role(frames)
        count = int(count_text)
        totals[role] += count
        stacks[role][" <- ".join(reversed(frames[-8:]))] += count
        ours = [f for f in frames if f.startswith("xvmcni/")]
        owners[role][ours[-1] if ours else "(outside xvmcni)"] += count
        leaf_file = frames[-1].split(":", 1)[0]
        leaves[role][leaf_file.split("/", 1)[0] if "/" in leaf_file else leaf_file] += count
    return {role: {"samples": totals[role], "by_project_function": dict(owners[role].most_common()),
                   "by_leaf_module": dict(leaves[role].most_common()),
                   "top_stacks": dict(stacks[role].most_common(15))}
            for role in sorted(totals, key=lambda r: -totals[r])}


def agent_timings(log_path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = collections.defaultdict(list)
    for line in log_path.read_text().splitlines():
        try:
            msg = json.loads(line).get("msg", "")
        except ValueError:
            continue
        match = AGENT_LINE.match(msg)
        if match:
            out[match["cmd"]].append(float(match["ms"]))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    spy = py_spy()
    with bl.Workspace() as ws:
        (setup,) = bl.build_setups(ws, [bl.AGENT_SETUP])
        assert setup.agent is not None
        anchor = bl.anchor_and_warm_up(ws, setup, args.warmup)
        log_mark = len(setup.agent.log_path.read_text().splitlines())
        raw_path = ws.tmp / "py-spy.raw"
        spy_proc = subprocess.Popen(
            [spy, "record", "--pid", str(setup.agent.pid), "--rate", str(args.rate),
             "--format", "raw", "--output", str(raw_path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ws.extra.append(spy_proc.kill)
        time.sleep(1.0)  # py-spy attaches
        client: dict[str, list[float]] = {"ADD": [], "DEL": []}
        for r in range(args.rounds):
            block = bl.sequential_block(ws, setup, args.pods, f"r{r}")
            client["ADD"] += block.add_ms
            client["DEL"] += block.del_ms
            print(f"round {r + 1}/{args.rounds}: ADD {bl.fmt(bl.median(block.add_ms))} ms, "
                  f"DEL {bl.fmt(bl.median(block.del_ms))} ms", file=sys.stderr)
        spy_proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        _, err = spy_proc.communicate(timeout=60)
        raw = raw_path.read_text() if raw_path.exists() else ""
        if not raw:
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')}")
        lines = setup.agent.log_path.read_text().splitlines()[log_mark:]
        log_copy = ws.tmp / "agent-during.log"
        log_copy.write_text("\n".join(lines) + "\n")
        agent_ms = agent_timings(log_copy)
        floors = {"thin VERSION (start-up, no agent)": [], "exec /bin/true": []}
        with setup.host.entered():
            for _ in range(30):
                floors["thin VERSION (start-up, no agent)"].append(
                    setup.invoke("VERSION", "v", "").ms)
                floors["exec /bin/true"].append(
                    bl.Setup("true", "/bin/true", {}, setup.host).invoke("VERSION", "", "").ms)
            setup.invoke("DEL", f"anchor-{anchor}", f"/run/netns/{anchor}")
    return {"params": vars(args), "client_ms": client, "agent_ms": dict(agent_ms),
            "floor_ms": {k: bl.median(v[3:]) for k, v in floors.items()},
            "profile": aggregate(raw)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    rows = []
    for op in ("ADD", "DEL"):
        runtime = bl.median(data["client_ms"][op])
        agent = bl.median(data["agent_ms"].get(op, []))
        rows.append([op, bl.fmt(runtime), bl.fmt(agent), bl.fmt(runtime - agent)])
    print(bl.table(["op (median)", "runtime sees ms", "inside agent ms",
                    "outside agent ms (exec, shim, socket)"], rows))
    print(bl.table(["floor", "median ms"],
                   [[k, bl.fmt(v)] for k, v in data["floor_ms"].items()]))
    for role, info in data["profile"].items():
        total = info["samples"]
        print(f"\n{role}: {total} samples")
        top = list(info["by_project_function"].items())[:args.top]
        print(bl.table(["innermost xvmcni function (incl. library + kernel time below it)",
                        "samples", "share"],
                       [[name, str(n), f"{100 * n / total:.0f} %"] for name, n in top]))
        leaf = list(info["by_leaf_module"].items())[:8]
        print(bl.table(["where the sampled frame was (top package/module)", "samples", "share"],
                       [[name, str(n), f"{100 * n / total:.0f} %"] for name, n in leaf]))
    print(f"\nwrote {bl.write_json('profile_agent', args.out, data)}")


if __name__ == "__main__":
    main()
