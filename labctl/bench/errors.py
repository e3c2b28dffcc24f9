"""The refusals of the bench service (what an adapter turns into a `labctl.problems`
code: InDoubtError and NothingToResume, next to labctl.run_machine's IllegalTransition)."""

from __future__ import annotations

from typing import Any

from labctl.errors import LabctlError
from labctl.run_machine import IllegalTransition, RunState
from labctl.simulation import describe_in_doubt


class InDoubtError(LabctlError):
    """Resume needs an operator's decision on steps that were interrupted mid-action and
    may not simply be repeated."""

    def __init__(self, run_id: str, steps: list[str],
                 world: dict[str, Any] | None = None):
        self.run_id = run_id
        self.steps = steps
        #: simulated bench: what its saved world holds of each step (simulation.in_doubt_report)
        self.world = world or {}
        world_note = describe_in_doubt(self.world)
        names = ", ".join(steps)
        super().__init__(
            f"run {run_id}: step{'s' if len(steps) > 1 else ''} {names} started but did not "
            "finish, and repeating it could add material twice. Decide for each: "
            + "; ".join(f"--accept-in-doubt {s} (mark it done as it stands) or --redo {s} "
                        "(repeat it)" for s in steps)
            + (f". On resume {world_note}" if world_note else "")
        )


class NoRunInProgress(IllegalTransition):
    """Pause, resume or abort asked of a bench that is running nothing."""

    def __init__(self, trigger: str):
        super().__init__(trigger, RunState.IDLE, ["submit"])
        self.args = (f"cannot {trigger}: no run is in progress on this bench",)

    def __str__(self) -> str:
        return str(self.args[0])


class NothingToResume(LabctlError):
    """The run completed, or is unknown."""
