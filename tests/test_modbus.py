"""Modbus peristaltic pump and Omega CN7500: simulators against the protocol page with
hand-built frames (RTU over a pty, MBAP over TCP) and with pymodbus' own client, and the
map-driven drivers against the simulators over real ptys and TCP sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus_device import (
    ModbusPump,
    ModbusTemperatureController,
    Point,
    RegisterMap,
)
from labctl.capabilities.pump import PumpDirection
from labctl.clock import ScaledClock
from labctl.config import load_config
from labctl.device import DeviceSpec, DeviceState
from labctl.errors import (
    ConfigError,
    DeviceBusy,
    DeviceFault,
    DeviceTimeout,
    LimitError,
    ProtocolError,
)
from labctl.instruments import Instruments
from labctl.transport import Link, LinkPool
from simulators.modbus_devices import ModbusPumpSimulator, OmegaCN7500Simulator
from simulators.serving import Served, serve
from simulators.world import World

ENDPOINTS = ["pty", "tcp://127.0.0.1:0"]
PUMP_MAP = "peristaltic_pump"  # shipped with the drivers (drivers/maps, package data)
CN_MAP = "omega_cn7500"
ML = 1e-3
ML_MIN = 1e-3 / 60


# ---------------------------------------------------------------------------- helpers
def crc16(data: bytes) -> bytes:
    """CRC-16/MODBUS from the serial line spec: reflected polynomial 0xA001, initial
    0xFFFF, sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes([crc & 0xFF, crc >> 8])


def rtu(unit: int, pdu: bytes) -> bytes:
    frame = bytes([unit]) + pdu
    return frame + crc16(frame)


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


class ManualClock:
    """Simulated time that moves only when the test says so: exact physics, no timing."""

    time_scale = 1.0

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(min(max(seconds, 0.0), 0.02))

    def to_wall(self, seconds: float) -> float:
        return seconds


def make_world(reservoir_ml: float = 400.0, vial_ml: float = 40.0) -> World:
    return World.from_spec({
        "materials": {"EtOH": {"density_g_ml": 0.789}},
        "vessels": {
            "res": {"kind": "reservoir", "capacity": "500 mL",
                    "contents": {"EtOH": f"{reservoir_ml} mL"}},
            "vial": {"kind": "vial", "capacity": f"{vial_ml} mL"},
            "block_vial": {"kind": "vial", "capacity": "20 mL"},
            "spill": {"kind": "waste", "capacity": "1000 mL"},
        },
    })


def pump_spec(endpoint: str, *, address: int = 1, max_flow: str = "60 mL/min",
              timeout_s: float = 0.5, **params: Any) -> DeviceSpec:
    return DeviceSpec(
        name=f"pump{address}", driver="modbus-pump", endpoint=endpoint, address=address,
        params={"map": PUMP_MAP, "tubing_ul_per_rev": 100, **params},
        limits={"max_flow": max_flow}, timeout_s=timeout_s,
    )


def heater_spec(endpoint: str) -> DeviceSpec:
    return DeviceSpec(
        name="heater", driver="omega-cn7500", endpoint=endpoint, address=1,
        params={"map": CN_MAP}, limits={"max_temperature": "150 degC"}, timeout_s=0.5,
    )


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll a condition (generous timeout; nothing asserts how long it took)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def exchange(link: Link, frame: bytes, n: int) -> bytes:
    link.reset_input()
    await link.write(frame)
    return await link.read_exactly(n, 3.0)


async def no_reply(link: Link, frame: bytes) -> None:
    link.reset_input()
    await link.write(frame)
    with pytest.raises(DeviceTimeout):
        await link.read_exactly(1, 0.4)


@pytest.fixture
async def pump_pty() -> AsyncIterator[tuple[ModbusPumpSimulator, Served, World]]:
    world = make_world()
    sim = ModbusPumpSimulator(clock=ScaledClock(1000), address=1, world=world,
                              options={"source": "res", "destination": "vial"})
    served = await serve([sim], "pty")
    yield sim, served, world
    await served.close()


