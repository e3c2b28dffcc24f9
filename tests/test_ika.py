"""IKA hotplate: the driver against the simulator over real ptys, and the simulator's
bytes against shared/protocols/ika-namur.md without the driver."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from drivers.ika import IkaHotplate
from labctl.clock import ScaledClock
from labctl.device import DeviceSpec, DeviceState
from labctl.errors import DeviceFault, DeviceTimeout, LimitError, ProtocolError
from labctl.transport import Link, LinkPool
from simulators.ika import IkaHotplateSimulator
from simulators.serving import Served, serve
from simulators.world import World

WORLD = {"vessels": {"vial": {"capacity": "20 mL"}}}


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll a condition (generous timeout: the machine is shared)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


class Bench:
    def __init__(self, served: Served, clock: ScaledClock, world: World):
        self.served = served
        self.sim: IkaHotplateSimulator = served.simulators[0]  # type: ignore[assignment]
        self.url = served.endpoint
        self.clock = clock
        self.world = world
        self.pool = LinkPool()
        self.drivers: list[IkaHotplate] = []

    def driver(self, params: dict[str, Any] | None = None,
               limits: dict[str, Any] | None = None) -> IkaHotplate:
        spec = DeviceSpec(name="hotplate", driver="ika-hotplate", endpoint=self.url,
                          serial=IkaHotplate.default_serial, params=params or {},
                          limits=limits or {}, timeout_s=1.0)
        dev = IkaHotplate(spec, links=self.pool, clock=self.clock)
        self.drivers.append(dev)
        return dev


async def make_bench(scale: float = 1000, **options: Any) -> Bench:
    clock = ScaledClock(scale)
    world = World.from_spec(WORLD)
    sim = IkaHotplateSimulator(clock=clock, world=world,
                               options={"vessel": "vial", **options})
    served = await serve([sim], "pty")
    return Bench(served, clock, world)


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    b = await make_bench()
    yield b
    for d in b.drivers:
        await d.close()
    await b.pool.close_all()
    await b.served.close()


@pytest.fixture
async def slow_bench() -> AsyncIterator[Bench]:
    """Time scale 10: a 20 s watchdog is 2 wall seconds."""
    b = await make_bench(10)
    yield b
    for d in b.drivers:
        await d.close()
    await b.pool.close_all()
    await b.served.close()


# -- raw bytes against the protocol page ----------------------------------------------------
class Raw:
    """A plain Link on the pty: write bytes, read lines, see silence."""

    def __init__(self, url: str):
        self.link = Link(url)

    async def ask(self, data: bytes, timeout: float = 2.0) -> bytes:
        await self.link.write(data)
        return await self.link.read_until(b"\r\n", timeout)

    async def silent(self, data: bytes, then: bytes = b"IN_SP_4\r\n") -> bytes:
        """Send `data` (expected to get no answer), then a query; returns the one line
        that comes back, which must be the query's."""
        await self.link.write(data)
        await self.link.write(then)
        line = await self.link.read_until(b"\r\n", 2.0)
        return line


@pytest.fixture
async def raw(bench: Bench) -> AsyncIterator[Raw]:
    r = Raw(bench.url)
    await r.link.open()
    yield r
    await r.link.close()


async def test_raw_both_line_endings(raw: Raw) -> None:
    assert await raw.ask(b"IN_NAME \r\n") == b"RCT digital\r\n"
    assert await raw.ask(b"IN_NAME\r\n") == b"RCT digital\r\n"
    assert await raw.ask(b"IN_TYPE\r\n") == b"RCT digital\r\n"


async def test_raw_reply_shapes(raw: Raw) -> None:
    assert re.fullmatch(rb"\d+\.\d 1\r\n", await raw.ask(b"IN_PV_1 \r\n"))
    assert re.fullmatch(rb"\d+\.\d 2\r\n", await raw.ask(b"IN_PV_2 \r\n"))
    assert re.fullmatch(rb"\d+\.\d 3\r\n", await raw.ask(b"IN_PV_3 \r\n"))
    assert await raw.ask(b"IN_PV_4 \r\n") == b"0 4\r\n"
    assert re.fullmatch(rb"\d+\.\d 5\r\n", await raw.ask(b"IN_PV_5\r\n"))
    assert re.fullmatch(rb"\d+\.\d 7\r\n", await raw.ask(b"IN_PV_7\r\n"))
    assert await raw.ask(b"IN_SP_3\r\n") == b"350.0 3\r\n"


