"""Start the simulated instruments of a bench config in-process, on pseudo-terminals.

labctl never imports simulators/ directly: the simulated bench is found through the
`labctl.simulation` entry point, keeping the core free of vendor knowledge.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from labctl.clock import Clock
from labctl.config import BenchConfig
from labctl.errors import ConfigError


def simulation_spec(cfg: BenchConfig, only: list[str] | None = None) -> dict[str, Any]:
    devices = []
    for name, d in cfg.enabled_devices().items():
        if only is not None and name not in only:
            continue
        options = {**d.params, **d.simulator.options}
        devices.append({
            "name": name,
            "kind": d.simulator.kind or d.driver,
            "address": d.address,
            "options": options,
            "bus": d.bus,
            "endpoint": "pty",
        })
    return {"world": cfg.world_spec(), "devices": devices}


async def start_simulation(cfg: BenchConfig, clock: Clock, only: list[str] | None = None) -> Any:
    """Start every enabled device's simulator; returns the simulated bench (with
    `.endpoints[name]`, `.world`, `.simulators[name]`, `close()`)."""
    eps = {ep.name: ep for ep in entry_points(group="labctl.simulation")}
    if "bench" not in eps:
        raise ConfigError(
            "simulate = true but no simulators are installed (entry point labctl.simulation:bench)",
            file=cfg.path, key="bench.simulate",
        )
    start = eps["bench"].load()
    return await start(simulation_spec(cfg, only), clock)
