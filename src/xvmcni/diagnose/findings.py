"""What a check reports, and how a run's findings become an exit status."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OK, FAIL, WARN, ERROR = "ok", "fail", "warn", "error"
EXIT_OK, EXIT_PROBLEM, EXIT_CANNOT_CHECK = 0, 1, 2


@dataclass(frozen=True)
class Finding:
    """One result: ``status`` ok / fail (✗) / warn (!) / error (the check itself
    could not run); ``subject`` what it is about ("eth0", "agent"); ``cause`` one
    sentence; ``fix`` the command or config change that fixes it ('' when ok)."""

    check: str
    status: str
    subject: str
    cause: str
    fix: str = ""
    network: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(check: str, subject: str, cause: str, network: str = "") -> Finding:
    return Finding(check, OK, subject, cause, "", network)


def fail(check: str, subject: str, cause: str, fix: str, network: str = "") -> Finding:
    return Finding(check, FAIL, subject, cause, fix, network)


def warn(check: str, subject: str, cause: str, fix: str, network: str = "") -> Finding:
    return Finding(check, WARN, subject, cause, fix, network)


def error(check: str, subject: str, cause: str, network: str = "") -> Finding:
    return Finding(check, ERROR, subject, cause, "", network)


def exit_status(findings: list[Finding]) -> int:
    """0 all pass, 1 a problem was found (✗ or !), 2 a check could not run (and
    nothing else was found wrong: a found problem is the more useful answer)."""
    if any(f.status in (FAIL, WARN) for f in findings):
        return EXIT_PROBLEM
    if any(f.status == ERROR for f in findings):
        return EXIT_CANNOT_CHECK
    return EXIT_OK
