"""docs/asyncapi.json: generated from the code, valid AsyncAPI 3.0, and true to the shipped
ACL, the topic builders and the pydantic payload models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import TypeAdapter

from labctl.mqtt.asyncapi import asyncapi
from labctl.mqtt.payloads import (
    COMMANDS,
    PAYLOAD_TYPES,
    SCHEMA_VERSION,
    AgentPayload,
    EventPayload,
    Reply,
    ResultPayload,
    StatusPayload,
)
from labctl.mqtt.topics import BENCH, CHANNELS, CLIENT, Topics

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "asyncapi.json"
ACL = ROOT / "config" / "mosquitto" / "acl"
META = ROOT / "tests" / "asyncapi" / "asyncapi-3.0.0.json"
BENCHES = ("sim-bench-1", "sim-bench-2")


def _doc() -> dict[str, Any]:
    return json.loads(DOC.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ generated == committed


def test_committed_document_is_the_generated_one() -> None:
    out = subprocess.run([sys.executable, "-m", "labctl", "schema", "--asyncapi"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == _doc(), (
        "docs/asyncapi.json is stale: run `labctl schema --asyncapi > docs/asyncapi.json`")
    assert json.loads(json.dumps(asyncapi())) == _doc()


def test_schema_mqtt_lists_the_topics() -> None:
    out = subprocess.run([sys.executable, "-m", "labctl", "schema", "--mqtt"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    data = json.loads(out.stdout)
    addresses = {t["address"] for t in data["topics"].values()}
    assert {"labctl/{bench_id}/cmd/{username}", "labctl/{bench_id}/reply/{username}/{reply_id}",
            "labctl/{bench_id}/status", "labctl/{bench_id}/events",
            "labctl/{bench_id}/runs/{run_id}/result", "labctl/{bench_id}/online",
            "labctl/{bench_id}/agent"} <= addresses
    assert data["topics"]["cmd"]["publish"] == ["client"]
    assert data["cmd"]["$id"].endswith(SCHEMA_VERSION)


# ------------------------------------------------------------------ the official schema


def test_document_validates_against_the_official_asyncapi_3_schema() -> None:
    meta = json.loads(META.read_text(encoding="utf-8"))
    assert meta["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    validator = jsonschema.Draft7Validator(meta)
    doc = _doc()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == []
    assert doc["asyncapi"] == "3.0.0"
    # the validator does check: a misspelt operation action is refused
    broken = json.loads(json.dumps(doc))
    broken["operations"]["receiveCmd"]["action"] = "publish"
    assert not validator.is_valid(broken)


def test_every_topic_and_payload_is_in_the_document() -> None:
    doc = _doc()
    addresses = {c["address"] for c in doc["channels"].values()}
    for ch in CHANNELS:
        assert ch.address() in addresses
    assert set(doc["components"]["schemas"]) == {"Command", "Reply", "Status", "Event",
                                                  "Result", "Online", "Agent"}
    for name, wrapped in doc["components"]["schemas"].items():
        schema = wrapped["schema"]
        assert schema["$id"].startswith("urn:labctl:mqtt:"), name
        assert schema["$id"].endswith(f":{SCHEMA_VERSION}"), name
        assert schema["x-version"] == SCHEMA_VERSION
    ops = doc["operations"]
    assert ops["receiveCmd"]["action"] == "receive"
    assert ops["receiveCmd"]["reply"]["channel"] == {"$ref": "#/channels/reply"}
    assert ops["sendResult"]["bindings"]["mqtt"]["retain"] is True


# ------------------------------------------------------------------ topic templates


def _params(values: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {n: values[n] for n in names}


def test_topic_templates_parse_back() -> None:
    """Every topic the agent and the SDK build lands on exactly one documented channel, and
    the channel's template gives back the levels it was built from."""
    t = Topics("sim-bench-1")
    built = {
        "cmd": (t.cmd_from("ai-planner"), {"username": "ai-planner"}),
        "cmd_anonymous": (t.cmd_from(None), {}),
        "reply": (t.default_reply("ai-planner", "c-7"),
                  {"username": "ai-planner", "reply_id": "c-7"}),
        "reply_anonymous": (t.default_reply("anonymous", "c-7"), {"command_id": "c-7"}),
        "status": (t.status, {}),
        "events": (t.events, {}),
        "result": (t.result("run-42"), {"run_id": "run-42"}),
        "online": (t.online, {}),
        "agent": (t.agent, {}),
    }
    assert set(built) == {ch.name for ch in CHANNELS}
    inbox = t.reply_inbox("ai-planner", "ai-planner")
    for ch in CHANNELS:
        topic, levels = built[ch.name]
        assert ch.parse(topic) == {"bench_id": "sim-bench-1", **levels}, ch.name
        others = [o.name for o in CHANNELS if o is not ch and o.parse(topic) is not None]
        assert others == [], (ch.name, others)
        filled = ch.address().format(bench_id="sim-bench-1", **levels)
        assert filled == topic
    assert next(ch for ch in CHANNELS if ch.name == "reply").parse(inbox) is not None
    # the agent's subscription filter covers the documented command topic
    assert t.cmd_filter == t.cmd + "/+"


