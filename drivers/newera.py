"""New Era NE-1000 / NE-500 syringe pump driver (shared/protocols/newera-ne1000.md).

Basic mode by default; with `params.safe_mode = "<timeout>"` (1–255 s) the driver switches
the pump to safe mode (STX len data CRC-16/XModem ETX) and keeps it alive from a
background task, so a crashed host leaves a stopped pump (alarm `A?T`).

Every session starts with a safe-framed `SAF` packet: the pump recognises safe packets in
either mode and answers in the framing of the mode just set, so the driver never has to
guess the pump's mode; the reply also carries (and clears) the power-up alarm `A?R`.

Params: `syringe_diameter` ("14.5 mm"), `syringe_volume` ("10 mL"), `source`,
`destination` (vessels, for provenance), `safe_mode`. Limits: `max_flow`.
Address: spec.address (0–99, default 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from typing import Any, ClassVar

from labctl.capabilities.pump import Pump, PumpDirection
from labctl.clock import Clock
from labctl.device import DeviceInfo, DeviceSpec, DeviceState, DeviceStatus
from labctl.errors import (
    ConfigError,
    DeviceBusy,
    DeviceFault,
    DeviceTimeout,
    LimitError,
    ProtocolError,
)
from labctl.transport import LinkPool, SerialSettings
from labctl.units import to

log = logging.getLogger("labctl.drivers.newera")

STX = b"\x02"
ETX = b"\x03"

#: rate units: litres per second per unit
RATE_UNITS: dict[str, float] = {"UH": 1e-6 / 3600, "UM": 1e-6 / 60, "MH": 1e-3 / 3600,
                                "MM": 1e-3 / 60}
VOLUME_UNITS: dict[str, float] = {"UL": 1e-6, "ML": 1e-3}
MIN_SPEED_M_S = 0.0001e-2 / 60  # 0.0001 cm/min
MAX_SPEED_M_S = 6.0e-2 / 60  # 6 cm/min

PROMPTS: dict[str, str] = {
    "I": "infusing", "W": "withdrawing", "S": "stopped", "P": "paused",
    "T": "timed pause", "U": "waiting for trigger", "X": "purging",
}
ALARMS: dict[str, str] = {
    "R": "pump was reset (power interrupted)",
    "S": "motor stalled",
    "T": "safe-mode communication timeout",
    "E": "program error",
    "O": "program phase out of range",
}
MOVING = ("I", "W", "X")
#: prompts of a pump that would still pump on its own: moving, paused, in a timed pause or
#: waiting for a trigger of its program
NOT_STOPPED = (*MOVING, "P", "T", "U")

_REPLY = re.compile(r"^(\d{2})(A\?.|[IWSPTUX])(.*)$", re.S)
_VERSION = re.compile(r"^([A-Z]+)(\d+)V(\d+\.\d+)(X\d+)?")


def crc16_xmodem(data: bytes) -> int:
    """CRC-CCITT (polynomial 0x1021, initial 0) over the packet's data bytes."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def safe_packet(data: bytes) -> bytes:
    """STX, length (itself + data + CRC + ETX), data, CRC high, CRC low, ETX."""
    return STX + bytes([len(data) + 4]) + data + crc16_xmodem(data).to_bytes(2, "big") + ETX


def pump_number(value: float) -> str | None:
    """The pump's number format (≤4 digits, ≤3 decimals), truncated; None if too big."""
    if value < 0 or value >= 10000:
        return None
    dec = min(3, 4 - len(str(int(value))))
    scale = 10**dec
    t = math.floor(round(value * scale, 6)) / scale
    return f"{t:.{dec}f}"


def best_units(value_si: float, units: dict[str, float]) -> tuple[str, str] | None:
    """(number, units) that keep the most of `value_si` within the 4-digit format."""
    best: tuple[float, str, str] | None = None
    for name, per in units.items():
        text = pump_number(value_si / per)
        if text is None or float(text) <= 0:
            continue
        err = abs(value_si - float(text) * per) / value_si
        if best is None or err < best[0] - 1e-12:
            best = (err, text, name)
    return None if best is None else (best[1], best[2])


