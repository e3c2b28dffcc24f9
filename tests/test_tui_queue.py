"""The TUI queue on a bench running two runs at once (config/sim.toml with concurrency 2,
in this process, driven with Textual's pilot): the second running run is listed beside the
one shown, queued runs with their position, and a queued run is cancelled from the queue
picker ("c", offered only while runs are queued); a run started from the form with a
higher priority goes ahead of those queued before it."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Static
from tui_support import pick_recipe, screen_text, until

from labctl.config import load_config
from labctl.tui import LabctlApp, LocalBackend
from labctl.tui.screens import ParameterFormScreen, QueueCancelScreen

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
WAIT_RECIPE = ROOT / "tests" / "mqtt_recipes" / "mqtt_wait.json"
LONG = {"duration": "2 h"}


def local_backend(tmp_path: Path, *, concurrency: int) -> LocalBackend:
    """config/sim.toml in this process, `concurrency` runs at once, x1000."""
    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.bench.concurrency = concurrency
    return LocalBackend(cfg, data_dir=tmp_path / "runs", time_scale=1000.0,
                        recipes_dir=ROOT / "tests" / "mqtt_recipes", poll_interval_s=0.2,
                        operator="pytest")


async def test_two_running_and_a_queued_run_cancelled_from_the_queue(tmp_path: Path) -> None:
    be = local_backend(tmp_path, concurrency=2)
    app = LabctlApp(be)
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, app.backend_ready.is_set, "the bench to start")
        assert be.bench is not None
        a = await be.submit(WAIT_RECIPE, LONG)
        await until(pilot, lambda: be.view.run is not None, "the first run shown")
        assert "Cancel queued" not in screen_text(app)  # nothing queued: not offered
        b = await be.submit(WAIT_RECIPE, LONG)
        c = await be.submit(WAIT_RECIPE, LONG)
        await until(pilot, lambda: [(q.run_id, q.queued) for q in be.view.queue]
                    == [(b, False), (c, True)], "b running beside a, c queued")
        # The view changes before the next redraw, and for a moment b and c were both
        # queued (footer already offering cancel), so wait for the screen to catch up:
        # b marked running, c alone in the queue at position 1.
        await until(pilot, lambda: "Cancel queued" in screen_text(app), "cancel offered")
        await until(pilot, lambda: (
            (text := screen_text(app)).count("▶ mqtt_wait  ") == 1
            and f"▶ mqtt_wait  {b[:12]}" in text
            and f"1. mqtt_wait  {c[:12]}" in text and "2. mqtt_wait" not in text),
            "b shown running beside a, c shown first in the queue")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, QueueCancelScreen), "the picker")
        await pilot.press("enter")
        res = await be.bench.wait(c)
        assert res["status"] == "aborted"
        assert any(e.get("type") == "Cancelled" for e in res["errors"])
        await until(pilot, lambda: all(not q.queued for q in be.view.queue), "queue empty")
        await be.abort()
        for rid in (a, b):
            assert (await be.bench.wait(rid))["status"] == "aborted"


async def test_a_priority_typed_in_the_form_puts_the_run_ahead_of_the_queue(
        tmp_path: Path) -> None:
    be = local_backend(tmp_path, concurrency=1)
    app = LabctlApp(be)
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, app.backend_ready.is_set, "the bench to start")
        assert be.bench is not None
        a = await be.submit(WAIT_RECIPE, LONG)
        b = await be.submit(WAIT_RECIPE, LONG)  # priority 0
        await until(pilot, lambda: [(q.run_id, q.queued) for q in be.view.queue]
                    == [(b, True)], "b queued behind a")
        await pilot.press("s")
        await pick_recipe(pilot, "mqtt_wait.json")
        await until(pilot, lambda: isinstance(app.screen, ParameterFormScreen), "the form")
        form = app.screen
        form.query_one("#param-duration", Input).value = "2 h"
        form.query_one("#run-priority", Input).value = "high"  # not an integer: refused
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "not an integer" in str(
            form.query_one("#err-run-priority", Static).render()), "the priority error")
        assert len(be.bench.runs.active()) == 2  # nothing was queued
        form.query_one("#run-priority", Input).value = "5"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, ParameterFormScreen), "queued")
        await until(pilot, lambda: len(be.view.queue) == 2, "two queued")
        c = be.view.queue[0].run_id
        assert [(q.run_id, q.priority) for q in be.view.queue] == [(c, 5), (b, 0)]
        assert c not in (a, b)
        await until(pilot, lambda: "1. mqtt_wait  priority 5" in screen_text(app),
                    "c first in the queue panel, with its priority")
        await be.cancel(b)
        await be.abort()  # a; then c starts, ahead of where b was
        await until(pilot, lambda: be.view.run is not None and be.view.run.run_id == c,
                    "c running")
        await be.abort()
        for rid in (a, b, c):
            assert (await be.bench.wait(rid))["status"] == "aborted"
