"""Put simulators on a line: one endpoint (pty or TCP) per bus, one or more instruments on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labctl.simserve import ByteServer
from simulators.base import Reply, Simulator


@dataclass
class Served:
    """A running endpoint and the simulators on it."""

    endpoint: str
    simulators: list[Simulator]
    server: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        for sim in self.simulators:
            await sim.stop()
        if self.server is not None:
            await self.server.close()


async def serve_bytes(sims: list[Simulator], endpoint: str = "pty") -> Served:
    """Serve byte-protocol simulators sharing one line; every chunk reaches each of them
    and only the addressed one answers."""

    def on_data(data: bytes, reply: Reply) -> None:
        for sim in sims:
            sim.feed(data, reply)

    server = ByteServer(on_data, name="+".join(s.name for s in sims))
    url = await server.start(endpoint)
    for sim in sims:
        sim.server = server
        await sim.start()
    return Served(endpoint=url, simulators=sims, server=server)


async def serve(sims: list[Simulator], endpoint: str = "pty") -> Served:
    """Serve simulators of one kind on one endpoint (the class decides how: byte stream by
    default, a Modbus server for Modbus devices)."""
    if not sims:
        raise ValueError("nothing to serve")
    kinds = {type(s) for s in sims}
    if len(kinds) > 1 and any(hasattr(k, "serve_group") for k in kinds):
        raise ValueError("simulators with their own server cannot share a line with others")
    cls = type(sims[0])
    custom = getattr(cls, "serve_group", None)
    if custom is not None:
        served: Served = await custom(sims, endpoint)
        return served
    return await serve_bytes(sims, endpoint)
