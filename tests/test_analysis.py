"""Figures of merit recovered from the simulator's output, where the truth is known: the
driver measures the simulated cell over a pty, the data go through BDF files, the analyses
read them back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.palmsens import EmStat
from labctl.analysis import ANALYSES
from labctl.analysis.cycling import charges_per_cycle, end_of_life_cycle, retention_pct
from labctl.analysis.eis import (
    SpectrumRefused,
    check_spectrum,
    first_apex,
    fit_circuit,
    hf_intercept,
    lin_kk,
)
from labctl.analysis.registry import AnalysisRefused
from labctl.analysis.voltammetry import onset_potential
from labctl.bdf import BdfWriter
from labctl.clock import ScaledClock
from labctl.device import DeviceSpec
from labctl.techniques import GCPL, LSV, PEIS, GCPLPhase, Technique
from simulators.conductivity import conductivity_s_m
from simulators.palmsens import EmStatSimulator
from simulators.serving import serve
from simulators.world import World


def electrolyte_world(ec_g: float, dmc_g: float, salt_g: float, temperature_c: float) -> World:
    world = World.from_spec({
        "materials": {"EC": {"density_g_ml": 1.32}, "DMC": {"density_g_ml": 1.07},
                      "LiPF6": {"phase": "solid", "molar_mass_g_mol": 151.905}},
        "vessels": {"cell_vial": {"capacity": "20 mL",
                                  "contents": {"EC": f"{ec_g} g", "DMC": f"{dmc_g} g",
                                               "LiPF6": f"{salt_g} g"}}},
    })
    world.set_temperature("cell_vial", temperature_c)
    return world


class Bench:
    def __init__(self, sim: EmStatSimulator, dev: EmStat, served: Any):
        self.sim, self.dev, self.served = sim, dev, served

    async def record(self, tech: Technique, path: Path) -> Path:
        with BdfWriter(path, tech) as w:
            async for p in self.dev.measure(tech):
                w.write(p)
        return path


async def start(world: World | None = None, scale: float = 1000.0, **options: Any) -> Bench:
    clock = ScaledClock(scale)
    sim = EmStatSimulator(clock=clock, world=world,
                          options={"seed": 5, "vessel": "cell_vial", **options})
    served = await serve([sim], "pty")
    dev = EmStat(DeviceSpec(name="pstat", driver="palmsens-emstat", endpoint=served.endpoint,
                            params={"cell_constant": "1.0 /cm"}), clock=clock)
    await dev.connect()
    return Bench(sim, dev, served)


@pytest.fixture
async def bench_factory() -> AsyncIterator[Any]:
    made: list[Bench] = []

    async def make(*args: Any, **kwargs: Any) -> Bench:
        b = await start(*args, **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        await b.dev.open_link().close()
        await b.served.close()


# -- pure functions on synthetic spectra --------------------------------------------------------

def r_rc_cpe(freq: np.ndarray, r0: float, r_ct: float, q: float, n: float) -> np.ndarray:
    """Z of R0 + (R_ct ‖ CPE), CPE = 1/(Q (jω)^n): the truth synthetic spectra are made of."""
    jw = 1j * 2 * np.pi * np.asarray(freq, dtype=float)
    return r0 + r_ct / (1.0 + r_ct * q * jw**n)


def test_fit_recovers_a_known_circuit() -> None:
    f = np.geomspace(1e5, 1, 41)
    z = r_rc_cpe(f, 42.0, 300.0, 2e-6, 0.85)
    fit = fit_circuit(f, z.real, z.imag)
    assert fit.circuit == "R0-p(R1,CPE1)"
    assert fit.parameters["R0"] == pytest.approx(42.0, rel=1e-4)
    assert fit.parameters["R1"] == pytest.approx(300.0, rel=1e-3)
    assert fit.parameters["CPE1_1"] == pytest.approx(0.85, abs=1e-3)
    assert fit.units["R0"] == "Ohm" and fit.rms_relative < 1e-4
    model = fit.predict(f)
    assert np.allclose(model, z, rtol=1e-3)


def test_another_circuit_fits_the_whole_randles_spectrum() -> None:
    """A circuit string from the recipe: the simulated cell's own Randles circuit, fitted to
    the whole spectrum (diffusion tail included), recovers every element."""
    from simulators.electrochem_cell import Cell

    cell = Cell(conductivity=lambda: (0.5, 25.0))
    f = np.geomspace(1e5, 0.1, 31)
    z = np.array([cell.impedance(x) for x in f])
    fit = fit_circuit(f, z.real, z.imag, "R0-p(C1,R1-W1)")
    assert fit.points == 31
    assert fit.parameters["R0"] == pytest.approx(cell.r_s(), rel=1e-3)
    assert fit.parameters["C1"] == pytest.approx(cell.c_dl(), rel=1e-2)
    assert fit.parameters["R1"] == pytest.approx(cell.r_ct(), rel=1e-2)
    assert fit.parameters["W1"] == pytest.approx(100.0, rel=1e-2)


def test_intercept_with_an_inductive_tail() -> None:
    f = np.geomspace(1e6, 10, 31)
    z = r_rc_cpe(f, 50.0, 200.0, 1e-6, 0.9) + 1j * 2 * np.pi * f * 2e-6  # cable inductance
    r = hf_intercept(f, z.real, z.imag)
    crossing = np.argmax(z.imag < 0)
    assert z.real[crossing - 1] <= r <= z.real[crossing] or \
        z.real[crossing] <= r <= z.real[crossing - 1]
    assert r == pytest.approx(50.0, rel=0.05)


def test_noise_near_the_axis_is_not_the_arc() -> None:
    """A resistive electrolyte puts the arc far from the origin: the first points scatter
    around −Z'' ≈ 0 with a noise maximum of their own (as in a simulated 0.34 S/m run), which
    must not be taken for the arc's apex."""
    f = np.geomspace(1e5, 1, 31)
    z = r_rc_cpe(f, 300.0, 130.0, 4e-6, 1.0)
    zim = z.imag.copy()
    zim[:4] = [-0.79, -1.10, -0.52, -1.08]  # noise of 0.1 % of |Z| on the first points
    assert first_apex(zim) == first_apex(z.imag) == int(np.argmax(-z.imag))
    fit = fit_circuit(f, z.real, zim)
    assert fit.parameters["R0"] == pytest.approx(300.0, rel=0.01)


