"""TriContinent C-series driver against the simulator over real pseudo-terminals (and TCP
for the reconnect test): volumes, valve, every error code as its exception, busy handling,
several pumps on one bus, group initialisation, safe state, and the `labctl devices` view."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.tricontinent import TriContinentPump, group_char_for, initialize_group
from labctl.clock import ScaledClock
from labctl.device import DeviceSpec, DeviceState
from labctl.errors import (
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    LimitError,
    NotInitialized,
    ProtocolError,
)
from labctl.transport import LinkPool
from simulators.base import Simulator
from simulators.serving import Served, serve
from simulators.tricontinent import TriContinentSimulator
from simulators.world import World

ML = 1e-3
WORLD = {
    "materials": {"EC": {"density_g_ml": 1.32}},
    "vessels": {
        "res_ec": {"kind": "reservoir", "capacity": "250 mL", "contents": {"EC": "100 mL"}},
        "vial": {"capacity": "20 mL"},
    },
}
PORT_MAP = {"1": "res_ec", "2": "vial"}


class Bus:
    """Simulated pumps on one line and drivers sharing one LinkPool."""

    def __init__(self, served: Served, clock: ScaledClock, world: World):
        self.served = served
        self.clock = clock
        self.world = world
        self.sims: list[TriContinentSimulator] = served.simulators  # type: ignore[assignment]
        self.pool = LinkPool()

    @property
    def sim(self) -> TriContinentSimulator:
        return self.sims[0]

    def pump(self, address: int = 1, name: str | None = None, *,
             limits: dict[str, Any] | None = None, **params: Any) -> TriContinentPump:
        base: dict[str, Any] = {"syringe_volume": "5 mL", "resolution": 0,
                                "valve": "distribution", "ports": 6, "port_map": PORT_MAP}
        spec = DeviceSpec(name=name or f"pump{address}", driver="tricontinent-c3000",
                          endpoint=self.served.endpoint, address=address,
                          serial=TriContinentPump.default_serial, params={**base, **params},
                          limits=limits if limits is not None else {"max_flow": "25 mL/min"},
                          timeout_s=1.0)
        return TriContinentPump(spec, links=self.pool, clock=self.clock)

    async def close(self) -> None:
        await self.pool.close_all()
        await self.served.close()


async def open_bus(addresses: tuple[int, ...] = (1,), endpoint: str = "pty",
                   **options: Any) -> Bus:
    clock = ScaledClock(1000)
    world = World.from_spec(WORLD)
    sims: list[Simulator] = [
        TriContinentSimulator(clock=clock, address=a, world=world, name=f"pump{a}",
                              options={"syringe_volume": "5 mL", "port_map": PORT_MAP,
                                       **options})
        for a in addresses
    ]
    return Bus(await serve(sims, endpoint), clock, world)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    b = await open_bus()
    yield b
    await b.close()


@pytest.fixture
async def pump(bus: Bus) -> TriContinentPump:
    p = bus.pump()
    await p.connect()
    return p


async def ready(bus: Bus) -> TriContinentPump:
    p = bus.pump()
    await p.connect()
    await p.initialize()
    return p


# -- identity, status ---------------------------------------------------------------------
async def test_connect_identify_status(bus: Bus, pump: TriContinentPump) -> None:
    info = await pump.identify()
    assert info.model == "TriContinent C3000"
    assert info.firmware == "042517"
    assert info.serial == ""  # the DT protocol has no serial-number report
    st = await pump.status()
    assert st.state == DeviceState.IDLE
    assert st.readings["initialized"] is False
    await pump.initialize()
    st = await pump.status()
    assert st.readings == {"plunger_volume_l": 0.0, "plunger_steps": 0, "valve_port": "1",
                           "initialized": True}
    assert bus.sim.initialized


async def test_connect_fails_clearly_when_nobody_answers(bus: Bus) -> None:
    ghost = bus.pump(address=9)
    with pytest.raises(DeviceTimeout, match="no answer at address 9"):
        await ghost.connect()


# -- volumes and valve -------------------------------------------------------------------
async def test_volume_accounting_over_cycles(bus: Bus) -> None:
    p = await ready(bus)
    for cycle in range(3):
        await p.set_valve("res_ec")
        await p.aspirate(2.0 * ML, flow_l_s=10 * ML / 60)
        assert await p.plunger_volume_l() == pytest.approx((2.0 + 0.5 * cycle) * ML)
        await p.set_valve("vial")
        await p.dispense(1.5 * ML)
        assert await p.plunger_volume_l() == pytest.approx((0.5 + 0.5 * cycle) * ML)
    assert bus.sim.snapshot()["plunger_volume_l"] == pytest.approx(1.5 * ML)
    assert bus.world.volume_l("vial") == pytest.approx(4.5 * ML)
    assert bus.world.volume_l("pump1.syringe") == pytest.approx(1.5 * ML)
    assert bus.world.volume_l("res_ec") == pytest.approx(94 * ML)
    await p.dispense(1.5 * ML)
    moved = await p.transfer(7 * ML, "res_ec", "vial")  # two strokes
    assert moved == pytest.approx(7 * ML)
    assert bus.world.volume_l("vial") == pytest.approx(13 * ML)
    assert bus.world.volume_l("res_ec") == pytest.approx(87 * ML)
    assert await p.plunger_volume_l() == 0.0


class PumpPausedInStatus(TriContinentPump):
    """The real driver, held between two of status()'s exchanges until `resume` is set:
    the moment a run's string can slip in on a busy bench."""

    resume: asyncio.Event | None = None
    paused = asyncio.Event()

    async def query(self, text: str) -> Any:
        answer = await super().query(text)
        if text == "?6" and self.resume is not None:
            resume, self.resume = self.resume, None
            self.paused.set()
            await resume.wait()
        return answer


