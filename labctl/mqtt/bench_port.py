"""The agent's bench: a started `Bench` served through labctl.bench.local.LocalService
(the bench-service protocol plus what the agent needs besides)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from labctl.bench import Bench
from labctl.bench.local import LocalService, resolve_recipe_ref
from labctl.config import BenchConfig

#: the name the agent's adapter had before LocalService served every front end
BenchServicePort = LocalService


@contextlib.asynccontextmanager
async def open_bench_port(cfg: BenchConfig, *, data_dir: str | Path,
                          time_scale: float | None = None,
                          bench_id: str | None = None) -> AsyncIterator[LocalService]:
    """Start the bench (instruments, simulators on a simulated bench), yield its service,
    close it (safe state) on the way out."""
    recipes_dir = Path(cfg.bench.recipes_dir)
    if not recipes_dir.is_absolute() and cfg.path:
        # relative to the working directory, like every other path of the config
        recipes_dir = Path.cwd() / recipes_dir
    # the agent acknowledged its queued submits: after a crash they run (labctl.bench)
    bench = Bench(cfg, data_dir=data_dir, time_scale=time_scale, requeue_unstarted=True)
    if bench_id:
        bench.bench_id = bench_id
    await bench.start()
    try:
        yield LocalService(bench, recipes_dir)
    finally:
        await bench.close()


__all__ = ["BenchServicePort", "LocalService", "open_bench_port", "resolve_recipe_ref"]
