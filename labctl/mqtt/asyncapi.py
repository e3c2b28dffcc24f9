"""The MQTT API as an AsyncAPI 3.0 document (`labctl schema --asyncapi`, docs/asyncapi.json).

Built from the channel table of labctl.mqtt.topics (addresses come from the `Topics` methods
the agent and the SDK use, grants from the table the ACL test checks against
config/mosquitto/acl) and the pydantic payload models of labctl.mqtt.payloads, so the
published document cannot say something the code does not do. Operations are the bench
agent's: it receives commands and sends everything else.
"""

from __future__ import annotations

from typing import Any

from labctl.mqtt.payloads import PAYLOAD_TYPES, SCHEMA_VERSION, json_schema
from labctl.mqtt.topics import BENCH, CHANNELS, CLIENT, Channel

SCHEMA_FORMAT = "application/schema+json;version=2020-12"
"""pydantic emits JSON Schema 2020-12; AsyncAPI 3.0 carries it as a multi-format schema."""

_PARAMETERS: dict[str, str] = {
    "bench_id": "The bench id, also the bench agent's MQTT username (letters, digits, "
                "'_', '.', '-'; at most 64 characters).",
    "username": "The broker username of the AI client or operator that sends the command "
                "(never a bench id, never 'anonymous').",
    "reply_id": "The command id (default), or the rest of the MQTT 5 response topic the "
                "command asked for inside the sender's namespace (the SDK uses its client id).",
    "command_id": "The command's id.",
    "run_id": "The run id.",
}

_ROLES = {
    BENCH: "the bench agent whose id is `{bench_id}` (it logs in with the bench id as "
           "username)",
    CLIENT: "an AI client or operator with its own block in config/mosquitto/acl; on a "
            "channel with `{username}`, only the client of that name",
}

_TITLES = {
    "cmd": "Command", "reply": "Reply", "status": "Status", "events": "Event",
    "result": "Result", "online": "Online", "agent": "Agent",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _channel(ch: Channel) -> dict[str, Any]:
    message = _TITLES[ch.payload]
    return {
        "address": ch.address(),
        "title": ch.name,
        "description": ch.description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "parameters": {p: {"description": _PARAMETERS[p]} for p in ch.parameters()},
        "x-labctl-acl": {"publish": list(ch.publishers), "subscribe": list(ch.subscribers)},
    }


def _operation(ch: Channel) -> dict[str, Any]:
    receive = ch.payload == "cmd"
    message = _TITLES[ch.payload]
    op: dict[str, Any] = {
        "action": "receive" if receive else "send",
        "channel": {"$ref": f"#/channels/{_camel(ch.name)}"},
        "summary": ("The agent reads " if receive else "The agent publishes ")
        + f"`{ch.address()}`" + (" (retained)" if ch.retained else "") + ".",
        "messages": [{"$ref": f"#/channels/{_camel(ch.name)}/messages/{message}"}],
        "bindings": {"mqtt": {"qos": ch.qos, "retain": ch.retained,
                              "bindingVersion": "0.2.0"}},
    }
    if ch.payload == "cmd":
        reply = "reply" if ch.name == "cmd" else "replyAnonymous"
        op["reply"] = {"channel": {"$ref": f"#/channels/{reply}"},
                       "messages": [{"$ref": f"#/channels/{reply}/messages/Reply"}]}
    return op


def _name(ch: Channel) -> str:
    verb = "receive" if ch.payload == "cmd" else "send"
    return verb + _camel(ch.name)[0].upper() + _camel(ch.name)[1:]


_SUMMARIES = {
    "cmd": "One command, told apart by its `command` field; at most 1 MiB.",
    "online": "`online` or `offline`, plain text.",
}


def _message(role: str) -> dict[str, Any]:
    doc = (PAYLOAD_TYPES[role].__doc__ or "").strip()
    return {
        "name": _TITLES[role],
        "title": _TITLES[role],
        "summary": _SUMMARIES.get(role) or doc.splitlines()[0],
        "contentType": "text/plain" if role == "online" else "application/json",
        "payload": {"$ref": f"#/components/schemas/{_TITLES[role]}"},
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the MQTT API (a plain JSON-able dict)."""
    return {
        "asyncapi": "3.0.0",
        "id": "urn:labctl:mqtt",
        "info": {
            "title": "labctl bench agent MQTT API",
            "version": SCHEMA_VERSION,
            "description": (
                "The MQTT API of a labctl bench agent (`labctl serve`), generated from "
                "labctl/mqtt/topics.py and labctl/mqtt/payloads.py by `labctl schema "
                "--asyncapi`. Operations are the agent's. Who may "
                "publish and subscribe where is each channel's `x-labctl-acl` (roles: "
                + "; ".join(f"`{k}`: {v}" for k, v in _ROLES.items())
                + "), as granted by the shipped config/mosquitto/acl. Payload schemas are "
                "JSON Schema 2020-12, each with a versioned `$id`."
            ),
            "license": {"name": "see the labctl repository"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "A mosquitto ≥ 2.0 configured as config/mosquitto/mosquitto.conf "
                               "(use_username_as_clientid, the shipped ACL).",
            },
        },
        "channels": {_camel(ch.name): _channel(ch) for ch in CHANNELS},
        "operations": {_name(ch): _operation(ch) for ch in CHANNELS},
        "components": {
            "messages": {_TITLES[role]: _message(role) for role in PAYLOAD_TYPES},
            "schemas": {_TITLES[role]: {"schemaFormat": SCHEMA_FORMAT,
                                        "schema": json_schema(role)}
                        for role in PAYLOAD_TYPES},
        },
        "x-labctl-roles": _ROLES,
    }


def topics_table() -> dict[str, dict[str, Any]]:
    """The channel table as plain data (the `topics` of `labctl schema --mqtt`)."""
    return {ch.name: {"address": ch.address(), "payload": ch.payload,
                      "description": ch.description, "publish": list(ch.publishers),
                      "subscribe": list(ch.subscribers), "qos": ch.qos,
                      "retained": ch.retained, "content_type": ch.content_type}
            for ch in CHANNELS}
