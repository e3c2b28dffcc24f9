"""What the run record says must be right (issue 17, the record): real recipes on the
simulated bench (config/sim.toml), the run folder read back — metadata.json, result.json
and data/*.csv — and compared with what the simulated world received."""

from __future__ import annotations

import csv
import io
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from labctl.bench import Bench
from labctl.config import load_config
from labctl.errors import ConfigError
from tests.config_support import load_edited, long_watchdog

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(240)


async def _run(tmp_path: Path, recipe: Any, params: dict[str, Any] | None = None,
               time_scale: float = 300, config: Path = ROOT / "config" / "sim.toml",
               ) -> tuple[dict[str, Any], Path, list[dict[str, Any]]]:
    """Run one recipe to its end; (result.json, run folder, the world's ledger)."""
    cfg = load_edited(config, long_watchdog)
    bench = Bench(cfg, data_dir=tmp_path / "runs", time_scale=time_scale)
    await bench.start()
    try:
        run_id = await bench.submit(recipe, params or {})
        await bench.wait(run_id)
        ledger = list(bench.instruments.simulation.world.ledger)
    finally:
        await bench.close()
    folder = tmp_path / "runs" / run_id
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "completed", result["errors"]
    return result, folder, ledger


def _destinations(ledger: list[dict[str, Any]], source: str) -> list[str]:
    """Where the world received liquid from `source`, in order, one entry per delivery: a
    peristaltic pump's simulator moves liquid at every clock tick, so one transfer is
    several ledger entries (more of them on a loaded machine)."""
    out: list[str] = []
    for e in ledger:
        if e["op"] == "move_volume" and e["from"] == source and (not out or out[-1] != e["to"]):
            out.append(e["to"])
    return out


def _meta(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "metadata.json").read_text())
    return data


ROUTED = {
    "schema": "labctl.recipe/1", "name": "routed_rinse", "version": "1",
    "description": "ethanol through the selector valve into cell_vial, then to waste",
    "materials": {"EtOH": {"name": "ethanol", "location": "res_etoh"}},
    "steps": [
        {"id": "to_cell", "device": "sel_valve", "action": "move",
         "args": {"position": "cell_vial"}},
        {"id": "into_cell", "device": "rinse_pump", "action": "transfer",
         "args": {"volume": "1.5 mL", "flow": "30 mL/min"}},
        {"id": "to_coat", "device": "sel_valve", "action": "move", "args": {"position": 2}},
        {"id": "into_coat", "device": "rinse_pump", "action": "transfer",
         "args": {"volume": "2 mL", "flow": "30 mL/min"}},
    ],
}


async def test_additions_through_the_selector_valve_name_the_vial_they_reached(
        tmp_path: Path) -> None:
    _result, folder, ledger = await _run(tmp_path, ROUTED)
    adds = {a["step"]: a for a in _meta(folder)["additions"]}
    assert _destinations(ledger, "res_etoh") == ["cell_vial", "coat_vial"]  # what the world got
    assert adds["into_cell"]["vessel"] == "cell_vial"
    assert adds["into_coat"]["vessel"] == "coat_vial"
    assert adds["into_coat"]["material"] == "EtOH"
    assert adds["into_coat"]["route"] == [{"device": "sel_valve", "position": 2,
                                           "leads_to": "coat_vial"}]
    assert not any(str(a["vessel"]).startswith("@") for a in adds.values())


CONDUCTIVITY = ROOT / "recipes" / "electrolyte_conductivity.json"


