"""The ``xvm-cni`` executable: environment + stdin in, result or error JSON out.

Everything that can go wrong ends as the spec's error object on stdout and exit
status 1; a traceback never reaches the runtime.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from xvmcni.cni.errors import INTERNAL, CniError
from xvmcni.cni.request import Request, from_environ
from xvmcni.cni.result import SUPPORTED_VERSIONS


def version_reply(cni_version: str) -> dict[str, Any]:
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def emit(out: TextIO, payload: dict[str, Any] | None) -> None:
    if payload is not None:
        out.write(json.dumps(payload))
        out.write("\n")
    out.flush()


def run(environ: dict[str, str], stdin: bytes, out: TextIO) -> int:
    """One invocation; returns the exit status. Separate from ``main`` for tests."""
    # Errors repeat the caller's version, even when the environment is what is wrong.
    cni_version = declared_version(stdin)
    try:
        request = from_environ(environ, stdin)
        cni_version = request.cni_version
        if request.command == "VERSION":
            # Answered without importing the kernel side at all.
            emit(out, version_reply(cni_version))
            return 0
        emit(out, dispatch(request))
        return 0
    except CniError as err:
        emit(out, err.to_dict(cni_version))
        return 1
    except Exception as exc:  # noqa: BLE001 - the runtime must get JSON, not a traceback
        emit(out, CniError(INTERNAL, "internal error in xvm-cni", repr(exc)).to_dict(cni_version))
        return 1


def declared_version(stdin: bytes) -> str:
    try:
        version = json.loads(stdin).get("cniVersion", "0.1.0")
    except (ValueError, AttributeError):
        return "1.0.0"  # no usable config: answer in the newest stable format
    return version if isinstance(version, str) else "1.0.0"


def dispatch(request: Request) -> dict[str, Any] | None:
    # Imported here so VERSION and config errors never pay for pyroute2.
    from xvmcni.handler import handle

    return handle(request)


def main() -> None:
    stdin = b"" if sys.stdin is None or sys.stdin.closed else sys.stdin.buffer.read()
    sys.exit(run(dict(os.environ), stdin, sys.stdout))


if __name__ == "__main__":
    main()
