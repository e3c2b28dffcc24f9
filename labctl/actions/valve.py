"""Actions of a multiposition selector valve (capability "valve"): move to a position or
to the vessel on it, and home. A valve routes: where it stands decides where `@valve` goes."""

from __future__ import annotations

from labctl.actions.args import Arg
from labctl.actions.base import (
    ActionContext,
    ActionSpec,
    ArgIssue,
    Args,
    DeviceView,
    Effect,
    Result,
)
from labctl.capabilities.valve import Valve


def _valve_positions(dev: DeviceView) -> int:
    n = dev.param("positions")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 6


class ValveMove(ActionSpec[Valve]):
    capability = "valve"
    name = "move"
    summary = "Move to a position (a number, or the vessel on it)."
    args = (Arg("position", "position"),)

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        pos = a["position"]
        n = _valve_positions(dev)
        if isinstance(pos, str):
            for p, vessel in dev.port_map.items():
                if vessel == pos:
                    a["position"], a["vessel"] = int(p), vessel
                    return []
            known = ", ".join(f"{p}→{v}" for p, v in dev.port_map.items()) or "none"
            return [("position", f"no position of {dev.name} leads to {pos!r} ({known})")]
        if not 1 <= pos <= n:
            return [("position", f"position {pos} does not exist on {dev.name} (1…{n})")]
        a["vessel"] = dev.port_map.get(str(pos))
        return []

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 0.25 * _valve_positions(dev) / 2

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        return [Effect("route", device=dev.name, target=a.get("vessel"), arg="position")]

    def describe(self, dev: DeviceView, a: Args) -> str:
        to = f" ({a['vessel']})" if a.get("vessel") else ""
        return f"Move {dev.name} to position {a['position']}{to}."

    async def run(self, device: Valve, a: Args, ctx: ActionContext) -> Result:
        await device.move(int(a["position"]))
        return {"position": int(a["position"])}


class ValveHome(ActionSpec[Valve]):
    capability = "valve"
    name = "home"
    summary = "Home the valve (position 1)."

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 0.25 * _valve_positions(dev)

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        return [Effect("route", device=dev.name, target=dev.port_map.get("1"))]

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Home {dev.name}."

    async def run(self, device: Valve, a: Args, ctx: ActionContext) -> Result:
        await device.home()
        return {"position": await device.position()}


ACTIONS = (ValveMove, ValveHome)
