"""Actions of a syringe pump with a distribution valve (capability "syringe_pump"):
initialise, turn the valve, aspirate, dispense, and transfer in syringe-sized strokes.
Ports are named by number or by what `params.port_map` puts on them, through a routing
device (`@sel_valve`) when one sits on a port."""

from __future__ import annotations

import math

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
from labctl.actions.routes import addition, expected, reached, reservoir_material
from labctl.capabilities.syringe_pump import SyringePump


def _syringe_ports(dev: DeviceView) -> list[str]:
    n = dev.param("ports")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return [str(i) for i in range(1, n + 1)]
    return ["input", "output", "bypass", "extra"]


def _routing_devices(dev: DeviceView) -> dict[str, dict[str, str]]:
    """Routing devices (`@name`) on this device's ports: name -> their port maps."""
    out: dict[str, dict[str, str]] = {}
    for target in dev.port_map.values():
        if target.startswith("@"):
            other = dev.bench.devices.get(target[1:])
            pm = other.params.get("port_map") if other is not None else None
            out[target] = {str(k): str(v) for k, v in pm.items()} if isinstance(pm, dict) else {}
    return out


def _port_target(dev: DeviceView, target: str, arg: str
                 ) -> tuple[str | None, str | None, str | None, list[ArgIssue]]:
    """(port, what the port leads to, vessel expected through a route, issues)."""
    ports = _syringe_ports(dev)
    pm = dev.port_map
    if target in ports:
        return target, pm.get(target), None, []
    for port, lead in pm.items():
        if lead == target:
            return port, lead, None, []
    for route, rmap in _routing_devices(dev).items():
        if target in rmap.values():
            port = next(p for p, lead in pm.items() if lead == route)
            return port, route, target, []
    where = ", ".join(f"{p}→{lead}" for p, lead in pm.items()) or "none mapped"
    return None, None, None, [(arg, f"{target!r} is neither a port of {dev.name} "
                                    f"({', '.join(ports)}) nor a vessel it reaches ({where})")]


def _default_flow(dev: DeviceView) -> float:
    """Flow when a recipe gives none: the configured default, else a full stroke in ~4.3 s
    (the C3000's factory speed), never above max_flow."""
    flow = dev.param_q("default_flow", "L/s")
    if flow is None:
        vol = dev.param_q("syringe_volume", "L") or 0.005
        flow = vol / 4.3
    mx = dev.limit("max_flow", "L/s")
    return min(flow, mx) if mx else flow