async def test_a_status_read_across_an_aspirate_does_not_undo_it(bus: Bus) -> None:
    """A status poll (the MQTT agent's, the TUI's) asks Q, ?, ?6 and ?19 one exchange at a
    time, and a run's aspirate can run between them. The poll must not then put back the
    position it read before the aspirate: the dispense that followed was refused with
    "exceeds the syringe content (0 l)" (two runs of a 1,000-run soak failed so)."""
    spec = bus.pump().spec
    p = PumpPausedInStatus(spec, links=bus.pool, clock=bus.clock)
    await p.connect()
    await p.initialize()
    await p.set_valve("res_ec")
    p.resume, p.paused = asyncio.Event(), asyncio.Event()
    resume = p.resume
    polling = asyncio.create_task(p.status())  # reads position 0, then waits after ?6
    await asyncio.wait_for(p.paused.wait(), 10)
    await p.aspirate(1.0 * ML)
    resume.set()
    assert (await polling).readings["plunger_steps"] == 0  # what it read, before
    await p.set_valve("vial")
    await p.dispense(1.0 * ML)
    assert bus.world.volume_l("vial") == pytest.approx(1.0 * ML)
    assert await p.plunger_volume_l() == 0.0


async def test_flow_sets_top_speed(bus: Bus) -> None:
    p = await ready(bus)
    await p.aspirate(1 * ML, flow_l_s=5 * ML / 60)  # 5 mL/min: 1/60 stroke/s = 100 half-steps/s
    assert bus.sim.top_speed == 100
    await p.dispense(1 * ML)  # no flow: the configured default top speed
    assert bus.sim.top_speed == 1400


async def test_high_resolution_mode_converts_volumes() -> None:
    b = await open_bus()
    try:
        p = b.pump(resolution=1)
        await p.connect()
        await p.initialize()
        await p.aspirate(1.25 * ML)
        assert b.sim.snapshot()["position"] == 6000  # of 24000 steps
        assert await p.plunger_volume_l() == pytest.approx(1.25 * ML)
    finally:
        await b.close()


async def test_valve_moves_distribution(bus: Bus) -> None:
    p = await ready(bus)
    await p.set_valve("5")  # from 1: shorter counter-clockwise
    assert bus.sim.valve == 5
    assert b"1O5R" in bus.sim.received
    await p.set_valve("6")
    assert b"1I6R" in bus.sim.received
    st = await p.status()
    assert st.readings["valve_port"] == "6"


