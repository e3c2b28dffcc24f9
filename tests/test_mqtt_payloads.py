"""Decoding of MQTT command payloads and the published JSON Schemas (no broker needed)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.mqtt.payloads import (
    MAX_PAYLOAD_BYTES,
    CancelCommand,
    PayloadError,
    SubmitCommand,
    decode_command,
    json_schemas,
)
from labctl.mqtt.topics import Topics


def _err(payload: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        decode_command(payload)
    return info.value


def test_submit_with_inline_recipe_and_request_decodes() -> None:
    cmd = decode_command(json.dumps({
        "id": "c-1", "command": "submit", "recipe": {"schema": "labctl.recipe/1"},
        "parameters": {"salt": "0.5 g"}, "request": {"id": "req-7", "tenant": "x"},
    }).encode())
    assert isinstance(cmd, SubmitCommand)
    assert cmd.request is not None and cmd.request.id == "req-7"
    assert cmd.parameters == {"salt": "0.5 g"}


def test_cancel_needs_run_id() -> None:
    assert isinstance(decode_command(b'{"id": "a", "command": "cancel", "run_id": "r1"}'),
                      CancelCommand)
    e = _err(b'{"id": "a", "command": "cancel"}')
    assert (e.code, e.path, e.command_id) == ("bad_payload", "run_id", "a")


@pytest.mark.parametrize("payload, code, cid", [
    (b"not json", "bad_json", None),
    (b'{"id": "x1", "command": "submit", ', "bad_json", "x1"),  # truncated, id still found
    (b"\xff\xfe", "bad_json", None),
    (b"[1, 2]", "bad_json", None),
    (b'{"id": "x2"}', "unknown_command", "x2"),
    (b'{"id": "x3", "command": "selfdestruct"}', "unknown_command", "x3"),
    (b'{"id": "x4", "command": "list", "limit": "many"}', "bad_payload", "x4"),
    (b'{"id": 5, "command": "status"}', "bad_payload", None),
    (b'{"id": "x6", "command": "status", "extra": 1}', "bad_payload", "x6"),
    (b'{"id": "x7", "command": "submit", "parameters": {}}', "bad_payload", "x7"),
    (b'{"id": "x8", "command": "submit", "recipe": {}, "recipe_ref": "a"}', "bad_payload", "x8"),
    (b'{"id": "x9", "command": "submit", "recipe_ref": "../etc/passwd"}', "bad_payload", "x9"),
    (b'{"id": "x10", "command": "submit", "recipe_ref": "a..b"}', "bad_payload", "x10"),
    (b'{"id": "x/11", "command": "status"}', "bad_payload", None),  # not a topic level
])
def test_malformed_commands_are_named(payload: bytes, code: str, cid: str | None) -> None:
    e = _err(payload)
    assert e.code == code
    assert e.command_id == cid
    reply = e.reply()
    assert reply.ok is False and reply.error is not None and reply.error.code == code


def test_oversized_payload_refused_with_its_id() -> None:
    big = b'{"id": "big-1", "command": "submit", "recipe": {"pad": "' + b"x" * MAX_PAYLOAD_BYTES
    big += b'"}, "parameters": {}}'
    e = _err(big)
    assert (e.code, e.command_id) == ("too_large", "big-1")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    e = _err(b'{"id": "d", "command": "status", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert e.code in ("bad_json", "bad_payload")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "command", "recipe", "recipe_ref", "parameters", "run_id",
                         "limit", "request"]), c, max_size=5),
    max_leaves=20).map(lambda v: json.dumps(v).encode()))
def test_decoder_raises_only_payload_error(payload: bytes) -> None:
    try:
        decode_command(payload)
    except PayloadError:
        pass


def test_json_schemas_cover_every_payload() -> None:
    schemas = json_schemas()
    assert set(schemas) == {"cmd", "reply", "status", "events", "result", "online", "agent"}
    cmd_names = {m["properties"]["command"]["const"]
                 for m in schemas["cmd"]["$defs"].values() if "command" in m.get("properties", {})}
    assert cmd_names == {"submit", "validate", "pause", "resume", "abort", "estop", "cancel",
                         "status", "list", "inventory", "samples"}
    json.dumps(schemas)


def test_topics() -> None:
    t = Topics("sim-bench-1")
    assert t.cmd == "labctl/sim-bench-1/cmd"
    assert t.reply("c1") == "labctl/sim-bench-1/reply/c1"
    assert t.run_id_of_result(t.result("r-1")) == "r-1"
    assert t.run_id_of_result("labctl/other/runs/r-1/result") is None
    for bad in ("a/b", "+", "#", "", "a b"):
        with pytest.raises(ValueError):
            Topics(bad)
