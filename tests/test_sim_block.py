"""The high-throughput simulated bench (README "High-throughput bench"): the vial block on
its stirrer, the Quantos autosampler presenting a vessel, the potentiostat's channels to
each vial's cell, the 16-position selector valve, and recipes/conductivity_screen.json run
end to end. Drivers talk to the simulators over real ptys."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.mt_sics import QuantosDispenser
from drivers.palmsens import EmStat
from labctl.clock import ScaledClock
from labctl.config import load_config
from labctl.device import DeviceSpec
from labctl.errors import DeviceFault, LimitError
from labctl.instruments import Instruments
from labctl.recipe import build_plan, validate
from labctl.techniques import PEIS
from labctl.transport import Link, LinkPool
from simulators.mt_sics import QuantosSimulator
from simulators.palmsens import EmStatSimulator
from simulators.serving import serve
from simulators.world import World

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "sim.toml"
SCREEN = ROOT / "recipes" / "conductivity_screen.json"
BLOCK = [f"a{i}" for i in range(1, 9)]

MATERIALS = {
    "EC": {"density_g_ml": 1.32, "molar_mass_g_mol": 88.06},
    "DMC": {"density_g_ml": 1.07, "molar_mass_g_mol": 90.08},
    "LiPF6": {"phase": "solid", "density_g_ml": 1.5, "molar_mass_g_mol": 151.91},
}


async def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


# -- the vial block ---------------------------------------------------------------------------


async def test_block_stirrer_heats_and_stirs_every_vial_of_the_block() -> None:
    """config/sim.toml: one setpoint on block_stirrer heats and stirs a1..a8 (and nothing
    else: cell_vial on the other hotplate stays at ambient, unstirred)."""
    cfg = load_config(CONFIG)
    async with Instruments(cfg, time_scale=1000, only=["block_stirrer"]) as inst:
        dev = inst.devices["block_stirrer"]
        world = inst.simulation.world
        await dev.set_temperature(45.0)  # type: ignore[attr-defined]
        await dev.set_speed(300)  # type: ignore[attr-defined]
        await wait_for(lambda: all(world.vessel(v).temperature_c > 44.0 for v in BLOCK))
        assert all(world.vessel(v).stir_rpm == 300 for v in BLOCK)
        assert world.vessel("cell_vial").stir_rpm == 0
        assert world.vessel("cell_vial").temperature_c == pytest.approx(22.0)
        # the probe sits in the block: the driver reads what the vials are at
        assert await dev.temperature_c() == pytest.approx(  # type: ignore[attr-defined]
            world.vessel("a5").temperature_c, abs=0.5)
        await inst.safe_state_all()
        await wait_for(lambda: all(world.vessel(v).stir_rpm == 0 for v in BLOCK))


# -- the Quantos autosampler ------------------------------------------------------------------


class QuantosRig:
    def __init__(self, sampler: dict[str, str] | None):
        self.clock = ScaledClock(1000)
        self.world = World.from_spec({"materials": MATERIALS, "vessels": {
            "cell_vial": {"capacity": "20 mL", "empty_mass_g": 12.5},
            "a1": {"capacity": "8 mL", "empty_mass_g": 6.0},
            "a2": {"capacity": "8 mL", "empty_mass_g": 6.5}}})
        opts: dict[str, Any] = {"vessel": "cell_vial", "head_material": "LiPF6",
                                "head_content": "5 g", "seed": 3}
        if sampler is not None:
            opts["sampler"] = sampler
        self.sim = QuantosSimulator(clock=self.clock, world=self.world, name="dispenser",
                                    options=opts)
        self.pool = LinkPool()

    async def __aenter__(self) -> QuantosRig:
        self.served = await serve([self.sim], "pty")
        spec = DeviceSpec(name="dispenser", driver="quantos-dispenser",
                          endpoint=self.served.endpoint, serial=QuantosDispenser.default_serial,
                          params={"vessel": "cell_vial"}, limits={"max_mass": "1 g"},
                          timeout_s=1.0)
        self.dev = QuantosDispenser(spec, links=self.pool, clock=self.clock)
        await self.dev.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close_all()
        await self.served.close()


SAMPLER = {"0": "cell_vial", "1": "a1", "2": "a2"}


async def test_sampler_presents_the_vessel_the_dose_lands_in() -> None:
    """`QRA 60 8 n` puts the vessel of position n under the head and on the pan: the dose
    lands in it (and the weighed mass is its), the other vessels get nothing."""
    async with QuantosRig(SAMPLER) as rig:
        await rig.dev.move_sampler(2)
        dosed = await rig.dev.dispense(0.05)
        comp = rig.world.composition
        assert comp("a2")["LiPF6"] == pytest.approx(dosed, abs=2e-5)
        assert "LiPF6" not in comp("a1") and "LiPF6" not in comp("cell_vial")
        assert await rig.dev.gross() == pytest.approx(rig.world.mass_g("a2"), abs=1e-4)
        await rig.dev.move_sampler(0)
        again = await rig.dev.dispense(0.02)
        assert comp("cell_vial")["LiPF6"] == pytest.approx(again, abs=2e-5)
        assert comp("a2")["LiPF6"] == pytest.approx(dosed, abs=2e-5)


async def test_sampler_position_without_a_vessel_refuses_the_dose() -> None:
    """A position the sampler map does not name presents nothing: the dose fails with the
    Quantos' code 4 and no powder leaves the head."""
    async with QuantosRig(SAMPLER) as rig:
        await rig.dev.move_sampler(7)
        with pytest.raises(DeviceFault) as err:
            await rig.dev.dispense(0.05)
        assert err.value.code == 4
        assert rig.sim.head_content_g == pytest.approx(5.0)
        assert rig.world.total_mass_g() == 0.0


