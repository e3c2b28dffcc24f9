"""The TUI offers only the run commands the run state allows (pause while running, resume
while paused, abort while active, none once the run has ended), and device readings say
their age and are read again from the device after every state change, not only at the
next poll. Driven with Textual's pilot on the simulated bench of config/sim.toml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.widgets import Footer
from tui_support import TUI_RECIPES, screen_text, unsafe, until

from labctl.config import load_config
from labctl.tui import LabctlApp, LocalBackend
from labctl.tui.screens import ConfirmScreen

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
RECIPE = TUI_RECIPES / "tui_steps.json"
SIZE = (120, 36)


def backend(tmp_path: Path, *, time_scale: float = 1000.0,
            poll_interval_s: float = 0.2) -> LocalBackend:
    cfg = load_config(ROOT / "config" / "sim.toml")
    return LocalBackend(cfg, data_dir=tmp_path / "runs", time_scale=time_scale,
                        recipes_dir=TUI_RECIPES, poll_interval_s=poll_interval_s,
                        operator="pytest")


def run_state(be: LocalBackend) -> str | None:
    return be.view.run.state if be.view.run else None


def footer(app: LabctlApp) -> str:
    """The footer line as shown (the keys offered)."""
    return screen_text(app).rstrip().splitlines()[-1]


def busy_row(app: LabctlApp) -> str | None:
    """The devices table's pump_ec row while it reads busy, as shown."""
    return next((line for line in screen_text(app).splitlines()
                 if "pump_ec" in line and "busy" in line), None)


def offered(app: LabctlApp) -> set[str]:
    return {a for a in ("pause", "resume", "abort") if app.check_action(a, ())}


async def test_commands_offered_follow_the_run_state(tmp_path: Path) -> None:
    be = backend(tmp_path)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.backend_ready.is_set, "the bench to start")
        assert app.query_one(Footer) is not None
        await pilot.pause(0.2)
        assert offered(app) == set()  # no run yet
        assert "Abort" not in footer(app) and "Pause" not in footer(app)

        await be.submit(RECIPE, {})  # holds 2 h: time to look
        await until(pilot, lambda: run_state(be) == "running", "running")
        await until(pilot, lambda: "Pause" in footer(app), "Pause offered")
        assert offered(app) == {"pause", "abort"}
        assert "Abort" in footer(app) and "Resume" not in footer(app)

        await pilot.press("p")
        await until(pilot, lambda: run_state(be) == "paused", "paused")
        await until(pilot, lambda: "Resume" in footer(app), "Resume offered")
        assert offered(app) == {"resume", "abort"}
        assert "Pause" not in footer(app)

        await pilot.press("r")
        await until(pilot, lambda: run_state(be) == "running", "running again")
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("y")
        await until(pilot, lambda: run_state(be) == "aborted", "aborted")
        await until(pilot, lambda: "Abort" not in footer(app), "Abort withdrawn")
        assert offered(app) == set()


async def test_after_completion_abort_is_not_offered(tmp_path: Path) -> None:
    be = backend(tmp_path)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.backend_ready.is_set, "the bench to start")
        run_id = await be.submit(RECIPE, {"hold": "0 s", "rest": "0 s"})
        await until(pilot, lambda: run_state(be) == "completed", "completion")
        await pilot.pause(0.3)
        text = footer(app)
        assert "Abort" not in text and "Pause" not in text and "Resume" not in text, text
        assert "Start" in text and "E-STOP" in text  # what can be done is still offered
        await pilot.press("a")
        await pilot.press("p")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmScreen)
        assert f"Abort run {run_id}" not in screen_text(app)
        assert be.bench is not None and (await be.bench.wait(run_id))["status"] == "completed"


async def test_readings_show_their_age_and_are_reread_at_each_state_change(
        tmp_path: Path) -> None:
    # polls an hour apart: only a state change can bring a new reading in time
    be = backend(tmp_path, time_scale=50.0, poll_interval_s=3600.0)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.backend_ready.is_set, "the bench to start")
        assert be.bench is not None
        await until(pilot, lambda: all(r.updated for r in be.view.devices.values()),
                    "first readings")
        await pilot.pause(0.3)
        header = next(line for line in screen_text(app).splitlines() if "readings" in line)
        assert "age" in header
        first = be.view.devices["pump_ec"].updated

        # 5 mL at 0.5 mL/min: ten simulated minutes of transfer
        await be.submit(RECIPE, {"volume": "5 mL", "flow": "0.5 mL/min"})
        await until(pilot, lambda: be.view.devices["pump_ec"].state == "busy",
                    "pump_ec read as busy while it transfers")
        assert be.view.devices["pump_ec"].updated != first
        await until(pilot, lambda: busy_row(app) is not None, "pump_ec shown busy")
        assert re.search(r"busy\s+\d+s\s", busy_row(app) or ""), busy_row(app)  # its age

        pot = be.view.devices["potentiostat"]
        before_abort = pot.updated
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("y")
        await until(pilot, lambda: run_state(be) == "aborted", "aborted")
        assert unsafe(be.bench) == []
        await until(pilot, lambda: be.view.devices["pump_ec"].state == "idle",
                    "pump_ec read again after the abort")
        await until(pilot, lambda: pot.updated != before_abort,
                    "the potentiostat read again after the abort")
