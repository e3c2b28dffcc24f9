"""MQTT agent figures on a private local mosquitto (prints, asserts nothing):

1. baseline: a bare QoS 1 request/echo round trip through the broker (two clients);
   also with the broker's TCP_NODELAY off, to show what an untuned stack costs;
2. command -> reply latency of the agent (a `status` command through the SDK);
3. submit -> run-start latency (publish of the submit until the `running` transition event
   arrives on `events`);
4. status + events messages per second published while a potentiostat measurement runs
   (the electrolyte conductivity recipe, when recipes/ has it);
5. status and submit -> reply through `labctl serve` in a process of its own: a recipe that
   only waits, and one that takes stock (its submit also reserves it in the inventory).

    .venv/bin/python bench/bench_mqtt.py [--n 300] [--time-scale 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.client import BenchClient  # noqa: E402
from labctl.config import load_config  # noqa: E402
from labctl.mqtt.agent import Agent  # noqa: E402
from labctl.mqtt.bench_port import open_bench_port  # noqa: E402
from labctl.mqtt.connection import BrokerSettings, MqttClient  # noqa: E402
from labctl.mqtt.localbroker import MosquittoBroker  # noqa: E402
from labctl.mqtt.topics import Topics  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from soak import SOAK_RECIPE  # noqa: E402

WAIT_RECIPE = {
    "schema": "labctl.recipe/1", "name": "bench_wait", "version": "1",
    "description": "one short wait (submit -> start latency)",
    "steps": [{"id": "w", "wait": "1 s"}],
}

#: a recipe that takes stock (soak.py's cycle without its stirring and measuring: 0.5 mL of
#: EC a run, put back out to waste): its submit also reserves that stock in the inventory
STOCK_RECIPE = {**SOAK_RECIPE, "name": "bench_stock",
                "description": "0.5 mL EC into the cell vial and out to waste",
                "steps": [s for s in SOAK_RECIPE["steps"] if s["id"] not in ("mix", "ocv")]}


def figures(samples_s: list[float]) -> tuple[float, float]:
    xs = sorted(samples_s)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return statistics.median(xs) * 1e3, p99 * 1e3


def show(label: str, samples_s: list[float], baseline: tuple[float, float] | None = None) -> \
        tuple[float, float]:
    med, p99 = figures(samples_s)
    extra = f"   p99 = {p99 / baseline[1]:.2f}x baseline p99" if baseline else ""
    print(f"{label:<48} median {med:7.3f} ms   p99 {p99:7.3f} ms   (n={len(samples_s)}){extra}")
    return med, p99


async def echo_round_trips(url: str, n: int) -> list[float]:
    s = BrokerSettings.from_url(url)
    async with MqttClient(s, "bench-echo") as echo, MqttClient(s, "bench-req") as req:
        await echo.subscribe("bench/req", qos=1)
        await req.subscribe("bench/rep", qos=1)

        async def serve() -> None:
            async for m in echo.messages:
                await echo.publish_checked("bench/rep", bytes(m.payload), qos=1)  # type: ignore[arg-type]
                if m.payload == b"stop":
                    return

        task = asyncio.create_task(serve())
        replies = req.messages.__aiter__()
        out = []
        for i in range(n + 20):
            t0 = time.perf_counter()
            await req.publish_checked("bench/req", str(i).encode(), qos=1)
            await replies.__anext__()
            if i >= 20:  # warm-up
                out.append(time.perf_counter() - t0)
        await req.publish_checked("bench/req", b"stop", qos=1)
        await asyncio.wait_for(task, 30)
        return out


async def status_round_trips(c: BenchClient, n: int) -> list[float]:
    """Seconds of `n` status commands answered, after 20 of warm-up."""
    lat = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        await c.status()
        if i >= 20:
            lat.append(time.perf_counter() - t0)
    return lat


async def agent_figures(url: str, n: int, time_scale: float, baseline: tuple[float, float]) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    cfg = load_config(ROOT / "config" / "sim.toml")
    topics = Topics(cfg.bench.id)
    async with open_bench_port(cfg, data_dir=work / "runs", time_scale=time_scale) as port:
        agent = Agent(port, BrokerSettings.from_url(url), bench_id=cfg.bench.id,
                      data_dir=work / "runs")
        task = asyncio.create_task(agent.run())
        await agent.connected.wait()
        try:
            async with BenchClient(url, cfg.bench.id) as c:
                show("agent: status command -> reply", await status_round_trips(c, n), baseline)

                starts, accepted = [], []
                events = c.events()
                first = asyncio.ensure_future(events.__anext__())
                await asyncio.sleep(0.2)  # the events subscription is in place
                await (await c.submit(WAIT_RECIPE, {})).result(timeout=60)  # warm-up
                for _ in range(max(5, n // 20)):
                    t0 = time.perf_counter()
                    run = await c.submit(WAIT_RECIPE, {})
                    accepted.append(time.perf_counter() - t0)
                    while True:
                        ev = await (first if first is not None else events.__anext__())
                        first = None
                        if ev.get("run_id") == run.run_id and ev.get("type") == "transition" \
                                and ev.get("data", {}).get("dest") == "running":
                            break
                    starts.append(time.perf_counter() - t0)
                    await run.result(timeout=60)
                show("agent: submit -> reply (run queued)", accepted, baseline)
                show("agent: submit -> run started (event received)", starts, baseline)
                await events.aclose()
                await measure_rates(url, c, topics, time_scale)
        finally:
            agent.stop()
            await task


def _potentiostat_steps(recipe: dict[str, Any], devices: set[str]) -> set[str]:
    found: set[str] = set()

    def walk(steps: list[Any]) -> None:
        for s in steps:
            if not isinstance(s, dict):
                continue
            if s.get("device") in devices:
                found.add(str(s.get("id")))
            for key in ("steps", "parallel"):
                if isinstance(s.get(key), list):
                    walk(s[key])

    walk(recipe.get("steps") or [])
    return found


async def measure_rates(url: str, c: BenchClient, topics: Topics, time_scale: float) -> None:
    path = ROOT / "recipes" / "electrolyte_conductivity.json"
    if not path.exists():
        print("status/events rate: recipes/electrolyte_conductivity.json not present; skipped")
        return
    recipe = json.loads(path.read_text())
    cfg = load_config(ROOT / "config" / "sim.toml")
    pstats = {n for n, d in cfg.devices.items() if d.driver == "palmsens-emstat"}
    measuring = _potentiostat_steps(recipe, pstats)
    log: list[tuple[float, str, dict[str, Any]]] = []
    async with MqttClient(BrokerSettings.from_url(url), "bench-rate") as obs:
        await obs.subscribe(topics.status, qos=1)
        await obs.subscribe(topics.events, qos=1)

        async def collect() -> None:
            async for m in obs.messages:
                body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                log.append((time.perf_counter(), str(m.topic), body))

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.3)
        log.clear()
        try:
            run = await c.submit(path, {})
            result = await run.result(timeout=600)
        finally:
            await asyncio.sleep(0.3)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if len(log) < 2:
        print("status/events rate: nothing received")
        return
    total = log[-1][0] - log[0][0]
    n_status = sum(1 for _, t, _ in log if t == topics.status)
    print(f"conductivity run ({result.get('status')}, time scale {time_scale:g}): "
          f"{len(log)} messages in {total:.2f} s wall = {len(log) / total:.0f}/s "
          f"({n_status} status, {len(log) - n_status} events)")
    t_on = [t for t, top, b in log if top == topics.events and b.get("type") == "step_started"
            and b.get("step") in measuring]
    t_off = [t for t, top, b in log if top == topics.events and b.get("type") in (
        "step_finished", "step_failed") and b.get("step") in measuring]
    if t_on and t_off and t_off[-1] > t_on[0]:
        window = [x for x in log if t_on[0] <= x[0] <= t_off[-1]]
        span = t_off[-1] - t_on[0]
        ns = sum(1 for _, t, _ in window if t == topics.status)
        print(f"  during the potentiostat step(s) {sorted(measuring)}: {len(window)} messages in "
              f"{span:.2f} s = {len(window) / span:.0f}/s ({ns} status, {len(window) - ns} events)")


async def serve_figures(url: str, n: int, time_scale: float,
                        baseline: tuple[float, float]) -> None:
    """Submit -> reply through `labctl serve` in its own process, as an AI server sees it:
    the agent's event loop is not shared with the client measuring it (in the figures
    above it is, and the client then waits for the run the submit started)."""
    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-serve-"))
    cfg = load_config(ROOT / "config" / "sim.toml")
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "labctl", "serve", "--config", str(ROOT / "config" / "sim.toml"),
        "--broker", url, "--data-dir", str(work / "runs"), "--time-scale", str(time_scale),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        async with BenchClient(url, cfg.bench.id, timeout=60) as c:
            for _ in range(3):  # warm-up: the agent started and imported what runs need
                await (await c.submit(WAIT_RECIPE, {})).result(timeout=120)
            show("labctl serve: status command -> reply", await status_round_trips(c, n),
                 baseline)
            accepted = []
            for _ in range(max(20, n // 3)):
                t0 = time.perf_counter()
                run = await c.submit(WAIT_RECIPE, {})
                accepted.append(time.perf_counter() - t0)
                await run.result(timeout=60)
            med, _ = show("labctl serve: submit -> reply (run queued)", accepted, baseline)
            print(f"  submit -> reply through labctl serve = {med / baseline[0]:.1f}x the bare "
                  "QoS 1 echo (issue 18's goal: <= 10x)")
            stock = []
            for _ in range(40):  # 20 mL of the EC reservoir
                t0 = time.perf_counter()
                run = await c.submit(STOCK_RECIPE, {})
                stock.append(time.perf_counter() - t0)
                await run.result(timeout=60)
            med, _ = show("labctl serve: submit -> reply, recipe taking stock", stock, baseline)
            print(f"  = {med / baseline[0]:.1f}x the bare QoS 1 echo")
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        await asyncio.wait_for(agent.wait(), 30)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--time-scale", type=float, default=1000.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-broker-"))
    print(f"mosquitto on loopback, {args.n} round trips each (after 20 warm-up)")
    with MosquittoBroker(work / "untuned", nodelay=False, persistence=False) as b:
        show("baseline, broker set_tcp_nodelay false", await echo_round_trips(b.url, args.n // 3))
    with MosquittoBroker(work / "tuned") as b:
        base = show("BASELINE bare QoS 1 request/echo", await echo_round_trips(b.url, args.n))
        await agent_figures(b.url, args.n, args.time_scale, base)
        await serve_figures(b.url, args.n, args.time_scale, base)


if __name__ == "__main__":
    asyncio.run(main())
