"""One bench-service protocol (labctl.protocol.BenchService): the same calls, made the same
way, on a bench in this process (labctl.bench.local.LocalService) and on one behind an
agent and a real mosquitto (labctl.client.BenchClient), answer alike: the same problem
type for an invalid recipe, the same error for a refusal, EventPayload documents, status
and run rows. Also: one problem type from the validator to the TUI, and a typed resume
check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_broker import MosquittoBroker
from mqtt_helpers import ROOT, TEST_RECIPES, WAIT, WAIT_RECIPE, eventually, serve_bench

from labctl.bench import Bench, ResumeCheck
from labctl.bench.local import LocalService
from labctl.client import BenchClient
from labctl.config import load_config
from labctl.problems import BenchError, Issue
from labctl.protocol import BenchService, Submitted
from labctl.recipe.plan import Plan

BAD = {"duration": "3 kg"}  # a mass where a time is declared


async def next_event(events: AsyncIterator[dict[str, Any]], run_id: str,
                     pending: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
    """The first event of `run_id` (EventPayload document)."""
    ev = await asyncio.wait_for(pending, WAIT)
    while ev.get("run_id") != run_id:
        ev = await asyncio.wait_for(events.__anext__(), WAIT)
    return ev


async def exercise(service: BenchService) -> dict[str, Any]:
    """What a front end does, through the protocol only; what it saw."""
    assert isinstance(service, BenchService)
    issues = await service.plan(WAIT_RECIPE, BAD)
    assert issues and all(type(i) is Issue for i in issues), issues
    assert issues[0].path.startswith("parameters.duration"), issues
    with pytest.raises(BenchError) as invalid:
        await service.submit(WAIT_RECIPE, BAD)
    assert invalid.value.code == "invalid_recipe"
    assert invalid.value.issues == issues
    with pytest.raises(BenchError) as idle:
        await service.control("pause")
    assert idle.value.code == "refused" and "no run is in progress" in idle.value.message
    with pytest.raises(BenchError) as unknown:
        await service.control("cancel", "no-such-run")
    assert unknown.value.code == "not_found"

    events = service.events()
    pending = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0.5)  # the subscription is in place
    sub = await service.submit(WAIT_RECIPE, {"duration": "2 h"}, request={"id": "req-p"})
    assert isinstance(sub, Submitted) and sub.queue_position == 0
    ev = await next_event(events, sub.run_id, pending)
    assert {"bench_id", "seq", "time", "type", "data"} <= set(ev), ev
    status: dict[str, Any] = {}

    async def running() -> bool:
        status.update(await service.status())
        return status.get("state") == "running"

    for _ in range(int(WAIT / 0.05)):
        if await running():
            break
        await asyncio.sleep(0.05)
    assert status["run_id"] == sub.run_id and status["recipe"] == "mqtt_wait", status
    rows = await service.runs(5)
    assert rows[0]["run_id"] == sub.run_id
    await service.control("abort")
    await events.aclose()
    return {"issues": issues, "status": sorted(status), "event": sorted(ev),
            "row": sorted(rows[0]), "run_id": sub.run_id}


def sim_config() -> Any:
    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.bench.recipes_dir = str(TEST_RECIPES)
    return cfg


async def test_a_local_and_a_remote_bench_answer_the_protocol_alike(tmp_path: Path) -> None:
    async with Bench(sim_config(), data_dir=tmp_path / "local", time_scale=1000.0) as bench:
        local = await exercise(LocalService(bench, TEST_RECIPES))
        await bench.wait(local["run_id"])
    with MosquittoBroker(tmp_path / "broker") as broker:
        async with serve_bench(broker.url, tmp_path / "remote") as served, \
                BenchClient(broker.url, "sim-bench-1") as client:
            remote = await exercise(client)
            await served.bench.wait(remote["run_id"])
    assert local["issues"] == remote["issues"]
    for key in ("status", "event"):
        assert local[key] == remote[key], key
    assert set(local["row"]) <= set(remote["row"]) | {"owner"}


def test_one_problem_type_from_the_validator_to_the_screen() -> None:
    from labctl.mqtt.payloads import Issue as WireIssue
    from labctl.recipe.issues import Issue as RecipeIssue
    from labctl.tui.backend import Problem

    assert RecipeIssue is WireIssue is Problem is Issue


async def test_check_resume_says_what_a_resume_would_do_as_a_typed_result(
        tmp_path: Path) -> None:
    async with Bench(sim_config(), data_dir=tmp_path / "runs", time_scale=1000.0) as bench:
        run_id = await bench.submit(TEST_RECIPES / "mqtt_wait.json", {"duration": "2 h"})
        await eventually(lambda: bench.status()["state"] == "running", what="running")
        await bench.abort()
        await bench.wait(run_id)
        check = bench.check_resume(run_id)
    assert isinstance(check, ResumeCheck)
    assert isinstance(check.plan, Plan)
    assert check.plan.sha256 == check.document["sha256"]
    assert check.in_doubt == ["first"]  # the wait it was in; a wait may be repeated
    assert check.replay.completed == []
    assert check.record.run_id == run_id
