"""Faults labctl does not survive yet, found by tests/test_fault_injection.py; each waits for
a fix in someone else's module (not collected by a plain `pytest` run; run it explicitly):

    .venv/bin/python -m pytest tests/fault_injection_findings.py -q

1. labctl/store/journal.py and labctl/bench.py: when the disk holding the data dir fills up
(not only the data folder), `Journal.append` writes part of a line (os.write returns a
short count), raises, and leaves the partial line in events.jsonl: the journal ends
mid-line. The bench's worker then fails inside `_finish` (its journal append raises before
`ticket.done` is set), so `Bench.wait(run_id)` never returns — `labctl run` and the MQTT
agent wait for ever — and the index keeps the run as "running".

2. labctl/bench.py with labctl/mqtt/agent.py: `labctl serve` killed (SIGKILL) in the middle
of a run and restarted: the run in progress and the runs queued behind it are marked
"interrupted" at start-up and nothing more happens to them — no result is ever published,
so an AI client waiting on `run.result()` waits for ever, and the queued submits the agent
had acknowledged are lost in effect (they never run).

3. labctl/client.py: a command sent during a broker restart storm can be lost for good.
The client resends unanswered commands only when it itself reconnects; when the broker
lost the agent's session in the crash (mosquitto saves it every second), a resend that
reaches the broker before the agent has subscribed again is dropped, and the client
never sends it again (seen with 5 SIGKILL restarts, 0.1 s down, 0.2 s up).

4. labctl/actions.py: a temperature hold whose heater fails as the hold starts completes.
The hold's watch fails a block that leaves its soak band, but one that never reaches it
(heater dead from the first second; the Omega's PV stays at ambient, 22 °C, for a 40 °C
hold of 5 min, about three time constants) is not noticed.

When fixed, move these tests into tests/test_fault_injection.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_fault_injection import (
    BY_DEVICE,
    MEASURE,
    MQTT_BENCH,
    WAIT,
    WAIT_RECIPE,
    broker_and_serve,
    eventually,
    journal_lines,
    recipe,
    run_started,
    run_with_fault,
    sim_bench,
    simulators,
    small_volume,
    storm,
)


async def test_disk_of_the_whole_data_dir_full_fails_the_run_with_the_journal_whole(
        tmp_path: Path) -> None:
    root = tmp_path / "runs"
    with small_volume(root, "4m"):
        async with sim_bench(root) as bench:

            def fill_the_disk() -> None:
                try:
                    with open(root / "filler", "wb") as f:
                        while True:
                            f.write(bytes(4096))
                            f.flush()
                except OSError:
                    pass  # full

            async def watch() -> None:
                async for ev in bench.subscribe():
                    if ev.get("event") == "step_started" and ev.get("step") == "measure":
                        fill_the_disk()
                        return

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.01)
            run_id = await bench.submit(recipe("disk_full", MEASURE), instigator="operator:t")
            try:
                # a run that ends at once on a full disk: 15 s is a generous bound
                result = await asyncio.wait_for(bench.wait(run_id), 15)
            finally:
                watcher.cancel()
                (root / "filler").unlink(missing_ok=True)
            assert result["status"] == "failed"
            journal_lines(root / run_id / "events.jsonl")
