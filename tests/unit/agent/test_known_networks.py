"""Which networks the agent reconciles: xvm-cni entries of CNI config directories
(single configs and conflists) plus the configs each network remembers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xvmcni.agent.reconcile import configs_in_dir, known_networks


def net(name: str, data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": name, "type": "xvm-cni", "hostInterface": "eth0",
            "vxlanID": 10, "subnet": "10.244.0.0/16", "dataDir": str(data_dir), **extra}


def test_configs_in_dir_reads_confs_and_conflist_entries(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-a.conf").write_text(json.dumps(net("a", tmp_path)))
    plist = {"cniVersion": "0.4.0", "name": "b", "plugins": [
        {k: v for k, v in net("ignored", tmp_path).items() if k not in ("name", "cniVersion")},
        {"type": "portmap"}]}
    (conf / "20-b.conflist").write_text(json.dumps(plist))
    (conf / "30-other.conf").write_text(json.dumps({"name": "c", "type": "bridge"}))
    (conf / "40-broken.conf").write_text("{not json")
    (conf / "README").write_text("not a config")
    found = configs_in_dir(conf)
    assert [(c["name"], c["cniVersion"]) for c in found] == [("a", "1.0.0"), ("b", "0.4.0")]
    assert configs_in_dir(tmp_path / "missing") == []


def test_remembered_configs_win_and_bad_ones_are_skipped(tmp_path: Path) -> None:
    conf, data = tmp_path / "conf", tmp_path / "data"
    conf.mkdir()
    (conf / "a.conf").write_text(json.dumps(net("a", data, mtu=1400)))
    (conf / "bad.conf").write_text(json.dumps(net("bad", data, vxlanID=0)))
    (data / "a").mkdir(parents=True)
    (data / "a" / "network.json").write_text(json.dumps(net("a", data, mtu=1300)))
    (data / "z").mkdir()
    (data / "z" / "network.json").write_text(json.dumps(net("z", data, vxlanID=11)))
    found = {n.name: n for n in known_networks([conf], [])}
    assert set(found) == {"a", "z"}
    assert found["a"].l2.mtu == 1300  # what ADD really used
