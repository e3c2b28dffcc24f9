"""Actions of a stirring hotplate (capability "stirrer"): stir for a time (optionally
heated, watched and with its measured temperatures recorded), set and leave running, off,
and monitor a sol (stir while logging the stirrer's own viscosity trend)."""

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
from labctl.bdf import MEDIUM_TEMPERATURE, STIR_SPEED, VISCOSITY_TREND
from labctl.capabilities.potentiostat import DataPoint
from labctl.capabilities.stirrer import Stirrer
from labctl.errors import DeviceFault


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


def _on(dev: DeviceView) -> str:
    """What the stirrer works on, for descriptions: its vessel, or its vial block's."""
    block = dev.param("vessels")
    if isinstance(block, list) and block:
        return f" (vial block: {', '.join(str(v) for v in block)})"
    return f" ({dev.param('vessel')})" if dev.param("vessel") else ""


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
        return (f"Stir on {dev.name}{_on(dev)} at {a['speed_rpm']:g} rpm{t} for "
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
        sharing = ctx.shared_with()
        if sharing:  # a vial block other runs' samples still stir in: the last one stops it
            ctx.record("left_running", shared_with=sharing,
                       speed_rpm=a["speed_rpm"])
        else:
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
        sharing = ctx.shared_with()
        if sharing:  # a vial block other runs still use: the last of them switches it off
            ctx.record("left_running", shared_with=sharing)
            return {"left_running_for": sharing}
        await device.set_temperature(None)
        await device.set_speed(0)
        return {}


class StirrerMonitor(ActionSpec[Stirrer]):
    """A sol-gel step followed the way a bench chemist does it without a rheometer: the
    stirrer's viscosity trend (IKA `IN_PV_5`, the motor torque's change since it started)
    rises as the sol approaches its gel point. Every `interval` the medium temperature, the
    speed and the trend go to the step's data file (BDF CSV, technique "viscometry"), from
    which the `sol_gel` analysis computes the gel time; nothing is taken from a simulator."""

    capability = "stirrer"
    name = "monitor"
    records_data = True  # a data file an analysis can name
    summary = ("Stir at a speed for a duration, logging temperature and viscosity trend "
               "to the step's data file.")
    args = (Q("speed", "rpm", "speed_rpm", positive=True),
            Q("duration", "s", "duration_s", positive=True),
            Q("interval", "s", "interval_s", required=False, positive=True))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues = dev.over("speed", a["speed_rpm"], dev.limit("max_speed", "rpm"), "rpm",
                          "max_speed")
        interval = a.get("interval_s") or a["duration_s"] / 30.0
        if interval > a["duration_s"] / 3.0:
            issues.append(("interval", f"{fmt(interval, 's')} leaves fewer than 3 readings "
                                       f"in {fmt(a['duration_s'], 's')}"))
        a["interval_s"] = interval
        try:
            from labctl.registry import driver_class

            cls = driver_class(dev.config.driver)
        except Exception:  # reported by the config check
            return issues
        if not callable(getattr(cls, "viscosity_trend_pct", None)):
            issues.append(("speed", f"{dev.name} ({dev.config.driver}) reports no viscosity "
                                    "trend"))
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return float(a["duration_s"]) + 1.0

    def describe(self, dev: DeviceView, a: Args) -> str:
        on = _on(dev)
        interval = a.get("interval_s") or a["duration_s"] / 30.0
        return (f"Stir on {dev.name}{on} at {a['speed_rpm']:g} rpm for "
                f"{fmt(a['duration_s'], 's')}, logging temperature and viscosity trend every "
                f"{fmt(interval, 's')}.")

    async def run(self, device: Stirrer, a: Args, ctx: ActionContext) -> Result:
        interval = a.get("interval_s") or a["duration_s"] / 30.0
        await device.set_speed(a["speed_rpm"])
        writer = ctx.data_writer("viscometry")
        t0 = ctx.clock.monotonic()
        elapsed, readings = 0.0, 0
        trend = temperature = None
        try:
            while True:
                temperature = float(await device.temperature_c())
                speed = float(await device.speed_rpm())
                before = ctx.clock.monotonic()
                trend = await _trend(device)
                # the reading's time on the bench clock (the sol does not wait for the line)
                t = (before + ctx.clock.monotonic()) / 2 - t0
                writer.write(DataPoint(time_s=t, extra={
                    MEDIUM_TEMPERATURE: temperature, STIR_SPEED: speed,
                    VISCOSITY_TREND: trend}))
                readings += 1
                elapsed = ctx.clock.monotonic() - t0
                left = a["duration_s"] - elapsed
                if left <= 1e-9:
                    break
                await hold(ctx, min(interval, left))
        finally:
            writer.close()
            await device.set_speed(0)
        ctx.record("mixing", speed_rpm=a["speed_rpm"], duration_s=elapsed,
                   temperature_c=temperature, measured_c=temperature,
                   viscosity_trend_pct=trend, readings=readings)
        return {"duration_s": elapsed, "temperature_c": temperature,
                "viscosity_trend_pct": trend, "readings": readings}


async def _trend(device: Stirrer) -> float:
    """The stirrer's viscosity trend, a fault when this stirrer reports none."""
    read = getattr(device, "viscosity_trend_pct", None)
    if read is None:
        raise DeviceFault("the stirrer reports no viscosity trend", device=device.name)
    return float(await read())


ACTIONS = (StirrerStir, StirrerSet, StirrerOff, StirrerMonitor)