# ------------------------------------------------------------------ the shipped ACL


def _matches(filter_: str, topic: str) -> bool:
    """MQTT topic-filter matching (`+` one level, `#` the rest, including the parent)."""
    f, t = filter_.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


class Acl:
    """mosquitto's acl_file: `topic` lines before any `user` are for anonymous clients,
    `user NAME` starts a block, `pattern` lines (with %u) apply to every user; a matching
    `deny` wins."""

    def __init__(self, text: str):
        self.users: dict[str | None, list[tuple[str, str]]] = {None: []}
        self.patterns: list[tuple[str, str]] = []
        current: str | None = None
        for raw in text.splitlines():
            line = raw.strip()  # comments start lines (topics themselves may hold '#')
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            if word == "user":
                current = rest.strip()
                self.users.setdefault(current, [])
                continue
            parts = rest.split()
            access, topic = (parts[0], parts[1]) if len(parts) == 2 else ("readwrite", parts[0])
            if word == "pattern":
                self.patterns.append((access, topic))
            elif word == "topic":
                self.users[current].append((access, topic))

    @property
    def clients(self) -> list[str]:
        return [u for u in self.users if u is not None]

    def rules(self, user: str | None) -> list[tuple[str, str]]:
        own = list(self.users.get(user, [])) if user in self.users else []
        if user is None:
            return own
        return own + [(a, t.replace("%u", user)) for a, t in self.patterns]

    def allows(self, user: str | None, topic: str, access: str) -> bool:
        rules = [(a, f) for a, f in self.rules(user) if _matches(f, topic)]
        if any(a == "deny" for a, _ in rules):
            return False
        return any(a in (access, "readwrite") for a, _ in rules)


def _expected(roles: tuple[str, ...], user: str | None, levels: dict[str, str],
              clients: list[str]) -> bool:
    for role in roles:
        if role == BENCH and user == levels["bench_id"]:
            return True
        if role == CLIENT and user in clients and levels.get("username", user) == user:
            return True
    return False


def test_acl_file_grants_match_the_document() -> None:
    """For every documented channel, bench, client and anonymous user: the acl file allows
    publishing/subscribing exactly when the document's x-labctl-acl says so."""
    acl = Acl(ACL.read_text(encoding="utf-8"))
    clients = acl.clients
    assert {"ai-planner", "ai-optimiser", "operator-alice"} <= set(clients)
    doc = _doc()
    by_address = {c["address"]: c["x-labctl-acl"] for c in doc["channels"].values()}
    users: list[str | None] = [*BENCHES, *clients, None]
    checked = 0
    for ch in CHANNELS:
        grants = by_address[ch.address()]
        assert grants == {"publish": list(ch.publishers), "subscribe": list(ch.subscribers)}
        for bench in BENCHES:
            for username in clients:
                levels = {"bench_id": bench, "username": username, "reply_id": "r-1",
                          "command_id": "c-1", "run_id": "run-1"}
                topic = ch.address().format(**levels)
                levels = {k: v for k, v in levels.items() if k in ch.parameters()}
                for user in users:
                    for access, key in (("write", "publish"), ("read", "subscribe")):
                        want = _expected(tuple(grants[key]), user, levels, clients)
                        got = acl.allows(user, topic, access)
                        assert got == want, (ch.name, topic, user, access, got)
                        checked += 1
    assert checked > 100