async def test_mixing_and_conductivity_carry_setpoint_and_measured_temperature(
        tmp_path: Path) -> None:
    result, folder, _ledger = await _run(tmp_path, CONDUCTIVITY, {"temperature": "30 degC"})
    meta = _meta(folder)

    # mixing: the setpoint of the `set` step before it, and the temperatures measured
    mix = meta["mixing"][0]
    assert mix["setpoint_c"] == pytest.approx(30.0)
    samples = mix["temperatures"]
    assert len(samples) >= 3
    assert mix["measured_c"] == pytest.approx(
        sum(s["measured_c"] for s in samples) / len(samples))
    assert 15.0 < min(s["measured_c"] for s in samples) <= 30.5
    temps = meta["temperatures"]
    assert any(t["step"] == "mix" and t["setpoint_c"] == pytest.approx(30.0)
               and t["measured_c"] is not None for t in temps)

    # the conductivity is given at the cell temperature measured during the EIS
    cell = next(t for t in temps if t["step"] == "eis")
    assert cell["device"] == "hotplate" and cell["vessel"] == "cell_vial"
    sigma = next(f for f in result["figures_of_merit"] if f["name"] == "ionic_conductivity")
    assert sigma["temperature_k"] == pytest.approx(cell["measured_c"] + 273.15)
    assert sigma["temperature_measured"] is True
    assert "hotplate" in sigma["temperature_source"] and "eis" in sigma["temperature_source"]
    assert sigma["temperature_requested_k"] == pytest.approx(303.15)
    # ... and the run conditions name it as measured
    [measured] = meta["conditions"]["cell_temperature"]
    assert measured["measured_c"] == cell["measured_c"] and measured["step"] == "eis"



async def test_result_has_typed_resolved_parameters_and_the_rinse_its_vial(
        tmp_path: Path) -> None:
    result, folder, ledger = await _run(tmp_path, CONDUCTIVITY,
                                        {"temperature": "30 degC", "ec_fraction": "0.4"})
    meta = _meta(folder)
    # the resolved parameters, defaults included, typed with units, in both documents
    params = result["parameters"]
    assert params["temperature"] == {"type": "quantity", "value": 30.0, "unit": "degC",
                                     "text": "30 °C", "source": "submitted"}
    assert params["ec_fraction"]["value"] == 0.4 and params["ec_fraction"]["unit"] is None
    assert params["salt_molality"]["value"] == 1.0
    assert params["salt_molality"]["unit"] == "mol/kg"
    assert params["salt_molality"]["source"] == "default"
    assert params["solvent_volume"]["value"] == 4.0
    assert meta["parameters_resolved"] == params
    assert result["parameters_submitted"] == {"temperature": "30 degC", "ec_fraction": "0.4"}

    # the rinse's ethanol went through the selector valve into cell_vial
    etoh = [a for a in meta["additions"] if a["material"] == "EtOH"]
    assert [a["vessel"] for a in etoh] == _destinations(ledger, "res_etoh") == ["cell_vial"]


async def test_unix_time_never_goes_back_across_the_steps_of_a_run(tmp_path: Path) -> None:
    _result, folder, _ledger = await _run(
        tmp_path, ROOT / "recipes" / "stability_window.json",
        {"scan_rate": "50 mV/s", "upper_limit": "4.5 V", "lower_limit": "1.5 V"})
    meta = _meta(folder)
    order = [s["id"] for s in meta["steps"]]
    files = sorted((f for f in meta["data_files"] if f["path"].endswith(".bdf.csv")),
                   key=lambda f: order.index(Path(f["path"]).name.split(".")[0]))
    assert [Path(f["path"]).name for f in files] == ["rest.bdf.csv", "anodic.bdf.csv",
                                                     "cathodic.bdf.csv"]
    times: list[float] = []
    for f in files:
        text = (folder / f["path"]).read_text(encoding="utf-8")
        times += [float(row["Unix Time / s"]) for row in csv.DictReader(io.StringIO(text))]
    assert len(times) > 100
    assert all(b >= a for a, b in itertools.pairwise(times)), "Unix Time went back"
    assert all(f["unix_time_clock"] == "simulated" for f in files)
    assert meta["clock"]["basis"] == "simulated"
    assert "simulated" in meta["clock"]["note"]
    assert len(meta["clock"]["sessions"]) == 1


def _bench_with_conditions(tmp_path: Path, table: str) -> Path:
    text = (ROOT / "config" / "sim.toml").read_text(encoding="utf-8")
    path = tmp_path / "glovebox.toml"
    path.write_text(text.replace('recipes_dir = "recipes"',
                                 f'recipes_dir = "{ROOT / "recipes"}"') + "\n" + table,
                    encoding="utf-8")
    return path


