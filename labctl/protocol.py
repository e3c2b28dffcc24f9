"""The bench-service protocol: the one shape of a bench that every front end drives.

Implemented in process by labctl.bench.local.LocalService (over a running `Bench`) and
remotely by labctl.client.BenchClient (over MQTT, through the agent, which itself serves
a LocalService). The TUI's backends and the agent consume it; each raises
labctl.problems.BenchError for a refusal, with the issues of an invalid recipe.

Shapes are those of the MQTT contract (labctl.mqtt.payloads), so that a local and a
remote bench look the same: `status()` gives StatusPayload fields, `events()` yields
EventPayload documents, `runs()` the `list` reply's rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from labctl.problems import Issue

#: an inline recipe (data), the name of a recipe in the bench's recipe folder, or a
#: recipe file on this machine
RecipeInput = Mapping[str, Any] | str | Path
#: who asked, for the provenance: the AI server's request id and metadata, or just its id
RequestInput = Mapping[str, Any] | str | None
Control = Literal["pause", "resume", "abort", "estop", "cancel"]
CONTROLS: tuple[Control, ...] = ("pause", "resume", "abort", "estop", "cancel")


@dataclass
class Submitted:
    """A run the bench accepted: its id and where it stands in the queue (0 = next)."""

    run_id: str
    queue_position: int | None


@runtime_checkable
class BenchService(Protocol):
    """submit, plan, control, status, events, runs: everything a front end asks."""

    async def submit(self, recipe: RecipeInput, parameters: Mapping[str, Any] | None = None,
                     /, *, request: RequestInput = None, priority: int = 0) -> Submitted:
        """Validate and queue a run, higher `priority` first (BenchError `invalid_recipe`
        with every issue)."""
        ...

    async def plan(self, recipe: RecipeInput, parameters: Mapping[str, Any] | None = None,
                   /) -> list[Issue]:
        """Validate only: every issue found (none: it would run)."""
        ...

    async def control(self, command: Control, run_id: str | None = None, /) -> None:
        """pause, resume, abort `run_id` (a running run; None: every running run); estop
        the bench (every run, every device); cancel `run_id` (a queued run)."""
        ...

    async def status(self) -> dict[str, Any]:
        """What the bench does now (StatusPayload fields)."""
        ...

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from now on (EventPayload documents)."""
        ...

    async def runs(self, limit: int = 50, /) -> list[dict[str, Any]]:
        """Runs newest first (index rows)."""
        ...
