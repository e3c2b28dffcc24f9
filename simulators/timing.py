"""How long the simulated instruments take, for the planner's estimates.

labctl's planner asks here (found beside the `labctl.simulation` entry point `bench`, or
through a `timing` entry point of that group, so the core stays free of vendor knowledge)
how long an action takes on a device of a given kind with its declared options (the
device's params and simulator options, as the simulated bench passes them). Each answer
comes from the function the simulator itself runs on, kept next to it in the simulator's
module: the dosing rate and settling of the Quantos, the EIS frequency loop and the cell
model of the EmStat. None: no model here, the action's own estimate stands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Model = Callable[[dict[str, Any], dict[str, Any]], float]


def _dose(options: dict[str, Any], a: dict[str, Any]) -> float:
    from simulators.mt_sics import dose_time_s

    # a dispenser with an autosampler first moves it to present the target vessel
    move = float(options.get("sampler_s", 2.0)) if a.get("sampler_position") is not None else 0
    return move + dose_time_s(options, float(a["mass_g"]))


def _peis(options: dict[str, Any], a: dict[str, Any]) -> float:
    from simulators.palmsens import eis_time_s

    return eis_time_s(float(a["f_start_hz"]), float(a["f_end_hz"]),
                      int(a.get("n_frequencies") or 1))


def _gcpl(options: dict[str, Any], a: dict[str, Any]) -> float:
    from simulators.palmsens import gcpl_time_s

    phases = [p for p in a.get("phases") or [] if isinstance(p, dict)]
    return gcpl_time_s(options, phases, int(a.get("n_cycles") or 1))


#: (simulator kind, action) -> model
MODELS: dict[tuple[str, str], Model] = {
    ("quantos-dispenser", "dispense"): _dose,
    ("palmsens-emstat", "peis"): _peis,
    ("palmsens-emstat", "gcpl"): _gcpl,
}


def estimate_s(kind: str, action: str, args: dict[str, Any],
               options: dict[str, Any]) -> float | None:
    """Simulated seconds `action` with resolved `args` takes on a `kind` simulator with
    `options`; None when there is no model (or the args do not fit one)."""
    model = MODELS.get((kind, action))
    if model is None:
        return None
    try:
        return float(model(options, args))
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