@pytest.fixture(params=ENDPOINTS)
async def pump_any(request: Any) -> AsyncIterator[tuple[ModbusPumpSimulator, Served, World]]:
    world = make_world()
    sim = ModbusPumpSimulator(clock=ScaledClock(1000), address=1, world=world,
                              options={"source": "res", "destination": "vial"})
    served = await serve([sim], request.param)
    yield sim, served, world
    await served.close()


@contextlib.asynccontextmanager
async def connected(dev: Any) -> AsyncIterator[Any]:
    await dev.connect()
    try:
        yield dev
    finally:
        await dev.close()


@contextlib.asynccontextmanager
async def raw_link(endpoint: str) -> AsyncIterator[Link]:
    link = Link(endpoint)
    await link.open()
    try:
        yield link
    finally:
        await link.close()


# ---------------------------------------------------------------------------- raw RTU, pump
def test_crc_helper_matches_the_spec_example() -> None:
    # "01 03 00 00 00 0A" carries CRC C5 CD in the Modbus serial line examples
    assert crc16(bytes.fromhex("01030000000A")) == bytes.fromhex("C5CD")


async def test_raw_rtu_pump_map_and_exceptions(pump_pty: Any) -> None:
    sim, served, _ = pump_pty
    async with raw_link(served.endpoint) as link:
        # read holding 0-4: speed 0, calibration 100, target 0/0, mode 0
        got = await exchange(link, rtu(1, bytes.fromhex("030000") + b"\x00\x05"), 15)
        assert got == rtu(1, bytes.fromhex("030A") + bytes.fromhex("0000 0064 0000 0000 0000"))
        # write single register echoes
        req = rtu(1, bytes.fromhex("0600000BB8"))  # speed 300.0 rpm
        assert await exchange(link, req, 8) == req
        assert sim.holding[0] == 3000
        # speed above 6000 and calibration 0: exception 03; nothing changes
        assert await exchange(link, rtu(1, bytes.fromhex("0600001771")), 5) == rtu(
            1, b"\x86\x03")
        assert await exchange(link, rtu(1, bytes.fromhex("0600010000")), 5) == rtu(
            1, b"\x86\x03")
        assert sim.holding[:2] == [3000, 100]
        # write multiple: 32-bit target, high word first (100000 uL = 0x0001 86A0)
        req = rtu(1, bytes.fromhex("10000200020400 0186A0".replace(" ", "")))
        assert await exchange(link, req, 8) == rtu(1, bytes.fromhex("1000020002"))
        assert sim.target_ul == 100000
        # illegal data address, illegal function, illegal values
        assert await exchange(link, rtu(1, bytes.fromhex("0400040002")), 5) == rtu(
            1, b"\x84\x02")
        assert await exchange(link, rtu(1, bytes.fromhex("0200000001")), 5) == rtu(
            1, b"\x82\x01")
        assert await exchange(link, rtu(1, bytes.fromhex("0500001234")), 5) == rtu(
            1, b"\x85\x03")
        assert await exchange(link, rtu(1, bytes.fromhex("0300000000")), 5) == rtu(
            1, b"\x83\x03")
        # a function code no Modbus table knows, valid CRC: exception 01
        assert await exchange(link, rtu(1, b"\x41\x00\x00"), 5) == rtu(1, b"\xc1\x01")
        # coils: run, direction, prime
        assert await exchange(link, rtu(1, bytes.fromhex("0100000003")), 6) == rtu(
            1, bytes.fromhex("010100"))


async def test_raw_rtu_bus_discipline(pump_pty: Any) -> None:
    """Another unit's frame and a bad CRC get no answer; garbage before a frame does not
    hide it."""
    sim, served, _ = pump_pty
    read = bytes.fromhex("0300010001")
    async with raw_link(served.endpoint) as link:
        await no_reply(link, rtu(2, read))
        bad = bytearray(rtu(1, read))
        bad[-1] ^= 0xFF
        await no_reply(link, bytes(bad))
        got = await exchange(link, b"\x00\xff\x37" + rtu(1, read), 7)
        assert got == rtu(1, bytes.fromhex("03020064"))
        before = sim.requests
        assert await exchange(link, rtu(1, read), 7) == rtu(1, bytes.fromhex("03020064"))
        assert sim.requests == before + 1