async def test_sampler_raw_bytes_follow_the_protocol_page() -> None:
    """`QRA 60 8 1` answers `B` at once and `A` when the sampler is there; a position
    outside 0-30 is `L`."""
    async with QuantosRig(SAMPLER) as rig:
        await rig.pool.close_all()  # the driver lets go of the line
        link = Link(rig.served.endpoint)
        await link.open()
        try:
            await link.write(b"QRA 60 8 1\r\n")
            assert await link.read_until(b"\r\n", 5) == b"QRA 60 8 B\r\n"
            assert await link.read_until(b"\r\n", 5) == b"QRA 60 8 A\r\n"
            assert rig.sim.snapshot()["presented"] == "a1"
            await link.write(b"QRA 60 8 31\r\n")
            assert await link.read_until(b"\r\n", 5) == b"QRA 60 8 L\r\n"
        finally:
            await link.close()


async def test_no_sampler_map_keeps_the_one_vessel() -> None:
    """Without a sampler map (the old bench) every position doses into `vessel`."""
    async with QuantosRig(None) as rig:
        await rig.dev.move_sampler(3)
        dosed = await rig.dev.dispense(0.02)
        assert rig.world.composition("cell_vial")["LiPF6"] == pytest.approx(dosed, abs=2e-5)


def test_dispense_to_a_vessel_the_sampler_cannot_present_is_refused() -> None:
    """Validation names the step's `to`, the dispenser and the vessels it can reach."""
    cfg = load_config(CONFIG)
    recipe = {"schema": "labctl.recipe/1", "name": "t", "version": "1",
              "description": "dose into a vessel", "steps": [
                  {"id": "salt", "device": "dispenser", "action": "dispense",
                   "args": {"mass": "0.1 g", "to": "coat_vial"}}]}
    issues = validate(recipe, {}, cfg)
    assert [i.path for i in issues] == ["steps[0].args.to"]
    assert "sampler presents no vessel 'coat_vial'" in issues[0].message
    recipe["steps"][0]["args"]["to"] = "a4"
    assert validate(recipe, {}, cfg) == []
    plan = build_plan(recipe, {}, cfg)
    effects = plan.steps[0].effects
    assert effects[0]["destination"] == "a4"


# -- the potentiostat's channels --------------------------------------------------------------


def _electrolyte_world() -> World:
    return World.from_spec({"materials": MATERIALS, "vessels": {
        "cell_vial": {"capacity": "20 mL"},
        "a1": {"capacity": "8 mL", "contents": {"EC": "2 mL", "DMC": "2 mL", "LiPF6": "0.73 g"}},
        "a2": {"capacity": "8 mL", "contents": {"EC": "2 mL", "DMC": "2 mL",
                                                "LiPF6": "0.12 g"}}}})


