"""Whole-bench conservation on config/sim.toml: liquid moved by the pumps and routed by the
selector valve arrives in the vial the balance weighs; powder the Quantos doses is what the
world gained; an impossible move (overfull vial, empty reservoir) is a pump fault, never a
negative amount.

Everything goes through `labctl.instruments.Instruments` (simulators on real ptys, drivers
speaking their protocols) and the drivers' public capability methods. The simulated world is
read only as the ground truth the readings are compared with.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from labctl.capabilities import Balance, Dispenser, Pump, SyringePump, Valve
from labctl.config import BenchConfig, load_config, parse_config
from labctl.device import DeviceState
from labctl.errors import DeviceFault
from labctl.instruments import Instruments
from labctl.units import to
from simulators.world import World

pytestmark = pytest.mark.timeout(120)

SIM_TOML = Path(__file__).resolve().parent.parent / "config" / "sim.toml"
ML = 1e-3  # litres
ML_MIN = 1e-3 / 60  # litres per second
TIME_SCALE = 1000.0
#: the Mettler XPR (4 decimals) and the Quantos (5 decimals) round each reading to this
BALANCE_RESOLUTION_G = 1e-4
QUANTOS_RESOLUTION_G = 1e-5


def density_g_ml(cfg: BenchConfig, material: str) -> float:
    """A material's density as the bench config states it."""
    density = cfg.materials[material].density
    assert density is not None, f"{material} has no density in the config"
    return to(density, "g/mL")


def scarce_config(**changes: dict[str, Any]) -> BenchConfig:
    """config/sim.toml with some vessels changed (`res_teos={"contents": ...}`), so that a
    reservoir runs dry or a vial overflows within a few millilitres."""
    data: dict[str, Any] = tomllib.loads(SIM_TOML.read_text())
    for vessel, fields in changes.items():
        data["vessels"][vessel].update(fields)
    return parse_config(data, str(SIM_TOML))


@asynccontextmanager
async def bench(cfg: BenchConfig, only: list[str] | None = None) -> AsyncIterator[Instruments]:
    inst = Instruments(cfg, time_scale=TIME_SCALE, only=only)
    await inst.start()
    try:
        yield inst
    finally:
        errors = await inst.safe_state_all()
        await inst.close()
        assert errors == {}, f"safe state failed: {errors}"


def world_of(inst: Instruments) -> World:
    world = inst.simulation.world
    assert isinstance(world, World)
    return world


def assert_physical(world: World) -> None:
    """No vessel holds a negative amount or more liquid than it can."""
    for vessel in world.vessels.values():
        for material, grams in vessel.contents_g.items():
            assert grams >= 0, f"{vessel.name} holds {grams} g of {material}"
        assert world.volume_l(vessel.name) <= vessel.capacity_l * (1 + 1e-9), vessel.name


def device(inst: Instruments, name: str, kind: type[Any]) -> Any:
    dev = inst.devices[name]
    assert isinstance(dev, kind), f"{name} is a {type(dev).__name__}, not a {kind.__name__}"
    return dev


def liquid_g(world: World, vessel: str, material: str) -> float:
    return world.composition(vessel).get(material, 0.0)


