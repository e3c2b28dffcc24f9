"""What the MQTT agent needs from a bench: the bench-service protocol
(labctl.protocol.BenchService) and a few things besides, so the agent does not depend on
the bench's internals (labctl.bench.local.LocalService implements it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from labctl.bench.dedup import CommandReply
from labctl.problems import BenchError
from labctl.protocol import BenchService, RecipeInput, RequestInput, Submitted

#: a well-formed command the bench will not carry out: the one error type
CommandRefused = BenchError


class AgentPort(BenchService, Protocol):
    """The bench as the agent sees it. Methods raise BenchError for refusals."""

    async def submit(self, recipe: RecipeInput, parameters: Mapping[str, Any] | None = None,
                     /, *, request: RequestInput = None, priority: int = 0,
                     instigator: str | dict[str, Any] | None = None,
                     command: CommandReply | None = None) -> Submitted:
        """BenchService.submit, naming who submitted it (the MQTT sender) for provenance;
        `command`'s reply is remembered with the run, in the same transaction."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """StatusPayload fields (without bench_id/time) now, without waiting."""
        ...

    async def poll_devices(self) -> None:
        """Refresh the device readings that `status()` reports."""
        ...

    def is_final(self, event: Mapping[str, Any]) -> str | None:
        """The run id when `event` says a run has ended (its result is then available)."""
        ...

    def result(self, run_id: str) -> dict[str, Any] | None:
        """ResultPayload fields (without bench_id) of an ended run."""
        ...

    def list_runs(self, limit: int) -> list[dict[str, Any]]:
        """Newest first; each row names its `owner` (the MQTT sender that submitted it,
        None for runs started on the bench itself)."""
        ...

    def run_owner(self, run_id: str | None) -> tuple[str, str | None] | None:
        """(run id, owner) of a queued or running run (`None`: the one running now); None
        when there is no such run."""
        ...

    async def inventory(self, action: str, *, vessel: str | None = None,
                        material: str | None = None, amount: str | None = None,
                        lot: str | None = None, who: str = "") -> dict[str, Any]:
        """show / refill / set the persisted inventory; its levels afterwards."""
        ...

    async def samples(self, action: str, sample_id: str | None = None
                      ) -> list[dict[str, Any]]:
        """list the samples, or show one (with its chain of origin)."""
        ...

    def seen_command(self, command_id: str) -> dict[str, Any] | None: ...

    def remember_command(self, command_id: str, reply: dict[str, Any]) -> None: ...


#: the name this protocol had before it was built on BenchService
BenchPort = AgentPort

__all__ = ["AgentPort", "BenchPort", "CommandRefused", "CommandReply", "Submitted"]