@pytest.fixture
async def pstat() -> AsyncIterator[tuple[EmStatSimulator, EmStat]]:
    clock = ScaledClock(1000)
    world = _electrolyte_world()
    channels = {"0": "cell_vial", "1": "a1", "2": "a2"}
    sim = EmStatSimulator(clock=clock, world=world, options={
        "seed": 5, "vessel": "cell_vial", "channels": channels, "cell_constant": "1.0 /cm"})
    served = await serve([sim], "pty")
    spec = DeviceSpec(name="potentiostat", driver="palmsens-emstat", endpoint=served.endpoint,
                      params={"cell_constant": "1.0 /cm", "vessel": "cell_vial",
                              "channels": channels})
    dev = EmStat(spec, clock=clock)
    await dev.connect()
    try:
        yield sim, dev
    finally:
        await dev.close()
        await dev.open_link().close()
        await served.close()


async def _bulk_resistance(dev: EmStat, channel: int) -> float:
    tech = PEIS(E_dc_v=0.0, vs="ref", amplitude_v=0.01, f_start_hz=1e5, f_end_hz=1e4,
                n_frequencies=3)
    points = [p async for p in dev.measure(tech, channel=channel)]
    assert points and points[0].z_real_ohm is not None
    return float(points[0].z_real_ohm)


async def test_channel_measures_the_cell_of_its_vessel(
        pstat: tuple[EmStatSimulator, EmStat]) -> None:
    """PEIS on channel n measures the cell in channel n's vessel: the high-frequency
    resistance is K_cell / σ of that vial's electrolyte, different for different vials."""
    sim, dev = pstat
    r1 = await _bulk_resistance(dev, 1)
    assert sim.channel == 1
    r2 = await _bulk_resistance(dev, 2)
    assert sim.channel == 2
    for r, vial in ((r1, "a1"), (r2, "a2")):
        sigma = sim.electrolyte(vial).conductivity_s_m
        assert r == pytest.approx(100.0 / sigma, rel=0.1), vial
    assert r2 > 1.5 * r1  # the dilute vial conducts worse: not one cell measured twice


async def test_channel_outside_params_is_refused_before_any_byte(
        pstat: tuple[EmStatSimulator, EmStat]) -> None:
    sim, dev = pstat
    before = sim.scripts_run
    tech = PEIS(E_dc_v=0.0, vs="ref", amplitude_v=0.01, f_start_hz=1e5, f_end_hz=1e4,
                n_frequencies=3)
    with pytest.raises(LimitError, match="channel 5"):
        async for _ in dev.measure(tech, channel=5):
            pass
    assert sim.scripts_run == before


async def test_simulator_rejects_an_unknown_channel_with_4002(
        pstat: tuple[EmStatSimulator, EmStat]) -> None:
    """A script selecting a channel the instrument does not have fails on that line."""
    sim, dev = pstat
    link = Link(dev.spec.endpoint)
    await dev.open_link().close()
    await link.open()
    try:
        await link.write(b"e\nvar p\nset_pgstat_chan 9\ncell_off\n\n")
        lines = [await link.read_until(b"\n", 5)]
        while b"!" not in lines[-1] and len(lines) < 5:
            lines.append(await link.read_until(b"\n", 5))
        assert any(b"4002" in ln for ln in lines), lines
        assert sim.channel == 0  # still on the cell it was on
    finally:
        await link.close()


def test_peis_vessel_arg_picks_the_channel_and_is_checked() -> None:
    cfg = load_config(CONFIG)
    recipe = {"schema": "labctl.recipe/1", "name": "t", "version": "1",
              "description": "measure a vial's cell", "steps": [
                  {"id": "eis", "device": "potentiostat", "action": "peis",
                   "args": {"amplitude": "10 mV", "f_start": "100 kHz", "f_end": "1 Hz",
                            "n_frequencies": 10, "vessel": "waste"}}]}
    issues = validate(recipe, {}, cfg)
    assert [i.path for i in issues] == ["steps[0].args.vessel"]
    assert "no channel to a cell in 'waste'" in issues[0].message
    recipe["steps"][0]["args"]["vessel"] = "a6"  # a channel it has, but an empty vial
    issues = validate(recipe, {}, cfg)
    assert [(i.path, i.message) for i in issues] == [
        ("steps[0].args.vessel", "a6 holds no liquid at this step (step eis)")]


# -- the selector valve and the recipe --------------------------------------------------------


