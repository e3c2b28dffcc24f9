"""New Era NE-1000 syringe pump, device side (shared/protocols/newera-ne1000.md).

Basic framing (`[address]<command>[data]` CR, reply STX addr prompt data ETX) and safe
framing (STX len data CRC-16 ETX), recognised in either mode. Pumping runs on the
simulator clock and moves liquid in the world from `source` to `destination` (options);
a world fault (empty reservoir, overfull vial) stalls the motor (alarm `A?S`).

Options: `address` (0–99, else the bench address, else 0), `syringe_diameter` (mm, or a
string like "14.5 mm"), `source`, `destination` (vessels, or routes like "@sel_valve"),
`firmware` (the VER string, default `NE1000V3.928`), `power_up_alarm` (default true: the
first reply carries `A?R`), `faults` (see simulators.base.Faults; `error` may be a reply
error such as "?NA" answered instead of executing, or an alarm such as "A?S").

labctl choices where the page is silent: set commands that would change the pumping
geometry while pumping (DIA, DIR, VOL, CLD, PUR) answer `?NA`; RUN with no rate set answers
`?NA`; in safe mode only valid safe packets count as keep-alive; basic commands still work
and are answered in safe framing; an incomplete safe packet is dropped with `?COM` after
0.5 s of line silence; a line that is empty after stripping is ignored.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any, ClassVar

from simulators.base import Reply, Simulator
from simulators.world import WorldFault

STX = 0x02
ETX = 0x03
CR = 0x0D

#: rate units -> mL/min per unit
RATE_UNITS: dict[str, float] = {"UM": 1e-3, "MM": 1.0, "UH": 1e-3 / 60, "MH": 1 / 60}
#: volume units -> litres per unit
VOLUME_UNITS: dict[str, float] = {"UL": 1e-6, "ML": 1e-3}
MIN_SPEED_CM_MIN = 0.0001
MAX_SPEED_CM_MIN = 6.0
INCOMPLETE_PACKET_WALL_S = 0.5
TICK_WALL_S = 0.01
PUMPING = ("I", "W", "X")

_NUMBER = re.compile(r"^(\d*\.?\d*)([A-Z]*)$")


def crc16_xmodem(data: bytes) -> int:
    """CRC-CCITT, polynomial 0x1021, initial value 0 (the page's safe-mode checksum)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _decimals(value: float) -> int | None:
    """Digits after the point allowed for a value (4 digits in all, at most 3 after)."""
    if value < 0 or value >= 10000:
        return None
    int_digits = len(str(int(value)))
    return min(3, 4 - int_digits)


def truncate(value: float) -> float | None:
    """The value the pump keeps: truncated to its number format (None if too big)."""
    dec = _decimals(value)
    if dec is None:
        return None
    scale = 10**dec
    return math.floor(round(value * scale, 6)) / scale


def format_number(value: float) -> str:
    """`26.59`, `5.000`, `0.100`, `1234`: at most 4 digits, at most 3 decimals, truncated."""
    value = max(0.0, value)
    dec = _decimals(value)
    if dec is None:  # a counter beyond the display: show the integer part
        return str(int(value))
    scale = 10**dec
    t = math.floor(round(value * scale, 6)) / scale
    return f"{t:.{dec}f}"


def parse_diameter_mm(value: Any) -> float:
    """An option such as 14.5, "14.5", "14.5 mm" or "1.45 cm"."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    for suffix, factor in (("mm", 1.0), ("cm", 10.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


class _CommandError(Exception):
    """A reply error (`?`, `?NA`, `?OOR`...) for the data field."""


class NewEraSimulator(Simulator):
    kind: ClassVar[str] = "newera-ne1000"
    line: ClassVar[str] = "19200 8N1"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        opts = self.options
        addr = opts.get("address", self.address)
        self.pump_address = int(addr) if addr is not None and str(addr).isdigit() else 0
        self.firmware = str(opts.get("firmware", "NE1000V3.928"))
        self.source: str | None = opts.get("source")
        self.destination: str | None = opts.get("destination")
        self.diameter_mm = parse_diameter_mm(opts.get("syringe_diameter", 26.59))
        self.volume_units = "UL" if self.diameter_mm <= 14.0 else "ML"
        self.rate_value = 0.0
        self.rate_units = "MM"
        self.volume_value = 0.0  # target, in volume_units; 0 = until stopped
        self.direction = "INF"
        self.state = "S"
        self.infused_l = 0.0
        self.withdrawn_l = 0.0
        self.alarm: str | None = "R" if _truthy(opts.get("power_up_alarm", True)) else None
        self.safe_timeout_s = 0
        self.stall_reason: str | None = None
        self.commands_seen = 0
        self._remaining_l: float | None = None  # of the current run; None = until stopped
        self._stall_next = False
        self._last_advance = self.clock.monotonic()
        self._last_packet = self.clock.monotonic()
        self._buf = bytearray()
        self._reply: Reply | None = None
        self._incomplete: asyncio.TimerHandle | None = None
        self._pump_task: asyncio.Task[Any] | None = None
        self._watchdog_task: asyncio.Task[Any] | None = None

    # -- physics ------------------------------------------------------------------------
    @property
    def area_cm2(self) -> float:
        return math.pi * (self.diameter_mm / 10) ** 2 / 4

    def max_rate_ml_min(self) -> float:
        return MAX_SPEED_CM_MIN * self.area_cm2

    def min_rate_ml_min(self) -> float:
        return MIN_SPEED_CM_MIN * self.area_cm2

    def rate_l_s(self) -> float:
        if self.state == "X":
            return self.max_rate_ml_min() / 1000 / 60
        return self.rate_value * RATE_UNITS[self.rate_units] / 1000 / 60

    def _pumping_direction(self) -> str:
        if self.state == "I":
            return "INF"
        if self.state == "W":
            return "WDR"
        return self.direction

    def _advance(self) -> None:
        """Account for the liquid moved since the last look (called by the motion loop and
        before every command, so counters are current)."""
        now = self.clock.monotonic()
        dt, self._last_advance = now - self._last_advance, now
        if self.state not in PUMPING or dt <= 0:
            return
        dv = self.rate_l_s() * dt
        if self._remaining_l is not None:
            dv = min(dv, self._remaining_l)
        if dv > 0:
            if self._stall_next:
                self._stall_next = False
                self._stall("injected stall")
                return
            direction = self._pumping_direction()
            if self.world is not None and self.source and self.destination:
                src, dst = self.source, self.destination
                if direction == "WDR":
                    src, dst = dst, src
                try:
                    self.world.move_volume(src, dst, dv)
                except WorldFault as exc:
                    # the motor turns until the liquid runs out (or the vessel is full),
                    # whatever the clock's tick: move what fits, count it, then stall
                    part = self.world.movable_l(src, dst, dv)
                    if part > 0:
                        self.world.move_volume(src, dst, part)
                        if direction == "INF":
                            self.infused_l += part
                        else:
                            self.withdrawn_l += part
                    self._stall(str(exc))
                    return
            if direction == "INF":
                self.infused_l += dv
            else:
                self.withdrawn_l += dv
            if self._remaining_l is not None:
                self._remaining_l -= dv
        if self._remaining_l is not None and self._remaining_l <= 1e-15:
            self.state = "S"
            self._remaining_l = None

    def _stall(self, reason: str) -> None:
        self.state = "S"
        self._remaining_l = None
        self.alarm = "S"
        self.stall_reason = reason

    def _start_motion(self) -> None:
        if self.faults.take_stall():
            self._stall_next = True
        self._last_advance = self.clock.monotonic()
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = self.spawn(self._motion())

    async def _motion(self) -> None:
        while self.state in PUMPING:
            step = TICK_WALL_S * self.clock.time_scale
            rate = self.rate_l_s()
            if self._remaining_l is not None and rate > 0:
                step = min(step, max(self._remaining_l / rate, 1e-6))
            await self.clock.sleep(step)
            self._advance()

    # -- safe-mode watchdog ---------------------------------------------------------------
    def _kick_watchdog(self) -> None:
        self._last_packet = self.clock.monotonic()
        if self.safe_timeout_s > 0 and (
            self._watchdog_task is None or self._watchdog_task.done()
        ):
            self._watchdog_task = self.spawn(self._watchdog())

    async def _watchdog(self) -> None:
        while self.safe_timeout_s > 0:
            left = self._last_packet + self.safe_timeout_s - self.clock.monotonic()
            if left > 0:
                await self.clock.sleep(left)
                continue
            self._advance()
            if self.state != "S":
                self.state = "S"
                self._remaining_l = None
            self.alarm = "T"
            return  # re-armed by the next valid packet

    # -- bytes ----------------------------------------------------------------------------
    def feed(self, data: bytes, reply: Reply) -> None:
        self._reply = reply
        self._buf.extend(data)
        if self._incomplete is not None:
            self._incomplete.cancel()
            self._incomplete = None
        self._parse()

    def _parse(self) -> None:
        while self._buf:
            stx = self._buf.find(STX)
            cr = self._buf.find(CR)
            if stx >= 0 and (cr < 0 or stx < cr):
                if stx > 0:  # noise before a packet
                    del self._buf[:stx]
                if not self._parse_packet():
                    return
                continue
            if cr < 0:
                if len(self._buf) > 4096:
                    self._buf.clear()
                return
            line = bytes(self._buf[:cr])
            del self._buf[: cr + 1]
            self._handle(line, safe=False)

    def _parse_packet(self) -> bool:
        """Handle the safe packet at the start of the buffer; False while incomplete."""
        if len(self._buf) < 2:
            self._arm_incomplete()
            return False
        length = self._buf[1]
        if length < 4:
            self._drop_bad_packet()
            return True
        total = 1 + length
        if len(self._buf) < total:
            self._arm_incomplete()
            return False
        frame = bytes(self._buf[:total])
        if frame[-1] != ETX:
            self._drop_bad_packet()
            return True
        del self._buf[:total]
        data, crc = frame[2:-3], frame[-3:-1]
        if crc16_xmodem(data) != int.from_bytes(crc, "big"):
            self._answer_com()
            return True
        self._kick_watchdog()
        self._handle(data, safe=True)
        return True

    def _drop_bad_packet(self) -> None:
        etx = self._buf.find(ETX, 1)
        if etx >= 0:
            del self._buf[: etx + 1]
        else:
            self._buf.clear()
        self._answer_com()

    def _arm_incomplete(self) -> None:
        loop = asyncio.get_running_loop()
        self._incomplete = loop.call_later(INCOMPLETE_PACKET_WALL_S, self._incomplete_expired)

    def _incomplete_expired(self) -> None:
        self._incomplete = None
        if self._buf and self._buf[0] == STX:
            self._buf.clear()
            self._answer_com()

    def _answer_com(self) -> None:
        self._advance()
        self._respond("?COM")

    # -- commands -------------------------------------------------------------------------
    def _handle(self, raw: bytes, *, safe: bool) -> None:
        text = "".join(chr(b) for b in raw if 32 < b < 127).upper()
        if not text:
            return
        m = re.match(r"^(\*|\d+)?(.*)$", text)
        assert m is not None
        addr, body = m.group(1), m.group(2)
        broadcast = addr == "*"
        if addr is not None and not broadcast and int(addr) != self.pump_address:
            return
        self.commands_seen += 1
        self._advance()
        injected = self.faults.take_error()
        if injected is not None and str(injected).startswith("A?"):
            self.alarm = str(injected)[2:3] or "S"
            injected = None
        if injected is not None:
            data = str(injected)
        else:
            try:
                data = self._execute(body)
            except _CommandError as exc:
                data = str(exc)
        if not broadcast:
            self._respond(data)

    def _execute(self, body: str) -> str:
        if not body:
            return ""
        cmd, arg = body[:3], body[3:]
        handler = getattr(self, f"_cmd_{cmd.lower()}", None) if cmd.isalpha() else None
        if handler is None or len(cmd) < 3:
            raise _CommandError("?")
        result: str = handler(arg)
        return result

    def _require_stopped(self) -> None:
        if self.state in PUMPING:
            raise _CommandError("?NA")

    @staticmethod
    def _number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _CommandError("?OOR") from None
        t = truncate(value)
        if t is None:
            raise _CommandError("?OOR")
        return t

    def _cmd_dia(self, arg: str) -> str:
        if not arg:
            return format_number(self.diameter_mm)
        self._require_stopped()
        value = self._number(arg)
        if not 0.1 <= value <= 80.0:
            raise _CommandError("?OOR")
        self.diameter_mm = value
        self.volume_units = "UL" if value <= 14.0 else "ML"
        self.volume_value = 0.0
        self.rate_value = 0.0
        return ""

    def _rate_ok(self, value: float, units: str) -> bool:
        ml_min = value * RATE_UNITS[units]
        tol = 1e-9
        return self.min_rate_ml_min() * (1 - tol) <= ml_min <= self.max_rate_ml_min() * (1 + tol)

    def _cmd_rat(self, arg: str) -> str:
        if not arg:
            return format_number(self.rate_value) + self.rate_units
        m = _NUMBER.match(arg)
        if m is None or (m.group(2) and m.group(2) not in RATE_UNITS):
            raise _CommandError("?OOR")
        number, units = m.group(1), m.group(2) or self.rate_units
        if number in ("", "."):
            if not m.group(2):
                raise _CommandError("?OOR")
            value = self.rate_value
        else:
            value = self._number(number)
        if units != self.rate_units and self.state in PUMPING:
            raise _CommandError("?NA")
        if not self._rate_ok(value, units):
            raise _CommandError("?OOR")
        self._advance()
        self.rate_value, self.rate_units = value, units
        return ""

    def _cmd_vol(self, arg: str) -> str:
        if not arg:
            return format_number(self.volume_value) + self.volume_units
        if arg in VOLUME_UNITS:
            self._require_stopped()
            litres = self.volume_value * VOLUME_UNITS[self.volume_units]
            converted = truncate(litres / VOLUME_UNITS[arg])
            if converted is None:
                raise _CommandError("?OOR")
            self.volume_units, self.volume_value = arg, converted
            return ""
        m = _NUMBER.match(arg)
        if m is None or m.group(1) in ("", ".") or (m.group(2) and m.group(2) not in VOLUME_UNITS):
            raise _CommandError("?OOR")
        self._require_stopped()
        value = self._number(m.group(1))
        if m.group(2):
            self.volume_units = m.group(2)
        self.volume_value = value
        return ""

    def _cmd_dir(self, arg: str) -> str:
        if not arg:
            return self.direction
        if arg not in ("INF", "WDR", "REV"):
            raise _CommandError("?OOR")
        self._require_stopped()
        if arg == "REV":
            self.direction = "WDR" if self.direction == "INF" else "INF"
        else:
            self.direction = arg
        return ""

    def _cmd_run(self, arg: str) -> str:
        if self.state in PUMPING:
            return ""
        if self.rate_value <= 0:
            raise _CommandError("?NA")
        if self.state != "P":
            target = self.volume_value * VOLUME_UNITS[self.volume_units]
            self._remaining_l = target if target > 0 else None
        self.state = "I" if self.direction == "INF" else "W"
        self._start_motion()
        return ""

    def _cmd_pur(self, arg: str) -> str:
        self._require_stopped()
        self._remaining_l = None
        self.state = "X"
        self._start_motion()
        return ""

    def _cmd_stp(self, arg: str) -> str:
        if self.state in ("I", "W"):
            self.state = "P"
        else:
            self.state = "S"
            self._remaining_l = None
        return ""

    def _cmd_dis(self, arg: str) -> str:
        if arg:
            raise _CommandError("?OOR")
        per = VOLUME_UNITS[self.volume_units]
        return (
            f"I{format_number(self.infused_l / per)}W{format_number(self.withdrawn_l / per)}"
            f"{self.volume_units}"
        )

    def _cmd_cld(self, arg: str) -> str:
        if arg not in ("INF", "WDR"):
            raise _CommandError("?OOR")
        self._require_stopped()
        if arg == "INF":
            self.infused_l = 0.0
        else:
            self.withdrawn_l = 0.0
        return ""

    def _cmd_ver(self, arg: str) -> str:
        return self.firmware

    def _cmd_saf(self, arg: str) -> str:
        if not arg:
            return str(self.safe_timeout_s)
        if not arg.isdigit() or not 0 <= int(arg) <= 255:
            raise _CommandError("?OOR")
        self.safe_timeout_s = int(arg)
        if self.safe_timeout_s > 0:
            self._kick_watchdog()
        elif self._watchdog_task is not None:
            self._watchdog_task.cancel()
            self._watchdog_task = None
        return ""

    # -- replies --------------------------------------------------------------------------
    def _respond(self, data: str) -> None:
        if self._reply is None:
            return
        if self.alarm is not None:
            prompt, self.alarm = "A?" + self.alarm, None
        else:
            prompt = self.state
        body = f"{self.pump_address:02d}{prompt}{data}".encode("ascii")
        if self.safe_timeout_s > 0:
            crc = crc16_xmodem(body)
            frame = bytes([STX, len(body) + 4]) + body + crc.to_bytes(2, "big") + bytes([ETX])
        else:
            frame = bytes([STX]) + body + bytes([ETX])
        self.send(self._reply, frame)

    # -- views ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        self._advance()
        return {
            "state": self.state,
            "diameter_mm": self.diameter_mm,
            "rate": f"{format_number(self.rate_value)}{self.rate_units}",
            "volume": f"{format_number(self.volume_value)}{self.volume_units}",
            "direction": self.direction,
            "infused_l": self.infused_l,
            "withdrawn_l": self.withdrawn_l,
            "alarm": self.alarm,
            "safe_timeout_s": self.safe_timeout_s,
            "stall_reason": self.stall_reason,
        }

    def is_safe(self) -> bool:
        return self.state not in PUMPING


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)
