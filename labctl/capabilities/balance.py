"""Balance: weigh what sits on it."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from labctl.device import Device


class Balance(Device):
    capabilities: ClassVar[tuple[str, ...]] = ("balance",)

    @abstractmethod
    async def weigh(self, *, stable: bool = True, timeout_s: float | None = None) -> float:
        """Net mass in grams; stable waits for a settled reading."""

    @abstractmethod
    async def zero(self) -> None: ...

    @abstractmethod
    async def tare(self) -> float:
        """Tare and return the tare mass in grams."""

    async def safe_state(self) -> None:
        """A balance has nothing to switch off."""
