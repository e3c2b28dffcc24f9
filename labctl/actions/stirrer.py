"""Actions of a stirring hotplate (capability "stirrer"): stir for a time (optionally
heated, watched and with its measured temperatures recorded), set and leave running, off."""

from __future__ import annotations

from labctl.actions.args import Q
from labctl.actions.base import (
    ActionContext,
    ActionSpec,
    ArgIssue,
    Args,
    DeviceView,
    Result,
    temperature_checks,
)
from labctl.actions.display import fmt
from labctl.actions.holds import TemperatureLog, hold, watch_status
from labctl.capabilities.stirrer import Stirrer


async def _stirrer_setpoint(device: Stirrer, given: float | None) -> float | None:
    """The heater setpoint in force: the one this step sets, else the device's own (a
    `set` step before), None when the heater is off."""
    if given is not None:
        return given
    try:
        readings = (await device.status()).readings
    except Exception:  # the setpoint is then unknown, not invented
        return None
    if readings.get("heater_on") is False:
        return None
    sp = readings.get("temperature_setpoint_c")
    return float(sp) if isinstance(sp, (int, float)) else None


class StirrerStir(ActionSpec[Stirrer]):
    capability = "stirrer"
    name = "stir"
    summary = "Stir at a speed (optionally heated) for a duration, then stop."
    args = (Q("speed", "rpm", "speed_rpm", positive=True),
            Q("duration", "s", "duration_s", nonneg=True),
            Q("temperature", "degC", "temperature_c", required=False))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues = dev.over("speed", a["speed_rpm"], dev.limit("max_speed", "rpm"),
                       "rpm", "max_speed")
        return issues + temperature_checks(dev, "temperature", a.get("temperature_c"))

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return a["duration_s"] + 1.0

    def describe(self, dev: DeviceView, a: Args) -> str:
        t = f" at {a['temperature_c']:g} °C" if a.get("temperature_c") is not None else ""
        on = f" ({dev.param('vessel')})" if dev.param("vessel") else ""
        return (f"Stir on {dev.name}{on} at {a['speed_rpm']:g} rpm{t} for "
                f"{fmt(a['duration_s'], 's')}.")

    async def run(self, device: Stirrer, a: Args, ctx: ActionContext) -> Result:
        t = a.get("temperature_c")
        if t is not None:
            await device.set_temperature(t)
        await device.set_speed(a["speed_rpm"])
        setpoint = await _stirrer_setpoint(device, t)
        temps = TemperatureLog(device, ctx)
        await temps.sample()
        held = await hold(ctx, a["duration_s"], temps.watch(watch_status(device)))
        await device.set_speed(0)
        if t is not None:
            await device.set_temperature(None)
        measured = temps.summary()
        ctx.record("mixing", speed_rpm=a["speed_rpm"], duration_s=held,
                   temperature_c=measured["measured_c"], setpoint_c=setpoint, **{
                       k: v for k, v in measured.items() if k != "measured_c"},
                   measured_c=measured["measured_c"])
        return {"duration_s": held, "setpoint_c": setpoint,
                "temperature_c": measured["measured_c"]}


class StirrerSet(ActionSpec[Stirrer]):
    capability = "stirrer"
    name = "set"
    summary = "Set speed and/or temperature and leave them running."
    args = (Q("speed", "rpm", "speed_rpm", required=False, nonneg=True),
            Q("temperature", "degC", "temperature_c", required=False))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        if a.get("speed_rpm") is None and a.get("temperature_c") is None:
            return [("speed", "give speed, temperature or both")]
        issues: list[ArgIssue] = []
        if a.get("speed_rpm") is not None:
            issues += dev.over("speed", a["speed_rpm"],
                            dev.limit("max_speed", "rpm"), "rpm", "max_speed")
        return issues + temperature_checks(dev, "temperature", a.get("temperature_c"))

    def describe(self, dev: DeviceView, a: Args) -> str:
        parts = []
        if a.get("speed_rpm") is not None:
            parts.append(f"speed {a['speed_rpm']:g} rpm")
        if a.get("temperature_c") is not None:
            parts.append(f"temperature {a['temperature_c']:g} °C")
        return f"Set {dev.name}: {', '.join(parts)}."

    async def run(self, device: Stirrer, a: Args, ctx: ActionContext) -> Result:
        if a.get("temperature_c") is not None:
            await device.set_temperature(a["temperature_c"])
        if a.get("speed_rpm") is not None:
            await device.set_speed(a["speed_rpm"])
        return {}


class StirrerOff(ActionSpec[Stirrer]):
    capability = "stirrer"
    name = "off"
    summary = "Heater and motor off."

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Switch {dev.name} off (heater and motor)."

    async def run(self, device: Stirrer, a: Args, ctx: ActionContext) -> Result:
        await device.set_temperature(None)
        await device.set_speed(0)
        return {}


ACTIONS = (StirrerStir, StirrerSet, StirrerOff)
