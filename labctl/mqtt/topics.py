"""The topic tree of one bench: everything lives under `labctl/<bench-id>/`.

Kept in one place so the agent, the client SDK, the ACL file and the tests cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
