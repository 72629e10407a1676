"""The ``xvm-cni`` executable, in-process: environment + stdin in, result or error
JSON on stdout. (The installed plugin is ``cmd/shim.py``, which hands the call to the
node agent and comes here only when no agent answers.)

VERSION and malformed input are answered before the command flow is imported, so
they never pay for pyroute2.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from xvmcni.cni.invocation import Outcome, answer
from xvmcni.cni.request import Request

if TYPE_CHECKING:
    from xvmcni.runtime import Runtime


def dispatch(request: Request, runtime: Runtime | None = None) -> dict[str, Any] | None:
    # Imported here so VERSION and config errors never pay for pyroute2.
    from xvmcni.commands import run as run_command
    from xvmcni.runtime import Runtime

    return run_command(request, runtime or Runtime.in_process())


def execute(environ: dict[str, str], stdin: bytes, runtime: Runtime | None = None) -> Outcome:
    # Looked up at call time, so tests can replace ``dispatch``.
    return answer(environ, stdin, lambda request: dispatch(request, runtime))


def run(environ: dict[str, str], stdin: bytes, out: TextIO,
        runtime: Runtime | None = None) -> int:
    """One invocation, printed to ``out``; returns the exit status."""
    outcome = execute(environ, stdin, runtime)
    out.write(outcome.stdout())
    out.flush()
    return outcome.exit


def main() -> None:
    stdin = b"" if sys.stdin is None or sys.stdin.closed else sys.stdin.buffer.read()
    sys.exit(run(dict(os.environ), stdin, sys.stdout))


if __name__ == "__main__":
    main()
