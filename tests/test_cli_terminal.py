"""CLI output fits an 80-column terminal: tables readable, run ids whole, flags shown as
flags, units the way a lab writes them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labctl.actions import fmt
from labctl.display import quantity, reading, unit_symbol

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = re.compile(r"\d{8}T\d{6}Z-[A-Za-z0-9_]+-[0-9a-f]{6}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "LINES": "50", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    return subprocess.run([sys.executable, "-m", "labctl", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def _fits(text: str) -> None:
    for line in text.splitlines():
        if line.startswith(("record: ", "folder: ")):
            continue  # a path stays whole on its line (copyable); the terminal wraps it
        assert len(line.rstrip()) <= 80, line
    assert "…" not in text, text


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("runs")
    out = _cli("run", "recipes/electrolyte_conductivity.json", "--data-dir", str(folder),
               "--time-scale", "2000")
    assert out.returncode == 0, out.stderr
    _fits(out.stdout)
    ids = RUN_ID.findall(out.stdout + out.stderr)
    assert ids
    return folder, ids[0]


def test_runs_list_fits_80_columns_with_whole_run_ids(data_dir: tuple[Path, str]) -> None:
    folder, run_id = data_dir
    out = _cli("runs", "list", "--data-dir", str(folder))
    assert out.returncode == 0, out.stderr
    _fits(out.stdout)
    assert any(run_id in line for line in out.stdout.splitlines())
    assert "completed" in out.stdout


def test_runs_show_fits_80_columns(data_dir: tuple[Path, str]) -> None:
    folder, run_id = data_dir
    out = _cli("runs", "show", run_id, "--data-dir", str(folder))
    assert out.returncode == 0, out.stderr
    _fits(out.stdout)
    assert run_id in out.stdout.splitlines()[0]
    # step ids and device names are never folded: each on one line
    assert re.search(r"^ ?eis\s+potentiostat\s+peis\s+completed", out.stdout, re.M)
    assert re.search(r"^ ?conductivity\s+ionic_conductivity\s+completed", out.stdout, re.M)


def test_devices_fits_80_columns_in_lab_units() -> None:
    out = _cli("devices", "--time-scale", "100")
    assert out.returncode == 0, out.stderr
    _fits(out.stdout)
    assert re.search(r"plunger_volume \d+(\.\d+)? [mµn]L", out.stdout)
    assert "_l " not in out.stdout and "=" not in out.stdout
    assert "potentiostat" in out.stdout and "tricontinent-c3000" in out.stdout


def test_plan_fits_80_columns() -> None:
    out = _cli("plan", "recipes/galvanostatic_cycling.json")
    assert out.returncode == 0, out.stderr
    _fits(out.stdout)
    assert "rinse.drain[0].to_waste" in out.stdout


@pytest.mark.parametrize("command", [["runs", "list"], ["devices"], ["validate"], ["plan"]])
def test_json_is_shown_as_a_flag(command: list[str]) -> None:
    out = _cli(*command, "--help")
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if "--json" in line)
    assert "<bool>" not in line and "bool" not in line.lower(), line
    assert "<bool>" not in out.stdout


def test_units_the_way_a_lab_writes_them() -> None:
    assert quantity(0.0025, "L") == "2.5 mL"
    assert quantity(2.0, "L") == "2000 mL"
    assert quantity(5e-6, "L") == "5 µL"
    assert quantity(0.5, "1/h") == "0.5 C"
    assert quantity(0.001, "A*h") == "1 mAh"
    assert quantity(1e-3 / 6, "L/s") == "10 mL/min"
    assert quantity(25.0, "degC") == "25 °C"
    assert unit_symbol("1 / h") == "C" and unit_symbol("h * mA") == "mAh"
    assert reading("plunger_volume_l", 0.0005) == "plunger_volume 500 µL"
    assert reading("medium_temperature_c", 24.5) == "medium_temperature 24.5 °C"
    # the plan's descriptions too
    assert fmt(0.5, "1/h") == "0.5 C"
    assert fmt(0.001, "A*h") == "1 mAh"


def test_parameter_limits_name_c_rates_and_capacities_as_a_lab_does() -> None:
    out = _cli("validate", "recipes/galvanostatic_cycling.json", "-p", "c_rate=10 /h",
               "-p", "nominal_capacity=1000 mA*h")
    assert out.returncode == 2
    assert "parameter 'c_rate': 10 C is above the maximum 5 C" in out.stderr
    assert "1000 mAh is above the maximum 100 mAh" in out.stderr
    assert "1 / h" not in out.stderr and "h * mA" not in out.stderr