async def test_raw_rtu_run_head_open_and_volume_mode() -> None:
    clock = ManualClock()
    world = make_world()
    sim = ModbusPumpSimulator(clock=clock, address=1, world=world,
                              options={"source": "res", "destination": "vial"})
    served = await serve([sim], "pty")
    try:
        async with raw_link(served.endpoint) as link:
            sim.set_head_open(True)
            assert await exchange(link, rtu(1, bytes.fromhex("050000FF00")), 5) == rtu(
                1, b"\x85\x04")
            status = await exchange(link, rtu(1, bytes.fromhex("0400010001")), 7)
            assert status[3:5] == b"\x00\x0c"  # bit2 fault, bit3 head open
            sim.set_head_open(False)
            # 600.0 rpm, 100 uL/rev, target 500 uL, volume mode; then run
            req = rtu(1, bytes.fromhex("100000000306") + bytes.fromhex("1770 0064 0000"))
            assert await exchange(link, req, 8) == rtu(1, bytes.fromhex("1000000003"))
            req = rtu(1, bytes.fromhex("100003000204") + bytes.fromhex("01F4 0001"))
            assert await exchange(link, req, 8) == rtu(1, bytes.fromhex("1000030002"))
            run = rtu(1, bytes.fromhex("050000FF00"))
            assert await exchange(link, run, 8) == run
            status = await exchange(link, rtu(1, bytes.fromhex("0400010001")), 7)
            assert status[3:5] == b"\x00\x01"  # running
            clock.now = 10.0  # far beyond the 0.75 s the 500 uL take (with the ramp)
            got = await exchange(link, rtu(1, bytes.fromhex("0400000005")), 15)
            assert got == rtu(1, bytes.fromhex("040A") + bytes.fromhex(
                "0000 0002 0000 01F4 0000"))  # stopped, target reached, exactly 500 uL
            assert await exchange(link, rtu(1, bytes.fromhex("0100000001")), 6) == rtu(
                1, bytes.fromhex("010100"))  # the run coil cleared itself
        assert world.volume_l("vial") == pytest.approx(500e-6, abs=1e-12)
        assert world.volume_l("res") == pytest.approx(400e-3 - 500e-6, abs=1e-12)
    finally:
        await served.close()


async def test_raw_rtu_broadcast_reaches_every_unit() -> None:
    sims = [ModbusPumpSimulator(address=a) for a in (1, 2)]
    served = await serve(list(sims), "pty")
    try:
        async with raw_link(served.endpoint) as link:
            await no_reply(link, rtu(0, bytes.fromhex("06000003E8")))  # speed 100.0 rpm
            await wait_for(lambda: all(s.holding[0] == 1000 for s in sims))
            got = await exchange(link, rtu(2, bytes.fromhex("0300000001")), 7)
            assert got == rtu(2, bytes.fromhex("030203E8"))
    finally:
        await served.close()


