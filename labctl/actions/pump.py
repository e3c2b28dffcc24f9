"""Actions of a continuous pump (capability "pump": a peristaltic pump, a syringe pump
without a valve): pump a volume, or start and stop. It moves liquid from `params.source`
to `params.destination` (infuse) or back (withdraw)."""

from __future__ import annotations

from labctl.actions.args import Arg, Q
from labctl.actions.base import (
    ActionContext,
    ActionSpec,
    ArgIssue,
    Args,
    DeviceView,
    Effect,
    Result,
)
from labctl.actions.display import fmt
from labctl.actions.routes import addition, reached, reservoir_material
from labctl.capabilities.pump import Pump, PumpDirection


class _PumpAction(ActionSpec[Pump]):
    capability = "pump"

    def _ends(self, dev: DeviceView, direction: str) -> tuple[str | None, str | None]:
        src, dst = dev.param("source"), dev.param("destination")
        src = str(src) if src else None
        dst = str(dst) if dst else None
        return (src, dst) if direction == "infuse" else (dst, src)

    def _flow_checks(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        return dev.over("flow", a["flow_l_s"], dev.limit("max_flow", "L/s"),
                     "L/s", "max_flow")


class PumpTransfer(_PumpAction):
    name = "transfer"
    moves_material = True
    summary = "Pump a volume at a flow from the pump's source to its destination."
    args = (Q("volume", "L", "volume_l", positive=True),
            Q("flow", "L/s", "flow_l_s", positive=True),
            Arg("direction", "enum", choices=("infuse", "withdraw"), required=False,
                default="infuse"))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues = self._flow_checks(dev, a)
        issues += dev.over("volume", a["volume_l"],
                        dev.param_q("syringe_volume", "L"), "L", "syringe volume")
        src, dst = self._ends(dev, a["direction"])
        if src is None or dst is None:
            issues.append(("direction", f"{dev.name} has no configured source/destination "
                                        "(params.source, params.destination)"))
        a["source"], a["destination"] = src, dst
        a["material"] = reservoir_material(dev, src)
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return a["volume_l"] / a["flow_l_s"] + 1.0

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        if not a.get("source") or not a.get("destination"):
            return []
        return [Effect("move", source=a["source"], destination=a["destination"],
                       amount=a["volume_l"], arg="volume")]

    def describe(self, dev: DeviceView, a: Args) -> str:
        return (f"Pump {fmt(a['volume_l'], 'L')} from {a.get('source')} to "
                f"{a.get('destination')} with {dev.name} at {fmt(a['flow_l_s'], 'L/s')}.")

    async def run(self, device: Pump, a: Args, ctx: ActionContext) -> Result:
        where = await reached(ctx, a.get("destination"))
        moved = await device.pump_volume(a["volume_l"], a["flow_l_s"],
                                         PumpDirection(a["direction"]))
        after = await reached(ctx, a.get("destination")) if where.get("route") else None
        ctx.record("addition", material=a.get("material"), **addition(where, after=after),
                   requested=a["volume_l"], actual=moved, unit="L")
        return {"volume_l": moved}


class PumpStart(_PumpAction):
    name = "start"
    #: it infuses or withdraws until `stop`: re-run after a crash it would move more
    moves_material = True
    summary = "Start pumping continuously at a flow (until `stop`)."
    args = (Q("flow", "L/s", "flow_l_s", positive=True),
            Arg("direction", "enum", choices=("infuse", "withdraw"), required=False,
                default="infuse"))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        return self._flow_checks(dev, a)

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Start {dev.name} ({a['direction']}) at {fmt(a['flow_l_s'], 'L/s')}."

    async def run(self, device: Pump, a: Args, ctx: ActionContext) -> Result:
        await device.set_flow(a["flow_l_s"])
        await device.start(PumpDirection(a["direction"]))
        return {}


class PumpStop(_PumpAction):
    name = "stop"
    summary = "Stop the pump; reports the volume pumped since the start."

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Stop {dev.name}."

    async def run(self, device: Pump, a: Args, ctx: ActionContext) -> Result:
        await device.stop()
        return {"pumped_volume_l": await device.pumped_volume_l()}


ACTIONS = (PumpTransfer, PumpStart, PumpStop)
