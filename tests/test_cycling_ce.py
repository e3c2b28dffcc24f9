"""Galvanostatic cycling gives the coulombic efficiency the simulated cell is configured with.

Three levels, all over real pseudo-terminals: the simulator alone with a hand-written
MethodSCRIPT cut-off script (no driver), the driver's GCPL on the simulator through a BDF file
and the analysis, and the galvanostatic_cycling recipe run by `labctl run` on config/sim.toml.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.palmsens import EmStat
from labctl.analysis import ANALYSES
from labctl.bdf import CURRENT, CYCLE, STEP, TEST_TIME, VOLTAGE, BdfWriter, read_bdf
from labctl.clock import ScaledClock
from labctl.device import DeviceSpec
from labctl.techniques import GCPL, GCPLPhase
from labctl.transport import Link
from simulators.palmsens import EmStatSimulator
from simulators.serving import Served, serve

ROOT = Path(__file__).resolve().parents[1]
SIM_TOML = tomllib.loads((ROOT / "config/sim.toml").read_text())
CELL = SIM_TOML["devices"]["potentiostat"]["simulator"]["options"]
CAPACITY_AH = 1e-3  # the sim bench's cell ("1 mA*h"), the recipe's nominal capacity
UPPER, LOWER = 4.2, 3.0


def sim_cell(**override: Any) -> dict[str, Any]:
    """The sim bench's insertion electrode, with a fixed electrolyte (no world)."""
    keys = ("ocp", "ocv_span", "capacity", "soc", "coulombic_efficiency", "capacity_fade")
    return {"seed": 7, **{k: CELL[k] for k in keys}, **override}


def test_the_sim_bench_cell_matches_the_recipe() -> None:
    """The recipe's nominal capacity is the simulated cell's capacity."""
    recipe = json.loads((ROOT / "recipes/galvanostatic_cycling.json").read_text())
    assert recipe["parameters"]["nominal_capacity"]["default"] == "1 mA*h"
    assert CELL["capacity"] == "1 mA*h"
    assert recipe["parameters"]["upper_cutoff"]["default"] == f"{UPPER} V"
    assert recipe["parameters"]["lower_cutoff"]["default"] == f"{LOWER} V"


# -- the simulator alone, bytes written by hand --------------------------------------------------

@pytest.fixture
async def raw() -> AsyncIterator[tuple[EmStatSimulator, Link]]:
    sim = EmStatSimulator(clock=ScaledClock(20000), options=sim_cell())
    srv: Served = await serve([sim], "pty")
    link = Link(srv.endpoint)
    await link.open()
    try:
        yield sim, link
    finally:
        await link.close()
        await srv.close()


def potentials(lines: list[str]) -> list[float]:
    """The `ab` values of the packages, decoded from the page's rules (hex − 0x8000000,
    SI prefix)."""
    exp = {"a": -18, "f": -15, "p": -12, "n": -9, "u": -6, "m": -3, " ": 0, "k": 3}
    out = []
    for ln in lines:
        if ln.startswith("P"):
            var = next(v for v in ln[1:].strip().split(";") if v.startswith("ab"))
            out.append((int(var[2:9], 16) - 0x8000000) * 10.0 ** exp[var[9]])
    return out


async def run_script(link: Link, script: str) -> list[str]:
    await link.write(b"e\n" + script.strip("\n").encode() + b"\n\n")
    out = []
    while True:
        ln = (await link.read_until(b"\n", 60.0)).decode("latin-1")
        out.append(ln)
        if ln == "\n":
            return out


async def test_raw_cut_off_scripts_charge_and_discharge_the_cell(raw: Any) -> None:
    """A C/2 charge with `if p >= 4.2 / breakloop`, then a discharge with `if p <= 3.0`:
    each loop ends at its cut-off (not at its time limit), and the discharge returns the
    charge stored (the efficiency) of the charge passed."""
    sim, link = raw
    body = "  pck_start\n  pck_add p\n  pck_add c\n  pck_end\n"
    head = "var p\nvar c\nset_pgstat_mode 6\nset_range ba 1m\n"
    charge = await run_script(link, head + "set_i 500u\ncell_on\n"
                              "meas_loop_cp p c 500u 10 10800\n" + body +
                              f"  if p >= {UPPER}\n    breakloop\n  endif\nendloop\ncell_off\n")
    assert charge[0] == "e\n" and charge[-1] == "\n" and not any("!" in x for x in charge)
    e_ch = potentials(charge)
    assert e_ch[-1] >= UPPER > max(e_ch[:-1])
    assert len(e_ch) < 10800 / 10  # the cut-off ended the loop
    q_in = sim.snapshot()["charge_in_c"]
    assert q_in == pytest.approx(len(e_ch) * 10 * 500e-6, rel=1e-3)
    assert 0.8 < q_in / 3.6 < 1.0  # most of the 1 mAh at C/2
    discharge = await run_script(link, head + "set_i -500u\ncell_on\n"
                                 "meas_loop_cp p c -500u 10 10800\n" + body +
                                 f"  if p <= {LOWER}\n    breakloop\n  endif\nendloop\ncell_off\n")
    e_dis = potentials(discharge)
    assert e_dis[-1] <= LOWER < min(e_dis[:-1])
    q_out = sim.snapshot()["charge_out_c"]
    ce = float(CELL["coulombic_efficiency"])
    assert q_out / q_in == pytest.approx(ce, abs=0.004)  # ± one 10 s sample of 1 mAh