@pytest.mark.parametrize("vial", BLOCK)
def test_screen_plans_for_every_block_vial(vial: str) -> None:
    """The valve reaches every block vial (ports 7..14), the sampler and the potentiostat
    too: the screen plans for each."""
    plan = build_plan(SCREEN, {"vial": vial}, load_config(CONFIG))
    steps = {s.id: s for s in plan.steps}
    assert steps["route"].args["position"] == 6 + int(vial[1:])
    assert steps["salt"].args["sampler_position"] == int(vial[1:])
    assert steps["eis"].args["channel"] == int(vial[1:])


def test_conductivity_screen_runs_on_the_simulated_bench(tmp_path: Path) -> None:
    """`labctl run` on config/sim.toml: the electrolyte is made in a5 (and only there) and
    its conductivity is what 1 mol/kg LiPF6 in EC/DMC gives (~1 S/m at 25 °C)."""
    done = subprocess.run(
        [sys.executable, "-m", "labctl", "run", str(SCREEN), "-c", str(CONFIG), "-p", "vial=a5",
         "--time-scale", "1000", "--data-dir", str(tmp_path), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    sigma = next(f for f in result["figures_of_merit"] if f["name"] == "ionic_conductivity")
    assert 0.7 < sigma["value"] < 1.4  # S/m
    assert "block_stirrer" in sigma["temperature_source"]
    world = json.loads((Path(result["record"]) / "sim_world.json").read_text())
    vessels = world["state"]["world"]["vessels"]
    a5 = vessels["a5"]["contents_g"]
    assert set(a5) == {"EC", "DMC", "LiPF6"}
    assert a5["LiPF6"] == pytest.approx(0.726, rel=0.03)
    assert not any(vessels[v]["contents_g"] for v in BLOCK if v != "a5")
    assert not vessels["cell_vial"]["contents_g"]
    assert math.isfinite(sigma["value"])


def test_dispense_action_presents_each_steps_vessel(tmp_path: Path) -> None:
    """Through `labctl run`: a dose `to` a2, then a dose with no `to`, land in a2 and then
    in cell_vial (the action moves the sampler back to position 0, not leaving it where
    the last dose was), each recorded as an addition to its vessel."""
    recipe = tmp_path / "two_doses.json"
    recipe.write_text(json.dumps({
        "schema": "labctl.recipe/1", "name": "two_doses", "version": "1",
        "description": "one dose into a block vial, one into cell_vial", "steps": [
            {"id": "to_a2", "device": "dispenser", "action": "dispense",
             "args": {"mass": "0.1 g", "to": "a2"}},
            {"id": "home", "device": "dispenser", "action": "dispense",
             "args": {"mass": "0.05 g"}}]}))
    done = subprocess.run(
        [sys.executable, "-m", "labctl", "run", str(recipe), "-c", str(CONFIG),
         "--time-scale", "1000", "--data-dir", str(tmp_path / "runs"), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    record = Path(json.loads(done.stdout.strip().splitlines()[-1])["record"])
    vessels = json.loads((record / "sim_world.json").read_text())["state"]["world"]["vessels"]
    assert vessels["a2"]["contents_g"]["LiPF6"] == pytest.approx(0.1, rel=0.03)
    assert vessels["cell_vial"]["contents_g"]["LiPF6"] == pytest.approx(0.05, rel=0.03)
    facts = [json.loads(line) for line in (record / "events.jsonl").read_text().splitlines()]
    added = {f["step"]: f["vessel"] for f in facts if f.get("kind") == "addition"}
    assert added == {"to_a2": "a2", "home": "cell_vial"}


def test_a_dose_to_a_sampler_vessel_is_planned_with_the_sampler_move() -> None:
    """The planner's dose estimate is the simulator's: its dose time, plus the sampler's
    move when the dose presents a vessel (and the serial exchanges of any step)."""
    from labctl.estimates import STEP_EXCHANGES_WALL_S
    from simulators.mt_sics import dose_time_s

    cfg = load_config(CONFIG)
    recipe = {"schema": "labctl.recipe/1", "name": "t", "version": "1",
              "description": "dose into a block vial", "steps": [
                  {"id": "salt", "device": "dispenser", "action": "dispense",
                   "args": {"mass": "0.5 g", "to": "a7"}}]}
    step = build_plan(recipe, {}, cfg).steps[0]
    exchanges = STEP_EXCHANGES_WALL_S * cfg.bench.time_scale
    assert step.estimated_s == pytest.approx(dose_time_s({}, 0.5) + 2.0 + exchanges)
