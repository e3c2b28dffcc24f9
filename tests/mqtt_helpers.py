"""Shared pieces of the MQTT tests: a bench (config/sim.toml, fast clock) served by an agent
in this event loop, and raw MQTT publishing/collecting that does not use the client SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl.config import load_config
from labctl.mqtt.agent import Agent
from labctl.mqtt.bench_port import BenchServicePort, open_bench_port
from labctl.mqtt.connection import BrokerSettings, MqttClient, subscribe_options

ROOT = Path(__file__).resolve().parent.parent
TEST_RECIPES = ROOT / "tests" / "mqtt_recipes"
WAIT_RECIPE = json.loads((TEST_RECIPES / "mqtt_wait.json").read_text())
TIME_SCALE = 1000.0
WAIT = 60.0  # generous timeout (s) for anything asynchronous


@dataclass
class Served:
    agent: Agent
    port: BenchServicePort
    task: asyncio.Task[None]

    @property
    def bench(self) -> Any:
        return self.port.bench


@contextlib.asynccontextmanager
async def serve_bench(broker_url: str, data_dir: Path, *, bench_id: str = "sim-bench-1",
                      username: str | None = None, password: str | None = None,
                      time_scale: float = TIME_SCALE, operators: tuple[str, ...] = (),
                      client_id: str | None = None,
                      takeover_wait_s: float = 3.0,
                      concurrency: int = 1) -> AsyncIterator[Served]:
    """config/sim.toml's bench (simulators on ptys) with its recipe folder pointed at the
    test recipes, and an agent serving it; stopped cleanly on exit."""
    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.bench.recipes_dir = str(TEST_RECIPES)
    cfg.bench.concurrency = concurrency
    settings = BrokerSettings.from_url(broker_url, username=username, password=password)
    extra: dict[str, Any] = {"client_id": client_id}
    if operators:
        extra["operators"] = operators
    if takeover_wait_s != 3.0:
        extra["takeover_wait_s"] = takeover_wait_s
    async with open_bench_port(cfg, data_dir=data_dir, time_scale=time_scale,
                               bench_id=bench_id) as port:
        agent = Agent(port, settings, bench_id=bench_id, data_dir=data_dir,
                      backoff_initial_s=0.05, backoff_max_s=0.5, **extra)
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), WAIT)
            yield Served(agent, port, task)
        finally:
            agent.stop()
            await asyncio.wait_for(task, WAIT)


class Raw:
    """A plain MQTT 5 client for the tests: publish bytes, collect what arrives."""

    def __init__(self, broker_url: str, client_id: str, **creds: Any):
        self.client = MqttClient(BrokerSettings.from_url(broker_url, **creds), client_id)
        self.messages: list[tuple[str, bytes, Any]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Raw:
        await self.client.__aenter__()
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        async for m in self.client.messages:
            self.messages.append((str(m.topic), bytes(m.payload), m.properties))  # type: ignore[arg-type]
            self._arrived.set()

    async def subscribe(self, topic: str) -> None:
        await self.client.subscribe(topic, options=subscribe_options(1))

    async def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        await self.client.publish_checked(topic, payload, qos=1, **kw)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    async def wait_for(self, topic: str, count: int = 1, timeout: float = WAIT) -> list[bytes]:
        async def until() -> None:
            while len(self.on(topic)) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), timeout)
        return self.on(topic)


async def eventually(predicate: Any, timeout: float = WAIT, what: str = "condition") -> None:
    """Poll a cheap predicate until it holds (no timing is asserted; the timeout only
    bounds a hang)."""
    async def loop() -> None:
        while not predicate():  # noqa: ASYNC110  (polls bench state that has no event)
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {timeout} s") from None
