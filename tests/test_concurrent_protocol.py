"""Concurrency through the bench-service protocol, the same calls on a bench in this
process (LocalService) and on one behind an agent and a real mosquitto (BenchClient):
two runs at once listed in status `running`, the queue ordered by priority, a queued run
cancelled, one run paused by its id while the other goes on, abort of every running run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from mqtt_broker import MosquittoBroker
from mqtt_helpers import ROOT, TEST_RECIPES, WAIT, WAIT_RECIPE, serve_bench

from labctl.bench import Bench
from labctl.bench.local import LocalService
from labctl.client import BenchClient
from labctl.config import load_config
from labctl.problems import BenchError
from labctl.protocol import BenchService

LONG = {"duration": "2 h"}


async def until(service: BenchService, check: Any, what: str) -> dict[str, Any]:
    """Poll status until `check(status)`; the timeout only bounds a hang."""
    async with asyncio.timeout(WAIT):
        while True:
            st = await service.status()
            if check(st):
                return st
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover


def states(st: dict[str, Any]) -> dict[str, str]:
    return {r["run_id"]: r["state"] for r in st.get("running") or []}


async def exercise(service: BenchService) -> list[str]:
    a = (await service.submit(WAIT_RECIPE, LONG)).run_id
    b = (await service.submit(WAIT_RECIPE, LONG)).run_id
    st = await until(service, lambda s: states(s) == {a: "running", b: "running"},
                     "two runs at once")
    assert st["run_id"] == a  # the first running run, for clients of a one-run bench
    low = (await service.submit(WAIT_RECIPE, LONG)).run_id
    high = await service.submit(WAIT_RECIPE, LONG, priority=5)
    assert high.queue_position == 1  # ahead of the earlier, lower-priority run
    st = await service.status()
    assert st["queue"] == [high.run_id, low], st["queue"]
    await service.control("cancel", low)
    st = await service.status()
    assert st["queue"] == [high.run_id]
    await service.control("pause", b)
    st = await until(service, lambda s: states(s).get(b) == "paused", "b paused")
    assert states(st)[a] == "running"
    await service.control("abort")  # every running run
    st = await until(service, lambda s: list(states(s)) == [high.run_id],
                     "the queued run starts when the others ended")
    await service.control("abort", high.run_id)
    return [a, b, low, high.run_id]


def sim_config() -> Any:
    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.bench.recipes_dir = str(TEST_RECIPES)
    cfg.bench.concurrency = 2
    return cfg


async def test_local_concurrency_priority_cancel_and_per_run_control(tmp_path: Path) -> None:
    async with Bench(sim_config(), data_dir=tmp_path / "runs", time_scale=1000.0) as bench:
        ids = await exercise(LocalService(bench, TEST_RECIPES))
        results = [await bench.wait(r) for r in ids]
    assert [r["status"] for r in results] == ["aborted"] * 4


async def test_remote_concurrency_priority_cancel_and_per_run_control(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as broker:
        async with serve_bench(broker.url, tmp_path / "remote", concurrency=2) as served, \
                BenchClient(broker.url, "sim-bench-1") as client:
            ids = await exercise(client)
            results = [await served.bench.wait(r) for r in ids]
    assert [r["status"] for r in results] == ["aborted"] * 4


async def test_submits_side_by_side_in_one_process_each_get_a_free_vial(
        tmp_path: Path) -> None:
    """Two callers of one LocalService (a script's gather, the TUI beside a campaign) submit
    a recipe whose vial is assigned from a rack of two: each run gets a vial of its own.
    Planned side by side, both chose the first free vial and the second was refused as
    claimed."""
    cfg = load_config(ROOT / "tests" / "configs" / "sample_bench.toml")
    recipe = ROOT / "tests" / "recipes" / "sample_make.json"
    async with Bench(cfg, data_dir=tmp_path / "runs", time_scale=1000.0) as bench:
        service = LocalService(bench, ROOT / "tests" / "recipes")
        bench.runs.hold()  # nothing starts: both vials stay claimed by queued runs
        first, second = await asyncio.gather(service.submit(recipe, {}),
                                             service.submit(recipe, {}))
        vials = {bench.runs.tickets[s.run_id].plan.parameters_typed["vial"]["value"]
                 for s in (first, second)}
        assert vials == {"t1", "t2"}
        with pytest.raises(BenchError, match="no free vial"):  # the rack is full now
            await service.submit(recipe, {})
