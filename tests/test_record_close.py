"""A finished run's record is written in a worker thread (labctl.bench.service._finish), so
for a moment after its last transition the run has ended and its result.json is not there
yet. `Bench.wait` and `Bench.closed` wait for it; the TUI's record view asks `closed`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from labctl.bench import Bench
from labctl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
WAIT = {"schema": "labctl.recipe/1", "name": "wait", "version": "1",
        "description": "one short wait", "steps": [{"id": "w", "wait": "1 s"}]}


async def test_a_run_seen_ended_has_its_result_once_closed_returns(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "sim.toml")
    async with Bench(cfg, data_dir=tmp_path / "runs", time_scale=10000) as bench:
        events = bench.subscribe()
        run_id = await bench.submit(WAIT, {})

        async def ended() -> None:
            async for ev in events:
                if ev.get("run_id") == run_id and ev.get("event") == "transition" \
                        and ev.get("dest") == "completed":
                    return

        await asyncio.wait_for(ended(), 60)
        assert bench.tickets[run_id].machine.final  # ended, its record maybe still written
        await bench.closed(run_id)
        result = json.loads((tmp_path / "runs" / run_id / "result.json").read_text())
        assert result["status"] == "completed"
        assert bench.store.index.get_run(run_id)["status"] == "completed"
        await bench.closed("no-such-run")  # unknown: at once