class _SyringeAction(ActionSpec[SyringePump]):
    capability = "syringe_pump"

    def _flow_checks(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        flow = a.get("flow_l_s")
        if flow is None:
            return []
        return dev.over("flow", flow, dev.limit("max_flow", "L/s"), "L/s", "max_flow")

    def _barrel(self, dev: DeviceView) -> str:
        return f"#{dev.name}"

    def _stroke_s(self, dev: DeviceView, volume_l: float, flow: float | None) -> float:
        f = flow or _default_flow(dev)
        return volume_l / f if f > 0 else 0.0


class SyringeInitialize(_SyringeAction):
    name = "initialize"
    summary = "Home plunger and valve."

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 3.0

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        return [Effect("init", device=dev.name), Effect("route", device=dev.name, target=None)]

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Initialise {dev.name} (home plunger and valve)."

    async def run(self, device: SyringePump, a: Args, ctx: ActionContext) -> Result:
        await device.initialize()
        return {}


class SyringeValve(_SyringeAction):
    name = "valve"
    summary = "Turn the pump's valve to a port (or to the port of a vessel)."
    args = (Arg("port", "target", description="port name or a vessel on port_map"),)

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        port, lead, expect, issues = _port_target(dev, a["port"], "port")
        a["port_id"], a["leads_to"], a["expect"] = port, lead, expect
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 0.5

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        return [Effect("needs_init", device=dev.name),
                Effect("route", device=dev.name, target=a.get("leads_to"), arg="port")]

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Turn the valve of {dev.name} to port {a.get('port_id')} ({a.get('leads_to')})."

    async def run(self, device: SyringePump, a: Args, ctx: ActionContext) -> Result:
        await device.set_valve(a["port_id"])
        return {"port": a["port_id"]}


class SyringeAspirate(_SyringeAction):
    name = "aspirate"
    moves_material = True
    summary = "Draw a volume into the syringe (through `from`, else the current port)."
    args = (Q("volume", "L", "volume_l", positive=True),
            Arg("from", "target", key="source", required=False),
            Q("flow", "L/s", "flow_l_s", required=False, positive=True))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues = dev.over("volume", a["volume_l"],
                       dev.param_q("syringe_volume", "L"), "L", "syringe volume")
        issues += self._flow_checks(dev, a)
        a["source_port"] = a["leads_to"] = a["expect"] = None
        if a.get("source"):
            port, lead, expect, more = _port_target(dev, a["source"], "from")
            a["source_port"], a["leads_to"], a["expect"] = port, lead, expect
            issues += more
            a["material"] = reservoir_material(dev, expect or lead)
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return self._stroke_s(dev, a["volume_l"], a.get("flow_l_s")) + (
            0.5 if a.get("source_port") else 0.0)

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        out = [Effect("needs_init", device=dev.name)]
        if a.get("source_port"):
            out.append(Effect("route", device=dev.name, target=a.get("leads_to"), arg="from"))
        out.append(Effect("move", source=f"@{dev.name}", destination=self._barrel(dev),
                          amount=a["volume_l"], expect_source=a.get("expect"),
                          arg="from" if a.get("source") else "volume"))
        return out

    def describe(self, dev: DeviceView, a: Args) -> str:
        src = f" from {a['source']}" if a.get("source") else ""
        flow = f" at {fmt(a['flow_l_s'], 'L/s')}" if a.get("flow_l_s") else ""
        return f"Aspirate {fmt(a['volume_l'], 'L')}{src} into {dev.name}{flow}."

    async def run(self, device: SyringePump, a: Args, ctx: ActionContext) -> Result:
        if a.get("source_port"):
            await device.set_valve(a["source_port"])
        await device.aspirate(a["volume_l"], flow_l_s=a.get("flow_l_s"))
        return {"volume_l": a["volume_l"], "plunger_volume_l": await device.plunger_volume_l()}


class SyringeDispense(_SyringeAction):
    name = "dispense"
    moves_material = True
    summary = "Push a volume out of the syringe (through `to`, else the current port)."
    args = (Q("volume", "L", "volume_l", positive=True),
            Arg("to", "target", key="destination", required=False),
            Q("flow", "L/s", "flow_l_s", required=False, positive=True))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues = dev.over("volume", a["volume_l"],
                       dev.param_q("syringe_volume", "L"), "L", "syringe volume")
        issues += self._flow_checks(dev, a)
        a["destination_port"] = a["leads_to"] = a["expect"] = None
        if a.get("destination"):
            port, lead, expect, more = _port_target(dev, a["destination"], "to")
            a["destination_port"], a["leads_to"], a["expect"] = port, lead, expect
            issues += more
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return self._stroke_s(dev, a["volume_l"], a.get("flow_l_s")) + (
            0.5 if a.get("destination_port") else 0.0)

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        out = [Effect("needs_init", device=dev.name)]
        if a.get("destination_port"):
            out.append(Effect("route", device=dev.name, target=a.get("leads_to"), arg="to"))
        out.append(Effect("move", source=self._barrel(dev), destination=f"@{dev.name}",
                          amount=a["volume_l"], expect_destination=a.get("expect"),
                          arg="to" if a.get("destination") else "volume"))
        return out

    def describe(self, dev: DeviceView, a: Args) -> str:
        dst = f" to {a['destination']}" if a.get("destination") else ""
        flow = f" at {fmt(a['flow_l_s'], 'L/s')}" if a.get("flow_l_s") else ""
        return f"Dispense {fmt(a['volume_l'], 'L')} from {dev.name}{dst}{flow}."

    async def run(self, device: SyringePump, a: Args, ctx: ActionContext) -> Result:
        if a.get("destination_port"):
            await device.set_valve(a["destination_port"])
        where = await reached(ctx, a.get("leads_to")) if a.get("destination") else {}
        await device.dispense(a["volume_l"], flow_l_s=a.get("flow_l_s"))
        if a.get("destination"):
            ctx.record("addition", material=a.get("material"),
                       **addition(where, expected(a.get("expect"), a.get("leads_to"))),
                       requested=a["volume_l"], actual=a["volume_l"], unit="L")
        return {"volume_l": a["volume_l"], "plunger_volume_l": await device.plunger_volume_l()}


class SyringeTransfer(_SyringeAction):
    name = "transfer"
    moves_material = True
    summary = "Move a volume from one port/vessel to another, in syringe-sized strokes."
    args = (Q("volume", "L", "volume_l", positive=True),
            Arg("from", "target", key="source"),
            Arg("to", "target", key="destination"),
            Q("flow", "L/s", "flow_l_s", required=False, positive=True))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues = self._flow_checks(dev, a)
        sp, slead, sexp, more = _port_target(dev, a["source"], "from")
        dp, dlead, dexp, more2 = _port_target(dev, a["destination"], "to")
        issues += more + more2
        a.update(source_port=sp, source_leads_to=slead, source_expect=sexp,
                 destination_port=dp, destination_leads_to=dlead, destination_expect=dexp,
                 material=reservoir_material(dev, sexp or slead))
        if sp is not None and sp == dp:
            issues.append(("to", f"from and to are the same port ({sp}) of {dev.name}"))
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        syringe = dev.param_q("syringe_volume", "L") or a["volume_l"]
        strokes = max(1, math.ceil(a["volume_l"] / syringe - 1e-9)) if syringe > 0 else 1
        return 2 * self._stroke_s(dev, a["volume_l"], a.get("flow_l_s")) + strokes * 1.0

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        # the source route is read before, the destination route after: both ports are used
        return [
            Effect("needs_init", device=dev.name),
            Effect("route", device=dev.name, target=a.get("source_leads_to"), arg="from"),
            Effect("move", source=f"@{dev.name}", destination=None, amount=a["volume_l"],
                   expect_source=a.get("source_expect"), arg="from"),
            Effect("route", device=dev.name, target=a.get("destination_leads_to"), arg="to"),
            Effect("move", source=None, destination=f"@{dev.name}", amount=a["volume_l"],
                   expect_destination=a.get("destination_expect"), arg="to"),
        ]

    def describe(self, dev: DeviceView, a: Args) -> str:
        flow = f" at {fmt(a['flow_l_s'], 'L/s')}" if a.get("flow_l_s") else ""
        via = ""
        for key in ("source", "destination"):
            if a.get(f"{key}_expect"):
                via = f" (via {str(a.get(f'{key}_leads_to') or '').lstrip('@')})"
        return (f"Transfer {fmt(a['volume_l'], 'L')} from {a['source']} to "
                f"{a['destination']}{via} with {dev.name}{flow}.")

    async def run(self, device: SyringePump, a: Args, ctx: ActionContext) -> Result:
        where = await reached(ctx, a.get("destination_leads_to"))
        moved = await device.transfer(a["volume_l"], a["source_port"], a["destination_port"],
                                      flow_l_s=a.get("flow_l_s"))
        ctx.record("addition", material=a.get("material"),
                   **addition(where, expected(a.get("destination_expect"),
                                                    a.get("destination_leads_to"))),
                   requested=a["volume_l"], actual=moved, unit="L")
        return {"volume_l": moved}


ACTIONS = (SyringeInitialize, SyringeValve, SyringeAspirate, SyringeDispense, SyringeTransfer)
