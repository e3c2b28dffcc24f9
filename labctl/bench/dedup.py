"""Commands already answered: an MQTT command sent again (a client's retry after a lost
reply, a broker's redelivery) gets the first reply again and is not carried out twice.
Kept in the run index (labctl.store.index), so it survives a restart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labctl.store import RunStore


@dataclass(frozen=True)
class CommandReply:
    """The command a submit carries out: its id, and its reply given the run id and the
    queue position. The bench records that reply with the run (labctl.bench.service), in
    the transaction that makes the run exist: no crash can leave one without the other."""

    id: str
    reply: Callable[[str, int], dict[str, Any]]


class CommandMemory:
    """The replies given, by command id; the first reply wins."""

    def __init__(self, store: RunStore):
        self._store = store

    def seen(self, command_id: str) -> dict[str, Any] | None:
        """The reply given to this command id before, or None if it is new."""
        return self._store.seen_command(command_id)

    def remember(self, command_id: str, reply: dict[str, Any]) -> None:
        self._store.remember_command(command_id, reply)
