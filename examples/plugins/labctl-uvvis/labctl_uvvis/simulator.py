"""The UV-Vis 100 spectrometer, device side of the UVV ASCII protocol (README.md),
written from the protocol, not from the driver.

The sample is the world's `vessel` (option): each material with an absorption band
(option `bands = {MATERIAL = {peak, width, absorptivity}}`) absorbs by Beer-Lambert,
A(λ) = Σ ε_m · l · c_m · exp(-(λ - peak)² / 2σ²), c_m its mass concentration (g/L) in the
vessel, l the `path_length`, σ = width / 2.355 (width is the FWHM). Absorbance is reported
up to 4.0 (the detector saturates there). A vessel holding less than `min_volume` (default
0.5 mL) is no sample (ERR 4).

Options: `vessel`, `bands`, `path_length` (default "1 cm"), `min_volume`, `warmup`
(default "5 s"), `serial`, `faults` (simulators.base.Faults; `error` fails the lamp: the
instrument reports FAULT until the lamp is switched again).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from labctl.units import to
from simulators.base import Reply, Simulator

POINT_S = 0.01
RANGE_NM = (190, 1100)
MAX_STEP_NM = 50
SATURATION = 4.0


class UvVisSimulator(Simulator):
    kind: ClassVar[str] = "uvvis-sim100"
    line: ClassVar[str] = "9600 8N1"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        opts = self.options
        self.vessel: str | None = opts.get("vessel")
        self.path_cm = to(opts.get("path_length", "1 cm"), "cm")
        self.min_volume_l = to(opts.get("min_volume", "0.5 mL"), "L")
        self.warmup_s = to(opts.get("warmup", "5 s"), "s")
        self.serial = str(opts.get("serial", "UV100-0001"))
        self.bands: dict[str, tuple[float, float, float]] = {}
        for material, band in dict(opts.get("bands") or {}).items():
            self.bands[str(material)] = (to(band["peak"], "nm"),
                                         to(band["width"], "nm") / 2.355,
                                         to(band["absorptivity"], "L/(g*cm)"))
        self.lamp = "0"  # "0", "WARM", "1"
        self.failed = False
        self.scanning = False
        self.scans = 0
        self._buf = bytearray()

    # -- bytes ----------------------------------------------------------------------------
    def feed(self, data: bytes, reply: Reply) -> None:
        self._buf.extend(data)
        while (idx := self._buf.find(b"\n")) >= 0:
            raw = bytes(self._buf[:idx])
            del self._buf[: idx + 1]
            text = raw.decode("ascii", errors="replace").strip().upper()
            if text:
                self._handle(text, reply)
        if len(self._buf) > 4096:
            self._buf.clear()

    def _say(self, reply: Reply, *lines: str) -> None:
        self.send(reply, b"".join(line.encode("ascii") + b"\r\n" for line in lines))

    def _handle(self, text: str, reply: Reply) -> None:
        if self.faults.take_error() is not None:
            self.failed = True
            self.lamp = "0"
        words = text.split()
        cmd, args = words[0], words[1:]
        if self.scanning and cmd not in ("STAT?", "*IDN?", "LAMP?"):
            self._say(reply, "ERR 5 BUSY")
            return
        if cmd == "*IDN?" and not args:
            self._say(reply, f"LABSIM,UV-VIS 100,{self.serial},1.0")
        elif cmd == "STAT?" and not args:
            state = "FAULT" if self.failed else "SCAN" if self.scanning else "IDLE"
            self._say(reply, f"STAT {state} LAMP {self.lamp}")
        elif cmd == "LAMP?" and not args:
            self._say(reply, f"LAMP {self.lamp}")
        elif cmd == "LAMP" and args in (["0"], ["1"]):
            self.failed = False
            if args == ["0"]:
                self.lamp = "0"
            elif self.lamp == "0":
                self.lamp = "WARM"
                self.spawn(self._warm_up())
            self._say(reply, "OK")
        elif cmd == "SCAN":
            self._scan(args, reply)
        else:
            self._say(reply, "ERR 1 UNKNOWN COMMAND")

    async def _warm_up(self) -> None:
        await self.clock.sleep(self.warmup_s)
        if self.lamp == "WARM":
            self.lamp = "1"

    def _scan(self, args: list[str], reply: Reply) -> None:
        if len(args) != 3 or not all(a.isdigit() for a in args):
            self._say(reply, "ERR 2 BAD ARGUMENT")
            return
        start, end, step = (int(a) for a in args)
        if not (RANGE_NM[0] <= start < end <= RANGE_NM[1] and 1 <= step <= MAX_STEP_NM):
            self._say(reply, "ERR 2 BAD ARGUMENT")
            return
        if self.lamp != "1":
            self._say(reply, "ERR 3 LAMP NOT READY")
            return
        if self.vessel is None or self.world is None or \
                self.world.volume_l(self.vessel) < self.min_volume_l:
            self._say(reply, "ERR 4 NO SAMPLE")
            return
        wavelengths = list(range(start, end + 1, step))
        self.scanning = True
        self._say(reply, f"OK {len(wavelengths)}")
        self.spawn(self._send_spectrum(wavelengths, reply))

    async def _send_spectrum(self, wavelengths: list[int], reply: Reply) -> None:
        try:
            await self.clock.sleep(POINT_S * len(wavelengths))
            lines = [f"{w},{self.absorbance(w):.4f}" for w in wavelengths]
            self._say(reply, *lines, "END")
            self.scans += 1
        finally:
            self.scanning = False

    # -- physics --------------------------------------------------------------------------
    def concentrations_g_l(self) -> dict[str, float]:
        """Mass concentration of each material in the sample (g/L)."""
        if self.vessel is None or self.world is None:
            return {}
        volume = self.world.volume_l(self.vessel)
        if volume <= 0:
            return {}
        return {m: g / volume for m, g in self.world.composition(self.vessel).items()}

    def absorbance(self, wavelength_nm: float) -> float:
        total = 0.0
        for material, c in self.concentrations_g_l().items():
            if material in self.bands:
                peak, sigma, eps = self.bands[material]
                total += eps * self.path_cm * c * math.exp(
                    -((wavelength_nm - peak) ** 2) / (2 * sigma**2))
        return min(total, SATURATION)

    # -- views ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"lamp": self.lamp, "failed": self.failed, "scanning": self.scanning,
                "scans": self.scans, "concentrations_g_l": self.concentrations_g_l()}

    def is_safe(self) -> bool:
        return self.lamp == "0" and not self.scanning
