"""The `labctl` command: the root application (labctl.cli.root) with every sub-command
module imported, each of which adds its commands to it."""

from __future__ import annotations

from labctl.cli import (
    devices,
    finales_cmd,
    inventory_cmds,
    recipe_cmds,
    run_cmds,
    samples_cmds,
    serve_cmd,
    sim,
    tui_cmd,
)
from labctl.cli.root import app

#: the modules whose commands `app` holds (imported for that)
COMMAND_MODULES = (devices, finales_cmd, inventory_cmds, recipe_cmds, run_cmds, samples_cmds,
                   serve_cmd, sim, tui_cmd)


def main() -> None:
    app()


__all__ = ["COMMAND_MODULES", "app", "main"]
