"""FINALES formulations onto recipe parameters and back (labctl.finales), on config/sim.toml
and recipes/electrolyte_conductivity.json: no server needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.config import load_config
from labctl.finales.capability import admits, load_capabilities, tenant_description
from labctl.finales.formulation import (
    Refusal,
    parse_request,
    to_fractions,
    to_recipe_parameters,
)
from labctl.recipe import RecipeError, build_plan
from labctl.recipe.models import Recipe
from tests.finales_server import DMC, EC, EMC, EXAMPLE_1M, LIPF6, formulation

ROOT = Path(__file__).resolve().parent.parent
CFG = load_config(ROOT / "config" / "sim.toml")
CAP = next(c for c in load_capabilities(CFG) if c.key == ("conductivity", "two_electrode"))


def params_for(request: dict) -> dict:
    comps, temp = parse_request(request)
    return to_recipe_parameters(CAP.recipe, CAP.finales, CFG, comps, temp)


def test_schemas_example_is_one_molal_lipf6_in_ec_dmc_one_to_one_by_mass() -> None:
    p = params_for(EXAMPLE_1M)
    molality = float(p["salt_molality"].split()[0])
    assert p["salt_molality"].endswith("mol/kg") and molality == pytest.approx(1.0, abs=1e-3)
    # 1:1 by mass -> by volume EC/1.32 : DMC/1.07
    assert p["ec_fraction"] == pytest.approx((1 / 1.32) / (1 / 1.32 + 1 / 1.07), abs=1e-4)
    assert p["temperature"] == "25 degC"
    low = params_for(formulation((LIPF6, 0.02602), (EC, 0.49251), (DMC, 0.48147)))
    assert float(low["salt_molality"].split()[0]) == pytest.approx(0.3, abs=1e-3)
    build_plan(CAP.path, p, CFG)  # a plan the bench accepts


def test_no_temperature_keeps_the_recipe_default() -> None:
    p = params_for(formulation((LIPF6, 0.08178), (EC, 0.46432), (DMC, 0.45391),
                               temperature=None))
    assert "temperature" not in p


@pytest.mark.parametrize(("request_", "code", "says"), [
    (formulation((LIPF6, 0.08), (EC, 0.46), (EMC, 0.46)), "unknown_chemical",
     "JBTWLSYIZRCDFO-UHFFFAOYSA-N"),
    (formulation((LIPF6, 0.08), (EC, 0.46), (DMC, 0.36)), "malformed", "add up to 0.9"),
    (formulation((LIPF6, 0.08), (EC, 0.46), (EC, 0.46)), "malformed", "listed twice"),
    (formulation((LIPF6, 1.5), (EC, 0.46)), "malformed", "formulation[0].fraction"),
    (formulation((LIPF6, 1.0)), "out_of_limits", "none of EC, DMC"),
    ({"formulation": []}, "malformed", "non-empty"),
    (formulation((LIPF6, 0.08178), (EC, 0.46432), (DMC, 0.45391), temperature=-3.0),
     "malformed", "temperature"),
])
def test_what_cannot_be_made_is_refused_naming_why(request_: dict, code: str,
                                                   says: str) -> None:
    with pytest.raises(Refusal) as err:
        params_for(request_)
    assert err.value.code == code and says in err.value.reason


def test_other_fraction_types_are_refused() -> None:
    req = formulation((LIPF6, 0.08178), (EC, 0.46432), (DMC, 0.45391))
    req["formulation"][1]["fraction_type"] = "volPerVol"
    with pytest.raises(Refusal, match="volPerVol"):
        params_for(req)


def test_bench_material_the_recipe_cannot_dose_is_refused() -> None:
    etoh = {"SMILES": "CCO", "InChIKey": "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"}
    with pytest.raises(Refusal, match="cannot dose it") as err:
        params_for(formulation((LIPF6, 0.08), (EC, 0.46), (etoh, 0.46)))
    assert err.value.code == "unknown_chemical"


def test_out_of_bounds_formulations_are_refused_by_the_plan() -> None:
    p = params_for(formulation((LIPF6, 0.4), (EC, 0.3), (DMC, 0.3)))
    with pytest.raises(RecipeError, match="salt_molality"):
        build_plan(CAP.path, p, CFG)


@settings(max_examples=60, deadline=None)
@given(m=st.floats(0.1, 2.0), phi=st.floats(0.1, 0.9))
def test_parameters_map_to_fractions_and_back(m: float, phi: float) -> None:
    fr = to_fractions(CAP.finales, CFG, {"salt_molality": m, "ec_fraction": phi}, CAP.recipe)
    assert sum(fr.values()) == pytest.approx(1.0)
    keys = {"LiPF6": LIPF6, "EC": EC, "DMC": DMC}
    p = params_for(formulation(*[(keys[k], v) for k, v in fr.items()]))
    assert float(p["salt_molality"].split()[0]) == pytest.approx(m, rel=1e-6)
    assert p["ec_fraction"] == pytest.approx(phi, rel=1e-6)


def test_tenant_description_derives_limitations_from_the_recipe_bounds() -> None:
    desc = tenant_description(CFG, [CAP], name="t")
    (lim,) = desc["limitations"]
    assert (lim["quantity"], lim["method"]) == ("conductivity", "two_electrode")
    assert lim["limitations"]["temperature"] == [{"min": 293.15, "max": 333.15}]
    comps = {c["chemical"]["InChIKey"]: c["fraction"][0]
             for c in lim["limitations"]["formulation"][0]}
    assert set(comps) == {LIPF6["InChIKey"], EC["InChIKey"], DMC["InChIKey"]}
    assert 0.0 < comps[LIPF6["InChIKey"]]["min"] < 0.02602
    assert 0.08178 < comps[LIPF6["InChIKey"]]["max"] < 0.2
    assert admits(lim["limitations"], EXAMPLE_1M)
    assert not admits(lim["limitations"], formulation((LIPF6, 0.08), (EC, 0.46), (EMC, 0.46)))
    hot = formulation((LIPF6, 0.08178), (EC, 0.46432), (DMC, 0.45391), temperature=400.0)
    assert not admits(lim["limitations"], hot)


def test_finales_block_naming_unknown_parameters_or_materials_is_invalid(
        tmp_path: Path) -> None:
    data = json.loads((ROOT / "recipes" / "electrolyte_conductivity.json").read_text())
    data["finales"]["parameters"]["salt"] = {"from": "molality", "of": "NaCl", "in": ["EC"]}
    with pytest.raises(ValueError, match=r"finales\.parameters\.salt: no recipe parameter"):
        Recipe.model_validate(data)
    with pytest.raises(ValueError, match="'NaCl' is not a material of the recipe"):
        Recipe.model_validate(data)


def test_stock_promised_to_earlier_runs_is_not_promised_again(tmp_path: Path) -> None:
    import tomllib

    import tomli_w

    from labctl.finales.stock import StockLedger

    data = tomllib.loads((ROOT / "config" / "sim.toml").read_text())
    data["vessels"]["res_dmc"]["contents"] = {"DMC": "3 mL"}
    path = tmp_path / "bench.toml"
    path.write_text(tomli_w.dumps(data))
    cfg = load_config(path)
    plan = build_plan(CAP.path, params_for(EXAMPLE_1M), cfg)  # 2.2 mL DMC: fits once
    ledger = StockLedger(cfg)
    ledger.check(plan)
    ledger.take(plan, "run-1")
    with pytest.raises(Refusal, match=r"DMC in res_dmc: 0\.7\d* mL left .*run-1") as err:
        ledger.check(plan)
    assert err.value.code == "not_enough_stock"


def test_serve_refuses_bad_arguments_before_starting_anything(tmp_path: Path) -> None:
    import subprocess
    import sys

    pw = tmp_path / "pw"
    pw.write_text("x\n")
    base = [sys.executable, "-m", "labctl", "finales", "serve", "--server",
            "http://127.0.0.1:9", "--username", "u", "--password-file", str(pw),
            "--data-dir", str(tmp_path / "runs")]
    out = subprocess.run([*base, "--tenant-uuid", "not-a-uuid"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and "--tenant-uuid 'not-a-uuid': not a uuid" in out.stderr
    plain = tmp_path / "plain.json"
    data = json.loads((ROOT / "recipes" / "electrolyte_conductivity.json").read_text())
    del data["finales"]
    plain.write_text(json.dumps(data))
    out = subprocess.run([sys.executable, "-m", "labctl", "finales", "tenant", "--recipe",
                          str(plain)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and f"{plain}: has no 'finales' block" in out.stderr
    assert not (tmp_path / "runs").exists()
