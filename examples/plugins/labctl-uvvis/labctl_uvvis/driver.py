"""Driver of the UVV ASCII protocol of the (simulated) UV-Vis 100 spectrometer, as written
in this plugin's README: LF-terminated commands, CR LF-terminated replies, `ERR n TEXT`
for refusals. Wavelength limits are checked before any byte is sent."""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

from labctl.clock import Clock
from labctl.device import DeviceInfo, DeviceSpec, DeviceState, DeviceStatus
from labctl.errors import DeviceFault, DeviceTimeout, LimitError, ProtocolError
from labctl.transport import LinkPool, SerialSettings
from labctl_uvvis.capability import Spectrometer, SpectrumPoint

#: the instrument's own range (nm); a config's limits may narrow it
RANGE_NM = (190.0, 1100.0)
MAX_STEP_NM = 50.0
#: simulated seconds per point of a scan, and for the lamp to warm up (the README)
POINT_S = 0.01
WARMUP_S = 5.0
_ERR = re.compile(r"ERR (\d+) (.*)$")
_POINT = re.compile(r"(\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)$")


class UvVisSpectrometer(Spectrometer):
    """UV-Vis 100 over the UVV ASCII protocol (9600 8N1)."""

    default_serial: ClassVar[SerialSettings] = SerialSettings(baudrate=9600)
    protocol: ClassVar[str] = "UVV ASCII (labctl-uvvis README)"

    @classmethod
    def config_problems(cls, name: str, address: Any, params: dict[str, Any],
                        limits: dict[str, Any]) -> list[tuple[str, str]]:
        """The instrument has no bus address."""
        if address not in (None, ""):
            return [(f"devices.{name}.address", "the UV-Vis 100 has no bus address")]
        return []

    def __init__(self, spec: DeviceSpec, *, links: LinkPool | None = None,
                 clock: Clock | None = None):
        super().__init__(spec, links=links, clock=clock)
        self._lamp_ready = False

    # -- exchanges ------------------------------------------------------------------------
    async def _line(self, timeout: float) -> str:
        assert self.link is not None
        raw = await self.link.read_until(b"\r\n", timeout)
        return raw.decode("ascii", errors="replace").strip()

    def _refused(self, command: str, reply: str) -> None:
        m = _ERR.search(reply)
        if m is not None:
            raise DeviceFault(f"{command!r} refused: {m.group(2)}", device=self.name,
                              code=m.group(1), vendor_text=reply)

    async def query(self, command: str) -> str:
        """One command, one reply line (retried once when the reply is lost)."""
        link = self.open_link()
        for attempt in (0, 1):
            try:
                async with link.lock:
                    link.reset_input()
                    await link.write(f"{command}\n".encode("ascii"))
                    reply = await self._line(self.spec.timeout_s)
            except (DeviceTimeout, ProtocolError):
                if attempt:
                    raise
                continue
            self._refused(command, reply)
            return reply
        raise AssertionError("unreachable")

    # -- life cycle -----------------------------------------------------------------------
    async def connect(self) -> None:
        await self.open_link().open()
        await self.identify()
        self._lamp_ready = (await self.query("LAMP?")) == "LAMP 1"

    async def identify(self) -> DeviceInfo:
        parts = (await self.query("*IDN?")).split(",")
        if len(parts) != 4:
            raise ProtocolError(f"unexpected *IDN? reply {','.join(parts)!r}", device=self.name)
        vendor, model, serial, firmware = (p.strip() for p in parts)
        self.info = DeviceInfo(model=model, serial=serial, firmware=firmware, vendor=vendor)
        return self.info

    async def status(self) -> DeviceStatus:
        reply = await self.query("STAT?")
        m = re.fullmatch(r"STAT (IDLE|SCAN|FAULT) LAMP (0|WARM|1)", reply)
        if m is None:
            raise ProtocolError(f"unexpected STAT? reply {reply!r}", device=self.name)
        state = {"IDLE": DeviceState.IDLE, "SCAN": DeviceState.BUSY,
                 "FAULT": DeviceState.FAULT}[m.group(1)]
        return DeviceStatus(state, {"lamp": m.group(2)},
                            fault="lamp failure" if state is DeviceState.FAULT else None)

    # -- the capability -------------------------------------------------------------------
    async def lamp(self, on: bool) -> None:
        if not on:
            await self.query("LAMP 0")
            self._lamp_ready = False
            return
        await self.query("LAMP 1")
        allowed = self.clock.to_wall(3 * WARMUP_S) + 3 * self.spec.timeout_s
        deadline = time.monotonic() + allowed
        while (await self.query("LAMP?")) != "LAMP 1":
            if time.monotonic() > deadline:
                raise DeviceFault(f"lamp not ready after {allowed:.1f} s", device=self.name,
                                  code="warmup")
            await self.clock.sleep(min(0.5, WARMUP_S / 5))
        self._lamp_ready = True

    def check_scan(self, start_nm: float, end_nm: float, step_nm: float) -> None:
        """Refuse (LimitError, nothing sent) a scan outside the instrument's range or the
        configured `min_wavelength` / `max_wavelength`."""
        lo = max(RANGE_NM[0], self.limit("min_wavelength", "nm") or RANGE_NM[0])
        hi = min(RANGE_NM[1], self.limit("max_wavelength", "nm") or RANGE_NM[1])
        self.check_range("start", start_nm, lo, hi, "nm")
        self.check_range("end", end_nm, lo, hi, "nm")
        self.check_range("step", step_nm, 1.0, MAX_STEP_NM, "nm")
        if end_nm <= start_nm:
            raise LimitError(f"end {end_nm:g} nm is not above start {start_nm:g} nm",
                             device=self.name, parameter="end", value=end_nm)

    async def scan(self, start_nm: float, end_nm: float, step_nm: float
                   ) -> list[SpectrumPoint]:
        self.check_scan(start_nm, end_nm, step_nm)
        command = f"SCAN {round(start_nm)} {round(end_nm)} {round(step_nm)}"
        link = self.open_link()
        t0 = self.clock.monotonic()
        async with link.lock:
            link.reset_input()
            await link.write(f"{command}\n".encode("ascii"))
            head = await self._line(self.spec.timeout_s)
            self._refused(command, head)
            m = re.fullmatch(r"OK (\d+)", head)
            if m is None:
                raise ProtocolError(f"unexpected SCAN reply {head!r}", device=self.name)
            n = int(m.group(1))
            timeout = self.clock.to_wall(n * POINT_S * 3) + self.spec.timeout_s
            points: list[SpectrumPoint] = []
            for _ in range(n):
                line = await self._line(timeout)
                self._refused(command, line)
                pm = _POINT.fullmatch(line)
                if pm is None:
                    raise ProtocolError(f"unexpected spectrum line {line!r}", device=self.name)
                points.append(SpectrumPoint(float(pm.group(1)), float(pm.group(2)),
                                            self.clock.monotonic() - t0))
            end = await self._line(timeout)
            if end != "END":
                raise ProtocolError(f"spectrum of {n} points not closed by END: {end!r}",
                                    device=self.name)
        return points
