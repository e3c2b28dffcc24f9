"""IKA hotplate stirrers (RCT digital, C-MAG HS 7, RET control) over NAMUR commands.

Written from shared/protocols/ika-namur.md. Commands end with ` \\r\\n` (as in the
manuals); queries answer `<value> <channel>` CR LF. Set and control commands answer
nothing, so a setpoint that matters is verified by reading it back (`IN_SP_x`).

Safety: with the `watchdog` parameter (e.g. "60 s") the driver arms watchdog mode 1
(`OUT_WD1@s`) at connect and keeps it fed with a query every period/4, so a host that
crashes or loses the line leaves a hotplate that switches heater and motor off by itself.
The watchdog counts the device's (bench-clock) seconds but the keep-alive crosses a real
line from a real event loop: the host needs KEEPALIVE_WALL_BUDGET_S of wall time between
beats. On a simulated bench run so fast that the configured watchdog is shorter than that,
the driver arms a longer one (up to the protocol's 1500 s); beyond 1500 s / budget (3000x)
no watchdog can be fed reliably and the simulated hotplate runs without one (logged, and
in the run's provenance). A real bench runs at scale 1: its watchdog is always as configured.

NAMUR has no serial-number command: `identify()` reports the name and type only, plus the
serial number from the config (`params.serial`) when the bench declares one.

Parameters: `watchdog` (duration; absent = no watchdog), `sensor` ("medium" or "plate":
which temperature `temperature_c()` reports; default medium), `reset_on_connect` (default
true: RESET clears a previous watchdog error so START commands are obeyed), `serial`.
Limits: `max_temperature`, `max_speed` (checked, with the protocol ranges 0–310 °C and
0–1500 rpm and the device's safety temperature − 10 K, before anything is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from typing import Any, ClassVar

from labctl.capabilities.stirrer import Stirrer
from labctl.device import DeviceInfo, DeviceState, DeviceStatus
from labctl.errors import DeviceError, DeviceFault, DeviceTimeout, ProtocolError
from labctl.transport import SerialSettings
from labctl.units import to

log = logging.getLogger("labctl.drivers.ika")

EOL = b" \r\n"
MAX_TEMPERATURE_C = 310.0
MAX_SPEED_RPM = 1500.0
MIN_SPEED_RPM = 50.0
WATCHDOG_RANGE_S = (20.0, 1500.0)
#: least wall time a watchdog must give the host (event-loop hiccups: journal fsyncs,
#: analyses, a loaded shared machine; 0.5 s tripped idle hotplates at 200-1000x under load)
KEEPALIVE_WALL_BUDGET_S = 2.0
HEATER, MOTOR = 1, 4

_VALUE = re.compile(r"(?:^|\s)([-+]?\d+(?:\.\d*)?) (\d+)$")


class IkaHotplate(Stirrer):
    """Stirrer hotplate on the NAMUR protocol, with watchdog keep-alive."""

    default_serial: ClassVar[SerialSettings] = SerialSettings(
        baudrate=9600, bytesize=7, parity="E", stopbits=1
    )
    protocol: ClassVar[str] = "IKA NAMUR"

    @classmethod
    def config_problems(cls, name: str, address: Any, params: dict[str, Any],
                        limits: dict[str, Any]) -> list[tuple[str, str]]:
        """The temperature sensor, and limits within what the device can do."""
        out: list[tuple[str, str]] = []
        if str(params.get("sensor", "medium")) not in ("medium", "plate"):
            out.append((f"devices.{name}.params.sensor",
                        f"must be 'medium' or 'plate', got {params.get('sensor')!r}"))
        return out

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.spec.params
        wd = p.get("watchdog")
        self.watchdog_s: float | None = None
        #: why the armed watchdog differs from the configured one (fast simulated bench)
        self.watchdog_note: str | None = None
        if wd not in (None, "", 0):
            self.watchdog_s = float(wd) if isinstance(wd, (int, float)) else to(wd, "s")
        self.sensor: str = str(p.get("sensor", "medium"))
        if self.sensor not in ("medium", "plate"):
            raise ValueError(f"{self.name}: sensor must be 'medium' or 'plate'")
        self.reset_on_connect = bool(p.get("reset_on_connect", True))
        self.max_temperature_c = min(
            MAX_TEMPERATURE_C, self.limit("max_temperature", "degC", MAX_TEMPERATURE_C) or 0.0
        )
        self.max_speed_rpm = min(
            MAX_SPEED_RPM, self.limit("max_speed", "rpm", MAX_SPEED_RPM) or 0.0
        )
        self.safety_temperature_c: float | None = None
        self._keepalive: asyncio.Task[None] | None = None
        #: what this host switched on, to notice the device switching it off (watchdog, error)
        self._want = {HEATER: False, MOTOR: False}
        self.timeout = self.spec.timeout_s

    # -- wire -----------------------------------------------------------------------------
    async def _send(self, command: str) -> None:
        """A set/control command: no reply comes back."""
        link = self.open_link()
        async with link.lock:
            link.reset_input()
            await link.write(command.encode("ascii") + EOL)

    async def _ask(self, command: str, *, retries: int = 1) -> str:
        """A query: one line back. Silence and garbled lines are retried (queries are
        harmless to repeat)."""
        link = self.open_link()
        last: DeviceError | None = None
        for _ in range(retries + 1):
            try:
                async with link.lock:
                    link.reset_input()
                    await link.write(command.encode("ascii") + EOL)
                    raw = await link.read_until(b"\r\n", self.timeout)
                return raw[:-2].decode("ascii", errors="replace").strip()
            except DeviceTimeout as exc:
                last = exc
        assert last is not None
        raise last

    async def _read_value(self, command: str) -> float:
        """`IN_PV_n` / `IN_SP_n`: the value of `<value> <n>`, channel checked."""
        channel = command.rsplit("_", 1)[1]
        last: str = ""
        for _ in range(2):
            text = await self._ask(command)
            m = _VALUE.search(text)
            if m and m.group(2) == channel:
                return float(m.group(1))
            last = text
            log.debug("%s: unexpected reply %r to %s", self.name, text, command)
        raise ProtocolError(f"reply {last!r} to {command} is not '<value> {channel}'",
                            device=self.name)

    async def _is_on(self, function: int) -> bool:
        """STATUS_n: `11 n` on, `12 n` off."""
        text = await self._ask(f"STATUS_{function}")
        m = _VALUE.search(text)
        if not m or m.group(2) != str(function) or m.group(1) not in ("11", "12"):
            raise ProtocolError(f"reply {text!r} to STATUS_{function}", device=self.name)
        return m.group(1) == "11"

    # -- life cycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        link = self.open_link()
        await link.open()
        if self.reset_on_connect:
            await self._send("RESET")
            self._want = {HEATER: False, MOTOR: False}
        self.safety_temperature_c = await self._read_value("IN_SP_3")
        if self.watchdog_s is not None:
            armed = self._watchdog_at_scale(self.watchdog_s)
            if armed is None:
                self.watchdog_s = None
            else:
                await self.arm_watchdog(armed)

    def _watchdog_at_scale(self, seconds: float) -> float | None:
        """The watchdog to arm at this bench clock's time scale: the configured one unless
        it leaves the keep-alive under KEEPALIVE_WALL_BUDGET_S of wall time; then a longer
        one within the protocol's range, or None when even its maximum is too short."""
        if self.clock.to_wall(seconds) >= KEEPALIVE_WALL_BUDGET_S:
            return seconds
        needed = float(math.ceil(KEEPALIVE_WALL_BUDGET_S * self.clock.time_scale))
        if needed <= WATCHDOG_RANGE_S[1]:
            self.watchdog_note = (f"watchdog {seconds:g} s is {self.clock.to_wall(seconds):.3g} "
                                  f"wall s at time scale {self.clock.time_scale:g}: "
                                  f"armed {needed:g} s instead")
            log.warning("%s: %s", self.name, self.watchdog_note)
            return max(needed, WATCHDOG_RANGE_S[0])
        self.watchdog_note = (
            f"watchdog not armed: at time scale {self.clock.time_scale:g} even its maximum "
            f"{WATCHDOG_RANGE_S[1]:g} s is {self.clock.to_wall(WATCHDOG_RANGE_S[1]):.3g} wall s, "
            f"under the {KEEPALIVE_WALL_BUDGET_S:g} s a keep-alive needs")
        log.warning("%s: %s", self.name, self.watchdog_note)
        return None

    def describe(self) -> dict[str, Any]:
        """Provenance, with the watchdog actually armed (it can differ on a fast simulated
        bench)."""
        return {**super().describe(), "watchdog_armed_s": self.watchdog_s,
                "watchdog_note": self.watchdog_note}

    async def arm_watchdog(self, seconds: float) -> None:
        """Watchdog mode 1 (heater and motor off when the host falls silent) and the
        keep-alive task that feeds it."""
        self.check_range("watchdog", seconds, *WATCHDOG_RANGE_S, "s")
        await self._send(f"OUT_WD1@{round(seconds)}")
        self.watchdog_s = float(round(seconds))
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.ensure_future(self._keep_alive())

    async def _keep_alive(self) -> None:
        assert self.watchdog_s is not None
        period = self.watchdog_s / 4
        while True:
            await self.clock.sleep(period)
            try:
                await self._ask("IN_PV_4")
            except DeviceError as exc:  # keep trying: a missed beat is not yet a trip
                log.warning("%s: watchdog keep-alive failed: %s", self.name, exc)

    async def close(self) -> None:
        """Stop feeding the watchdog (an armed hotplate then switches itself off)."""
        task, self._keepalive = self._keepalive, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def identify(self) -> DeviceInfo:
        name = await self._ask("IN_NAME")
        kind = await self._ask("IN_TYPE")
        model = name if kind in ("", name) else f"{name} ({kind})"
        self.info = DeviceInfo(model=model, serial=str(self.spec.params.get("serial", "")),
                               firmware="", vendor="IKA")
        return self.info

    # -- setpoints and switches -----------------------------------------------------------
    def _temperature_ceiling(self) -> float:
        ceiling = self.max_temperature_c
        if self.safety_temperature_c is not None:
            ceiling = min(ceiling, self.safety_temperature_c - 10)
        return ceiling

    async def set_temperature_setpoint(self, temperature_c: float) -> None:
        """OUT_SP_1, verified with IN_SP_1 (a set command gets no reply)."""
        self.check_range("temperature", temperature_c, 0.0, self._temperature_ceiling(), "degC")
        await self._send(f"OUT_SP_1 {temperature_c:.1f}")
        got = await self._read_value("IN_SP_1")
        if abs(got - round(temperature_c, 1)) > 0.051:
            raise DeviceFault(f"temperature setpoint {temperature_c:.1f} °C not accepted "
                              f"(device reports {got:.1f} °C)", device=self.name)

    async def set_speed_setpoint(self, speed_rpm: float) -> None:
        """OUT_SP_4, verified with IN_SP_4. Speeds below 50 rpm (not 0) become 50."""
        self.check_range("speed", speed_rpm, 0.0, self.max_speed_rpm, "rpm")
        value = round(speed_rpm)
        if 0 < value < MIN_SPEED_RPM:
            log.info("%s: %d rpm is raised to %d rpm by the device", self.name, value,
                     MIN_SPEED_RPM)
        await self._send(f"OUT_SP_4 {value}")
        expected = 0 if value == 0 else max(MIN_SPEED_RPM, value)
        got = await self._read_value("IN_SP_4")
        if abs(got - expected) > 0.5:
            raise DeviceFault(f"speed setpoint {value} rpm not accepted "
                              f"(device reports {got:g} rpm)", device=self.name)

    async def _start(self, function: int) -> None:
        await self._send(f"START_{function}")
        self._want[function] = True
        if not await self._is_on(function):
            what = "heater" if function == HEATER else "motor"
            raise DeviceFault(f"the {what} did not start (device in an error state, e.g. "
                              "after a watchdog trip; reset() clears it)", device=self.name)

    async def _stop(self, function: int) -> None:
        self._want[function] = False
        await self._send(f"STOP_{function}")

    async def start_heater(self) -> None:
        await self._start(HEATER)

    async def stop_heater(self) -> None:
        await self._stop(HEATER)

    async def start_motor(self) -> None:
        await self._start(MOTOR)

    async def stop_motor(self) -> None:
        await self._stop(MOTOR)

    async def reset(self) -> None:
        """RESET: everything off, error cleared; the watchdog is re-armed if configured."""
        self._want = {HEATER: False, MOTOR: False}
        await self._send("RESET")
        if self.watchdog_s is not None:
            await self.arm_watchdog(self.watchdog_s)

    async def set_temperature(self, temperature_c: float | None) -> None:
        if temperature_c is None:
            await self.stop_heater()
            return
        await self.set_temperature_setpoint(temperature_c)
        await self.start_heater()

    async def set_speed(self, speed_rpm: float) -> None:
        if speed_rpm == 0:
            await self.stop_motor()
            return
        await self.set_speed_setpoint(speed_rpm)
        await self.start_motor()

    # -- readings -------------------------------------------------------------------------
    async def medium_temperature_c(self) -> float:
        """IN_PV_1: the external (medium) sensor."""
        return await self._read_value("IN_PV_1")

    async def plate_temperature_c(self) -> float:
        """IN_PV_2: the hot plate."""
        return await self._read_value("IN_PV_2")

    async def speed_rpm(self) -> float:
        """IN_PV_4: actual speed."""
        return await self._read_value("IN_PV_4")

    async def temperature_c(self) -> float:
        if self.sensor == "plate":
            return await self.plate_temperature_c()
        return await self.medium_temperature_c()

    async def temperature_setpoint_c(self) -> float:
        return await self._read_value("IN_SP_1")

    async def speed_setpoint_rpm(self) -> float:
        return await self._read_value("IN_SP_4")

    async def status(self) -> DeviceStatus:
        heater = await self._is_on(HEATER)
        motor = await self._is_on(MOTOR)
        readings: dict[str, Any] = {
            "medium_temperature_c": await self.medium_temperature_c(),
            "plate_temperature_c": await self.plate_temperature_c(),
            "speed_rpm": await self.speed_rpm(),
            "temperature_setpoint_c": await self.temperature_setpoint_c(),
            "speed_setpoint_rpm": await self.speed_setpoint_rpm(),
            "heater_on": heater,
            "motor_on": motor,
        }
        lost = [what for fn, what, on in ((HEATER, "heater", heater), (MOTOR, "motor", motor))
                if self._want[fn] and not on]
        if lost:
            return DeviceStatus(DeviceState.FAULT, readings,
                                fault=f"{' and '.join(lost)} switched off by the device "
                                      "(watchdog or error); reset() clears it")
        state = DeviceState.BUSY if heater or motor else DeviceState.IDLE
        return DeviceStatus(state, readings)

    async def safe_state(self) -> None:
        """Heater off, motor off; checked with STATUS, RESET if either is still on."""
        await self._stop(HEATER)
        await self._stop(MOTOR)
        try:
            still_on = await self._is_on(HEATER) or await self._is_on(MOTOR)
        except ProtocolError:
            still_on = True
        if still_on:
            await self._send("RESET")
            if self.watchdog_s is not None:
                await self._send(f"OUT_WD1@{round(self.watchdog_s)}")
