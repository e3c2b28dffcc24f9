"""Soak: hundreds of recipe runs on the simulated bench through the MQTT agent (prints
figures, asserts nothing).

Starts its own mosquitto on a free port and `labctl serve` on config/sim.toml at a high time
scale in a process of its own, then submits runs through the client SDK, a few queued at a
time, exactly as an AI server would. Each run fills the cell vial from the EC reservoir,
stirs, measures the open-circuit potential and drains the vial to waste, so the simulated
world is the same before every run. Prints:

- runs per minute (wall clock) and how the runs ended;
- the agent's resident memory (RSS) after the first run and at the end, with samples in
  between — it must stay flat;
- lost results (a run whose result never arrived) and duplicated ones (delivered more than
  once) — both must be zero.

    .venv/bin/python bench/soak.py [--runs 300] [--queue 4] [--time-scale 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.client import BenchClient, Run  # noqa: E402
from labctl.mqtt.localbroker import MosquittoBroker  # noqa: E402

BENCH_ID = "soak-bench"
SOAK_RECIPE: dict[str, Any] = {
    "schema": "labctl.recipe/1", "name": "soak_cycle", "version": "1",
    "description": "Fill the cell vial with EC, stir, measure OCV, drain it to waste.",
    "materials": {"EC": {"name": "ethylene carbonate", "location": "res_ec"}},
    "steps": [
        {"id": "init", "parallel": [
            {"id": "init_ec", "device": "pump_ec", "action": "initialize", "idempotent": True},
            {"id": "init_dmc", "device": "pump_dmc", "action": "initialize",
             "idempotent": True}]},
        {"id": "to_vial", "device": "sel_valve", "action": "move",
         "args": {"position": "cell_vial"}},
        {"id": "fill", "device": "pump_ec", "action": "transfer",
         "args": {"volume": "0.5 mL", "from": "res_ec", "to": "cell_vial", "flow": "20 mL/min"}},
        {"id": "mix", "device": "hotplate", "action": "stir",
         "args": {"speed": "300 rpm", "duration": "30 s"}},
        {"id": "ocv", "device": "potentiostat", "action": "ocv",
         "args": {"duration": "10 s", "sample_interval": "1 s"}},
        {"id": "draw", "device": "pump_dmc", "action": "aspirate",
         "args": {"volume": "0.5 mL", "from": "cell_vial", "flow": "15 mL/min"}},
        {"id": "to_waste", "device": "sel_valve", "action": "move",
         "args": {"position": "waste"}},
        {"id": "out", "device": "pump_dmc", "action": "dispense",
         "args": {"volume": "0.5 mL", "to": "waste", "flow": "20 mL/min"}},
    ],
}


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_agent(broker_url: str, data_dir: Path, time_scale: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "labctl", "serve", "--config", str(ROOT / "config" / "sim.toml"),
         "--broker", broker_url, "--bench-id", BENCH_ID, "--data-dir", str(data_dir),
         "--time-scale", str(time_scale)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def soak(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="labctl-soak-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.start()
        agent = start_agent(broker.url, Path(tmp) / "runs", args.time_scale)
        try:
            return await drive(args, broker.url, agent.pid)
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(30)
            broker.stop()


async def drive(args: argparse.Namespace, url: str, agent_pid: int) -> int:
    async with BenchClient(url, BENCH_ID, timeout=120, client_id="soak-client") as client:
        # warm-up: one run, so the start figure is the agent at work, not half-imported
        first = await client.submit(SOAK_RECIPE)
        warm = await first.result(timeout=args.run_timeout)
        if warm["status"] != "completed":
            print(f"the soak recipe did not complete on this bench: {warm['errors']}")
            return 1
        rss_start = rss_kib(agent_pid)
        samples = [(0, rss_start)]
        statuses: dict[str, str] = {}
        failures: list[str] = []
        lost: list[str] = []
        pending: list[Run] = []
        submitted = 0
        t0 = time.monotonic()
        while submitted < args.runs or pending:
            while submitted < args.runs and len(pending) < args.queue:
                pending.append(await client.submit(SOAK_RECIPE, request=f"soak-{submitted}"))
                submitted += 1
            run = pending.pop(0)
            try:
                result = await run.result(timeout=args.run_timeout)
                statuses[run.run_id] = str(result["status"])
                if result["status"] != "completed":
                    failures.append(f"{run.run_id}: {result['errors'][:1]}")
            except TimeoutError:
                lost.append(run.run_id)
            done = len(statuses) + len(lost)
            if done % max(1, args.runs // 10) == 0:
                samples.append((done, rss_kib(agent_pid)))
        elapsed = time.monotonic() - t0
        await asyncio.sleep(1.0)  # late duplicates, if any, arrive meanwhile
        rss_end = rss_kib(agent_pid)
        deliveries = {rid: n for rid, n in client.result_deliveries.items()
                      if rid != first.run_id}
        duplicated = sorted(rid for rid, n in deliveries.items() if n > 1)
        never = sorted(set(statuses) - set(deliveries)) + lost
        listed = await client.list(limit=args.runs + 10)

    ended: dict[str, int] = {}
    for s in statuses.values():
        ended[s] = ended.get(s, 0) + 1
    print(f"labctl soak: {args.runs} runs of '{SOAK_RECIPE['name']}' through labctl serve "
          f"(time scale {args.time_scale:g}, {args.queue} queued at a time)")
    print(f"  wall time              {elapsed:8.1f} s")
    print(f"  runs per minute        {args.runs / elapsed * 60:8.1f}")
    print(f"  ended                  {ended}")
    for failure in failures[:5]:
        print(f"    {failure}")
    print(f"  agent RSS after run 1  {rss_start / 1024:8.1f} MiB")
    print(f"  agent RSS at the end   {rss_end / 1024:8.1f} MiB   "
          f"({(rss_end - rss_start) / 1024:+.1f} MiB over {args.runs} runs)")
    print("  RSS samples (runs: MiB) " + ", ".join(f"{n}: {kib / 1024:.1f}"
                                                   for n, kib in samples))
    print(f"  lost results           {len(never)}" + (f"  {never[:5]}" if never else ""))
    print(f"  duplicated results     {len(duplicated)}"
          + (f"  {duplicated[:5]}" if duplicated else ""))
    print(f"  runs in the agent's index: {len(listed)} (submitted {args.runs + 1})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300, help="runs to submit (default 300)")
    ap.add_argument("--queue", type=int, default=4, help="runs kept queued at once")
    ap.add_argument("--time-scale", type=float, default=1000.0)
    ap.add_argument("--run-timeout", type=float, default=120.0,
                    help="wall seconds to wait for one result before calling it lost")
    args = ap.parse_args()
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
