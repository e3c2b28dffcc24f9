"""Actions and analyses are found through entry points exactly as drivers are: labctl's own
from its pyproject, a broken or wrong entry point named in a clear error."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from labctl.actions import ACTIONS, ActionSpec, driver_capabilities
from labctl.actions.registry import _specs_of
from labctl.analysis import ANALYSES, AnalysisSpec
from labctl.errors import ConfigError
from labctl.registry import (
    ACTIONS_GROUP,
    ANALYSES_GROUP,
    available_drivers,
    load_plugin,
    plugin_entry_points,
)


def test_labctl_registers_its_own_actions_and_analyses_by_entry_point() -> None:
    mine = {ep.value.split(":")[0] for ep in plugin_entry_points(ACTIONS_GROUP)}
    assert {"labctl.actions.syringe_pump", "labctl.actions.potentiostat"} <= mine
    assert {"ionic_conductivity", "stability_window", "coulombic_efficiency",
            "capacity_retention"} <= {ep.name for ep in plugin_entry_points(ANALYSES_GROUP)}
    assert all(isinstance(spec, AnalysisSpec) for spec in ANALYSES.values())
    # every installed driver's capabilities (declared by its class) have actions
    for driver in available_drivers():
        caps = driver_capabilities(driver)
        assert caps, driver
        assert all(cap in ACTIONS and ACTIONS[cap] for cap in caps), driver


def test_an_entry_point_that_cannot_load_is_named() -> None:
    ep = EntryPoint("broken", "labctl_no_such_plugin.actions:ACTIONS", ACTIONS_GROUP)
    with pytest.raises(ConfigError) as err:
        load_plugin(ep)
    text = str(err.value)
    assert "labctl.actions entry point 'broken'" in text
    assert "labctl_no_such_plugin" in text and "ModuleNotFoundError" in text


def test_an_entry_point_naming_something_else_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"where: 42 is not a labctl ActionSpec"):
        _specs_of((42,), "where")

    class Nameless(ActionSpec):  # type: ignore[type-arg]
        capability = "valve"

    with pytest.raises(ConfigError, match="Nameless sets no capability or name"):
        _specs_of(Nameless, "where")
