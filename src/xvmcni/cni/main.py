"""The ``xvm-cni`` executable: environment + stdin in, result or error JSON out.

Everything that can go wrong ends as the spec's error object on stdout and exit
status 1; a traceback never reaches the runtime.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from xvmcni.cni.request import Request, from_environ
from xvmcni.cni.wire import declared_version, version_reply
from xvmcni.errors import INTERNAL, CniError

if TYPE_CHECKING:
    from xvmcni.runtime import Runtime


@dataclass(frozen=True)
class Outcome:
    """One finished invocation: what to print, the exit status, and the error code."""

    exit: int
    payload: dict[str, Any] | None
    code: int | None = None

    def stdout(self) -> str:
        return json.dumps(self.payload) + "\n" if self.payload is not None else ""


def emit(out: TextIO, payload: dict[str, Any] | None) -> None:
    if payload is not None:
        out.write(json.dumps(payload))
        out.write("\n")
    out.flush()


def run(environ: dict[str, str], stdin: bytes, out: TextIO,
        runtime: Runtime | None = None) -> int:
    """One invocation, printed to ``out``; returns the exit status."""
    outcome = execute(environ, stdin, runtime)
    out.write(outcome.stdout())
    out.flush()
    return outcome.exit


def execute(environ: dict[str, str], stdin: bytes, runtime: Runtime | None = None) -> Outcome:
    """One invocation as a value: the in-process plugin prints it, the agent sends it."""
    # Errors repeat the caller's version, even when the environment is what is wrong.
    cni_version = declared_version(stdin)
    try:
        request = from_environ(environ, stdin)
        cni_version = request.cni_version
        if request.command == "VERSION":
            # Answered without importing the kernel side at all.
            return Outcome(0, version_reply(cni_version))
        return Outcome(0, dispatch(request, runtime))
    except CniError as err:
        return Outcome(1, err.to_dict(cni_version), err.code)
    except Exception as exc:  # noqa: BLE001 - the runtime must get JSON, not a traceback
        bug = CniError(INTERNAL, "internal error in xvm-cni", repr(exc))
        return Outcome(1, bug.to_dict(cni_version), bug.code)


def dispatch(request: Request, runtime: Runtime | None = None) -> dict[str, Any] | None:
    # Imported here so VERSION and config errors never pay for pyroute2.
    from xvmcni.commands import run as run_command
    from xvmcni.runtime import Runtime

    return run_command(request, runtime or Runtime.in_process())


def main() -> None:
    stdin = b"" if sys.stdin is None or sys.stdin.closed else sys.stdin.buffer.read()
    sys.exit(run(dict(os.environ), stdin, sys.stdout))


if __name__ == "__main__":
    main()
