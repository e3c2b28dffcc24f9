"""The example recipes of recipes/ validate on the simulated bench, and their Plans hold
what the executor and the record need: stable unique ids, resolved SI args, estimates,
materials, SOP and materials list."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from labctl.config import BenchConfig, load_config
from labctl.estimates import STEP_EXCHANGES_WALL_S
from labctl.recipe import Plan, RecipeError, build_plan, validate
from labctl.recipe.sop import materials_csv, sop_markdown, write_outputs
from tests.config_support import every_device_enabled, load_edited

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.json"))
SIM = ROOT / "config" / "sim.toml"


def full_bench() -> BenchConfig:
    """config/sim.toml with every device enabled: the bench as it is once every driver has
    landed (until then some devices are declared `enabled = false`)."""
    return load_edited(SIM, every_device_enabled)


def test_the_examples_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {"electrolyte_conductivity.json", "stability_window.json", "rinse.json",
            "coating_synthesis.json", "galvanostatic_cycling.json"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_example_is_valid_and_described(path: Path) -> None:
    data = json.loads(path.read_text())
    assert data["schema"] == "labctl.recipe/1"
    assert len(data["description"]) > 20
    plan = build_plan(path, {}, full_bench())
    assert plan.estimated_s > 0
    assert plan.sha256 and len(plan.sha256) == 64


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_example_on_the_configured_sim_bench_fails_only_for_disabled_devices(path: Path) -> None:
    """On config/sim.toml as committed, the only complaint allowed is a device still
    declared `enabled = false` (none once all drivers are in)."""
    issues = validate(path, {}, load_config(SIM))
    assert all("disabled on bench" in i.message for i in issues), issues


def _ids(plan: Plan) -> list[str]:
    out: list[str] = []

    def walk(steps: list) -> None:
        for s in steps:
            out.append(s.id)
            walk(s.children)

    walk(plan.steps)
    return out


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_plan_ids_are_unique_and_stable(path: Path) -> None:
    a = build_plan(path, {}, full_bench())
    b = build_plan(path, {}, full_bench())
    assert len(_ids(a)) == len(set(_ids(a)))
    assert _ids(a) == _ids(b)
    assert a.sha256 == b.sha256



@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_planned_step_is_found_by_its_id(path: Path) -> None:
    """Plan.step answers from an index (the bench asks at every journal event): every step
    of the tree, containers and loop iterations included, is the object found walking
    it, and an unknown id is None."""
    plan = build_plan(path, {}, full_bench())
    walked: list = []

    def walk(steps: list) -> None:
        for s in steps:
            walked.append(s)
            walk(s.children)

    walk(plan.steps)
    assert len(walked) > 3
    for s in walked:
        assert plan.step(s.id) is s
    assert plan.step("no-such-step") is None


def test_electrolyte_plan_resolves_parameters_into_si_args() -> None:
    plan = build_plan(ROOT / "recipes/electrolyte_conductivity.json",
                      {"salt_molality": "1.5 mol/kg", "ec_fraction": "0.3",
                       "solvent_volume": "5 mL", "temperature": "40 degC"}, full_bench())
    salt = plan.step("salt")
    assert salt is not None and salt.kind == "action" and salt.device == "dispenser"
    solvent_g = 5 * (0.3 * 1.32 + 0.7 * 1.07)
    assert salt.args["mass_g"] == pytest.approx(1.5 * solvent_g / 1000 * 151.91)
    assert salt.args["material"] == "LiPF6" and salt.moves_material and not salt.idempotent
    ec, dmc = plan.step("ec"), plan.step("dmc")
    assert ec is not None and dmc is not None
    assert ec.args["volume_l"] == pytest.approx(0.0015)
    assert dmc.args["volume_l"] == pytest.approx(0.0035)
    assert ec.args["flow_l_s"] == pytest.approx(10e-3 / 60)
    assert ec.args["source_port"] == "1" and ec.args["destination_port"] == "2"
    heat = plan.step("heat")
    assert heat is not None and heat.args["temperature_c"] == pytest.approx(40.0)
    eis = plan.step("eis")
    assert eis is not None and eis.args["vs"] == "ocp" and eis.args["n_frequencies"] == 31
    assert eis.retries == 1 and eis.on_error == "retry" and eis.idempotent
    analysis = plan.step("conductivity")
    assert analysis is not None and analysis.kind == "analysis"
    assert analysis.action == "ionic_conductivity" and analysis.args["step"] == "eis"
    assert analysis.args["temperature"] == "40 °C"
    assert plan.parameters["salt_molality"] == "1.5 mol / kg"
    assert plan.recipe["parameters"]["ec_fraction"]["value"] == 0.3


def test_parameters_change_the_hash_and_the_resolved_recipe() -> None:
    path = ROOT / "recipes/electrolyte_conductivity.json"
    a = build_plan(path, {}, full_bench())
    b = build_plan(path, {"ec_fraction": "0.6"}, full_bench())
    assert a.sha256 != b.sha256
    ec = next(s for s in b.recipe["steps"] if s["id"] == "ec")
    assert ec["args"]["volume"] == "2.4 mL"


def test_include_is_inlined_with_prefixed_ids_and_its_own_parameters() -> None:
    plan = build_plan(ROOT / "recipes/coating_synthesis.json", {}, full_bench())
    rinse = plan.step("rinse")
    assert rinse is not None and rinse.kind == "sequence"
    ids = [s.id for s in rinse.leaves()]
    assert ids[:5] == ["rinse.init", "rinse.drain[0].to_vial", "rinse.drain[0].draw",
                       "rinse.drain[0].to_waste", "rinse.drain[0].out"]
    assert "rinse.drain[2].out" in ids
    draw = plan.step("rinse.drain[1].draw")
    # the include's drain_stroke is the parent's expression: a third of what the sol holds
    added = sum(plan.step(s).args["volume_l"] for s in ("ethanol", "teos", "water", "acid"))
    assert draw is not None and draw.args["volume_l"] == pytest.approx(added / 3)
    assert plan.includes == ["rinse.json"]
    inlined = next(s for s in plan.recipe["steps"] if s["id"] == "rinse")
    assert inlined["included_from"] == "rinse.json" and inlined["steps"]


def test_for_each_heating_schedule_expands_with_loop_values() -> None:
    plan = build_plan(ROOT / "recipes/coating_synthesis.json", {"cure_temperature": "120 degC"},
                      full_bench())
    temps = [plan.step(f"schedule[{k}].hold").args["temperature_c"] for k in range(3)]
    assert temps == pytest.approx([40.0, 60.0, 120.0])


def test_parallel_init_has_one_sequence_per_branch() -> None:
    plan = build_plan(ROOT / "recipes/electrolyte_conductivity.json", {}, full_bench())
    init = plan.step("init")
    assert init is not None and init.kind == "parallel"
    assert [b.kind for b in init.children] == ["sequence"] * 3
    assert [b.children[0].device for b in init.children] == ["pump_ec", "pump_dmc", "sel_valve"]
    assert init.estimated_s == max(b.estimated_s for b in init.children)


def test_estimates_follow_the_devices_speeds() -> None:
    plan = build_plan(ROOT / "recipes/coating_synthesis.json",
                      {"teos_volume": "3 mL", "teos_flow": "0.5 mL/min"}, full_bench())
    teos = plan.step("teos")
    # the stroke at its flow, the pump's start, and its serial exchanges at the bench's scale
    exchanges = STEP_EXCHANGES_WALL_S * full_bench().bench.time_scale
    assert teos is not None and teos.estimated_s == pytest.approx(360.0 + 1.0 + exchanges)
    assert plan.estimated_s == pytest.approx(sum(s.estimated_s for s in plan.steps))


def test_cycling_c_rate_becomes_currents() -> None:
    plan = build_plan(ROOT / "recipes/galvanostatic_cycling.json",
                      {"c_rate": "1 /h", "nominal_capacity": "2 mA*h", "n_cycles": "4"},
                      full_bench())
    g = plan.step("cycling")
    assert g is not None and g.args["n_cycles"] == 4
    phases = g.args["phases"]
    assert phases[0]["current_a"] == pytest.approx(0.002)
    assert phases[2]["current_a"] == pytest.approx(-0.002)
    assert phases[0]["max_time_s"] == pytest.approx(1.2 * 3600)


def test_materials_request_list_and_sop(tmp_path: Path) -> None:
    cfg = full_bench()
    plan = build_plan(ROOT / "recipes/electrolyte_conductivity.json", {}, cfg)
    rows = list(csv.DictReader(io.StringIO(materials_csv(plan, runs=2))))
    by = {r["material"]: r for r in rows}
    assert set(by) == {"LiPF6", "EC", "DMC", "EtOH"}
    assert by["EC"]["unit"] == "mL" and float(by["EC"]["per run"]) == pytest.approx(2.0)
    assert float(by["EC"]["amount"]) == pytest.approx(4.0)
    assert by["EC"]["where from"] == "res_ec" and by["LiPF6"]["where from"] == "dispenser"
    assert by["LiPF6"]["unit"] == "g"
    sop = sop_markdown(plan, cfg)
    for needle in ("# SOP: electrolyte_conductivity", "## Parameters", "salt_molality",
                   "## Materials", "KMTRUDSVKNLOMY-UHFFFAOYSA-N", "## Procedure",
                   "`mix`", plan.sha256):
        assert needle in sop
    files = write_outputs(plan, cfg, tmp_path / "out")
    assert sorted(f.name for f in files) == ["electrolyte_conductivity.materials.csv",
                                             "electrolyte_conductivity.sop.csv",
                                             "electrolyte_conductivity.sop.md"]


def test_a_recipe_given_as_data_or_text_gives_the_same_plan() -> None:
    path = ROOT / "recipes/formulate_electrolyte.json"
    text = path.read_text()
    a = build_plan(path, {}, full_bench())
    b = build_plan(text, {}, full_bench(), base_dir=path.parent)
    c = build_plan(json.loads(text), {}, full_bench(), base_dir=path.parent)
    assert a.sha256 == b.sha256 == c.sha256
    assert [s.id for s in a.leaves()] == [s.id for s in c.leaves()]


def test_invalid_recipe_raises_recipe_error_not_anything_else() -> None:
    with pytest.raises(RecipeError) as info:
        build_plan(ROOT / "recipes/electrolyte_conductivity.json", {"ec_fraction": "2"},
                   full_bench())
    assert info.value.issues[0].path == "parameters.ec_fraction"