async def test_raw_set_commands_answer_nothing_and_take_effect(raw: Raw) -> None:
    assert await raw.silent(b"OUT_SP_1 60 \r\n", b"IN_SP_1 \r\n") == b"60.0 1\r\n"
    assert await raw.silent(b"OUT_SP_4 500\r\n", b"IN_SP_4\r\n") == b"500 4\r\n"
    assert await raw.silent(b"OUT_SP_4 20\r\n", b"IN_SP_4\r\n") == b"50 4\r\n"  # raised to 50
    assert await raw.silent(b"OUT_SP_4 1600\r\n", b"IN_SP_4\r\n") == b"50 4\r\n"  # ignored
    assert await raw.silent(b"OUT_SP_1 400\r\n", b"IN_SP_1\r\n") == b"60.0 1\r\n"  # ignored
    assert await raw.ask(b"STATUS_1\r\n") == b"12 1\r\n"
    assert await raw.silent(b"START_1 \r\n", b"STATUS_1\r\n") == b"11 1\r\n"
    assert await raw.silent(b"START_4\r\n", b"STATUS_4\r\n") == b"11 4\r\n"
    assert await raw.silent(b"STOP_1\r\n", b"STATUS_1\r\n") == b"12 1\r\n"
    assert await raw.silent(b"SET_MODE_B\r\n", b"STATUS_4\r\n") == b"11 4\r\n"
    assert await raw.silent(b"RESET\r\n", b"STATUS_4\r\n") == b"12 4\r\n"
    assert await raw.ask(b"STATUS_2\r\n") == b"12 2\r\n"


async def test_raw_unknown_garbage_and_long_lines_get_no_answer(raw: Raw, bench: Bench) -> None:
    assert await raw.silent(b"FOO_BAR 12\r\n") == b"0 4\r\n"
    assert await raw.silent(b"in_pv_1\r\n") == b"0 4\r\n"
    assert await raw.silent(b"\x00\xff\xfe garbage\r\n") == b"0 4\r\n"
    assert await raw.silent(b"IN_PV_1" + b" " * 90 + b"\r\n") == b"0 4\r\n"
    assert await raw.silent(b"IN_PV_9\r\n") == b"0 4\r\n"
    assert bench.sim.is_safe()


async def test_raw_watchdog_safe_values_are_echoed(raw: Raw) -> None:
    assert await raw.ask(b"OUT_SP_12@40\r\n") == b"40\r\n"
    assert await raw.ask(b"OUT_SP_42@100 \r\n") == b"100\r\n"


async def test_raw_watchdog_mode1_switches_off_when_host_is_silent(raw: Raw, bench: Bench) -> None:
    for cmd in (b"OUT_SP_1 80\r\n", b"OUT_SP_4 600\r\n", b"START_1\r\n", b"START_4\r\n"):
        await raw.link.write(cmd)
    await wait_for(lambda: bench.sim.heater_on and bench.sim.motor_on)
    # arm the watchdog only once both run: 20 simulated seconds are 20 ms of wall time
    # here, shorter than a poll on a busy machine
    await raw.link.write(b"OUT_WD1@20\r\n")
    # the host now stops talking: 20 simulated seconds later everything is off, Er 2
    await wait_for(lambda: bench.sim.snapshot()["error"] == 2)
    snap = bench.sim.snapshot()
    assert not snap["heater_on"] and not snap["motor_on"]
    assert snap["watchdog_tripped"] == 1
    # START is refused until RESET
    assert await raw.silent(b"START_1\r\n", b"STATUS_1\r\n") == b"12 1\r\n"
    assert await raw.silent(b"RESET\r\nSTART_1\r\n", b"STATUS_1\r\n") == b"11 1\r\n"


async def test_raw_watchdog_mode2_falls_back_to_safe_setpoints(raw: Raw, bench: Bench) -> None:
    await raw.ask(b"OUT_SP_12@30\r\n")
    await raw.ask(b"OUT_SP_42@100\r\n")
    for cmd in (b"OUT_SP_1 80\r\n", b"OUT_SP_4 700\r\n", b"START_1\r\n", b"OUT_WD2@20\r\n"):
        await raw.link.write(cmd)
    await wait_for(lambda: bench.sim.snapshot()["watchdog_tripped"] == 2)
    assert await raw.ask(b"IN_SP_1\r\n") == b"30.0 1\r\n"
    assert await raw.ask(b"IN_SP_4\r\n") == b"100 4\r\n"
    assert bench.sim.heater_on  # mode 2 keeps heating, at the safe value
    assert await raw.silent(b"OUT_WD2@0\r\n", b"IN_SP_4\r\n") == b"100 4\r\n"
    assert bench.sim.snapshot()["watchdog_mode"] == 0


