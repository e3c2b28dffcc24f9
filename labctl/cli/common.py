"""Options and helpers shared by the sub-commands (exit codes of the public contract)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from labctl.errors import ConfigError

if TYPE_CHECKING:
    from labctl.config import BenchConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_ABORTED = 3

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", help="Bench configuration (TOML).", show_default=True),
]
# Same path as labctl.config.DEFAULT_CONFIG (a test checks), spelled here so that building the
# command line does not import labctl.config (pydantic, pint: see load_bench_config).
DEFAULT_CONFIG_PATH = Path("config/sim.toml")
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
def _check_time_scale(value: float | None) -> float | None:
    """A time scale is a finite number above 0 (the clock divides by it)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number greater than 0, got {value}")
    return value


TimeScaleOpt = Annotated[
    float | None,
    typer.Option("--time-scale", help="Simulated benches: simulated seconds per wall second "
                 "(overrides the config).", callback=_check_time_scale),
]
DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="Where run records live.")]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option("--concurrency", min=1, max=64,
                 help="Runs at once (overrides the config's [bench] concurrency)."),
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="Recipe parameter NAME=VALUE (repeatable)."),
]


def fail(
    message: str, code: int = EXIT_INVALID, *, as_json: bool = False, **extra: Any
) -> NoReturn:
    if as_json:
        print(json.dumps({"ok": False, "error": message, **extra}))
    else:
        print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def load_bench_config(path: Path, *, as_json: bool = False) -> BenchConfig:
    # Imported here, not at the top: labctl.config pulls pydantic and pint (with numpy),
    # 0.5 s that `labctl --help` and `labctl runs list` never need (bench/startup.py).
    from labctl.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_INVALID, as_json=as_json, file=exc.file,
             problems=[{"key": k, "message": m} for k, m in exc.problems])
