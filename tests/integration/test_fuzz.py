"""Property-based fuzzing of the real plugin executable (issue 7, "Tests and figures").

Random environments and configurations (random JSON, random bytes, random Unicode,
huge numbers, deep nesting, odd types in every known field, mutations of a valid
config) go to the plugin as a runtime would call it, inside a throwaway simulated
host, through three doors: the in-process executable, the thin plugin without an
agent (its in-process fallback), and the thin plugin handing the call to a real
xvm-cnid. Every answer must be either success or exit != 0 with a CNI error object
on stdout; and no device, nftables table, sysctl or file outside the test's own
dataDir may change (a successful ADD is undone with DEL first).

CI runs a fixed, derandomized set (``DEFAULT_EXAMPLES``, well under a minute);
``make fuzz`` (or ``FUZZ_EXAMPLES=N``) runs many more, randomly. The number of
cases run is printed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xvmcni import plugin_file
from xvmcni.lab import plumbing

from .conftest import INPROCESS_PLUGIN, Host, agent_op, destroy_host, make_host, start_agent

DEFAULT_EXAMPLES = 400
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)
LONG_RUN = "FUZZ_EXAMPLES" in os.environ

# Deeper than Python's recursion limit (~1000): issue 7 item 5.
MAX_DEPTH = 1500

COMMANDS = ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"]
SYSCTLS = ["net/ipv4/ip_forward", "net/ipv6/conf/all/disable_ipv6",
           "net/ipv6/conf/default/disable_ipv6"]
KNOWN_FIELDS = ["cniVersion", "name", "type", "hostInterface", "vxlanID", "mtu", "subnet",
                "gateway", "dataDir", "group", "port", "rangeStart", "rangeEnd",
                "perHostPrefix", "routes", "dns", "ipMasq", "logFile", "logLevel", "ipam",
                "bridge", "agentSocket", "agentTimeout", "model", "controlPlane",
                "runtimeConfig", "prevResult", "staticIPs", "cni.dev/valid-attachments",
                "capabilities", "args"]


@dataclass
class Rig:
    host: Host
    root: Path            # everything of this test lives here
    scratch: Path         # the plugin's working directory
    pod: str              # a real pod namespace, so some ADDs can succeed
    thin: str             # the thin plugin file
    cni_path: str         # an empty directory: no delegated plugin can ever run
    no_agent: str         # a socket path nobody listens on
    cases: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[Rig]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    root = tmp_path_factory.mktemp("fuzz")
    host = make_host(root)
    try:
        (root / "cni-bin").mkdir()
        (root / "scratch").mkdir()
        thin = str(plugin_file.write(root / "bin" / "xvm-cni"))
        start_agent(host)
        rig = Rig(host, root, root / "scratch", host.new_pod(), thin, str(root / "cni-bin"),
                  str(root / "nobody.sock"))
        yield rig
        # The agent survived everything thrown at it.
        assert host.agent is not None and host.agent.poll() is None
        assert agent_op(host, "ping").get("pong")
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            total = sum(rig.cases.values())
            detail = ", ".join(f"{k} {v}" for k, v in sorted(rig.cases.items()))
            reporter.write_line(f"\nfuzz: {total} cases against the real plugin ({detail})")
    finally:
        destroy_host(host)


# --- strategies --------------------------------------------------------------------------

# Environment values cannot hold NUL or lone surrogates (execve takes C strings).
env_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                   max_size=40)
huge_ints = st.integers(min_value=1, max_value=4000).map(lambda n: int("9" * n)) | \
    st.integers(min_value=1, max_value=4000).map(lambda n: -int("9" * n))
scalars = (st.none() | st.booleans() | st.integers() | huge_ints
           | st.floats(allow_nan=False) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=20)


def deep(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth if depth % 2 else \
        '{"a":' * depth + inner + "}" * depth


deep_json = st.builds(deep, st.integers(min_value=100, max_value=MAX_DEPTH),
                      st.sampled_from(["1", '"x"', "[]", "{}"]))
# As a value this test itself builds and dumps: within its own recursion limit.
deep_value = st.builds(deep, st.integers(min_value=100, max_value=800),
                       st.sampled_from(["1", "[]"])).map(json.loads)


def base_config(rig: Rig) -> dict[str, Any]:
    conf = rig.host.config("1.1.0")
    conf["dataDir"] = str(rig.host.data_dir)
    return conf


def odd_value(rig: Rig, key: str) -> st.SearchStrategy[Any]:
    """Odd values for ``key``; paths only ever point inside the test's own directory
    (an absolute path elsewhere that the plugin accepted would write there)."""
    if key in ("dataDir", "logFile", "agentSocket"):
        inside = st.text(st.sampled_from("abc/._-é\n "), max_size=12).map(
            lambda t: str(rig.host.data_dir / "odd") + "/" + t)
        return st.integers() | st.booleans() | st.lists(st.text(max_size=3), max_size=2) \
            | st.text(st.sampled_from("abc/._-"), max_size=12).filter(
                lambda t: not t.startswith("/")) | inside
    return json_values | huge_ints | st.text(max_size=20) | deep_value


@st.composite
def mutated_config(draw: st.DrawFn, rig: Rig) -> bytes:
    conf = base_config(rig)
    for key in draw(st.lists(st.sampled_from(KNOWN_FIELDS), max_size=4, unique=True)):
        if key != "dataDir" and draw(st.booleans()):
            conf.pop(key, None)  # dataDir stays: absent it defaults to the real host's
        else:
            conf[key] = draw(odd_value(rig, key))
    conf.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return json.dumps(conf).encode()


@st.composite
def stdin(draw: st.DrawFn, rig: Rig) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "valid", "json", "bytes",
                                 "unicode", "deep", "huge"]))
    if kind == "mutated":
        return draw(mutated_config(rig))
    if kind == "valid":
        return json.dumps(base_config(rig)).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "unicode":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "deep":
        if draw(st.booleans()):
            return draw(deep_json).encode()
        conf = base_config(rig)  # deep inside a known field
        conf[draw(st.sampled_from(KNOWN_FIELDS))] = "DEEP"
        return json.dumps(conf).replace('"DEEP"', draw(deep_json)).encode()
    # Up to beyond Python's 4300-digit limit for int(), which json.dumps cannot write.
    conf = base_config(rig)
    conf[draw(st.sampled_from(["vxlanID", "mtu", "port", "perHostPrefix", "agentTimeout",
                               "gateway"]))] = "HUGE"
    digits = draw(st.sampled_from(["", "-"])) + "9" * draw(st.integers(1, 6000))
    return json.dumps(conf).replace('"HUGE"', digits).encode()


@st.composite
def environment(draw: st.DrawFn, rig: Rig) -> dict[str, str]:
    def pick(good: str, *others: str) -> str:
        return draw(st.sampled_from([good, good, *others]) | env_text)

    env = {
        "CNI_COMMAND": draw(st.sampled_from(COMMANDS) | env_text),
        "CNI_CONTAINERID": pick("fuzz1", ""),
        "CNI_NETNS": pick(rig.pod, "", "/nonexistent/netns", "/dev/null", str(rig.root)),
        "CNI_IFNAME": pick("eth0", "", "eth0\n", "é" * 8, "a" * 16),
        "CNI_ARGS": pick("", "IP=10.244.11.9", "MAC=02:aa:bb:cc:dd:01", "IgnoreUnknown=1;x",
                         "IP=10.244.11.9,10.244.11.10", "=", ";;"),
    }
    for key in draw(st.lists(st.sampled_from(list(env)), max_size=2, unique=True)):
        del env[key]
    env.update(draw(st.dictionaries(st.from_regex(r"CNI_[A-Z]{1,8}", fullmatch=True),
                                    env_text, max_size=2)))
    # Never reachable from here: a delegated IPAM plugin, the host's own agent.
    env["CNI_PATH"] = rig.cni_path
    env["PATH"] = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return env


# --- the property ------------------------------------------------------------------------

def snapshot(rig: Rig) -> dict[str, Any]:
    host = rig.host
    links = json.loads(subprocess.run(["ip", "-j", "-n", host.name, "link", "show"],
                                      capture_output=True, text=True, check=True).stdout)
    sysctl = host.in_ns(host.path, "cat", *(f"/proc/sys/{s}" for s in SYSCTLS)).stdout.split()
    files = sorted(str(p.relative_to(rig.root)) for p in rig.root.rglob("*")
                   if not p.is_relative_to(host.data_dir)
                   and not p.name.startswith("agent.log"))
    pod_links = subprocess.run(["ip", "-n", rig.pod.rsplit("/", 1)[1], "-o", "link"],
                               capture_output=True, text=True, check=True).stdout
    return {"links": sorted((link["ifname"], link.get("master", ""), link.get("address", ""))
                            for link in links),
            "nft": host.nft_tables(), "sysctl": sysctl, "files": files,
            "pod_links": pod_links.count("\n")}


def call(rig: Rig, door: str, env: dict[str, str],
         data: bytes) -> subprocess.CompletedProcess[bytes]:
    executable = INPROCESS_PLUGIN if door == "inprocess" else rig.thin
    env = dict(env)
    env["XVM_CNID_SOCKET"] = rig.host.agent_socket if door == "agent" else rig.no_agent
    with plumbing.inside(rig.host.path):
        return subprocess.run([executable], input=data, env=env, cwd=rig.scratch,
                              capture_output=True, timeout=60, check=False)


def check_answer(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any] | None:
    out = proc.stdout.decode("utf-8", "replace")
    why = f"rc={proc.returncode} stdout={out[:300]!r} stderr={proc.stderr[-600:]!r}"
    assert b"Traceback" not in proc.stderr, why
    if proc.returncode == 0:
        if not out.strip():
            return None
        answer = json.loads(out)
        assert isinstance(answer, dict), why
        return answer
    try:
        answer = json.loads(out)
    except ValueError:
        pytest.fail("no CNI error object on stdout: " + why)
    assert isinstance(answer, dict), why
    assert isinstance(answer.get("cniVersion"), str), why
    assert isinstance(answer.get("code"), int) and not isinstance(answer["code"], bool), why
    assert isinstance(answer.get("msg"), str), why
    return answer


@contextlib.contextmanager
def counted(rig: Rig, door: str) -> Iterator[None]:
    rig.cases[door] = rig.cases.get(door, 0) + 1
    yield


@settings(max_examples=EXAMPLES, derandomize=not LONG_RUN, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example],
          print_blob=True)
@given(data=st.data())
def test_any_input_gets_a_cni_answer_and_leaves_the_host_alone(rig: Rig,
                                                                data: st.DataObject) -> None:
    door = data.draw(st.sampled_from(["inprocess", "thin", "agent"]), label="door")
    env = data.draw(environment(rig), label="env")
    payload = data.draw(stdin(rig), label="stdin")
    before = snapshot(rig)
    with counted(rig, door):
        proc = call(rig, door, env, payload)
    answer = check_answer(proc)
    event(f"{env.get('CNI_COMMAND', '-')[:8]!r} rc={proc.returncode} code="
          f"{(answer or {}).get('code', '-') if proc.returncode else '-'}")
    if proc.returncode == 0 and env.get("CNI_COMMAND") == "ADD":
        # It worked: the same call's DEL must take everything away again.
        undo = call(rig, door, {**env, "CNI_COMMAND": "DEL"}, payload)
        assert undo.returncode == 0, undo.stdout
        deadline = time.monotonic() + 5  # the agent's reaper deletes veths in batches
        while snapshot(rig)["links"] != before["links"] and time.monotonic() < deadline:
            time.sleep(0.05)
        after = snapshot(rig)
        after["sysctl"][0] = before["sysctl"][0]  # joining turns forwarding on, for good
        assert after == before
        return
    assert snapshot(rig) == before
