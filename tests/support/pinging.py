"""A continuous ping between two lab pods, counting every echo: what the agent
restart tests use to prove that the data path never depends on the agent."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from xvmcni.lab import plumbing
from xvmcni.lab.icmp import echo
from xvmcni.lab.model import Pod


@dataclass
class PingRun:
    """A continuous ping: one ICMP echo every ``interval`` s, each waiting up to 1 s."""

    sent: int = 0
    received: int = 0
    sent_at: list[float] = field(default_factory=list)
    lost: list[tuple[float, str]] = field(default_factory=list)   # (when sent, why)
    max_rtt_ms: float = 0.0


def ping_continuously(src: Pod, dst_ip: str, stop: threading.Event, run: PingRun,
                      interval: float = 0.01) -> None:
    """From inside ``src``'s namespace (this thread only) until ``stop`` is set."""
    with plumbing.inside(src.netns_path):
        next_at = time.monotonic()
        while not stop.is_set():
            sent_at = time.monotonic()
            reply = echo(dst_ip, timeout=1.0, tries=1)
            run.sent += 1
            run.sent_at.append(sent_at)
            if reply.ok:
                run.received += 1
                run.max_rtt_ms = max(run.max_rtt_ms, reply.rtt_ms or 0.0)
            else:
                run.lost.append((sent_at, reply.error or "no reply"))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # late (a lost reply's timeout): no burst
