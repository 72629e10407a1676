"""``xvmctl status``'s text for an agent's reply (moved from the e2e lab tests: it
needs no namespaces)."""

from __future__ import annotations

from typing import Any

from xvmcni.cli import status as statusmod

PLAIN = statusmod.Style(ok="ok", bad="--", self_=".", times="x")


def test_status_text_of_an_agent_reply() -> None:
    reply: dict[str, Any] = {
        "agent": {"pid": 11, "uptime": 3725.4, "socket": "/s", "requests": {"DEL": 1, "ADD": 3},
                  "metrics": ""},
        "networks": [{"name": "n1", "bridge": "xvmbr7", "vni": 7, "subnet": "10.1.0.0/24",
                      "containers": 14, "used": 14, "size": 14, "pool": "10.1.0.2-10.1.0.15",
                      "ready": False, "reason": "address range exhausted"}]}
    text = statusmod.render_status(reply, PLAIN).splitlines()
    assert text[0] == "xvm-cnid pid 11, up 1h 02m, socket /s"
    assert text[1] == "  requests  ADD 3, DEL 1 (4 total)"
    assert text[2] == "  metrics   off (--metrics-port 0)"
    assert text[-1].split() == ["n1", "xvmbr7", "7", "10.1.0.0/24", "10.1.0.2-10.1.0.15", "14",
                                "14/14", "(100.0%)", "NO:", "address", "range", "exhausted"]
    assert [statusmod.format_uptime(s) for s in (5, 65, 3600, 90000)] == \
        ["5s", "1m 05s", "1h 00m", "1d 01h"]