# ------------------------------------------------------------------------------ liquids
async def test_liquid_through_pumps_and_valve_is_what_the_balance_weighs() -> None:
    """EC and DMC (TriContinent pumps sharing one RS-485 line, concurrently, through the
    VICI valve), TEOS (NE-1000) and ethanol (Modbus peristaltic pump, through the valve) go
    into coat_vial; the Mettler balance under it reads the added mass computed from the
    requested volumes and the config's densities, the reservoirs lost exactly that, and the
    world's total mass did not change."""
    cfg = load_config(SIM_TOML)
    volumes_ml = {"EC": 7.0, "DMC": 3.0, "TEOS": 2.0, "EtOH": 4.0}
    reservoirs = {"EC": "res_ec", "DMC": "res_dmc", "TEOS": "res_teos", "EtOH": "res_etoh"}
    async with bench(cfg) as inst:  # the whole bench, every device connected
        world = world_of(inst)
        pump_ec = device(inst, "pump_ec", SyringePump)
        pump_dmc = device(inst, "pump_dmc", SyringePump)
        pump_teos = device(inst, "pump_teos", Pump)
        rinse = device(inst, "rinse_pump", Pump)
        valve = device(inst, "sel_valve", Valve)
        balance = device(inst, "balance", Balance)

        total_before = world.total_mass_g()
        reservoir_before = {m: liquid_g(world, r, m) for m, r in reservoirs.items()}
        start_g = await balance.weigh()
        assert start_g == pytest.approx(world.mass_g("coat_vial"), abs=BALANCE_RESOLUTION_G)

        await asyncio.gather(pump_ec.initialize(), pump_dmc.initialize())
        await valve.move("coat_vial")
        assert await valve.position() == valve.position_for("coat_vial")
        moved = await asyncio.gather(
            pump_ec.transfer(volumes_ml["EC"] * ML, "res_ec", "@sel_valve",
                             flow_l_s=20 * ML_MIN),
            pump_dmc.transfer(volumes_ml["DMC"] * ML, "res_dmc", "@sel_valve"),
        )
        assert moved == pytest.approx([volumes_ml["EC"] * ML, volumes_ml["DMC"] * ML])
        assert await pump_ec.plunger_volume_l() == 0.0
        assert await pump_dmc.plunger_volume_l() == 0.0
        teos = await pump_teos.pump_volume(volumes_ml["TEOS"] * ML, 5 * ML_MIN)
        assert teos == pytest.approx(volumes_ml["TEOS"] * ML, rel=1e-6)
        etoh = await rinse.pump_volume(volumes_ml["EtOH"] * ML, 30 * ML_MIN)
        assert etoh == pytest.approx(volumes_ml["EtOH"] * ML, abs=1e-9)

        expected_g = sum(v * density_g_ml(cfg, m) for m, v in volumes_ml.items())
        end_g = await balance.weigh()
        assert end_g - start_g == pytest.approx(expected_g, abs=2 * BALANCE_RESOLUTION_G)

        left_reservoirs_g = sum(
            reservoir_before[m] - liquid_g(world, r, m) for m, r in reservoirs.items())
        assert left_reservoirs_g == pytest.approx(expected_g, rel=1e-9)
        for material, v in volumes_ml.items():
            assert liquid_g(world, "coat_vial", material) == pytest.approx(
                v * density_g_ml(cfg, material), rel=1e-9)
        assert world.volume_l("coat_vial") == pytest.approx(sum(volumes_ml.values()) * ML)
        assert world.total_mass_g() == pytest.approx(total_before, rel=1e-12)
        assert_physical(world)


async def test_valve_routes_each_stroke_where_it_points() -> None:
    """One pump, two vials: the valve position decides where the liquid lands, and each
    vial's balance reading (the Quantos under cell_vial, the Mettler under coat_vial) sees
    only its share."""
    cfg = load_config(SIM_TOML)
    async with bench(cfg, only=["pump_dmc", "sel_valve", "balance", "dispenser"]) as inst:
        world = world_of(inst)
        pump = device(inst, "pump_dmc", SyringePump)
        valve = device(inst, "sel_valve", Valve)
        coat_balance = device(inst, "balance", Balance)
        cell_balance = device(inst, "dispenser", Balance)
        rho = density_g_ml(cfg, "DMC")
        total_before = world.total_mass_g()
        coat0, cell0 = await coat_balance.weigh(), await cell_balance.weigh()

        await pump.initialize()
        await valve.move("cell_vial")
        await pump.transfer(1.5 * ML, "res_dmc", "@sel_valve")
        await valve.move("coat_vial")
        await pump.transfer(2.5 * ML, "res_dmc", "@sel_valve")
        await valve.move("waste")
        await pump.transfer(1.0 * ML, "res_dmc", "@sel_valve")

        assert await cell_balance.weigh() - cell0 == pytest.approx(
            1.5 * rho, abs=2 * QUANTOS_RESOLUTION_G)
        assert await coat_balance.weigh() - coat0 == pytest.approx(
            2.5 * rho, abs=2 * BALANCE_RESOLUTION_G)
        assert liquid_g(world, "waste", "DMC") == pytest.approx(1.0 * rho, rel=1e-9)
        assert world.total_mass_g() == pytest.approx(total_before, rel=1e-12)
        assert_physical(world)


