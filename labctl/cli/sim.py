"""`labctl sim serve`: serve every device of a bench as simulators, for external hosts."""

from __future__ import annotations

import asyncio
import json
import signal

import typer

from labctl.cli.app import app
from labctl.cli.common import DEFAULT_CONFIG_PATH, ConfigOpt, TimeScaleOpt, load_bench_config
from labctl.clock import make_clock

sim_app = typer.Typer(help="Simulated instruments.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")


@sim_app.command("serve")
def serve(config: ConfigOpt = DEFAULT_CONFIG_PATH, time_scale: TimeScaleOpt = None) -> None:
    """Serve every enabled device of BENCH on its own pseudo-terminal (devices that share a
    `bus` share one). Prints one JSON line per device {"name", "kind", "endpoint"}, then
    serves until SIGINT/SIGTERM."""
    cfg = load_bench_config(config)

    async def run() -> None:
        from labctl.simulation import simulation_spec, start_simulation

        clock = make_clock(time_scale if time_scale is not None else cfg.bench.time_scale)
        bench = await start_simulation(cfg, clock)
        kinds = {d["name"]: d["kind"] for d in simulation_spec(cfg)["devices"]}
        for name, endpoint in bench.endpoints.items():
            print(json.dumps({"name": name, "kind": kinds[name], "endpoint": endpoint}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await bench.close()

    asyncio.run(run())
