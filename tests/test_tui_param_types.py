"""The TUI's parameter form types what the operator enters by the recipe's declarations
(issue 17): the run record holds `"n_cycles": 3`, not `"3"`, and a value that is not of
its type is refused in the form, under its field, before anything reaches the bench.
Driven with Textual's pilot on the simulated bench of config/sim.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input, Static
from tui_support import pick_recipe, screen_text, until

from labctl.config import load_config
from labctl.tui import LabctlApp, LocalBackend
from labctl.tui.screens import ParameterFormScreen

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent

TYPED = {
    "schema": "labctl.recipe/1", "name": "typed_form", "version": "1",
    "description": "waits only: a recipe whose parameters have every type",
    "parameters": {
        "n_cycles": {"type": "integer", "default": 2, "min": 1, "max": 5},
        "soak": {"type": "quantity", "unit": "s", "default": "1 s", "min": "0 s",
                 "max": "1 min"},
        "ratio": {"type": "number", "default": 0.5, "min": 0, "max": 1},
        "verbose": {"type": "boolean", "default": False},
        "vial": {"type": "enum", "choices": ["cell_vial", "coat_vial"],
                 "default": "cell_vial"},
    },
    "steps": [{"id": "cycle", "repeat": "${n_cycles}",
               "steps": [{"id": "soak", "wait": "${soak}"}]}],
}


async def test_form_values_are_typed_in_the_record_and_bad_ones_refused(tmp_path: Path
                                                                         ) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "typed_form.json").write_text(json.dumps(TYPED), encoding="utf-8")
    cfg = load_config(ROOT / "config" / "sim.toml")
    be = LocalBackend(cfg, data_dir=tmp_path / "runs", time_scale=1000.0,
                      recipes_dir=recipes, poll_interval_s=0.2, operator="pytest")
    app = LabctlApp(be)
    async with app.run_test(size=(100, 40)) as pilot:
        await until(pilot, app.backend_ready.is_set, "the bench to start")
        assert app.start_error is None and be.bench is not None
        await pilot.press("s")
        await pick_recipe(pilot, "typed_form.json")
        await until(pilot, lambda: isinstance(app.screen, ParameterFormScreen), "the form")
        form = app.screen

        # not an integer: refused under its field, nothing queued
        form.query_one("#param-n_cycles", Input).value = "three"
        await pilot.press("ctrl+s")
        err = form.query_one("#err-n_cycles", Static)
        await until(pilot, lambda: err.has_class("shown"), "the inline error")
        assert "'three'" in str(err.render()) and "number" in str(err.render())
        assert "✖" in screen_text(app)
        assert be.bench.tickets == {}

        form.query_one("#param-n_cycles", Input).value = "3"
        form.query_one("#param-ratio", Input).value = "0.25"
        form.query_one("#param-soak", Input).value = "2"  # a bare number: the declared unit
        form.query_one("#param-verbose", Input).value = "yes"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, ParameterFormScreen),
                    "the form to close")
        [run_id] = be.bench.tickets
        result = await be.bench.wait(run_id)
    assert result["status"] == "completed", result["errors"]
    meta = json.loads((tmp_path / "runs" / run_id / "metadata.json").read_text())
    submitted = meta["parameters"]
    assert submitted == {"n_cycles": 3, "soak": "2 s", "ratio": 0.25, "verbose": True,
                         "vial": "cell_vial"}
    assert type(submitted["n_cycles"]) is int and type(submitted["ratio"]) is float
    assert result["parameters"]["n_cycles"]["value"] == 3
