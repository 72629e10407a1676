"""Doctor's findings as text: per network, one line per finding, the fix under
each problem."""

from __future__ import annotations

from xvmcni.cli.status import Style
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.run import Report


def _mark(status: str, style: Style) -> str:
    if status == fd.OK:
        return style.green(style.ok)
    if status == fd.FAIL:
        return style.red(style.bad)
    if status == fd.WARN:
        return style.red("!")
    return style.bold("?")


def render(report: Report, style: Style, verbose: bool = False) -> str:
    lines: list[str] = []
    groups = [("", "this host")] + [(n, f"network {n}") for n in report.networks]
    for key, title in groups:
        items = [f for f in report.findings if f.network == key]
        if not items:
            continue
        lines.append(style.bold(title))
        for f in items:
            if f.status == fd.OK and not verbose:
                lines.append(f"  {_mark(f.status, style)} {f.check}: {f.subject}")
                continue
            lines.append(f"  {_mark(f.status, style)} {f.check}: {f.subject}: {f.cause}")
            if f.fix:
                lines.append(style.dim(f"      fix: {f.fix}"))
    problems = [f for f in report.findings if f.status in (fd.FAIL, fd.WARN)]
    errors = [f for f in report.findings if f.status == fd.ERROR]
    lines.append("")
    if problems:
        lines.append(style.red(f"doctor: {len(problems)} problem(s) found"))
    elif errors:
        lines.append(style.bold(f"doctor: no problem found, but {len(errors)} check(s) "
                                "could not run"))
    else:
        lines.append(style.green("doctor: all checks passed"))
    return "\n".join(lines)