async def test_valve_moves_three_way_and_bypass_is_error_11() -> None:
    three_way = {"input": "res_ec", "output": "vial"}
    b = await open_bus(valve="3-way", port_map=three_way)
    try:
        p = b.pump(valve="3-way", port_map=three_way)
        await p.connect()
        await p.initialize()
        assert p.ports == ["input", "output", "bypass"]
        await p.set_valve("output")
        assert b.sim.valve == "o"
        await p.set_valve("bypass")
        assert (await p.status()).readings["valve_port"] == "bypass"
        with pytest.raises(DeviceFault) as exc:
            await p.aspirate(1 * ML)
        assert exc.value.code == 11
        await p.set_valve("res_ec")
        await p.aspirate(1 * ML)
        assert b.world.volume_l("pump1.syringe") == pytest.approx(1 * ML)
    finally:
        await b.close()


# -- limits before any byte ------------------------------------------------------------------
async def test_limit_errors_send_nothing(bus: Bus) -> None:
    p = await ready(bus)
    await p.aspirate(4 * ML)
    before = bus.sim.rx_bytes
    attempts = [
        p.aspirate(6 * ML),  # beyond the syringe
        p.aspirate(1.5 * ML),  # beyond the room left (1 mL)
        p.aspirate(-1 * ML),
        p.dispense(4.5 * ML),  # more than the syringe holds
        p.aspirate(0.5 * ML, flow_l_s=30 * ML / 60),  # over max_flow 25 mL/min
        p.set_valve("7"),  # no such port
        p.set_valve("res_dmc"),  # no such vessel on this pump
    ]
    for attempt in attempts:
        with pytest.raises(LimitError) as exc:
            await attempt
        assert exc.value.device == "pump1"
        assert exc.value.parameter in ("volume", "flow", "port")
    assert bus.sim.rx_bytes == before
    assert bus.sim.snapshot()["position"] == 2400


async def test_limit_error_names_value_and_limit(bus: Bus) -> None:
    p = await ready(bus)
    with pytest.raises(LimitError) as exc:
        await p.aspirate(6 * ML)
    assert exc.value.value == pytest.approx(6 * ML)
    assert exc.value.limit == pytest.approx(5 * ML)
    assert "pump1" in str(exc.value) and "volume" in str(exc.value)


# -- errors ------------------------------------------------------------------------------
async def test_not_initialized_is_error_7(pump: TriContinentPump) -> None:
    with pytest.raises(NotInitialized) as exc:
        await pump.aspirate(1 * ML)
    assert exc.value.code == 7


async def test_invalid_command_is_protocol_error(pump: TriContinentPump) -> None:
    with pytest.raises(ProtocolError, match="error 2"):
        await pump.command("V1000!R")


async def test_immediate_invalid_operand_3(bus: Bus) -> None:
    p = await ready(bus)
    with pytest.raises(DeviceFault) as exc:
        await p.command("A3001R")
    assert exc.value.code == 3
    await p.poll()  # not repeated by the next Q


async def test_deferred_error_surfaces_from_wait(bus: Bus) -> None:
    p = await ready(bus)
    answer = await p.command("A3000P3500R")  # accepted: the failure comes while it runs
    assert answer.error == 0
    with pytest.raises(DeviceFault) as exc:
        await p.wait_idle()
    assert exc.value.code == 3
    await p.poll()  # reported once
    assert await p.plunger_volume_l() == pytest.approx(5 * ML)


async def test_plunger_overload_9_then_not_initialized(bus: Bus) -> None:
    p = await ready(bus)
    bus.sim.faults.stall = True
    with pytest.raises(DeviceFault) as exc:
        await p.aspirate(4 * ML)
    assert exc.value.code == 9 and not isinstance(exc.value, NotInitialized)
    with pytest.raises(NotInitialized):
        await p.aspirate(0.1 * ML)
    await p.initialize()
    await p.aspirate(0.1 * ML)


async def test_valve_overload_10_and_init_failure_1(bus: Bus) -> None:
    p = await ready(bus)
    bus.sim.inject_deferred(10)
    with pytest.raises(DeviceFault) as exc:
        await p.set_valve("2")
    assert exc.value.code == 10
    assert (await p.status()).readings["initialized"] is False
    bus.sim.inject_deferred(1)
    with pytest.raises(DeviceFault) as exc:
        await p.initialize()
    assert exc.value.code == 1
    await p.initialize()
    await p.set_valve("2")


