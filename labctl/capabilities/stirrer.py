"""Stirrer hotplate: speed and temperature."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from labctl.device import Device


class Stirrer(Device):
    capabilities: ClassVar[tuple[str, ...]] = ("stirrer",)

    @abstractmethod
    async def set_speed(self, speed_rpm: float) -> None:
        """Set the speed and run the motor (0 stops it)."""

    @abstractmethod
    async def set_temperature(self, temperature_c: float | None) -> None:
        """Set the temperature and heat (None switches the heater off)."""

    @abstractmethod
    async def speed_rpm(self) -> float: ...

    @abstractmethod
    async def temperature_c(self) -> float:
        """Medium temperature where a probe is fitted, else the plate."""

    async def safe_state(self) -> None:
        await self.set_temperature(None)
        await self.set_speed(0)
