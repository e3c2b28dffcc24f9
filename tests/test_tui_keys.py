"""Keys on a frozen bench: e-stop is immediate from every screen except while typing in a
form field (where `e` is a letter), abort and quit ask first, and commands refused by the
bench are said in the event log."""

from __future__ import annotations

from typing import Any

from textual.widgets import Input
from tui_support import FrozenBackend, pick_recipe, until

from labctl.tui import BackendError, LabctlApp
from labctl.tui.model import RunView, StepRow
from labctl.tui.screens import ConfirmScreen, ParameterFormScreen, RunRecordScreen

SIZE = (100, 32)


def running_backend() -> FrozenBackend:
    be = FrozenBackend()
    be.view.bench_id, be.view.state = "b1", "running"
    be.view.run = RunView("run-1", recipe="r", state="running",
                          steps=[StepRow("s", state="running")], steps_total=1)
    be.view.touch("bench", "run")
    return be


async def ready(pilot: Any) -> None:
    await until(pilot, pilot.app.backend_ready.is_set, "the backend")


async def test_estop_from_a_dialog_and_the_record_screen() -> None:
    be = running_backend()
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the abort question")
        await pilot.press("e")
        await until(pilot, lambda: "estop" in be.calls, "the e-stop")
        assert "abort" not in be.calls
        await pilot.press("n")
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, RunRecordScreen), "the record")
        await pilot.press("e")
        await until(pilot, lambda: be.calls.count("estop") == 2, "the second e-stop")


async def test_typing_e_in_a_form_field_is_a_letter_not_an_estop() -> None:
    be = running_backend()
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("s")
        await pick_recipe(pilot, "tui_steps.json")
        await until(pilot, lambda: isinstance(app.screen, ParameterFormScreen), "the form")
        field = app.screen.query_one("#param-volume", Input)
        field.focus()
        field.value = ""
        await pilot.press("e", "3", " ", "m", "L")
        assert field.value == "e3 mL"
        assert "estop" not in be.calls
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ParameterFormScreen), "closed")
        assert not any(c.startswith("submit") for c in be.calls)


async def test_form_sends_what_was_typed() -> None:
    be = running_backend()
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("s")
        await pick_recipe(pilot, "tui_steps.json")
        await until(pilot, lambda: isinstance(app.screen, ParameterFormScreen), "the form")
        app.screen.query_one("#param-volume", Input).value = "3 mL"
        app.screen.query_one("#param-rest", Input).value = ""  # empty: the default
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any(c.startswith("submit") for c in be.calls), "submit")
        [call] = [c for c in be.calls if c.startswith("submit")]
        assert call == ("submit tui_steps.json [('flow', '20 mL/min'), ('hold', '2 h'), "
                        "('volume', '3 mL')]")


async def test_refused_command_is_said_in_the_log() -> None:
    be = running_backend()

    async def refuse() -> None:
        raise BackendError("cannot pause: no run is in progress on this bench")

    be.pause = refuse  # type: ignore[method-assign]
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("p")
        await until(pilot, lambda: any("pause refused" in e.text for e in be.view.events),
                    "the refusal in the log")
        [line] = [e for e in be.view.events if "pause refused" in e.text]
        assert line.level == "warning" and "no run is in progress" in line.text
