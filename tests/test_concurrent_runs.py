"""Several runs at once on the simulated bench (config/sim.toml, every instrument a
simulator on a real pseudo-terminal): runs on disjoint devices interleave, a run that
needs a held device waits until it is released, no two runs ever hold an exclusive device
or vial at once (read from their journals), a deadlock-prone pair completes, aborting one
run safes only its devices, and an e-stop leaves every device safe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from labctl.bench import Bench
from labctl.config import load_config
from labctl.run_machine import RunState

ROOT = Path(__file__).resolve().parent.parent
TIME_SCALE = 100.0
pytestmark = pytest.mark.timeout(240)


def recipe(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": "labctl.recipe/1", "name": name, "version": "1",
            "description": "concurrency test", "steps": steps}


def stir(sid: str, minutes: float) -> dict[str, Any]:
    return {"id": sid, "device": "hotplate", "action": "stir",
            "args": {"speed": "300 rpm", "duration": f"{minutes} min"}}


def hold(sid: str, minutes: float) -> dict[str, Any]:
    return {"id": sid, "device": "block_heater", "action": "hold",
            "args": {"temperature": "30 degC", "duration": f"{minutes} min"}}


def init(sid: str, pump: str) -> dict[str, Any]:
    return {"id": sid, "device": pump, "action": "initialize"}


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    b = Bench(load_config(ROOT / "config" / "sim.toml"), data_dir=tmp_path / "runs",
              time_scale=TIME_SCALE, max_concurrent=3)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll a condition; the timeout only bounds a hang (nothing asserts how long)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)


def holds(bench: Bench, run_id: str) -> dict[str, list[tuple[float, float, str]]]:
    """resource -> [(held from, released at, mode)] from the run's journal (ts: wall)."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    opened: dict[str, tuple[float, str]] = {}
    for ev in bench.store.open(run_id).events():
        if ev.get("event") == "hold":
            opened[ev["resource"]] = (float(ev["ts"]), ev["mode"])
        elif ev.get("event") == "release" and ev["resource"] in opened:
            t0, mode = opened.pop(ev["resource"])
            out.setdefault(ev["resource"], []).append((t0, float(ev["ts"]), mode))
    assert not opened, f"{run_id}: held and never released: {opened}"
    return out


def assert_exclusive(bench: Bench, run_ids: list[str]) -> None:
    """No two runs held one exclusive resource over overlapping times."""
    per_run = {rid: holds(bench, rid) for rid in run_ids}
    for i, a in enumerate(run_ids):
        for b in run_ids[i + 1:]:
            for res, spans in per_run[a].items():
                for s0, e0, m0 in spans:
                    for s1, e1, m1 in per_run[b].get(res, []):
                        if "exclusive" in (m0, m1):
                            assert e0 <= s1 or e1 <= s0, (res, a, b, (s0, e0), (s1, e1))


async def test_two_runs_interleave_and_a_third_waits_for_its_device(bench: Bench) -> None:
    a = await bench.submit(recipe("stir_twice", [stir("mix1", 2), stir("mix2", 2)]))
    b = await bench.submit(recipe("heat_twice", [hold("h1", 2), hold("h2", 2)]))
    c = await bench.submit(recipe("stir_once", [stir("mix", 1)]))
    sims = bench.instruments.simulation.simulators  # type: ignore[union-attr]
    # a and b run at once: the hotplate stirs while the block heats
    await eventually(lambda: not sims["hotplate"].is_safe() and not sims["block_heater"].is_safe(),
                     "hotplate and block heater busy together")
    status = bench.status()
    assert {r["run_id"] for r in status["running"]} >= {a, b}
    assert status["run"]["run_id"] == status["running"][0]["run_id"]

    def c_waits() -> list[dict[str, Any]]:
        run = next((r for r in bench.status()["running"] if r["run_id"] == c), {})
        return list((run.get("waiting") or {}).get("for") or [])

    await eventually(lambda: bool(c_waits()), "c waiting for its device")
    assert {"resource": "device:hotplate", "held_by": a} in c_waits()
    results = await asyncio.gather(*(bench.wait(r) for r in (a, b, c)))
    assert [r["status"] for r in results] == ["completed"] * 3, results
    ha, hb, hc = holds(bench, a), holds(bench, b), holds(bench, c)
    # a's hold of the hotplate and b's of the block overlap in time
    (a0, a1, _), = ha["device:hotplate"]
    (b0, b1, _), = hb["device:block_heater"]
    assert a0 < b1 and b0 < a1
    # c got the hotplate (and the cell vial) only after a released them
    (c0, _, _), = hc["device:hotplate"]
    assert c0 >= a1
    assert hc["vessel:cell_vial"][0][0] >= ha["vessel:cell_vial"][0][1]
    assert_exclusive(bench, [a, b, c])