@pytest.mark.parametrize(
    ("code", "exc_type"),
    [(1, DeviceFault), (2, ProtocolError), (3, DeviceFault), (4, ProtocolError),
     (6, DeviceFault), (7, NotInitialized), (8, DeviceFault), (9, DeviceFault),
     (10, DeviceFault), (11, DeviceFault), (15, DeviceBusy)],
)
async def test_each_error_code_maps_to_its_exception(
    bus: Bus, code: int, exc_type: type[Exception]
) -> None:
    p = await ready(bus)
    bus.sim.faults.error = code  # the next answer carries this code
    with pytest.raises(exc_type) as exc:
        await p.set_valve("3")
    if isinstance(exc.value, DeviceFault):
        assert exc.value.code == code
    assert bus.sim.valve == 1  # nothing ran


async def test_busy_pump_refuses_with_device_busy(bus: Bus) -> None:
    p = await ready(bus)
    await p.command("V1A3000R")  # 6000 simulated seconds
    with pytest.raises(DeviceBusy):
        await p.set_valve("2")
    assert (await p.status()).state == DeviceState.BUSY
    await p.set_speed(2000)  # V is accepted while busy
    assert bus.sim.top_speed == 2000
    await p.stop()
    assert (await p.status()).state == DeviceState.IDLE


async def test_deferred_error_shown_by_status_as_fault(bus: Bus) -> None:
    p = await ready(bus)
    bus.sim.faults.stall = True
    await p.command("P3000R")
    for _ in range(2000):
        if not bus.sim.busy:
            break
        await asyncio.sleep(0.005)
    st = await p.status()
    assert st.state == DeviceState.FAULT
    assert st.fault is not None and "plunger overload" in st.fault
    assert st.readings["initialized"] is False


# -- link faults -----------------------------------------------------------------------------
async def test_queries_survive_lost_truncated_and_garbled_answers(bus: Bus) -> None:
    p = await ready(bus)
    await p.aspirate(1 * ML)
    bus.sim.faults.silence = 1
    assert await p.plunger_volume_l() == pytest.approx(1 * ML)
    bus.sim.faults.truncate = True
    assert await p.plunger_volume_l() == pytest.approx(1 * ML)
    bus.sim.faults.garbage = b"\x00\xff/9junk"
    assert await p.plunger_volume_l() == pytest.approx(1 * ML)
    bus.sim.faults.delay_s = 0.05  # late, but within the reply timeout
    assert await p.plunger_volume_l() == pytest.approx(1 * ML)


async def test_lost_command_answer_is_a_timeout_not_a_repeat(bus: Bus) -> None:
    p = await ready(bus)
    bus.sim.faults.silence = 1
    with pytest.raises(DeviceTimeout):
        await p.command("P600R")
    frames = [f for f in bus.sim.received if f.startswith(b"1P600")]
    assert len(frames) == 1


async def test_reconnect_after_disconnect_over_tcp() -> None:
    b = await open_bus(endpoint="tcp://127.0.0.1:0")
    try:
        p = b.pump()
        await p.connect()
        await p.initialize()
        await p.aspirate(1 * ML)
        await b.sim.disconnect()
        st = await p.status()  # the link notices the drop, reconnects, the query retries
        assert st.readings["plunger_volume_l"] == pytest.approx(1 * ML)
        await p.aspirate(1 * ML)
        assert await p.plunger_volume_l() == pytest.approx(2 * ML)
    finally:
        await b.close()


# -- several pumps on one bus --------------------------------------------------------------------
async def test_two_pumps_on_one_bus() -> None:
    b = await open_bus((1, 2))
    try:
        p1, p2 = b.pump(1), b.pump(2)
        assert p1.open_link() is p2.open_link()
        await asyncio.gather(p1.connect(), p2.connect())
        await asyncio.gather(p1.initialize(), p2.initialize())
        await asyncio.gather(p1.aspirate(1 * ML), p2.aspirate(3 * ML))
        assert b.sims[0].snapshot()["position"] == 600
        assert b.sims[1].snapshot()["position"] == 1800
        v1, v2 = await asyncio.gather(p1.plunger_volume_l(), p2.plunger_volume_l())
        assert (v1, v2) == (pytest.approx(1 * ML), pytest.approx(3 * ML))
        assert b.world.volume_l("res_ec") == pytest.approx(96 * ML)
    finally:
        await b.close()


