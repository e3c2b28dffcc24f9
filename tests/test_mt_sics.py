"""Mettler MT-SICS balance and Quantos dispenser: drivers against simulators over real ptys,
and the simulators' bytes against shared/protocols/mettler-mt-sics.md without the drivers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from drivers.mt_sics import MettlerBalance, QuantosDispenser, parse_reply, raise_for
from labctl.clock import ScaledClock
from labctl.device import DeviceSpec, DeviceState
from labctl.errors import (
    DeviceBusy,
    DeviceFault,
    DeviceTimeout,
    LimitError,
    ProtocolError,
)
from labctl.transport import Link, LinkPool
from simulators.mt_sics import MettlerBalanceSimulator, QuantosSimulator
from simulators.serving import Served, serve
from simulators.world import World

WORLD = {
    "materials": {"LiPF6": {"phase": "solid"}},
    "vessels": {"vial": {"capacity": "20 mL", "empty_mass_g": 10.0}},
}


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


class Bench:
    """A world vial under a balance simulator and a Quantos simulator, each on a pty."""

    def __init__(self, scale: float, balance_opts: dict[str, Any], quantos_opts: dict[str, Any]):
        self.clock = ScaledClock(scale)
        self.world = World.from_spec(WORLD)
        self.balance = MettlerBalanceSimulator(
            clock=self.clock, world=self.world, name="balance",
            options={"vessel": "vial", "serial": "B999", **balance_opts})
        self.quantos = QuantosSimulator(
            clock=self.clock, world=self.world, name="dispenser",
            options={"vessel": "vial", "head_material": "LiPF6", "head_content": "2 g",
                     "seed": 7, "serial": "Q123", **quantos_opts})
        self.served: list[Served] = []
        self.pool = LinkPool()
        self.links: list[Link] = []

    async def start(self) -> Bench:
        self.served = [await serve([self.balance], "pty"), await serve([self.quantos], "pty")]
        return self

    @property
    def balance_url(self) -> str:
        return self.served[0].endpoint

    @property
    def quantos_url(self) -> str:
        return self.served[1].endpoint

    def balance_driver(self, **params: Any) -> MettlerBalance:
        spec = DeviceSpec(name="balance", driver="mettler-balance", endpoint=self.balance_url,
                          serial=MettlerBalance.default_serial, params=params, timeout_s=1.0)
        return MettlerBalance(spec, links=self.pool, clock=self.clock)

    def dispenser(self, limits: dict[str, Any] | None = None, **params: Any) -> QuantosDispenser:
        spec = DeviceSpec(name="dispenser", driver="quantos-dispenser",
                          endpoint=self.quantos_url, serial=QuantosDispenser.default_serial,
                          params=params, limits=limits or {"max_mass": "1 g"}, timeout_s=1.0)
        return QuantosDispenser(spec, links=self.pool, clock=self.clock)

    async def raw(self, url: str) -> Raw:
        r = Raw(url)
        await r.link.open()
        self.links.append(r.link)
        return r

    async def close(self) -> None:
        for link in self.links:
            await link.close()
        await self.pool.close_all()
        for s in self.served:
            await s.close()


class Raw:
    def __init__(self, url: str):
        self.link = Link(url)

    async def ask(self, data: bytes, timeout: float = 5.0) -> bytes:
        self.link.reset_input()
        await self.link.write(data)
        return await self.link.read_until(b"\r\n", timeout)

    async def line(self, timeout: float = 5.0) -> bytes:
        return await self.link.read_until(b"\r\n", timeout)


async def make_bench(scale: float = 1000, balance: dict[str, Any] | None = None,
                     quantos: dict[str, Any] | None = None) -> Bench:
    return await Bench(scale, balance or {}, quantos or {}).start()


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    b = await make_bench()
    yield b
    await b.close()


# -- raw bytes: the balance ------------------------------------------------------------------
async def test_raw_identity(bench: Bench) -> None:
    r = await bench.raw(bench.balance_url)
    assert await r.ask(b"I2\r\n") == b'I2 A "XPR204S 220.0000 g"\r\n'
    assert re.fullmatch(rb'I3 A "[^"]+"\r\n', await r.ask(b"I3\r\n"))
    assert await r.ask(b"I4\r\n") == b'I4 A "B999"\r\n'
    assert await r.ask(b"@\r\n") == b'I4 A "B999"\r\n'


async def test_raw_weight_reply_shape_is_the_pages(bench: Bench) -> None:
    r = await bench.raw(bench.balance_url)
    bench.world.add_solid("vial", "LiPF6", 2.3456)  # vial 10 g + 2.3456 g
    assert await r.ask(b"SI\r\n") == b"S D      12.3456 g\r\n"  # just changed: dynamic
    assert await r.ask(b"S\r\n") == b"S S      12.3456 g\r\n"  # waits until it settles
    assert await r.ask(b"SI\r\n") == b"S S      12.3456 g\r\n"
    assert await r.ask(b"SC 5\r\n") == b"S S      12.3456 g\r\n"
    assert await r.ask(b"SI\n") == b"S S      12.3456 g\r\n"  # bare LF accepted


async def test_raw_zero_and_tare(bench: Bench) -> None:
    r = await bench.raw(bench.balance_url)
    assert await r.ask(b"T\r\n") == b"T S      10.0000 g\r\n"
    assert await r.ask(b"SI\r\n") == b"S S       0.0000 g\r\n"
    assert await r.ask(b"TA\r\n") == b"TA A      10.0000 g\r\n"
    assert await r.ask(b"TAC\r\n") == b"TAC A\r\n"
    assert await r.ask(b"SI\r\n") == b"S S      10.0000 g\r\n"
    assert await r.ask(b"TA 4.5 g\r\n") == b"TA A       4.5000 g\r\n"
    assert await r.ask(b"SI\r\n") == b"S S       5.5000 g\r\n"
    assert await r.ask(b"TA 4.5 kg\r\n") == b"TA L\r\n"
    assert await r.ask(b"TI\r\n") == b"TI S      10.0000 g\r\n"
    assert await r.ask(b"@\r\n") == b'I4 A "B999"\r\n'  # reset clears the tare
    assert await r.ask(b"SI\r\n") == b"S S      10.0000 g\r\n"
    assert await r.ask(b"Z\r\n") == b"Z A\r\n"
    assert await r.ask(b"SI\r\n") == b"S S       0.0000 g\r\n"
    bench.world.add_solid("vial", "LiPF6", 0.5)
    assert await r.ask(b"ZI\r\n") == b"ZI D\r\n"
    assert await r.ask(b"S\r\n") == b"S S       0.0000 g\r\n"  # waits for it to settle
    assert await r.ask(b"ZI\r\n") == b"ZI S\r\n"


async def test_raw_units_display_and_errors(bench: Bench) -> None:
    r = await bench.raw(bench.balance_url)
    assert await r.ask(b"M21 0 0\r\n") == b"M21 A\r\n"
    assert await r.ask(b"M21 0 3\r\n") == b"M21 L\r\n"
    assert await r.ask(b'D "dosing LiPF6"\r\n') == b"D A\r\n"
    assert bench.balance.display_text == "dosing LiPF6"
    assert await r.ask(b"DW\r\n") == b"DW A\r\n"
    assert bench.balance.display_text is None
    assert await r.ask(b"XYZ\r\n") == b"ES\r\n"
    assert await r.ask(b"si\r\n") == b"ES\r\n"
    assert await r.ask(b"S\xff\xfe\r\n") == b"ET\r\n"
    bench.balance.faults.error = "EL"
    assert await r.ask(b"SI\r\n") == b"EL\r\n"
    assert await r.ask(b"SI\r\n") == b"S S      10.0000 g\r\n"


async def test_raw_overload_underload_and_unstable(bench: Bench) -> None:
    r = await bench.raw(bench.balance_url)
    bench.balance.faults.stall = True  # never settles for the next S
    assert await r.ask(b"S\r\n") == b"S I\r\n"
    bench.world.add_solid("vial", "LiPF6", 250.0)
    for cmd, expected in ((b"S\r\n", b"S +"), (b"SI\r\n", b"S +"), (b"Z\r\n", b"Z +"),
                          (b"T\r\n", b"T +")):
        assert await r.ask(cmd) == expected + b"\r\n"
    bench.world.vessel("vial").contents_g.clear()
    bench.balance.zero_offset_g = -30.0  # pan lifted after zeroing a heavy load
    assert await r.ask(b"SI\r\n") == b"S -\r\n"


async def test_raw_zero_range() -> None:
    b = await make_bench(balance={"zero_range_pct": 2})
    try:
        r = await b.raw(b.balance_url)
        assert await r.ask(b"Z\r\n") == b"Z +\r\n"  # 10 g vial > 2 % of 220 g
    finally:
        await b.close()


async def test_raw_sir_repeats_until_next_command(bench: Bench) -> None:
    r = await bench.raw(bench.balance_url)
    await r.link.write(b"SIR\r\n")
    for _ in range(3):
        assert re.fullmatch(rb"S [SD] +\d+\.\d{4} g\r\n", await r.line())
    await r.link.write(b"@\r\n")
    while (line := await r.line()) != b'I4 A "B999"\r\n':
        assert line.startswith(b"S ")
    assert await r.ask(b"I4\r\n") == b'I4 A "B999"\r\n'
    assert not bench.balance.snapshot()["sir"]


# -- raw bytes: the Quantos ------------------------------------------------------------------
async def test_raw_quantos_door_and_dose_into_the_world(bench: Bench) -> None:
    r = await bench.raw(bench.quantos_url)
    assert await r.ask(b"I2\r\n") == b'I2 A "XPE206DR 220.00000 g"\r\n'
    assert await r.ask(b"QRD 2 3 7\r\n") == b"QRD 2 3 7 A 2\r\n"
    assert await r.ask(b"QRA 60 7 3\r\n") == b"QRA 60 7 B\r\n"
    assert await r.line() == b"QRA 60 7 A\r\n"
    assert await r.ask(b"QRD 2 3 7\r\n") == b"QRD 2 3 7 A 3\r\n"
    assert await r.ask(b"QRD 1 1 5 100\r\n") == b"QRD A\r\n"
    assert await r.ask(b"QRD 1 1 6 2\r\n") == b"QRD A\r\n"
    assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 I 6\r\n"  # door open
    assert await r.ask(b"QRA 60 7 2\r\n") == b"QRA 60 7 B\r\n"
    assert await r.line() == b"QRA 60 7 A\r\n"
    assert await r.ask(b"T\r\n") == b"T S     10.00000 g\r\n"
    assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 B\r\n"
    assert await r.line(20) == b"QRA 61 1 A\r\n"
    line = await r.ask(b"SI\r\n")
    m = re.fullmatch(rb"S S +(\d+\.\d{5}) g\r\n", line)
    assert m, line
    dosed = float(m.group(1))
    assert 0.098 <= dosed <= 0.102  # within the 2 % tolerance
    assert bench.world.composition("vial")["LiPF6"] == pytest.approx(dosed, abs=1e-5)
    assert bench.quantos.head_content_g == pytest.approx(2.0 - dosed, abs=1e-5)
    assert await r.ask(b"QRA 61 4\r\n") == b"QRA 61 4 A\r\n"
    assert await r.ask(b"QRA 60 8 5\r\n") == b"QRA 60 8 B\r\n"
    assert await r.line() == b"QRA 60 8 A\r\n"
    assert await r.ask(b"QRA 60 8 31\r\n") == b"QRA 60 8 L\r\n"
    assert await r.ask(b"QRD 9 9\r\n") == b"QRD L\r\n"
    assert await r.ask(b"QRD 1 1 6 0\r\n") == b"QRD L\r\n"


async def test_raw_quantos_failure_codes() -> None:
    b = await make_bench(quantos={"head_content": "0.05 g", "max_target_mg": 500})
    try:
        r = await b.raw(b.quantos_url)
        assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 I 7\r\n"  # no target yet
        assert await r.ask(b"QRD 1 1 5 600\r\n") == b"QRD A\r\n"
        assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 I 7\r\n"  # above the range
        assert await r.ask(b"QRD 1 1 5 100\r\n") == b"QRD A\r\n"
        assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 B\r\n"
        assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 I 2\r\n"  # busy
        line = await r.line(20)
        assert line == b"QRA 61 1 I 5\r\n"  # the head ran empty half way
        assert b.world.composition("vial")["LiPF6"] == pytest.approx(0.05)
        assert b.quantos.head_content_g == pytest.approx(0.0)
        assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 I 5\r\n"
        b.quantos.head_mounted = False
        assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 I 1\r\n"
    finally:
        await b.close()


async def test_raw_quantos_stop_and_reset_end_a_dose() -> None:
    b = await make_bench(scale=100)  # 1000 mg take 300 s: 3 wall seconds
    try:
        r = await b.raw(b.quantos_url)
        assert await r.ask(b"QRD 1 1 5 1000\r\n") == b"QRD A\r\n"
        assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 B\r\n"
        await wait_for(lambda: b.quantos.dosed_g > 0)
        assert await r.ask(b"QRA 61 4\r\n") == b"QRA 61 4 A\r\n"
        assert await r.line() == b"QRA 61 1 A\r\n"
        assert b.quantos.is_safe()
        dosed = b.world.composition("vial")["LiPF6"]
        assert 0 < dosed < 0.99
        assert await r.ask(b"QRA 61 1\r\n") == b"QRA 61 1 B\r\n"
        await wait_for(lambda: b.quantos.dosed_g > 0)
        assert await r.ask(b"@\r\n") == b'I4 A "Q123"\r\n'
        assert b.quantos.is_safe()
    finally:
        await b.close()


# -- the reply parser --------------------------------------------------------------------------
def test_parse_reply_shapes() -> None:
    r = parse_reply(b"S S      12.3456 g\r\n", "S")
    assert (r.status, r.weight_g()) == ("S", 12.3456)
    assert parse_reply("S D    -1.5 mg", "S").weight_g() == pytest.approx(-0.0015)
    assert parse_reply("QRD 2 3 7 A 3", "QRD 2 3 7").values == ["3"]
    assert parse_reply('I2 A "XPR204S 220.0000 g"', "I2").text() == "XPR204S 220.0000 g"
    assert parse_reply("ES", "S").status == "ES"
    with pytest.raises(ProtocolError):
        parse_reply("Z A", "S")
    with pytest.raises(DeviceFault) as e:
        raise_for(parse_reply("S +", "S"), "b")
    assert e.value.code == "+"
    with pytest.raises(DeviceBusy):
        raise_for(parse_reply("QRA 61 1 I 2", "QRA 61 1"), "q")
    with pytest.raises(DeviceFault) as e:
        raise_for(parse_reply("QRA 61 1 I 6", "QRA 61 1"), "q")
    assert e.value.code == 6 and e.value.vendor_text == "front door open"


# -- the balance driver ------------------------------------------------------------------------
async def test_balance_identify_weigh_zero_tare(bench: Bench) -> None:
    bal = bench.balance_driver()
    await bal.connect()
    assert bal.grams_forced
    info = await bal.identify()
    assert (info.model, info.serial, info.vendor) == ("XPR204S", "B999", "Mettler Toledo")
    assert info.firmware
    assert bal.capacity_g == 220.0
    assert await bal.weigh() == pytest.approx(10.0)
    bench.world.add_solid("vial", "LiPF6", 1.25)
    assert await bal.weigh(stable=False) == pytest.approx(11.25)
    assert await bal.tare() == pytest.approx(11.25)
    assert await bal.weigh() == pytest.approx(0.0)
    assert await bal.tare_value() == pytest.approx(11.25)
    await bal.clear_tare()
    assert await bal.preset_tare(1.0) == pytest.approx(1.0)
    assert await bal.weigh() == pytest.approx(10.25)
    await bal.zero()
    assert await bal.weigh() == pytest.approx(0.0)
    await bal.display("hello")
    assert bench.balance.display_text == "hello"
    await bal.display_weight()
    st = await bal.status()
    assert st.state is DeviceState.IDLE
    assert st.readings["mass_g"] == pytest.approx(0.0) and st.readings["stable"] is True
    await bal.safe_state()


async def test_balance_retries_unstable_and_reports_overload(bench: Bench) -> None:
    bal = bench.balance_driver()
    await bal.connect()
    bench.balance.faults.stall = True  # the first S answers `S I`: asked again
    assert await bal.weigh() == pytest.approx(10.0)
    bench.world.add_solid("vial", "LiPF6", 300.0)
    with pytest.raises(DeviceFault) as e:
        await bal.weigh()
    assert e.value.code == "+"
    st = await bal.status()
    assert st.state is DeviceState.FAULT


async def test_balance_never_stable_times_out() -> None:
    b = await make_bench(balance={"settle_s": 1e9, "stable_timeout_s": 5})
    try:
        bal = b.balance_driver(stable_timeout="20 s")
        await bal.connect()
        b.world.add_solid("vial", "LiPF6", 0.5)  # it changes and never settles again
        with pytest.raises(DeviceTimeout):
            await bal.weigh(timeout_s=20)
        with pytest.raises(DeviceTimeout):
            await bal.zero()
        assert await bal.weigh(stable=False) == pytest.approx(10.5)
    finally:
        await b.close()


async def test_balance_zero_out_of_range_is_a_fault() -> None:
    b = await make_bench(balance={"zero_range_pct": 2})
    try:
        bal = b.balance_driver()
        await bal.connect()
        with pytest.raises(DeviceFault) as e:
            await bal.zero()
        assert e.value.code == "+"
    finally:
        await b.close()


async def test_balance_fault_injection_and_recovery(bench: Bench) -> None:
    bal = bench.balance_driver()
    await bal.connect()
    bench.balance.faults.silence = 1
    assert await bal.weigh(stable=False) == pytest.approx(10.0)  # retried
    bench.balance.faults.garbage = b"\x00\xfe#"
    assert await bal.weigh(stable=False) == pytest.approx(10.0)  # garbled: retried
    bench.balance.faults.error = "ET"
    assert await bal.weigh(stable=False) == pytest.approx(10.0)  # ET: retried
    bench.balance.faults.error = "EL"
    with pytest.raises(DeviceFault) as e:
        await bal.weigh(stable=False)
    assert e.value.code == "EL"
    with pytest.raises(ProtocolError):
        raise_for(await bal.command("XYZ"), bal.name)  # ES
    bench.balance.faults.silence = True
    with pytest.raises(DeviceTimeout):
        await bal.weigh(stable=False)
    bench.balance.faults.silence = False
    bench.balance.faults.truncate = True
    assert await bal.weigh(stable=False) == pytest.approx(10.0)
    assert await bal.weigh() == pytest.approx(10.0)


async def test_balance_connect_stops_a_running_sir(bench: Bench) -> None:
    r = await bench.raw(bench.balance_url)
    await r.link.write(b"SIR\r\n")
    await r.line()
    await r.link.close()
    bal = bench.balance_driver()
    await bal.connect()
    assert not bench.balance.snapshot()["sir"]
    assert await bal.weigh() == pytest.approx(10.0)


async def test_a_tare_survives_the_host_reconnecting(bench: Bench) -> None:
    """Issue 12 item 10: connecting sent `@`, which clears the tare, so after a crash and a
    resume the weighing of an addition read the gross mass. A new driver (a new host
    process) now keeps the balance's tare, and `gross()` reads the pan whatever the tare."""
    bal = bench.balance_driver()
    await bal.connect()
    assert await bal.tare() == pytest.approx(10.0)  # the empty vial
    await bench.pool.close_all()  # the host dies; the balance does not
    bench.world.add_solid("vial", "LiPF6", 0.75)  # the addition lands meanwhile
    again = bench.balance_driver()
    await again.connect()
    assert await again.weigh() == pytest.approx(0.75)  # net: the addition, not 10.75 g
    assert await again.tare_value() == pytest.approx(10.0)
    assert await again.gross() == pytest.approx(10.75)


