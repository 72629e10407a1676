"""A short soak on every CI run: 150 random ADD/DEL/CHECK on 3 lab hosts with two
agent SIGKILLs while operations go on, then the invariants (bench/soak.py runs the
same for 1000 operations and prints the figures).

Traffic stays inside the lab's namespaces (ICMP between its pods only).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from xvmcni import lab as labmod
from xvmcni.dataplane import ownership
from xvmcni.dataplane.reaper import RETIRED_GROUP
from xvmcni.lab.audit import audit, host_view
from xvmcni.lab.soak import Soak, SoakReport, SoakSettings

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="lab tests need root (network namespaces)")

SETTINGS = SoakSettings(ops=150, kill_every=60, seed=20261130, concurrency=3)


def explain(report: SoakReport) -> str:
    lines = report.audit.problems() + [f"after DEL of all: {p}"
                                       for p in report.clean.problems()]
    lines += [f"unreachable {r.src} -> {r.dst} ({r.dst_ip}): {r.reply.error}"
              for r in report.unreachable[:10]]
    for rec in report.unexpected[:5]:
        lines.append(f"unexpected {rec.op.label()}: {rec.detail}")
        lines += [f"    {c.brief()} netns={c.netns!r} stdout={c.stdout.strip()[:400]!r} "
                  f"stderr={c.stderr.strip()[-400:]!r}" for c in rec.calls]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def soaked() -> Iterator[tuple[labmod.Lab, SoakReport]]:
    """The lab after the soak (every pod DELed again, agents running) and the report."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    name = f"xts{os.getpid():x}{os.urandom(2).hex()}"
    try:
        lab = labmod.lab_up(name, hosts=3, pods=1, agent=True)
        if not lab.agent:
            pytest.skip("the lab runs without agents")
        yield lab, Soak(lab, SETTINGS).run()
    finally:
        report = labmod.lab_down(name)
        assert report.clean, report.leftovers


@pytest.fixture
def soak_report(soaked: tuple[labmod.Lab, SoakReport]) -> SoakReport:
    return soaked[1]


def test_every_answer_was_the_expected_one(soak_report: SoakReport) -> None:
    assert len(soak_report.records) == SETTINGS.ops
    assert not soak_report.unexpected, explain(soak_report)
    # the soak really ran what it claims: every kind, and pods at the end
    assert {r.op.kind for r in soak_report.records} >= {"ADD", "DEL", "CHECK", "READD"}
    assert len(soak_report.live_pods) == soak_report.planned_live > 0


def test_agents_were_killed_and_came_back(soak_report: SoakReport) -> None:
    restarts = soak_report.restarts
    assert len(restarts) == 2
    assert all(r.new_pid and r.new_pid != r.old_pid and not r.error for r in restarts), \
        [vars(r) for r in restarts]
    assert soak_report.agents_running == {"h1": 1, "h2": 1, "h3": 1}


def test_no_duplicate_and_no_leak_while_pods_live(soak_report: SoakReport) -> None:
    assert soak_report.audit.ok, explain(soak_report)
    assert set(soak_report.audit.counts()) >= {"duplicates", "leaked_veths", "leaked_tables",
                                               "retired_left", "registry"}


def test_every_live_pod_reaches_the_others(soak_report: SoakReport) -> None:
    pods = soak_report.live_pods
    assert soak_report.reach, "no pair was probed"
    assert not soak_report.unreachable, explain(soak_report)
    sources = {r.src for r in soak_report.reach}
    assert sources == {p.name for p in pods}
    assert any(r.cross_host for r in soak_report.reach)


def test_hosts_are_clean_after_del_of_everything(soak_report: SoakReport) -> None:
    assert soak_report.final_dels and all(r.outcome == "ok" for r in soak_report.final_dels)
    assert soak_report.clean.ok, explain(soak_report)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def test_the_audit_sees_real_leaks(soaked: tuple[labmod.Lab, SoakReport]) -> None:
    """On a real host: a veth with a container's mark, one in the retired group and a
    table with the network's name, none of them explained by a pod, are each found."""
    lab, _ = soaked
    host = lab.hosts[0]
    config = json.loads(Path(host.config_path).read_text())
    network = str(config["name"])
    ns = f"--net={host.netns_path}"
    tag = os.urandom(3).hex()
    leaked, retired = f"xvml{tag}", f"xvmr{tag}"
    table = ownership.table_name(network)
    try:
        sh("ip", "-n", host.netns, "link", "add", leaked, "type", "veth", "peer", "name",
           f"xvmp{tag}")
        sh("ip", "-n", host.netns, "link", "set", leaked, "alias",
           f"xvm-cni:{network}:soak-ghost-{tag}:eth0")
        sh("ip", "-n", host.netns, "link", "add", retired, "type", "veth", "peer", "name",
           f"xvmq{tag}")
        sh("ip", "-n", host.netns, "link", "set", retired, "group", str(RETIRED_GROUP))
        sh("nsenter", ns, "nft", "add", "table", "bridge", table)
        view = host_view(host.name, host.netns_path, network, host.data_dir)
        found = audit(network, [view], [], {})
        assert any(leaked in line for line in found.leaked_veths), found.problems()
        assert any(retired in line for line in found.retired_left), found.problems()
        assert any(table in line for line in found.leaked_tables), found.problems()
    finally:
        for link in (leaked, retired):
            subprocess.run(["ip", "-n", host.netns, "link", "del", link], check=False,
                           capture_output=True)
        subprocess.run(["nsenter", ns, "nft", "delete", "table", "bridge", table],
                       check=False, capture_output=True)
