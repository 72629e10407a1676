"""``xvmctl connectivity``: probe containers through the agents, test every hop."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from xvmcni.cli import status

EXIT_OK, EXIT_FAILED, EXIT_CANNOT = 0, 1, 2


def _agents(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.lab:
        from xvmcni.lab.model import load_lab
        lab = load_lab(args.lab)
        return [(h.name, lab.agent_socket(h.name)) for h in lab.hosts]
    found = []
    for item in args.agent or []:
        host, sep, sock = item.partition("=")
        if not sep or not host or not sock:
            raise ValueError(f"--agent {item!r}: expected HOST=SOCKET")
        found.append((host, sock))
    return found or [("this-host", args.socket)]


def cmd_connectivity(args: argparse.Namespace) -> int:
    from xvmcni.diagnose import connectivity
    from xvmcni.lab.names import LabError

    err = status.style_for(sys.stderr)
    if os.geteuid() != 0:
        print(err.red("error: ") + "xvmctl connectivity needs root (the agents' sockets "
              "are root-only)", file=sys.stderr)
        return EXIT_CANNOT

    def progress(line: str) -> None:
        print(err.dim(f"connectivity: {line}"), file=sys.stderr, flush=True)

    try:
        result = connectivity.run(_agents(args), args.network, progress)
    except (ValueError, LabError, connectivity.ConnectivityError,
            status.AgentUnavailable) as exc:
        print(err.red("error: ") + str(exc), file=sys.stderr)
        return EXIT_CANNOT
    if args.json:
        print(json.dumps({"network": result.network, "ok": result.ok,
                          "probes": [asdict(p) for p in result.probes],
                          "cells": [{**asdict(c), "why": "" if c.ok else
                                     connectivity.explain(result, c)}
                                    for c in result.cells]}, indent=2))
    else:
        print(connectivity.render(result, status.style_for(sys.stdout)))
    return EXIT_OK if result.ok else EXIT_FAILED


def add_connectivity(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "connectivity", help="test the network end to end with throwaway probe containers",
        description="Ask each host's agent to attach a probe container (a network "
                    "namespace, attached by the real command flow), then test from every "
                    "probe: its gateway, every other probe (small and full-size with DF), "
                    "and every other host's underlay address. Prints a matrix and names "
                    "the failing hop; the probes are always deleted. Agents are reached "
                    "by their unix sockets: this host's, a lab's (--lab), or other hosts' "
                    "forwarded over SSH (ssh -L /tmp/hB.sock:/run/xvm-cni/xvm-cnid.sock "
                    "root@hB, then --agent hB=/tmp/hB.sock).",
        epilog="exit status: 0 every test passed, 1 some failed, 2 could not test")
    p.add_argument("--network", metavar="NAME", help="the network (needed when the agent "
                   "knows more than one)")
    p.add_argument("--agent", action="append", metavar="HOST=SOCKET",
                   help="a host's agent socket (repeatable; default: this host's)")
    p.add_argument("--lab", metavar="NAME", help="every host of the lab NAME")
    p.add_argument("--socket", default=status.default_socket(), metavar="PATH",
                   help="this host's agent socket (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_connectivity)
