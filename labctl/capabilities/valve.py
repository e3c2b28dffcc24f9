"""Multiposition selector valve."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from labctl.device import Device


class Valve(Device):
    capabilities: ClassVar[tuple[str, ...]] = ("valve",)

    @property
    @abstractmethod
    def positions(self) -> int:
        """Number of positions (1…positions)."""

    def position_for(self, target: int | str) -> int:
        """A position number, or the position a vessel sits on (`params.port_map`)."""
        from labctl.errors import LimitError

        port_map = self.spec.params.get("port_map", {})
        if isinstance(target, str) and not target.isdigit():
            for pos, vessel in port_map.items():
                if vessel == target:
                    return int(pos)
            raise LimitError(
                f"no position connected to {target!r}", device=self.name,
                parameter="position", value=target,
            )
        pos = int(target)
        if not 1 <= pos <= self.positions:
            raise LimitError(
                f"position {pos} does not exist (1…{self.positions})", device=self.name,
                parameter="position", value=pos, limit=self.positions,
            )
        return pos

    @abstractmethod
    async def move(self, position: int) -> None:
        """Go to a position and wait until there."""

    @abstractmethod
    async def position(self) -> int: ...

    @abstractmethod
    async def home(self) -> None: ...

    async def safe_state(self) -> None:
        """A valve holds its position: nothing flows without a pump."""
