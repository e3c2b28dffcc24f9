"""`labctl sim serve`: serve every device of a bench as simulators, for external hosts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from labctl.cli.common import (
    DEFAULT_CONFIG_PATH,
    EXIT_INVALID,
    ConfigOpt,
    TimeScaleOpt,
    fail,
    load_bench_config,
)
from labctl.cli.root import app
from labctl.clock import make_clock
from labctl.errors import ConfigError

sim_app = typer.Typer(help="Simulated instruments.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")
log = logging.getLogger("labctl.sim")

#: `--state`: wall seconds between two saves of the world while serving
SAVE_EVERY_S = 1.0


@sim_app.command("serve")
def serve(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    time_scale: TimeScaleOpt = None,
    state: Annotated[Path | None, typer.Option(
        "--state", help="Keep the simulated world (vials and contents, temperatures, what "
        "the instruments hold) in this file: started from it when it exists, saved to it "
        "(atomically) every second and at exit, so the bench outlives a restart.")] = None,
) -> None:
    """Serve every enabled device of BENCH on its own pseudo-terminal (devices that share a
    `bus` share one). Prints one JSON line per device {"name", "kind", "endpoint"}, then
    serves until SIGINT/SIGTERM."""
    cfg = load_bench_config(config)
    from labctl.simulation import read_world_file, save_world_file

    saved = None
    if state is not None:
        try:
            saved = read_world_file(state)
        except ConfigError as exc:
            fail(str(exc), EXIT_INVALID)

    async def run() -> None:
        from labctl.simulation import simulation_spec, start_simulation

        clock = make_clock(time_scale if time_scale is not None else cfg.bench.time_scale)
        bench = await start_simulation(cfg, clock,
                                       state=(saved or {}).get("state") if saved else None)
        kinds = {d["name"]: d["kind"] for d in simulation_spec(cfg)["devices"]}
        for name, endpoint in bench.endpoints.items():
            print(json.dumps({"name": name, "kind": kinds[name], "endpoint": endpoint}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def keep() -> None:
            assert state is not None
            while True:
                try:
                    save_world_file(bench, state)
                except OSError as exc:  # keep serving; say why the file is stale
                    log.error("could not save the simulated world to %s: %s", state, exc)
                await asyncio.sleep(SAVE_EVERY_S)

        keeper = asyncio.create_task(keep()) if state is not None else None
        await stop.wait()
        if keeper is not None and state is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            save_world_file(bench, state)
        await bench.close()

    asyncio.run(run())