async def test_landed_since_a_reference_survives_a_cleared_tare(bench: Bench) -> None:
    disp = bench.dispenser()
    await disp.connect()
    references: list[float] = []
    dosed = await disp.dispense(0.1, on_tared=references.append)
    assert references == [pytest.approx(10.0)]
    await disp.clear_tare()  # e.g. the balance was reset while the host was down
    assert await disp.landed_since(references[0]) == pytest.approx(dosed, abs=1e-5)


# -- the Quantos driver ------------------------------------------------------------------------
async def test_dispense_lands_in_the_vial_and_both_read_it(bench: Bench) -> None:
    bal = bench.balance_driver()
    disp = bench.dispenser()
    await bal.connect()
    await disp.connect()
    info = await disp.identify()
    assert (info.model, info.serial) == ("XPE206DR", "Q123")
    assert disp.default_serial.xonxoff
    before = await bal.weigh()
    dosed = await disp.dispense(0.1, tolerance_pct=2.0)
    assert 0.098 <= dosed <= 0.102
    in_vial = bench.world.composition("vial")["LiPF6"]
    assert dosed == pytest.approx(in_vial, abs=1e-5)
    assert await bal.weigh() - before == pytest.approx(in_vial, abs=1e-4)
    assert bench.quantos.snapshot()["target_mg"] == pytest.approx(100.0)
    assert bench.quantos.snapshot()["tolerance_pct"] == 2.0
    again = await disp.dispense(0.05, tolerance_pct=1.0)
    assert 0.0495 <= again <= 0.0505
    assert bench.world.composition("vial")["LiPF6"] == pytest.approx(dosed + again, abs=1e-5)
    st = await disp.status()
    assert st.readings["door"] == "closed" and st.readings["dosing"] is False


