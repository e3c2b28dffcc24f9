"""A whole simulated bench from plain data (what labctl's bench config describes):
the world, and every device's simulator served on its line."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from labctl.clock import Clock, RealClock
from simulators.registry import simulator_class
from simulators.serving import Served, serve
from simulators.world import World

#: moves the world's ledger keeps at least (about 0.5 kB each)
LEDGER_KEEP = 1000


@dataclass
class SimulatedBench:
    world: World
    endpoints: dict[str, str] = field(default_factory=dict)
    simulators: dict[str, Any] = field(default_factory=dict)
    served: list[Served] = field(default_factory=list)
    chemistry: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.chemistry is not None:
            self.chemistry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.chemistry
            self.chemistry = None
        for s in self.served:
            await s.close()
        self.served.clear()

    def state(self) -> dict[str, Any]:
        """The world and what each instrument holds outside it, as plain JSON data (what
        `start_simulated_bench` takes back under spec["state"])."""
        return {"world": self.world.to_state(),
                "instruments": {name: st for name, sim in self.simulators.items()
                                if (st := sim.saved_state())}}

    def ledger_length(self) -> int:
        """Moves made since the world was built (or loaded), dropped ones included."""
        return self.world.ledger_base + len(self.world.ledger)

    def moves_since(self, index: int) -> list[dict[str, Any]]:
        """The world's moves from ledger entry `index` on (kept: see trim_ledger)."""
        return list(self.world.ledger[max(0, index - self.world.ledger_base):])

    def trim_ledger(self, keep_from: int) -> None:
        """Let the ledger drop moves before entry `keep_from` (the oldest step in progress
        started there), keeping at least the last LEDGER_KEEP: a bench serving for weeks
        holds a bounded ledger (tests and in-doubt reports read the recent moves)."""
        keep_from = min(keep_from, self.ledger_length() - LEDGER_KEEP)
        if keep_from - self.world.ledger_base >= LEDGER_KEEP:  # in chunks, not per run
            self.world.trim_ledger(keep_from)


async def start_simulated_bench(spec: dict[str, Any], clock: Clock | None = None) -> SimulatedBench:
    """spec = {"world": {...}, "devices": [{"name", "kind", "address", "options", "bus",
    "endpoint"}], "state": {...}}. Devices with the same `bus` share one line. `state`, when
    given, is what `SimulatedBench.state()` saved: the world is rebuilt from it (not from the
    config's initial contents) before any instrument is built, so each reads its vessel as
    it was. Returns the endpoints."""
    clock = clock or RealClock()
    saved = spec.get("state") or None
    world = (World.from_state(saved["world"]) if saved and saved.get("world")
             else World.from_spec(spec.get("world") or {}))
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
        if saved and dev["name"] in (saved.get("instruments") or {}):
            sim.restore_state(saved["instruments"][dev["name"]])
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
    bench.chemistry = asyncio.get_running_loop().create_task(_react(world, clock))
    return bench


async def _react(world: World, clock: Clock) -> None:
    """The world's own chemistry (a sol gelling) runs on the bench's clock: ~50 updates
    per wall second, never finer than 0.5 simulated seconds."""
    step = max(0.5, 0.02 * getattr(clock, "time_scale", 1.0))
    t = clock.monotonic()
    while True:
        await clock.sleep(step)
        now = clock.monotonic()
        world.react(now - t)
        t = now