# ---------------------------------------------------------------------------- raw RTU, CN7500
async def test_raw_rtu_cn7500_map_and_first_order_lag() -> None:
    clock = ManualClock()
    world = make_world()
    sim = OmegaCN7500Simulator(clock=clock, address=1, world=world,
                               options={"vessel": "block_vial"})
    served = await serve([sim], "pty")
    try:
        async with raw_link(served.endpoint) as link:
            got = await exchange(link, rtu(1, bytes.fromhex("0310000002")), 9)
            assert got == rtu(1, bytes.fromhex("0304 00DC 00FA"))  # PV 22.0, SV 25.0
            sv = rtu(1, bytes.fromhex("0610010320"))  # SV 80.0
            assert await exchange(link, sv, 8) == sv
            run = rtu(1, bytes.fromhex("050814FF00"))
            assert await exchange(link, run, 8) == run
            got = await exchange(link, rtu(1, bytes.fromhex("0208140001")), 6)
            assert got == rtu(1, bytes.fromhex("020101"))
            clock.now = 90.0  # one time constant
            got = await exchange(link, rtu(1, bytes.fromhex("0310000001")), 7)
            expected = round((80 - 58 * math.exp(-1)) * 10)
            assert got == rtu(1, b"\x03\x02" + expected.to_bytes(2, "big"))
            clock.now = 1800.0
            got = await exchange(link, rtu(1, bytes.fromhex("0310000001")), 7)
            assert got == rtu(1, bytes.fromhex("03020320"))  # 80.0
            await wait_for(lambda: abs(world.vessel("block_vial").temperature_c - 80) < 0.01)
            # what the CN7500 does not do
            assert await exchange(link, rtu(1, bytes.fromhex("0108140001")), 5) == rtu(
                1, b"\x81\x01")
            req = rtu(1, bytes.fromhex("1010010001020320"))
            assert await exchange(link, req, 5) == rtu(1, b"\x90\x01")
            assert await exchange(link, rtu(1, bytes.fromhex("0610000100")), 5) == rtu(
                1, b"\x86\x02")  # PV is read only
            assert await exchange(link, rtu(1, bytes.fromhex("0610017FFF")), 5) == rtu(
                1, b"\x86\x03")  # 3276.7 degC is beyond the SV range
            assert await exchange(link, rtu(1, bytes.fromhex("0310060001")), 5) == rtu(
                1, b"\x83\x02")
            stop = rtu(1, bytes.fromhex("0508140000"))
            assert await exchange(link, stop, 8) == stop
        assert sim.is_safe()
    finally:
        await served.close()


# ---------------------------------------------------------------------------- raw TCP
async def test_raw_mbap_over_tcp() -> None:
    sim = ModbusPumpSimulator(address=1)
    served = await serve([sim], "tcp://127.0.0.1:0")
    host, port = served.endpoint[len("socket://") :].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        async def ask(frame: bytes, n: int) -> bytes:
            writer.write(frame)
            await writer.drain()
            return await asyncio.wait_for(reader.readexactly(n), 3.0)

        got = await ask(mbap(7, 1, bytes.fromhex("0300010001")), 11)
        assert got == mbap(7, 1, bytes.fromhex("03020064"))
        got = await ask(mbap(8, 1, bytes.fromhex("0600001771")), 9)
        assert got == mbap(8, 1, b"\x86\x03")
        # unknown unit: gateway target failed to respond; 255 addresses the only device
        assert await ask(mbap(9, 7, bytes.fromhex("0300010001")), 9) == mbap(9, 7, b"\x83\x0b")
        got = await ask(mbap(10, 255, bytes.fromhex("0300010001")), 11)
        assert got == mbap(10, 255, bytes.fromhex("03020064"))
        # two requests in one segment: two answers, in order
        writer.write(mbap(11, 1, bytes.fromhex("0400010001"))
                     + mbap(12, 1, bytes.fromhex("0300000001")))
        await writer.drain()
        both = await asyncio.wait_for(reader.readexactly(22), 3.0)
        assert both == (mbap(11, 1, bytes.fromhex("04020000"))
                        + mbap(12, 1, bytes.fromhex("03020000")))
        # not Modbus (protocol id 1): dropped; the line keeps serving
        writer.write(struct.pack(">HHHB", 13, 1, 6, 1) + bytes.fromhex("0300010001"))
        got = await ask(mbap(14, 1, bytes.fromhex("0300010001")), 11)
        assert got == mbap(14, 1, bytes.fromhex("03020064"))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        await served.close()