def test_lin_kk_passes_a_linear_spectrum_and_fails_a_drifting_one() -> None:
    """A spectrum whose cell changes while it is measured (R grows 50 % from the first
    frequency to the last) is no linear time-invariant response: Lin-KK rejects it, and the
    analysis refuses it with that reason."""
    f = np.geomspace(1e5, 0.1, 31)
    z = r_rc_cpe(f, 80.0, 130.0, 4e-6, 0.95)
    good = lin_kk(f, z.real, z.imag)
    assert good.valid and max(good.max_residual_real, good.max_residual_imag) < 1e-3
    drift = z * np.linspace(1.0, 1.5, len(f))
    bad = lin_kk(f, drift.real, drift.imag)
    assert not bad.valid and max(bad.max_residual_real, bad.max_residual_imag) > 0.01
    with pytest.raises(SpectrumRefused, match="Lin-KK"):
        check_spectrum(f, drift.real, drift.imag)


def test_onsets_and_cycling_on_synthetic_data() -> None:
    e = np.linspace(3.0, 5.0, 201)
    i = 1e-6 * np.exp((e - 4.5) / 0.1)
    assert onset_potential(e, i, 1e-4, 0.01, "anodic") == pytest.approx(4.5, abs=2e-3)
    assert onset_potential(e, i, 1e-4, 1e9, "anodic") is None
    t = np.arange(0, 40.0)
    cur = np.where(t % 20 < 10, 1e-3, -0.9e-3)
    cyc = t // 20 + 1
    cycles = charges_per_cycle(t, cur, cyc)
    assert [c.cycle for c in cycles] == [1, 2]
    assert cycles[1].efficiency_pct == pytest.approx(90.0)
    assert end_of_life_cycle({1: 100.0, 2: 85.0, 3: 79.0}) == 3
    assert retention_pct(cycles) == {1: pytest.approx(100.0), 2: pytest.approx(100.0)}