async def test_dispense_closes_an_open_door_first(bench: Bench) -> None:
    disp = bench.dispenser()
    await disp.connect()
    await disp.open_door()
    assert await disp.door_state() == "open"
    assert await disp.dispense(0.02) == pytest.approx(0.02, rel=0.03)
    assert bench.quantos.door == 2


async def test_dispense_limits_checked_before_sending(bench: Bench) -> None:
    disp = bench.dispenser(limits={"max_mass": "0.5 g"})
    await disp.connect()
    before = bench.quantos.commands
    with pytest.raises(LimitError) as e:
        await disp.dispense(0.6)
    assert e.value.parameter == "mass" and e.value.limit == 0.5
    with pytest.raises(LimitError):
        await disp.dispense(0.0)
    with pytest.raises(LimitError):
        await disp.dispense(-0.1)
    with pytest.raises(LimitError):
        await disp.dispense(0.1, tolerance_pct=0)
    assert bench.quantos.commands == before
    assert "LiPF6" not in bench.world.composition("vial")


async def test_dispense_failure_codes_map_to_exceptions() -> None:
    b = await make_bench(quantos={"head_content": "0.03 g", "max_target_mg": 80})
    try:
        disp = b.dispenser()
        await disp.connect()
        with pytest.raises(DeviceFault) as e:
            await disp.dispense(0.1)
        assert e.value.code == 7 and "range" in (e.value.vendor_text or "")
        with pytest.raises(DeviceFault) as e:
            await disp.dispense(0.05)
        assert e.value.code == 5 and e.value.vendor_text == "powder empty"
        assert b.world.composition("vial")["LiPF6"] == pytest.approx(0.03)
        b.quantos.head_content_g = 1.0
        b.quantos.faults.error = 2
        with pytest.raises(DeviceBusy):
            await disp.dispense(0.01)
        b.quantos.faults.error = 3
        with pytest.raises(DeviceFault) as e:
            await disp.dispense(0.01)
        assert e.value.code == 3
        b.quantos.faults.stall = True  # powder bridges: nothing flows, the Quantos times out
        b.quantos.dose_timeout_s = 30
        with pytest.raises(DeviceFault) as e:
            await disp.dispense(0.01)
        assert e.value.code == 3
        assert await disp.dispense(0.01) == pytest.approx(0.01, rel=0.03)
    finally:
        await b.close()


