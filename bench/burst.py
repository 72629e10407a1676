"""Concurrent CNI ADD and DEL: 50 at once, xvm-cni (agent, in-process) vs bridge + host-local.

    sudo .venv/bin/python bench/burst.py [--pods 50] [--rounds 3] [--out FILE]

Per round and setup: ``--pods`` fresh namespaces (untimed); ``--pods`` threads, each
inside the setup's simulated host, wait on one barrier and then each run one ADD;
wall time = barrier release to the last exit. Then the same for DEL. Failures are a
non-zero exit or a JSON error object. Checked: after ADD, every address is distinct;
after DEL, no host veth of these pods is left (the agent deletes DEL'ed veths in the
background within ~50 ms: polled for up to 5 s, and the time it took is reported);
with an agent, that it served every call (a plugin that cannot reach it runs in-process).
An anchor pod (untimed, attached before the rounds) keeps the network joined.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import benchlib as bl

CLEAN_TIMEOUT = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bl.add_run_args(p, "burst", "concurrent pods")
    return p.parse_args(argv)


@dataclass
class Storm:
    wall_s: float
    calls: list[bl.Call]

    @property
    def failures(self) -> list[str]:
        return [c.describe() for c in self.calls if not c.ok]


def storm(setup: bl.Setup, command: str, pods: list[tuple[str, str]]) -> Storm:
    """Run ``command`` for every (container, netns) at the same instant."""
    barrier = threading.Barrier(len(pods) + 1)
    calls: list[bl.Call | None] = [None] * len(pods)
    ends = [0] * len(pods)

    def worker(i: int) -> None:
        container, netns = pods[i]
        with setup.host.entered():  # each thread enters the host itself, before the start
            barrier.wait()
            try:
                calls[i] = setup.invoke(command, container, netns)
            except Exception as exc:  # noqa: BLE001 - a failure to report, not to hide
                calls[i] = bl.Call(command, -1, "", repr(exc), 0)
            ends[i] = time.perf_counter_ns()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(pods))]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter_ns()
    for thread in threads:
        thread.join()
    done = [c if c is not None else bl.Call(command, -1, "", "no result", 0) for c in calls]
    return Storm((max(ends) - began) / 1e9, done)


def veth_names(host: bl.SimHost) -> set[str]:
    return {str(link["ifname"]) for link in bl.veths(host)}


def wait_clean(host: bl.SimHost, baseline: set[str]) -> tuple[float, list[str]]:
    """Seconds until only ``baseline`` veths remain (up to CLEAN_TIMEOUT), and leftovers."""
    began = time.monotonic()
    while True:
        left = sorted(veth_names(host) - baseline)
        if not left or time.monotonic() - began > CLEAN_TIMEOUT:
            return time.monotonic() - began, left
        time.sleep(0.005)


@dataclass
class Round:
    add: Storm
    delete: Storm
    unique_addresses: int
    new_veths_after_add: int
    clean_after_s: float
    leftover_veths: list[str] = field(default_factory=list)
    agent_served: int | None = None  # of the 2 x pods calls; None without an agent


def one_round(ws: bl.Workspace, setup: bl.Setup, pods: int, tag: str) -> Round:
    names = [ws.add_netns() for _ in range(pods)]
    try:
        baseline = veth_names(setup.host)
        served_before = bl.agent_served(setup)
        pairs = [(f"{tag}-{n}", f"/run/netns/{n}") for n in names]
        add = storm(setup, "ADD", pairs)
        addresses = {c.address for c in add.calls if c.ok}
        new_veths = len(veth_names(setup.host) - baseline)
        delete = storm(setup, "DEL", pairs)
        clean_s, left = wait_clean(setup.host, baseline)
        served_after = bl.agent_served(setup)
        served = None if served_before is None or served_after is None \
            else served_after - served_before
        return Round(add, delete, len(addresses), new_veths, clean_s, left, served)
    finally:
        ws.del_netns(names)


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    load_before = bl.machine()["loadavg"]
    rounds: dict[str, list[Round]] = {k: [] for k in args.setups}
    with bl.Workspace() as ws:
        setups = bl.build_setups(ws, args.setups)
        anchors = {}
        for setup in setups:
            print(f"warm-up  {setup.key}", file=sys.stderr)
            anchors[setup.key] = bl.anchor_and_warm_up(ws, setup, args.warmup)
        for r in range(args.rounds):
            for setup in setups[r % len(setups):] + setups[:r % len(setups)]:
                result = one_round(ws, setup, args.pods, f"r{r}")
                rounds[setup.key].append(result)
                print(f"round {r + 1}/{args.rounds}  {setup.key:24} "
                      f"ADD {result.add.wall_s:.2f} s ({len(result.add.failures)} failed, "
                      f"{result.unique_addresses} distinct addresses)  "
                      f"DEL {result.delete.wall_s:.2f} s ({len(result.delete.failures)} failed, "
                      f"clean after {result.clean_after_s * 1000:.0f} ms, "
                      f"{len(result.leftover_veths)} veths left)"
                      + (f"  agent served {result.agent_served} of {2 * args.pods}"
                         if result.agent_served is not None else ""), file=sys.stderr)
                bl.settle()
        for setup in setups:
            with setup.host.entered():
                setup.invoke("DEL", f"anchor-{anchors[setup.key]}",
                             f"/run/netns/{anchors[setup.key]}")
    return {"params": vars(args), "load_before": load_before,
            "setups": {k: bl.SETUP_HELP[k] for k in args.setups},
            "rounds": {k: [_round_dict(r) for r in v] for k, v in rounds.items()}}


def _round_dict(r: Round) -> dict[str, Any]:
    return {"add_wall_s": r.add.wall_s, "del_wall_s": r.delete.wall_s,
            "add_call_ms": [c.ms for c in r.add.calls],
            "del_call_ms": [c.ms for c in r.delete.calls],
            "add_failures": r.add.failures, "del_failures": r.delete.failures,
            "unique_addresses": r.unique_addresses,
            "new_veths_after_add": r.new_veths_after_add,
            "clean_after_s": r.clean_after_s, "leftover_veths": r.leftover_veths,
            "agent_served": r.agent_served}


def summarize(data: dict[str, Any]) -> list[dict[str, Any]]:
    pods = data["params"]["pods"]
    rows = []
    for op, key in (("ADD", "add"), ("DEL", "del")):
        ref_rounds = data["rounds"].get(bl.REFERENCE)
        ref_wall = bl.median([r[f"{key}_wall_s"] for r in ref_rounds]) if ref_rounds else None
        for setup, rounds in data["rounds"].items():
            walls = [r[f"{key}_wall_s"] for r in rounds]
            calls = [ms for r in rounds for ms in r[f"{key}_call_ms"]]
            failures = sum(len(r[f"{key}_failures"]) for r in rounds)
            if op == "ADD":
                check = "distinct addresses " + "/".join(
                    str(r["unique_addresses"]) for r in rounds) + f" of {pods}"
            else:
                check = "veths left " + "/".join(str(len(r["leftover_veths"])) for r in rounds) \
                    + ", gone after " + "/".join(f"{r['clean_after_s'] * 1000:.0f}"
                                                 for r in rounds) + " ms"
            served = [r["agent_served"] for r in rounds if r["agent_served"] is not None]
            if served and op == "ADD":
                check += "; agent served " + "/".join(map(str, served)) + f" of {2 * pods} calls"
            med = bl.median(walls)
            rows.append({"setup": setup, "op": op, "pods": pods, "rounds": len(rounds),
                         "wall_s_median": med, "wall_s_max": max(walls),
                         "ratio_vs_reference": med / ref_wall if ref_wall else None,
                         "call_ms_median": bl.median(calls), "call_ms_max": max(calls),
                         "failures": failures, "check": check})
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    rows = summarize(data)
    data["rows"] = rows
    print(bl.table(
        ["setup", "op", "pods x rounds", "wall s (median)", "wall s (max)", "ratio vs ref",
         "per call ms (median/max)", "failures", "check"],
        [[r["setup"], r["op"], f"{r['pods']} x {r['rounds']}", bl.fmt(r["wall_s_median"], 2),
          bl.fmt(r["wall_s_max"], 2),
          f"{r['ratio_vs_reference']:.2f}x" if r["ratio_vs_reference"] else "-",
          f"{bl.fmt(r['call_ms_median'], 0)} / {bl.fmt(r['call_ms_max'], 0)}",
          str(r["failures"]), r["check"]] for r in rows]))
    for setup, rounds in data["rounds"].items():
        for r in rounds:
            for item in (r["add_failures"] + r["del_failures"])[:3]:
                print(f"failure {setup}: {item}")
    print(f"\nwrote {bl.write_json('burst', args.out, data)}")


if __name__ == "__main__":
    main()