class NewEraPump(Pump):
    """NE-1000 in basic or safe mode. `pause()` is a single STP (resume with `resume()`)."""

    default_serial: ClassVar[SerialSettings] = SerialSettings(baudrate=19200)
    protocol: ClassVar[str] = "New Era NE-1000 RS-232 (basic/safe mode)"

    @classmethod
    def config_problems(cls, name: str, address: Any, params: dict[str, Any],
                        limits: dict[str, Any]) -> list[tuple[str, str]]:
        """Address 0..99 and the safe-mode timeout (1-255 s)."""
        base = f"devices.{name}"
        out: list[tuple[str, str]] = []
        addr = 0 if address is None else address
        if isinstance(addr, bool) or not str(addr).isdigit() or not 0 <= int(addr) <= 99:
            out.append((f"{base}.address", f"address must be 0-99, got {address!r}"))
        raw = params.get("safe_mode")
        if raw not in (None, False, 0, "0", "", "off"):
            try:
                seconds = raw if isinstance(raw, (int, float)) else to(raw, "s")
                ok = math.isfinite(float(seconds)) and 1 <= round(float(seconds)) <= 255
            except (ValueError, TypeError):
                ok = False
            if not ok:
                out.append((f"{base}.params.safe_mode", f"must be 1-255 s, got {raw!r}"))
        return out

    def __init__(
        self, spec: DeviceSpec, *, links: LinkPool | None = None, clock: Clock | None = None
    ):
        super().__init__(spec, links=links, clock=clock)
        addr = 0 if spec.address is None else spec.address
        if not str(addr).isdigit() or not 0 <= int(addr) <= 99:
            raise ConfigError(f"address must be 0–99, got {addr!r}", key=f"devices.{self.name}")
        self.address = int(addr)
        p = spec.params
        self.diameter_mm = to(p["syringe_diameter"], "mm") if "syringe_diameter" in p else None
        self._syringe_l = to(p["syringe_volume"], "L") if "syringe_volume" in p else None
        self.safe_timeout_s = self._safe_timeout(p.get("safe_mode"))
        self.safe = False  # framing currently in use
        self.alarm: str | None = None  # latched alarm code from the last replies
        self.last_prompt = "S"
        self._rate_units: str | None = None
        self._last_io = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._resumed = asyncio.Event()  # cleared by pause(): a pending RUN waits for it
        self._resumed.set()
        self._stops = 0

    def _safe_timeout(self, raw: Any) -> int:
        if raw in (None, False, 0, "0", "", "off"):
            return 0
        seconds = raw if isinstance(raw, (int, float)) else to(raw, "s")
        n = round(float(seconds))
        if not 1 <= n <= 255:
            raise ConfigError(f"safe_mode must be 1–255 s, got {raw!r}",
                              key=f"devices.{self.name}.params.safe_mode")
        return n

    # -- limits ---------------------------------------------------------------------------
    @property
    def _area_m2(self) -> float | None:
        if self.diameter_mm is None:
            return None
        return math.pi * (self.diameter_mm * 1e-3) ** 2 / 4

    @property
    def max_flow_l_s(self) -> float:
        hi = math.inf
        if self._area_m2 is not None:
            hi = MAX_SPEED_M_S * self._area_m2 * 1000
        cfg = self.limit("max_flow", "L/s")
        if cfg is not None:
            hi = min(hi, cfg)
        return hi

    @property
    def min_flow_l_s(self) -> float:
        return 0.0 if self._area_m2 is None else MIN_SPEED_M_S * self._area_m2 * 1000

    @property
    def syringe_volume_l(self) -> float | None:
        return self._syringe_l

    def _check_flow(self, flow_l_s: float) -> None:
        hi = self.max_flow_l_s
        self.check_range("flow", flow_l_s, self.min_flow_l_s or 0.0, None if hi == math.inf
                         else hi, "L/s")
        if flow_l_s <= 0:
            raise LimitError("flow must be positive", device=self.name, parameter="flow",
                             value=flow_l_s, limit=0.0)

    def _check_volume(self, volume_l: float) -> None:
        self.check_range("volume", volume_l, 0.0, self._syringe_l, "L")
        if volume_l <= 0:
            raise LimitError("volume must be positive", device=self.name, parameter="volume",
                             value=volume_l, limit=0.0)

    # -- framing --------------------------------------------------------------------------
    def _encode(self, command: str, *, safe: bool) -> bytes:
        data = f"{self.address}{command}".encode("ascii")
        return safe_packet(data) if safe else data + b"\r"

    async def _exchange(self, command: str, *, send_safe: bool | None = None,
                        reply_safe: bool | None = None) -> tuple[str, str]:
        """One command and its reply: (prompt, data). Raises on errors in the data."""
        link = self.open_link()
        send_safe = self.safe if send_safe is None else send_safe
        reply_safe = self.safe if reply_safe is None else reply_safe
        timeout = self.spec.timeout_s
        async with link.lock:
            link.reset_input()
            await link.write(self._encode(command, safe=send_safe))
            self._last_io = time.monotonic()
            if reply_safe:
                frame = await link.read_frame(
                    STX, ETX, timeout, length=lambda b: b[1] + 1 if len(b) >= 2 else None
                )
            else:
                frame = await link.read_frame(STX, ETX, timeout)
        body = self._unframe(frame, safe=reply_safe)
        return self._parse(command, body)

    def _unframe(self, frame: bytes, *, safe: bool) -> str:
        if safe:
            data, crc = frame[2:-3], frame[-3:-1]
            if len(frame) < 5 or crc16_xmodem(data) != int.from_bytes(crc, "big"):
                raise ProtocolError(f"bad safe-mode reply {frame!r} (CRC)", device=self.name)
        else:
            data = frame[1:-1]
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(f"non-ASCII reply {frame!r}", device=self.name) from None

    def _parse(self, command: str, body: str) -> tuple[str, str]:
        m = _REPLY.match(body)
        if m is None:
            raise ProtocolError(f"unexpected reply {body!r} to {command!r}", device=self.name)
        if int(m.group(1)) != self.address:
            raise ProtocolError(f"reply from address {m.group(1)} to {command!r}, expected "
                                f"{self.address:02d}", device=self.name)
        prompt, data = m.group(2), m.group(3)
        if prompt.startswith("A?"):
            code = prompt[2]
            self.alarm = code
            # the power-up reset alarm is expected on every connect: not worth a warning
            level = logging.INFO if code == "R" else logging.WARNING
            log.log(level, "%s: alarm A?%s (%s)", self.name, code, ALARMS.get(code, "unknown"))
        else:
            self.last_prompt = prompt
        if data.startswith("?"):
            self._raise_error(command, data)
        return prompt, data

    def _raise_error(self, command: str, data: str) -> None:
        what = f"{command!r}"
        if data == "?":
            raise ProtocolError(f"command not recognised: {what}", device=self.name)
        if data == "?NA":
            raise DeviceBusy(f"{what} not applicable now (pump {self._state_text()})",
                             device=self.name)
        if data == "?OOR":
            raise LimitError(f"{what}: value out of the pump's range", device=self.name,
                             parameter=command[:3].lower(), value=command[3:])
        if data == "?COM":
            raise ProtocolError(f"{what}: pump reports an invalid safe-mode packet (?COM)",
                                device=self.name)
        raise DeviceFault(f"{what} refused", device=self.name, code=data,
                          vendor_text="command ignored" if data == "?IGN" else None)

    def _state_text(self) -> str:
        return PROMPTS.get(self.last_prompt, self.last_prompt)

    async def command(self, command: str, *, retries: int = 1,
                      tolerate_alarm: bool = False) -> tuple[str, str]:
        """Send one command; retry lost or corrupted exchanges `retries` times (only for
        commands that are harmless to repeat). Alarms raise DeviceFault unless tolerated."""
        attempt = 0
        while True:
            try:
                prompt, data = await self._exchange(command)
                break
            except (DeviceTimeout, ProtocolError) as exc:
                if attempt >= retries:
                    raise
                attempt += 1
                log.info("%s: %s, retrying %r", self.name, exc, command)
        if prompt.startswith("A?") and not tolerate_alarm:
            self._raise_alarm(prompt[2])
        return prompt, data

    def _raise_alarm(self, code: str) -> None:
        raise DeviceFault(f"pump alarm: {ALARMS.get(code, 'unknown alarm')}",
                          device=self.name, code=f"A?{code}", vendor_text=ALARMS.get(code))

    # -- life cycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        link = self.open_link()
        await link.open()
        target_safe = self.safe_timeout_s > 0
        # A safe-framed SAF works in either mode; the reply comes in the new mode's framing.
        last: Exception | None = None
        for _ in range(3):
            try:
                await self._exchange(f"SAF{self.safe_timeout_s}", send_safe=True,
                                     reply_safe=target_safe)
                break
            except (DeviceTimeout, ProtocolError) as exc:
                last = exc
        else:
            assert last is not None
            raise last
        self.safe = target_safe
        self.alarm = None  # the power-up alarm was reported and cleared by that reply
        prompt, _ = await self.command("", tolerate_alarm=True)
        self.alarm = None
        if self.diameter_mm is not None:
            _, dia = await self.command("DIA")
            if pump_number(self.diameter_mm) != dia:
                if prompt in MOVING:
                    raise DeviceBusy(f"pump is {self._state_text()} with a {dia} mm syringe; "
                                     f"configured {self.diameter_mm:g} mm", device=self.name)
                await self.set_diameter(self.diameter_mm)
        if target_safe:
            self._keepalive = asyncio.ensure_future(self._keep_alive())

    def _check_diameter(self, mm: float) -> None:
        self.check_range("syringe_diameter", mm, 0.1, 80.0, "mm")

    async def _keep_alive(self) -> None:
        """Query the status often enough that the pump's safe-mode timer never lapses."""
        interval = self.safe_timeout_s / 4
        while True:
            await self.clock.sleep(interval)
            if time.monotonic() - self._last_io < self.clock.to_wall(interval):
                continue
            try:
                await self.command("", tolerate_alarm=True, retries=0)
            except Exception as exc:  # keep trying; the next real command will raise
                log.warning("%s: keep-alive failed: %s", self.name, exc)

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(BaseException):
                await self._keepalive
            self._keepalive = None

    async def identify(self) -> DeviceInfo:
        _, ver = await self.command("VER", tolerate_alarm=True)
        m = _VERSION.match(ver)
        if m is None:
            raise ProtocolError(f"unexpected VER reply {ver!r}", device=self.name)
        model = f"{m.group(1)}-{m.group(2)}"
        firmware = m.group(3) + (m.group(4) or "")
        self.info = DeviceInfo(model=model, firmware=firmware, vendor="New Era Pump Systems")
        return self.info

    async def status(self) -> DeviceStatus:
        await self.command("", tolerate_alarm=True)
        _, dis = await self.command("DIS", tolerate_alarm=True)
        infused, withdrawn = self._parse_dis(dis)
        readings: dict[str, Any] = {
            "pump_state": self._state_text(), "infused_l": infused, "withdrawn_l": withdrawn,
            "safe_mode_s": self.safe_timeout_s,
        }
        if self.alarm is not None:
            return DeviceStatus(DeviceState.FAULT, readings,
                                fault=f"A?{self.alarm}: {ALARMS.get(self.alarm, 'alarm')}")
        state = DeviceState.BUSY if self.last_prompt in (*MOVING, "P", "T", "U") else \
            DeviceState.IDLE
        return DeviceStatus(state, readings)

    def clear_alarm(self) -> None:
        """Forget a latched alarm (after the operator dealt with it)."""
        self.alarm = None

    # -- settings -------------------------------------------------------------------------
    async def set_diameter(self, diameter_mm: float) -> None:
        """Syringe inside diameter; the pump then clears its volume and rate."""
        self._check_diameter(diameter_mm)
        text = pump_number(diameter_mm)
        await self.command(f"DIA{text}")
        self.diameter_mm = float(text) if text else diameter_mm
        self._rate_units = None

    async def set_flow(self, flow_l_s: float) -> None:
        self._check_flow(flow_l_s)
        units = best_units(flow_l_s, RATE_UNITS)
        if units is None:
            raise LimitError("flow cannot be expressed in the pump's number format",
                             device=self.name, parameter="flow", value=flow_l_s)
        number, unit = units
        if self.last_prompt in MOVING and self._rate_units and self._rate_units != unit:
            kept = pump_number(flow_l_s / RATE_UNITS[self._rate_units])
            if kept is not None and float(kept) > 0:
                number, unit = kept, self._rate_units  # units cannot change while pumping
        await self.command(f"RAT{number}{unit}")
        self._rate_units = unit

    async def flow_l_s(self) -> float:
        _, data = await self.command("RAT")
        m = re.match(r"^([\d.]+)(UM|MM|UH|MH)$", data)
        if m is None:
            raise ProtocolError(f"unexpected RAT reply {data!r}", device=self.name)
        return float(m.group(1)) * RATE_UNITS[m.group(2)]

    async def set_volume(self, volume_l: float) -> None:
        """Target volume (0 pumps until stopped), in the units that keep its resolution."""
        if volume_l == 0:
            await self.command("VOL0")
            return
        self._check_volume(volume_l)
        units = best_units(volume_l, VOLUME_UNITS)
        if units is None:
            raise LimitError("volume cannot be expressed in the pump's number format",
                             device=self.name, parameter="volume", value=volume_l)
        number, unit = units
        await self.command(f"VOL{unit}")
        await self.command(f"VOL{number}")

    async def set_direction(self, direction: PumpDirection) -> None:
        await self.command("DIR" + ("INF" if direction == PumpDirection.INFUSE else "WDR"))

    async def clear_counters(self) -> None:
        await self.command("CLDINF")
        await self.command("CLDWDR")

    # -- motion ---------------------------------------------------------------------------
    async def start(self, direction: PumpDirection = PumpDirection.INFUSE) -> None:
        """Pump continuously (target volume 0) at the rate set with `set_flow`."""
        await self._ensure_stopped()
        self.alarm = None
        await self.set_volume(0)
        await self.set_direction(direction)
        await self.command("RUN", retries=0)

    async def purge(self, direction: PumpDirection = PumpDirection.INFUSE) -> None:
        """Pump at the maximum rate until stopped."""
        await self._ensure_stopped()
        await self.set_direction(direction)
        await self.command("PUR", retries=0)

    async def _ensure_stopped(self) -> None:
        prompt, _ = await self.command("")
        if prompt in MOVING:
            raise DeviceBusy(f"pump is {self._state_text()}", device=self.name)
        if prompt == "P":
            await self.command("STP", retries=0)

    async def stop(self) -> None:
        """Stop (STP; a second STP when that only paused the pump). A transfer held by
        `pause()` before its RUN ends without pumping."""
        self._stops += 1
        self._resumed.set()
        for _ in range(3):
            # repeating a STP whose reply was lost is what stop wants anyway (a paused
            # pump stops on the next one)
            prompt, _ = await self.command("STP", retries=2, tolerate_alarm=True)
            if prompt.startswith("A?"):  # an alarm took the prompt's place: ask again
                prompt, _ = await self.command("", retries=2, tolerate_alarm=True)
            if prompt not in NOT_STOPPED:
                return
        prompt, _ = await self.command("", retries=2, tolerate_alarm=True)
        if prompt in NOT_STOPPED or prompt.startswith("A?"):
            raise DeviceFault(f"pump still {self._state_text()} after STP", device=self.name)

    async def pause(self) -> None:
        """One STP: a pumping pump pauses, keeping the remaining volume for `resume`.
        A transfer that has not sent RUN yet holds until `resume`."""
        self._resumed.clear()
        prompt, _ = await self.command("", tolerate_alarm=True)
        if prompt in ("I", "W"):
            await self.command("STP", retries=0, tolerate_alarm=True)
        elif prompt == "X":
            await self.stop()

    async def resume(self) -> None:
        """RUN after `pause()`: pumps the remainder of the target volume."""
        self._resumed.set()
        prompt, _ = await self.command("")
        if prompt == "P":
            await self.command("RUN", retries=0)

    async def safe_state(self) -> None:
        await self.stop()

    def _parse_dis(self, data: str) -> tuple[float, float]:
        m = re.match(r"^I([\d.]+)W([\d.]+)(UL|ML)$", data)
        if m is None:
            raise ProtocolError(f"unexpected DIS reply {data!r}", device=self.name)
        per = VOLUME_UNITS[m.group(3)]
        return float(m.group(1)) * per, float(m.group(2)) * per

    async def dispensed_l(self) -> tuple[float, float]:
        """(infused, withdrawn) since the counters were last cleared."""
        _, data = await self.command("DIS")
        return self._parse_dis(data)

    async def pumped_volume_l(self) -> float:
        infused, withdrawn = await self.dispensed_l()
        return infused - withdrawn

    async def pump_volume(
        self,
        volume_l: float,
        flow_l_s: float,
        direction: PumpDirection = PumpDirection.INFUSE,
    ) -> float:
        """Set rate, volume and direction, RUN, wait until the pump stops (a pause waits
        for `resume`), and return the volume DIS reports for the direction."""
        self._check_volume(volume_l)
        self._check_flow(flow_l_s)
        stops = self._stops  # a stop() from here on cancels the RUN
        await self._ensure_stopped()
        self.alarm = None
        await self.clear_counters()
        await self.set_volume(volume_l)
        await self.set_flow(flow_l_s)
        await self.set_direction(direction)
        await self._resumed.wait()
        if self._stops == stops:
            await self.command("RUN", retries=0)
            await self._wait_stopped(volume_l / flow_l_s)
        infused, withdrawn = await self.dispensed_l()
        return infused if direction == PumpDirection.INFUSE else withdrawn

    async def _wait_stopped(self, expected_s: float) -> None:
        """Poll until the pump reports stopped. Time spent paused does not count against
        the deadline; an alarm raises DeviceFault."""
        poll = max(0.2, 0.02 * self.clock.time_scale)
        allowed_wall = max(self.clock.to_wall(2 * expected_s + 10), 5 * self.spec.timeout_s)
        deadline = last = time.monotonic()
        deadline += allowed_wall
        while True:
            await self.clock.sleep(min(poll, max(expected_s / 10, 0.001)))
            prompt, _ = await self.command("", tolerate_alarm=True)
            if self.alarm is not None:
                self._raise_alarm(self.alarm)
            if prompt == "S":
                return
            now = time.monotonic()
            if prompt == "P":
                deadline += now - last
            last = now
            if now > deadline:
                with contextlib.suppress(Exception):
                    await self.stop()
                raise DeviceTimeout(f"pump did not finish within {allowed_wall:.1f} s",
                                    device=self.name)
