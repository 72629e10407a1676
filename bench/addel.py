"""Sequential CNI ADD and DEL latency: xvm-cni (agent, in-process) vs bridge + host-local.

    sudo .venv/bin/python bench/addel.py [--pods 50] [--rounds 3] [--warmup 3] [--out FILE]

Per round and setup (setup order rotates every round): create ``--pods`` fresh pod
namespaces (untimed), ADD them one after another, DEL them one after another, time
every invocation of the executable (``perf_counter_ns`` around ``subprocess.run``),
remove the namespaces (untimed). Each setup runs on its own simulated host. Before
the rounds, per setup and untimed: the network's first ADD (an "anchor" pod that
stays until the end, so no sample includes creating or removing the bridge/VXLAN)
and ``--warmup`` ADD/DEL pairs. Medians and p95 are over all rounds' samples.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import benchlib as bl


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bl.add_run_args(p, "addel", "pods per round")
    return p.parse_args(argv)


def floor(ws: bl.Workspace, setups: list[bl.Setup], samples: int = 30) -> dict[str, float]:
    """What the harness and bare start-up cost (VERSION touches no kernel state)."""
    host = setups[0].host
    thin = next((s for s in setups if s.key in (bl.AGENT_SETUP, bl.THIN_FALLBACK)), None)
    ref = next((s for s in setups if s.key == bl.REFERENCE), None)
    probes: dict[str, bl.Setup] = {
        "exec /bin/true (harness floor)": bl.Setup("true", "/bin/true", {}, host)}
    if thin is not None:
        probes["xvm thin file: VERSION"] = thin
    if ref is not None:
        probes["ref bridge: VERSION"] = ref
    medians: dict[str, float] = {}
    with host.entered():
        for label, setup in probes.items():
            times = [setup.invoke("VERSION", "v", "").ms for _ in range(samples)]
            medians[label] = bl.median(times[3:])
    return medians


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    load_before = bl.machine()["loadavg"]
    samples: dict[str, dict[str, list[float]]] = {k: {"ADD": [], "DEL": []} for k in args.setups}
    failures: dict[str, list[str]] = {k: [] for k in args.setups}
    with bl.Workspace() as ws:
        setups = bl.build_setups(ws, args.setups)
        anchors = {}
        for setup in setups:
            print(f"warm-up  {setup.key}", file=sys.stderr)
            anchors[setup.key] = bl.anchor_and_warm_up(ws, setup, args.warmup)
        floors = floor(ws, setups)
        served_before = {s.key: bl.agent_served(s) for s in setups}
        for r in range(args.rounds):
            order = setups[r % len(setups):] + setups[:r % len(setups)]
            for setup in order:
                began = time.monotonic()
                block = bl.sequential_block(ws, setup, args.pods, f"r{r}")
                samples[setup.key]["ADD"] += block.add_ms
                samples[setup.key]["DEL"] += block.del_ms
                failures[setup.key] += block.failures
                print(f"round {r + 1}/{args.rounds}  {setup.key:24} "
                      f"ADD {bl.fmt(bl.median(block.add_ms))} ms  "
                      f"DEL {bl.fmt(bl.median(block.del_ms))} ms  "
                      f"({time.monotonic() - began:.1f} s, {len(block.failures)} failures)",
                      file=sys.stderr)
                bl.settle()
        served = {s.key: (after - served_before[s.key])
                  for s in setups
                  if (after := bl.agent_served(s)) is not None
                  and served_before[s.key] is not None}
        for setup in setups:  # the anchors' DEL: untimed, but it must work
            with setup.host.entered():
                call = setup.invoke("DEL", f"anchor-{anchors[setup.key]}",
                                    f"/run/netns/{anchors[setup.key]}")
            if not call.ok:
                failures[setup.key].append(f"anchor DEL: {call.describe()}")
    return {"params": vars(args), "load_before": load_before, "floor_ms": floors,
            "agent_served": served,
            "samples_ms": samples, "failures": failures,
            "setups": {k: bl.SETUP_HELP[k] for k in args.setups}}


def summarize(data: dict[str, Any]) -> list[dict[str, Any]]:
    samples = data["samples_ms"]
    ref = samples.get(bl.REFERENCE)
    rows = []
    for op in ("ADD", "DEL"):
        ref_median = bl.median(ref[op]) if ref else float("nan")
        for key, by_op in samples.items():
            values = by_op[op]
            med = bl.median(values)
            rows.append({"setup": key, "op": op, "n": len(values), "median_ms": med,
                         "p95_ms": bl.percentile(values, 95),
                         "ratio_vs_reference": med / ref_median if ref else None,
                         "failures": sum(1 for f in data["failures"][key]
                                         if f.startswith(op))})
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    rows = summarize(data)
    data["rows"] = rows
    print(bl.table(["setup", "op", "n", "median ms", "p95 ms", "ratio vs reference", "failures"],
                   [[r["setup"], r["op"], str(r["n"]), bl.fmt(r["median_ms"]),
                     bl.fmt(r["p95_ms"]),
                     f"{r['ratio_vs_reference']:.2f}x" if r["ratio_vs_reference"] else "-",
                     str(r["failures"])] for r in rows]))
    print()
    print(bl.table(["start-up floor (same harness)", "median ms"],
                   [[k, bl.fmt(v)] for k, v in data["floor_ms"].items()]))
    for key, count in data["agent_served"].items():
        total = sum(len(v) for v in data["samples_ms"][key].values())
        print(f"{key}: the agent served {count} of the {total} timed calls")
    for key, items in data["failures"].items():
        for item in items[:5]:
            print(f"failure {key}: {item}")
    print(f"\nwrote {bl.write_json('addel', args.out, data)}")


if __name__ == "__main__":
    main()
