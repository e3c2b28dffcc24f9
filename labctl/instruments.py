"""The connected devices of one bench: build drivers from the config, start the
simulators when the bench is simulated, connect, identify, apply safe states, close."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from labctl.bench_lock import BenchInUse
from labctl.clock import Clock, make_clock
from labctl.config import BenchConfig
from labctl.device import Device, DeviceInfo, safe_state_of
from labctl.errors import DeviceError
from labctl.registry import driver_class
from labctl.transport import LinkPool

log = logging.getLogger("labctl.instruments")


class Instruments:
    """`async with Instruments(cfg) as inst: inst.devices["pump1"]...`"""

    def __init__(
        self,
        cfg: BenchConfig,
        *,
        clock: Clock | None = None,
        time_scale: float | None = None,
        only: list[str] | None = None,
        sim_state: dict[str, Any] | None = None,
    ):
        self.cfg = cfg
        #: a saved simulated world to start the simulators from (a resumed run's)
        self.sim_state = sim_state
        scale = time_scale if time_scale is not None else cfg.bench.time_scale
        self.clock: Clock = clock or make_clock(scale if cfg.bench.simulate else None)
        self.links = LinkPool()
        self.devices: dict[str, Device] = {}
        self.simulation: Any = None
        self.only = only
        self.connect_errors: dict[str, str] = {}
        #: devices whose line another process holds (labctl.transport.PortInUse)
        self.busy: set[str] = set()

    @property
    def simulated(self) -> bool:
        return self.cfg.bench.simulate

    async def start(self, *, tolerate_errors: bool = False) -> None:
        """Start simulators (if simulated), build and connect every enabled device."""
        names = [n for n in self.cfg.enabled_devices() if self.only is None or n in self.only]
        if self.simulated:
            from labctl.simulation import start_simulation

            self.simulation = await start_simulation(self.cfg, self.clock, names,
                                                     self.sim_state)
        for name in names:
            spec = self.cfg.device_spec(name)
            if self.simulation is not None:
                spec = spec.model_copy(update={"endpoint": self.simulation.endpoints[name]})
            self.devices[name] = driver_class(spec.driver)(spec, links=self.links, clock=self.clock)

        async def connect(name: str, dev: Device) -> None:
            try:
                await dev.connect()
                dev.info = await dev.identify()
            except DeviceError as exc:
                self.connect_errors[name] = str(exc)
                if isinstance(exc, BenchInUse):
                    self.busy.add(name)
                if not tolerate_errors:
                    raise

        try:
            await asyncio.gather(*(connect(n, d) for n, d in self.devices.items()))
        except BaseException:
            await self.close()
            raise

    async def safe_state_all(self) -> dict[str, str]:
        """Every device to its safe state, concurrently; returns the errors by device."""
        errors: dict[str, str] = {}

        async def one(name: str, dev: Device) -> None:
            error = await safe_state_of(dev)
            if error is not None:  # every device is tried, whatever one does
                errors[name] = error
                log.error("safe state of %s failed: %s", name, error)

        await asyncio.gather(*(one(n, d) for n, d in self.devices.items()))
        return errors

    def identities(self) -> dict[str, DeviceInfo | None]:
        return {n: d.info for n, d in self.devices.items()}

    async def close(self) -> None:
        for dev in self.devices.values():
            try:
                await dev.close()
            except Exception as exc:  # closing must go on for the others
                log.warning("closing %s: %s", dev.name, exc)
        await self.links.close_all()
        if self.simulation is not None:
            await self.simulation.close()
            self.simulation = None

    async def __aenter__(self) -> Instruments:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
