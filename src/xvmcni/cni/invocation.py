"""One CNI invocation, environment + stdin in, one answer out, whatever happens.

Everything that can go wrong ends as the spec's error object and exit status 1; a
traceback never reaches the runtime. The work itself is handed in (``handle``):
the in-process plugin and the agent both answer through here, each with its own
way to run the command flow. Stdlib only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xvmcni.cni.request import Request, from_environ
from xvmcni.cni.wire import declared_version, version_reply
from xvmcni.errors import INTERNAL, CniError

# Runs one parsed request: its result object, or None (DEL, GC, STATUS print nothing).
Handler = Callable[[Request], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Outcome:
    """One finished invocation: what to print, the exit status, and the error code."""

    exit: int
    payload: dict[str, Any] | None
    code: int | None = None

    def stdout(self) -> str:
        return json.dumps(self.payload) + "\n" if self.payload is not None else ""


def answer(environ: dict[str, str], stdin: bytes, handle: Handler) -> Outcome:
    """Parse and validate the invocation, answer VERSION, run anything else through
    ``handle``, and turn every failure into the caller's error format."""
    # Errors repeat the caller's version, even when the environment is what is wrong.
    cni_version = declared_version(stdin)
    try:
        request = from_environ(environ, stdin)
        cni_version = request.cni_version
        if request.command == "VERSION":
            return Outcome(0, version_reply(cni_version))
        return Outcome(0, handle(request))
    except CniError as err:
        return Outcome(1, err.to_dict(cni_version), err.code)
    except Exception as exc:  # noqa: BLE001 - the runtime must get JSON, not a traceback
        bug = CniError(INTERNAL, "internal error in xvm-cni", repr(exc))
        return Outcome(1, bug.to_dict(cni_version), bug.code)
