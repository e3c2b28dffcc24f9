"""Actions of a temperature controller (capability "temperature_controller"): set a
setpoint, hold it for a time as a guaranteed soak, switch off."""

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
from labctl.actions.holds import TemperatureLog, hold, watch_temperature
from labctl.capabilities.temperature_controller import TemperatureController


class TcSetTemperature(ActionSpec[TemperatureController]):
    capability = "temperature_controller"
    name = "set_temperature"
    summary = "Set the setpoint and run the controller."
    args = (Q("temperature", "degC", "temperature_c"),)

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        return temperature_checks(dev, "temperature", a["temperature_c"])

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Set {dev.name} to {a['temperature_c']:g} °C."

    async def run(self, device: TemperatureController, a: Args, ctx: ActionContext) -> Result:
        await device.set_temperature(a["temperature_c"])
        return {}


#: a hold whose temperature, once reached, strays further than this has failed
DEFAULT_SOAK_BAND_C = 5.0


class TcHold(ActionSpec[TemperatureController]):
    capability = "temperature_controller"
    name = "hold"
    summary = "Set the setpoint and hold it for a duration (one segment of a schedule)."
    args = (Q("temperature", "degC", "temperature_c"),
            Q("duration", "s", "duration_s", nonneg=True),
            Q("band", "delta_degC", "band_c", required=False, positive=True))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        return temperature_checks(dev, "temperature", a["temperature_c"])

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return a["duration_s"]

    def describe(self, dev: DeviceView, a: Args) -> str:
        on = f" ({dev.param('vessel')})" if dev.param("vessel") else ""
        return f"Hold {dev.name}{on} at {a['temperature_c']:g} °C for {fmt(a['duration_s'], 's')}."

    async def run(self, device: TemperatureController, a: Args, ctx: ActionContext) -> Result:
        await device.set_temperature(a["temperature_c"])
        band = a.get("band_c") or DEFAULT_SOAK_BAND_C
        temps = TemperatureLog(device, ctx)
        held = await hold(ctx, a["duration_s"], temps.watch(
            watch_temperature(device, a["temperature_c"], band)))
        reading = await device.temperature_c()
        ctx.record("heating", temperature_c=a["temperature_c"], setpoint_c=a["temperature_c"],
                   duration_s=held, measured_c=reading, vessel=getattr(
                       getattr(device, "spec", None), "params", {}).get("vessel"),
                   **{k: v for k, v in temps.summary().items() if k != "measured_c"},
                   measured_mean_c=temps.summary()["measured_c"])
        return {"duration_s": held, "temperature_c": reading}


class TcOff(ActionSpec[TemperatureController]):
    capability = "temperature_controller"
    name = "off"
    summary = "Stop control (heater off)."

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Switch {dev.name} off."

    async def run(self, device: TemperatureController, a: Args, ctx: ActionContext) -> Result:
        await device.set_temperature(None)
        return {}


ACTIONS = (TcSetTemperature, TcHold, TcOff)
