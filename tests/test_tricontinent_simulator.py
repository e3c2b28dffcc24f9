"""TriContinent C-series simulator against shared/protocols/tricontinent-c-series.md, byte
for byte, without the driver: frames are written on a plain Link over a real pty (or TCP)
and the answers compared with what the page says."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.clock import ScaledClock
from labctl.errors import DeviceTimeout
from labctl.transport import Link
from simulators.base import Simulator
from simulators.serving import Served, serve
from simulators.tricontinent import TriContinentSimulator
from simulators.world import World

ETX = b"\x03\r\n"
IDLE = 0x60
BUSY = 0x40


def ans(status: int, data: bytes = b"") -> bytes:
    return b"/0" + bytes([status]) + data + ETX


class Line:
    """A plain host on the simulated line."""

    def __init__(self, served: Served, link: Link, clock: ScaledClock, world: World | None):
        self.served = served
        self.link = link
        self.clock = clock
        self.world = world
        self.sims: list[TriContinentSimulator] = served.simulators  # type: ignore[assignment]

    @property
    def sim(self) -> TriContinentSimulator:
        return self.sims[0]

    async def ask(self, frame: bytes) -> bytes:
        return await self.link.transact(frame, ETX, 5.0)

    async def send(self, frame: bytes) -> None:
        """Write without waiting for an answer (group addresses, OEM frames)."""
        async with self.link.lock:
            await self.link.write(frame)

    async def status(self, addr: bytes = b"1") -> int:
        return (await self.ask(b"/" + addr + b"Q\r"))[2]

    async def report(self, what: bytes, addr: bytes = b"1") -> bytes:
        reply = await self.ask(b"/" + addr + what + b"\r")
        assert reply[2] & 0x0F == 0, reply
        return reply[3:-3]

    async def until_idle(self, addr: bytes = b"1") -> int:
        """Poll Q until the idle bit is set; returns that status byte."""
        for _ in range(2000):
            st_ = await self.status(addr)
            if st_ & 0x20:
                return st_
            await asyncio.sleep(0.005)
        raise AssertionError("pump never became idle")

    async def init(self, addr: bytes = b"1") -> None:
        assert await self.ask(b"/" + addr + b"ZR\r") in (ans(IDLE), ans(BUSY))
        assert await self.until_idle(addr) == IDLE


async def open_line(
    n: int = 1, *, endpoint: str = "pty", world: World | None = None, scale: float = 1000,
    **options: Any,
) -> Line:
    clock = ScaledClock(scale)
    sims: list[Simulator] = [
        TriContinentSimulator(clock=clock, address=i + 1, world=world, name=f"pump{i + 1}",
                              options=dict(options))
        for i in range(n)
    ]
    served = await serve(sims, endpoint)
    link = Link(served.endpoint, name="host")
    await link.open()
    return Line(served, link, clock, world)


@pytest.fixture
async def line() -> AsyncIterator[Line]:
    ln = await open_line()
    yield ln
    await ln.link.close()
    await ln.served.close()


@pytest.fixture
async def bus() -> AsyncIterator[Line]:
    """Three pumps (addresses 1, 2, 3) on one pty."""
    ln = await open_line(3)
    yield ln
    await ln.link.close()
    await ln.served.close()


# -- framing ----------------------------------------------------------------------------
async def test_idle_answer_framing(line: Line) -> None:
    assert await line.ask(b"/1Q\r") == b"/0`\x03\r\n"
    assert await line.ask(b"/1?29\r") == b"/0`\x03\r\n"


async def test_spaces_ignored_and_noise_before_frame(line: Line) -> None:
    await line.init()
    assert await line.ask(b"\x00\x00\n/1 A 1 0 0 R\r") == ans(BUSY)
    await line.until_idle()
    assert await line.report(b"?") == b"100"


async def test_commands_are_case_sensitive(line: Line) -> None:
    assert await line.ask(b"/1v500R\r") == ans(IDLE)
    assert await line.report(b"?1") == b"500"
    assert await line.report(b"?2") == b"1400"


async def test_only_addressed_pump_answers(bus: Line) -> None:
    await bus.send(b"/4Q\r")  # nobody at 4: silence
    assert await bus.ask(b"/2?23\r") == ans(IDLE, b"C3000: 042517")
    await bus.init(b"2")
    assert [s.initialized for s in bus.sims] == [False, True, False]
    assert bus.sims[1].received[-1] == b"2Q"
    assert all(f[:1] == b"1" for f in bus.sims[0].received)


def test_address_characters_follow_the_switch() -> None:
    """Config address 15 (switch E) answers to '?' only; the character may be given too."""
    sim15 = TriContinentSimulator(address=15, options={})
    assert TriContinentSimulator(address="?", options={}).addr == "?"
    assert TriContinentSimulator(options={"address": 4}).addr == "4"
    out: list[bytes] = []
    sim15.feed(b"/?Q\r/1Q\r/>Q\r", out.append)
    assert out == [ans(IDLE)]


async def test_oem_frames_are_ignored_silently(line: Line) -> None:
    oem = b"\x02" + b"1" + b"\x31" + b"ZR" + b"\x03" + b"\x5a"
    await line.send(oem)
    await line.send(b"\xff" + oem)
    assert await line.ask(b"/1Q\r") == ans(IDLE)
    assert not line.sim.initialized
    # stray OEM start bytes do not swallow the DT frames after them
    assert await line.ask(b"\xff/1Q\r") == ans(IDLE)
    assert await line.ask(b"\x02/1Q\r") == ans(IDLE)


# -- errors -----------------------------------------------------------------------------
async def test_move_before_init_is_error_7(line: Line) -> None:
    assert await line.ask(b"/1A100R\r") == ans(IDLE | 7)
    assert await line.ask(b"/1I2R\r") == ans(IDLE | 7)
    assert await line.report(b"?19") == b"0"


async def test_invalid_command_error_2_runs_nothing(line: Line) -> None:
    assert await line.ask(b"/1V1000!R\r") == ans(IDLE | 2)
    assert await line.report(b"?2") == b"1400"
    assert await line.ask(b"/1Q\r") == ans(IDLE)  # immediate errors are not repeated


async def test_operand_out_of_range_error_3(line: Line) -> None:
    await line.init()
    for frame in (b"/1V7000R\r", b"/1A3001R\r", b"/1L21R\r", b"/1S41R\r", b"/1I7R\r",
                  b"/1k121R\r", b"/1ZR5\r", b"/1Z3R\r", b"/1P3001R\r", b"/1D1R\r"):
        assert await line.ask(frame) == ans(IDLE | 3), frame
    assert await line.ask(b"/1Q\r") == ans(IDLE)
    assert await line.report(b"?") == b"0"


async def test_deferred_error_reported_by_next_q_only(line: Line) -> None:
    await line.init()
    assert await line.ask(b"/1A3000P3500R\r") == ans(BUSY)
    assert await line.until_idle() == IDLE | 3
    assert await line.ask(b"/1Q\r") == ans(IDLE)
    assert await line.report(b"?") == b"3000"  # the move before the failing pick-up ran


async def wait_not_busy(sim: TriContinentSimulator) -> None:
    for _ in range(4000):
        if not sim.busy:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("still busy")


async def test_most_recent_deferred_error_wins(line: Line) -> None:
    await line.init()
    await line.ask(b"/1A3000P1R\r")  # error 3 while running, not read
    await wait_not_busy(line.sim)
    line.sim.faults.stall = True
    await line.ask(b"/1D100R\r")  # then a plunger overload
    await wait_not_busy(line.sim)
    assert await line.ask(b"/1Q\r") == ans(IDLE | 9)
    assert await line.ask(b"/1Q\r") == ans(IDLE)


async def test_busy_refuses_moves_with_15_but_accepts_reports_v_and_t(line: Line) -> None:
    await line.init()
    assert await line.ask(b"/1V1A3000R\r") == ans(BUSY)  # 6000 s at 1 half-step/s
    assert await line.ask(b"/1I2R\r") == ans(BUSY | 15)
    assert await line.ask(b"/1A0\r") == ans(BUSY | 15)  # storing is a set: refused too
    assert await line.ask(b"/1V1200R\r") == ans(BUSY)
    assert await line.report(b"?2") == b"1200"
    assert await line.ask(b"/1Q\r") == ans(BUSY)
    assert await line.report(b"?") == b"3000"  # the target; ?4 is where it actually is
    assert await line.ask(b"/1T\r") == ans(IDLE)
    actual = int(await line.report(b"?4"))
    assert 0 <= actual < 3000
    assert await line.report(b"?") == str(actual).encode()
    assert line.sim.snapshot()["valve"] == 1  # the refused valve move never ran
    assert await line.ask(b"/1Q\r") == ans(IDLE)


async def test_stall_is_error_9_and_uninitializes(line: Line) -> None:
    await line.init()
    line.sim.faults.stall = True
    assert await line.ask(b"/1P3000R\r") == ans(BUSY)
    assert await line.until_idle() == IDLE | 9
    assert 0 < int(await line.report(b"?")) < 3000
    assert await line.report(b"?19") == b"0"
    assert await line.ask(b"/1A0R\r") == ans(IDLE | 7)
    await line.init()
    assert await line.report(b"?19") == b"1"


async def test_valve_overload_10_and_init_failure_1(line: Line) -> None:
    await line.init()
    line.sim.inject_deferred(10)
    assert await line.ask(b"/1I3R\r") == ans(BUSY)
    assert await line.until_idle() == IDLE | 10
    assert await line.ask(b"/1I3R\r") == ans(IDLE | 7)
    line.sim.inject_deferred(1)
    await line.ask(b"/1ZR\r")
    assert await line.until_idle() == IDLE | 1
    assert await line.report(b"?19") == b"0"
    await line.init()  # W would do too
    assert await line.ask(b"/1I3R\r") == ans(BUSY)
    assert await line.until_idle() == IDLE
    assert await line.report(b"?6") == b"3"


@pytest.mark.parametrize("code", [4, 6, 8])
async def test_injected_error_answers_next_command(line: Line, code: int) -> None:
    line.sim.faults.error = code
    assert await line.ask(b"/1V1000R\r") == ans(IDLE | code)
    assert await line.report(b"?2") == b"1400"  # not executed
    assert await line.ask(b"/1Q\r") == ans(IDLE)


async def test_bypass_error_11_on_three_way_valve() -> None:
    ln = await open_line(valve="3-way")
    try:
        await ln.init()
        assert await ln.report(b"?6") == b"i"
        assert await ln.ask(b"/1BR\r") == ans(BUSY)
        assert await ln.until_idle() == IDLE
        assert await ln.report(b"?6") == b"b"
        assert await ln.ask(b"/1P100R\r") == ans(IDLE | 11)
        assert await ln.ask(b"/1OP100R\r") == ans(BUSY)  # leaving bypass first is fine
        assert await ln.until_idle() == IDLE
        assert await ln.ask(b"/1ER\r") == ans(IDLE | 2)  # a 3-way valve has no extra port
        assert await ln.ask(b"/1I2R\r") == ans(IDLE | 3)  # nor numbered ports
    finally:
        await ln.link.close()
        await ln.served.close()


async def test_distribution_valve_ports_and_no_bypass(line: Line) -> None:
    await line.init()
    assert await line.ask(b"/1BR\r") == ans(IDLE | 2)
    assert await line.ask(b"/1O5R\r") == ans(BUSY)
    await line.until_idle()
    assert await line.report(b"?6") == b"5"
    assert await line.ask(b"/1I7R\r") == ans(IDLE | 3)


# -- buffered strings, R, X ----------------------------------------------------------------
async def test_stored_string_runs_on_r_and_is_replaced(line: Line) -> None:
    await line.init()
    assert await line.ask(b"/1A1000\r") == ans(IDLE)
    assert await line.report(b"?10") == b"1"
    assert await line.report(b"F") == b"1"
    assert await line.ask(b"/1A2000\r") == ans(IDLE)  # replaces the first
    assert await line.report(b"?") == b"0"
    assert await line.ask(b"/1R\r") == ans(BUSY)
    await line.until_idle()
    assert await line.report(b"?") == b"2000"
    assert await line.report(b"F") == b"0"


async def test_x_repeats_last_executed_string(line: Line) -> None:
    await line.init()
    await line.ask(b"/1P100R\r")
    await line.until_idle()
    assert await line.ask(b"/1X\r") == ans(BUSY)
    await line.until_idle()
    assert await line.report(b"?") == b"200"


async def test_loops_and_delay(line: Line) -> None:
    await line.init()
    assert await line.ask(b"/1gP100G5R\r") == ans(BUSY)
    await line.until_idle()
    assert await line.report(b"?") == b"500"
    assert await line.ask(b"/1ggD10G2M5G3R\r") == ans(BUSY)
    await line.until_idle()
    assert await line.report(b"?") == b"440"
    assert await line.ask(b"/1gP10R\r") == ans(IDLE | 3)  # unbalanced loop


# -- reports, speeds, resolution ------------------------------------------------------------
async def test_reports_defaults(line: Line) -> None:
    await line.init()
    assert await line.report(b"?1") == b"900"
    assert await line.report(b"?2") == b"1400"
    assert await line.report(b"?3") == b"900"
    assert await line.report(b"?24") == b"24"
    assert await line.report(b"?6") == b"1"
    assert await line.report(b"?19") == b"1"
    assert await line.report(b"?23") == b"C3000: 042517"
    assert await line.report(b"&") == b"C3000: 042517"
    assert await line.report(b"?4") == await line.report(b"?")
    assert await line.ask(b"/1?99\r") == ans(IDLE | 3)


async def test_speed_codes(line: Line) -> None:
    for code, speed in ((0, b"6000"), (11, b"1400"), (40, b"10")):
        assert await line.ask(b"/1S%dR\r" % code) == ans(IDLE)
        assert await line.report(b"?2") == speed


async def test_resolution_mode_n1(line: Line) -> None:
    await line.init()
    await line.ask(b"/1A1500R\r")
    await line.until_idle()
    assert await line.ask(b"/1N1R\r") == ans(IDLE)
    assert await line.report(b"?") == b"12000"
    assert await line.ask(b"/1A24000R\r") == ans(BUSY)
    await line.until_idle()
    assert await line.ask(b"/1N0R\r") == ans(IDLE)
    assert await line.report(b"?") == b"3000"
    assert await line.ask(b"/1A24000R\r") == ans(IDLE | 3)


# -- group addresses --------------------------------------------------------------------
async def test_group_all_gets_no_answer_and_initializes_everyone(bus: Line) -> None:
    await bus.send(b"/_ZR\r")
    # the first bytes back must be the answer to this Q: the group string got none
    assert (await bus.ask(b"/3Q\r"))[:2] == b"/0"
    for addr in (b"1", b"2", b"3"):
        assert await bus.until_idle(addr) == IDLE
    assert all(s.initialized for s in bus.sims)


async def test_pair_and_quad_reach_their_members_only(bus: Line) -> None:
    await bus.send(b"/AZR\r")  # pair of addresses 1 and 2
    await bus.until_idle(b"1")
    await bus.until_idle(b"2")
    assert [s.initialized for s in bus.sims] == [True, True, False]
    await bus.send(b"/UZR\r")  # quad 5-8: none of ours
    await bus.send(b"/CV1000R\r")  # pair 3-4
    assert await bus.report(b"?2", b"3") == b"1000"
    assert await bus.report(b"?2", b"1") == b"1400"
    await bus.send(b"/QV900R\r")  # quad 1-4
    assert [await bus.report(b"?2", a) for a in (b"1", b"2", b"3")] == [b"900"] * 3
    assert not bus.sims[2].initialized


# -- injected link faults -------------------------------------------------------------------
async def test_silence_then_answers_again(line: Line) -> None:
    line.sim.faults.silence = 1
    with pytest.raises(DeviceTimeout):
        await line.link.transact(b"/1Q\r", ETX, 0.3)
    assert await line.ask(b"/1Q\r") == ans(IDLE)


async def test_truncated_and_garbage_replies(line: Line) -> None:
    line.sim.faults.truncate = True
    async with line.link.lock:
        line.link.reset_input()
        await line.link.write(b"/1?23\r")
        part = await line.link.read_exactly(8, 5.0)
    assert part == ans(IDLE, b"C3000: 042517")[:8]
    line.sim.faults.garbage = b"\xfe\x00"
    assert await line.ask(b"/1Q\r") == b"\xfe\x00" + ans(IDLE)


async def test_disconnect_over_tcp_then_serves_new_connection() -> None:
    ln = await open_line(endpoint="tcp://127.0.0.1:0")
    port = int(ln.served.endpoint.rsplit(":", 1)[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"/1Q\r")
        assert await asyncio.wait_for(reader.readuntil(ETX), 5) == ans(IDLE)
        await ln.sim.disconnect()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the pump dropped us
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"/1Q\r")
        assert await asyncio.wait_for(reader.readuntil(ETX), 5) == ans(IDLE)
        writer.close()
    finally:
        await ln.link.close()
        await ln.served.close()


# -- the simulated world -----------------------------------------------------------------------
WORLD = {
    "materials": {"EC": {"density_g_ml": 1.32}},
    "vessels": {
        "res": {"kind": "reservoir", "capacity": "100 mL", "contents": {"EC": "4 mL"}},
        "vial": {"capacity": "20 mL"},
        "tiny": {"capacity": "1 mL"},
    },
}


async def world_line(**options: Any) -> Line:
    world = World.from_spec(WORLD)
    return await open_line(world=world, syringe_volume="5 mL",
                           port_map={"1": "res", "2": "@router", "3": "tiny"}, **options)


async def test_world_aspirate_and_dispense_through_route() -> None:
    ln = await world_line()
    world = ln.world
    assert world is not None
    try:
        world.set_route("router", "vial")
        await ln.init()
        await ln.ask(b"/1P1800R\r")  # 3 mL from res
        assert await ln.until_idle() == IDLE
        assert world.volume_l("pump1.syringe") == pytest.approx(3e-3)
        assert world.volume_l("res") == pytest.approx(1e-3)
        await ln.ask(b"/1I2D1200R\r")  # 2 mL to wherever the router points
        assert await ln.until_idle() == IDLE
        assert world.volume_l("vial") == pytest.approx(2e-3)
        assert world.volume_l("pump1.syringe") == pytest.approx(1e-3)
        assert world.total_mass_g() == pytest.approx(4 * 1.32)
    finally:
        await ln.link.close()
        await ln.served.close()


async def test_world_empty_reservoir_stalls_with_error_9() -> None:
    ln = await world_line()
    world = ln.world
    assert world is not None
    try:
        await ln.init()
        await ln.ask(b"/1P3000R\r")  # 5 mL wanted, 4 mL there
        assert await ln.until_idle() == IDLE | 9
        assert world.volume_l("res") == pytest.approx(0.0, abs=1e-9)
        assert world.volume_l("pump1.syringe") == pytest.approx(4e-3, abs=2e-6)
        assert int(await ln.report(b"?")) == 2400
        assert await ln.report(b"?19") == b"0"
    finally:
        await ln.link.close()
        await ln.served.close()


async def test_world_overflow_and_unknown_route_stall() -> None:
    ln = await world_line()
    world = ln.world
    assert world is not None
    try:
        await ln.init()
        await ln.ask(b"/1P1800R\r")
        await ln.until_idle()
        await ln.ask(b"/1I3D1800R\r")  # 3 mL into a 1 mL vial
        assert await ln.until_idle() == IDLE | 9
        assert world.volume_l("tiny") == pytest.approx(1e-3, abs=2e-6)
        assert world.volume_l("pump1.syringe") == pytest.approx(2e-3, abs=2e-6)
        await ln.init()  # homing turns to port 1 and pushes the rest back to res
        assert world.volume_l("res") == pytest.approx(3e-3, abs=2e-6)
        await ln.ask(b"/1I2P10R\r")  # @router points nowhere: nothing to draw from
        assert await ln.until_idle() == IDLE | 9
        assert world.total_mass_g() == pytest.approx(4 * 1.32)
        assert all(g >= 0 for v in world.vessels.values() for g in v.contents_g.values())
    finally:
        await ln.link.close()
        await ln.served.close()


# -- robustness ----------------------------------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_break_the_parser(junk: bytes) -> None:
    async def run() -> list[bytes]:
        sim = TriContinentSimulator(clock=ScaledClock(1000), address=1, options={})
        out: list[bytes] = []
        sim.feed(junk, out.append)
        out.clear()
        sim.feed(b"\x03x\r/1?23\r", out.append)  # end any OEM frame, then a clean query
        await sim.stop()
        return out

    out = asyncio.run(run())
    assert out and out[-1].endswith(b"C3000: 042517" + ETX)
    assert out[-1][2] & 0xD0 == 0x40


# -- the standalone server -------------------------------------------------------------------------
def test_python_m_simulators_serves_over_tcp() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators", "tricontinent-c3000", "--endpoint",
         "tcp://127.0.0.1:0", "--address", "3", "--time-scale", "100"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["kind"] == "tricontinent-c3000"
        assert info["endpoint"].startswith("tcp://127.0.0.1:")

        async def talk() -> bytes:
            port = info["endpoint"].rsplit(":", 1)[1]
            link = Link(f"socket://127.0.0.1:{port}")
            try:
                return await link.transact(b"/3?23\r", ETX, 5.0)
            finally:
                await link.close()

        assert asyncio.run(talk()) == ans(IDLE, b"C3000: 042517")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
