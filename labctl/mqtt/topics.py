"""The topic tree of one bench: everything lives under `labctl/<bench-id>/`.

Kept in one place so the agent, the client SDK, the ACL file and the tests cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ROOT = "labctl"

# A bench id is one topic level: no wildcards, no separators, nothing a broker treats
# specially, and usable as a mosquitto `%u` username.
_BENCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Command and run ids travel as topic levels too (reply/<id>, runs/<run_id>/result).
_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


ANONYMOUS = "anonymous"
"""The sender of commands on the bare `cmd` topic (dev brokers without credentials). Never
give a broker user this name."""


def valid_bench_id(bench_id: str) -> bool:
    return bool(_BENCH_ID.match(bench_id))


def valid_level(value: str) -> bool:
    """True when `value` is safe as a single topic level (no `/`, `+`, `#`, no NUL)."""
    return bool(_LEVEL.match(value))


@dataclass(frozen=True)
class Topics:
    """Topic names of one bench."""

    bench_id: str

    def __post_init__(self) -> None:
        if not valid_bench_id(self.bench_id):
            raise ValueError(
                f"bench id {self.bench_id!r} is not a valid topic level "
                "(letters, digits, '_', '.', '-'; at most 64 characters)"
            )

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.bench_id}"

    @property
    def cmd(self) -> str:
        return f"{self.prefix}/cmd"

    @property
    def cmd_filter(self) -> str:
        """What the agent subscribes to: `cmd/<sender>` (the sender is the broker username,
        which the shipped ACL enforces)."""
        return f"{self.prefix}/cmd/+"

    def cmd_from(self, username: str | None) -> str:
        """The command topic a client publishes on: its own `cmd/<username>`, or the bare
        `cmd` (sender "anonymous") without a username."""
        return f"{self.cmd}/{username}" if username else self.cmd

    def sender_of(self, topic: str) -> str | None:
        """`cmd/<sender>` -> sender; bare `cmd` -> ANONYMOUS; None for anything else."""
        if topic == self.cmd:
            return ANONYMOUS
        head = f"{self.cmd}/"
        if topic.startswith(head):
            sender = topic[len(head):]
            return sender if valid_bench_id(sender) else None
        return None

    def reply_namespace(self, sender: str) -> str:
        """Where replies to `sender` may go (a trailing `/`): `reply/<sender>/`."""
        return f"{self.prefix}/reply/{sender}/"

    def default_reply(self, sender: str, command_id: str) -> str:
        """`reply/<sender>/<command id>`; the anonymous sender keeps design.md's
        `reply/<command id>`."""
        if sender == ANONYMOUS:
            return self.reply(command_id)
        return f"{self.reply_namespace(sender)}{command_id}"

    def reply_allowed(self, sender: str, response_topic: str) -> bool:
        """True when `response_topic` lies inside the sender's own reply namespace (and is a
        plain topic name: no wildcards, no empty levels)."""
        ns = self.reply_namespace(sender)
        rest = response_topic[len(ns):] if response_topic.startswith(ns) else ""
        return bool(rest) and all(valid_level(level) for level in rest.split("/"))

    @property
    def agent(self) -> str:
        """Retained: which agent instance controls the bench (host, pid, since)."""
        return f"{self.prefix}/agent"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def online(self) -> str:
        return f"{self.prefix}/online"

    @property
    def results_filter(self) -> str:
        return f"{self.prefix}/runs/+/result"

    def reply(self, command_id: str) -> str:
        """Default reply topic when the command carries no MQTT 5 response topic."""
        return f"{self.prefix}/reply/{command_id}"

    def reply_inbox(self, sender: str, client_id: str) -> str:
        """The response topic a client asks replies on: inside its own reply namespace (the
        only place the agent answers to, and the only one the shipped ACL lets it read)."""
        return f"{self.reply_namespace(sender)}{client_id}"

    def result(self, run_id: str) -> str:
        return f"{self.prefix}/runs/{run_id}/result"

    def run_id_of_result(self, topic: str) -> str | None:
        """`labctl/<id>/runs/<run_id>/result` -> run_id, else None."""
        head = f"{self.prefix}/runs/"
        if topic.startswith(head) and topic.endswith("/result"):
            run_id = topic[len(head):-len("/result")]
            return run_id if valid_level(run_id) else None
        return None


# ---------------------------------------------------------------- the published channel table

BENCH = "bench"
"""ACL role: the bench agent whose id is the `{bench_id}` level (its MQTT username)."""
CLIENT = "client"
"""ACL role: an AI client or operator; on a channel with a `{username}` level, only the
client of that name."""


@dataclass(frozen=True)
class Channel:
    """One topic of the MQTT API, as `labctl schema --mqtt` and docs/asyncapi.json publish
    it. `template` uses `Topics` itself (see `address`), so the published addresses are the
    ones the agent and the SDK use; `publishers`/`subscribers` are the grants of the shipped
    ACL (config/mosquitto/acl), which a test checks against that file."""

    name: str
    payload: str  # key of labctl.mqtt.payloads.json_schemas()
    description: str
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    qos: int = 1
    retained: bool = False
    content_type: str = "application/json"

    def address(self) -> str:
        """The topic template, `{bench_id}`/`{username}`/... for the variable levels, built
        by the same `Topics` methods the agent uses."""
        return _TEMPLATES[self.name](Topics("BENCH"))

    def parameters(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.address()))

    def parse(self, topic: str) -> dict[str, str] | None:
        """A concrete topic -> its variable levels, None when it is not on this channel."""
        pattern = re.escape(self.address())
        for name in self.parameters():
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/#+]+)")
        m = re.fullmatch(pattern, topic)
        return dict(m.groupdict()) if m else None


def _templated(t: Topics) -> str:
    return t.prefix.replace(f"/{t.bench_id}", "/{bench_id}", 1)


_TEMPLATES: dict[str, Any] = {
    "cmd": lambda t: _templated(t) + t.cmd_from("{username}")[len(t.prefix):],
    "cmd_anonymous": lambda t: _templated(t) + t.cmd_from(None)[len(t.prefix):],
    "reply": lambda t: _templated(t) + t.reply_inbox("{username}", "{reply_id}")[len(t.prefix):],
    "reply_anonymous": lambda t: _templated(t) + t.reply("{command_id}")[len(t.prefix):],
    "status": lambda t: _templated(t) + t.status[len(t.prefix):],
    "events": lambda t: _templated(t) + t.events[len(t.prefix):],
    "result": lambda t: _templated(t) + t.result("{run_id}")[len(t.prefix):],
    "online": lambda t: _templated(t) + t.online[len(t.prefix):],
    "agent": lambda t: _templated(t) + t.agent[len(t.prefix):],
}

CHANNELS: tuple[Channel, ...] = (
    Channel("cmd", "cmd",
            "Commands to the bench. The last level is the sender's broker username, which the "
            "ACL lets only that user publish on; the agent takes the sender (and so the run's "
            "owner and role) from it, never from the payload.",
            publishers=(CLIENT,), subscribers=(BENCH,)),
    Channel("cmd_anonymous", "cmd",
            "Commands on dev brokers without credentials (sender `anonymous`). The shipped "
            "ACL lets nobody publish or read here.",
            publishers=(), subscribers=()),
    Channel("reply", "reply",
            "The reply to one command, in the sender's own namespace: "
            "`reply/<username>/<command id>` by default, or the command's MQTT 5 response "
            "topic when it lies inside that namespace. Only that user reads it.",
            publishers=(BENCH,), subscribers=(CLIENT,)),
    Channel("reply_anonymous", "reply",
            "Replies to commands of the anonymous sender (dev brokers without credentials).",
            publishers=(BENCH,), subscribers=()),
    Channel("status", "status", "What the bench is doing now (retained, on change).",
            publishers=(BENCH,), subscribers=(CLIENT,), retained=True),
    Channel("events", "events", "Run events as they happen (not retained; `seq` shows gaps).",
            publishers=(BENCH,), subscribers=(CLIENT,)),
    Channel("result", "result",
            "The outcome of one run (retained): published exactly once per accepted submit, "
            "even across a crash of the agent.",
            publishers=(BENCH,), subscribers=(CLIENT,), retained=True),
    Channel("online", "online",
            "`online` while the agent is connected; its last will and a clean stop say "
            "`offline` (MQTT 5 user properties: instance, host, pid, since, reason "
            "online|lost|stopped). Retained.",
            publishers=(BENCH,), subscribers=(BENCH, CLIENT), retained=True,
            content_type="text/plain"),
    Channel("agent", "agent",
            "Which agent instance controls the bench (retained); a starting agent reads it "
            "and `online` to refuse a second agent on one bench.",
            publishers=(BENCH,), subscribers=(BENCH, CLIENT), retained=True),
)