def test_every_acl_grant_is_a_documented_channel() -> None:
    """No grant in the acl file reaches a topic the document does not describe."""
    acl = Acl(ACL.read_text(encoding="utf-8"))
    for user in [*BENCHES, *acl.clients]:
        # the user's own name as `{username}` and `{bench_id}` too: `%u` patterns also reach
        # a bench for a client named like it, and a client for a bench named like it (both
        # forbidden by the ACL's convention)
        samples = [ch.address().format(bench_id=bench, username=username, reply_id="r-1",
                                       command_id="c-1", run_id="run-1")
                   for ch in CHANNELS for bench in {*BENCHES, user}
                   for username in {*acl.clients, user}]
        for access, filter_ in acl.rules(user):
            if access == "deny":
                continue
            assert any(_matches(filter_, s) for s in samples), (user, access, filter_)


# ------------------------------------------------------------------ payloads


def _validator(role_title: str) -> jsonschema.protocols.Validator:
    schema = _doc()["components"]["schemas"][role_title]["schema"]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


_SAMPLES: dict[str, tuple[list[Any], list[Any]]] = {
    "Command": ([{"id": "c-1", "command": "status"},
                 {"id": "c-2", "command": "submit", "recipe_ref": "electrolyte_conductivity",
                  "parameters": {"volume": "2 mL"}},
                 {"id": "c-3", "command": "cancel", "run_id": "r-1"}],
                [{"id": "c-1", "command": "fly"}, {"id": "c-1", "command": "cancel"},
                 {"command": "status"}, {"id": "c-1", "command": "status", "extra": 1}]),
    "Reply": ([Reply(id="c-1", ok=True, command="status", status={"state": "idle"})
               .model_dump(mode="json")],
              [{"id": "c-1"}, {"ok": True}, {"id": "c-1", "ok": True, "extra": 1}]),
    "Status": ([StatusPayload(bench_id="b", time="2026-01-01T00:00:00Z", state="idle")
                .model_dump(mode="json")], [{"bench_id": "b"}]),
    "Event": ([EventPayload(bench_id="b", seq=1, time="t", type="run_started")
               .model_dump(mode="json")], [{"bench_id": "b", "seq": "one", "time": "t",
                                            "type": "x"}]),
    "Result": ([ResultPayload(bench_id="b", run_id="r", status="completed")
                .model_dump(mode="json")], [{"bench_id": "b", "status": "completed"}]),
    "Online": (["online", "offline"], ["maybe", 1]),
    "Agent": ([AgentPayload(instance="i", host="h", pid=1, since="t", bench_id="b",
                            client_id="c").model_dump(mode="json")], [{"instance": "i"}]),
}


@pytest.mark.parametrize("title", sorted(_SAMPLES))
def test_payload_schemas_match_the_pydantic_models(title: str) -> None:
    role = {"Command": "cmd", "Reply": "reply", "Status": "status", "Event": "events",
            "Result": "result", "Online": "online", "Agent": "agent"}[title]
    schema = _doc()["components"]["schemas"][title]["schema"]
    body = {k: v for k, v in schema.items() if k not in ("$schema", "$id", "x-version")}
    assert body == TypeAdapter(PAYLOAD_TYPES[role]).json_schema()
    validator = _validator(title)
    adapter: TypeAdapter[Any] = TypeAdapter(PAYLOAD_TYPES[role])
    good, bad = _SAMPLES[title]
    for sample in good:
        adapter.validate_python(sample)
        assert validator.is_valid(sample), sample
    for sample in bad:
        assert not validator.is_valid(sample), sample
        with pytest.raises(ValueError):
            adapter.validate_python(sample)


def test_every_command_is_in_the_command_schema() -> None:
    schema = _doc()["components"]["schemas"]["Command"]["schema"]
    names = {m["properties"]["command"]["const"] for m in schema["$defs"].values()
             if "command" in m.get("properties", {})}
    assert names == set(COMMANDS)
