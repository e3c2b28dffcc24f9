"""Issue 12, "nothing added twice, no unknown names": a step that moves material can never be
declared idempotent (validation refuses it; the executor refuses to repeat an undecided
in-doubt move whatever the plan says), and every name in a `${…}` is a parameter or a loop
variable (a unit name alone is an unknown name, never "1 rpm")."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labctl.actions import ACTIONS
from labctl.bench import Bench
from labctl.clock import ScaledClock
from labctl.config import load_config
from labctl.executor import Executor
from labctl.recipe import validate
from labctl.run_machine import RunMachine, RunState
from labctl.simulation import start_simulation
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


# -- item 10: an addition weighed right across a kill and a resume ------------------------------

DOSE_BENCH = """
[bench]
id = "dose-bench"
site = "labctl issue 12 tests"
simulate = true
time_scale = 100

[materials.LiPF6]
name = "lithium hexafluorophosphate"
phase = "solid"

[vessels.cell_vial]
kind = "vial"
capacity = "20 mL"
empty_mass = "12.5 g"

[devices.dispenser]
driver = "quantos-dispenser"
endpoint = "/dev/ttyUSB7"
[devices.dispenser.params]
vessel = "cell_vial"
head_material = "LiPF6"
head_content = "20 g"
[devices.dispenser.limits]
max_mass = "5 g"
"""
DOSE_RECIPE = recipe([{"id": "salt", "device": "dispenser", "action": "dispense",
                       "args": {"mass": "1 g", "material": "LiPF6"}}])
#: the Quantos simulator's balance shows 5 decimals: its resolution
RESOLUTION_G = 1e-5


async def _labctl(*args: str, timeout: float = 120.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *LABCTL, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return int(proc.returncode or 0), out.decode()


@pytest.mark.parametrize("decision", ["--accept-in-doubt", "--redo"])
async def test_a_dose_killed_between_tare_and_weighing_is_recorded_as_what_landed(
        tmp_path: Path, decision: str) -> None:
    """The instruments outlive the host (served by this test process, the world with them);
    `labctl run` is killed while the Quantos doses, after its tare, before the weighing.
    After `labctl resume` the additions recorded in metadata.json add up to what the vial
    received, within the balance's resolution — never the gross mass of the vial. (It was:
    the reconnect's `@` cleared the tare, and the interrupted dose was never recorded.)"""
    sim_cfg = tmp_path / "sim.toml"
    sim_cfg.write_text(DOSE_BENCH)
    sim = await start_simulation(load_config(sim_cfg), ScaledClock(100.0))
    try:
        quantos = sim.simulators["dispenser"]
        world = sim.world
        host_cfg = tmp_path / "bench.toml"
        host_cfg.write_text(DOSE_BENCH.replace("simulate = true", "simulate = false").replace(
            'endpoint = "/dev/ttyUSB7"', f'endpoint = "{sim.endpoints["dispenser"]}"'))
        recipe_path = tmp_path / "dose.json"
        recipe_path.write_text(json.dumps(DOSE_RECIPE))
        data = tmp_path / "runs"
        proc = await asyncio.create_subprocess_exec(
            *LABCTL, "run", str(recipe_path), "--config", str(host_cfg), "--data-dir",
            str(data), "--json", cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        # 1 g at 30 s per 100 mg is 300 simulated s, 3 wall s: kill a third of the way in
        while not (quantos.snapshot()["dosing"] and quantos.dosed_g > 0.3):
            assert loop.time() < deadline and proc.returncode is None, "the dose never ran"
            await asyncio.sleep(0.01)
        proc.kill()
        await proc.wait()
        [folder] = [p for p in data.iterdir() if p.is_dir()]
        code, out = await _labctl("resume", folder.name, "--config", str(host_cfg),
                                  "--data-dir", str(data), "--operator", "carol", "--json",
                                  decision, "salt")
        assert code == 0, out
        assert json.loads(out.strip().splitlines()[-1])["status"] == "completed"
        received = world.composition("cell_vial")["LiPF6"]
        meta = json.loads((folder / "metadata.json").read_text())
        additions = [a for a in meta["additions"] if a.get("step") == "salt"]
        doses = [d["dosed_g"] for d in quantos.doses]
        assert len(additions) == len(doses) == (1 if decision == "--accept-in-doubt" else 2)
        for recorded, landed in zip(additions, doses, strict=True):
            assert recorded["requested"] == pytest.approx(1.0)
            assert recorded["actual"] == pytest.approx(landed, abs=RESOLUTION_G)
        assert additions[0]["interrupted"] is True and 0.3 < additions[0]["actual"] < 1.0
        assert sum(a["actual"] for a in additions) == pytest.approx(received,
                                                                    abs=2 * RESOLUTION_G)
        assert all(a["actual"] < 12.5 for a in additions)  # never the gross mass
    finally:
        await sim.close()


async def test_a_dose_that_fails_half_way_is_retried_for_the_rest_only(
        tmp_path: Path) -> None:
    """A retry tares again, so what the failed attempt delivered was in the vial but in no
    addition; it is now weighed against its own reference and recorded, and the retry doses
    only what is still missing: the vial gets the requested mass once, not 1.5 times."""
    cfg_path = tmp_path / "sim.toml"
    cfg_path.write_text(DOSE_BENCH)
    bench = Bench(load_config(cfg_path), data_dir=tmp_path / "runs", time_scale=1000.0)
    await bench.start()
    try:
        quantos = bench.instruments.simulation.simulators["dispenser"]
        quantos.faults.error = 3  # the next dose stops half way with `I 3` (timeout)
        steps = [{"id": "salt", "device": "dispenser", "action": "dispense",
                  "args": {"mass": "0.4 g"}, "retries": 1, "on_error": "retry"}]
        run_id = await bench.submit(recipe(steps), instigator="operator:t")
        result = await bench.wait(run_id)
        assert result["status"] == "completed", result
        meta = json.loads((tmp_path / "runs" / run_id / "metadata.json").read_text())
        additions = meta["additions"]
        doses = [d["dosed_g"] for d in quantos.doses]
        assert len(doses) == 2 and 0.1 < doses[0] < 0.3
        assert [a["actual"] for a in additions] == [pytest.approx(d, abs=RESOLUTION_G)
                                                    for d in doses]
        assert additions[0]["interrupted"] is True
        # the retry asked for the rest only
        assert additions[1]["requested"] == pytest.approx(0.4 - additions[0]["actual"],
                                                          abs=RESOLUTION_G)
        received = bench.instruments.simulation.world.composition("cell_vial")["LiPF6"]
        assert received == pytest.approx(0.4, rel=0.03)
        assert sum(a["actual"] for a in additions) == pytest.approx(received,
                                                                    abs=2 * RESOLUTION_G)
    finally:
        await bench.close()
