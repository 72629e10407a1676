"""The control plane itself: what asking it for the peers found (reachable, this
host's record present and current); the source per control plane is in
``diagnose.peersource``."""

from __future__ import annotations

from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.target import Target

NAME = "controlplane"


def run(t: Target) -> list[Finding]:
    return list(t.peers().findings)
