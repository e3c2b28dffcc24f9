"""The `spectrometer` capability: what actions may ask of any UV-Vis spectrometer,
whatever its vendor (the way labctl.capabilities defines pumps and balances)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from labctl.device import Device


@dataclass(frozen=True)
class SpectrumPoint:
    """One point of a spectrum: wavelength (nm), absorbance (1), seconds since the scan
    started."""

    wavelength_nm: float
    absorbance: float
    time_s: float


class Spectrometer(Device):
    capabilities: ClassVar[tuple[str, ...]] = ("spectrometer",)

    @abstractmethod
    async def lamp(self, on: bool) -> None:
        """Switch the lamp; on returns once it is warm (ready to scan)."""

    @abstractmethod
    async def scan(self, start_nm: float, end_nm: float, step_nm: float
                   ) -> list[SpectrumPoint]:
        """Absorbance of the sample from start to end every step (lamp must be ready)."""

    async def safe_state(self) -> None:
        """The lamp off: nothing else of a spectrometer can hurt."""
        await self.lamp(False)
