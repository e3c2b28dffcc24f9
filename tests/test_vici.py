"""VICI selector valve: the simulator against the protocol page in raw bytes, the driver
against the simulator over real pseudo-terminals, and liquid routed through the valve."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.newera import NewEraPump
from drivers.vici import ViciValve
from labctl.clock import Clock, ScaledClock
from labctl.device import DeviceSpec, DeviceState
from labctl.errors import ConfigError, DeviceFault, DeviceTimeout, LimitError
from labctl.transport import Link, LinkPool
from simulators.newera import NewEraSimulator
from simulators.serving import Served, serve
from simulators.vici import ViciValveSimulator
from simulators.world import World

PORT_MAP = {"1": "cell_vial", "2": "coat_vial", "6": "waste"}


def world() -> World:
    return World.from_spec({
        "materials": {"DMC": {"density_g_ml": 1.07}},
        "vessels": {
            "res_dmc": {"kind": "reservoir", "capacity": "250 mL", "contents": {"DMC": "200 mL"}},
            "cell_vial": {"capacity": "20 mL", "empty_mass_g": 12.5},
            "coat_vial": {"capacity": "40 mL", "empty_mass_g": 18.0},
            "waste": {"kind": "waste", "capacity": "1000 mL"},
        },
    })


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- raw bytes
@dataclass
class Raw:
    sim: ViciValveSimulator
    link: Link

    async def ask(self, data: bytes, lines: int = 1) -> list[bytes]:
        self.link.reset_input()
        await self.link.write(data)
        return [await self.link.read_until(b"\r", 3.0) for _ in range(lines)]

    async def tell(self, data: bytes) -> None:
        await self.link.write(data)


RawFactory = Callable[..., Awaitable[Raw]]


@pytest.fixture
async def raw() -> AsyncIterator[RawFactory]:
    made: list[tuple[Served, Link]] = []

    async def make(clock: Clock | None = None, world: World | None = None,
                   address: Any = None, **options: Any) -> Raw:
        options.setdefault("positions", 6)
        sim = ViciValveSimulator(clock=clock or ScaledClock(1000), address=address, world=world,
                                 options=options, name="sel_valve")
        served = await serve([sim], "pty")
        link = Link(served.endpoint)
        await link.open()
        made.append((served, link))
        return Raw(sim, link)

    yield make
    for served, link in made:
        await link.close()
        await served.close()


async def test_queries_and_version(raw: RawFactory) -> None:
    r = await raw()
    assert await r.ask(b"CP\r") == [b"CP01\r"]
    assert await r.ask(b"NP\r") == [b"NP06\r"]
    assert await r.ask(b"VR\r", lines=2) == [b"Universal Actuator\r", b"Version 2.3\r"]
    assert await r.ask(b"ID\r") == [b"ID*\r"]
    assert await r.ask(b"AM\r") == [b"AM3\r"]


async def test_go_moves_and_cp_reports_the_position_left_until_done(raw: RawFactory) -> None:
    r = await raw(clock=ScaledClock(2), positions=96)  # 47 steps: 4.7 s = 2.35 wall s
    await r.tell(b"GO48\r")
    assert await r.ask(b"CP\r") == [b"CP01\r"]
    assert r.sim.target == 48
    await wait_until(lambda: r.sim.target is None)
    assert await r.ask(b"CP\r") == [b"CP48\r"]


async def test_routes_steps_home_and_np(raw: RawFactory) -> None:
    r = await raw()
    await r.tell(b"GO5\r")
    await wait_until(lambda: r.sim.current == 5)
    await r.tell(b"GO\r")  # GO alone: next position
    await wait_until(lambda: r.sim.current == 6)
    await r.tell(b"CW2\r")
    await wait_until(lambda: r.sim.current == 2)
    await r.tell(b"CC06\r")
    await wait_until(lambda: r.sim.current == 6)
    await r.tell(b"HM\r")
    await wait_until(lambda: r.sim.current == 1 and r.sim.target is None)
    assert await r.ask(b"CP\r") == [b"CP01\r"]
    await r.tell(b"NP10\r")
    assert await r.ask(b"NP\r") == [b"NP10\r"]
    await r.tell(b"GO10\r")
    await wait_until(lambda: r.sim.current == 10)
    assert r.sim.moves == 6


async def test_bad_commands(raw: RawFactory) -> None:
    r = await raw()
    assert await r.ask(b"XY\r") == [b"Bad command\r"]
    assert await r.ask(b"GO7\r") == [b"Bad command\r"]
    assert await r.ask(b"GO0\r") == [b"Bad command\r"]
    assert await r.ask(b"NP1\r") == [b"Bad command\r"]
    assert await r.ask(b"TO\r") == [b"Bad command\r"]  # not in a two-position mode
    assert await r.ask(b"CP\r") == [b"CP01\r"]  # nothing moved


async def test_id_addressing_broadcast_and_clear(raw: RawFactory) -> None:
    r = await raw()
    await r.tell(b"ID3\r")
    # without the ID: ignored, so the first reply on the line answers 3CP
    await r.tell(b"NP\r")
    assert await r.ask(b"3CP\r") == [b"CP01\r"]
    assert await r.ask(b"3ID\r") == [b"ID3\r"]
    await r.tell(b"*GO4\r")  # broadcast: executed without a reply
    await wait_until(lambda: r.sim.current == 4)
    await r.tell(b"*ID*\r")
    assert await r.ask(b"CP\r") == [b"CP04\r"]
    assert r.sim.device_id is None


async def test_letter_id_from_options(raw: RawFactory) -> None:
    r = await raw(id="B")
    await r.tell(b"CP\r")
    assert await r.ask(b"BNP\r") == [b"NP06\r"]
    assert await r.ask(b"bcp\r") == [b"CP01\r"]


async def test_delimiter_settings(raw: RawFactory) -> None:
    r = await raw()
    await r.tell(b"DEL2\r")
    assert await r.ask(b"CP\n") == [b"CP01\r"]
    await r.tell(b"DEL3\n")
    await r.tell(b"NP\r")  # CR alone no longer ends a command ...
    assert await r.ask(b"\r\n") == [b"NP06\r"]  # ... CR LF does
    assert await r.ask(b"CP\r\n") == [b"CP01\r"]
    await r.tell(b"DEL1\r\n")
    assert await r.ask(b"CP\r") == [b"CP01\r"]


async def test_action_replies_with_ifm(raw: RawFactory) -> None:
    r = await raw()
    assert await r.ask(b"IFM\r") == [b"IFM0\r"]
    await r.tell(b"IFM1\r")
    assert await r.ask(b"GO3\r") == [b"CP03\r"]  # sent when the move ends


async def test_two_position_mode(raw: RawFactory) -> None:
    r = await raw()
    await r.tell(b"AM1\r")
    assert await r.ask(b"CP\r") == [b"CPA\r"]
    await r.tell(b"TO\r")
    await wait_until(lambda: r.sim.current == 2)
    assert await r.ask(b"CP\r") == [b"CPB\r"]
    await r.tell(b"GOA\r")
    await wait_until(lambda: r.sim.current == 1)
    assert await r.ask(b"CP\r") == [b"CPA\r"]


async def test_valve_routes_the_world(raw: RawFactory) -> None:
    w = world()
    r = await raw(world=w, port_map=PORT_MAP)
    assert w.resolve("@sel_valve") == "cell_vial"
    await r.tell(b"GO2\r")
    await wait_until(lambda: r.sim.current == 2 and r.sim.target is None)
    assert w.resolve("@sel_valve") == "coat_vial"
    await r.tell(b"GO3\r")  # no vessel on port 3
    await wait_until(lambda: r.sim.current == 3 and r.sim.target is None)
    assert "sel_valve" not in w.routes


# ------------------------------------------------------------------------------ driver
@dataclass
class Rig:
    sim: ViciValveSimulator
    valve: ViciValve
    world: World
    served: Served


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig() -> AsyncIterator[RigFactory]:
    made: list[tuple[Served, ViciValve, LinkPool]] = []

    async def make(
        clock: Clock | None = None,
        params: dict[str, Any] | None = None,
        address: Any = None,
        sim_options: dict[str, Any] | None = None,
        timeout_s: float = 0.5,
        connect: bool = True,
    ) -> Rig:
        clock = clock or ScaledClock(1000)
        w = world()
        params = {"positions": 6, "port_map": PORT_MAP} if params is None else params
        sim = ViciValveSimulator(clock=clock, address=address, world=w,
                                 options={**params, **(sim_options or {})}, name="sel_valve")
        served = await serve([sim], "pty")
        links = LinkPool()
        spec = DeviceSpec(name="sel_valve", driver="vici-valve", endpoint=served.endpoint,
                          address=address, params=params, timeout_s=timeout_s)
        valve = ViciValve(spec, links=links, clock=clock)
        made.append((served, valve, links))
        if connect:
            await valve.connect()
        return Rig(sim, valve, w, served)

    yield make
    for served, valve, links in made:
        await valve.close()
        await links.close_all()
        await served.close()


async def test_driver_identifies_and_moves(rig: RigFactory) -> None:
    g = await rig()
    info = await g.valve.identify()
    assert (info.model, info.firmware) == ("Universal Actuator", "2.3")
    await g.valve.move(4)
    assert g.sim.current == 4 and await g.valve.position() == 4
    await g.valve.move("coat_vial")
    assert g.sim.current == 2
    assert g.world.resolve("@sel_valve") == "coat_vial"
    status = await g.valve.status()
    assert status.state == DeviceState.IDLE
    assert status.readings["position"] == 2 and status.readings["vessel"] == "coat_vial"
    await g.valve.home()
    assert g.sim.current == 1


async def test_driver_waits_for_a_slow_move(rig: RigFactory) -> None:
    g = await rig(clock=ScaledClock(5), params={"positions": 12})
    await g.valve.move(7)  # 6 steps: 0.6 s, 0.12 wall s
    assert g.sim.current == 7 and g.sim.target is None


async def test_position_range_checked_before_sending(rig: RigFactory) -> None:
    g = await rig()
    assert g.valve.link is not None
    sent = g.valve.link.stats.bytes_out
    for bad in (0, 7, "no_such_vial"):
        with pytest.raises(LimitError) as exc:
            await g.valve.move(bad)
        assert exc.value.device == "sel_valve" and exc.value.parameter == "position"
    assert g.valve.link.stats.bytes_out == sent
    assert g.sim.moves == 0


async def test_id_addressing(rig: RigFactory) -> None:
    g = await rig(address=3)
    assert g.sim.device_id == "3"
    await g.valve.move(5)
    assert g.sim.current == 5
    with pytest.raises(ConfigError):
        await rig(address="?!")


async def test_wrong_id_is_silent(rig: RigFactory) -> None:
    g = await rig(address=3, connect=False, timeout_s=0.2)
    g.sim.device_id = "4"
    with pytest.raises(DeviceTimeout):
        await g.valve.connect()


async def test_positions_read_from_the_actuator_or_set(rig: RigFactory) -> None:
    g = await rig(params={}, sim_options={"positions": 8})
    assert g.valve.positions == 8
    h = await rig(params={"positions": 10}, sim_options={"positions": 6})
    assert h.sim.n_positions == 10
    await h.valve.move(9)
    assert h.sim.current == 9


async def test_silence_times_out_then_recovers(rig: RigFactory) -> None:
    g = await rig(timeout_s=0.2)
    g.sim.faults.silence = True
    with pytest.raises(DeviceTimeout):
        await g.valve.position()
    g.sim.faults.silence = False
    assert await g.valve.position() == 1


async def test_garbage_on_the_line(rig: RigFactory) -> None:
    g = await rig(timeout_s=0.3)
    g.sim.faults.garbage = b"\xff\x00#"
    assert await g.valve.position() == 1
    g.sim.faults.garbage = b"noise\r"  # a whole junk line: the query is resent
    await g.valve.move(3)
    assert g.sim.current == 3


async def test_refused_command_is_a_device_fault(rig: RigFactory) -> None:
    g = await rig()
    g.sim.faults.error = True
    with pytest.raises(DeviceFault) as exc:
        await g.valve.move(2)
    assert exc.value.code == "Bad command"
    await g.valve.move(2)
    assert g.sim.current == 2


async def test_jammed_move_is_a_device_fault(rig: RigFactory) -> None:
    g = await rig(timeout_s=0.2)
    g.sim.faults.stall = True
    with pytest.raises(DeviceFault) as exc:
        await g.valve.move(4)
    assert exc.value.code == "stall"
    assert g.sim.current == 1 and g.sim.jammed
    await g.valve.move(4)
    assert g.sim.current == 4


async def test_safe_state_is_harmless(rig: RigFactory) -> None:
    g = await rig()
    await g.valve.move(2)
    await g.valve.safe_state()
    await g.valve.safe_state()
    assert g.sim.current == 2 and g.sim.is_safe()


async def test_pump_through_the_valve_into_the_selected_vial() -> None:
    """Conservation through a route: NE-1000 from a reservoir into "@sel_valve"."""
    clock = ScaledClock(1000)
    w = world()
    vsim = ViciValveSimulator(clock=clock, world=w, name="sel_valve",
                              options={"positions": 6, "port_map": PORT_MAP})
    psim = NewEraSimulator(clock=clock, address=0, world=w, name="pump", options={
        "syringe_diameter": "14.5 mm", "source": "res_dmc", "destination": "@sel_valve"})
    served = [await serve([vsim], "pty"), await serve([psim], "pty")]
    links = LinkPool()
    valve = ViciValve(DeviceSpec(name="sel_valve", driver="vici-valve",
                                 endpoint=served[0].endpoint,
                                 params={"positions": 6, "port_map": PORT_MAP}),
                      links=links, clock=clock)
    pump = NewEraPump(DeviceSpec(name="pump", driver="newera-ne1000",
                                 endpoint=served[1].endpoint, address=0,
                                 params={"syringe_diameter": "14.5 mm"}),
                      links=links, clock=clock)
    try:
        await valve.connect()
        await pump.connect()
        total = w.total_mass_g()
        await valve.move("coat_vial")
        assert await pump.pump_volume(1e-3, 2e-3 / 60) == pytest.approx(1e-3, rel=1e-3)
        await valve.move("cell_vial")
        assert await pump.pump_volume(0.5e-3, 2e-3 / 60) == pytest.approx(0.5e-3, rel=1e-3)
        assert w.volume_l("coat_vial") == pytest.approx(1e-3, rel=1e-6)
        assert w.volume_l("cell_vial") == pytest.approx(0.5e-3, rel=1e-6)
        assert w.mass_g("cell_vial") == pytest.approx(12.5 + 0.5 * 1.07, rel=1e-6)
        assert w.volume_l("res_dmc") == pytest.approx(198.5e-3, rel=1e-6)
        assert w.total_mass_g() == pytest.approx(total, rel=1e-12)
        # a port with no vessel: the pump stalls rather than spill
        await valve.move(3)
        with pytest.raises(DeviceFault) as exc:
            await pump.pump_volume(0.1e-3, 2e-3 / 60)
        assert exc.value.code == "A?S"
    finally:
        await pump.close()
        await valve.close()
        await links.close_all()
        for s in served:
            await s.close()


async def test_random_bytes_never_break_the_simulator(raw: RawFactory) -> None:
    r = await raw()
    rng = random.Random(1000)
    replies: list[bytes] = []
    alphabet = b"\r\n *0123456789ABCDEGHIMNOPRSTVWXY\xff\x00"
    for _ in range(300):
        chunk = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        r.sim.feed(chunk, replies.append)  # must not raise
    r.sim.device_id, r.sim.delimiter, r.sim.mode, r.sim.ifm = None, 1, 3, 0  # noise may set them
    r.sim._buf.clear()
    await wait_until(lambda: r.sim.target is None)
    assert (await r.ask(b"NP\r"))[0].startswith(b"NP")
