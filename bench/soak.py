"""Soak: random ADD/DEL/CHECK on a 3-host lab while agents are SIGKILLed; then the invariants.

    sudo .venv/bin/python bench/soak.py [--ops 1000] [--hosts 3] [--kill-every 100]
                                        [--seed 1] [--concurrency 3] [--out FILE]

Builds a lab in agent mode (``xvmcni.lab.lab_up(name, hosts, pods=1, agent=True)``),
runs a seeded plan of ``--ops`` operations through the thin plugin
(``xvmcni.lab.soak``: new pods, DELs plain/twice/netns gone/empty CNI_NETNS, CHECK
with prevResult, repeated ADD, and ADDs/CHECKs meant to fail with a given code),
``--concurrency`` at once, and after every ``--kill-every`` operations SIGKILLs
one host's agent and starts it again while operations go on. Every answer is
checked as it comes. Then: addresses unique across all hosts, one marked host veth
per live pod and nothing else, no retired veth left, nftables tables exactly on the
hosts with pods, each host's registry equal to its live pods, every pod's eth0
holding its address, and pings between live pods (all pairs up to 30 pods, else
each pod to one pod on every host). Finally every pod is DELed and the hosts must
be clean. The lab is always torn down (``lab_down``), also on errors and Ctrl-C.
Exit status 1 when any invariant or any answer was wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import time
from typing import Any

import benchlib as bl

from xvmcni import lab as labapi
from xvmcni.lab.soak import OK, RETRIED, SKIPPED, UNEXPECTED, Soak, SoakReport, SoakSettings

SHOWN_UNEXPECTED = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=1000, help="operations (default 1000; "
                   "--ops 150 is a quick run)")
    p.add_argument("--hosts", type=int, default=3, help="lab hosts (default 3)")
    p.add_argument("--kill-every", type=int, default=100,
                   help="SIGKILL and restart one host's agent after every N ops (default "
                        "100; 0: never)")
    p.add_argument("--seed", type=int, default=1, help="plan seed (default 1)")
    p.add_argument("--concurrency", type=int, default=3,
                   help="operations in flight at once (default 3)")
    p.add_argument("--target", type=int, default=8,
                   help="live pods per host the plan hovers around (default 8)")
    p.add_argument("--out", help="JSON output (default bench/results/soak.json)")
    args = p.parse_args(argv)
    if args.ops < 1 or args.hosts < 1 or args.concurrency < 1 or args.kill_every < 0:
        p.error("--ops, --hosts, --concurrency must be >= 1 and --kill-every >= 0")
    return args


def lab_name() -> str:
    """Unique per run; the lab API allows 1-24 lower-case letters and digits."""
    return f"xvms{os.getpid():x}{secrets.token_hex(3)}"


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> tuple[SoakReport | None, dict[str, Any]]:
    bl.require_root()
    bl.install_signal_handlers()
    # Ctrl-C too, even when started where SIGINT is ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    load_before = bl.machine()["loadavg"]
    name = lab_name()
    began = time.monotonic()
    report = None
    timings: dict[str, float] = {}
    down: dict[str, Any] = {}
    try:
        stderr(f"lab {name}: up ({args.hosts} hosts x 1 pod, agents)")
        lab = labapi.lab_up(name, hosts=args.hosts, pods=1, agent=True)
        timings["lab_up_s"] = time.monotonic() - began
        settings = SoakSettings(ops=args.ops, kill_every=args.kill_every, seed=args.seed,
                                concurrency=args.concurrency, target_per_host=args.target)
        report = Soak(lab, settings, progress=stderr).run()
    finally:
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: still tear down
            t = time.monotonic()
            result = labapi.lab_down(name)
            timings["lab_down_s"] = time.monotonic() - t
            down = {"clean": result.clean, "leftovers": result.leftovers}
            stderr(f"lab {name}: down ({'clean' if result.clean else result.leftovers})")
    timings["wall_s"] = time.monotonic() - began
    return report, {"params": vars(args), "load_before": load_before, "lab": name,
                    "timings": timings, "lab_down": down}


def ms_stats(values: list[float]) -> tuple[str, str]:
    return bl.fmt(bl.median(values)), bl.fmt(bl.percentile(values, 95))


def summarize(report: SoakReport, meta: dict[str, Any]) -> dict[str, Any]:
    by_kind = report.by_outcome()
    op_rows = []
    for kind, counts in by_kind.items():
        durations = [(r.ended - r.began) * 1000 for r in report.records if r.op.kind == kind]
        med, p95 = ms_stats(durations)
        op_rows.append([kind, str(sum(counts.values())), str(counts.get(OK, 0)),
                        str(counts.get(RETRIED, 0)), str(counts.get(UNEXPECTED, 0)),
                        str(counts.get(SKIPPED, 0)), med, p95])
    calls = sum(len(r.calls) for r in report.records)
    in_process = sum(1 for r in report.records for c in r.calls if c.in_process)
    restarts = report.restarts
    reach_cross = [r for r in report.reach if r.cross_host]
    overlapping = {id(r) for r in report.overlapping()}
    overlap_ms = [(r.ended - r.began) * 1000 for r in report.records if id(r) in overlapping]
    other_ms = [(r.ended - r.began) * 1000 for r in report.records if id(r) not in overlapping]
    figures = {
        "ops": len(report.records), "plugin_calls": calls, "in_process_calls": in_process,
        "ops_seconds": report.ops_seconds,
        "ops_per_s": len(report.records) / report.ops_seconds if report.ops_seconds else 0.0,
        "wall_s": meta["timings"]["wall_s"],
        "by_kind": by_kind,
        "unexpected": len(report.unexpected),
        "restarts": len(restarts),
        "restart_errors": [r.error for r in restarts if r.error],
        "restarts_aimed": sum(1 for r in restarts if r.aimed),
        "agent_down_s": [round(r.down_seconds, 3) for r in restarts],
        "ops_overlapping_restarts": len(overlapping),
        "live_pods_end": len(report.live_pods), "planned_live_end": report.planned_live,
        "invariants": report.audit.counts(), "after_cleanup": report.clean.counts(),
        "reach_pairs": len(report.reach),
        "reach_ok": len(report.reach) - len(report.unreachable),
        "reach_cross_host_pairs": len(reach_cross),
        "reach_cross_host_ok": sum(1 for r in reach_cross if r.reply.ok),
        "final_dels": len(report.final_dels),
        "agents_running_end": report.agents_running,
        "agent_log": report.agent_log,
        "agent_log_samples": report.agent_log_samples,
        "overlap_ms_median": bl.median(overlap_ms), "other_ms_median": bl.median(other_ms),
        "settle_s": report.settle_seconds,
        "ok": report.ok,
    }
    return {"figures": figures, "op_rows": op_rows}


def print_report(report: SoakReport, meta: dict[str, Any], summary: dict[str, Any]) -> None:
    f = summary["figures"]
    print(bl.table(["operation", "n", "ok", "retried (11 in restart)", "unexpected",
                    "skipped", "median ms", "p95 ms"], summary["op_rows"]))
    print()
    down = f["agent_down_s"]
    print(bl.table(["figure", "value"], [
        ["operations / plugin calls", f"{f['ops']} / {f['plugin_calls']} "
                                      f"(at least {f['in_process_calls']} ran in-process: "
                                      "no agent answered)"],
        ["ops phase", f"{f['ops_seconds']:.1f} s, {f['ops_per_s']:.1f} ops/s "
                      f"(concurrency {meta['params']['concurrency']})"],
        ["wall time (lab up .. down)", f"{f['wall_s']:.1f} s"],
        ["agent SIGKILL + restart", f"{f['restarts']} (down median "
                                    f"{bl.fmt(bl.median(down), 2)} s, max "
                                    f"{bl.fmt(max(down, default=float('nan')), 2)} s; "
                                    f"{len(f['restart_errors'])} errors; "
                                    f"{f['restarts_aimed']} with a call in flight)"],
        ["ops overlapping a restart (same host)",
         f"{f['ops_overlapping_restarts']} (median {bl.fmt(f['overlap_ms_median'])} ms; "
         f"the others {bl.fmt(f['other_ms_median'])} ms)"],
        ["live pods at the end (planned)", f"{f['live_pods_end']} ({f['planned_live_end']})"],
        ["reachability", f"{f['reach_ok']}/{f['reach_pairs']} pairs "
                         f"({f['reach_cross_host_ok']}/{f['reach_cross_host_pairs']} across "
                         "hosts)"],
        ["agents running at the end", " ".join(f"{h}:{n}" for h, n in
                                                f["agents_running_end"].items())],
        ["agent logs: ERROR / WARNING / Traceback lines",
         " ".join(f"{h}:{c[' ERROR ']}/{c[' WARNING ']}/{c['Traceback']}"
                  for h, c in f["agent_log"].items())],
    ]))
    print()
    rows = [[kind, str(n), str(f["after_cleanup"][kind])] for kind, n in f["invariants"].items()]
    print(bl.table(["invariant violations", "live pods", "after DEL of all"], rows))
    for host, lines in report.agent_log_samples.items():
        for line in lines:
            print(f"agent log {host}: {line}")
    for problem in (report.audit.problems() + report.clean.problems())[:20]:
        print(f"problem: {problem}")
    for pair in report.unreachable[:10]:
        print(f"unreachable: {pair.src} -> {pair.dst} ({pair.dst_ip}): {pair.reply.error}")
    for rec in report.unexpected[:SHOWN_UNEXPECTED]:
        print(f"\nunexpected: {rec.op.label()} at {rec.began:.2f} s: {rec.detail}")
        for call in rec.calls:
            print(f"  {call.brief()} CNI_NETNS={call.netns!r} at {call.began:.2f} s")
            if call.stdout.strip():
                print(f"    stdout: {call.stdout.strip()}")
            if call.stderr.strip():
                print(f"    stderr: {call.stderr.strip()}")
    print(f"\nverdict: {'PASS' if f['ok'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report, meta = run(args)
    except KeyboardInterrupt as exc:
        stderr(f"soak: interrupted ({str(exc) or 'Ctrl-C'}); the lab was torn down")
        return 130
    if report is None:
        return 1
    summary = summarize(report, meta)
    print_report(report, meta, summary)
    data = {**meta, **summary,
            "restarts": [vars(r) for r in report.restarts],
            "unexpected": [r.to_dict() for r in report.unexpected],
            "problems": report.audit.problems(), "problems_after_cleanup":
                report.clean.problems(),
            "unreachable": [f"{p.src}->{p.dst} {p.reply.error}" for p in report.unreachable],
            "records": [r.to_dict() for r in report.records]}
    print(f"wrote {bl.write_json('soak', args.out, data)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
