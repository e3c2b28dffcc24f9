"""Powder dispenser: dose a mass of solid into the vessel below, report what landed."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from labctl.device import Device


class Dispenser(Device):
    capabilities: ClassVar[tuple[str, ...]] = ("dispenser",)

    @abstractmethod
    async def dispense(self, mass_g: float, *, tolerance_pct: float = 2.0) -> float:
        """Dose `mass_g`; returns the actual dosed mass in grams (weighed)."""

    @abstractmethod
    async def stop(self) -> None: ...

    async def safe_state(self) -> None:
        await self.stop()