async def test_declared_conditions_go_into_the_metadata(tmp_path: Path) -> None:
    config = _bench_with_conditions(tmp_path, """
[conditions]
atmosphere = "argon glovebox"
o2_ppm = 0.4
h2o_ppm = 0.2
relative_humidity = 35
ambient_temperature = "22 degC"
""")
    _result, folder, _ledger = await _run(tmp_path, ROUTED, config=config)
    cond = _meta(folder)["conditions"]
    assert cond["declared"] == {
        "atmosphere": "argon glovebox", "o2": {"value": 0.4, "unit": "ppm"},
        "h2o": {"value": 0.2, "unit": "ppm"}, "relative_humidity": {"value": 35.0, "unit": "%"},
        "ambient_temperature": {"value": pytest.approx(22.0), "unit": "degC"}}
    assert "glovebox.toml" in cond["declared_source"] and "declared" in cond["declared_source"]


@pytest.mark.parametrize(("table", "key", "reason"), [
    ("o2_ppm = -1", "conditions.o2_ppm", "greater than or equal to 0"),
    ("relative_humidity = 140", "conditions.relative_humidity", "less than or equal to 100"),
    ('ambient_temperature = "3 mL"', "conditions.ambient_temperature", "not a temperature"),
    ('pressure = "2 degC"', "conditions.pressure", "not a pressure"),
    ("oxygen = 3", "conditions.oxygen", "Extra inputs are not permitted"),
])
def test_bad_conditions_name_the_key_and_why(tmp_path: Path, table: str, key: str,
                                            reason: str) -> None:
    config = _bench_with_conditions(tmp_path, f"[conditions]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "glovebox.toml" in str(err.value) and key in str(err.value)
    assert reason in str(err.value)


def test_plan_out_writes_sop_with_hazards_and_ppe_and_a_step_csv(tmp_path: Path) -> None:
    out = tmp_path / "sop"
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", "plan", str(CONDUCTIVITY), "--config",
         str(ROOT / "config" / "sim.toml"), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    sop = (out / "electrolyte_conductivity.sop.md").read_text(encoding="utf-8")
    hazards = sop.split("## Hazards and PPE", 1)[1].split("## Instruments", 1)[0]
    lipf6 = next(line for line in hazards.splitlines() if line.startswith("| LiPF6 |"))
    assert "21324-40-3" in lipf6 and "H314: Causes severe skin burns and eye damage" in lipf6
    assert "EUH014: Reacts violently with water" in lipf6 and "HF" in lipf6
    assert "| DMC | 616-38-6 | H225: Highly flammable liquid and vapour |" in hazards
    ppe = {line for line in hazards.splitlines() if line.startswith("- ")}
    assert any("HF" in p and "calcium gluconate" in p and p.endswith("(LiPF6)") for p in ppe)
    assert any(p.startswith("- Flammable") and p.endswith("(DMC, EtOH)") for p in ppe)
    assert any("goggles" in p and "LiPF6" in p for p in ppe)

    with open(out / "electrolyte_conductivity.sop.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    from labctl.recipe.validate import build_plan

    plan = build_plan(CONDUCTIVITY, {}, load_config(ROOT / "config" / "sim.toml"))
    assert [r["step"] for r in rows] == [s.id for s in plan.leaves()]
    assert [int(r["number"]) for r in rows] == list(range(1, len(rows) + 1))
    salt = next(r for r in rows if r["step"] == "salt")
    assert salt["device"] == "dispenser" and salt["materials"] == "LiPF6"
    assert set(salt["hazards"].split()) == {"H302", "H314", "H372", "EUH014"}
    assert next(r for r in rows if r["step"] == "mix")["hazards"] == ""


@pytest.mark.parametrize(("line", "key", "reason"), [
    ('cas = "64-17-4"', "materials.EtOH.cas", "wrong check digit (expected 5)"),
    ('cas = "ethanol"', "materials.EtOH.cas", "not a CAS registry number"),
    ('ghs = ["H225", "X9"]', "materials.EtOH.ghs", "'X9' is not a GHS hazard statement"),
])
def test_bad_material_hazards_name_the_key_and_why(tmp_path: Path, line: str, key: str,
                                                   reason: str) -> None:
    text = (ROOT / "config" / "sim.toml").read_text(encoding="utf-8")
    start = text.index("[materials.EtOH]")
    block_end = text.index("\n\n", start)
    block = "\n".join(x for x in text[start:block_end].splitlines()
                      if not x.startswith(line.split(" ")[0] + " "))
    path = tmp_path / "bad.toml"
    path.write_text(text[:start] + block + "\n" + line + text[block_end:], encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "bad.toml" in str(err.value) and key in str(err.value)
    assert reason in str(err.value)


SWEEPS = {
    "schema": "labctl.recipe/1", "name": "sweeps", "version": "1",
    "description": "EC/DMC into cell_vial, then a rest and two sweeps (no include: a "
                   "resumed run replans from its record)",
    "steps": [
        {"id": "init", "parallel": [
            {"id": "pump_ec", "device": "pump_ec", "action": "initialize", "idempotent": True},
            {"id": "pump_dmc", "device": "pump_dmc", "action": "initialize",
             "idempotent": True}]},
        {"id": "route", "device": "sel_valve", "action": "move",
         "args": {"position": "cell_vial"}, "idempotent": True},
        {"id": "ec", "device": "pump_ec", "action": "transfer",
         "args": {"volume": "2 mL", "from": "res_ec", "to": "cell_vial", "flow": "10 mL/min"}},
        {"id": "dmc", "device": "pump_dmc", "action": "transfer",
         "args": {"volume": "2 mL", "from": "res_dmc", "to": "cell_vial",
                  "flow": "10 mL/min"}},
        {"id": "mix", "device": "hotplate", "action": "stir",
         "args": {"speed": "300 rpm", "duration": "5 min"}},
        {"id": "rest", "device": "potentiostat", "action": "ocv",
         "args": {"duration": "2 min", "sample_interval": "1 s"}, "idempotent": True},
        # slow enough (750 s simulated, 2.5 s of wall time) to be killed in the middle
        {"id": "anodic", "device": "potentiostat", "action": "lsv",
         "args": {"E_begin": "3.0 V", "E_end": "4.5 V", "E_step": "5 mV",
                  "scan_rate": "2 mV/s", "vs": "ref"}, "idempotent": True},
        {"id": "cathodic", "device": "potentiostat", "action": "lsv",
         "args": {"E_begin": "3.0 V", "E_end": "1.5 V", "E_step": "5 mV",
                  "scan_rate": "20 mV/s", "vs": "ref"}, "idempotent": True},
    ],
}


def test_unix_time_stays_monotonic_across_a_kill_and_resume(tmp_path: Path) -> None:
    """Killed during the anodic scan, resumed: the resumed session's data carry on after
    the last time recorded by the first (simulated time ran ahead of the wall clock)."""
    data = tmp_path / "runs"
    recipe = tmp_path / "sweeps.json"
    recipe.write_text(json.dumps(SWEEPS), encoding="utf-8")
    common = ["--config", str(ROOT / "config" / "sim.toml"), "--data-dir", str(data),
              "--time-scale", "300", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "labctl", "run", str(recipe), *common],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        journal: Path | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(data.glob("*/events.jsonl")) if data.exists() else []
            journal = found[0] if found else None
            if journal is not None and '"step_started"' in journal.read_text() and any(
                    e.get("event") == "step_started" and e.get("step") == "anodic"
                    for e in map(json.loads, journal.read_text().splitlines())):
                break
            time.sleep(0.05)
        assert journal is not None and proc.poll() is None, "the anodic scan never started"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    run_id = journal.parent.name
    out = subprocess.run([sys.executable, "-m", "labctl", "resume", run_id, *common],
                         cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    meta = _meta(journal.parent)
    order = ["rest", "anodic", "cathodic"]
    times: list[float] = []
    for step in order:
        text = (journal.parent / "data" / f"{step}.bdf.csv").read_text(encoding="utf-8")
        times += [float(row["Unix Time / s"]) for row in csv.DictReader(io.StringIO(text))]
    assert all(b >= a for a, b in itertools.pairwise(times)), "Unix Time went back"
    assert len(meta["clock"]["sessions"]) == 2
