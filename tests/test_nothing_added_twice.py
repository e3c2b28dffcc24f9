"""Issue 12, "nothing added twice, no unknown names": a step that moves material can never be
declared idempotent (validation refuses it; the executor refuses to repeat an undecided
in-doubt move whatever the plan says), and every name in a `${…}` is a parameter or a loop
variable (a unit name alone is an unknown name, never "1 rpm")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labctl.actions import ACTIONS
from labctl.bench import Bench
from labctl.config import load_config
from labctl.executor import Executor
from labctl.recipe import validate
from labctl.run_machine import RunMachine, RunState
from labctl.store import RunRecord
from tests.executor_support import action, config, plan

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "config" / "sim.toml"
LABCTL = [sys.executable, "-m", "labctl"]
pytestmark = pytest.mark.timeout(120)


def recipe(steps: list[dict[str, Any]], **parameters: Any) -> dict[str, Any]:
    return {"schema": "labctl.recipe/1", "name": "t", "version": "1",
            "parameters": parameters, "steps": steps}


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


#: one valid step per material-moving action of the catalogue, on config/sim.toml
MOVES: dict[tuple[str, str], dict[str, Any]] = {
    ("syringe_pump", "aspirate"): {"device": "pump_ec", "action": "aspirate",
                                   "args": {"volume": "1 mL", "from": "res_ec"}},
    ("syringe_pump", "dispense"): {"device": "pump_ec", "action": "dispense",
                                   "args": {"volume": "1 mL", "to": "@sel_valve"}},
    ("syringe_pump", "transfer"): {"device": "pump_ec", "action": "transfer",
                                   "args": {"volume": "1 mL", "from": "res_ec",
                                            "to": "@sel_valve", "flow": "10 mL/min"}},
    ("pump", "transfer"): {"device": "pump_teos", "action": "transfer",
                           "args": {"volume": "1 mL", "flow": "1 mL/min"}},
    ("pump", "start"): {"device": "pump_teos", "action": "start",
                        "args": {"flow": "1 mL/min"}},
    ("dispenser", "dispense"): {"device": "dispenser", "action": "dispense",
                                "args": {"mass": "2.8 g"}},
}
#: what comes before a step so that it is valid (an initialisation, a route, an aspirate)
_INIT = {"id": "init", "device": "pump_ec", "action": "initialize"}
_ROUTE = {"id": "route", "device": "sel_valve", "action": "move", "args": {"position": "waste"}}
BEFORE: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("syringe_pump", "aspirate"): [_INIT],
    ("syringe_pump", "dispense"): [
        _INIT, _ROUTE, {"id": "draw", "device": "pump_ec", "action": "aspirate",
                        "args": {"volume": "1 mL", "from": "res_ec"}}],
    ("syringe_pump", "transfer"): [_INIT, _ROUTE],
}


def test_the_table_covers_every_material_move_of_the_catalogue() -> None:
    movers = {(cap, name) for cap, actions in ACTIONS.items()
              for name, spec in actions.items() if spec.moves_material}
    assert movers == set(MOVES)


@pytest.mark.parametrize("key", sorted(MOVES), ids=lambda k: ".".join(k))
def test_idempotent_on_a_material_move_is_refused_naming_the_path(
        key: tuple[str, str]) -> None:
    cfg = load_config(SIM)
    before = BEFORE.get(key, [])
    step = {"id": "move", **MOVES[key]}
    assert validate(recipe([*before, step]), {}, cfg) == []  # valid without the flag
    issues = validate(recipe([*before, {**step, "idempotent": True}]), {}, cfg)
    assert [(i.path, i.message) for i in issues] == [(
        f"steps[{len(before)}].idempotent",
        f"'{step['device']}.{step['action']}' moves material and can never be re-run "
        "without an operator's decision")]
    # false is what it is anyway: allowed
    assert validate(recipe([*before, {**step, "idempotent": False}]), {}, cfg) == []


def test_idempotent_on_a_group_holding_a_material_move_is_refused() -> None:
    cfg = load_config(SIM)
    group = {"id": "fill", "idempotent": True, "steps": [
        {"id": "stir", "device": "hotplate", "action": "stir",
         "args": {"speed": "300 rpm", "duration": "1 min"}},
        {"id": "salt", "device": "dispenser", "action": "dispense", "args": {"mass": "1 g"}}]}
    issues = validate(recipe([group]), {}, cfg)
    assert [(i.path, i.message) for i in issues] == [(
        "steps[0].idempotent", "step fill.salt ('dispenser.dispense') inside it moves "
        "material and can never be re-run without an operator's decision")]


def test_labctl_validate_refuses_an_idempotent_dose_with_exit_2(tmp_path: Path) -> None:
    """The case found: a 2.8 g dose declared idempotent validated, and a resume doubled it."""
    steps: list[dict[str, Any]] = [
        {"id": "route", "device": "sel_valve", "action": "move",
         "args": {"position": "cell_vial"}, "idempotent": True},
        {"id": "stir", "device": "hotplate", "action": "stir",
         "args": {"speed": "300 rpm", "duration": "1 min"}, "idempotent": True},
        {"id": "rest", "wait": "1 min"},
        {"id": "weigh", "device": "balance", "action": "weigh", "idempotent": True},
        {"id": "salt", "device": "dispenser", "action": "dispense",
         "args": {"mass": "2.8 g"}, "idempotent": True}]
    path = tmp_path / "dose.json"
    path.write_text(json.dumps(recipe(steps)))
    out = cli("validate", str(path), "--config", str(SIM), "--json")
    assert out.returncode == 2, out.stdout + out.stderr
    [error] = json.loads(out.stdout)["errors"]
    assert error["path"] == "steps[4].idempotent"
    assert error["message"] == ("'dispenser.dispense' moves material and can never be "
                                "re-run without an operator's decision")


# -- item 13: unknown names -------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "name"), [
    ("${rpm}", "rpm"), ("${mL}", "mL"), ("${2 * rpm}", "rpm"), ("${speed_typo}", "speed_typo"),
    ("${min}", "min"), ("${rpm / 1 s * 1 s}", "rpm")])
def test_an_unknown_name_in_a_step_is_a_validation_error(expression: str, name: str) -> None:
    cfg = load_config(SIM)
    step = {"id": "mix", "device": "hotplate", "action": "stir",
            "args": {"speed": expression, "duration": "1 min"}}
    issues = validate(recipe([step], speed={"type": "quantity", "unit": "rpm",
                                            "default": "300 rpm"}), {}, cfg)
    assert len(issues) == 1, issues
    assert issues[0].path == "steps[0].args.speed"
    assert f"unknown name {name!r}" in issues[0].message


def test_parameters_and_units_after_numbers_still_work() -> None:
    cfg = load_config(SIM)
    steps = [{"id": "mix", "device": "hotplate", "action": "stir",
              "args": {"speed": "${rpm * 2}", "duration": "${t / 2 + 30 s}"}}]
    assert validate(recipe(steps, rpm={"type": "quantity", "unit": "rpm", "default": "150 rpm"},
                           t={"type": "quantity", "unit": "s", "default": "1 min"}),
                    {}, cfg) == []


def test_labctl_validate_and_run_refuse_an_unknown_name_and_nothing_moves(
        tmp_path: Path) -> None:
    """`"speed": "${rpm}"` with no parameter `rpm` validated and stirred at 1 rpm."""
    steps = [{"id": "mix", "device": "hotplate", "action": "stir",
              "args": {"speed": "${rpm}", "duration": "1 min"}}]
    path = tmp_path / "stir.json"
    path.write_text(json.dumps(recipe(steps)))
    out = cli("validate", str(path), "--config", str(SIM), "--json")
    assert out.returncode == 2, out.stdout + out.stderr
    [error] = json.loads(out.stdout)["errors"]
    assert error["path"] == "steps[0].args.speed"
    assert "unknown name 'rpm'" in error["message"]
    data = tmp_path / "runs"
    out = cli("run", str(path), "--config", str(SIM), "--data-dir", str(data),
              "--time-scale", "1000")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "unknown name 'rpm'" in out.stdout + out.stderr
    assert not data.exists() or not [p for p in data.iterdir() if p.is_dir()]


# -- item 7, defence in depth: the executor itself ---------------------------------------------


@pytest.fixture
async def sim_bench(tmp_path: Path) -> Any:
    b = Bench(config(), data_dir=tmp_path / "runs", time_scale=1000.0)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def test_the_executor_never_repeats_an_undecided_in_doubt_move(
        sim_bench: Bench, tmp_path: Path) -> None:
    """A plan that says a transfer is idempotent (built by hand, never validated) and a
    journal that leaves that transfer in doubt: the executor refuses to run it again until
    an operator's "redo" is journaled, and then runs it."""
    cfg = sim_bench.cfg
    world = sim_bench.instruments.simulation.world
    p = plan("guard",
             action(cfg, "init", "pump_a", "initialize", idempotent=True),
             action(cfg, "dmc", "pump_a", "transfer", volume="1 mL", from_="res_dmc",
                    to="vial", flow="20 mL/min", idempotent=True))
    rec = RunRecord.create(tmp_path / "records", "guard-run")
    rec.journal.append("run_created", run_id="guard-run")
    rec.journal.append("step_started", run_id="guard-run", step="dmc", kind="action",
                       device="pump_a", action="transfer", attempt=1, idempotent=True)

    def executor() -> Executor:
        return Executor(p, sim_bench.instruments.devices, clock=sim_bench.instruments.clock,
                        record=rec, machine=RunMachine(initial=RunState.READY),
                        safe_state_all=sim_bench.instruments.safe_state_all)

    ex = executor()
    assert await ex.execute() == RunState.FAILED
    assert ex.failure is not None and ex.failure.step_id == "dmc"
    assert "--redo dmc" in str(ex.failure)
    assert world.volume_l("vial") == 0.0
    assert not [e for e in rec.events()[2:] if e["event"] == "step_started"]
    # the operator decides: redo
    rec.journal.append("decision", run_id="guard-run", step="dmc", decision="redo",
                       operator="carol")
    ex = executor()
    assert await ex.execute() == RunState.COMPLETED
    assert world.volume_l("vial") == pytest.approx(0.001, rel=1e-3)
