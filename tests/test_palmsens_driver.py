"""The EmStat driver against the EmStat simulator over a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.palmsens import EmStat, MethodScriptError, Plan, decode_package, si, to_point
from labctl.bdf import (
    APPLIED_POTENTIAL,
    CURRENT,
    CYCLE,
    FREQUENCY,
    TEST_TIME,
    VOLTAGE,
    WE_POTENTIAL,
    Z_IMAG,
    Z_REAL,
    BdfWriter,
    read_bdf,
)
from labctl.clock import ScaledClock
from labctl.device import DeviceSpec
from labctl.errors import DeviceFault, LimitError, ProtocolError
from labctl.techniques import CA, CP, CV, GCPL, LSV, OCV, PEIS, GCPLPhase
from simulators.palmsens import EmStatSimulator
from simulators.serving import serve

SCALE = 1000.0


class Rig:
    def __init__(self, sim: EmStatSimulator, dev: EmStat):
        self.sim, self.dev = sim, dev


async def make_rig(options: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                   scale: float = SCALE) -> tuple[Rig, Any]:
    clock = ScaledClock(scale)
    sim = EmStatSimulator(clock=clock, options={"seed": 11, **(options or {})})
    served = await serve([sim], "pty")
    spec = DeviceSpec(name="pstat", driver="palmsens-emstat", endpoint=served.endpoint,
                      params={"cell_constant": "1.0 /cm", "electrode_area": "0.196 cm^2",
                              "reference_electrode": "Li/Li+", "vessel": "cell_vial"},
                      limits=limits or {})
    dev = EmStat(spec, clock=clock)
    await dev.connect()
    dev.info = await dev.identify()
    return Rig(sim, dev), served


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r, served = await make_rig()
    try:
        yield r
    finally:
        await r.dev.close()
        await r.dev.open_link().close()
        await served.close()


# -- decoding (pure) ------------------------------------------------------------------------

def test_decode_the_page_example() -> None:
    values = decode_package("Pda7F85F3Fu;ba48D503Dp,10,288\n")
    assert [v.vtype for v in values] == ["da", "ba"]
    assert values[0].value == pytest.approx(-0.499905, abs=1e-12)
    assert values[1].value == pytest.approx(-57.847747e-6, rel=1e-12)
    assert values[1].status == 0 and values[1].range_index == 0x88
    point = to_point(values)
    assert point.applied_v == pytest.approx(-0.499905)
    assert point.current_a == pytest.approx(-57.847747e-6)
    assert point.extra["ba_range"] == 0x88 and not point.overload


@pytest.mark.parametrize("prefix,factor", [("a", 1e-18), ("f", 1e-15), ("p", 1e-12),
                                           ("n", 1e-9), ("u", 1e-6), ("m", 1e-3), (" ", 1.0),
                                           ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12),
                                           ("P", 1e15), ("E", 1e18), ("i", 1.0)])
def test_decode_every_prefix(prefix: str, factor: float) -> None:
    (v,) = decode_package(f"Pab{0x8000000 + 1234:07X}{prefix}")
    assert v.value == pytest.approx(1234 * factor, rel=1e-12)
    (w,) = decode_package(f"Pab{0x8000000 - 1234:07X}{prefix}")
    assert w.value == pytest.approx(-1234 * factor, rel=1e-12)


def test_decode_nan_and_status_bits() -> None:
    values = decode_package("Pdc8000064 ;cc     nan;cd     nan;ba8000001u,12,203\n")
    assert values[0].value == 100.0
    assert math.isnan(values[1].value) and math.isnan(values[2].value)
    point = to_point(values)
    assert point.overload and not point.underload and point.extra["ba_range"] == 3
    under = to_point(decode_package("Pba8000001n,14"))
    assert under.underload and not under.overload


@pytest.mark.parametrize("bad", ["Pda7F85F3", "Pda7F85F3Fq", "Pda7F85F3Fu;", "Pda7FXXF3Fu",
                                 "Pda7F85F3Fu#10"])
def test_decode_rejects_malformed(bad: str) -> None:
    with pytest.raises(ProtocolError):
        decode_package(bad)


def test_si_literals() -> None:
    assert si(0.0001) == "100u"
    assert si(-0.5) == "-500m"
    assert si(4.2) == "4.2"
    assert si(0) == "0"
    assert si(100000.0) == "100k"
    assert si(2.5e-9) == "2.5n"


# -- identity, limits, errors ----------------------------------------------------------------

async def test_identify(rig: Rig) -> None:
    info = rig.dev.info
    assert info is not None
    assert info.model == "EmStat4 HR" and info.serial == "ES4SIM0001"
    assert "MethodSCRIPT 0104" in info.firmware and info.vendor == "PalmSens"


@pytest.mark.parametrize("tech,parameter", [
    (CA(potential_v=6.5, duration_s=1, sample_interval_s=0.1), "potential_v"),
    (CV(E_begin_v=0, E_vertex1_v=1, E_vertex2_v=-6.2, E_step_v=0.01, scan_rate_v_s=0.1),
     "E_vertex2_v"),
    (CP(current_a=0.5, duration_s=1, sample_interval_s=0.1), "current_a"),
    (PEIS(amplitude_v=0.01, f_start_hz=1e6, f_end_hz=1, n_frequencies=10, vs="ref"),
     "f_start_hz"),
])
async def test_instrument_ranges_raise_before_sending(rig: Rig, tech: Any, parameter: str) -> None:
    before = rig.sim.scripts_run
    with pytest.raises(LimitError) as err:
        async for _ in rig.dev.measure(tech):
            pass
    assert err.value.parameter == parameter and err.value.device == "pstat"
    assert rig.sim.scripts_run == before


async def test_configured_limits_and_pico_ranges() -> None:
    r, served = await make_rig({"model": "espico"},
                               limits={"max_potential": "1.5 V", "max_current": "1 mA"})
    try:
        assert r.dev.info is not None and r.dev.info.model == "EmStat Pico"
        before = r.sim.scripts_run
        for tech, parameter, limit in [
            (LSV(E_begin_v=0, E_end_v=1.6, E_step_v=0.01, scan_rate_v_s=0.1), "E_end_v", 1.5),
            (LSV(E_begin_v=-1.8, E_end_v=0, E_step_v=0.01, scan_rate_v_s=0.1), "E_begin_v",
             -1.7),
            (CP(current_a=-2e-3, duration_s=1, sample_interval_s=0.1), "current_a", 1e-3),
        ]:
            with pytest.raises(LimitError) as err:
                async for _ in r.dev.measure(tech):
                    pass
            assert err.value.parameter == parameter
            assert err.value.limit == pytest.approx(limit)
        assert r.sim.scripts_run == before
    finally:
        await r.dev.open_link().close()
        await served.close()


async def test_syntax_error_maps_to_protocol_error(rig: Rig) -> None:
    with pytest.raises(MethodScriptError) as err:
        async for _ in rig.dev._run(Plan(["var p", "meas_loop_ocp p 1"], 1.0, "ocv")):
            pass
    assert isinstance(err.value, ProtocolError) and err.value.code == "4002"
    assert "Line 2" in err.value.vendor_text
    # the line is in a clean state afterwards
    pts = [p async for p in rig.dev.measure(OCV(duration_s=1, sample_interval_s=0.5))]
    assert len(pts) == 2


async def test_critical_overload_is_a_device_fault_and_cell_goes_off(rig: Rig) -> None:
    got = []
    rig.sim.faults.error = "0032"
    with pytest.raises(DeviceFault) as err:
        async for p in rig.dev.measure(CA(potential_v=3.5, duration_s=5, sample_interval_s=0.1)):
            got.append(p)
    assert err.value.code == "0032"
    assert got == []
    assert not rig.sim.snapshot()["cell_on"]


# -- every technique ----------------------------------------------------------------------------

TECHNIQUES: list[tuple[Any, int]] = [
    (OCV(duration_s=5, sample_interval_s=0.5), 10),
    (CA(potential_v=3.6, duration_s=2, sample_interval_s=0.1), 20),
    (CP(current_a=1e-4, duration_s=10, sample_interval_s=1), 10),
    (LSV(E_begin_v=3.0, E_end_v=3.5, E_step_v=0.01, scan_rate_v_s=0.1), 51),
    (CV(E_begin_v=3.0, E_vertex1_v=3.5, E_vertex2_v=2.9, E_step_v=0.01, scan_rate_v_s=0.1,
        n_scans=2), 1 + 2 * 120),
    (PEIS(amplitude_v=0.01, f_start_hz=1e5, f_end_hz=1, n_frequencies=11), 11),
]


@pytest.mark.parametrize("tech,n", TECHNIQUES, ids=[t.technique for t, _ in TECHNIQUES])
async def test_every_technique_streams_its_points(rig: Rig, tech: Any, n: int) -> None:
    points = [p async for p in rig.dev.measure(tech)]
    assert len(points) == n
    times = [p.time_s for p in points]
    assert times == sorted(times) and times[0] > 0
    last = points[-1]
    if tech.technique == "ocv":
        assert all(p.potential_v == pytest.approx(3.0, abs=0.02) for p in points)
    elif tech.technique == "ca":
        assert all(p.applied_v == pytest.approx(3.6) for p in points)
        assert points[0].current_a > last.current_a > 0  # decays
    elif tech.technique == "cp":
        assert all(p.current_a == pytest.approx(1e-4, rel=0.05) for p in points)
        assert last.potential_v > points[0].potential_v  # charging raises the potential
    elif tech.technique == "lsv":
        assert [p.applied_v for p in points] == pytest.approx(
            list(np.linspace(3.0, 3.5, 51)), abs=1e-6)
    elif tech.technique == "cv":
        assert {p.scan for p in points} == {1, 2}
        assert max(p.applied_v for p in points) == pytest.approx(3.5)
        assert min(p.applied_v for p in points) == pytest.approx(2.9)
    elif tech.technique == "peis":
        assert points[0].frequency_hz == pytest.approx(1e5)
        assert last.frequency_hz == pytest.approx(1.0)
        assert all(p.z_imag_ohm < 0 for p in points)  # capacitive
        assert points[0].z_real_ohm == pytest.approx(rig.sim.cell.r_s(), rel=0.01)
    assert not rig.sim.snapshot()["cell_on"]  # on_finished: cell_off


async def test_gcpl_cycles_with_cutoffs() -> None:
    r, served = await make_rig({"soc": 0.0}, scale=20000)
    try:
        tech = GCPL(n_cycles=2, phases=[
            GCPLPhase(mode="cc", current_a=2e-4, upper_cutoff_v=3.4, max_time_s=7200,
                      sample_interval_s=10),
            GCPLPhase(mode="rest", max_time_s=60, sample_interval_s=20),
            GCPLPhase(mode="cc", current_a=-2e-4, lower_cutoff_v=2.6, max_time_s=7200,
                      sample_interval_s=10),
        ])
        points = [p async for p in r.dev.measure(tech)]
        assert {(p.cycle, p.step) for p in points} == {(c, s) for c in (1, 2) for s in (1, 2, 3)}
        for c in (1, 2):
            charge = [p for p in points if (p.cycle, p.step) == (c, 1)]
            rest = [p for p in points if (p.cycle, p.step) == (c, 2)]
            dis = [p for p in points if (p.cycle, p.step) == (c, 3)]
            assert charge[-1].potential_v >= 3.4 > max(p.potential_v for p in charge[:-1])
            assert dis[-1].potential_v <= 2.6 < min(p.potential_v for p in dis[:-1])
            assert len(rest) == 3 and all(p.current_a == 0.0 for p in rest)
            assert all(p.extra["step_type"] == "charge" for p in charge)
            # cut-off, not max time, ended the phases
            assert charge[-1].time_s - charge[0].time_s < 7200 - 10
    finally:
        await r.dev.open_link().close()
        await served.close()


async def test_cv_peak_current_follows_square_root_of_scan_rate(rig: Rig) -> None:
    rates = [0.025, 0.05, 0.1, 0.2]
    peaks = []
    for v in rates:
        tech = CV(E_begin_v=2.9, E_vertex1_v=3.6, E_vertex2_v=2.9, E_step_v=0.002,
                  scan_rate_v_s=v)
        points = [p async for p in rig.dev.measure(tech)]
        forward = [p for p in points if p.time_s <= 0.7 / v + 1e-9]
        peaks.append(max(p.current_a for p in forward))
    slope = np.polyfit(np.log(rates), np.log(peaks), 1)[0]
    assert slope == pytest.approx(0.5, abs=0.05)
    # and the magnitude is Randles–Ševčík's (plus a little double-layer charging)
    for v, ip in zip(rates, peaks, strict=True):
        assert ip == pytest.approx(rig.sim.cell.randles_sevcik_peak(v), rel=0.1)


async def test_abort_mid_measurement_leaves_cell_off(rig: Rig) -> None:
    got = []
    tech = CA(potential_v=3.4, duration_s=1e6, sample_interval_s=0.5)
    async for p in rig.dev.measure(tech):
        got.append(p)
        if len(got) == 5:
            assert rig.sim.snapshot()["cell_on"]
            await rig.dev.abort()
    assert len(got) >= 5
    assert rig.sim.snapshot()["aborts"] == 1
    assert not rig.sim.snapshot()["cell_on"] and rig.sim.is_safe()
    await rig.dev.safe_state()
    await rig.dev.safe_state()  # idempotent, and fine when idle
    assert rig.sim.is_safe()


async def test_abort_from_another_task_and_leaving_the_loop_early(rig: Rig) -> None:
    tech = OCV(duration_s=1e6, sample_interval_s=0.5)

    three = asyncio.Event()

    async def consume() -> int:
        n = 0
        async for _ in rig.dev.measure(tech):
            n += 1
            if n == 3:
                three.set()
        return n

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(three.wait(), 10)
    await rig.dev.safe_state()
    assert await asyncio.wait_for(task, 10) >= 3
    assert rig.sim.is_safe()
    # breaking out of the iteration aborts the script too
    async for _ in rig.dev.measure(tech):
        break
    for _ in range(200):
        if not rig.sim.running:
            break
        await asyncio.sleep(0.01)
    assert rig.sim.is_safe() and rig.sim.snapshot()["aborts"] == 2
    status = await rig.dev.status()
    assert status.state == "idle"


async def test_potentials_vs_ocp_are_shifted(rig: Rig) -> None:
    ocp = rig.sim.cell.ocv()
    tech = CA(potential_v=0.2, vs="ocp", duration_s=1, sample_interval_s=0.5)
    points = [p async for p in rig.dev.measure(tech)]
    assert points[0].applied_v == pytest.approx(ocp + 0.2, abs=0.01)


# -- streaming into BDF --------------------------------------------------------------------------

async def test_bdf_columns_and_flush_during_run(rig: Rig, tmp_path: Path) -> None:
    path = tmp_path / "data" / "cv1.bdf.csv"
    tech = CV(E_begin_v=3.0, E_vertex1_v=3.5, E_vertex2_v=2.9, E_step_v=0.001,
              scan_rate_v_s=0.001, n_scans=50)
    writer = BdfWriter(path, technique=tech)
    on_disk_while_running = 0
    first_write = None
    async for p in rig.dev.measure(tech):
        writer.write(p)
        first_write = first_write or time.monotonic()
        if time.monotonic() - first_write > 1.5:
            on_disk_while_running = len(read_bdf(path)[TEST_TIME])
            await rig.dev.abort()
    rows = writer.rows
    writer.close()
    assert 0 < on_disk_while_running <= rows
    cols = read_bdf(path)
    assert set(cols) >= {TEST_TIME, VOLTAGE, CURRENT, WE_POTENTIAL, APPLIED_POTENTIAL, CYCLE}
    assert len(cols[TEST_TIME]) == rows
    assert np.array_equal(cols[VOLTAGE], cols[APPLIED_POTENTIAL])  # nothing measured the WE
    assert np.isnan(cols[WE_POTENTIAL]).all()
    assert cols[CYCLE][0] == 1


async def test_bdf_impedance_columns(rig: Rig, tmp_path: Path) -> None:
    path = tmp_path / "eis.bdf.csv"
    tech = PEIS(amplitude_v=0.01, f_start_hz=1e4, f_end_hz=10, n_frequencies=7)
    with BdfWriter(path, tech) as writer:
        async for p in rig.dev.measure(tech):
            writer.write(p)
    cols = read_bdf(path)
    assert cols[FREQUENCY] == pytest.approx(np.geomspace(1e4, 10, 7))
    z = cols[Z_REAL] + 1j * cols[Z_IMAG]
    assert np.abs(z) == pytest.approx(cols["Absolute Impedance / ohm"])
    assert np.degrees(np.angle(z)) == pytest.approx(cols["Phase / deg"])
    assert np.isnan(cols[CURRENT]).all()


# -- safe state whatever is on the line (issue 12) ---------------------------------------------

async def test_safe_state_skips_an_abort_reply_still_in_flight(rig: Rig) -> None:
    """A `Z` answered after the script ended (`Z!0006`, e.g. from a cancelled measurement)
    may still be on its way when safe_state starts: it is not the answer to cell_off."""
    rig.sim.cell_on = True
    rig.sim.faults.delay_s = 0.2  # every reply is late; their order is kept
    link = rig.dev.open_link()
    await link.write(b"Z\n")  # answered Z!0006 (nothing runs), 0.2 s from now
    await asyncio.sleep(0.1)  # safe_state's own replies come after that stale one
    await rig.dev.safe_state()
    rig.sim.faults.delay_s = 0.0
    assert rig.sim.is_safe()


async def test_safe_state_while_a_cycling_script_runs_and_its_step_is_cancelled(
        rig: Rig) -> None:
    """E-stop during cycling: safe_state and the measurement's own cancellation (which
    sends a `Z` too) overlap; the cell ends off with no error, whatever the order."""
    tech = GCPL(n_cycles=5, phases=[
        GCPLPhase(mode="cc", current_a=5e-4, upper_cutoff_v=4.2, max_time_s=9000,
                  sample_interval_s=10),
        GCPLPhase(mode="cc", current_a=-5e-4, lower_cutoff_v=3.0, max_time_s=9000,
                  sample_interval_s=10)])
    for delay in (0.0, 0.05, 0.2):
        rig.sim.faults.delay_s = delay
        got = asyncio.Event()

        async def cycle(got: asyncio.Event) -> None:
            async for _ in rig.dev.measure(tech):
                got.set()

        task = asyncio.create_task(cycle(got))
        await asyncio.wait_for(got.wait(), 30)
        assert rig.sim.cell_on
        safe = asyncio.create_task(rig.dev.safe_state())
        await asyncio.sleep(0)
        task.cancel()
        await safe  # raises on the old code: cell_off script answered b'Z!0006\n'
        with contextlib.suppress(BaseException):
            await task
        assert rig.sim.is_safe(), delay
    rig.sim.faults.delay_s = 0.0


async def test_safe_state_when_the_end_of_an_aborted_script_is_lost(rig: Rig) -> None:
    """The `Z` reply and the script's last lines never arrive, and the script samples so
    rarely that its reader would wait long for them: the driver stops waiting, makes sure
    the device is idle, and switches the cell off, in the one call."""
    tech = CA(potential_v=0.2, sample_interval_s=10000.0, duration_s=1e6)  # 10 s wall
    task = asyncio.create_task(anext(aiter(rig.dev.measure(tech))))
    await _until(lambda: rig.sim.running and rig.sim.cell_on)
    rig.sim.faults.silence = True
    safe = asyncio.create_task(rig.dev.safe_state())
    await _until(lambda: not rig.sim.running)  # Z honoured; its reply and the end dropped
    await asyncio.sleep(0.2)
    rig.sim.faults.silence = False
    await safe  # old code: DeviceTimeout "no end of script after Z"
    assert rig.sim.is_safe()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def _until(cond: Any, timeout: float = 30.0) -> None:
    """Poll a condition; the timeout only bounds a hang."""
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)
