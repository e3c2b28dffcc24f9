"""Control commands beside a burst of submits (prints, asserts nothing): how long `status`
and `estop` wait for their reply while a run is in flight and 20 submits are being validated
and queued, through a private local mosquitto and the agent serving config/sim.toml's bench.

Each round: a long run in flight; 20 submits published at once, a `status` probe every 5 ms
until the last submit is answered, and an `estop` after the fifth probe (it aborts the run
in flight and holds the queue); `resume` then releases the queue, whose next run is the one
in flight for the next round.

    .venv/bin/python bench/control_latency.py [--rounds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.config import load_config  # noqa: E402
from labctl.mqtt.agent import Agent  # noqa: E402
from labctl.mqtt.bench_port import open_bench_port  # noqa: E402
from labctl.mqtt.connection import BrokerSettings, MqttClient  # noqa: E402
from labctl.mqtt.localbroker import MosquittoBroker  # noqa: E402
from labctl.mqtt.topics import Topics  # noqa: E402

LONG = {"schema": "labctl.recipe/1", "name": "bench_long", "version": "1",
        "description": "a run that stays in flight", "steps": [{"id": "w", "wait": "2 h"}]}
BURST = 20


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] * 1e3


class Probe:
    """Bare-`cmd` commands (every labctl version serves them) and their reply times."""

    def __init__(self, client: MqttClient, topics: Topics):
        self.client = client
        self.topics = topics
        self.sent: dict[str, float] = {}
        self.replied: dict[str, float] = {}
        self.bodies: dict[str, dict[str, Any]] = {}
        self.arrived = asyncio.Event()
        self.n = 0

    async def read(self) -> None:
        async for m in self.client.messages:
            cid = str(m.topic).rsplit("/", 1)[-1]
            self.replied.setdefault(cid, time.perf_counter())
            self.bodies[cid] = json.loads(bytes(m.payload))  # type: ignore[arg-type]
            self.arrived.set()

    async def send(self, command: str, **fields: Any) -> str:
        self.n += 1
        cid = f"{command}-{self.n}"
        payload = json.dumps({"id": cid, "command": command, **fields}).encode()
        self.sent[cid] = time.perf_counter()
        self.client._client.publish(self.topics.cmd, payload, 1)  # pipelined, not awaited
        return cid

    async def wait(self, cid: str, timeout: float = 120.0) -> dict[str, Any]:
        async def until() -> None:
            while cid not in self.replied:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(until(), timeout)
        return self.bodies[cid]

    def latency(self, cid: str) -> float:
        return self.replied[cid] - self.sent[cid]


async def one_trial(rounds: int) -> tuple[list[float], list[float]]:
    work = Path(tempfile.mkdtemp(prefix="bench-control-"))
    cfg = load_config(ROOT / "config" / "sim.toml")
    topics = Topics(cfg.bench.id)
    status_lat: list[float] = []
    estop_lat: list[float] = []
    with MosquittoBroker(work / "broker") as broker:
        async with open_bench_port(cfg, data_dir=work / "runs", time_scale=1000.0) as port:
            agent = Agent(port, BrokerSettings.from_url(broker.url), bench_id=cfg.bench.id,
                          data_dir=work / "runs", device_poll_s=0)
            task = asyncio.create_task(agent.run())
            await agent.connected.wait()
            async with MqttClient(BrokerSettings.from_url(broker.url), "probe") as client:
                await client.subscribe(f"{topics.prefix}/reply/#", qos=1)
                probe = Probe(client, topics)
                reader = asyncio.create_task(probe.read())
                await probe.wait(await probe.send("submit", recipe=LONG))
                for _ in range(rounds):
                    while port.bench.status()["state"] != "running":  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    subs = [await probe.send("submit", recipe=LONG) for _ in range(BURST)]
                    probes: list[str] = []
                    stop = ""
                    while subs[-1] not in probe.replied:
                        probes.append(await probe.send("status"))
                        if len(probes) == 5:  # the e-stop, while the burst is handled
                            stop = await probe.send("estop")
                        await asyncio.sleep(0.005)
                    for cid in probes:
                        await probe.wait(cid)
                        status_lat.append(probe.latency(cid))
                    if not stop:
                        stop = await probe.send("estop")
                    await probe.wait(stop)
                    estop_lat.append(probe.latency(stop))
                    while port.bench.status()["state"] != "held":  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    await probe.wait(await probe.send("resume"))
                reader.cancel()
            agent.stop()
            await task
    return status_lat, estop_lat


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for i in range(args.repeat):
        status_lat, estop_lat = await one_trial(args.rounds)
        row = (statistics.median(status_lat) * 1e3, pct(status_lat, 0.99),
               statistics.median(estop_lat) * 1e3, pct(estop_lat, 0.99), len(status_lat))
        rows.append(row)
        print(f"trial {i + 1}: status p50 {row[0]:7.1f} ms  p99 {row[1]:7.1f} ms (n={row[4]})"
              f"   estop p50 {row[2]:7.1f} ms  p99 {row[3]:7.1f} ms (n={len(estop_lat)})",
              flush=True)
    med = [statistics.median(r[k] for r in rows) for k in range(4)]
    print(f"median of {args.repeat} trials, {BURST} submits per burst with a run in flight: "
          f"status p50 {med[0]:.1f} ms, p99 {med[1]:.1f} ms; "
          f"estop p50 {med[2]:.1f} ms, p99 {med[3]:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
