"""The TUI's inventory screen on the simulated bench of config/sim.toml (in this process),
driven with Textual's pilot: `i` shows every reservoir and dispenser head with its level and
lot, a refill typed into the form reaches the bench's persisted inventory with its lot, and
a bad refill is refused inline and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input
from tui_support import TUI_RECIPES, screen_text, until

from labctl.config import load_config
from labctl.store.inventory import InventoryStore
from labctl.tui import LabctlApp, LocalBackend
from labctl.tui.screens import InventoryScreen

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
SIZE = (110, 36)


def dmc_ml(data: Path) -> float:
    store = InventoryStore(data)
    try:
        return store.level_map()["res_dmc"]["DMC"][0] * 1000
    finally:
        store.close()


async def test_inventory_screen_shows_levels_and_records_a_refill_with_its_lot(
        tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "sim.toml")
    data = tmp_path / "runs"
    be = LocalBackend(cfg, data_dir=data, time_scale=1000.0, recipes_dir=TUI_RECIPES,
                      poll_interval_s=0.2, operator="pytest")
    app = LabctlApp(be)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.backend_ready.is_set, "the bench to start")
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, InventoryScreen), "the screen")
        await until(pilot, lambda: "res_dmc" in screen_text(app), "the levels")
        text = screen_text(app)
        assert "SIM-DMC-001" in text and "dispenser" in text and "LiPF6" in text, text

        app.screen.query_one("#inv-vessel", Input).value = "res_dmc"
        app.screen.query_one("#inv-amount", Input).value = "500 mL"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "would not fit" in screen_text(app), "the refusal")
        assert dmc_ml(data) == pytest.approx(200)

        app.screen.query_one("#inv-amount", Input).value = "25 mL"
        app.screen.query_one("#inv-lot", Input).value = "TUI-LOT-7"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "TUI-LOT-7" in screen_text(app), "the refilled level")
        assert dmc_ml(data) == pytest.approx(225)
        [line] = [x for x in screen_text(app).splitlines() if "res_dmc" in x and "DMC " in x]
        assert "225 mL" in line and "TUI-LOT-7" in line, line
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, InventoryScreen), "closed")
