"""PID temperature controller (heated block)."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from labctl.device import Device


class TemperatureController(Device):
    capabilities: ClassVar[tuple[str, ...]] = ("temperature_controller",)

    @abstractmethod
    async def set_temperature(self, temperature_c: float | None) -> None:
        """Set the setpoint and run (None stops control)."""

    @abstractmethod
    async def temperature_c(self) -> float: ...

    async def safe_state(self) -> None:
        await self.set_temperature(None)
