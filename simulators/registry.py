"""Simulator kinds (the names of the `python -m simulators KIND` contract) and where they
live. Third-party simulators register in the `labctl.simulators` entry-point group."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from labctl.registry import installed_entry_points

if TYPE_CHECKING:
    from simulators.base import Simulator

BUILTIN_KINDS: dict[str, str] = {
    "tricontinent-c3000": "simulators.tricontinent:TriContinentSimulator",
    "newera-ne1000": "simulators.newera:NewEraSimulator",
    "vici-valve": "simulators.vici:ViciValveSimulator",
    "ika-hotplate": "simulators.ika:IkaHotplateSimulator",
    "mettler-balance": "simulators.mt_sics:MettlerBalanceSimulator",
    "quantos-dispenser": "simulators.mt_sics:QuantosSimulator",
    "modbus-pump": "simulators.modbus_devices:ModbusPumpSimulator",
    "omega-cn7500": "simulators.modbus_devices:OmegaCN7500Simulator",
    "palmsens-emstat": "simulators.palmsens:EmStatSimulator",
}


def kinds() -> dict[str, str]:
    found = dict(BUILTIN_KINDS)
    for ep in installed_entry_points("labctl.simulators"):
        found.setdefault(ep.name, ep.value)
    return found


def simulator_class(kind: str) -> type[Simulator]:
    table = kinds()
    if kind not in table:
        raise KeyError(f"unknown simulator kind {kind!r}; known: {', '.join(sorted(table))}")
    module, _, attr = table[kind].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise KeyError(f"simulator kind {kind!r} is not available ({exc})") from exc
    cls: type[Simulator] = getattr(mod, attr)
    return cls