async def test_stop_during_dispense_and_safe_state() -> None:
    b = await make_bench(scale=100)  # 1 g takes 300 s: 3 wall seconds
    try:
        disp = b.dispenser()
        await disp.connect()
        task = asyncio.ensure_future(disp.dispense(1.0))
        await wait_for(lambda: b.quantos.dosed_g > 0)
        await disp.safe_state()
        with pytest.raises(DeviceFault, match="stopped"):
            await task
        assert b.quantos.is_safe()
        assert 0 < b.world.composition("vial")["LiPF6"] < 0.99
        await disp.safe_state()  # again, with nothing dosing
        assert b.quantos.is_safe()
    finally:
        await b.close()


async def test_dispenser_recovers_from_silence_and_garbage(bench: Bench) -> None:
    disp = bench.dispenser()
    await disp.connect()
    bench.quantos.faults.silence = 1
    assert await disp.door_state() == "closed"
    bench.quantos.faults.garbage = b"\xff\x00"
    assert await disp.door_state() == "closed"
    bench.quantos.faults.silence = True
    with pytest.raises(DeviceTimeout):
        await disp.door_state()
    bench.quantos.faults.silence = False
    assert await disp.dispense(0.02) == pytest.approx(0.02, rel=0.03)


async def test_noise_before_a_reply_is_skipped_and_the_action_not_resent(bench: Bench) -> None:
    """A line of noise ahead of an action's `B` (both arrive together): the driver reads on
    and takes the `B`, rather than fail an action it may not resend (a second dose); the
    same for a late reply to an earlier command."""
    disp = bench.dispenser()
    await disp.connect()
    bench.quantos.faults.garbage = b"\x00\xff#!noise\r\n"
    await disp.move_sampler(3)
    assert bench.quantos.sampler == 3
    bench.quantos.faults.garbage = b"QRD 2 3 7 A 2\r\n"  # another command's answer
    await disp.move_sampler(5)
    assert bench.quantos.sampler == 5
    bench.quantos.faults.garbage = b"\x00\xff#!noise\r\n"  # and ahead of a query
    assert await disp.door_state() == "closed"


async def test_simulated_bench_config_doses_into_cell_vial() -> None:
    """config/sim.toml: the dispenser doses LiPF6 into cell_vial and reads it back."""
    from labctl.config import load_config
    from labctl.instruments import Instruments

    cfg = load_config("config/sim.toml")
    async with Instruments(cfg, time_scale=1000, only=["balance", "dispenser"]) as inst:
        disp = inst.devices["dispenser"]
        bal = inst.devices["balance"]
        assert isinstance(disp, QuantosDispenser) and isinstance(bal, MettlerBalance)
        assert disp.info is not None and disp.info.serial
        assert bal.info is not None and bal.info.model
        with pytest.raises(LimitError):
            await disp.dispense(6.0)  # max_mass = 5 g
        dosed = await disp.dispense(0.25)
        world = inst.simulation.world
        assert world.composition("cell_vial")["LiPF6"] == pytest.approx(dosed, abs=1e-5)
        assert await bal.weigh() == pytest.approx(world.mass_g("coat_vial"))
