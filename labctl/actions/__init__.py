"""Actions a recipe step may ask of a device, one module per capability (beside
labctl.capabilities), on a small typed base:

- `base`: `ActionSpec[D]` (validation: resolve → check → estimate_s / effects / describe,
  all pure; execution: `run(device, args, ctx)`), `Effect`, `DeviceView`, `ActionContext`;
- `args`: typed arguments (`Arg`, `Q`) and their coercion from recipe values;
- `display`: values for people (`fmt`);
- `holds`, `routes`: helpers shared by the actions that hold or move material;
- `registry`: the catalogue, found through the `labctl.actions` entry-point group.

A plugin adds a capability's actions by declaring, in its own pyproject:

    [project.entry-points."labctl.actions"]
    dip_coater = "labctl_dipcoat.actions:ACTIONS"
"""

from labctl.actions.args import DIMENSION_NAMES, Arg, ArgKind, ArgValue, Q, format_quantity
from labctl.actions.base import (
    ActionContext,
    ActionSpec,
    ArgIssue,
    Args,
    DataWriter,
    DeviceView,
    Effect,
    Result,
    temperature_checks,
)
from labctl.actions.display import fmt, litres_upper
from labctl.actions.registry import (
    ACTIONS,
    ActionTable,
    action_catalogue,
    catalogue_schema,
    driver_capabilities,
    get_action,
)

__all__ = [
    "ACTIONS",
    "DIMENSION_NAMES",
    "ActionContext",
    "ActionSpec",
    "ActionTable",
    "Arg",
    "ArgIssue",
    "ArgKind",
    "ArgValue",
    "Args",
    "DataWriter",
    "DeviceView",
    "Effect",
    "Q",
    "Result",
    "action_catalogue",
    "catalogue_schema",
    "driver_capabilities",
    "fmt",
    "format_quantity",
    "get_action",
    "litres_upper",
    "temperature_checks",
]