def test_registry_names_and_units() -> None:
    assert {"ionic_conductivity", "stability_window", "coulombic_efficiency"} <= set(ANALYSES)
    spec = ANALYSES["ionic_conductivity"]
    assert spec.args["cell_constant"].unit == "1/m"
    args = spec.convert({"cell_constant": "1.0 /cm", "temperature": "25 degC"})
    assert args["cell_constant"] == pytest.approx(100.0)
    assert args["temperature"] == pytest.approx(298.15)


# -- on the simulator's output ---------------------------------------------------------------------

@pytest.mark.parametrize("ec,dmc,salt,temp", [
    (5.0, 5.0, 1.5191, 25.0),  # 1 mol/kg, EC:DMC 1:1, near the optimum
    (3.0, 7.0, 0.5, 40.0),  # dilute, DMC-rich, warm
    (7.0, 3.0, 3.5, 10.0),  # concentrated, EC-rich, cold
])
async def test_conductivity_recovered_within_2_percent(
    bench_factory: Any, tmp_path: Path, ec: float, dmc: float, salt: float, temp: float
) -> None:
    world = electrolyte_world(ec, dmc, salt, temp)
    b = await bench_factory(world, redox_concentration=0)
    path = await b.record(PEIS(amplitude_v=0.01, f_start_hz=1e5, f_end_hz=0.1,
                               n_frequencies=31), tmp_path / "eis1.bdf.csv")
    molality = salt / 151.905 / ((ec + dmc) / 1000)
    truth = conductivity_s_m(molality, ec / (ec + dmc), temp)
    result = ANALYSES["ionic_conductivity"]({"eis1": path}, cell_constant="1.0 /cm",
                                            temperature=f"{temp} degC")
    sigma = result["ionic_conductivity"]
    assert sigma["unit"] == "S/m" and sigma["iri"].endswith("25dabdc2_68bf_4a38_8cbe_11be017358bc")
    assert sigma["value"] == pytest.approx(truth, rel=0.02)
    assert result["ionic_conductivity_mS_cm"]["value"] == pytest.approx(10 * sigma["value"])
    assert result["temperature"]["value"] == pytest.approx(temp + 273.15)
    r_int = result["bulk_resistance_intercept"]["value"]
    assert 100.0 / r_int == pytest.approx(truth, rel=0.02)
    intercept_only = ANALYSES["ionic_conductivity"]([path], method="intercept")
    assert intercept_only["ionic_conductivity"]["value"] == pytest.approx(100.0 / r_int)


async def test_conductivity_follows_a_change_in_the_vial(bench_factory: Any,
                                                         tmp_path: Path) -> None:
    """Salt added between two measurements raises the measured conductivity as the model
    says it should."""
    world = electrolyte_world(5.0, 5.0, 0.3, 25.0)
    b = await bench_factory(world, redox_concentration=0)
    tech = PEIS(amplitude_v=0.01, f_start_hz=1e5, f_end_hz=1, n_frequencies=21)
    before = ANALYSES["ionic_conductivity"]([await b.record(tech, tmp_path / "a.bdf.csv")])
    world.add_solid("cell_vial", "LiPF6", 1.2)
    after = ANALYSES["ionic_conductivity"]([await b.record(tech, tmp_path / "b.bdf.csv")])
    s0, s1 = before["ionic_conductivity"]["value"], after["ionic_conductivity"]["value"]
    assert s0 == pytest.approx(conductivity_s_m(0.3 / 151.905 / 0.01, 0.5, 25), rel=0.02)
    assert s1 == pytest.approx(conductivity_s_m(1.5 / 151.905 / 0.01, 0.5, 25), rel=0.02)


