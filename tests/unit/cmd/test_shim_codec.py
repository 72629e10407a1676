"""The shim's JSON codec (built on the C half of json) must agree with json."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xvmcni.cmd import shim

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_round_trip_matches_json(value: Any) -> None:
    encoded = shim.dumps(value)
    assert json.loads(encoded) == value
    assert shim.loads(json.dumps(value)) == value
    assert shim.loads(encoded) == value


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_is_parsed_or_rejected_like_json(text: str) -> None:
    try:
        expected: Any = json.loads(text, parse_constant=_reject)
    except ValueError:
        with pytest.raises(ValueError):
            shim.loads(text)
        return
    assert shim.loads(text) == expected


def _reject(name: str) -> None:
    raise ValueError(name)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "{} {}", "", "  ", "[1,]"])
def test_rejects_what_strict_json_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        shim.loads(text)


def test_surrogate_escaped_stdin_survives_the_trip() -> None:
    raw = b'{"name": "\xff"}'.decode("utf-8", "surrogateescape")
    back = json.loads(shim.dumps({"stdin": raw}))["stdin"]
    assert back.encode("utf-8", "surrogateescape") == b'{"name": "\xff"}'


def test_version_reply_needs_no_agent(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNI_COMMAND", "VERSION")
    monkeypatch.setattr("sys.stdin", _Stdin(b'{"cniVersion": "0.4.0"}'))
    assert shim.main() == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["cniVersion"] == "0.4.0" and "1.1.0" in reply["supportedVersions"]


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = _Buffer(data)


class _Buffer:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self) -> bytes:
        return self._data
