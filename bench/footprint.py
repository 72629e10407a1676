"""xvm-cnid footprint: resident memory and CPU, idle and under the sequential ADD/DEL loop.

    sudo .venv/bin/python bench/footprint.py [--idle 10] [--pods 50] [--rounds 3] [--out FILE]

Starts ``xvm-cnid`` in a simulated host with its default options (Prometheus
metrics on the host namespace's 127.0.0.1:9472, reconcile/GC every 60 s) and samples
``/proc/<pid>/status`` (VmRSS and its RssAnon/RssFile/RssShmem parts, VmHWM, Threads)
and ``/proc/<pid>/stat`` (utime + stime) every 100 ms through three phases: idle
right after start (``--idle`` seconds, no request), load (the loop of addel.py
through the agent: ``--rounds`` x (``--pods`` ADDs then ``--pods`` DELs), after an
untimed anchor ADD and warm-up), and idle again after the load. CPU % is per core
(100 % = one core busy). For scale, the peak RSS of single plugin processes is
measured too (GNU time's %M).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import benchlib as bl

TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=float, default=10.0, help="seconds per idle phase")
    p.add_argument("--pods", type=int, default=50, help="pods per round of the load loop")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the load loop")
    p.add_argument("--warmup", type=int, default=3, help="untimed ADD/DEL pairs before load")
    p.add_argument("--out", help="JSON output (default bench/results/footprint.json)")
    return p.parse_args(argv)


@dataclass
class Sample:
    t: float
    rss_kib: int
    anon_kib: int          # RssAnon: heap, stacks (what a leak grows)
    file_kib: int          # RssFile: mapped files (libraries, sqlite's -shm)
    shmem_kib: int         # RssShmem
    hwm_kib: int
    threads: int
    cpu_s: float          # utime + stime of the agent
    children_cpu_s: float  # cutime + cstime (nft runs it waited for)


def read_sample(pid: int) -> Sample:
    status: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    with open(f"/proc/{pid}/stat") as f:
        # Fields after "(comm)": state is field 3, utime/stime 14/15, cutime/cstime 16/17.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    def kib(key: str) -> int:
        return int(status[key].split()[0])

    return Sample(time.monotonic(), kib("VmRSS"), kib("RssAnon"), kib("RssFile"),
                  kib("RssShmem"), kib("VmHWM"), int(status["Threads"]),
                  (utime + stime) / TICKS, (cutime + cstime) / TICKS)


@dataclass
class Sampler:
    """Samples the agent every SAMPLE_EVERY seconds in a thread; ``mark`` names phases."""

    pid: int
    samples: list[tuple[str, Sample]] = field(default_factory=list)
    phase: str = "start"
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def mark(self, phase: str) -> None:
        with self._lock:
            self.samples.append((self.phase, read_sample(self.pid)))  # closes the old phase
            self.phase = phase
            self.samples.append((phase, read_sample(self.pid)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            with self._lock:
                self.samples.append((self.phase, read_sample(self.pid)))

    def summary(self, phase: str, ops: int = 0) -> dict[str, Any]:
        rows = [s for p, s in self.samples if p == phase]
        wall = rows[-1].t - rows[0].t
        cpu = rows[-1].cpu_s - rows[0].cpu_s
        rss = [s.rss_kib / 1024 for s in rows]
        out = {"phase": phase, "seconds": wall, "samples": len(rows),
               "rss_mib_median": bl.median(rss), "rss_mib_max": max(rss),
               "hwm_mib": rows[-1].hwm_kib / 1024, "threads_max": max(s.threads for s in rows),
               "end_anon_file_shmem_mib": [rows[-1].anon_kib / 1024, rows[-1].file_kib / 1024,
                                           rows[-1].shmem_kib / 1024],
               "cpu_s": cpu, "cpu_pct_per_core": 100 * cpu / wall if wall else 0.0,
               "children_cpu_s": rows[-1].children_cpu_s - rows[0].children_cpu_s}
        if ops:
            out["ops"] = ops
            out["cpu_ms_per_op"] = 1000 * cpu / ops
        return out


def peak_rss_mib(setup: bl.Setup, ws: bl.Workspace) -> dict[str, float]:
    """Peak RSS of one ADD and one DEL process of ``setup``, from GNU time's %M.

    Not our own wait4(): the kernel keeps a process's peak RSS across execve, so a
    child forked from this (large) Python would report our size, not the plugin's;
    /usr/bin/time is a small C program, so what it reports is the plugin's own.
    """
    pod = ws.add_netns()
    peaks: dict[str, float] = {}
    with setup.host.entered():
        for command in ("ADD", "DEL"):
            with tempfile.NamedTemporaryFile("r") as report:
                proc = subprocess.run(
                    ["/usr/bin/time", "-o", report.name, "-f", "%M", setup.executable],
                    input=setup.stdin, capture_output=True, check=False,
                    env=setup.env(command, f"peak-{pod}", f"/run/netns/{pod}"))
                if proc.returncode != 0:
                    raise RuntimeError(f"{setup.key} {command}: {proc.stdout!r} {proc.stderr!r}")
                peaks[command] = int(report.read().split()[-1]) / 1024
    ws.del_netns([pod])
    return peaks


def run(args: argparse.Namespace) -> dict[str, Any]:
    bl.require_root()
    bl.install_signal_handlers()
    load_before = bl.machine()["loadavg"]
    with bl.Workspace() as ws:
        # The agent with its default options (metrics and GC on), as installed.
        agent_setup, console = bl.build_setups(ws, [bl.AGENT_SETUP, bl.CONSOLE], agent_args=())
        assert agent_setup.agent is not None
        sampler = Sampler(agent_setup.agent.pid)
        sampler.mark("idle after start")
        sampler.start()
        try:
            print(f"idle {args.idle:g} s", file=sys.stderr)
            time.sleep(args.idle)
            sampler.mark("warm-up")
            anchor = bl.anchor_and_warm_up(ws, agent_setup, args.warmup)
            sampler.mark("load: sequential ADD/DEL")
            ops = failures = 0
            for r in range(args.rounds):
                block = bl.sequential_block(ws, agent_setup, args.pods, f"r{r}")
                ops += len(block.add_ms) + len(block.del_ms)
                failures += len(block.failures)
                print(f"load round {r + 1}/{args.rounds}: ADD "
                      f"{bl.fmt(bl.median(block.add_ms))} ms, DEL "
                      f"{bl.fmt(bl.median(block.del_ms))} ms (median)", file=sys.stderr)
            sampler.mark("idle after load")
            print(f"idle {args.idle:g} s", file=sys.stderr)
            time.sleep(args.idle)
            sampler.mark("end")
        finally:
            sampler.stop()
        with agent_setup.host.entered():
            agent_setup.invoke("DEL", f"anchor-{anchor}", f"/run/netns/{anchor}")
        peaks = {"thin plugin -> agent": peak_rss_mib(agent_setup, ws),
                 "console script (in-process)": peak_rss_mib(console, ws)}
    phases = [sampler.summary("idle after start"),
              sampler.summary("load: sequential ADD/DEL", ops),
              sampler.summary("idle after load")]
    return {"params": vars(args), "load_before": load_before, "phases": phases,
            "load_failures": failures, "plugin_peak_rss_mib": peaks,
            "samples": [{"phase": p, **vars(s)} for p, s in sampler.samples]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = run(args)
    print(bl.table(
        ["agent phase", "seconds", "RSS MiB (median / max)", "at end: anon/file/shmem MiB",
         "VmHWM MiB", "threads", "CPU % (per core)", "CPU ms per op"],
        [[p["phase"], bl.fmt(p["seconds"]),
          f"{bl.fmt(p['rss_mib_median'])} / {bl.fmt(p['rss_mib_max'])}",
          " / ".join(bl.fmt(x) for x in p["end_anon_file_shmem_mib"]),
          bl.fmt(p["hwm_mib"]), str(p["threads_max"]), bl.fmt(p["cpu_pct_per_core"], 2),
          f"{bl.fmt(p['cpu_ms_per_op'])} ({p['ops']} ops)" if "ops" in p else "-"]
         for p in data["phases"]]))
    print()
    print(bl.table(["one plugin process", "ADD peak RSS MiB", "DEL peak RSS MiB"],
                   [[k, bl.fmt(v["ADD"]), bl.fmt(v["DEL"])]
                    for k, v in data["plugin_peak_rss_mib"].items()]))
    if data["load_failures"]:
        print(f"\n{data['load_failures']} failed calls during the load phase")
    print(f"\nwrote {bl.write_json('footprint', args.out, data)}")


if __name__ == "__main__":
    main()
