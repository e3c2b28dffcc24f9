"""Syringe pump with a valve: aspirate and dispense discrete volumes through ports."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from labctl.device import Device


class SyringePump(Device):
    """Ports are named by strings: `"input"`, `"output"`, `"bypass"`, `"extra"` on
    non-distribution valves, or `"1"`…`"n"` on distribution valves. The bench config may map
    ports to vessels (`params.port_map`) so recipes can say `from = "res_dmc"`."""

    capabilities: ClassVar[tuple[str, ...]] = ("syringe_pump",)

    @property
    @abstractmethod
    def syringe_volume_l(self) -> float:
        """Configured syringe volume."""

    @property
    @abstractmethod
    def ports(self) -> list[str]:
        """Valve ports this pump can select."""

    def port_for(self, target: str) -> str:
        """A port name, or the port a vessel is connected to (from `params.port_map`)."""
        if target in self.ports:
            return target
        port_map = self.spec.params.get("port_map", {})
        for port, vessel in port_map.items():
            if vessel == target:
                return str(port)
        from labctl.errors import LimitError

        raise LimitError(
            f"no port {target!r} (ports: {', '.join(self.ports)}; "
            f"vessels: {', '.join(map(str, port_map.values())) or 'none'})",
            device=self.name, parameter="port", value=target,
        )

    @abstractmethod
    async def initialize(self) -> None:
        """Home plunger and valve."""

    @abstractmethod
    async def set_valve(self, port: str) -> None: ...

    @abstractmethod
    async def aspirate(self, volume_l: float, *, flow_l_s: float | None = None) -> None:
        """Draw `volume_l` into the syringe through the current port; waits until done."""

    @abstractmethod
    async def dispense(self, volume_l: float, *, flow_l_s: float | None = None) -> None:
        """Push `volume_l` out through the current port; waits until done."""

    @abstractmethod
    async def plunger_volume_l(self) -> float:
        """Volume currently in the syringe."""

    @abstractmethod
    async def stop(self) -> None:
        """Terminate any move at once."""

    async def transfer(
        self, volume_l: float, source: str, destination: str, *, flow_l_s: float | None = None
    ) -> float:
        """Move `volume_l` from one port (or vessel) to another in syringe-sized strokes.
        Returns the volume moved."""
        src, dst = self.port_for(source), self.port_for(destination)
        moved = 0.0
        while volume_l - moved > 1e-12:
            stroke = min(self.syringe_volume_l, volume_l - moved)
            await self.set_valve(src)
            await self.aspirate(stroke, flow_l_s=flow_l_s)
            await self.set_valve(dst)
            await self.dispense(stroke, flow_l_s=flow_l_s)
            moved += stroke
        return moved

    async def safe_state(self) -> None:
        await self.stop()