async def test_pymodbus_client_against_the_simulators() -> None:
    """An independent host (pymodbus' client, no labctl driver) on Modbus TCP."""
    pump = ModbusPumpSimulator(address=1)
    heater = OmegaCN7500Simulator(address=3)
    served = [await serve([pump], "tcp://127.0.0.1:0"), await serve([heater],
                                                                      "tcp://127.0.0.1:0")]
    clients = []
    try:
        for s in served:
            host, port = s.endpoint[len("socket://") :].rsplit(":", 1)
            c = AsyncModbusTcpClient(host, port=int(port), timeout=2, retries=0)
            assert await c.connect()
            clients.append(c)
        c = clients[0]
        r = await c.read_holding_registers(0, count=5, device_id=1)
        assert r.registers == [0, 100, 0, 0, 0]
        r = await c.write_register(1, 0, device_id=1)
        assert r.isError() and r.exception_code == 3
        r = await c.write_registers(2, [0, 2500, 1], device_id=1)
        assert not r.isError() and pump.target_ul == 2500 and pump.holding[4] == 1
        h = clients[1]
        r = await h.write_register(0x1001, 1234, device_id=3)
        assert not r.isError()
        r = await h.read_holding_registers(0x1000, count=6, device_id=3)
        assert r.registers[1] == 1234 and r.registers[5] == 0
        r = await h.write_coil(0x0814, True, device_id=3)
        assert not r.isError()
        r = await h.read_discrete_inputs(0x0814, count=1, device_id=3)
        assert r.bits[0] is True
        r = await h.read_coils(0x0814, count=1, device_id=3)
        assert r.isError() and r.exception_code == 1
    finally:
        for c in clients:
            c.close()
        for s in served:
            await s.close()


# ---------------------------------------------------------------------------- drivers
async def test_pump_driver_volume_dispense(pump_any: Any) -> None:
    sim, served, world = pump_any
    pump = ModbusPump(pump_spec(served.endpoint), clock=sim.clock)
    async with connected(pump):
        info = await pump.identify()
        assert info.model == "labctl peristaltic pump (reference map)"
        assert sim.holding[1] == 100  # calibration written at connect
        got = await pump.pump_volume(2 * ML, 30 * ML_MIN)
        assert got == pytest.approx(2 * ML, abs=1e-9)
        assert world.volume_l("vial") == pytest.approx(2 * ML, abs=1e-12)
        assert world.volume_l("res") == pytest.approx(398 * ML, abs=1e-12)
        assert sim.holding[0] == 3000 and sim.holding[4] == 1  # 300.0 rpm, volume mode
        st = await pump.status()
        assert st.state == DeviceState.IDLE
        assert st.readings["target_reached"] and not st.readings["running"]
        assert await pump.pumped_volume_l() == pytest.approx(2 * ML, abs=1e-9)
        assert sim.is_safe()


async def test_pump_driver_continuous_reverse_and_prime(pump_any: Any) -> None:
    sim, served, world = pump_any
    total = world.total_mass_g()
    pump = ModbusPump(pump_spec(served.endpoint), clock=sim.clock)
    async with connected(pump):
        await pump.set_flow(10 * ML_MIN)
        assert sim.holding[0] == 1000  # 100.0 rpm at 100 uL/rev
        await pump.start()
        assert sim.coils[:2] == [True, False] and sim.holding[4] == 0
        await wait_for(lambda: world.volume_l("vial") > 1 * ML)
        assert (await pump.status()).state == DeviceState.BUSY
        await pump.stop()
        assert sim.is_safe()
        forward = await pump.pumped_volume_l()
        assert forward > 1 * ML
        assert world.volume_l("vial") == pytest.approx(forward, abs=1e-6)
        await pump.start(PumpDirection.WITHDRAW)
        assert sim.coils[1] is True
        await wait_for(lambda: world.volume_l("vial") < forward - 0.2 * ML)
        await pump.stop()
        assert await pump.pumped_volume_l() < 0
        await pump.prime(duration_s=1.0)
        assert not sim.coils[2] and sim.is_safe()
        await pump.safe_state()
        await pump.safe_state()
        assert sim.is_safe()
    assert world.total_mass_g() == pytest.approx(total, abs=1e-9)


