"""The simulated world's ledger stays bounded on a bench that serves run after run, and
never drops a move a running run's save still needs (labctl.simulation.WorldKeeper lists
the moves of its steps in progress)."""

from __future__ import annotations

from pathlib import Path

import pytest

import simulators.bench as sim_bench
from labctl.bench import Bench
from labctl.config import load_config
from simulators.bench import SimulatedBench
from simulators.world import World

ROOT = Path(__file__).resolve().parent.parent

WORLD = {"vessels": {"a": {"capacity": "100 mL", "contents": {"W": "50 mL"}},
                     "b": {"capacity": "100 mL"}},
         "materials": {"W": {"density_g_ml": 1.0}}}

# fill the cell vial from the EC reservoir, then empty it to waste: four moves a run
CYCLE = {
    "schema": "labctl.recipe/1", "name": "cycle", "version": "1",
    "description": "fill the cell vial and empty it",
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
        {"id": "draw", "device": "pump_dmc", "action": "aspirate",
         "args": {"volume": "0.5 mL", "from": "cell_vial", "flow": "15 mL/min"}},
        {"id": "to_waste", "device": "sel_valve", "action": "move",
         "args": {"position": "waste"}},
        {"id": "out", "device": "pump_dmc", "action": "dispense",
         "args": {"volume": "0.5 mL", "to": "waste", "flow": "20 mL/min"}},
    ],
}


def test_trim_keeps_the_window_and_every_move_from_the_oldest_mark(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_bench, "LEDGER_KEEP", 10)
    sim = SimulatedBench(world=World.from_spec(WORLD))
    for _ in range(30):
        sim.world.move_volume("a", "b", 0.001)
    moves = list(sim.world.ledger)
    sim.trim_ledger(5)  # a step in progress started at move 5: nothing may go
    assert sim.world.ledger == moves
    sim.trim_ledger(25)  # no older mark: the last 10 stay
    assert sim.ledger_length() == 30
    assert sim.world.ledger == moves[20:]
    assert sim.moves_since(22) == moves[22:]
    sim.trim_ledger(29)  # fewer than 10 more to drop: left for the next chunk
    assert sim.world.ledger == moves[20:]


async def test_a_serving_bench_holds_a_bounded_ledger(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_bench, "LEDGER_KEEP", 8)
    cfg = load_config(ROOT / "config" / "sim.toml")
    async with Bench(cfg, data_dir=tmp_path / "runs", time_scale=1000) as bench:
        sim = bench.instruments.simulation
        for _ in range(10):
            result = await bench.wait(await bench.submit(CYCLE, {}))
            assert result["status"] == "completed", result["errors"]
        assert sim.ledger_length() >= 40  # at least four moves a run were made
        assert len(sim.world.ledger) < 2 * 8  # and only the last ones kept
        assert sim.moves_since(sim.ledger_length() - 3) == sim.world.ledger[-3:]