async def test_stability_window_from_lsv(bench_factory: Any, tmp_path: Path) -> None:
    b = await bench_factory(None, redox_concentration=0)
    area_m2 = 0.196e-4
    an = await b.record(LSV(E_begin_v=3.0, E_end_v=5.3, E_step_v=0.002, scan_rate_v_s=0.005),
                        tmp_path / "lsv_ox.bdf.csv")
    cat = await b.record(LSV(E_begin_v=3.0, E_end_v=0.3, E_step_v=0.002, scan_rate_v_s=0.005),
                         tmp_path / "lsv_red.bdf.csv")
    result = ANALYSES["stability_window"]({"lsv_ox": an, "lsv_red": cat},
                                          anodic_step="lsv_ox", cathodic_step="lsv_red",
                                          threshold="0.05 mA/cm^2", area="0.196 cm^2",
                                          reference="Li/Li+")
    e_red, e_ox = b.sim.cell.onset_potentials(0.5)  # 0.05 mA/cm² = 0.5 A/m²
    assert result["anodic_limit"]["value"] == pytest.approx(e_ox, abs=0.01)
    assert result["cathodic_limit"]["value"] == pytest.approx(e_red, abs=0.01)
    assert result["electrochemical_window"]["value"] == pytest.approx(e_ox - e_red, abs=0.02)
    w = result["electrochemical_window"]
    assert w["scan_rate_v_s"] == pytest.approx(0.005, rel=0.01)
    assert w["threshold_mA_cm2"] == pytest.approx(0.05) and w["reference"] == "Li/Li+"
    assert w["area_m2"] == pytest.approx(area_m2)


async def test_coulombic_efficiency_and_retention_from_cycling(bench_factory: Any,
                                                               tmp_path: Path) -> None:
    b = await bench_factory(None, scale=20000, soc=0.0, coulombic_efficiency=0.97,
                            capacity_fade=0.02)
    tech = GCPL(n_cycles=3, phases=[
        GCPLPhase(mode="cc", current_a=2e-4, upper_cutoff_v=3.45, max_time_s=7200,
                  sample_interval_s=5),
        GCPLPhase(mode="rest", max_time_s=60, sample_interval_s=20),
        GCPLPhase(mode="cc", current_a=-2e-4, lower_cutoff_v=2.55, max_time_s=7200,
                  sample_interval_s=5),
    ])
    path = await b.record(tech, tmp_path / "cycling.bdf.csv")
    result = ANALYSES["coulombic_efficiency"]([path])
    snap = b.sim.snapshot()
    q_ch = sum(result["charge_capacity_per_cycle"]["value"]) * 3600
    q_dis = sum(result["discharge_capacity_per_cycle"]["value"]) * 3600
    assert q_ch == pytest.approx(snap["charge_in_c"], rel=0.01)
    assert q_dis == pytest.approx(snap["charge_out_c"], rel=0.01)
    ce = result["coulombic_efficiency_per_cycle"]["value"]
    assert len(ce) == 3
    assert all(94.0 < x < 99.5 for x in ce)  # the simulated 97 % stored, minus cut-off losses
    assert result["coulombic_efficiency"]["unit"] == "%"
    retention = result["capacity_retention_per_cycle"]["value"]
    assert retention[0] == pytest.approx(100.0)
    assert retention[2] < retention[1] < 100.0  # the capacity fades
    assert result["end_of_life_cycle"]["value"] is None
    assert ANALYSES["capacity_retention"]([path])["capacity_retention"]["value"] == \
        pytest.approx(retention[2])


# -- physically meaningless input: refused with a reason, never a number -----------------------

