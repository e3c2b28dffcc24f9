"""Step estimates for the plan: from the instruments' own timing models where the physics
is declared (dosing rate, EIS frequencies, the cell's capacity and cut-offs), plus what
talking to a device and computing an analysis take.

Why: an estimate made of constants (30 s + 10 s/g for a dose) was off by a factor of six
for the recipes' salt (37 s planned, 222 s on the bench), so progress and ETAs were wrong
for exactly the long steps. The models are the simulators' (simulators/timing.py), found
through the `labctl.simulation` entry points (a `timing` one if a package declares it, else the
`timing` module beside the simulated bench's `bench` one) so that the core names no vendor; they
read the device's params and simulator options, the same ones the simulated bench is built
from. Without a model the action's own `estimate_s` stands.

Times are on the bench's clock. Serial exchanges and analyses take wall time, which a
simulated bench's scaled clock counts `time_scale` times over: their share is given in wall
seconds and scaled by the bench config's time scale (1 on real hardware).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from labctl.config import BenchConfig
from labctl.registry import installed_entry_points

log = logging.getLogger("labctl.estimates")

#: wall seconds of serial exchanges one device step takes beyond its physics (the command,
#: its acknowledgement, the status polls until it reports done); bench/estimates.py shows
#: what the simulated bench takes per step
STEP_EXCHANGES_WALL_S = 0.01
#: wall seconds an analysis computes
ANALYSIS_WALL_S = 0.1
#: libraries an analysis imports at its first use in a process, and the wall seconds that
#: takes (impedance pulls in scipy: ~2 s, paid by every `labctl run` of an EIS recipe, once
#: by a long-lived agent or TUI)
ANALYSIS_IMPORTS: dict[str, tuple[str, float]] = {"ionic_conductivity": ("impedance", 2.0)}

TimingFn = Callable[[str, str, dict[str, Any], dict[str, Any]], "float | None"]


@lru_cache(maxsize=1)
def timing_model() -> TimingFn | None:
    """The installed timing models: entry point `labctl.simulation:timing`, else the
    `timing` module beside the simulated bench's own entry point; None without simulators."""
    eps = {ep.name: ep for ep in installed_entry_points("labctl.simulation")}
    try:
        if "timing" in eps:
            fn: TimingFn = eps["timing"].load()
            return fn
        if "bench" in eps:
            package = eps["bench"].value.split(":", 1)[0].rsplit(".", 1)[0]
            found: TimingFn = importlib.import_module(f"{package}.timing").estimate_s
            return found
    except Exception as exc:  # no models: the actions' own estimates stand
        log.debug("no timing models: %s", exc)
    return None


def clock_per_wall_s(cfg: BenchConfig) -> float:
    """Bench-clock seconds per wall second: the time scale on a simulated bench."""
    return float(cfg.bench.time_scale) if cfg.bench.simulate else 1.0


def device_options(device: Any) -> dict[str, Any]:
    """What a device's simulator is built from: its params, then its simulator options."""
    return {**dict(device.params), **dict(device.simulator.options)}


def action_estimate_s(spec: Any, view: Any, args: dict[str, Any]) -> float:
    """A device step's estimate on the bench clock: the instrument's timing model for this
    action where there is one, else the action's own estimate; plus its serial exchanges."""
    seconds: float | None = None
    model = timing_model()
    if model is not None:
        cfg = view.config
        kind = cfg.simulator.kind or cfg.driver
        try:
            seconds = model(kind, str(spec.name), args, device_options(cfg))
        except Exception as exc:  # a model's trouble must not stop validation
            log.debug("timing model %s.%s: %s", kind, spec.name, exc)
    if seconds is None:
        seconds = float(spec.estimate_s(view, args))
    return seconds + STEP_EXCHANGES_WALL_S * clock_per_wall_s(view.bench)


def analysis_estimate_s(name: str, cfg: BenchConfig) -> float:
    """An analysis step's estimate on the bench clock: its computing, and the import of
    its library when this process has not loaded it yet (both wall time)."""
    wall = ANALYSIS_WALL_S
    lib = ANALYSIS_IMPORTS.get(name)
    if lib is not None and lib[0] not in sys.modules:
        wall += lib[1]
    return wall * clock_per_wall_s(cfg)


def at_time_scale(cfg: BenchConfig, time_scale: float | None) -> BenchConfig:
    """The config as a bench run at `time_scale` (a `--time-scale` override) plans with it:
    the wall-time shares of its estimates are counted at the scale the bench really runs."""
    if time_scale is None or not cfg.bench.simulate or time_scale == cfg.bench.time_scale:
        return cfg
    bench = cfg.bench.model_copy(update={"time_scale": float(time_scale)})
    return cfg.model_copy(update={"bench": bench})

