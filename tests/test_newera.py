"""NE-1000 syringe pump: the simulator against the protocol page in raw bytes, and the
driver against the simulator over real pseudo-terminals."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.newera import NewEraPump, best_units, pump_number
from labctl.capabilities.pump import PumpDirection
from labctl.clock import Clock, ScaledClock
from labctl.device import DeviceSpec, DeviceState
from labctl.errors import DeviceBusy, DeviceFault, DeviceTimeout, LimitError, ProtocolError
from labctl.transport import Link, LinkPool
from simulators.base import Simulator
from simulators.newera import NewEraSimulator
from simulators.serving import Served, serve
from simulators.world import World

STX, ETX = b"\x02", b"\x03"


def world() -> World:
    return World.from_spec({
        "materials": {"TEOS": {"density_g_ml": 0.933}},
        "vessels": {
            "res_teos": {"kind": "reservoir", "capacity": "100 mL",
                         "contents": {"TEOS": "60 mL"}},
            "coat_vial": {"capacity": "40 mL", "empty_mass_g": 18.0},
            "tiny_res": {"kind": "reservoir", "capacity": "10 mL",
                         "contents": {"TEOS": "0.2 mL"}},
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
    sim: NewEraSimulator
    link: Link

    async def ask(self, data: bytes, timeout: float = 3.0) -> bytes:
        self.link.reset_input()
        await self.link.write(data)
        return await self.link.read_frame(STX, ETX, timeout)

    async def ask_safe(self, data: bytes, timeout: float = 3.0) -> bytes:
        self.link.reset_input()
        await self.link.write(data)
        return await self.link.read_frame(
            STX, ETX, timeout, length=lambda b: b[1] + 1 if len(b) >= 2 else None
        )

    async def silent(self, data: bytes, then: bytes, expect: bytes) -> None:
        """`data` gets no reply: the next reply on the line answers `then`."""
        self.link.reset_input()
        await self.link.write(data)
        assert await self.ask(then) == expect


def crc(data: bytes) -> bytes:
    """CRC-CCITT/XModem written out here, independently of both implementations."""
    value = 0
    for byte in data:
        value ^= byte << 8
        for _ in range(8):
            value = (value << 1) ^ 0x1021 if value & 0x8000 else value << 1
            value &= 0xFFFF
    return value.to_bytes(2, "big")


def packet(data: bytes) -> bytes:
    return STX + bytes([len(data) + 4]) + data + crc(data) + ETX


RawFactory = Callable[..., Awaitable[Raw]]


@pytest.fixture
async def raw() -> AsyncIterator[RawFactory]:
    made: list[tuple[Served, Link]] = []

    async def make(clock: Clock | None = None, world: World | None = None, **options: Any) -> Raw:
        sim = NewEraSimulator(clock=clock or ScaledClock(1000), address=options.pop("address", 0),
                              world=world, options=options, name="pump")
        served = await serve([sim], "pty")
        link = Link(served.endpoint)
        await link.open()
        made.append((served, link))
        return Raw(sim, link)

    yield make
    for served, link in made:
        await link.close()
        await served.close()


async def test_power_up_alarm_reported_once_and_command_still_executed(raw: RawFactory) -> None:
    r = await raw()
    assert await r.ask(b"0DIA 20\r") == b"\x0200A?R\x03"
    assert await r.ask(b"0DIA\r") == b"\x0200S20.00\x03"
    assert await r.ask(b"0\r") == b"\x0200S\x03"


async def test_power_up_alarm_can_be_disabled(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False)
    assert await r.ask(b"0\r") == b"\x0200S\x03"


async def test_basic_framing_variants(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False, syringe_diameter="14.5 mm")
    assert await r.ask(b"0RAT1.5MM\r") == b"\x0200S\x03"
    assert await r.ask(b"0RAT\r") == b"\x0200S1.500MM\x03"
    assert await r.ask(b"0rat 2.5 mm\r") == b"\x0200S\x03"
    assert await r.ask(b"0 R A T\r") == b"\x0200S2.500MM\x03"
    assert await r.ask(b"0VOL\r") == b"\x0200S0.000ML\x03"
    assert await r.ask(b"0VOLUL\r") == b"\x0200S\x03"
    assert await r.ask(b"0VOL 250\r") == b"\x0200S\x03"
    assert await r.ask(b"0vol\r") == b"\x0200S250.0UL\x03"
    # control characters are removed; no address: every pump answers
    assert await r.ask(b"\nDI\tA\r") == b"\x0200S14.50\x03"
    assert await r.ask(b"VER\r") == b"\x0200SNE1000V3.928\x03"


async def test_addressing_and_broadcast(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False, address=7)
    assert await r.ask(b"7\r") == b"\x0207S\x03"
    # another pump's address: no reply; the next reply is the one to 07VER
    await r.silent(b"3VER\r", b"07VER\r", b"\x0207SNE1000V3.928\x03")
    # broadcast: executed, never answered
    await r.silent(b"*DIA 10\r", b"7DIA\r", b"\x0207S10.00\x03")


async def test_errors(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False, syringe_diameter=14.5)
    assert await r.ask(b"0XYZ\r") == b"\x0200S?\x03"
    assert await r.ask(b"0DIA 90\r") == b"\x0200S?OOR\x03"
    assert await r.ask(b"0RAT 9.99 MM\r") == b"\x0200S?OOR\x03"  # max 9.91 mL/min at 14.5 mm
    assert await r.ask(b"0RAT 99999\r") == b"\x0200S?OOR\x03"
    assert await r.ask(b"0DIR UP\r") == b"\x0200S?OOR\x03"
    assert await r.ask(b"0RAT 1 MM\r") == b"\x0200S\x03"
    assert await r.ask(b"0RUN\r") == b"\x0200I\x03"
    assert await r.ask(b"0RAT 500 UM\r") == b"\x0200I?NA\x03"  # units while pumping
    assert await r.ask(b"0RAT 2\r") == b"\x0200I\x03"  # the value may change
    assert await r.ask(b"0RAT\r") == b"\x0200I2.000MM\x03"
    assert await r.ask(b"0VOL ML\r") == b"\x0200I?NA\x03"
    assert await r.ask(b"0STP\r") == b"\x0200P\x03"
    assert await r.ask(b"0STP\r") == b"\x0200S\x03"


async def test_numbers_are_truncated_to_four_digits(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False)
    assert await r.ask(b"0DIA 12.3456\r") == b"\x0200S\x03"
    assert await r.ask(b"0DIA\r") == b"\x0200S12.34\x03"
    assert await r.ask(b"0VOL\r") == b"\x0200S0.000UL\x03"  # <= 14 mm: microlitres
    assert await r.ask(b"0RAT 0.12345 MM\r") == b"\x0200S\x03"
    assert await r.ask(b"0RAT\r") == b"\x0200S0.123MM\x03"
    assert await r.ask(b"0DIA 26.59\r") == b"\x0200S\x03"
    # a new diameter switches the volume units and clears volume and rate
    assert await r.ask(b"0VOL\r") == b"\x0200S0.000ML\x03"
    assert await r.ask(b"0RAT\r") == b"\x0200S0.000MM\x03"


async def test_safe_mode_packets_in_basic_mode_and_saf_framing(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False)
    page_example = bytes.fromhex("02 08 53 41 46 30 55 43 03")
    assert packet(b"SAF0") == page_example
    # a safe packet in basic mode: executed, answered in basic framing (SAF0 = basic)
    assert await r.ask(page_example) == b"\x0200S\x03"
    # SAF10 answers in safe framing already
    reply = await r.ask_safe(packet(b"0SAF10"))
    assert reply == packet(b"00S")
    assert r.sim.safe_timeout_s == 10
    assert await r.ask_safe(packet(b"0SAF")) == packet(b"00S10")
    # basic commands still work in safe mode, answered in safe framing
    assert await r.ask_safe(b"0VER\r") == packet(b"00SNE1000V3.928")
    # SAF0 answers in basic framing
    assert await r.ask(packet(b"0SAF0")) == b"\x0200S\x03"
    assert await r.ask(b"0SAF\r") == b"\x0200S0\x03"


async def test_bad_crc_or_length_answers_com_and_executes_nothing(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False)
    good = packet(b"0DIA20")
    bad_crc = good[:-3] + bytes([good[-3] ^ 0xFF]) + good[-2:]
    assert await r.ask(bad_crc) == b"\x0200S?COM\x03"
    too_short = bytes([0x02, len(good) - 2]) + good[2:]
    assert await r.ask(too_short) == b"\x0200S?COM\x03"
    too_long = bytes([0x02, len(good)]) + good[2:]  # waits for a byte that never comes
    assert await r.ask(too_long) == b"\x0200S?COM\x03"
    assert await r.ask(b"0DIA\r") == b"\x0200S26.59\x03"
    assert await r.ask(good) == b"\x0200S\x03"
    assert await r.ask(b"0DIA\r") == b"\x0200S20.00\x03"


async def test_pumping_dis_counters_and_world(raw: RawFactory) -> None:
    w = world()
    r = await raw(world=w, power_up_alarm=False, syringe_diameter="14.5 mm",
                  source="res_teos", destination="coat_vial")
    for cmd in (b"0RAT 5 MM\r", b"0VOL 0.5\r", b"0DIR INF\r"):
        assert await r.ask(cmd) == b"\x0200S\x03"
    assert await r.ask(b"0RUN\r") == b"\x0200I\x03"
    await wait_until(lambda: r.sim.state == "S")
    assert await r.ask(b"0DIS\r") == b"\x0200SI0.500W0.000ML\x03"
    assert w.volume_l("coat_vial") == pytest.approx(0.5e-3, rel=1e-6)
    assert w.volume_l("res_teos") == pytest.approx(59.5e-3, rel=1e-6)
    # withdraw the same way back
    assert await r.ask(b"0DIR WDR\r") == b"\x0200S\x03"
    assert await r.ask(b"0VOL 0.2\r") == b"\x0200S\x03"
    assert await r.ask(b"0RUN\r") == b"\x0200W\x03"
    await wait_until(lambda: r.sim.state == "S")
    assert await r.ask(b"0DIS\r") == b"\x0200SI0.500W0.200ML\x03"
    assert w.volume_l("coat_vial") == pytest.approx(0.3e-3, rel=1e-6)
    assert await r.ask(b"0CLD INF\r") == b"\x0200S\x03"
    assert await r.ask(b"0DIS\r") == b"\x0200SI0.000W0.200ML\x03"


async def test_stp_pauses_then_stops_and_run_resumes_remainder(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False, syringe_diameter=14.5)
    for cmd in (b"0RAT 0.1 MM\r", b"0VOL 1\r"):  # 600 simulated s = 0.6 wall s
        await r.ask(cmd)
    assert await r.ask(b"0RUN\r") == b"\x0200I\x03"
    assert await r.ask(b"0STP\r") == b"\x0200P\x03"
    paused_at = r.sim.infused_l
    assert 0 <= paused_at < 1e-3
    assert await r.ask(b"0\r") == b"\x0200P\x03"
    assert await r.ask(b"0RUN\r") == b"\x0200I\x03"
    await wait_until(lambda: r.sim.state == "S")
    assert r.sim.infused_l == pytest.approx(1e-3, rel=1e-9)  # only the remainder was added
    # STP twice: stopped, and the next RUN pumps the whole target again
    assert await r.ask(b"0RUN\r") == b"\x0200I\x03"
    assert await r.ask(b"0STP\r") == b"\x0200P\x03"
    assert await r.ask(b"0STP\r") == b"\x0200S\x03"
    before = r.sim.infused_l
    await r.ask(b"0RUN\r")
    await wait_until(lambda: r.sim.state == "S")
    assert r.sim.infused_l - before == pytest.approx(1e-3, rel=1e-9)


async def test_purge_runs_at_max_rate_until_stopped(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False, syringe_diameter=14.5)
    assert await r.ask(b"0PUR\r") == b"\x0200X\x03"
    assert await r.ask(b"0RUN\r") == b"\x0200X\x03"
    assert await r.ask(b"0STP\r") == b"\x0200S\x03"
    assert r.sim.infused_l > 0
    assert r.sim.is_safe()


async def test_safe_mode_timeout_stops_pump_and_raises_alarm(raw: RawFactory) -> None:
    r = await raw(clock=ScaledClock(10), power_up_alarm=False, syringe_diameter=14.5)
    for cmd in (b"0RAT 1 MM\r", b"0VOL 0\r"):
        await r.ask(cmd)
    assert await r.ask(b"0RUN\r") == b"\x0200I\x03"
    assert await r.ask_safe(packet(b"0SAF2")) == packet(b"00I")  # 2 s = 0.2 wall s
    await wait_until(lambda: r.sim.alarm == "T")
    assert r.sim.state == "S"
    assert await r.ask_safe(packet(b"0")) == packet(b"00A?T")
    assert await r.ask_safe(packet(b"0")) == packet(b"00S")


async def test_world_fault_stalls_with_alarm(raw: RawFactory) -> None:
    w = world()
    r = await raw(world=w, power_up_alarm=False, syringe_diameter=14.5,
                  source="tiny_res", destination="coat_vial")
    for cmd in (b"0RAT 5 MM\r", b"0VOL 1\r"):
        await r.ask(cmd)
    await r.ask(b"0RUN\r")
    await wait_until(lambda: r.sim.state == "S")
    assert await r.ask(b"0\r") == b"\x0200A?S\x03"
    assert w.volume_l("coat_vial") <= 0.2e-3 * (1 + 1e-9)
    assert w.volume_l("tiny_res") >= 0.0
    total = w.volume_l("coat_vial") + w.volume_l("tiny_res")
    assert total == pytest.approx(0.2e-3, rel=1e-9)


# ------------------------------------------------------------------------------ driver
@dataclass
class Bench:
    sim: NewEraSimulator
    pump: NewEraPump
    world: World


BenchFactory = Callable[..., Awaitable[Bench]]


@pytest.fixture
async def bench() -> AsyncIterator[BenchFactory]:
    made: list[tuple[Served, NewEraPump, LinkPool]] = []

    async def make(
        clock: Clock | None = None,
        params: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        connect: bool = True,
        timeout_s: float = 0.5,
        **options: Any,
    ) -> Bench:
        clock = clock or ScaledClock(1000)
        w = world()
        params = {"syringe_diameter": "14.5 mm", "syringe_volume": "10 mL",
                  "source": "res_teos", "destination": "coat_vial", **(params or {})}
        sim = NewEraSimulator(clock=clock, address=0, world=w,
                              options={**params, **options}, name="pump_teos")
        served = await serve([sim], "pty")
        links = LinkPool()
        spec = DeviceSpec(name="pump_teos", driver="newera-ne1000", endpoint=served.endpoint,
                          address=0, params=params, limits=limits or {}, timeout_s=timeout_s)
        pump = NewEraPump(spec, links=links, clock=clock)
        made.append((served, pump, links))
        if connect:
            await pump.connect()
        return Bench(sim, pump, w)

    yield make
    for served, pump, links in made:
        await pump.close()
        await links.close_all()
        await served.close()


def test_units_keep_four_digits() -> None:
    assert pump_number(1.23456) == "1.234"
    assert pump_number(12345) is None
    assert best_units(1.5e-3 / 60, {"UM": 1e-6 / 60, "MM": 1e-3 / 60}) in (
        ("1500", "UM"), ("1.500", "MM"))
    # 12.345 µL/min: 12.34 UM loses 0.04 %, 740.7 UH loses 0.004 %
    number, unit = best_units(12.345e-6 / 60, {"UM": 1e-6 / 60, "UH": 1e-6 / 3600}) or ("", "")
    assert unit == "UH" and number == "740.7"


async def test_connect_clears_power_up_alarm_and_identifies(bench: BenchFactory) -> None:
    b = await bench()
    assert b.sim.alarm is None
    info = await b.pump.identify()
    assert (info.model, info.firmware) == ("NE-1000", "3.928")
    assert b.sim.diameter_mm == pytest.approx(14.5)
    status = await b.pump.status()
    assert status.state == DeviceState.IDLE and status.fault is None


async def test_identify_with_upgrade_firmware(bench: BenchFactory) -> None:
    b = await bench(firmware="NE500V2.004X3")
    info = await b.pump.identify()
    assert (info.model, info.firmware) == ("NE-500", "2.004X3")


async def test_pump_volume_arrives_in_destination(bench: BenchFactory) -> None:
    b = await bench()
    moved = await b.pump.pump_volume(1.25e-3, 2e-3 / 60)
    assert moved == pytest.approx(1.25e-3, rel=1e-3)
    assert b.world.volume_l("coat_vial") == pytest.approx(1.25e-3, rel=1e-6)
    assert b.world.mass_g("coat_vial") == pytest.approx(18.0 + 1.25 * 0.933, rel=1e-6)
    back = await b.pump.pump_volume(0.25e-3, 1e-3 / 60, PumpDirection.WITHDRAW)
    assert back == pytest.approx(0.25e-3, rel=1e-3)
    assert b.world.volume_l("coat_vial") == pytest.approx(1.0e-3, rel=1e-6)
    assert await b.pump.pumped_volume_l() == pytest.approx(-0.25e-3, rel=1e-3)


async def test_small_volume_keeps_resolution(bench: BenchFactory) -> None:
    b = await bench()
    moved = await b.pump.pump_volume(12.34e-6, 20e-6 / 60)  # 12.34 µL
    assert moved == pytest.approx(12.34e-6, rel=1e-3)
    assert b.sim.volume_units == "UL"


async def test_flow_is_set_with_four_digit_resolution(bench: BenchFactory) -> None:
    b = await bench()
    for flow in (1.2345e-3 / 60, 7.77e-6 / 60, 0.5e-3 / 3600):
        await b.pump.set_flow(flow)
        assert b.sim.rate_l_s() == pytest.approx(flow, rel=1e-3)
        assert await b.pump.flow_l_s() == pytest.approx(flow, rel=1e-3)


async def test_limits_are_checked_before_sending(bench: BenchFactory) -> None:
    b = await bench(limits={"max_flow": "5 mL/min"})
    assert b.pump.link is not None
    sent = b.pump.link.stats.bytes_out
    with pytest.raises(LimitError) as exc:
        await b.pump.set_flow(6e-3 / 60)
    assert exc.value.device == "pump_teos" and exc.value.parameter == "flow"
    assert exc.value.limit == pytest.approx(5e-3 / 60)
    with pytest.raises(LimitError) as exc:
        await b.pump.pump_volume(11e-3, 1e-3 / 60)  # 10 mL syringe
    assert exc.value.parameter == "volume"
    with pytest.raises(LimitError):
        await b.pump.pump_volume(1e-3, 0.0)
    with pytest.raises(LimitError):
        await b.pump.set_diameter(95.0)
    assert b.pump.link.stats.bytes_out == sent


async def test_syringe_max_flow_from_diameter(bench: BenchFactory) -> None:
    b = await bench()
    # 6 cm/min over a 14.5 mm bore: 9.907 mL/min
    assert b.pump.max_flow_l_s == pytest.approx(6 * 3.14159265 * 1.45**2 / 4 / 1000 / 60,
                                                rel=1e-6)
    with pytest.raises(LimitError):
        await b.pump.set_flow(10e-3 / 60)
    await b.pump.set_flow(9.9e-3 / 60)
    assert b.sim.rate_l_s() == pytest.approx(9.9e-3 / 60, rel=1e-3)


async def test_vendor_errors_map_to_exceptions(bench: BenchFactory) -> None:
    b = await bench()
    with pytest.raises(ProtocolError):
        await b.pump.command("XYZ")
    with pytest.raises(LimitError):
        await b.pump.command("DIA 99")
    await b.pump.set_flow(1e-3 / 60)
    await b.pump.start()
    with pytest.raises(DeviceBusy):
        await b.pump.command("RAT 900 UH")
    with pytest.raises(DeviceBusy):
        await b.pump.pump_volume(1e-3, 1e-3 / 60)
    await b.pump.stop()
    b.sim.faults.error = "?IGN"
    with pytest.raises(DeviceFault) as exc:
        await b.pump.command("DIA")
    assert exc.value.code == "?IGN"
    # ?COM executed nothing: the driver resends and succeeds
    b.sim.faults.error = "?COM"
    _, dia = await b.pump.command("DIA")
    assert dia == "14.50"


async def test_pause_and_resume_mid_transfer(bench: BenchFactory) -> None:
    b = await bench()
    task = asyncio.ensure_future(b.pump.pump_volume(2e-3, 0.2e-3 / 60))  # 10 sim min
    await wait_until(lambda: b.sim.state == "I")
    await b.pump.pause()
    assert b.sim.state == "P"
    status = await b.pump.status()
    assert status.state == DeviceState.BUSY and status.readings["pump_state"] == "paused"
    assert not task.done()
    await b.pump.resume()
    moved = await asyncio.wait_for(task, 30)
    assert moved == pytest.approx(2e-3, rel=1e-3)
    assert b.world.volume_l("coat_vial") == pytest.approx(2e-3, rel=1e-6)


async def test_stop_mid_transfer_returns_volume_pumped(bench: BenchFactory) -> None:
    b = await bench()
    task = asyncio.ensure_future(b.pump.pump_volume(5e-3, 0.2e-3 / 60))  # 25 sim min
    await wait_until(lambda: b.sim.infused_l > 0)
    await b.pump.stop()
    moved = await asyncio.wait_for(task, 30)
    assert 0 < moved < 5e-3
    assert b.world.volume_l("coat_vial") == pytest.approx(moved, rel=1e-2, abs=2e-6)


async def test_safe_state_from_paused_and_repeated(bench: BenchFactory) -> None:
    b = await bench()
    await b.pump.set_flow(1e-3 / 60)
    await b.pump.start()
    await b.pump.pause()
    assert b.sim.state == "P"
    await b.pump.safe_state()
    assert b.sim.state == "S" and b.sim.is_safe()
    await b.pump.safe_state()
    assert b.sim.state == "S"
    await b.pump.purge()
    assert b.sim.state == "X"
    await b.pump.safe_state()
    assert b.sim.is_safe()


async def test_silence_times_out_then_recovers(bench: BenchFactory) -> None:
    b = await bench(timeout_s=0.3)
    b.sim.faults.silence = True
    with pytest.raises(DeviceTimeout):
        await b.pump.status()
    b.sim.faults.silence = False
    assert (await b.pump.status()).state == DeviceState.IDLE


async def test_garbage_and_truncated_replies_are_survived(bench: BenchFactory) -> None:
    b = await bench(timeout_s=0.3)
    b.sim.faults.garbage = b"\xff\x00noise\r"
    assert (await b.pump.identify()).model == "NE-1000"
    b.sim.faults.truncate = True  # first reply cut in half: the query is resent
    assert (await b.pump.identify()).firmware == "3.928"


async def test_stall_alarm_raises_device_fault(bench: BenchFactory) -> None:
    b = await bench()
    b.sim.faults.stall = True
    with pytest.raises(DeviceFault) as exc:
        await b.pump.pump_volume(1e-3, 1e-3 / 60)
    assert exc.value.code == "A?S"
    assert b.sim.is_safe()
    # the alarm was reported once; the pump works again
    assert await b.pump.pump_volume(0.1e-3, 1e-3 / 60) == pytest.approx(0.1e-3, rel=1e-3)


async def test_empty_reservoir_stalls_the_transfer(bench: BenchFactory) -> None:
    b = await bench(params={"source": "tiny_res"})
    with pytest.raises(DeviceFault) as exc:
        await b.pump.pump_volume(1e-3, 2e-3 / 60)
    assert exc.value.code == "A?S"
    assert b.world.volume_l("coat_vial") <= 0.2e-3 * (1 + 1e-9)


async def test_safe_mode_keeps_alive_and_stops_pump_when_host_goes(
    bench: BenchFactory,
) -> None:
    clock = ScaledClock(10)  # timeout 5 s = 0.5 wall s; keep-alive every 1.25 s
    b = await bench(clock=clock, params={"safe_mode": "5 s"})
    assert b.sim.safe_timeout_s == 5 and b.pump.safe
    moved = await b.pump.pump_volume(0.05e-3, 1e-3 / 60)  # 3 sim s, in safe framing
    assert moved == pytest.approx(0.05e-3, rel=1e-3)
    await b.pump.set_flow(0.5e-3 / 60)
    await b.pump.start()
    await clock.sleep(15)  # three timeouts: the keep-alive holds it
    assert b.sim.alarm is None and b.sim.state == "I"
    await b.pump.close()  # host gone: the pump's own timer stops it
    await wait_until(lambda: b.sim.alarm == "T")
    assert b.sim.state == "S"


async def test_safe_mode_timeout_alarm_reaches_the_driver(bench: BenchFactory) -> None:
    clock = ScaledClock(10)
    b = await bench(clock=clock, params={"safe_mode": "2 s"})
    await b.pump.close()  # no keep-alive
    await wait_until(lambda: b.sim.alarm == "T")
    with pytest.raises(DeviceFault) as exc:
        await b.pump.set_flow(1e-3 / 60)
    assert exc.value.code == "A?T"
    status = await b.pump.status()
    assert status.state == DeviceState.FAULT and "A?T" in (status.fault or "")


async def test_reconnect_to_a_pump_left_in_safe_mode(bench: BenchFactory) -> None:
    b = await bench(connect=False)
    b.sim.safe_timeout_s = 30  # a previous host left it in safe mode
    await b.pump.connect()  # basic mode configured: SAF0 in a safe packet
    assert b.sim.safe_timeout_s == 0 and not b.pump.safe
    assert (await b.pump.identify()).model == "NE-1000"


async def test_random_bytes_never_break_the_simulator(raw: RawFactory) -> None:
    r = await raw(power_up_alarm=False)
    rng = random.Random(1000)
    replies: list[bytes] = []
    alphabet = b"\x02\x03\r\n 0123456789.*?ADFGILMNOPRSTUVWXadfr\xff\x00"
    for _ in range(300):
        chunk = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        r.sim.feed(chunk, replies.append)  # must not raise
    r.sim._buf.clear()  # forget a half packet the noise may have left
    assert await r.ask(packet(b"0SAF0")) in (b"\x0200S\x03", b"\x0200A?S\x03", b"\x0200A?T\x03")
    assert await r.ask(b"0VER\r") == b"\x0200SNE1000V3.928\x03"


async def test_pause_before_run_holds_the_transfer(bench: BenchFactory) -> None:
    b = await bench()
    await b.pump.pause()  # the executor paused while the transfer was being set up
    task = asyncio.ensure_future(b.pump.pump_volume(0.5e-3, 2e-3 / 60))
    await wait_until(lambda: b.sim.direction == "INF" and b.sim.volume_value > 0)
    await asyncio.sleep(0.2)
    assert b.sim.state == "S" and b.sim.infused_l == 0 and not task.done()
    await b.pump.resume()
    assert await asyncio.wait_for(task, 30) == pytest.approx(0.5e-3, rel=1e-3)
    # a stop while held ends the transfer without pumping
    await b.pump.pause()
    seen = b.sim.commands_seen
    task = asyncio.ensure_future(b.pump.pump_volume(0.5e-3, 2e-3 / 60))
    await wait_until(lambda: b.sim.commands_seen > seen)  # the transfer has begun
    await b.pump.safe_state()
    assert await asyncio.wait_for(task, 30) == 0.0
    assert b.world.volume_l("coat_vial") == pytest.approx(0.5e-3, rel=1e-6)


async def test_two_pumps_daisy_chained_on_one_line() -> None:
    clock = ScaledClock(1000)
    w = world()
    sims = [NewEraSimulator(clock=clock, address=a, world=w, name=f"p{a}", options={
        "syringe_diameter": 14.5, "source": "res_teos", "destination": "coat_vial"})
        for a in (1, 2)]
    served = await serve(list[Simulator](sims), "pty")
    links = LinkPool()
    pumps = [NewEraPump(DeviceSpec(name=f"p{a}", driver="newera-ne1000",
                                   endpoint=served.endpoint, address=a,
                                   params={"syringe_diameter": "14.5 mm"}),
                        links=links, clock=clock) for a in (1, 2)]
    try:
        for p in pumps:
            await p.connect()
        assert pumps[0].link is pumps[1].link
        await pumps[0].set_flow(1e-3 / 60)
        await pumps[1].set_flow(2e-3 / 60)
        assert sims[0].rate_l_s() == pytest.approx(1e-3 / 60)
        assert sims[1].rate_l_s() == pytest.approx(2e-3 / 60)
        moved = await asyncio.gather(pumps[0].pump_volume(0.3e-3, 1e-3 / 60),
                                     pumps[1].pump_volume(0.2e-3, 2e-3 / 60))
        assert moved == [pytest.approx(0.3e-3, rel=1e-3), pytest.approx(0.2e-3, rel=1e-3)]
        assert w.volume_l("coat_vial") == pytest.approx(0.5e-3, rel=1e-6)
    finally:
        for p in pumps:
            await p.close()
        await links.close_all()
        await served.close()
