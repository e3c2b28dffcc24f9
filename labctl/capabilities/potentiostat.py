"""Potentiostat: run an electrochemical technique and stream data points."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from labctl.device import Device


@dataclass
class DataPoint:
    """One measured point; None where the technique does not measure that quantity.
    Signs follow BDF: current positive = anodic; imaginary impedance negative when
    capacitive."""

    time_s: float
    potential_v: float | None = None  # measured working-electrode potential
    applied_v: float | None = None
    current_a: float | None = None
    applied_a: float | None = None
    frequency_hz: float | None = None
    z_real_ohm: float | None = None
    z_imag_ohm: float | None = None
    z_abs_ohm: float | None = None
    phase_deg: float | None = None
    cycle: int = 0
    step: int = 0
    scan: int = 0
    overload: bool = False
    underload: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Potentiostat(Device):
    capabilities: ClassVar[tuple[str, ...]] = ("potentiostat",)

    @abstractmethod
    def measure(self, technique: Any) -> AsyncIterator[DataPoint]:
        """Run a technique (a model from labctl.techniques) and yield points as they come."""

    @abstractmethod
    async def abort(self) -> None:
        """Stop the running technique; the cell ends switched off."""

    async def safe_state(self) -> None:
        await self.abort()
