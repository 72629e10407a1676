"""``xvm-cnid``: the node agent's command line, logging and signals."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from xvmcni.agent.server import Agent, AgentOptions
from xvmcni.cni import wire

LEVELS = ["debug", "info", "warning", "error"]
RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message"}


class JsonLines(logging.Formatter):
    """One JSON object per line: easy for journald, Loki, or jq."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xvm-cnid", description="xvm-cni node agent")
    p.add_argument("--socket", type=Path, default=AgentOptions.socket_path,
                   help="unix socket the plugin talks to (default %(default)s)")
    p.add_argument("--cni-conf-dir", type=Path, action="append", dest="conf_dirs",
                   help="CNI config dir to scan for xvm-cni networks (repeatable; "
                        f"default {wire.DEFAULT_CONF_DIR})")
    p.add_argument("--data-dir", type=Path, action="append", dest="data_dirs",
                   help=f"xvm-cni dataDir to scan (repeatable; default {wire.DEFAULT_DATA_DIR})")
    p.add_argument("--metrics-address", default="127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=9472, help="0 disables metrics")
    p.add_argument("--request-timeout", type=float, default=25.0)
    p.add_argument("--gc-interval", type=float, default=60.0,
                   help="seconds between reconcile/GC passes; 0 disables")
    p.add_argument("--workers", type=int, default=AgentOptions.workers)
    p.add_argument("--max-connections", type=int, default=AgentOptions.max_connections,
                   help="connections served at once; more get a busy answer (the plugin "
                        "then answers ADD with code 11 and runs DEL itself)")
    # $LOG_LEVEL as xcluster-cni's DaemonSet sets it; the option wins.
    env_level = os.environ.get("LOG_LEVEL", "").lower()
    p.add_argument("--log-level", default=env_level if env_level in LEVELS else "info",
                   choices=LEVELS, help="default $LOG_LEVEL, else info")
    p.add_argument("--log-file", default="", help="also append JSON lines here")
    p.add_argument("--log-format", default="json", choices=["json", "text"])
    return p.parse_args(argv)


def setup_logging(level: str, log_file: str, fmt: str) -> None:
    root = logging.getLogger("xvmcni")
    root.setLevel(level.upper())
    root.propagate = False
    formatter: logging.Formatter = JsonLines() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_file, args.log_format)
    options = AgentOptions(
        socket_path=args.socket,
        conf_dirs=args.conf_dirs or [Path(wire.DEFAULT_CONF_DIR)],
        data_dirs=args.data_dirs or [Path(wire.DEFAULT_DATA_DIR)],
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        request_timeout=args.request_timeout,
        gc_interval=args.gc_interval,
        workers=args.workers,
        max_connections=args.max_connections,
    )
    agent = Agent(options)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("xvmcni.agent").info("signal %d: stopping", signum)
        agent.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.serve_forever()
    except RuntimeError as exc:  # e.g. another agent owns the socket
        logging.getLogger("xvmcni.agent").error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