# -- the driver's GCPL, the BDF file and the analysis ---------------------------------------------

async def cycle_with_driver(tmp_path: Path, ce: float, fade: float, c_rate: float,
                            n_cycles: int = 3) -> tuple[dict[str, Any], EmStatSimulator, Path]:
    clock = ScaledClock(20000)
    sim = EmStatSimulator(clock=clock, options=sim_cell(coulombic_efficiency=ce,
                                                        capacity_fade=fade))
    served = await serve([sim], "pty")
    dev = EmStat(DeviceSpec(name="pstat", driver="palmsens-emstat", endpoint=served.endpoint,
                            params={"cell_constant": "1.0 /cm"}), clock=clock)
    try:
        await dev.connect()
        i = c_rate * CAPACITY_AH
        t_max = 1.2 * 3600 / c_rate
        tech = GCPL(n_cycles=n_cycles, phases=[
            GCPLPhase(mode="cc", current_a=i, upper_cutoff_v=UPPER, max_time_s=t_max,
                      sample_interval_s=10),
            GCPLPhase(mode="rest", max_time_s=600, sample_interval_s=30),
            GCPLPhase(mode="cc", current_a=-i, lower_cutoff_v=LOWER, max_time_s=t_max,
                      sample_interval_s=10),
            GCPLPhase(mode="rest", max_time_s=600, sample_interval_s=30),
        ])
        path = tmp_path / f"gcpl_{ce}.bdf.csv"
        with BdfWriter(path, tech) as w:
            async for p in dev.measure(tech):
                w.write(p)
    finally:
        await dev.open_link().close()
        await served.close()
    return ANALYSES["coulombic_efficiency"]([path]), sim, path


@pytest.mark.parametrize("ce,fade,c_rate", [(0.98, 0.01, 0.5), (0.995, 0.005, 0.5),
                                            (0.999, 0.02, 0.25)])
async def test_driver_gcpl_measures_the_configured_efficiency(
        tmp_path: Path, ce: float, fade: float, c_rate: float) -> None:
    result, sim, path = await cycle_with_driver(tmp_path, ce, fade, c_rate)
    per_cycle = result["coulombic_efficiency_per_cycle"]["value"]
    assert len(per_cycle) == 3
    for x in per_cycle:
        assert x == pytest.approx(100.0 * ce, abs=0.4)
    # the analysis integrates what the simulated cell was given and returned
    snap = sim.snapshot()
    q_ch = sum(result["charge_capacity_per_cycle"]["value"]) * 3600
    q_dis = sum(result["discharge_capacity_per_cycle"]["value"]) * 3600
    assert q_ch == pytest.approx(snap["charge_in_c"], rel=2e-3)
    assert q_dis == pytest.approx(snap["charge_out_c"], rel=2e-3)
    # most of the nominal capacity is used, and it fades at about the configured rate per
    # full charge (each cycle charges ~90 % of it; the cut-off samples blur single cycles)
    dis = result["discharge_capacity_per_cycle"]["value"]
    assert all(0.7 * CAPACITY_AH < q < CAPACITY_AH for q in dis)
    retention = result["capacity_retention_per_cycle"]["value"]
    assert retention[2] < retention[1] < retention[0] == pytest.approx(100.0)
    mean_drop = (retention[0] - retention[2]) / 2
    assert 0.6 * 100 * fade < mean_drop < 1.1 * 100 * fade
    # the cut-offs, not the time limits, ended the current phases
    cols = read_bdf(path)
    for c in (1, 2, 3):
        for step, hit in ((1, lambda v: v >= UPPER), (3, lambda v: v <= LOWER)):
            sel = (cols[CYCLE] == c) & (cols[STEP] == step)
            v, t = cols[VOLTAGE][sel], cols[TEST_TIME][sel]
            assert hit(v[-1]) and not any(hit(x) for x in v[:-1])
            assert t[-1] - t[0] < 1.2 * 3600 / c_rate - 10
            assert np.all(np.abs(cols[CURRENT][sel]) > 0)


# -- the recipe on the simulated bench ------------------------------------------------------------

def test_recipe_on_the_sim_bench_gives_the_cells_efficiency(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", "run", "recipes/galvanostatic_cycling.json",
         "--data-dir", str(tmp_path), "--time-scale", "2000", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    figs = {f["name"]: f["value"] for f in result["figures_of_merit"]}
    ce = 100.0 * float(CELL["coulombic_efficiency"])
    per_cycle = figs["coulombic_efficiency_per_cycle"]
    assert len(per_cycle) == 3  # the recipe's default n_cycles
    for x in per_cycle:
        assert x == pytest.approx(ce, abs=0.4)
    charge = figs["charge_capacity_per_cycle"]
    dis = figs["discharge_capacity_per_cycle"]
    assert all(0.7 * CAPACITY_AH < q < CAPACITY_AH for q in charge + dis)
    assert dis[2] < dis[1] < dis[0]  # the capacity fades
    assert 100.0 - 3 * 100 * float(CELL["capacity_fade"]) < figs["capacity_retention"] < 100.0
