"""The simulated chemistry (issue 17): neat EC is a solid below 36.4 °C, and the coating
recipe is a real (simulated) TEOS sol-gel with a figure of merit.

EC: config/sim.toml keeps res_ec as a warmed reservoir (40 °C). Declared colder, `labctl
validate` refuses a recipe pumping EC from it (naming the JSON path, the material and both
temperatures), and the simulated bench refuses too: the pump's plunger stalls (DT error 9,
`Stalled`) and nothing moves.

Sol-gel: the coating recipe runs on the simulated bench and returns the gel time (from the
coat stirrer's recorded viscosity trend) and a Landau-Levich film thickness; the gel time
falls with more water, more acid and more heat, as the published rate form says.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from labctl.capabilities import SyringePump
from labctl.config import BenchConfig, load_config, parse_config
from labctl.errors import Stalled
from labctl.instruments import Instruments
from simulators import solgel
from simulators.world import World

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
SIM_TOML = ROOT / "config" / "sim.toml"
CONDUCTIVITY = ROOT / "recipes" / "electrolyte_conductivity.json"
COATING = ROOT / "recipes" / "coating_synthesis.json"
ML = 1e-3
LABCTL = [sys.executable, "-m", "labctl"]


RES_EC_LINE = 'temperature = "40 degC"     # thermostatted: neat EC melts at 36.4 degC'


def res_ec_text(temperature: str | None) -> str:
    """config/sim.toml with res_ec declared at `temperature` (None: undeclared)."""
    text = SIM_TOML.read_text()
    assert text.count(RES_EC_LINE) == 1
    return text.replace(RES_EC_LINE, "" if temperature is None
                        else f'temperature = "{temperature}"')


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=200)


# ---------------------------------------------------------------- EC: a warmed reservoir


def test_the_shipped_bench_keeps_ec_molten_and_validates_the_conductivity_recipe() -> None:
    cfg = load_config(SIM_TOML)
    assert cfg.vessel_temperature_c("res_ec") == pytest.approx(40.0)
    assert cfg.materials["EC"].melting_point is not None
    out = cli("validate", str(CONDUCTIVITY), "--config", str(SIM_TOML))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("declared", "shown"), [("20 degC", "declared at 20 °C"),
                                                 (None, "22 °C")],
                         ids=["declared-cold", "undeclared-ambient"])
def test_validate_refuses_pumping_ec_from_a_reservoir_colder_than_its_melting_point(
        tmp_path: Path, declared: str | None, shown: str) -> None:
    config = tmp_path / "cold.toml"
    config.write_text(res_ec_text(declared))
    out = cli("validate", str(CONDUCTIVITY), "--config", str(config), "--json")
    assert out.returncode == 2, out.stdout + out.stderr
    errors = {e["path"]: e["message"] for e in json.loads(out.stdout)["errors"]}
    message = errors["steps[3].args.from"]  # the EC transfer's source, by its JSON path
    assert "EC" in message and "36.4 °C" in message and shown in message, message
    assert "res_ec" in message


async def test_a_pump_drawing_frozen_ec_stalls_and_nothing_moves() -> None:
    """res_ec at 20 °C holds solid EC: the TriContinent's plunger stalls at once (error 9,
    `Stalled`), the reservoir keeps every gram; warmed to 40 °C the same draw works."""
    cfg: BenchConfig = parse_config(tomllib.loads(res_ec_text("20 degC")), "cold.toml")
    inst = Instruments(cfg, time_scale=1000.0, only=["pump_ec", "sel_valve"])
    await inst.start()
    try:
        world = inst.simulation.world
        assert isinstance(world, World)
        assert world.vessel("res_ec").temperature_c == pytest.approx(20.0)
        pump = inst.devices["pump_ec"]
        assert isinstance(pump, SyringePump)
        before = world.composition("res_ec")["EC"]
        await pump.initialize()
        await pump.set_valve("res_ec")
        with pytest.raises(Stalled) as err:
            await pump.aspirate(1 * ML)
        assert err.value.code == 9
        assert world.composition("res_ec")["EC"] == pytest.approx(before, rel=1e-12)
        assert world.volume_l("pump_ec.syringe") == 0.0

        world.set_temperature("res_ec", 40.0)  # the thermostat switched on
        await pump.initialize()
        await pump.set_valve("res_ec")
        await pump.aspirate(1 * ML)
        assert world.volume_l("pump_ec.syringe") == pytest.approx(1 * ML, rel=1e-3)
    finally:
        await inst.safe_state_all()
        await inst.close()


# ---------------------------------------------------------------- the sol-gel coating


def run_coating(tmp_path: Path, **params: Any) -> dict[str, float]:
    """The coating recipe on the simulated bench (shortened drying); its figures by name."""
    args = ["run", str(COATING), "--config", str(SIM_TOML), "--data-dir",
            str(tmp_path / "runs"), "--time-scale", "1000", "--json",
            "--param", "hydrolysis_time=30 min", "--param", "segment=1 min"]
    for k, v in params.items():
        args += ["--param", f"{k}={v}"]
    out = cli(*args)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed", result
    return {f["name"]: f["value"] for f in result["figures_of_merit"]}


def expected_gel_time_s(water_ratio: float = 4, acid_ratio: float = 0.01,
                        temperature_c: float = 40.0, ethanol_ratio: float = 4,
                        teos_ml: float = 2.0) -> float:
    """The model's gel time for the recipe's composition held at temperature_c."""
    n = teos_ml * 0.933 / 208.33
    volume_l = (teos_ml + n * (ethanol_ratio * 46.07 / 0.789 + water_ratio * 18.015 / 0.997)
                ) * 1e-3
    return solgel.gel_time_s(n * water_ratio / volume_l, n * acid_ratio / volume_l,
                             n / volume_l, temperature_c)


def test_the_coating_recipe_returns_gel_time_and_film_thickness(tmp_path: Path) -> None:
    """Measured from the stirrer's recorded trace, the gel time is the model's for the
    composition made (to within the heating ramp and the reading resolution), and the
    Landau-Levich film is a few micrometres at 1 mm/s."""
    figs = run_coating(tmp_path)
    assert figs["gel_time"] == pytest.approx(expected_gel_time_s(), rel=0.15)
    assert figs["gel_time_h"] == pytest.approx(figs["gel_time"] / 3600)
    assert 1.5e-3 < figs["dip_viscosity"] < 3e-3  # thickened from the fresh 1.5 mPa s
    assert 1e-6 < figs["wet_film_thickness"] < 1e-5


@pytest.mark.parametrize(("param", "low", "high"), [
    ("water_ratio", 2, 8), ("acid_ratio", 0.004, 0.04), ("temperature", "30 degC", "60 degC")],
    ids=["water", "acid", "temperature"])
def test_more_water_acid_or_heat_gels_sooner(tmp_path: Path, param: str, low: Any,
                                             high: Any) -> None:
    slow = run_coating(tmp_path / "low", **{param: low})["gel_time"]
    fast = run_coating(tmp_path / "high", **{param: high})["gel_time"]
    assert fast < 0.8 * slow, (param, slow, fast)


def test_the_sol_gel_analysis_refuses_a_sol_that_never_thickens(tmp_path: Path) -> None:
    """A flat viscosity trend (no water or no catalyst) has no gel time: the analysis says
    so and marks its figures failed, never extrapolating a number from noise."""
    from labctl.analysis import ANALYSES
    from labctl.analysis.registry import AnalysisRefused
    from labctl.bdf import BdfWriter
    from labctl.capabilities.potentiostat import DataPoint

    path = tmp_path / "stir.bdf.csv"
    writer = BdfWriter(path, technique="viscometry")
    for i in range(20):
        writer.write(DataPoint(time_s=90.0 * i, extra={"Viscosity Trend / %": 0.1 * (i % 2),
                                                       "Medium Temperature / degC": 40.0}))
    writer.close()
    with pytest.raises(AnalysisRefused) as err:
        ANALYSES["sol_gel"]({"stir": path})
    assert "no gelation" in err.value.reason
    assert {f["name"] for f in err.value.failed_figures} == {"gel_time", "wet_film_thickness"}
    assert all(f["value"] is None for f in err.value.failed_figures)