# ------------------------------------------------------------------------------ powder
async def test_powder_dose_lands_in_the_vial_and_the_reading_matches_the_world() -> None:
    """EC into cell_vial, then the Quantos doses LiPF6 into it: the dispenser's reported
    mass is what the vial gained (within its 10 µg resolution), its balance reads it, the
    world gained exactly that mass (powder comes from the head, outside the world's vessels)
    and the head lost it."""
    cfg = load_config(SIM_TOML)
    async with bench(cfg, only=["pump_ec", "sel_valve", "dispenser"]) as inst:
        world = world_of(inst)
        pump = device(inst, "pump_ec", SyringePump)
        valve = device(inst, "sel_valve", Valve)
        dispenser = device(inst, "dispenser", Dispenser)
        scale = device(inst, "dispenser", Balance)  # the Quantos weighs its vial too
        quantos = inst.simulation.simulators["dispenser"]

        await pump.initialize()
        await valve.move("cell_vial")
        await pump.transfer(4 * ML, "res_ec", "@sel_valve")
        ec_g = 4 * density_g_ml(cfg, "EC")
        assert liquid_g(world, "cell_vial", "EC") == pytest.approx(ec_g, rel=1e-9)

        total_before = world.total_mass_g()
        head_before = quantos.snapshot()["head_content_g"]
        vial_before = world.mass_g("cell_vial")

        dosed = await dispenser.dispense(0.6, tolerance_pct=2.0)

        assert dosed == pytest.approx(0.6, rel=0.02)
        lipf6 = liquid_g(world, "cell_vial", "LiPF6")
        assert dosed == pytest.approx(lipf6, abs=QUANTOS_RESOLUTION_G)
        assert world.mass_g("cell_vial") - vial_before == pytest.approx(lipf6, rel=1e-12)
        assert await scale.weigh() == pytest.approx(lipf6, abs=QUANTOS_RESOLUTION_G)
        assert world.total_mass_g() - total_before == pytest.approx(lipf6, rel=1e-9)
        assert head_before - quantos.snapshot()["head_content_g"] == pytest.approx(
            lipf6, rel=1e-9)
        assert liquid_g(world, "cell_vial", "EC") == pytest.approx(ec_g, rel=1e-9)
        assert_physical(world)


# ------------------------------------------------------------------------------ faults
async def test_overfilling_a_vial_stalls_the_syringe_pump_and_initialising_returns_the_rest(
) -> None:
    """25 mL into the 20 mL cell_vial: the plunger stalls when the vial is full (DT error 9,
    plunger overload), the vial holds its capacity, the rest stays in the syringe, nothing
    is lost; re-initialising pushes the syringe's content back into the reservoir."""
    cfg = load_config(SIM_TOML)
    async with bench(cfg, only=["pump_ec", "sel_valve"]) as inst:
        world = world_of(inst)
        pump = device(inst, "pump_ec", SyringePump)
        valve = device(inst, "sel_valve", Valve)
        capacity_l = world.vessel("cell_vial").capacity_l
        total_before = world.total_mass_g()
        ec_before = liquid_g(world, "res_ec", "EC")
        rho = density_g_ml(cfg, "EC")

        await pump.initialize()
        await valve.move("cell_vial")
        with pytest.raises(DeviceFault) as err:
            await pump.transfer(25 * ML, "res_ec", "@sel_valve")
        assert err.value.code == 9

        step_l = pump.syringe_volume_l / 3000  # one plunger step, resolution 0
        assert capacity_l - step_l <= world.volume_l("cell_vial") <= capacity_l
        in_syringe_l = await pump.plunger_volume_l()
        # every stroke aspirates before it dispenses: what is not in the vial is in the syringe
        assert in_syringe_l == pytest.approx(25 * ML - world.volume_l("cell_vial"), abs=step_l)
        assert in_syringe_l > 0
        assert ec_before - liquid_g(world, "res_ec", "EC") == pytest.approx(
            (world.volume_l("cell_vial") + in_syringe_l) * 1000 * rho, rel=1e-6)
        assert world.total_mass_g() == pytest.approx(total_before, rel=1e-12)
        assert_physical(world)

        await pump.initialize()  # homes the valve to port 1 (res_ec), then the plunger
        assert await pump.plunger_volume_l() == 0.0
        assert ec_before - liquid_g(world, "res_ec", "EC") == pytest.approx(
            world.volume_l("cell_vial") * 1000 * rho, rel=1e-6)
        assert world.total_mass_g() == pytest.approx(total_before, rel=1e-12)
        assert_physical(world)