async def test_limits_are_checked_before_sending(pump_pty: Any) -> None:
    sim, served, _ = pump_pty
    links = LinkPool()  # one line, one client: the two configurations share it
    pump = ModbusPump(pump_spec(served.endpoint), links=links, clock=sim.clock)
    fast = ModbusPump(pump_spec(served.endpoint, max_flow="100 mL/min", address=1),
                      links=links, clock=sim.clock)
    async with connected(pump), connected(fast):
        before = sim.requests
        with pytest.raises(LimitError) as err:
            await pump.set_flow(70 * ML_MIN)
        assert err.value.device == "pump1" and err.value.parameter == "flow"
        assert err.value.value == pytest.approx(70 * ML_MIN)
        assert err.value.limit == pytest.approx(60 * ML_MIN)
        with pytest.raises(LimitError) as err:
            await fast.set_flow(80 * ML_MIN)  # 800 rpm at 100 uL/rev
        assert err.value.parameter == "speed" and err.value.limit == 600.0
        with pytest.raises(LimitError):
            await pump.pump_volume(5000.0, 10 * ML_MIN)  # beyond the uint32 uL register
        with pytest.raises(LimitError):
            await pump.pump_volume(1 * ML, -1 * ML_MIN)
        with pytest.raises(LimitError):
            await pump.pump_volume(1 * ML, 70 * ML_MIN)
        assert sim.requests == before  # not one byte went out
        assert pump.max_flow_l_s == pytest.approx(60 * ML_MIN)
        assert fast.max_flow_l_s == pytest.approx(60 * ML_MIN)  # 600 rpm x 100 uL


async def test_exceptions_map_to_labctl_errors(pump_pty: Any) -> None:
    sim, served, _ = pump_pty
    pump = ModbusPump(pump_spec(served.endpoint), clock=sim.clock)
    async with connected(pump):
        for code, cls in ((1, ProtocolError), (2, ProtocolError), (3, LimitError),
                          (6, DeviceBusy)):
            sim.faults.error = code
            with pytest.raises(cls, match=f"exception {code:02d}"):
                await pump.set_flow(10 * ML_MIN)
        sim.faults.error = 4
        with pytest.raises(DeviceFault) as fault:
            await pump.set_flow(10 * ML_MIN)
        assert fault.value.code == 4 and fault.value.vendor_text == "server device failure"
        sim.set_head_open(True)
        with pytest.raises(DeviceFault) as fault:
            await pump.start()
        assert fault.value.code == 4
        st = await pump.status()
        assert st.state == DeviceState.FAULT and st.fault == "2: head open"
        assert await pump.fault() == (2, "head open")
        sim.set_head_open(False)
        await pump.set_flow(10 * ML_MIN)  # recovered
        assert sim.holding[0] == 1000
        assert await pump.fault() is None


async def test_stall_and_empty_reservoir_faults(pump_pty: Any) -> None:
    sim, served, world = pump_pty
    pump = ModbusPump(pump_spec(served.endpoint), clock=sim.clock)
    async with connected(pump):
        sim.faults.stall = True
        with pytest.raises(DeviceFault) as fault:
            await pump.pump_volume(1 * ML, 30 * ML_MIN)
        assert fault.value.code == 1 and fault.value.vendor_text == "motor stall"
        assert (await pump.status()).state == DeviceState.FAULT
        assert sim.is_safe()
        assert await pump.pump_volume(1 * ML, 30 * ML_MIN) == pytest.approx(1 * ML, abs=1e-9)
        # the reservoir runs dry: a stall, not a negative amount
        total = world.total_mass_g()
        world.move_volume("res", "spill", world.volume_l("res") - 0.5 * ML)
        with pytest.raises(DeviceFault) as fault:
            await pump.pump_volume(2 * ML, 30 * ML_MIN)
        assert fault.value.code == 1
        assert 0 <= world.volume_l("res") <= 0.5 * ML
        assert world.volume_l("vial") <= 1.5 * ML + 1e-12
        assert world.total_mass_g() == pytest.approx(total, abs=1e-9)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_silence_and_disconnect_recovery(endpoint: str) -> None:
    sim = ModbusPumpSimulator(clock=ScaledClock(1000), address=1)
    served = await serve([sim], endpoint)
    pump = ModbusPump(pump_spec(served.endpoint, timeout_s=0.3, retries=0), clock=sim.clock)
    try:
        async with connected(pump):
            sim.faults.silence = True
            with pytest.raises(DeviceTimeout):
                await pump.set_flow(10 * ML_MIN)
            st = await pump.status()
            assert st.state == DeviceState.OFFLINE
            sim.faults.silence = False
            await pump.set_flow(20 * ML_MIN)
            assert sim.holding[0] == 2000
            await sim.disconnect()
            if endpoint == "pty":
                with pytest.raises(DeviceTimeout):
                    await pump.set_flow(10 * ML_MIN)
                sim.reconnect()
            recovered = False
            for _ in range(20):  # TCP: the client reconnects on its own
                try:
                    await pump.set_flow(30 * ML_MIN)
                    recovered = True
                    break
                except DeviceTimeout:
                    await asyncio.sleep(0.1)
            assert recovered and sim.holding[0] == 3000
    finally:
        await served.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_garbled_answer_is_retried(endpoint: str) -> None:
    sim = ModbusPumpSimulator(clock=ScaledClock(1000), address=1)
    served = await serve([sim], endpoint)
    pump = ModbusPump(pump_spec(served.endpoint, timeout_s=0.3), clock=sim.clock)
    try:
        async with connected(pump):
            sim.faults.garbage = b"\x00\xff\x42"
            await pump.set_flow(40 * ML_MIN)  # one retry (the default) gets a clean answer
            assert sim.holding[0] == 4000
            sim.faults.truncate = True
            await pump.set_flow(50 * ML_MIN)
            assert sim.holding[0] == 5000
            assert await pump.read_point("speed_setpoint") == 500.0
    finally:
        await served.close()


