"""The root `labctl` typer application and its global options. Sub-command modules add
their commands to `app` here; labctl.cli.app imports them all, so nothing imports back up."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from labctl._version import __version__


def _flags_without_type() -> None:
    """Typer's rich help shows a flag as `--json <bool>`, as if it took a value; a flag (and
    a counter like -v) takes none, so its type column stays empty."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_type()

app = typer.Typer(
    name="labctl",
    help=(
        "Control middleware for autonomous battery-materials labs.\n\n"
        "Runs JSON recipes on a bench of instruments (real, or simulated with `config/sim.toml`,"
        " the default), records every run with full provenance, and serves AI clients over MQTT."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"labctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="-v info, -vv debug (every byte on the wire).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