def empty_vial_world() -> World:
    """The cell sits in an empty vial: electrodes in air, an open circuit."""
    return World.from_spec({"materials": {"EC": {"density_g_ml": 1.32}},
                            "vessels": {"cell_vial": {"capacity": "20 mL"}}})


async def test_open_circuit_spectrum_is_refused(bench_factory: Any, tmp_path: Path) -> None:
    """The EmStat measures a cell in an empty vial: huge |Z|, capacitive at every frequency,
    no real-axis intercept. No conductivity comes out; the main figures are marked failed
    with the reason."""
    b = await bench_factory(empty_vial_world())
    path = await b.record(PEIS(amplitude_v=0.01, f_start_hz=1e5, f_end_hz=0.1,
                               n_frequencies=31), tmp_path / "eis_dry.bdf.csv")
    with pytest.raises(AnalysisRefused, match="open circuit") as info:
        ANALYSES["ionic_conductivity"]({"eis_dry": path}, cell_constant="1.0 /cm")
    failed = {f["name"]: f for f in info.value.failed_figures}
    assert set(failed) == {"ionic_conductivity", "ionic_conductivity_mS_cm"}
    for f in failed.values():
        assert f["value"] is None and f["status"] == "failed"
        assert "no real-axis intercept" in f["reason"]


async def test_open_circuit_sweeps_are_refused(bench_factory: Any, tmp_path: Path) -> None:
    """Linear sweeps on an empty vial: no current flows, no window can be read."""
    b = await bench_factory(empty_vial_world())
    an = await b.record(LSV(E_begin_v=3.0, E_end_v=5.3, E_step_v=0.01, scan_rate_v_s=0.05),
                        tmp_path / "lsv_ox.bdf.csv")
    cat = await b.record(LSV(E_begin_v=3.0, E_end_v=0.3, E_step_v=0.01, scan_rate_v_s=0.05),
                         tmp_path / "lsv_red.bdf.csv")
    with pytest.raises(AnalysisRefused, match="no current flows") as info:
        ANALYSES["stability_window"]({"lsv_ox": an, "lsv_red": cat}, anodic_step="lsv_ox",
                                     cathodic_step="lsv_red")
    assert {f["name"] for f in info.value.failed_figures} == {
        "anodic_limit", "cathodic_limit", "electrochemical_window"}


async def test_a_sweep_in_the_wrong_direction_is_refused(bench_factory: Any,
                                                         tmp_path: Path) -> None:
    b = await bench_factory(None, redox_concentration=0)
    down = await b.record(LSV(E_begin_v=3.0, E_end_v=0.3, E_step_v=0.01, scan_rate_v_s=0.05),
                          tmp_path / "down.bdf.csv")
    with pytest.raises(AnalysisRefused, match="never rises"):
        ANALYSES["stability_window"]({"down": down}, anodic_step="down", cathodic_step="down")


async def test_open_circuit_cycling_is_refused(bench_factory: Any, tmp_path: Path) -> None:
    """A galvanostat on an empty vial cannot drive its current: every phase ends at its
    first point and the 'charge' is noise. No efficiency comes out."""
    b = await bench_factory(empty_vial_world(), scale=20000)
    tech = GCPL(n_cycles=2, phases=[
        GCPLPhase(mode="cc", current_a=2e-4, upper_cutoff_v=3.45, max_time_s=600,
                  sample_interval_s=5),
        GCPLPhase(mode="rest", max_time_s=60, sample_interval_s=20),
        GCPLPhase(mode="cc", current_a=-2e-4, lower_cutoff_v=2.55, max_time_s=600,
                  sample_interval_s=5),
    ])
    path = await b.record(tech, tmp_path / "cycling_dry.bdf.csv")
    with pytest.raises(AnalysisRefused) as info:
        ANALYSES["coulombic_efficiency"]([path])
    assert {f["name"] for f in info.value.failed_figures} == {
        "coulombic_efficiency", "capacity_retention"}
    assert all(f["value"] is None for f in info.value.failed_figures)
