"""``xvmctl doctor``: diagnose this host's xvm-cni networks, read-only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from xvmcni.cli import status
from xvmcni.cni import wire

DEFAULT_BIN_DIRS = ("/opt/cni/bin",)


def cmd_doctor(args: argparse.Namespace) -> int:
    from xvmcni.diagnose import findings as fd
    from xvmcni.diagnose.host import Options
    from xvmcni.diagnose.render import render
    from xvmcni.diagnose.run import diagnose

    if os.geteuid() != 0:
        print("error: xvmctl doctor needs root (it reads netlink, nftables and the agent's "
              "root-only socket)", file=sys.stderr)
        return fd.EXIT_CANNOT_CHECK
    options = Options(socket=args.socket,
                      conf_dirs=[Path(d) for d in args.conf_dirs or [wire.DEFAULT_CONF_DIR]],
                      data_dirs=[Path(d) for d in args.data_dirs or [wire.DEFAULT_DATA_DIR]],
                      bin_dirs=[Path(d) for d in args.bin_dirs or DEFAULT_BIN_DIRS],
                      timeout=args.timeout)
    report = diagnose(options, args.network)
    if args.json:
        print(json.dumps({"networks": report.networks, "exit": report.exit_status,
                          "findings": [f.to_dict() for f in report.findings]}, indent=2))
    else:
        print(render(report, status.style_for(sys.stdout), verbose=args.verbose))
    return report.exit_status


def add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor", help="diagnose this host's xvm-cni networks and say how to fix them",
        description="Check, without changing anything, the node agent, the plugin file, "
                    "hostInterface, kernel settings, host firewall, our own kernel objects, "
                    "multicast, the control plane and IPAM of every xvm-cni network this "
                    "host knows (its CNI config dirs and the agent's state). Each problem "
                    "comes with its cause and the command that fixes it. Run as root in "
                    "the host's network namespace.",
        epilog="exit status: 0 all checks pass, 1 a problem was found, 2 a check could "
               "not run")
    p.add_argument("--network", metavar="NAME", help="only this network")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also say why each passing check passed")
    p.add_argument("--socket", default=status.default_socket(), metavar="PATH",
                   help="the agent's unix socket (default: %(default)s)")
    p.add_argument("--cni-conf-dir", action="append", dest="conf_dirs", metavar="DIR",
                   help=f"CNI config directory (repeatable; default {wire.DEFAULT_CONF_DIR})")
    p.add_argument("--data-dir", action="append", dest="data_dirs", metavar="DIR",
                   help=f"state directory (repeatable; default {wire.DEFAULT_DATA_DIR})")
    p.add_argument("--cni-bin-dir", action="append", dest="bin_dirs", metavar="DIR",
                   help="where the runtime looks for the plugin (repeatable; default "
                        "/opt/cni/bin)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for the agent and the control plane")
    p.set_defaults(func=cmd_doctor)
