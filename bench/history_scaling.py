"""Does a bench with a long history answer as fast as a fresh one? (prints figures, asserts
nothing)

A lab's bench keeps every result it published (the MQTT outbox: a result is never sent
twice) and every sample it made. A query that reads all of them costs nothing on a fresh
bench and milliseconds per call after a year; the agent's publisher and every submit ask
such questions on the event loop, where e-stop is handled too. This script seeds a data
directory with HISTORY published results and as many samples no longer in their vials
(written in one transaction through the stores' own connections), starts `labctl serve` on
it and times, through the client SDK:

- a `status` command -> reply (a control command: what an e-stop waits behind);
- a submit -> reply of a recipe that only waits.

Each history size is compared with a fresh data directory measured in the same run
(interleaved), as a ratio.

    .venv/bin/python bench/history_scaling.py [--history 2000 10000] [--n 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
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
from labctl.mqtt.localbroker import MosquittoBroker  # noqa: E402
from labctl.mqtt.outbox import Outbox  # noqa: E402
from labctl.store.samples import SampleStore  # noqa: E402

CONFIG = ROOT / "config" / "sim.toml"
WAIT_RECIPE = {
    "schema": "labctl.recipe/1", "name": "bench_wait", "version": "1",
    "description": "one short wait", "steps": [{"id": "w", "wait": "1 s"}],
}


def seed(data: Path, n: int, result: dict[str, Any], bench_id: str) -> None:
    """`n` published results shaped like `result`, and `n` consumed samples with their
    history rows, as a bench that ran `n` runs would hold."""
    outbox = Outbox(data / "mqtt-outbox.sqlite")
    try:
        with outbox._lock:
            db = outbox._db
            db.execute("BEGIN")
            db.executemany("INSERT INTO results (run_id, payload, published) VALUES (?, ?, 1)",
                           ((f"old-{i:06d}", json.dumps({**result, "run_id": f"old-{i:06d}"}))
                            for i in range(n)))
            db.execute("COMMIT")
    finally:
        outbox.close()
    samples = SampleStore(data, bench_id)
    try:
        def fill(db: Any) -> None:
            db.executemany(
                "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?)",
                ((f"S-{bench_id}-{i + 1:06d}", i + 1, None, f"vial_{i % 24}", "rack_a", i % 24,
                  f"old-{i:06d}", "consumed", "2026-01-01T00:00:00.000Z") for i in range(n)))
            db.executemany(
                "INSERT INTO history VALUES (?,?,?,?,?,?)",
                ((f"S-{bench_id}-{i + 1:06d}", "created", f"old-{i:06d}", "fill",
                  "2026-01-01T00:00:00.000Z", json.dumps({"vessel": f"vial_{i % 24}"}))
                 for i in range(n)))
        samples._write(fill)
    finally:
        samples.close()


async def measure(url: str, data: Path, bench_id: str, n: int) -> tuple[float, float]:
    """Medians (ms) of status -> reply and submit -> reply through `labctl serve` on `data`."""
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "labctl", "serve", "--config", str(CONFIG), "--broker", url,
        "--data-dir", str(data), "--time-scale", "1000", cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        async with BenchClient(url, bench_id, timeout=60) as c:
            for _ in range(3):  # warm-up
                await (await c.submit(WAIT_RECIPE, {})).result(timeout=120)
            status, submit = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                run = await c.submit(WAIT_RECIPE, {})
                submit.append(time.perf_counter() - t0)
                await run.result(timeout=60)
                t0 = time.perf_counter()
                await c.status()
                status.append(time.perf_counter() - t0)
            return statistics.median(status) * 1e3, statistics.median(submit) * 1e3
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        await asyncio.wait_for(agent.wait(), 30)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--history", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    bench_id = load_config(CONFIG).bench.id
    work = Path(tempfile.mkdtemp(prefix="bench-history-"))
    with MosquittoBroker(work / "broker") as broker:
        # the result of a real run, as the template of the seeded ones
        fresh = work / "template"
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "labctl", "serve", "--config", str(CONFIG), "--broker",
            broker.url, "--data-dir", str(fresh), "--time-scale", "1000", cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            async with BenchClient(broker.url, bench_id, timeout=60) as c:
                result = await (await c.submit(WAIT_RECIPE, {})).result(timeout=120)
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            await asyncio.wait_for(agent.wait(), 30)
        print(f"history seeded as published results of {len(json.dumps(result))} B each and "
              f"as many consumed samples; {args.n} submits + {args.n} status per point")
        sizes = [0, *args.history]
        dirs = {}
        for size in sizes:
            dirs[size] = work / f"history-{size}"
            dirs[size].mkdir()
            if size:
                seed(dirs[size], size, result, bench_id)
        figs: dict[int, list[tuple[float, float]]] = {s: [] for s in sizes}
        for _ in range(args.rounds):  # interleaved: load hits every size alike
            for size in sizes:
                figs[size].append(await measure(broker.url, dirs[size], bench_id, args.n))
    fresh_status = statistics.median(f[0] for f in figs[0])
    fresh_submit = statistics.median(f[1] for f in figs[0])
    for size in sizes:
        st = statistics.median(f[0] for f in figs[size])
        sub = statistics.median(f[1] for f in figs[size])
        print(f"history {size:6d} runs: status -> reply {st:6.2f} ms ({st / fresh_status:4.1f}x "
              f"fresh)   submit -> reply {sub:6.2f} ms ({sub / fresh_submit:4.1f}x fresh)")


if __name__ == "__main__":
    asyncio.run(main())
