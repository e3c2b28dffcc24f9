"""Holding for a time on the run's clock while watching the device that does the work
(a stirrer, a heater): shared by the stirrer and temperature-controller actions and open
to plugins (a climate chamber holds the same way)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from labctl.actions.base import ActionContext
from labctl.device import DeviceStatus
from labctl.errors import DeviceFault

Watch = Callable[[], Awaitable[None]]

#: how often (simulated seconds, at least one slice) a hold asks its device how it is doing
WATCH_EVERY_S = 10.0


class Watched(Protocol):
    """A device a hold can ask how it is doing."""

    name: str

    async def status(self) -> DeviceStatus: ...


class Thermometer(Watched, Protocol):
    """A device that reads a temperature (a hotplate's probe, a heater's sensor)."""

    async def temperature_c(self) -> float: ...


async def hold(ctx: ActionContext, duration_s: float, watch: Watch | None = None) -> float:
    """Hold for `duration_s` on the context's clock in short slices, honouring pause and
    abort between slices; returns the time held (paused time not counted). `watch` is
    called every WATCH_EVERY_S and raises when the device stopped doing what the hold
    relies on (a hotplate tripped, a heater failed): a hold must not record mixing or
    heating that did not happen."""
    held = 0.0
    since_watch = 0.0
    slice_s = max(0.05, 0.2 * ctx.clock.time_scale)
    while duration_s - held > 1e-9:
        step = min(slice_s, duration_s - held)
        await ctx.clock.sleep(step)
        held += step
        since_watch += step
        await ctx.checkpoint()
        if watch is not None and since_watch >= WATCH_EVERY_S:
            since_watch = 0.0
            await watch()
    if watch is not None:
        await watch()
    return held


def watch_status(device: Watched) -> Watch:
    """A watch that fails when the device reports a fault."""

    async def watch() -> None:
        st = await device.status()
        if str(st.state) == "fault":
            raise DeviceFault(st.fault or "the device reports a fault", device=device.name,
                              code="fault", vendor_text=st.fault)

    return watch


def watch_temperature(device: Thermometer, setpoint_c: float, band_c: float) -> Watch:
    """A guaranteed-soak watch: once the temperature is within ±band of the setpoint, leaving
    the band (a failed heater, a lost probe) is a fault; a device fault is one at once."""
    reached = False
    status_watch = watch_status(device)

    async def watch() -> None:
        nonlocal reached
        await status_watch()
        t = await device.temperature_c()
        inside = abs(t - setpoint_c) <= band_c
        if inside:
            reached = True
        elif reached:
            raise DeviceFault(
                f"temperature {t:.1f} °C left the ±{band_c:g} °C band around the setpoint "
                f"{setpoint_c:g} °C during the hold (heater failure?)",
                device=device.name, code="soak_band",
            )

    return watch


class TemperatureLog:
    """Measured temperatures of a device during a hold, for the record: a sample at the
    start, at every watch and at the end. A reading that fails is noted, not fatal (a
    hotplate without a probe still mixes)."""

    def __init__(self, device: Thermometer, ctx: ActionContext):
        self.device = device
        self.clock = ctx.clock
        self.t0 = ctx.clock.monotonic()
        self.samples: list[dict[str, float]] = []
        self.error: str | None = None

    async def sample(self) -> float | None:
        try:
            value = float(await self.device.temperature_c())
        except DeviceFault:
            raise
        except Exception as exc:  # noted in the record
            self.error = f"temperature unreadable: {exc}"
            return None
        self.samples.append({"t_s": round(self.clock.monotonic() - self.t0, 3),
                             "measured_c": value})
        return value

    def watch(self, inner: Watch | None) -> Watch:
        async def watch() -> None:
            if inner is not None:
                await inner()
            await self.sample()

        return watch

    def summary(self) -> dict[str, Any]:
        """The record's fields: mean, min and max measured, the samples, any error."""
        values = [x["measured_c"] for x in self.samples]
        out: dict[str, Any] = {"measured_c": None, "temperatures": self.samples}
        if values:
            out.update(measured_c=sum(values) / len(values), measured_min_c=min(values),
                       measured_max_c=max(values))
        if self.error:
            out["temperature_error"] = self.error
        return out


__all__ = ["WATCH_EVERY_S", "TemperatureLog", "Thermometer", "Watch", "Watched", "hold",
           "watch_status", "watch_temperature"]

