"""A broad table of broken recipes: each is rejected with the JSON path of the fault and a
message that says what is wrong. Every check of the recipe issue appears here."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labctl.config import BenchConfig
from labctl.recipe import RecipeError, build_plan, validate
from tests.config_support import every_device_enabled, load_edited

ROOT = Path(__file__).resolve().parent.parent


def full_bench() -> BenchConfig:
    return load_edited(ROOT / "config" / "sim.toml", every_device_enabled)


BASE: dict[str, Any] = {
    "schema": "labctl.recipe/1",
    "name": "broken",
    "description": "a small valid recipe that each case breaks in one way",
    "parameters": {
        "vol": {"type": "quantity", "unit": "mL", "default": "2 mL", "min": "0.5 mL",
                "max": "5 mL"},
        "n": {"type": "integer", "default": 2, "min": 1, "max": 5},
        "mode": {"type": "enum", "choices": ["fast", "slow"], "default": "fast"},
    },
    "materials": {"EC": {"location": "res_ec"}},
    "steps": [
        {"id": "init", "device": "pump_ec", "action": "initialize"},
        {"id": "route", "device": "sel_valve", "action": "move",
         "args": {"position": "cell_vial"}},
        {"id": "ec", "device": "pump_ec", "action": "transfer",
         "args": {"volume": "${vol}", "from": "res_ec", "to": "cell_vial"}},
        {"id": "mix", "device": "hotplate", "action": "stir",
         "args": {"speed": "300 rpm", "duration": "1 min"}},
    ],
}

Mutator = Callable[[dict[str, Any]], Any]


def step(i: int, **changes: Any) -> Mutator:
    def mutate(r: dict[str, Any]) -> None:
        r["steps"][i].update(changes)
    return mutate


def arg(i: int, name: str, value: Any) -> Mutator:
    def mutate(r: dict[str, Any]) -> None:
        r["steps"][i]["args"][name] = value
    return mutate


def add(*steps: dict[str, Any]) -> Mutator:
    def mutate(r: dict[str, Any]) -> None:
        r["steps"].extend(steps)
    return mutate


def top(**changes: Any) -> Mutator:
    def mutate(r: dict[str, Any]) -> None:
        r.update(changes)
    return mutate


def EC(vid: str, vol: str, **extra: Any) -> dict[str, Any]:
    return {"id": vid, "device": "pump_ec", "action": "transfer",
            "args": {"volume": vol, "from": "res_ec", "to": "cell_vial", **extra}}


def POT(vid: str, action: str, **args: Any) -> dict[str, Any]:
    return {"id": vid, "device": "potentiostat", "action": action, "args": args}


# name, mutation of BASE (or raw text), params, expected path, expected message fragment
CASES: list[tuple[str, Any, dict[str, str], str, str]] = [
    ("json syntax", '{"schema": "labctl.recipe/1",\n  "name": }', {}, "",
     "invalid JSON at line 2, column 11"),
    ("json trailing comma", '{"schema": "labctl.recipe/1", "steps": [1,]}', {}, "",
     "line 1, column"),
    ("NaN constant", '{"schema": "labctl.recipe/1", "name": NaN}', {}, "", "NaN is not allowed"),
    ("not an object", "[1, 2]", {}, "$", "a recipe is a JSON object"),
    ("wrong schema id", top(schema="labctl.recipe/9"), {}, "schema", "labctl.recipe/1"),
    ("missing name", lambda r: r.pop("name"), {}, "name", "missing required field 'name'"),
    ("unknown top-level field", top(colour="blue"), {}, "colour", "unknown field 'colour'"),
    ("no steps", top(steps=[]), {}, "steps", "at least 1"),
    ("step of no kind", add({"id": "what"}), {}, "steps[4]", "a step needs one of"),
    ("bad step id", step(3, id="mix.1"), {}, "steps[3].id", "a step id"),
    ("duplicate step id", step(3, id="ec"), {}, "steps[3].id", "duplicate step id 'ec'"),
    ("unknown field in a step", step(3, colour=1), {}, "steps[3].colour", "unknown field"),
    ("unknown device", step(2, device="pump_x"), {}, "steps[2].device",
     "unknown device 'pump_x'"),
    ("unsupported action", step(2, action="fly"), {}, "steps[2].action",
     "does not support action 'fly'"),
    ("unknown argument", arg(3, "colour", "red"), {}, "steps[3].args.colour",
     "unknown argument 'colour'"),
    ("missing argument", lambda r: r["steps"][2]["args"].pop("from"), {}, "steps[2].args.from",
     "missing required argument 'from'"),
    ("wrong dimension", arg(2, "volume", "3 s"), {}, "steps[2].args.volume", "is not a volume"),
    ("number without unit", arg(2, "volume", 3), {}, "steps[2].args.volume", "needs a unit"),
    ("unparseable quantity", arg(3, "speed", "fast please"), {}, "steps[3].args.speed",
     "cannot parse quantity"),
    ("volume over syringe", add({"id": "big", "device": "pump_ec", "action": "aspirate",
                                 "args": {"volume": "30 mL", "from": "res_ec"}}), {},
     "steps[4].args.volume", "30 mL exceeds pump_ec syringe volume 5 mL"),
    ("flow over max", arg(2, "flow", "100 mL/min"), {}, "steps[2].args.flow",
     "100 mL/min exceeds pump_ec max_flow 25 mL/min"),
    ("negative volume", arg(2, "volume", "-1 mL"), {}, "steps[2].args.volume",
     "volume must be above 0"),
    ("stir too fast", arg(3, "speed", "2000 rpm"), {}, "steps[3].args.speed",
     "exceeds hotplate max_speed 1200 rpm"),
    ("too hot", arg(3, "temperature", "120 degC"), {}, "steps[3].args.temperature",
     "exceeds hotplate max_temperature"),
    ("block over limit", add({"id": "bake", "device": "block_heater",
                              "action": "set_temperature", "args": {"temperature": "200 degC"}}),
     {}, "steps[4].args.temperature", "exceeds block_heater max_temperature 150"),
    ("dose over max mass", add({"id": "salt", "device": "dispenser", "action": "dispense",
                                "args": {"mass": "6 g"}}), {}, "steps[4].args.mass",
     "6 g exceeds dispenser max_mass 5 g"),
    ("dispenser holds another material", add({"id": "salt", "device": "dispenser",
                                              "action": "dispense",
                                              "args": {"mass": "1 g", "material": "NaCl"}}),
     {}, "steps[4].args.material", "dispenser doses LiPF6, not NaCl"),
    ("valve position out of range", arg(1, "position", 17), {}, "steps[1].args.position",
     "position 17 does not exist on sel_valve"),
    ("valve to unknown vessel", arg(1, "position", "bucket"), {}, "steps[1].args.position",
     "no position of sel_valve leads to 'bucket'"),
    ("unknown source vessel", arg(2, "from", "res_xyz"), {}, "steps[2].args.from",
     "'res_xyz' is neither a port of pump_ec"),
    ("route set elsewhere", arg(1, "position", "coat_vial"), {}, "steps[2].args.to",
     "cell_vial is reached through sel_valve, which leads to coat_vial"),
    ("route never set", lambda r: r["steps"].pop(1), {}, "steps[1].args.to",
     "sel_valve is not set to a known position"),
    ("overflowing vial", add(EC("a", "5 mL"), EC("b", "5 mL"), EC("c", "5 mL"),
                             EC("d", "5 mL")), {}, "steps[7].args.to",
     "cell_vial would overflow: 22 mL in a 20 mL vessel"),
    ("reservoir runs dry", lambda r: r["steps"].extend(
        [{"id": "to_waste", "device": "sel_valve", "action": "move",
          "args": {"position": "waste"}}]
        + [{"id": f"t{k}", "device": "pump_ec", "action": "transfer",
            "args": {"volume": "17 mL", "from": "res_ec", "to": "waste"}} for k in range(12)]),
     {}, "steps[16].args.from", "res_ec holds 11 mL, cannot take 17 mL"),
    ("unknown material", lambda r: r["materials"].update({"NaCl": {"name": "salt"}}), {},
     "materials.NaCl", "unknown material 'NaCl'"),
    ("material at the wrong place", lambda r: r["materials"].update(
        {"EC": {"location": "res_dmc"}}), {}, "materials.EC.location",
     "res_dmc holds DMC, not EC"),
    ("missing parameter value", lambda r: r["parameters"]["vol"].pop("default"), {},
     "parameters.vol", "missing value for parameter 'vol'"),
    ("parameter above max", None, {"vol": "9 mL"}, "parameters.vol", "above the maximum 5 mL"),
    ("parameter below min", None, {"n": "0"}, "parameters.n", "below the minimum 1"),
    ("parameter wrong unit", None, {"vol": "3 s"}, "parameters.vol", "wrong unit"),
    ("parameter not a number", None, {"n": "two"}, "parameters.n", "expected a number"),
    ("parameter not a choice", None, {"mode": "medium"}, "parameters.mode",
     "'medium' is not one of fast, slow"),
    ("unknown parameter", None, {"volume": "2 mL"}, "parameters.volume",
     "unknown parameter 'volume'"),
    ("quantity parameter without unit", lambda r: r["parameters"]["vol"].pop("unit"), {},
     "parameters.vol.unit", "needs a unit"),
    ("parameter with bad name", lambda r: r["parameters"].update(
        {"2x": {"type": "number", "default": 1}}), {}, "parameters.2x", "not a valid name"),
    ("bad expression", arg(2, "volume", "${vol * }"), {}, "steps[2].args.volume",
     "unexpected end of expression"),
    ("unknown name in expression", arg(2, "volume", "${vl}"), {}, "steps[2].args.volume",
     "unknown name 'vl'"),
    ("__import__ in expression", arg(2, "volume",
                                     "${__import__('os').system('touch /tmp/labctl_pwned')}"),
     {}, "steps[2].args.volume", "'__import__' is not allowed"),
    ("attribute access in expression", arg(2, "volume", "${vol.real}"), {},
     "steps[2].args.volume", "unexpected character '.'"),
    ("unknown function", arg(2, "volume", "${exec(vol)}"), {}, "steps[2].args.volume",
     "unknown function 'exec'"),
    ("division by zero", arg(2, "volume", "${vol / 0}"), {}, "steps[2].args.volume",
     "division by zero"),
    ("expression of wrong dimension", arg(2, "volume", "${vol * 2 s}"), {},
     "steps[2].args.volume", "is not a volume"),
    ("include with ..", add({"id": "r", "include": "../rinse.json"}), {}, "steps[4].include",
     "'..' is not allowed"),
    ("include absolute", add({"id": "r", "include": "/etc/passwd"}), {}, "steps[4].include",
     "must be relative"),
    ("include missing", add({"id": "r", "include": "nope.json"}), {}, "steps[4].include",
     "no such recipe file"),
    ("parallel branches share a device",
     add({"id": "both", "parallel": [EC("one", "1 mL"), EC("two", "1 mL")]}), {},
     "steps[4].parallel[1]", "device pump_ec is used by parallel branches 0 and 1"),
    ("parallel branch id duplicate",
     add({"id": "p", "parallel": [{"id": "w", "wait": "1 s"}, {"id": "w", "wait": "2 s"}]}),
     {}, "steps[4].parallel[1].id", "duplicate step id 'w'"),
    ("repeat too often", add({"id": "loop", "repeat": 100000,
                              "steps": [{"id": "w", "wait": "1 s"}]}), {}, "steps[4].repeat",
     "more than 10000"),
    ("repeat count not whole", add({"id": "loop", "repeat": "${n / 4}",
                                    "steps": [{"id": "w", "wait": "1 s"}]}), {},
     "steps[4].repeat", "whole number"),
    ("loop variable hides a parameter",
     add({"id": "loop", "for_each": {"var": "vol", "in": ["1 mL"]},
          "steps": [{"id": "w", "wait": "1 s"}]}), {}, "steps[4].for_each.var",
     "hides a parameter"),
    ("wait without unit", add({"id": "w", "wait": "5"}), {}, "steps[4].wait",
     "is not a duration"),
    ("retry without retries", step(3, on_error="retry"), {}, "steps[3].retries",
     "needs retries of at least 1"),
    ("retries on a transfer (could add it twice)", step(2, retries=1), {}, "steps[2].retries",
     "'pump_ec.transfer' moves material and cannot tell how much a failed attempt moved"),
    ("retries on a sequence holding a transfer",
     add({"id": "seq", "steps": [EC("one", "1 mL")], "retries": 2}), {}, "steps[4].retries",
     "step seq.one inside it: 'pump_ec.transfer' moves material"),
    ("timeout shorter than the step", step(3, timeout="10 s"), {}, "steps[3].timeout",
     "shorter than the step's estimated"),
    ("bad on_error", step(3, on_error="ignore"), {}, "steps[3].on_error", "abort"),
    ("analysis of a missing step", add({"id": "a", "analysis": "ionic_conductivity",
                                        "args": {"data": "eis"}}), {}, "steps[4].args.data",
     "no earlier step 'eis'"),
    ("analysis of a step without data", add({"id": "a", "analysis": "ionic_conductivity",
                                             "args": {"data": "mix"}}), {},
     "steps[4].args.data", "step 'mix' records no data"),
    ("potential step not positive", add(POT("lsv", "lsv", E_begin="3 V", E_end="5 V",
                                            E_step="-5 mV", scan_rate="5 mV/s")), {},
     "steps[4].args.E_step", "must be above 0"),
    ("scan rate of wrong dimension", add(POT("lsv", "lsv", E_begin="3 V", E_end="5 V",
                                             E_step="5 mV", scan_rate="5 mV")), {},
     "steps[4].args.scan_rate", "is not a scan rate"),
    ("peis with both grids", add(POT("eis", "peis", amplitude="10 mV", f_start="1 kHz",
                                     f_end="1 Hz", n_frequencies=10, points_per_decade=5)), {},
     "steps[4].args.n_frequencies", "exactly one of n_frequencies and points_per_decade"),
    ("c-rate without capacity", add(POT("cyc", "gcpl", n_cycles=1, phases=[
        {"mode": "cc", "c_rate": "1 /h", "max_time": "1 h", "sample_interval": "10 s"}])), {},
     "steps[4].args.phases[0].c_rate", "needs nominal_capacity"),
    ("syringe pump used before initialize", lambda r: r["steps"].pop(0), {}, "steps[1]",
     "pump_ec is not initialised before this step"),
    ("measuring an empty vial", lambda r: r.update(steps=[
        POT("ocv", "ocv", duration="1 min", sample_interval="1 s")]), {},
     "steps[0]", "cell_vial holds no liquid"),
]


def _source(mutation: Any) -> Any:
    if isinstance(mutation, str):
        return mutation
    r = copy.deepcopy(BASE)
    if mutation is not None:
        mutation(r)
    return r


def test_base_recipe_is_valid() -> None:
    plan = build_plan(copy.deepcopy(BASE), {}, full_bench())
    assert [s.id for s in plan.leaves()] == ["init", "route", "ec", "mix"]


def test_the_table_is_broad() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("name", "mutation", "params", "path", "fragment"), CASES,
                         ids=[c[0] for c in CASES])
def test_broken_recipe_is_rejected(name: str, mutation: Any, params: dict[str, str], path: str,
                                   fragment: str) -> None:
    with pytest.raises(RecipeError) as info:
        build_plan(_source(mutation), params, full_bench(), base_dir=ROOT / "recipes")
    issues = info.value.issues
    matching = [i for i in issues if i.path == path and fragment in i.message]
    assert matching, f"expected {path}: …{fragment}…, got {[str(i) for i in issues]}"
    assert not any(i.message.startswith("internal error") for i in issues)


def test_expression_payload_was_not_executed() -> None:
    assert not Path("/tmp/labctl_pwned").exists()


def test_every_error_is_reported_at_once() -> None:
    r = copy.deepcopy(BASE)
    r["steps"][2]["device"] = "pump_x"
    r["steps"][3]["args"]["speed"] = "5000 rpm"
    r["steps"].append({"id": "w", "wait": "${nope}"})
    issues = validate(r, {"vol": "50 mL"}, full_bench())
    paths = [i.path for i in issues]
    assert paths == ["parameters.vol", "steps[2].device", "steps[3].args.speed",
                     "steps[4].wait"]


def test_an_invalid_parameter_does_not_pile_up_follow_on_errors() -> None:
    issues = validate(copy.deepcopy(BASE), {"vol": "banana"}, full_bench())
    assert [i.path for i in issues] == ["parameters.vol"]


def test_disabled_device_is_absent() -> None:
    def hotplate_off(data: dict[str, Any]) -> None:
        every_device_enabled(data)
        data["devices"]["hotplate"]["enabled"] = False

    cfg = load_edited(ROOT / "config" / "sim.toml", hotplate_off)
    issues = validate(copy.deepcopy(BASE), {}, cfg)
    assert [str(i) for i in issues] == [
        "steps[3].device: device 'hotplate' is disabled on bench sim-bench-1 (enabled = false)"]


def test_errors_inside_an_include_name_the_include(tmp_path: Path) -> None:
    inner = copy.deepcopy(BASE)
    inner["steps"][3]["args"]["speed"] = "5000 rpm"
    (tmp_path / "inner.json").write_text(json.dumps(inner))
    outer = copy.deepcopy(BASE)
    outer["steps"] = [{"id": "sub", "include": "inner.json", "params": {"vol": "1 mL"}}]
    (tmp_path / "outer.json").write_text(json.dumps(outer))
    issues = validate(tmp_path / "outer.json", {}, full_bench())
    assert [i.path for i in issues] == ["steps[0].include(inner.json).steps[3].args.speed"]


def test_include_parameters_are_checked_at_the_include(tmp_path: Path) -> None:
    (tmp_path / "inner.json").write_text(json.dumps(BASE))
    outer = copy.deepcopy(BASE)
    outer["steps"] = [{"id": "sub", "include": "inner.json", "params": {"vol": "8 mL"}}]
    issues = validate(outer, {}, full_bench(), base_dir=tmp_path)
    assert [i.path for i in issues] == ["steps[0].params.vol"]
    assert "above the maximum" in issues[0].message


def test_include_cycle_is_refused(tmp_path: Path) -> None:
    a = copy.deepcopy(BASE)
    a["steps"] = [{"id": "to_b", "include": "b.json"}]
    b = copy.deepcopy(BASE)
    b["steps"] = [{"id": "to_a", "include": "a.json"}]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    issues = validate(tmp_path / "a.json", {}, full_bench())
    assert any("include cycle: a.json → b.json → a.json" in i.message for i in issues), issues


def test_include_through_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.json").write_text(json.dumps(BASE))
    inside = tmp_path / "recipes"
    inside.mkdir()
    (inside / "link.json").symlink_to(outside / "x.json")
    r = copy.deepcopy(BASE)
    r["steps"] = [{"id": "x", "include": "link.json"}]
    (inside / "top.json").write_text(json.dumps(r))
    issues = validate(inside / "top.json", {}, full_bench())
    assert [(i.path, "outside the recipe folder" in i.message) for i in issues] == [
        ("steps[0].include", True)]


def test_deep_nesting_is_refused_not_crashed() -> None:
    deep = '{"schema": "labctl.recipe/1", "name": "d", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    issues = validate(deep, {}, full_bench())
    assert len(issues) == 1 and "nested deeper than 64 levels" in issues[0].message
    nested: Any = []
    for _ in range(200):
        nested = [nested]
    issues = validate({"schema": "labctl.recipe/1", "name": "d", "x": nested}, {}, full_bench())
    assert len(issues) == 1 and "nested deeper than 64 levels" in issues[0].message


def test_deeply_nested_steps_are_refused() -> None:
    inner: dict[str, Any] = {"id": "w", "wait": "1 s"}
    for k in range(40):
        inner = {"id": f"s{k}", "steps": [inner]}
    r = {"schema": "labctl.recipe/1", "name": "deep", "steps": [inner]}
    issues = validate(r, {}, full_bench())
    assert len(issues) == 1 and "nested deeper than" in issues[0].message


def test_file_over_one_mebibyte_is_refused(tmp_path: Path) -> None:
    big = copy.deepcopy(BASE)
    big["description"] = "x" * 9000
    big["steps"] = [{"id": f"w{k}", "wait": "1 s", "description": "y" * 9000}
                    for k in range(130)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big))
    assert path.stat().st_size > 1 << 20
    issues = validate(path, {}, full_bench())
    assert len(issues) == 1 and "larger than 1 MiB" in issues[0].message
    issues = validate(path.read_text(), {}, full_bench())
    assert len(issues) == 1 and "larger than 1 MiB" in issues[0].message


def test_loops_that_expand_too_far_are_refused() -> None:
    r = copy.deepcopy(BASE)
    r["steps"] = [{"id": "a", "repeat": 10000, "steps": [
        {"id": "b", "repeat": 10000, "steps": [{"id": "w", "wait": "1 s"}]}]}]
    issues = validate(r, {}, full_bench())
    assert len(issues) == 1 and "expands to more than 50000 steps" in issues[0].message


def test_errors_in_loop_iterations_name_the_iteration() -> None:
    r = copy.deepcopy(BASE)
    r["steps"].append({"id": "fill", "repeat": 6, "steps": [EC("more", "4 mL")]})
    issues = validate(r, {}, full_bench())
    assert [i.path for i in issues] == ["steps[4].steps[0].args.to"]
    assert "cell_vial would overflow" in issues[0].message
    assert "(step fill[4].more)" in issues[0].message


def test_material_flow_is_checked_up_to_the_first_rejected_step() -> None:
    r = copy.deepcopy(BASE)
    r["steps"] += [EC("a", "5 mL"), EC("b", "5 mL"), EC("c", "5 mL"), EC("d", "5 mL"),
                   {"id": "odd", "device": "pump_x", "action": "transfer", "args": {}},
                   EC("e", "5 mL")]
    issues = validate(r, {}, full_bench())
    assert [i.path for i in issues] == ["steps[8].device", "steps[7].args.to"]
    assert "cell_vial would overflow" in issues[1].message


def test_analysis_arguments_follow_the_analysis_declaration() -> None:
    r = copy.deepcopy(BASE)
    r["steps"] = [EC("ec", "4 mL"),
                  POT("eis", "peis", amplitude="10 mV", f_start="10 kHz", f_end="10 Hz",
                      n_frequencies=10),
                  {"id": "a", "analysis": "ionic_conductivity",
                   "args": {"step": "eis", "cell_constant": "1 V", "colour": "red"}},
                  {"id": "b", "analysis": "no_such_analysis"}]
    r["steps"][:0] = copy.deepcopy(BASE["steps"][:2])
    issues = validate(r, {}, full_bench())
    assert [i.path for i in issues] == ["steps[4].args.cell_constant", "steps[4].args.colour",
                                        "steps[5].analysis"]
    assert "unknown analysis 'no_such_analysis'" in issues[2].message
