"""IKA hotplate stirrer (RCT digital, C-MAG HS 7) speaking NAMUR commands.

Written from shared/protocols/ika-namur.md only. The device never speaks unless asked:
queries answer `<value> <channel>` CR LF, set/control commands and unknown commands answer
nothing. Both ` \\r\\n` (the manuals) and `\\r\\n` (other hosts) end a command.

Physics runs on the simulator's clock: the speed ramps at ~100 rpm/s, the plate follows
the setpoint (heater on) or ambient (heater off) as a first-order lag (120 s), the medium
follows the plate with a further 60 s lag. The world vessel on the plate (option `vessel`)
gets the medium temperature and the actual stirring speed.

Watchdog: `OUT_WD1@s` switches heater and motor off (error Er 2) when no command arrives
within s seconds; `OUT_WD2@s` drops the setpoints to the safe values (`OUT_SP_12@`,
`OUT_SP_42@`) instead. Both run on the simulator's clock.

Viscosity trend (IN_PV_5): the change of the motor's torque at constant speed, in % of the
value when the motor started (0 while it is off); the simulator reads the relative viscosity
of the vessel's sol (`simulators.solgel`) at motor start and now.

Options: `vessel`, `vessels`, `name_text` (IN_NAME answer), `type_text` (IN_TYPE, default the name),
`heats` (default true; false: a stirrer whose plate is not what heats the vessel, e.g. one
under a heated block: it stirs, and its medium probe reads the vessel's temperature),
`safety_temperature` (°C, IN_SP_3; default 350), `ambient_c`, `faults`.
Fault `error`: an int puts the device in error state Er n (heater and motor off, START
refused until RESET); a str/bytes answers the next query with that text instead.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from simulators import solgel
from simulators.base import Reply, Simulator
from simulators.world import AMBIENT_C, WorldFault

MAX_LINE = 80
MAX_TEMPERATURE_C = 310.0
MAX_SPEED_RPM = 1500.0
MIN_SPEED_RPM = 50.0
RAMP_RPM_S = 100.0
TAU_PLATE_S = 120.0
TAU_MEDIUM_S = 60.0
WD_MIN_S, WD_MAX_S = 20.0, 1500.0

_NUM = r"([-+]?\d+(?:\.\d*)?|[-+]?\.\d+)"
_OUT_SP = re.compile(rf"OUT_SP_(\d+) +{_NUM}")
_OUT_SAFE = re.compile(rf"OUT_SP_(12|42)@{_NUM}")
_OUT_WD = re.compile(rf"OUT_WD([12])@{_NUM}")
_IN = re.compile(r"IN_(PV|SP)_(\d+)")
_SWITCH = re.compile(r"(START|STOP)_(\d+)")
_STATUS = re.compile(r"STATUS_(\d+)")
_MODE = re.compile(r"SET_MODE_([ABD])")


class IkaHotplateSimulator(Simulator):
    """Device side of the IKA NAMUR protocol, with a heating and stirring model."""

    kind: ClassVar[str] = "ika-hotplate"
    line: ClassVar[str] = "9600 7E1"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        o = self.options
        self.vessel: str | None = o.get("vessel")
        listed = o.get("vessels")
        #: every world vessel on the plate (a vial block: all of them at one setpoint)
        self.vessels: list[str] = ([str(v) for v in listed] if isinstance(listed, list)
                                   and listed else [self.vessel] if self.vessel else [])
        if self.vessel is None and self.vessels:
            self.vessel = self.vessels[0]  # the probe's vial
        self.name_text: str = str(o.get("name_text", "RCT digital"))
        self.type_text: str = str(o.get("type_text", self.name_text))
        self.ambient_c = float(o.get("ambient_c", AMBIENT_C))
        self.safety_c = float(o.get("safety_temperature", 350.0))
        self.heats = bool(o.get("heats", True))
        self._eta_ref: float | None = None  # relative viscosity when the motor started
        start_c = self.ambient_c
        if self.world is not None and self.vessel:
            try:
                start_c = self.world.vessel(self.vessel).temperature_c
            except WorldFault:
                pass
        self.plate_c = start_c
        self.medium_c = start_c
        self.speed_rpm = 0.0
        self.temp_sp_c = 0.0
        self.speed_sp_rpm = 0.0
        self.heater_on = False
        self.motor_on = False
        self.mode = "A"
        self.error: int | None = None
        self.wd_mode = 0
        self.wd_period_s = 0.0
        self.wd_tripped = 0  # the watchdog mode that last tripped (0: none)
        self.safe_temp_c = 0.0
        self.safe_speed_rpm = 0.0
        self.commands = 0
        self._buf = bytearray()
        self._t = self.clock.monotonic()
        self._last_command = self._t

    # -- bytes --------------------------------------------------------------------------
    def feed(self, data: bytes, reply: Reply) -> None:
        # A 7-bit line: the eighth bit is parity, never data.
        self._buf.extend(b & 0x7F for b in data)
        while True:
            cut = [i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0]
            if not cut:
                break
            end = min(cut)
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if raw.strip():
                self._line(raw, reply)
        if len(self._buf) > 4 * MAX_LINE:  # a line that never ends is noise
            self._buf.clear()

    def _line(self, raw: bytes, reply: Reply) -> None:
        if len(raw) > MAX_LINE:
            return
        text = raw.decode("ascii", errors="replace").strip()
        self._advance()
        err = self.faults.error
        if isinstance(err, int) and not isinstance(err, bool):
            self._trip(self.faults.take_error())
        answer = self._execute(text)
        if answer is None:
            return
        if isinstance(self.faults.error, (str, bytes)):
            err = self.faults.take_error()
            answer = err.decode("ascii", "replace") if isinstance(err, bytes) else err
        self.send(reply, answer.encode("ascii", errors="replace") + b"\r\n")

    def _execute(self, text: str) -> str | None:
        """Act on one command; the answer text (without CR LF) or None for silence."""
        handled = True
        answer: str | None = None
        if text == "IN_NAME":
            answer = self.name_text
        elif text == "IN_TYPE":
            answer = self.type_text
        elif text == "RESET":
            self.heater_on = self.motor_on = False
            self.error = None
            self.wd_mode = 0
            self.mode = "A"
        elif m := _IN.fullmatch(text):
            answer = self._query(m.group(1), int(m.group(2)))
            handled = answer is not None
        elif m := _OUT_SP.fullmatch(text):
            handled = self._set_point(int(m.group(1)), float(m.group(2)))
        elif m := _OUT_SAFE.fullmatch(text):
            value = float(m.group(2))
            if m.group(1) == "12":
                self.safe_temp_c = value
            else:
                self.safe_speed_rpm = value
            answer = m.group(2)
        elif m := _OUT_WD.fullmatch(text):
            self._watchdog(int(m.group(1)), float(m.group(2)))
        elif m := _SWITCH.fullmatch(text):
            handled = self._switch(m.group(1) == "START", int(m.group(2)))
        elif m := _STATUS.fullmatch(text):
            n = int(m.group(1))
            on = (n == 1 and self.heater_on) or (n == 4 and self.motor_on)
            answer = f"{11 if on else 12} {n}"
        elif m := _MODE.fullmatch(text):
            self.mode = m.group(1)
        else:
            handled = False
        if handled:
            self.commands += 1
            self._last_command = self.clock.monotonic()
        return answer

    def _query(self, kind: str, n: int) -> str | None:
        if kind == "PV":
            values = {
                1: f"{self.medium_c:.1f}",
                2: f"{self.plate_c:.1f}",
                3: f"{self.plate_c:.1f}",
                4: f"{self.speed_rpm:.0f}",
                5: f"{self._viscosity_trend():.1f}",
                7: f"{self.medium_c:.1f}",
            }
        else:
            values = {
                1: f"{self.temp_sp_c:.1f}",
                3: f"{self.safety_c:.1f}",
                4: f"{self.speed_sp_rpm:.0f}",
            }
        value = values.get(n)
        return None if value is None else f"{value} {n}"

    def _set_point(self, n: int, value: float) -> bool:
        if n == 1:
            if 0 <= value <= min(MAX_TEMPERATURE_C, self.safety_c - 10):
                self.temp_sp_c = value
            return True  # out of range: ignored, as the device keeps its setpoint
        if n == 4:
            if 0 <= value <= MAX_SPEED_RPM:
                self.speed_sp_rpm = 0.0 if value == 0 else max(MIN_SPEED_RPM, round(value))
            return True
        return False

    def _switch(self, on: bool, n: int) -> bool:
        if n not in (1, 4):
            return False
        if on and self.error is not None:
            return True  # refused until RESET
        if n == 1:
            self.heater_on = on
        else:
            if on and not self.motor_on:
                self._eta_ref = self._viscosity()
            self.motor_on = on
        return True

    def _watchdog(self, mode: int, seconds: float) -> None:
        if mode == 2 and seconds == 0:
            self.wd_mode = 0
            return
        if WD_MIN_S <= seconds <= WD_MAX_S:
            self.wd_mode = mode
            self.wd_period_s = seconds

    def _trip(self, code: int) -> None:
        self.error = code
        self.heater_on = False
        self.motor_on = False

    def _viscosity(self) -> float | None:
        if self.world is None or not self.vessel:
            return None
        try:
            return solgel.relative_viscosity(self.world.vessel(self.vessel).gel_progress)
        except WorldFault:
            return None

    def _viscosity_trend(self) -> float:
        """Torque change since the motor started, % (the stirrer's viscosity trend)."""
        if not self.motor_on or self._eta_ref is None:
            return 0.0
        eta = self._viscosity()
        return 0.0 if eta is None else 100.0 * (eta / self._eta_ref - 1.0)

    # -- physics ------------------------------------------------------------------------
    def _advance(self) -> None:
        """Bring physics and the watchdog up to the clock's now (exact for constant inputs)."""
        now = self.clock.monotonic()
        if self.wd_mode and now - self._last_command > self.wd_period_s:
            trip_at = self._last_command + self.wd_period_s
            if trip_at > self._t:
                self._integrate(trip_at - self._t)
                self._t = trip_at
            self.wd_tripped = self.wd_mode
            if self.wd_mode == 1:
                self._trip(2)
                self.wd_mode = 0
            else:
                self.temp_sp_c = self.safe_temp_c
                self.speed_sp_rpm = self.safe_speed_rpm
                self._last_command = now
        dt = now - self._t
        if dt > 0:
            self._integrate(dt)
            self._t = now
        self._update_world()

    def _integrate(self, dt: float) -> None:
        target_rpm = self.speed_sp_rpm if self.motor_on else 0.0
        step = RAMP_RPM_S * dt
        if abs(target_rpm - self.speed_rpm) <= step:
            self.speed_rpm = target_rpm
        else:
            self.speed_rpm += math.copysign(step, target_rpm - self.speed_rpm)
        u = self.temp_sp_c if self.heater_on else self.ambient_c
        a = self.plate_c - u
        y0 = self.medium_c - u
        e1 = math.exp(-dt / TAU_PLATE_S)
        e2 = math.exp(-dt / TAU_MEDIUM_S)
        c = a * TAU_PLATE_S / (TAU_PLATE_S - TAU_MEDIUM_S)
        self.plate_c = u + a * e1
        self.medium_c = u + c * e1 + (y0 - c) * e2

    def _update_world(self) -> None:
        if self.world is None or not self.vessel:
            return
        if not self.heats:  # the probe reads the medium another device heats
            try:
                self.medium_c = self.world.vessel(self.vessel).temperature_c
            except WorldFault:
                pass
        for name in self.vessels:
            try:
                if self.heats:
                    self.world.set_temperature(name, self.medium_c)
                self.world.set_stirring(name, self.speed_rpm)
            except WorldFault:
                pass

    async def start(self) -> None:
        self.spawn(self._tick())

    async def _tick(self) -> None:
        # ~50 updates per wall second, but never finer than 0.5 simulated seconds
        step = max(0.5, 0.02 * self.clock.time_scale)
        while True:
            await self.clock.sleep(step)
            self._advance()

    # -- views --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        self._advance()
        return {
            "heater_on": self.heater_on,
            "motor_on": self.motor_on,
            "temperature_setpoint_c": self.temp_sp_c,
            "speed_setpoint_rpm": self.speed_sp_rpm,
            "plate_c": self.plate_c,
            "medium_c": self.medium_c,
            "speed_rpm": self.speed_rpm,
            "error": self.error,
            "watchdog_mode": self.wd_mode,
            "watchdog_s": self.wd_period_s,
            "watchdog_tripped": self.wd_tripped,
            "safe_temperature_c": self.safe_temp_c,
            "safe_speed_rpm": self.safe_speed_rpm,
            "mode": self.mode,
            "commands": self.commands,
        }

    def is_safe(self) -> bool:
        return not self.heater_on and not self.motor_on

