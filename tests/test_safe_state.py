"""E-stop from any busy state reaches every device's safe state first time (issue 12).

Each case runs a recipe on the simulated bench (config/sim.toml, every instrument on a real
pseudo-terminal), waits until the instrument's simulator is busy (mid-move, mid-script,
heating, dosing), e-stops through the Bench service, and checks on the simulator side that
the instrument is safe and that no SafeStateError was recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from labctl.bench import Bench
from labctl.config import BenchConfig, load_config
from labctl.run_machine import RunState
from tests.config_support import load_edited, reply_timeout

ROOT = Path(__file__).resolve().parent.parent
SIM_CONFIG = ROOT / "config" / "sim.toml"
TIME_SCALE = 100.0
pytestmark = pytest.mark.timeout(180)

MATERIALS = {
    "EC": {"name": "ethylene carbonate", "location": "res_ec"},
    "DMC": {"name": "dimethyl carbonate", "location": "res_dmc"},
    "TEOS": {"name": "tetraethyl orthosilicate", "location": "res_teos"},
    "EtOH": {"name": "ethanol", "location": "res_etoh"},
    "LiPF6": {"name": "lithium hexafluorophosphate", "location": "dispenser"},
}

CYCLING = {"id": "cycling", "device": "potentiostat", "action": "gcpl", "args": {
    "nominal_capacity": "1 mA*h", "n_cycles": 3, "phases": [
        {"mode": "cc", "c_rate": "0.5 /h", "upper_cutoff": "4.2 V", "max_time": "2.4 h",
         "sample_interval": "10 s"},
        {"mode": "rest", "max_time": "10 min", "sample_interval": "30 s"},
        {"mode": "cc", "c_rate": "-0.5 /h", "lower_cutoff": "3.0 V", "max_time": "2.4 h",
         "sample_interval": "10 s"}]}}

#: case -> (steps, the simulator that must be busy before the e-stop)
CASES: dict[str, tuple[list[dict[str, Any]], list[str]]] = {
    "potentiostat cycling": ([CYCLING], ["potentiostat"]),
    "potentiostat cv": ([{"id": "cv", "device": "potentiostat", "action": "cv", "args": {
        "E_begin": "3.0 V", "E_vertex1": "4.2 V", "E_vertex2": "3.0 V", "E_step": "5 mV",
        "scan_rate": "1 mV/s",
        "n_scans": 5}}], ["potentiostat"]),
    "syringe pump mid-transfer": ([
        {"id": "init", "device": "pump_ec", "action": "initialize"},
        {"id": "route", "device": "sel_valve", "action": "move", "args": {"position": "cell_vial"}},
        {"id": "add", "device": "pump_ec", "action": "transfer",
         "args": {"volume": "5 mL", "from": "res_ec", "to": "cell_vial", "flow": "1 mL/min"}},
    ], ["pump_ec"]),
    "syringe pump initialising": ([
        {"id": "init", "device": "pump_dmc", "action": "initialize"}], ["pump_dmc"]),
    "NE-1000 mid-transfer": ([{"id": "teos", "device": "pump_teos", "action": "transfer",
                               "args": {"volume": "5 mL", "flow": "0.5 mL/min"}}],
                             ["pump_teos"]),
    "peristaltic pump running": ([{"id": "rinse", "device": "rinse_pump", "action": "start",
                                   "args": {"flow": "10 mL/min"}},
                                  {"id": "w", "wait": "2 h"}], ["rinse_pump"]),
    "block heater holding": ([{"id": "hold", "device": "block_heater", "action": "hold",
                               "args": {"temperature": "120 degC", "duration": "2 h"}}],
                             ["block_heater"]),
    "hotplate heating and stirring": ([{"id": "stir", "device": "hotplate", "action": "stir",
                                        "args": {"speed": "800 rpm", "duration": "2 h",
                                                 "temperature": "70 degC"}}], ["hotplate"]),
    "dispenser mid-dose": ([{"id": "dose", "device": "dispenser", "action": "dispense",
                             "args": {"mass": "4 g"}}], ["dispenser"]),
    "everything at once": ([
        {"id": "init", "device": "pump_ec", "action": "initialize"},
        {"id": "route", "device": "sel_valve", "action": "move", "args": {"position": "cell_vial"}},
        {"id": "all", "parallel": [
        CYCLING,
        {"id": "add", "device": "pump_ec", "action": "transfer",
         "args": {"volume": "5 mL", "from": "res_ec", "to": "cell_vial", "flow": "1 mL/min"}},
        {"id": "teos", "device": "pump_teos", "action": "transfer",
         "args": {"volume": "5 mL", "flow": "0.5 mL/min"}},
        {"id": "hold", "device": "block_heater", "action": "hold",
         "args": {"temperature": "120 degC", "duration": "2 h"}},
        {"id": "stir", "device": "hotplate", "action": "stir",
         "args": {"speed": "800 rpm", "duration": "2 h", "temperature": "70 degC"}},
    ]}], ["potentiostat", "pump_ec", "pump_teos", "block_heater", "hotplate"]),
}


def recipe(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": "labctl.recipe/1", "name": name, "version": "1",
            "description": "e-stop from a busy state", "materials": MATERIALS, "steps": steps}


def sim_config() -> BenchConfig:
    """config/sim.toml with an electrolyte already in the cell vial (the potentiostat's
    recipes need liquid in the cell)."""
    cfg = load_config(SIM_CONFIG)
    cfg.vessels["cell_vial"].contents.update({"EC": "5 mL", "DMC": "5 mL", "LiPF6": "1.5 g"})
    return cfg


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    b = Bench(sim_config(), data_dir=tmp_path / "runs", time_scale=TIME_SCALE)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


def simulators(bench: Bench) -> dict[str, Any]:
    sims: dict[str, Any] = bench.instruments.simulation.simulators
    return sims


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll a condition; the timeout only bounds a hang (nothing asserts how long)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("case", list(CASES))
async def test_estop_from_a_busy_state_makes_the_device_safe_first_time(
        bench: Bench, case: str) -> None:
    steps, busy = CASES[case]
    assert not bench.startup_safe_state_errors, bench.startup_safe_state_errors
    sims = simulators(bench)
    run_id = await bench.submit(recipe(case.replace(" ", "_"), steps), instigator="operator:t")
    await eventually(lambda: all(not sims[n].is_safe() for n in busy),
                     f"{', '.join(busy)} busy")
    assert await bench.estop() == RunState.ABORTED
    assert {n: s.is_safe() for n, s in sims.items() if not s.is_safe()} == {}
    result = await bench.wait(run_id)
    assert result["status"] == "aborted", result
    safe_errors = [e for e in result.get("errors", []) if e.get("type") == "SafeStateError"]
    assert safe_errors == [], safe_errors
    done = [e for e in bench.store.open(run_id).events() if e["event"] == "safe_state_done"]
    assert done and all(not e.get("errors") for e in done), done


async def test_estop_with_nothing_running_after_a_run_left_a_script_going(
        bench: Bench) -> None:
    """A script started behind the driver's back (a previous session) is stopped too."""
    sim = simulators(bench)["potentiostat"]
    dev = bench.instruments.devices["potentiostat"]
    link = dev.open_link()
    async with link.lock:
        await link.write(b"e\nvar p\nset_pgstat_mode 2\ncell_on\n"
                         b"meas_loop_ocp p 1 100000\nendloop\n\n")
    await eventually(lambda: sim.cell_on and sim.running, "the stray script running")
    assert await bench.estop() == RunState.IDLE
    assert sim.is_safe()
    await bench.resume()


