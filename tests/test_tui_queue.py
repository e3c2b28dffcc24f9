"""The TUI queue on a bench running two runs at once (config/sim.toml with concurrency 2,
in this process, driven with Textual's pilot): the second running run is listed beside the
one shown, queued runs with their position, and a queued run is cancelled from the queue
picker ("c", offered only while runs are queued)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_support import screen_text, until

from labctl.config import load_config
from labctl.tui import LabctlApp, LocalBackend
from labctl.tui.screens import QueueCancelScreen

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
WAIT_RECIPE = ROOT / "tests" / "mqtt_recipes" / "mqtt_wait.json"
LONG = {"duration": "2 h"}


async def test_two_running_and_a_queued_run_cancelled_from_the_queue(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.bench.concurrency = 2
    be = LocalBackend(cfg, data_dir=tmp_path / "runs", time_scale=1000.0,
                      recipes_dir=ROOT / "tests" / "mqtt_recipes", poll_interval_s=0.2,
                      operator="pytest")
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
        await until(pilot, lambda: "Cancel queued" in screen_text(app), "cancel offered")
        text = screen_text(app)
        assert f"▶ mqtt_wait  {b[:12]}" in text and f"1. mqtt_wait  {c[:12]}" in text
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