async def test_deadlock_prone_pair_completes(bench: Bench) -> None:
    # one takes pump_ec, pump_dmc, pump_ec; the other pump_dmc, pump_ec, pump_dmc: with
    # locks taken step by step and kept until their last use, each would wait on the other
    x = await bench.submit(recipe("ec_dmc_ec", [init("i1", "pump_ec"), init("i2", "pump_dmc"),
                                               init("i3", "pump_ec")]))
    y = await bench.submit(recipe("dmc_ec_dmc", [init("j1", "pump_dmc"), init("j2", "pump_ec"),
                                                init("j3", "pump_dmc")]))
    async with asyncio.timeout(120):
        results = await asyncio.gather(bench.wait(x), bench.wait(y))
    assert [r["status"] for r in results] == ["completed", "completed"], results
    assert_exclusive(bench, [x, y])


async def test_abort_of_one_run_safes_only_its_devices(bench: Bench) -> None:
    a = await bench.submit(recipe("stir_long", [stir("mix", 30), stir("mix2", 1)]))
    b = await bench.submit(recipe("heat_long", [hold("h1", 30), hold("h2", 1)]))
    sims = bench.instruments.simulation.simulators  # type: ignore[union-attr]
    await eventually(lambda: not sims["hotplate"].is_safe() and not sims["block_heater"].is_safe(),
                     "both busy")
    assert await bench.abort(b) == RunState.ABORTED
    assert (await bench.wait(b))["status"] == "aborted"
    assert sims["block_heater"].is_safe()
    assert not sims["hotplate"].is_safe(), "the other run's stirrer was stopped"
    assert bench.status()["running"][0]["run_id"] == a
    await bench.abort(a)
    assert sims["hotplate"].is_safe()


async def test_estop_during_concurrent_runs_leaves_every_device_safe(bench: Bench) -> None:
    a = await bench.submit(recipe("stir_long", [stir("mix", 30), stir("mix2", 1)]))
    b = await bench.submit(recipe("heat_long", [hold("h1", 30), hold("h2", 1)]))
    c = await bench.submit(recipe("queued", [stir("mix", 1)]))
    sims = bench.instruments.simulation.simulators  # type: ignore[union-attr]
    await eventually(lambda: not sims["hotplate"].is_safe() and not sims["block_heater"].is_safe(),
                     "both busy")
    assert await bench.estop() == RunState.ABORTED
    assert {n: s.is_safe() for n, s in sims.items() if not s.is_safe()} == {}
    for rid in (a, b):
        res = await bench.wait(rid)
        assert res["status"] == "aborted", res
        assert [e for e in res["errors"] if e.get("type") == "SafeStateError"] == []
    # the run waiting for the hotplate did not start after the e-stop: the queue is held
    status = bench.status()
    assert status["state"] == "held" and status["running"] == []
    queued = [q["run_id"] for q in status["queue"]]
    assert c in queued or (await bench.wait(c))["status"] == "aborted"


async def test_fault_of_one_run_safes_only_its_devices(bench: Bench) -> None:
    """A plunger overload fails one run; the other run's heated block keeps heating and
    that run completes."""
    sims = bench.instruments.simulation.simulators  # type: ignore[union-attr]
    heat = await bench.submit(recipe("heat", [hold("h1", 20), hold("h2", 1)]))
    await eventually(lambda: not sims["block_heater"].is_safe(), "block heating")
    sims["pump_ec"].faults.stall = True
    bad = await bench.submit(recipe("stall", [
        init("init", "pump_ec"),
        {"id": "route", "device": "sel_valve", "action": "move",
         "args": {"position": "cell_vial"}},
        {"id": "add", "device": "pump_ec", "action": "transfer",
         "args": {"volume": "2 mL", "from": "res_ec", "to": "cell_vial", "flow": "1 mL/min"}},
    ]))
    failed = await bench.wait(bad)
    assert failed["status"] == "failed", failed
    assert "pump_ec" in str(failed["errors"])
    assert sims["pump_ec"].is_safe()
    assert not sims["block_heater"].is_safe(), "the other run's block was switched off"
    events = bench.store.open(bad).events()
    safed = [e for e in events if e.get("event") == "safe_state"]
    assert safed, "the failed run applied a safe state"
    assert (await bench.wait(heat))["status"] == "completed"
    assert_exclusive(bench, [heat, bad])