FAULTS: dict[str, dict[str, Any]] = {
    "one reply lost": {"silence": 1},
    "one reply cut short": {"truncate": True},
    "line noise before a reply": {"garbage": b"\x00zz\r\n"},
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_estop_reaches_the_safe_state_first_time_despite_one_bad_reply(
        tmp_path: Path, fault: str) -> None:
    """Stopping is harmless to repeat: a lost or garbled answer to it is asked again within
    the same safe_state call, for every kind of device of the bench."""
    cfg = load_edited(SIM_CONFIG, reply_timeout("0.5 s"))  # a lost reply costs one timeout
    cfg.vessels["cell_vial"].contents.update({"EC": "5 mL", "DMC": "5 mL", "LiPF6": "1.5 g"})
    async with Bench(cfg, data_dir=tmp_path / "runs", time_scale=TIME_SCALE) as b:
        sims = simulators(b)
        failed: dict[str, str] = {}
        for name, sim in sims.items():
            for key, value in FAULTS[fault].items():
                setattr(sim.faults, key, value)
            assert await b.estop() == RunState.IDLE
            failed.update(b.estop_safe_state_errors)
            assert sim.is_safe(), name
            sim.faults.silence, sim.faults.truncate, sim.faults.garbage = False, False, b""
            await asyncio.sleep(0.6)  # let a late half-reply go by before the next device
        assert failed == {}


async def test_estop_while_paused_stops_the_paused_pump_for_good(bench: Bench) -> None:
    """A paused NE-1000 keeps the rest of its volume (RUN would pump it): the e-stop ends
    it stopped, not paused."""
    steps, _ = CASES["NE-1000 mid-transfer"]
    sim = simulators(bench)["pump_teos"]
    run_id = await bench.submit(recipe("paused", steps), instigator="operator:t")
    await eventually(lambda: not sim.is_safe(), "pump_teos pumping")
    await bench.pause()
    await eventually(lambda: sim.state == "P", "pump_teos paused")
    assert await bench.estop() == RunState.ABORTED
    assert sim.state == "S"
    result = await bench.wait(run_id)
    assert [e for e in result["errors"] if e.get("type") == "SafeStateError"] == []


async def test_device_in_error_mid_step_ends_safe_with_no_safe_state_error(
        bench: Bench) -> None:
    """A plunger overload (error 9) mid-transfer fails the run; the safe state that follows
    is reached on every device from there (the pump in error included)."""
    sims = simulators(bench)
    steps, _ = CASES["syringe pump mid-transfer"]
    sims["pump_ec"].faults.stall = True
    run_id = await bench.submit(recipe("stall", steps), instigator="operator:t")
    result = await bench.wait(run_id)
    assert result["status"] == "failed", result
    assert "pump_ec" in str(result["errors"])
    assert [e for e in result["errors"] if e.get("type") == "SafeStateError"] == []
    assert [n for n, s in sims.items() if not s.is_safe()] == []

