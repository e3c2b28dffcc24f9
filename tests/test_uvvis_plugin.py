"""The example plugin examples/plugins/labctl-uvvis (installed by `make install`) adds a UV-Vis
spectrometer without a line of labctl changed: its driver, simulator, action and analysis are
found through entry points, its recipe runs on the simulated bench over a real pty, and its
limits are checked before anything moves."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from labctl_uvvis.simulator import UvVisSimulator

import labctl
from labctl import load_config
from labctl.actions import ACTIONS, action_catalogue, driver_capabilities
from labctl.analysis import ANALYSES, analysis_catalogue
from labctl.bdf import read_bdf
from labctl.clock import ScaledClock
from labctl.errors import LimitError
from labctl.instruments import Instruments
from labctl.recipe import RecipeError, build_plan
from simulators.world import World

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "plugins" / "labctl-uvvis"
CONFIG = PLUGIN / "config" / "uvvis_bench.toml"
RECIPE = PLUGIN / "recipes" / "uvvis_dilution.json"
pytestmark = pytest.mark.timeout(180)

#: the stock's density and the simulated band (config/uvvis_bench.toml)
STOCK_G_ML = 0.79
ABSORPTIVITY = 0.002  # L/(g*cm), 1 cm path
PEAK_NM = 464.0


def test_the_plugin_is_found_through_entry_points_alone() -> None:
    assert driver_capabilities("uvvis-sim100") == ("spectrometer",)
    assert ACTIONS["spectrometer"]["scan"].records_data
    assert "absorbance_peak" in ANALYSES
    scan = next(a for a in action_catalogue()
                if (a["capability"], a["name"]) == ("spectrometer", "scan"))
    args = {a["name"]: a for a in scan["args"]}  # type: ignore[union-attr]
    assert args["start"]["unit"] == "nm" and args["start"]["dimension"] == "wavelength"
    assert not args["step"]["required"]
    peak = next(a for a in analysis_catalogue() if a["name"] == "absorbance_peak")
    assert {a["name"] for a in peak["args"]} == {"step", "absorptivity", "path_length"}  # type: ignore[union-attr]
    drivers = {d["name"]: d for d in labctl.catalogue()["drivers"]}
    assert drivers["uvvis-sim100"]["capabilities"] == ["spectrometer"]
    # the core never names the instrument: adding it took no edit of labctl/
    for path in (ROOT / "labctl").rglob("*.py"):
        text = path.read_text(encoding="utf-8").lower()
        assert "uvvis" not in text and "spectrometer" not in text, path


def test_the_plugin_recipe_runs_on_the_simulated_bench(tmp_path: Path) -> None:
    """1.5 mL of stock and 0.5 mL of ethanol: the band peaks where the simulator puts it and
    Beer-Lambert gives back the stock's concentration in the cuvette."""
    out = subprocess.run(
        [sys.executable, "-m", "labctl", "run", str(RECIPE), "--config", str(CONFIG),
         "--data-dir", str(tmp_path), "--param", "stock_volume=1.5 mL",
         "--param", "solvent_volume=0.5 mL", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["fidelity"]["simulators"]["uvvis"]["package"] == "labctl-uvvis"
    figures = {f["name"]: f for f in result["figures_of_merit"]}
    expected_g_l = STOCK_G_ML * 1.5 / 2.0 * 1000
    assert figures["peak_wavelength"]["value"] == pytest.approx(PEAK_NM, abs=1.0)
    assert figures["peak_absorbance"]["value"] == pytest.approx(
        ABSORPTIVITY * expected_g_l, rel=0.01)
    assert figures["concentration"]["value"] == pytest.approx(expected_g_l, rel=0.01)
    assert figures["concentration"]["unit"] == "g/L"
    spectrum = read_bdf(Path(result["record"]) / "data" / "spectrum.bdf.csv")
    assert len(spectrum["Wavelength / nm"]) == (600 - 350) // 2 + 1
    assert spectrum["Wavelength / nm"][0] == 350.0


def test_a_scan_beyond_the_configured_range_is_refused_at_validation() -> None:
    recipe = json.loads(RECIPE.read_text())
    recipe["steps"][3]["args"]["end"] = "900 nm"
    with pytest.raises(RecipeError) as err:
        build_plan(recipe, {}, load_config(CONFIG), base_dir=RECIPE.parent)
    [issue] = err.value.issues
    assert issue.path == "steps[3].args.end"
    assert "900 nm is outside uvvis's range 300–800 nm" in issue.message


async def test_the_driver_refuses_out_of_range_before_sending_a_byte() -> None:
    cfg = load_config(CONFIG)
    async with Instruments(cfg, only=["uvvis"]) as inst:
        dev = inst.devices["uvvis"]
        assert dev.info is not None and dev.info.model == "UV-VIS 100"
        link = dev.link
        assert link is not None
        sent = link.stats.bytes_out
        with pytest.raises(LimitError, match="end 850 nm exceeds the maximum 800 nm"):
            await dev.scan(400.0, 850.0, 5.0)  # type: ignore[attr-defined]
        assert link.stats.bytes_out == sent
        await dev.safe_state()
        assert inst.simulation.simulators["uvvis"].is_safe()


async def test_the_simulator_speaks_the_documented_protocol() -> None:
    """Raw bytes, as the plugin's README writes them: refusals, warm-up, a scan's framing."""
    world = World.from_spec({
        "materials": {"MO": {"density_g_ml": 0.79}},
        "vessels": {"res": {"kind": "reservoir", "capacity": "100 mL",
                            "contents": {"MO": "50 mL"}},
                    "cuvette": {"kind": "vial", "capacity": "4 mL"}}})
    sim = UvVisSimulator(clock=ScaledClock(1000), world=world, options={
        "vessel": "cuvette",
        "bands": {"MO": {"peak": "464 nm", "width": "90 nm",
                         "absorptivity": "0.002 L/(g*cm)"}}})
    got: list[bytes] = []

    async def ask(command: str, lines: int = 1) -> list[str]:
        got.clear()
        sim.feed(command.encode("ascii") + b"\n", got.append)
        for _ in range(2000):
            text = b"".join(got).decode("ascii")
            if text.count("\r\n") >= lines:
                return text.split("\r\n")[:lines]
            await asyncio.sleep(0.005)
        raise AssertionError(f"{command}: no reply ({got!r})")

    assert await ask("*IDN?") == ["LABSIM,UV-VIS 100,UV100-0001,1.0"]
    assert await ask("SCAN 400 500 5") == ["ERR 3 LAMP NOT READY"]
    assert await ask("lamp 1\r") == ["OK"]
    assert await ask("LAMP?") in (["LAMP WARM"], ["LAMP 1"])
    for _ in range(2000):
        if (await ask("LAMP?")) == ["LAMP 1"]:
            break
        await asyncio.sleep(0.005)
    assert await ask("SCAN 400 500 5") == ["ERR 4 NO SAMPLE"]
    world.move_volume("res", "cuvette", 2e-3)
    assert await ask("SCAN 500 400 5") == ["ERR 2 BAD ARGUMENT"]
    assert await ask("SCAN 180 400 5") == ["ERR 2 BAD ARGUMENT"]
    assert await ask("FOO") == ["ERR 1 UNKNOWN COMMAND"]
    lines = await ask("SCAN 460 468 4", 5)
    assert lines[0] == "OK 3" and lines[4] == "END"
    # the undiluted stock: 790 g/L x 0.002 L/(g cm) x 1 cm at the peak
    assert [line.split(",")[0] for line in lines[1:4]] == ["460", "464", "468"]
    assert float(lines[2].split(",")[1]) == pytest.approx(1.58, abs=1e-4)
    assert await ask("LAMP 0") == ["OK"] and sim.is_safe()