async def test_group_initialisation_gets_no_answer_and_reaches_members_only() -> None:
    b = await open_bus((1, 2, 3))
    try:
        pumps = [b.pump(a) for a in (1, 2, 3)]
        for p in pumps:
            await p.connect()
        assert group_char_for([1, 2]) == "A" and group_char_for([1, 3]) == "Q"
        assert group_char_for([4, 5]) == "_"
        await TriContinentPump.initialize_group(pumps[:2])
        assert [s.initialized for s in b.sims] == [True, True, False]
        assert b"AN0Z0R" in b.sims[0].received and b"AN0Z0R" in b.sims[1].received
        assert b"AN0Z0R" not in b.sims[2].received  # pair A is addresses 1 and 2
        await pumps[0].aspirate(1 * ML)  # initialised for the driver too
        with pytest.raises(LimitError):
            await initialize_group(pumps, "A")  # pair A does not reach address 3
    finally:
        await b.close()


async def test_group_initialisation_reports_a_member_that_failed() -> None:
    b = await open_bus((1, 2))
    try:
        p1, p2 = b.pump(1), b.pump(2)
        await p1.connect()
        await p2.connect()
        b.sims[1].inject_deferred(1)
        with pytest.raises(DeviceFault) as exc:
            await initialize_group([p1, p2])
        assert exc.value.code == 1 and exc.value.device == "pump2"
        assert b.sims[0].initialized and not b.sims[1].initialized
    finally:
        await b.close()


# -- safe state ---------------------------------------------------------------------------------
async def test_safe_state_terminates_a_move(bus: Bus) -> None:
    p = await ready(bus)
    await p.command("V1P3000R")  # 6000 simulated seconds
    assert bus.sim.busy
    await p.safe_state()
    assert bus.sim.is_safe()
    stopped = bus.sim.snapshot()["position"]
    assert 0 <= stopped < 3000
    assert await p.plunger_volume_l() == pytest.approx(p.volume_for(stopped))
    assert bus.world.volume_l("pump1.syringe") == pytest.approx(p.volume_for(stopped))
    await p.safe_state()  # again: harmless
    assert bus.sim.snapshot()["position"] == stopped


async def test_safe_state_on_a_dead_link_is_a_clear_device_error(bus: Bus) -> None:
    spec = DeviceSpec(name="ghost", driver="tricontinent-c3000",
                      endpoint="/dev/does-not-exist-tricontinent", address=1,
                      params={"syringe_volume": "5 mL"}, timeout_s=0.5)
    pool = LinkPool()
    p = TriContinentPump(spec, links=pool, clock=bus.clock)
    p.open_link().reconnect_timeout = 0.3
    with pytest.raises(DeviceError, match="safe state not confirmed"):
        await p.safe_state()
    await pool.close_all()


# -- configuration --------------------------------------------------------------------------------
def test_bad_params_are_limit_errors() -> None:
    base = {"syringe_volume": "5 mL"}
    for address, params in ((16, base), (0, base), (1, {**base, "resolution": 3}),
                            (1, {**base, "valve": "5-way"}), (1, {})):
        spec = DeviceSpec(name="p", driver="tricontinent-c3000", endpoint="x", address=address,
                          params=params)
        with pytest.raises(LimitError):
            TriContinentPump(spec)


def test_labctl_devices_shows_both_pumps_identified(python: str) -> None:
    proc = subprocess.run(
        [python, "-c", "from labctl.cli import main; main()", "devices", "--config",
         "config/sim.toml", "--json", "--time-scale", "1000"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.stdout, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["devices"]}
    for name in ("pump_ec", "pump_dmc"):
        row = rows[name]
        assert row["error"] is None, row
        assert row["identity"]["model"] == "TriContinent C3000"
        assert row["identity"]["firmware"] == "042517"
        assert row["status"]["state"] == "idle"
    assert rows["pump_ec"]["endpoint"] == rows["pump_dmc"]["endpoint"]  # one RS-485 bus
