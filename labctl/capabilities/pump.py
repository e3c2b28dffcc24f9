"""Continuous pump (syringe pump without valve, peristaltic pump): flow at a rate."""

from __future__ import annotations

from abc import abstractmethod
from enum import StrEnum
from typing import ClassVar

from labctl.device import Device


class PumpDirection(StrEnum):
    INFUSE = "infuse"
    WITHDRAW = "withdraw"


class Pump(Device):
    capabilities: ClassVar[tuple[str, ...]] = ("pump",)

    @property
    @abstractmethod
    def max_flow_l_s(self) -> float:
        """Highest flow this pump (with its syringe/tubing) can deliver."""

    @abstractmethod
    async def set_flow(self, flow_l_s: float) -> None: ...

    @abstractmethod
    async def start(self, direction: PumpDirection = PumpDirection.INFUSE) -> None:
        """Pump continuously until `stop`."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def pump_volume(
        self,
        volume_l: float,
        flow_l_s: float,
        direction: PumpDirection = PumpDirection.INFUSE,
    ) -> float:
        """Pump a volume at a flow, wait until done; returns the volume the pump reports."""

    @abstractmethod
    async def pumped_volume_l(self) -> float:
        """Volume pumped since the last start (infused minus withdrawn where it applies)."""

    async def pause(self) -> None:
        """Pause mid-volume where the device supports it; default is stop."""
        await self.stop()

    async def safe_state(self) -> None:
        await self.stop()
