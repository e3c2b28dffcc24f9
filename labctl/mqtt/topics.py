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

    def reply_inbox(self, client_id: str) -> str:
        """The response topic a client asks replies on (under the bench's prefix, so the
        shipped ACL lets the bench publish there)."""
        return f"{self.prefix}/reply/{client_id}"

    def result(self, run_id: str) -> str:
        return f"{self.prefix}/runs/{run_id}/result"

    def run_id_of_result(self, topic: str) -> str | None:
        """`labctl/<id>/runs/<run_id>/result` -> run_id, else None."""
        head = f"{self.prefix}/runs/"
        if topic.startswith(head) and topic.endswith("/result"):
            run_id = topic[len(head):-len("/result")]
            return run_id if valid_level(run_id) else None
        return None