async def test_overfilling_with_the_ne1000_raises_its_stall_alarm() -> None:
    """coat_vial made 1.5 mL: pumping 3 mL TEOS into it ends in alarm A?S (motor stalled);
    the pump's own dispensed counter equals what arrived, and the vial is not overfull."""
    cfg = scarce_config(coat_vial={"capacity": "1.5 mL"})
    async with bench(cfg, only=["pump_teos"]) as inst:
        world = world_of(inst)
        pump = device(inst, "pump_teos", Pump)
        total_before = world.total_mass_g()
        with pytest.raises(DeviceFault) as err:
            await pump.pump_volume(3 * ML, 5 * ML_MIN)
        assert err.value.code == "A?S"
        status = await pump.status()
        assert status.state is DeviceState.FAULT
        arrived_l = world.volume_l("coat_vial")
        assert arrived_l == pytest.approx(1.5 * ML, rel=1e-9)  # full to the brim, no more
        assert status.readings["infused_l"] == pytest.approx(arrived_l, rel=1e-3)
        assert world.total_mass_g() == pytest.approx(total_before, rel=1e-12)
        assert_physical(world)


async def test_emptying_reservoirs_is_a_fault_of_each_pump_never_a_negative_amount() -> None:
    """Reservoirs made small: the NE-1000 runs res_teos dry (alarm A?S), the peristaltic
    pump res_etoh (Modbus fault code 1, motor stall), a TriContinent pump res_dmc (DT error
    9 on aspiration). Each pump reports no more than the reservoir had, all of it arrived,
    and no vessel goes negative."""
    cfg = scarce_config(
        res_teos={"contents": {"TEOS": "1 mL"}},
        res_etoh={"contents": {"EtOH": "2 mL"}},
        res_dmc={"contents": {"DMC": "1.2 mL"}},
    )
    async with bench(cfg, only=["pump_teos", "rinse_pump", "pump_dmc", "sel_valve"]) as inst:
        world = world_of(inst)
        total_before = world.total_mass_g()

        teos_pump = device(inst, "pump_teos", Pump)
        with pytest.raises(DeviceFault) as err:
            await teos_pump.pump_volume(3 * ML, 5 * ML_MIN)
        assert err.value.code == "A?S"
        infused_l = (await teos_pump.status()).readings["infused_l"]
        teos_rho = density_g_ml(cfg, "TEOS")
        assert infused_l == pytest.approx(1 * ML, rel=1e-3)  # all there was, no more
        assert liquid_g(world, "coat_vial", "TEOS") == pytest.approx(
            infused_l * 1000 * teos_rho, rel=1e-3)
        assert liquid_g(world, "res_teos", "TEOS") == pytest.approx(0.0, abs=1e-9)

        valve = device(inst, "sel_valve", Valve)
        await valve.move("waste")
        rinse = device(inst, "rinse_pump", Pump)
        with pytest.raises(DeviceFault) as err:
            await rinse.pump_volume(5 * ML, 30 * ML_MIN)
        assert err.value.code == 1
        status = await rinse.status()
        assert status.state is DeviceState.FAULT
        etoh_rho = density_g_ml(cfg, "EtOH")
        assert status.readings["volume_l"] == pytest.approx(2 * ML, abs=1e-6)  # µL counter
        assert liquid_g(world, "waste", "EtOH") == pytest.approx(2 * etoh_rho, rel=1e-9)
        assert liquid_g(world, "res_etoh", "EtOH") == pytest.approx(0.0, abs=1e-9)

        dmc_pump = device(inst, "pump_dmc", SyringePump)
        await dmc_pump.initialize()
        await dmc_pump.set_valve("res_dmc")
        with pytest.raises(DeviceFault) as err:
            await dmc_pump.aspirate(4 * ML)
        assert err.value.code == 9
        assert await dmc_pump.plunger_volume_l() == pytest.approx(1.2 * ML, abs=2e-6)
        assert liquid_g(world, "res_dmc", "DMC") == pytest.approx(0.0, abs=2e-3)

        assert world.total_mass_g() == pytest.approx(total_before, rel=1e-12)
        assert_physical(world)