async def test_two_units_share_one_rtu_line() -> None:
    clock = ScaledClock(1000)
    worlds = [make_world(), make_world()]
    sims = [ModbusPumpSimulator(clock=clock, address=a, world=w,
                                options={"source": "res", "destination": "vial"})
            for a, w in zip((1, 2), worlds, strict=True)]
    served = await serve(list(sims), "pty")
    links = LinkPool()  # the bench's pool: units on one endpoint share its client
    pumps = [ModbusPump(pump_spec(served.endpoint, address=a), links=links, clock=clock)
             for a in (1, 2)]
    try:
        async with connected(pumps[0]), connected(pumps[1]):
            got = await asyncio.gather(pumps[0].pump_volume(1 * ML, 30 * ML_MIN),
                                       pumps[1].pump_volume(3 * ML, 60 * ML_MIN))
            assert got == [pytest.approx(1 * ML, abs=1e-9), pytest.approx(3 * ML, abs=1e-9)]
        assert worlds[0].volume_l("vial") == pytest.approx(1 * ML, abs=1e-12)
        assert worlds[1].volume_l("vial") == pytest.approx(3 * ML, abs=1e-12)
        assert sims[0].holding[0] == 3000 and sims[1].holding[0] == 6000
    finally:
        await served.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_temperature_controller_driver(endpoint: str) -> None:
    world = make_world()
    sim = OmegaCN7500Simulator(clock=ScaledClock(1000), address=1, world=world,
                               options={"vessel": "block_vial"})
    served = await serve([sim], endpoint)
    heater = ModbusTemperatureController(heater_spec(served.endpoint), clock=sim.clock)
    try:
        async with connected(heater):
            assert (await heater.identify()).model == "Omega CN7500"
            assert await heater.temperature_c() == pytest.approx(22.0)
            before = sim.requests
            with pytest.raises(LimitError) as err:
                await heater.set_temperature(200.0)
            assert err.value.parameter == "temperature" and err.value.limit == 150.0
            with pytest.raises(LimitError) as err:
                await heater.set_temperature(-250.0)
            assert err.value.parameter == "setpoint" and err.value.limit == -200.0
            assert sim.requests == before
            await heater.set_temperature(80.0)
            assert sim.running and sim.sv_raw == 800
            assert await heater.setpoint_c() == 80.0 and await heater.is_running()
            await wait_for(lambda: sim.pv_c() > 79.0)
            t = await heater.temperature_c()
            assert 79.0 <= t <= 80.0
            st = await heater.status()
            assert st.state == DeviceState.BUSY and st.readings["setpoint_c"] == 80.0
            assert world.vessel("block_vial").temperature_c > 30.0
            await heater.set_control_mode("on_off")
            assert sim.control_mode == 1
            await heater.safe_state()
            await heater.safe_state()
            assert sim.is_safe() and not await heater.is_running()
            assert (await heater.status()).state == DeviceState.IDLE
    finally:
        await served.close()