async def test_raw_physics_heats_plate_then_medium_and_world(raw: Raw, bench: Bench) -> None:
    for cmd in (b"OUT_SP_1 70\r\n", b"START_1\r\n", b"OUT_SP_4 300\r\n", b"START_4\r\n"):
        await raw.link.write(cmd)
    await wait_for(lambda: bench.sim.heater_on)
    seen = bench.sim.snapshot()
    assert seen["medium_c"] <= seen["plate_c"]  # the medium lags the plate while heating
    await wait_for(lambda: bench.sim.snapshot()["medium_c"] > 69.0)
    vial = bench.world.vessel("vial")
    assert vial.temperature_c > 60.0
    assert vial.stir_rpm == 300.0
    line = await raw.ask(b"IN_PV_4\r\n")
    assert line == b"300 4\r\n"
    await raw.link.write(b"STOP_1\r\n")
    await wait_for(lambda: bench.sim.snapshot()["medium_c"] < 23.0)


def test_standalone_contract_prints_endpoint(python: str) -> None:
    proc = subprocess.Popen([python, "-m", "simulators", "ika-hotplate"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["kind"] == "ika-hotplate"
        assert info["endpoint"].startswith("/dev/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- driver against simulator --------------------------------------------------------------
async def test_identify_and_status(bench: Bench) -> None:
    dev = bench.driver({"serial": "0815"})
    await dev.connect()
    info = await dev.identify()
    assert info.model == "RCT digital"
    assert info.serial == "0815"  # NAMUR has none: it comes from the config
    assert info.vendor == "IKA"
    st = await dev.status()
    assert st.state is DeviceState.IDLE
    assert st.readings["heater_on"] is False
    assert st.readings["speed_rpm"] == 0.0


async def test_setpoints_heat_and_stir_the_world_vial(bench: Bench) -> None:
    dev = bench.driver()
    await dev.connect()
    await dev.set_temperature(60.0)
    await dev.set_speed(400)
    assert bench.sim.temp_sp_c == 60.0 and bench.sim.heater_on
    assert bench.sim.speed_sp_rpm == 400 and bench.sim.motor_on
    await wait_for(lambda: bench.world.vessel("vial").temperature_c > 59.5)
    assert await dev.speed_rpm() == 400.0
    assert await dev.medium_temperature_c() > 59.0
    assert await dev.plate_temperature_c() > 59.0
    assert await dev.temperature_c() == pytest.approx(await dev.medium_temperature_c(), abs=1)
    st = await dev.status()
    assert st.state is DeviceState.BUSY
    assert st.readings["temperature_setpoint_c"] == 60.0
    assert bench.world.vessel("vial").stir_rpm == 400.0


async def test_slow_speed_is_raised_to_50(bench: Bench) -> None:
    dev = bench.driver()
    await dev.connect()
    await dev.set_speed_setpoint(20)
    assert await dev.speed_setpoint_rpm() == 50.0


async def test_limits_are_checked_before_sending(bench: Bench) -> None:
    dev = bench.driver(limits={"max_temperature": "80 degC", "max_speed": "1200 rpm"})
    await dev.connect()
    before = bench.sim.commands
    with pytest.raises(LimitError) as e:
        await dev.set_temperature(90)
    assert e.value.parameter == "temperature" and e.value.limit == 80.0
    assert "hotplate" in str(e.value)
    with pytest.raises(LimitError):
        await dev.set_speed(1300)
    with pytest.raises(LimitError):
        await dev.set_speed(-5)
    assert bench.sim.commands == before
    free = bench.driver()
    await free.connect()
    before = bench.sim.commands
    with pytest.raises(LimitError) as e:
        await free.set_temperature(320)  # the protocol's 310 °C
    assert e.value.limit == 310.0
    with pytest.raises(LimitError):
        await free.set_speed(1600)
    assert bench.sim.commands == before


async def test_safety_temperature_lowers_the_ceiling() -> None:
    b = await make_bench(safety_temperature=100)
    try:
        dev = b.driver()
        await dev.connect()
        with pytest.raises(LimitError) as e:
            await dev.set_temperature(95)
        assert e.value.limit == 90.0
        await dev.set_temperature(90)
    finally:
        await b.pool.close_all()
        await b.served.close()


async def test_safe_state_any_time_repeatedly(bench: Bench) -> None:
    dev = bench.driver()
    await dev.safe_state()  # before connect
    await dev.connect()
    await dev.set_temperature(50)
    await dev.set_speed(300)
    assert not bench.sim.is_safe()
    await dev.safe_state()
    assert bench.sim.is_safe()
    await dev.safe_state()
    assert bench.sim.is_safe()


async def test_silence_is_retried_then_reported(bench: Bench) -> None:
    dev = bench.driver()
    await dev.connect()
    bench.sim.faults.silence = 1
    assert await dev.speed_rpm() == 0.0  # one lost reply: the query is repeated
    bench.sim.faults.silence = True
    with pytest.raises(DeviceTimeout):
        await dev.speed_rpm()
    bench.sim.faults.silence = False
    assert await dev.speed_rpm() == 0.0


async def test_garbage_and_error_replies(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = bench.driver()
    await dev.connect()
    bench.sim.faults.garbage = b"\x00\x7f#?"
    assert await dev.speed_setpoint_rpm() == 0.0  # garbled line: asked again
    bench.sim.faults.error = "Er 5"
    assert await dev.speed_rpm() == 0.0  # one error text: asked again
    bench.sim.faults.truncate = True
    assert await dev.speed_rpm() == 0.0
    # an instrument that keeps answering an error text: ProtocolError, not a number
    monkeypatch.setattr(bench.sim, "_execute", lambda text: "Er 5")
    with pytest.raises(ProtocolError):
        await dev.speed_rpm()
    monkeypatch.undo()
    assert await dev.speed_rpm() == 0.0


async def test_device_error_is_reported_and_reset_recovers(bench: Bench) -> None:
    dev = bench.driver()
    await dev.connect()
    await dev.set_temperature(40)
    bench.sim.faults.error = 3  # the device trips into Er 3 on the next command
    st = await dev.status()
    assert st.state is DeviceState.FAULT
    assert "heater" in (st.fault or "")
    with pytest.raises(DeviceFault):
        await dev.start_heater()
    await dev.reset()
    await dev.set_temperature(40)
    assert bench.sim.heater_on


async def test_watchdog_keepalive_then_crashed_host_leaves_safe_hotplate(
    slow_bench: Bench,
) -> None:
    b = slow_bench
    dev = b.driver({"watchdog": "20 s"})
    await dev.connect()
    await wait_for(lambda: b.sim.snapshot()["watchdog_mode"] == 1)
    await dev.set_temperature(50)
    await dev.set_speed(300)
    # 40 simulated seconds (twice the watchdog) with the keep-alive feeding it
    await asyncio.sleep(4.0)
    snap = b.sim.snapshot()
    assert snap["heater_on"] and snap["motor_on"] and snap["error"] is None
    # the host "crashes": its keep-alive stops and nothing more is sent
    assert dev._keepalive is not None
    dev._keepalive.cancel()
    await wait_for(b.sim.is_safe, timeout=30)
    assert b.sim.snapshot()["error"] == 2
    st = await dev.status()
    assert st.state is DeviceState.FAULT


async def test_simulated_bench_config_hotplate_arms_its_watchdog() -> None:
    """config/sim.toml: the hotplate connects with its configured watchdog and heats cell_vial."""
    from labctl.config import load_config
    from labctl.instruments import Instruments

    cfg = load_config("config/sim.toml")
    async with Instruments(cfg, time_scale=100, only=["hotplate"]) as inst:
        dev = inst.devices["hotplate"]
        sim = inst.simulation.simulators["hotplate"]
        assert isinstance(dev, IkaHotplate)
        assert dev.info is not None and dev.info.model == "RCT digital"
        await wait_for(lambda: sim.snapshot()["watchdog_mode"] == 1)
        from labctl.units import to

        configured = to(cfg.devices["hotplate"].params["watchdog"], "s")
        assert sim.snapshot()["watchdog_s"] == configured
        with pytest.raises(LimitError):
            await dev.set_temperature(85)  # max_temperature = 80 degC
        await dev.set_temperature(40)
        await dev.set_speed(300)
        await wait_for(lambda: inst.simulation.world.vessel("cell_vial").stir_rpm == 300)
        await inst.safe_state_all()
        assert sim.is_safe()
