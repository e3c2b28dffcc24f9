"""The executor through the Bench service, against simulated instruments on real ptys:
completion with provenance, parallel groups, pause/resume, abort and e-stop at different
points (devices checked safe on the simulators' side), device faults, retries, on_error,
timeouts and illegal requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from labctl.bench import Bench
from labctl.run_machine import IllegalTransition, RunState
from tests.executor_support import action, config, parallel, plan, wait

TIME_SCALE = 1000.0
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    b = Bench(config(), data_dir=tmp_path / "runs", time_scale=TIME_SCALE)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


def sims(b: Bench) -> dict[str, Any]:
    return b.instruments.simulation.simulators


def world(b: Bench) -> Any:
    return b.instruments.simulation.world


def events(b: Bench, run_id: str) -> list[dict[str, Any]]:
    return b.store.open(run_id).events()


async def wait_for(pred: Any, what: str, timeout: float = 30.0) -> None:
    """Poll a condition (generous timeout: the machine is shared)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def step_started(b: Bench, run_id: str, step: str) -> bool:
    return any(e["event"] == "step_started" and e["step"] == step for e in events(b, run_id))


def all_safe(b: Bench) -> dict[str, bool]:
    return {name: sim.is_safe() for name, sim in sims(b).items()}


async def test_run_completes_with_provenance_matching_the_world(bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("fill",
             action(cfg, "init_a", "pump_a", "initialize"),
             action(cfg, "add_dmc", "pump_a", "transfer", volume="3 mL", from_="res_dmc",
                    to="vial", flow="20 mL/min"),
             action(cfg, "mix", "hotplate", "stir", speed="400 rpm", duration="2 min"))
    run_id = await bench.submit(p, instigator="operator:alice")
    result = await bench.wait(run_id)
    assert result["status"] == "completed", result
    assert all(all_safe(bench).values()), all_safe(bench)

    # the world received what the record says
    dmc_g = world(bench).composition("vial")["DMC"]
    rec = bench.store.open(run_id)
    meta = json.loads(rec.metadata_path.read_text())
    [addition] = meta["additions"]
    assert addition["material"] == "DMC" and addition["vessel"] == "vial"
    assert addition["requested"] == pytest.approx(0.003)
    assert addition["actual"] == pytest.approx(dmc_g / 1.07 / 1000, rel=1e-6)
    assert addition["order"] == 1 and addition["time"].endswith("Z")
    [mixing] = meta["mixing"]
    assert mixing["speed_rpm"] == 400 and mixing["duration_s"] == pytest.approx(120)
    # who, where, what with
    assert meta["instigator"] == {"kind": "operator", "id": "alice"}
    assert meta["bench"]["id"] == "exec-test-bench"
    assert meta["fidelity"]["level"] == "simulated"
    assert meta["fidelity"]["simulators"]["pump_a"]["kind"] == "tricontinent-c3000"
    assert meta["instruments"]["pump_a"]["identity"]["firmware"]
    assert meta["instruments"]["pump_a"]["params"]["syringe_volume"] == "5 mL"
    assert meta["software"]["python"] and meta["software"]["version"]
    assert meta["recipe"]["sha256"] == p.sha256
    mat = {m["id"]: m for m in meta["materials"]}
    assert mat["DMC"]["inchikey"] == "IEJIGPNLZYLLBP-UHFFFAOYSA-N"
    assert mat["DMC"]["lot"] == "SIM-DMC-001"
    steps = {s["id"]: s for s in meta["steps"]}
    assert list(steps) == ["init_a", "add_dmc", "mix"]
    assert all(s["status"] == "completed" and s["started"] <= s["ended"] for s in steps.values())
    assert meta["times"]["started"] <= meta["times"]["ended"]
    assert meta["outcome"]["status"] == "completed" and meta["outcome"]["in_doubt"] == []
    assert result["fidelity"]["level"] == "simulated"
    # the index knows the run
    row = bench.store.index.get_run(run_id)
    assert row is not None and row["status"] == "completed" and row["fidelity"] == "simulated"


async def test_parallel_branches_run_concurrently(bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("par",
             parallel("both",
                      action(cfg, "a", "pump_a", "initialize"),
                      action(cfg, "b", "pump_b", "initialize")),
             parallel("fill",
                      action(cfg, "fa", "pump_a", "transfer", volume="2 mL", from_="res_dmc",
                             to="vial"),
                      action(cfg, "fb", "pump_b", "transfer", volume="2 mL", from_="res_ec",
                             to="vial")))
    run_id = await bench.submit(p, instigator="operator:t")
    assert (await bench.wait(run_id))["status"] == "completed"
    evs = [(e["event"], e.get("step")) for e in events(bench, run_id)
           if e["event"] in ("step_started", "step_finished")]
    # both branches started before either finished
    i_fin = min(evs.index(("step_finished", "fa")), evs.index(("step_finished", "fb")))
    assert evs.index(("step_started", "fa")) < i_fin
    assert evs.index(("step_started", "fb")) < i_fin
    comp = world(bench).composition("vial")
    assert comp["DMC"] == pytest.approx(2 * 1.07, rel=1e-6)
    assert comp["EC"] == pytest.approx(2 * 1.32, rel=1e-6)


async def test_pause_in_a_wait_is_immediate_and_resume_continues(bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("pw",
             action(cfg, "init", "pump_a", "initialize"),
             wait("soak", 3600),
             action(cfg, "add", "pump_a", "transfer", volume="1 mL", from_="res_dmc", to="vial"))
    run_id = await bench.submit(p, instigator="operator:t")
    await wait_for(lambda: step_started(bench, run_id, "soak"), "the wait to start")
    assert await bench.pause() in (RunState.PAUSING, RunState.PAUSED)
    await wait_for(lambda: bench.status()["state"] == "paused", "paused")
    assert all(all_safe(bench).values())
    with pytest.raises(IllegalTransition, match="cannot pause a run that is paused"):
        await bench.pause()
    # nothing starts while paused (3600 s of simulated wait is 3.6 s of wall time)
    await asyncio.sleep(0.5)
    assert not step_started(bench, run_id, "add")
    assert await bench.resume() == RunState.RUNNING
    result = await bench.wait(run_id)
    assert result["status"] == "completed"
    trig = [e["trigger"] for e in events(bench, run_id) if e["event"] == "transition"]
    assert trig == ["validate", "validated", "start", "pause", "paused", "resume", "complete"]


async def test_pause_during_an_action_takes_effect_at_the_step_boundary(bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("pa",
             action(cfg, "init", "pump_a", "initialize"),
             action(cfg, "slow", "pump_a", "transfer", volume="5 mL", from_="res_dmc",
                    to="vial", flow="1 mL/min"),
             action(cfg, "next", "pump_a", "transfer", volume="1 mL", from_="res_dmc",
                    to="vial"))
    run_id = await bench.submit(p, instigator="operator:t")
    await wait_for(lambda: step_started(bench, run_id, "slow"), "the slow transfer")
    await bench.pause()
    assert bench.status()["state"] == "pausing"  # the transfer runs to its end
    await wait_for(lambda: bench.status()["state"] == "paused", "paused", timeout=60)
    ev = events(bench, run_id)
    assert any(e["event"] == "step_finished" and e["step"] == "slow" for e in ev)
    assert not step_started(bench, run_id, "next")
    assert sims(bench)["pump_a"].is_safe()
    await bench.resume()
    assert (await bench.wait(run_id))["status"] == "completed"
    assert world(bench).composition("vial")["DMC"] == pytest.approx(6 * 1.07, rel=1e-6)


async def test_abort_mid_transfer_leaves_every_device_safe(bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("ab",
             action(cfg, "init", "pump_a", "initialize"),
             parallel("work",
                      action(cfg, "heat", "hotplate", "stir", speed="600 rpm",
                             duration="2 h", temperature="60 degC"),
                      action(cfg, "slow", "pump_a", "transfer", volume="5 mL",
                             from_="res_dmc", to="vial", flow="1 mL/min")))
    run_id = await bench.submit(p, instigator="operator:t")
    await wait_for(lambda: sims(bench)["pump_a"].busy and not sims(bench)["hotplate"].is_safe()
                   and step_started(bench, run_id, "slow"), "the transfer and stirring")
    assert await bench.abort() == RunState.ABORTED
    assert all_safe(bench) == {"pump_a": True, "pump_b": True, "hotplate": True}
    result = await bench.wait(run_id)
    assert result["status"] == "aborted"
    ev = events(bench, run_id)
    kinds = [e["event"] for e in ev]
    assert "step_cancelled" in kinds and "safe_state" in kinds
    # the interrupted steps are in doubt (they may have moved material)
    assert set(result["in_doubt"]) == {"heat", "slow"}


async def test_abort_while_paused(bench: Bench) -> None:
    p = plan("abp", action(bench.cfg, "init", "pump_a", "initialize"), wait("w", 3600),
             action(bench.cfg, "never", "pump_a", "initialize"))
    run_id = await bench.submit(p, instigator="operator:t")
    await wait_for(lambda: step_started(bench, run_id, "w"), "the wait")
    await bench.pause()
    await wait_for(lambda: bench.status()["state"] == "paused", "paused")
    assert await bench.abort() == RunState.ABORTED
    assert not step_started(bench, run_id, "never")
    assert all(all_safe(bench).values())


async def test_estop_makes_everything_safe_at_once(bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("es", action(cfg, "heat", "hotplate", "stir", speed="800 rpm", duration="2 h",
                          temperature="70 degC"))
    run_id = await bench.submit(p, instigator="operator:t")
    await wait_for(lambda: sims(bench)["hotplate"].motor_on and sims(bench)["hotplate"].heater_on,
                   "the hotplate to heat and stir")
    assert await bench.estop() == RunState.ABORTED
    assert all(all_safe(bench).values())
    assert (await bench.wait(run_id))["status"] == "aborted"
    assert any(e["event"] == "estop" for e in events(bench, run_id))
    # the queue is held after an e-stop until resume()
    run2 = await bench.submit(plan("after", wait("w", 1)), instigator="operator:t")
    await asyncio.sleep(0.3)
    assert bench.queue_position(run2) is not None and bench.status()["state"] == "held"
    await bench.resume()
    assert (await bench.wait(run2))["status"] == "completed"


async def test_device_fault_fails_the_run_naming_device_step_and_vendor_error(
        bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("fault",
             action(cfg, "init", "pump_a", "initialize"),
             action(cfg, "stir", "hotplate", "stir", speed="300 rpm", duration="1 h"),
             action(cfg, "add", "pump_a", "transfer", volume="2 mL", from_="res_dmc",
                    to="vial"),
             action(cfg, "after", "pump_b", "initialize"))
    p.steps[1:3] = [parallel("pp", p.steps[1], p.steps[2])]
    run_id = await bench.submit(p, instigator="operator:t")
    await wait_for(lambda: step_started(bench, run_id, "add"), "the transfer")
    sims(bench)["pump_a"].inject_deferred(9)  # plunger overload during the next move
    result = await bench.wait(run_id)
    assert result["status"] == "failed"
    [err] = result["errors"][:1]
    assert err["step"] == "add" and err["device"] == "pump_a"
    assert err["code"] == 9 and "overload" in err["message"]
    assert all(all_safe(bench).values())  # the stirring branch was stopped too
    assert not step_started(bench, run_id, "after")
    ev = events(bench, run_id)
    i_safe = max(i for i, e in enumerate(ev) if e["event"] == "safe_state")
    i_fail = next(i for i, e in enumerate(ev) if e["event"] == "transition"
                  and e["trigger"] == "fail")
    assert i_safe < i_fail  # safe state first, then the run is failed


async def test_retry_after_a_vendor_error_then_success(bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("retry", action(cfg, "init", "pump_a", "initialize", retries=2))
    run_id = await bench.submit(p, instigator="operator:t")
    sims(bench)["pump_a"].faults.error = 1  # the first command answers "initialization failure"
    result = await bench.wait(run_id)
    assert result["status"] == "completed"
    ev = [e for e in events(bench, run_id) if e.get("step") == "init"]
    assert [e["event"] for e in ev] == ["step_started", "step_failed", "step_started",
                                        "step_finished"]
    assert ev[1]["retrying"] is True and ev[1]["code"] == 1


async def test_a_transfer_is_never_retried_automatically(bench: Bench) -> None:
    """A failed transfer may have moved part of its volume and the pump cannot say how much:
    even a plan that asks for retries (validation refuses them) attempts it once and fails."""
    cfg = bench.cfg
    first = await bench.submit(plan("init", action(cfg, "init", "pump_a", "initialize")),
                               instigator="operator:t")
    assert (await bench.wait(first))["status"] == "completed"
    p = plan("no-retry", action(cfg, "add", "pump_a", "transfer", volume="1 mL",
                                from_="res_dmc", to="vial", retries=2, on_error="retry"))
    sims(bench)["pump_a"].faults.error = 1  # the transfer's first command is refused
    run_id = await bench.submit(p, instigator="operator:t")
    result = await bench.wait(run_id)
    assert result["status"] == "failed", result
    ev = [e for e in events(bench, run_id) if e.get("step") == "add"]
    assert [e["event"] for e in ev] == ["step_started", "step_failed"], ev
    assert ev[1]["retrying"] is False


async def test_on_error_continue_records_the_error_and_goes_on(bench: Bench) -> None:
    cfg = bench.cfg
    p = plan("cont",
             action(cfg, "init", "pump_a", "initialize", on_error="continue"),
             action(cfg, "init_b", "pump_b", "initialize"))
    sims(bench)["pump_a"].faults.error = 1
    run_id = await bench.submit(p, instigator="operator:t")
    result = await bench.wait(run_id)
    assert result["status"] == "completed"
    assert result["errors"][0]["step"] == "init" and result["errors"][0]["continued"]
    assert sims(bench)["pump_b"].initialized


async def test_step_timeout_fails_the_run(bench: Bench) -> None:
    p = plan("to", wait("long", 3600, timeout_s=60))
    run_id = await bench.submit(p, instigator="operator:t")
    result = await bench.wait(run_id)
    assert result["status"] == "failed"
    assert result["errors"][0]["type"] == "StepTimeout"
    assert result["errors"][0]["step"] == "long"


async def test_control_without_a_run_is_refused_clearly(bench: Bench) -> None:
    with pytest.raises(IllegalTransition, match="cannot pause"):
        await bench.pause()
    with pytest.raises(IllegalTransition):
        await bench.abort()


async def test_queue_runs_one_at_a_time_and_cancel_withdraws(bench: Bench) -> None:
    r1 = await bench.submit(plan("q1", wait("w", 600)), instigator="operator:t")
    r2 = await bench.submit(plan("q2", wait("w", 1)), instigator="operator:t")
    r3 = await bench.submit(plan("q3", wait("w", 1)), instigator="operator:t")
    await wait_for(lambda: bench.status()["run"] is not None, "the first run")
    st = bench.status()
    assert st["run"]["run_id"] == r1
    assert [q["run_id"] for q in st["queue"]] == [r2, r3]
    await bench.cancel(r2)
    assert (await bench.wait(r2))["status"] == "aborted"
    assert bench.store.index.get_run(r2)["status"] == "cancelled"
    assert (await bench.wait(r1))["status"] == "completed"
    assert (await bench.wait(r3))["status"] == "completed"
    assert not any(e["event"] == "step_started" for e in events(bench, r2))


async def test_subscribers_see_the_run_as_it_happens(bench: Bench) -> None:
    got: list[dict[str, Any]] = []

    async def listen() -> None:
        async for ev in bench.subscribe():
            got.append(ev)
            if ev["type"] == "run_finished":
                return

    task = asyncio.create_task(listen())
    await asyncio.sleep(0)
    run_id = await bench.submit(plan("sub", wait("w", 5)), instigator="operator:t")
    await asyncio.wait_for(task, 30)
    types = [e["type"] for e in got]
    assert types.index("step_started") < types.index("step_finished") < types.index(
        "run_finished")
    assert got[-1]["run_id"] == run_id and got[-1]["status"] == "completed"


async def test_a_long_serving_bench_keeps_only_recent_runs_in_memory(bench: Bench) -> None:
    from labctl.bench import KEEP_FINISHED_TICKETS

    ids = [await bench.submit(plan(f"m{i}", wait("w", 0.1)), instigator="operator:t")
           for i in range(KEEP_FINISHED_TICKETS + 5)]
    for rid in ids:
        assert (await bench.wait(rid))["status"] == "completed"
    assert len(bench.tickets) <= KEEP_FINISHED_TICKETS
    assert ids[0] not in bench.tickets and ids[-1] in bench.tickets
    # an old run is still answered, from its record on disk
    assert (await bench.wait(ids[0]))["run_id"] == ids[0]
