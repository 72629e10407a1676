"""Logging for the plugin: stderr (the runtime captures it) and an optional file."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s xvm-cni[%(process)d] %(message)s"


def configure(level: str, log_file: str = "") -> None:
    """Log at ``level`` to stderr and ``log_file``. Only for one-request processes:
    the agent owns its logging (Runtime.manage_logging)."""
    root = logging.getLogger("xvmcni")
    root.setLevel(level.upper())
    root.propagate = False
    if getattr(configure, "done", None) == (level, log_file):
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file))
        except OSError as exc:
            # A bad log path must not fail the container's network setup.
            sys.stderr.write(f"xvm-cni: cannot open logFile {log_file}: {exc}\n")
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
    configure.done = (level, log_file)  # type: ignore[attr-defined]
