"""What the MQTT agent needs from a bench: a small interface, so the agent does not depend
on the executor's internals (labctl.bench adapts to it in labctl.mqtt.bench_port).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from labctl.mqtt.payloads import ErrorCode, Issue


class CommandRefused(Exception):
    """A well-formed command the bench will not carry out (invalid recipe, wrong state...)."""

    def __init__(self, code: ErrorCode, message: str, *, path: str | None = None,
                 issues: list[Issue] | None = None):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.path = path
        self.issues = issues


@dataclass(frozen=True)
class RecipeSource:
    """An inline recipe (data) or the name of one in the bench's recipe folder."""

    recipe: dict[str, Any] | None = None
    recipe_ref: str | None = None


@dataclass(frozen=True)
class Submitted:
    run_id: str
    queue_position: int


class BenchPort(Protocol):
    """The bench as the agent sees it. Methods raise CommandRefused for refusals."""

    async def submit(self, source: RecipeSource, parameters: dict[str, Any], *,
                     instigator: dict[str, Any], request: dict[str, Any] | None,
                     command_id: str) -> Submitted: ...

    async def validate(self, source: RecipeSource, parameters: dict[str, Any]) -> list[Issue]: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def abort(self) -> None: ...

    async def estop(self) -> None: ...

    async def cancel(self, run_id: str) -> None: ...

    def status(self) -> dict[str, Any]:
        """StatusPayload fields (without bench_id/time): state, run_id, step, progress,
        queue, devices."""
        ...

    async def poll_devices(self) -> None:
        """Refresh the device readings that `status()` reports."""
        ...

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """Run events as they happen: dicts with at least `type`, optionally run_id, step."""
        ...

    def is_final(self, event: dict[str, Any]) -> str | None:
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

    def seen_command(self, command_id: str) -> dict[str, Any] | None: ...

    def remember_command(self, command_id: str, reply: dict[str, Any]) -> None: ...
