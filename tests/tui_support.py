"""Helpers of the TUI tests: the screen as plain text, waiting on the pilot, the simulated
bench's simulators, and a frozen backend for snapshots."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot

from labctl.tui.backend import BenchBackend, Problem

ROOT = Path(__file__).resolve().parent.parent
TUI_RECIPES = ROOT / "tests" / "tui_recipes"
WAIT = 60.0  # generous: the machine is shared; no timing is asserted


def screen_text(app: App[Any]) -> str:
    """What the terminal shows now, without colour (the screen must read without it)."""
    w, h = app.size
    console = Console(width=w, height=h, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    return console.export_text()


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], what: str,
                timeout: float = WAIT) -> None:
    """Let the app run until `predicate()` holds (the timeout only bounds a hang)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def simulators(bench: Any) -> dict[str, Any]:
    return dict(bench.instruments.simulation.simulators)


def unsafe(bench: Any) -> list[str]:
    """Simulators (the instruments' own side) that are not in their safe state."""
    return [n for n, s in simulators(bench).items() if not s.is_safe()]


class FrozenBackend(BenchBackend):
    """A backend whose view is whatever the test put there: nothing moves, nothing ticks."""

    mode = "local"

    def __init__(self, recipes_dir: Path = TUI_RECIPES):
        super().__init__(recipes_dir)
        self.calls: list[str] = []

    async def start(self) -> None:
        self.view.connected = True
        self.view.touch("bench")

    async def close(self) -> None:
        self.calls.append("close")

    async def validate(self, recipe: Path, parameters: dict[str, Any]) -> list[Problem]:
        return []

    async def submit(self, recipe: Path, parameters: dict[str, Any], *,
                     priority: int = 0) -> str:
        self.calls.append(f"submit {recipe.name} {sorted(parameters.items())}"
                          + (f" priority {priority}" if priority else ""))
        return "run-1"

    async def pause(self) -> None:
        self.calls.append("pause")

    async def resume(self) -> None:
        self.calls.append("resume")

    async def abort(self) -> None:
        self.calls.append("abort")

    async def estop(self) -> None:
        self.calls.append("estop")

    async def cancel(self, run_id: str) -> None:
        self.calls.append(f"cancel {run_id}")

    async def run_record(self, run_id: str | None = None) -> dict[str, Any]:
        return {"run_id": run_id or "run-1", "index": None, "result": None, "metadata": None}


async def pick_recipe(pilot: Pilot[Any], filename: str) -> None:
    """In the recipe picker: move the highlight to `filename` with the arrow keys, Enter."""
    from textual.widgets import OptionList

    from labctl.tui.screens import RecipePickerScreen

    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, RecipePickerScreen), "the picker")
    screen = app.screen
    assert isinstance(screen, RecipePickerScreen)
    names = [e.path.name for e in screen.entries]
    target = names.index(filename)
    options = screen.query_one(OptionList)
    await until(pilot, lambda: options.highlighted is not None, "a highlighted recipe")
    while options.highlighted != target:
        await pilot.press("down" if (options.highlighted or 0) < target else "up")
    await pilot.press("enter")
