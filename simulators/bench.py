"""A whole simulated bench from plain data (what labctl's bench config describes):
the world, and every device's simulator served on its line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labctl.clock import Clock, RealClock
from simulators.registry import simulator_class
from simulators.serving import Served, serve
from simulators.world import World


@dataclass
class SimulatedBench:
    world: World
    endpoints: dict[str, str] = field(default_factory=dict)
    simulators: dict[str, Any] = field(default_factory=dict)
    served: list[Served] = field(default_factory=list)

    async def close(self) -> None:
        for s in self.served:
            await s.close()
        self.served.clear()


async def start_simulated_bench(spec: dict[str, Any], clock: Clock | None = None) -> SimulatedBench:
    """spec = {"world": {...}, "devices": [{"name", "kind", "address", "options", "bus",
    "endpoint"}]}. Devices with the same `bus` share one line. Returns the endpoints."""
    clock = clock or RealClock()
    world = World.from_spec(spec.get("world") or {})
    bench = SimulatedBench(world=world)
    groups: dict[str, list[tuple[str, Any]]] = {}
    endpoint_of: dict[str, str] = {}
    for dev in spec.get("devices", []):
        cls = simulator_class(dev["kind"])
        sim = cls(
            clock=clock,
            address=dev.get("address"),
            world=world,
            options=dev.get("options") or {},
            name=dev["name"],
        )
        bus = dev.get("bus") or f"__{dev['name']}"
        groups.setdefault(bus, []).append((dev["name"], sim))
        endpoint_of[bus] = dev.get("endpoint") or "pty"
        bench.simulators[dev["name"]] = sim
    try:
        for bus, members in groups.items():
            served = await serve([s for _, s in members], endpoint_of[bus])
            bench.served.append(served)
            for name, _ in members:
                bench.endpoints[name] = served.endpoint
    except BaseException:
        await bench.close()
        raise
    return bench
