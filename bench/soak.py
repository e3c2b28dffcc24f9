"""Soak: hundreds of recipe runs on the simulated bench through the MQTT agent (prints
figures, asserts nothing).

Starts its own mosquitto on a free port and `labctl serve` on config/sim.toml at a high time
scale in a process of its own, then submits runs through the client SDK, a few queued at a
time, exactly as an AI server would. Each run fills the cell vial from the EC reservoir,
stirs, measures the open-circuit potential and drains the vial to waste, so the simulated
world is the same before every run, but for the EC it takes: the bench's inventory debits
0.5 mL a run and would refuse run 401 on a 200 mL reservoir, so the soak refills it over
MQTT (`inventory refill`, as the agent's `--operator`) every REFILL_EVERY runs. Prints:

- runs per minute (wall clock) and how the runs ended;
- the agent's resident memory (RSS) after the first run, at run 200 (--rss-from) and at the
  end, with samples in between — it must stay flat after warm-up (<= 2 MiB from run 200 to
  the end, issue 18); with --tracemalloc the agent runs under tracemalloc and the biggest
  allocation growths between those two points are printed (what grows, and where);
- lost results (a run whose result never arrived) and duplicated ones (delivered more than
  once) — both must be zero.

    .venv/bin/python bench/soak.py [--runs 1000] [--queue 4] [--time-scale 1000]
                                   [--rss-from 200] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from labctl.mqtt.payloads import LIST_LIMIT_MAX  # noqa: E402

BENCH_ID = "soak-bench"
#: the soak's client on its private broker (no credentials): the agent's operator, so it may
#: record refills
SOAK_SENDER = "anonymous"
#: runs between two refills of the EC reservoir (0.5 mL a run)
REFILL_EVERY = 100
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


def listing_limit(runs: int) -> int:
    """How many runs to ask the agent's index for: every run of the soak (and the warm-up),
    within the most one `list` may ask for (the agent refuses more)."""
    return min(runs + 10, LIST_LIMIT_MAX)


# `labctl serve` under tracemalloc: SIGUSR1 takes a snapshot; the first is the baseline, each
# later one writes the biggest growths since the baseline (with tracebacks) to a file.
TRACED_AGENT = r"""
import signal, sys, tracemalloc
tracemalloc.start(12)
state = {}
def snap(signum, frame):
    s = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<unknown>")])
    if "base" not in state:
        state["base"] = s
        return
    with open(sys.argv[1], "w") as out:
        for stat in s.compare_to(state["base"], "traceback")[:12]:
            out.write(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks\n")
            out.write("\n".join("      " + line for line in stat.traceback.format()[-8:]))
            out.write("\n")
signal.signal(signal.SIGUSR1, snap)
sys.argv = ["labctl"] + sys.argv[2:]
from labctl.cli import main
main()
"""


def start_agent(broker_url: str, data_dir: Path, time_scale: float,
                trace_to: Path | None = None) -> subprocess.Popen[bytes]:
    serve = ["serve", "--config", str(ROOT / "config" / "sim.toml"), "--broker", broker_url,
             "--bench-id", BENCH_ID, "--data-dir", str(data_dir), "--time-scale", str(time_scale),
             "--operator", SOAK_SENDER]
    head = ([sys.executable, "-c", TRACED_AGENT, str(trace_to)] if trace_to is not None
            else [sys.executable, "-m", "labctl"])
    return subprocess.Popen(head + serve, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


async def soak(args: argparse.Namespace) -> int:
    with (contextlib.nullcontext(os.environ["SOAK_KEEP"]) if os.environ.get("SOAK_KEEP")
          else tempfile.TemporaryDirectory(prefix="labctl-soak-")) as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.start()
        trace_to = Path(tmp) / "tracemalloc.txt" if args.tracemalloc else None
        agent = start_agent(broker.url, Path(tmp) / "runs", args.time_scale, trace_to)
        try:
            code = await drive(args, broker.url, agent.pid, trace_to)
            if trace_to is not None and trace_to.exists():
                print(f"  biggest allocation growths from run {args.rss_from} to the end "
                      "(tracemalloc):")
                print(trace_to.read_text())
            return code
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(30)
            broker.stop()


async def drive(args: argparse.Namespace, url: str, agent_pid: int,
                trace_to: Path | None) -> int:
    async with BenchClient(url, BENCH_ID, timeout=120, client_id="soak-client") as client:
        # warm-up: one run, so the start figure is the agent at work, not half-imported
        first = await client.submit(SOAK_RECIPE)
        warm = await first.result(timeout=args.run_timeout)
        if warm["status"] != "completed":
            print(f"the soak recipe did not complete on this bench: {warm['errors']}")
            return 1
        rss_start = rss_kib(agent_pid)
        samples = [(0, rss_start)]
        rss_from: int | None = None
        statuses: dict[str, str] = {}
        failures: list[str] = []
        lost: list[str] = []
        pending: list[Run] = []
        submitted = 0
        t0 = time.monotonic()
        while submitted < args.runs or pending:
            while submitted < args.runs and len(pending) < args.queue:
                if submitted and submitted % REFILL_EVERY == 0:
                    await client.inventory("refill", vessel="res_ec",
                                           amount=f"{REFILL_EVERY * 0.5:g} mL", lot="SOAK")
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
            if done == args.rss_from:
                rss_from = rss_kib(agent_pid)
                if trace_to is not None:
                    os.kill(agent_pid, signal.SIGUSR1)  # the baseline snapshot
            if done % max(1, args.runs // 10) == 0:
                samples.append((done, rss_kib(agent_pid)))
        elapsed = time.monotonic() - t0
        await asyncio.sleep(1.0)  # late duplicates, if any, arrive meanwhile
        rss_end = rss_kib(agent_pid)
        if trace_to is not None and rss_from is not None:
            os.kill(agent_pid, signal.SIGUSR1)
            for _ in range(600):  # a snapshot of a big heap takes a while
                await asyncio.sleep(0.1)
                if await asyncio.to_thread(trace_to.exists):
                    await asyncio.sleep(0.5)
                    break
        deliveries = {rid: n for rid, n in client.result_deliveries.items()
                      if rid != first.run_id}
        duplicated = sorted(rid for rid, n in deliveries.items() if n > 1)
        never = sorted(set(statuses) - set(deliveries)) + lost
        listed = await client.list(limit=listing_limit(args.runs))
        ours = set(statuses) | set(lost)
        missing_from_index = len(ours) - len(ours & {r.get("run_id") for r in listed})

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
    if rss_from is not None:
        print(f"  agent RSS at run {args.rss_from:<5} {rss_from / 1024:8.1f} MiB   "
              f"({(rss_end - rss_from) / 1024:+.1f} MiB from run {args.rss_from} to the end;"
              " goal <= 2 MiB)")
    print("  RSS samples (runs: MiB) " + ", ".join(f"{n}: {kib / 1024:.1f}"
                                                   for n, kib in samples))
    print(f"  lost results           {len(never)}" + (f"  {never[:5]}" if never else ""))
    print(f"  duplicated results     {len(duplicated)}"
          + (f"  {duplicated[:5]}" if duplicated else ""))
    print(f"  runs in the agent's index (newest {listing_limit(args.runs)} asked): "
          f"{len(listed)}; of this soak's runs missing there: "
          f"{missing_from_index if len(ours) <= len(listed) else 'n/a (more than listed)'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000, help="runs to submit (default 1000)")
    ap.add_argument("--queue", type=int, default=4, help="runs kept queued at once")
    ap.add_argument("--time-scale", type=float, default=1000.0)
    ap.add_argument("--run-timeout", type=float, default=120.0,
                    help="wall seconds to wait for one result before calling it lost")
    ap.add_argument("--rss-from", type=int, default=200,
                    help="the run after which RSS must stay flat (default 200)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="run the agent under tracemalloc; print what grew after --rss-from")
    args = ap.parse_args()
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