async def test_bench_config_runs_rinse_pump_and_block_heater() -> None:
    cfg = load_config("config/sim.toml")
    assert cfg.devices["rinse_pump"].enabled and cfg.devices["block_heater"].enabled
    inst = Instruments(cfg, only=["rinse_pump", "block_heater"], time_scale=1000)
    await inst.start()
    try:
        world = inst.simulation.world
        world.set_route("sel_valve", "waste")  # the valve is not part of this test
        pump, heater = inst.devices["rinse_pump"], inst.devices["block_heater"]
        assert isinstance(pump, ModbusPump) and isinstance(heater, ModbusTemperatureController)
        etoh = world.volume_l("res_etoh")
        assert await pump.pump_volume(5 * ML, 50 * ML_MIN) == pytest.approx(5 * ML, abs=1e-9)
        assert world.composition("waste")["EtOH"] == pytest.approx(5 * 0.789, rel=1e-9)
        assert world.volume_l("res_etoh") == pytest.approx(etoh - 5 * ML, abs=1e-12)
        await heater.set_temperature(60.0)
        await wait_for(lambda: world.vessel("coat_vial").temperature_c > 40.0)
        assert await inst.safe_state_all() == {}
        assert all(s.is_safe() for s in inst.simulation.simulators.values())
    finally:
        await inst.close()


async def test_simulator_command_line_serves_modbus_tcp() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", "modbus-pump", "--endpoint", "tcp://127.0.0.1:0",
        "--address", "4", "--option", "tubing_ul_per_rev=250",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        ready = json.loads(line)
        assert ready["kind"] == "modbus-pump" and ready["endpoint"].startswith("tcp://")
        host, port = ready["endpoint"][len("tcp://") :].rsplit(":", 1)
        client = AsyncModbusTcpClient(host, port=int(port), timeout=2, retries=1)
        assert await client.connect()
        try:
            r = await client.read_holding_registers(1, count=1, device_id=4)
            assert r.registers == [250]
        finally:
            client.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30.0)


# ---------------------------------------------------------------------------- map files
def test_register_maps_load_and_encode(tmp_path: Path) -> None:
    pump = RegisterMap.load(PUMP_MAP)
    assert pump.word_order == "high_first"
    assert pump.point("volume_target").to_registers(100000) == [0x0001, 0x86A0]
    assert pump.point("status").bits["head_open"] == 3
    assert pump.point("fault_code").values[1] == "motor stall"
    cn = RegisterMap.load(CN_MAP)
    assert cn.point("run").address == 0x0814 and cn.point("run").fc == 2
    assert cn.point("setpoint").from_registers([0xFF38]) == -200  # int16: -20.0 degC raw
    low = Point(name="v", kind="holding", address=0, type="uint32", word_order="low_first")
    assert low.to_registers(100000) == [0x86A0, 0x0001]
    assert low.from_registers([0x86A0, 0x0001]) == 100000
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nname = "x"\n[points.speed]\nkind = "register"\naddress = 0\n')
    with pytest.raises(ConfigError) as err:
        RegisterMap.load(bad)
    assert err.value.key == "points.speed" and err.value.file == str(bad)
    with pytest.raises(ConfigError):
        ModbusPump(pump_spec("/dev/null", map=str(tmp_path / "missing.toml")))


def test_register_maps_ship_with_the_drivers_whatever_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The maps are package data: found by name (or by a checkout's config path) from a
    directory that is not the repository, as from an installed wheel."""
    monkeypatch.chdir(tmp_path)
    pump = RegisterMap.load("peristaltic_pump")
    assert pump.name == "labctl peristaltic pump (reference map)"
    assert RegisterMap.load("config/modbus/omega_cn7500.toml").name == "Omega CN7500"
    assert ModbusPump(pump_spec("/dev/null", map=None)).map.name == pump.name
    with pytest.raises(ConfigError) as err:
        RegisterMap.load("elsewhere/peristaltic_pump.toml")  # a path is a path
    assert "shipped map (omega_cn7500, peristaltic_pump)" in str(err.value)
