"""`labctl inventory show|refill|set`: the bench's persisted reservoir and dispenser levels
(labctl.store.inventory). The store is safe to write while a bench runs in another process,
so an operator refills without stopping the agent."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from labctl.cli.common import (
    DEFAULT_CONFIG_PATH,
    EXIT_INVALID,
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    fail,
    load_bench_config,
)
from labctl.cli.root import app

inventory_app = typer.Typer(help="Reservoir and dispenser levels, refills and lots.",
                            no_args_is_help=True)
app.add_typer(inventory_app, name="inventory")

OperatorOpt = Annotated[str | None, typer.Option("--operator", help="Who does it (default: "
                                                 "the login name).")]
LotOpt = Annotated[str | None, typer.Option("--lot", help="Lot of the material put in.")]


def _stock(config: Path, data_dir: Path, as_json: bool) -> Any:
    from labctl.bench.stock import BenchStock

    cfg = load_bench_config(config, as_json=as_json)
    return BenchStock(cfg, data_dir)


def _print_levels(levels: list[dict[str, Any]]) -> None:
    print(f"{'holding':<14} {'material':<10} {'amount':>12}  {'lot':<16} refilled")
    for lv in levels:
        print(f"{lv['holding']:<14} {lv['material']:<10} {lv['amount']:>9.4g} {lv['unit']:<2}"
              f"  {lv['lot'] or '-':<16} {lv['lot_date'] or '-'}")


@inventory_app.command("show")
def inventory_show(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    data_dir: DataDirOpt = Path("runs"),
    as_json: JsonOpt = False,
) -> None:
    """What every reservoir and dispenser head holds now, its lot and refill date."""
    stock = _stock(config, data_dir, as_json)
    try:
        doc = stock.show()
    finally:
        stock.close()
    if as_json:
        print(json.dumps(doc))
    else:
        _print_levels(doc["levels"])


def _change(fn: Any, as_json: bool, stock: Any) -> None:
    from labctl.store.inventory import InventoryError

    try:
        lv = fn()
    except InventoryError as exc:
        fail(str(exc), EXIT_INVALID, as_json=as_json)
    finally:
        stock.close()
    if as_json:
        print(json.dumps({"ok": True, "level": lv.to_dict()}))
    else:
        _print_levels([lv.to_dict()])


@inventory_app.command("refill")
def inventory_refill(
    vessel: Annotated[str, typer.Argument(help="Reservoir (or dispenser device) refilled.")],
    amount: Annotated[str, typer.Argument(help="Amount added, e.g. '100 mL' or '10 g'.")],
    lot: LotOpt = None,
    operator: OperatorOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    data_dir: DataDirOpt = Path("runs"),
    as_json: JsonOpt = False,
) -> None:
    """Add AMOUNT of the vessel's material; the lot and today's date go into the record
    of every later run that draws on it."""
    stock = _stock(config, data_dir, as_json)
    who = operator or getpass.getuser()
    _change(lambda: stock.refill(vessel, amount, lot=lot, who=who), as_json, stock)


@inventory_app.command("set")
def inventory_set(
    vessel: Annotated[str, typer.Argument(help="Reservoir (or dispenser device).")],
    material: Annotated[str, typer.Argument(help="Material it holds.")],
    amount: Annotated[str, typer.Argument(help="What it holds now, e.g. '180 mL'.")],
    lot: LotOpt = None,
    operator: OperatorOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    data_dir: DataDirOpt = Path("runs"),
    as_json: JsonOpt = False,
) -> None:
    """Set what a vessel holds (after a count, a new bottle, a new material)."""
    stock = _stock(config, data_dir, as_json)
    who = operator or getpass.getuser()
    _change(lambda: stock.set(vessel, material, amount, lot=lot, who=who), as_json, stock)
