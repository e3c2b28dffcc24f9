"""`stirrer.monitor`: stir for a duration and log the stirrer's own readings of the sol.

A sol-gel step is followed the way a bench chemist does it without a rheometer: the
stirrer's viscosity trend (IKA `IN_PV_5`, the motor torque's change since it started)
rises as the sol approaches its gel point. Every `interval` the medium temperature, the
speed and the trend go to the step's data file (BDF CSV, technique "viscometry"), from
which `labctl.analysis.solgel` computes the gel time; nothing is taken from a simulator.
"""

from __future__ import annotations

from typing import Any

from labctl.actions import (
    ActionContext,
    ActionSpec,
    ArgIssue,
    DeviceView,
    Q,
    _hold,
    _over,
    fmt,
)
from labctl.capabilities.potentiostat import DataPoint
from labctl.errors import DeviceFault


class StirrerMonitor(ActionSpec):
    capability = "stirrer"
    name = "monitor"
    records_data = True  # a data file an analysis can name
    summary = ("Stir at a speed for a duration, logging temperature and viscosity trend "
               "to the step's data file.")
    args = (Q("speed", "rpm", "speed_rpm", positive=True),
            Q("duration", "s", "duration_s", positive=True),
            Q("interval", "s", "interval_s", required=False, positive=True))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        issues = _over(dev, "speed", "speed", a["speed_rpm"], dev.limit("max_speed", "rpm"),
                       "rpm", "max_speed")
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

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return float(a["duration_s"]) + 1.0

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        on = f" ({dev.param('vessel')})" if dev.param("vessel") else ""
        return (f"Stir on {dev.name}{on} at {a['speed_rpm']:g} rpm for "
                f"{fmt(a['duration_s'], 's')}, logging temperature and viscosity trend every "
                f"{fmt(a['interval_s'], 's')}.")

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.set_speed(a["speed_rpm"])
        writer = ctx.data_writer("viscometry")
        t0 = ctx.clock.monotonic()
        elapsed, readings = 0.0, 0
        trend = temperature = None
        try:
            while True:
                temperature, speed = await self._read(device)
                before = ctx.clock.monotonic()
                trend = await self._trend(device)
                # the reading's time on the bench clock (the sol does not wait for the line)
                t = (before + ctx.clock.monotonic()) / 2 - t0
                writer.write(DataPoint(time_s=t, extra={
                    "Medium Temperature / degC": temperature,
                    "Stirring Speed / rpm": speed,
                    "Viscosity Trend / %": trend}))
                readings += 1
                elapsed = ctx.clock.monotonic() - t0
                left = a["duration_s"] - elapsed
                if left <= 1e-9:
                    break
                await _hold(ctx, min(a["interval_s"], left))
        finally:
            writer.close()
            await device.set_speed(0)
        held = elapsed
        ctx.record("mixing", speed_rpm=a["speed_rpm"], duration_s=held,
                   temperature_c=temperature, measured_c=temperature,
                   viscosity_trend_pct=trend, readings=readings)
        return {"duration_s": held, "temperature_c": temperature,
                "viscosity_trend_pct": trend, "readings": readings}

    async def _read(self, device: Any) -> tuple[float, float]:
        return float(await device.temperature_c()), float(await device.speed_rpm())

    async def _trend(self, device: Any) -> float:
        try:
            return float(await device.viscosity_trend_pct())
        except AttributeError:
            raise DeviceFault("the stirrer reports no viscosity trend",
                              device=getattr(device, "name", None)) from None
