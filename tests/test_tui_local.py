"""The operator TUI on the simulated bench of config/sim.toml, in this process, driven with
Textual's pilot: start a recipe from the picker and form (errors inline, nothing queued),
watch its steps advance, pause/resume, abort after the confirmation, e-stop at once, quit
only after asking while a run is active, the run record, and a silent device shown stale
while the screen and the other devices go on. Safe states are checked on the simulators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Static
from tui_support import TUI_RECIPES, WAIT, pick_recipe, screen_text, simulators, unsafe, until

from labctl.config import load_config
from labctl.store import RunStore
from labctl.tui import LabctlApp, LocalBackend
from labctl.tui.screens import (
    ConfirmScreen,
    ParameterFormScreen,
    RecipePickerScreen,
    RunRecordScreen,
)

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
RECIPE = TUI_RECIPES / "tui_steps.json"
SIZE = (100, 32)


def backend(tmp_path: Path, time_scale: float = 1000.0) -> LocalBackend:
    cfg = load_config(ROOT / "config" / "sim.toml")
    return LocalBackend(cfg, data_dir=tmp_path / "runs", time_scale=time_scale,
                        recipes_dir=TUI_RECIPES, poll_interval_s=0.2, operator="pytest")


def step_state(be: LocalBackend, step: str) -> str | None:
    run = be.view.run
    row = run.step(step) if run else None
    return row.state if row else None


def run_state(be: LocalBackend) -> str | None:
    return be.view.run.state if be.view.run else None


async def started(pilot: Any, app: LabctlApp) -> None:
    await until(pilot, app.backend_ready.is_set, "the bench to start")
    assert app.start_error is None


async def test_start_from_picker_errors_inline_then_steps_pause_resume_abort(tmp_path) -> None:
    be = backend(tmp_path)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert be.bench is not None
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, RecipePickerScreen), "the picker")
        assert "tui_steps.json" in screen_text(app) and "tui_lsv.json" in screen_text(app)
        await pick_recipe(pilot, "tui_steps.json")
        await until(pilot, lambda: isinstance(app.screen, ParameterFormScreen), "the form")
        form = app.screen
        assert form.query_one("#param-volume", Input).value == "2 mL"  # the declared default

        # an out-of-range value: shown under its field, nothing queued
        form.query_one("#param-volume", Input).value = "30 mL"
        await pilot.press("ctrl+s")
        err = form.query_one("#err-volume", Static)
        await until(pilot, lambda: err.has_class("shown"), "the inline error")
        assert "above the maximum" in str(err.render())
        assert "✖" in screen_text(app)
        assert be.bench.tickets == {}
        assert isinstance(app.screen, ParameterFormScreen)

        form.query_one("#param-volume", Input).value = "2 mL"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, ParameterFormScreen),
                    "the form to close")
        [run_id] = be.bench.tickets
        await until(pilot, lambda: step_state(be, "hold") == "running", "the hold step")
        for done in ("init.init_ec", "init.init_dmc", "route", "fill"):
            assert step_state(be, done) == "done", done
        assert step_state(be, "rest") == "pending"
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "RUNNING" in text and "tui_steps" in text
        assert run_id in str(app.query_one("#run-title", Static).render())
        assert "✔ done" in text and "▶ running" in text, text

        await pilot.press("p")
        await until(pilot, lambda: run_state(be) == "paused", "paused")
        assert str(be.bench.current.machine.state) == "paused"
        await pilot.pause(0.3)
        assert "PAUSED" in screen_text(app)

        await pilot.press("r")
        await until(pilot, lambda: run_state(be) == "running", "running again")
        assert step_state(be, "hold") == "running"

        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        assert "Abort run" in screen_text(app)
        assert run_state(be) == "running"  # nothing happens before the answer
        await pilot.press("y")
        await until(pilot, lambda: run_state(be) == "aborted", "aborted")
        assert unsafe(be.bench) == []
        assert step_state(be, "hold") == "cancelled"
        result = await be.bench.wait(run_id)
        assert result["status"] == "aborted"
        await pilot.pause(0.3)
        assert "ABORTED" in screen_text(app)


async def test_estop_mid_transfer_needs_no_confirmation(tmp_path) -> None:
    be = backend(tmp_path, time_scale=50.0)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert be.bench is not None
        run_id = await be.submit(RECIPE, {"volume": "5 mL", "flow": "0.5 mL/min"})
        await until(pilot, lambda: step_state(be, "fill") == "running", "the transfer")
        await until(pilot, lambda: "pump_ec" in unsafe(be.bench), "pump_ec moving")
        await pilot.press("e")
        assert not isinstance(app.screen, ConfirmScreen)
        await until(pilot, lambda: run_state(be) == "aborted", "aborted by the e-stop")
        assert unsafe(be.bench) == []
        await until(pilot, lambda: be.view.state == "held", "the queue held")
        assert (await be.bench.wait(run_id))["status"] == "aborted"
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "E-STOP" in text and "HELD" in text


async def test_quit_asks_while_a_run_is_active_and_leaves_the_bench_safe(tmp_path) -> None:
    be = backend(tmp_path)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert be.bench is not None
        sims = simulators(be.bench)
        run_id = await be.submit(RECIPE, {})
        await until(pilot, lambda: step_state(be, "hold") == "running", "the hold step")
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        assert "A run is active" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "back")
        assert run_state(be) == "running" and app.is_running
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running, "the app to quit")
    assert [n for n, s in sims.items() if not s.is_safe()] == []
    store = RunStore(tmp_path / "runs")
    assert store.index.get_run(run_id)["status"] == "aborted"
    store.close()


async def test_quit_without_a_run_asks_nothing(tmp_path) -> None:
    be = backend(tmp_path)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "the app to quit")


async def test_run_record_of_the_last_run(tmp_path) -> None:
    be = backend(tmp_path)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert be.bench is not None
        run_id = await be.submit(RECIPE, {"hold": "0 s", "rest": "0 s"})
        await until(pilot, lambda: run_state(be) == "completed", "completion", WAIT)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, RunRecordScreen), "the record")
        text = screen_text(app)
        assert run_id in text and "COMPLETED" in text and "operator:pytest" in text
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, RunRecordScreen), "closed")


async def test_silent_device_is_shown_stale_while_the_rest_goes_on(tmp_path) -> None:
    be = backend(tmp_path)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert be.bench is not None
        await until(pilot, lambda: all(r.updated for r in be.view.devices.values()),
                    "first readings")
        valve = simulators(be.bench)["sel_valve"]
        valve.faults.silence = True
        await until(pilot, lambda: be.view.devices["sel_valve"].error is not None,
                    "the valve's poll to fail")
        before = be.view.devices["pump_ec"].updated
        await until(pilot, lambda: be.view.devices["pump_ec"].updated != before,
                    "other devices still read")
        await pilot.pause(1.2)  # the device rows redraw at least once a second
        line = next(ln for ln in screen_text(app).splitlines() if "sel_valve" in ln)
        assert "idle~" in line and "(stale" in line
        # the keys still work while the valve says nothing
        await pilot.press("l")
        await pilot.pause(0.5)
        assert app.is_running
        valve.faults.silence = False
        await until(pilot, lambda: not be.view.devices["sel_valve"].stale(),
                    "the valve to answer again")


async def test_live_plot_follows_a_linear_sweep(tmp_path) -> None:
    be = backend(tmp_path, time_scale=100.0)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await be.submit(TUI_RECIPES / "tui_lsv.json", {"scan_rate": "5 mV/s"})
        # points on screen while the sweep is still running: the plot is live
        await until(pilot, lambda: step_state(be, "sweep") == "running"
                    and be.view.measurement is not None and len(be.view.measurement.xs) > 5,
                    "points during the sweep")
        await until(pilot, lambda: run_state(be) in ("completed", "failed", "aborted"), "end")
        assert run_state(be) == "completed"
        await pilot.pause(0.5)
        m = be.view.measurement
        assert m is not None and m.technique == "lsv" and m.step == "sweep"
        assert len(m.xs) == 301  # 3.0 V to 4.5 V in 5 mV steps, every row of the data file
        assert min(m.xs) == pytest.approx(3.0) and max(m.xs) == pytest.approx(4.5)
        text = screen_text(app)
        assert "LSV sweep  (301 points)" in text and "E / V" in text


async def test_run_record_shows_a_safe_state_failure_with_device_and_text(tmp_path) -> None:
    """E-stop with one instrument silent: the record names the device and why its safe
    state was not reached (it showed `error None`)."""
    be = backend(tmp_path, time_scale=50.0)
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert be.bench is not None
        dispenser = simulators(be.bench)["dispenser"]
        run_id = await be.submit(RECIPE, {"volume": "5 mL", "flow": "0.5 mL/min"})
        await until(pilot, lambda: "pump_ec" in unsafe(be.bench), "pump_ec moving")
        dispenser.faults.silence = True
        await pilot.press("e")
        result = await be.bench.wait(run_id)
        [failure] = [e for e in result["errors"] if e.get("type") == "SafeStateError"]
        assert list(failure["devices"]) == ["dispenser"]
        dispenser.faults.silence = False
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, RunRecordScreen), "the record")
        await until(pilot, lambda: "ABORTED" in screen_text(app), "the result")
        shown = str(app.screen.query_one("#record-summary", Static).render())
        lines = [ln for ln in shown.splitlines() if ln.startswith("error")]
        assert lines and not any("None" in ln for ln in lines), lines
        assert any(ln.startswith("error       safe state not reached: dispenser: TimeoutError: "
                                 "not confirmed within") and "(no answer)" in ln
                   for ln in lines), lines
        assert "safe state not reached: dispenser" in screen_text(app)
