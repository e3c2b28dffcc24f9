"""Modbus instruments, device side: a peristaltic pump (labctl reference map) and an Omega
CN7500 temperature controller, written from shared/protocols/modbus-devices.md.

How they are served (`serve_group`): a `labctl.simserve.ByteServer` owns the endpoint (a pty
or TCP) and a `ModbusLine` turns its bytes into requests. Framing follows the endpoint: RTU
(address, PDU, CRC-16) on a pty, MBAP on TCP; option `framer = "rtu"` serves RTU over TCP
(a serial device server). Requests are decoded and executed by pymodbus' own server-side PDU
classes (`DecodePDU`, `datastore_update`) against the simulator's registers, and answers are
encoded by pymodbus' framers. We do not run pymodbus' server class itself, because:
- one code path serves a pty and TCP, and several unit ids on one line (an RS-485 bus);
- injected faults (silence, delay, truncation, garbage, disconnect) go through
  `Simulator.send` and the ByteServer like every other simulator's;
- RTU frames are found by scanning for a valid CRC (garbage before a frame does not lose
  it), a request to another unit id gets no answer, and an unknown function code with a
  valid CRC gets exception 01, as on a real bus; TCP requests are answered in order even
  when a host sends several in one segment.

Exceptions: 01 illegal function (function code the instrument does not implement),
02 illegal data address, 03 illegal data value (also malformed counts), 04 server device
failure, 06 busy (injected). On TCP an unknown unit id answers 0x0B (gateway target failed
to respond); units 0 and 255 address the only instrument of a line. RTU unit 0 is a
broadcast: writes are executed by every instrument, nobody answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Sequence
from typing import Any, ClassVar

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU

from labctl.simserve import ByteServer
from simulators.base import Reply, Simulator
from simulators.serving import Served
from simulators.world import AMBIENT_C, WorldFault

log = logging.getLogger("simulators.modbus")

#: which table each function code works on
TABLE_OF_FC: dict[int, str] = {
    1: "coil", 5: "coil", 15: "coil",
    2: "discrete",
    3: "holding", 6: "holding", 16: "holding",
    4: "input",
}
#: total RTU request length (address + PDU + CRC) of fixed-size requests
_RTU_FIXED_LEN: dict[int, int] = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8, 7: 4, 8: 8, 11: 4,
                                  12: 4, 17: 4, 22: 10, 43: 7}
#: no byte for this long (wall seconds) ends an incomplete RTU frame (t3.5 on a real line;
#: generous here because a pty gives no timing guarantee)
RTU_GAP_S = 0.1
#: physics update period, wall seconds
TICK_WALL_S = 0.02


def crc16(data: bytes) -> int:
    """Modbus CRC-16 as an int whose big-endian bytes are the on-wire (low-first) pair."""
    return FramerRTU.compute_CRC(data)


def _rtu_length(buf: bytes | bytearray, i: int) -> int | None:
    """Length of the RTU request starting at buf[i]: None = need more bytes, 0 = unknown."""
    if len(buf) - i < 2:
        return None
    fc = buf[i + 1]
    if fc in _RTU_FIXED_LEN:
        return _RTU_FIXED_LEN[fc]
    if fc in (15, 16):
        return None if len(buf) - i < 7 else 9 + buf[i + 6]
    if fc == 23:
        return None if len(buf) - i < 11 else 13 + buf[i + 10]
    return 0


class _Session:
    """One peer (the pty, or one TCP connection): its receive buffer and reply order."""

    def __init__(self, line: ModbusLine, reply: Reply):
        self.line = line
        self.reply = reply
        self.buf = bytearray()
        self.lock = asyncio.Lock()
        self.gap: asyncio.TimerHandle | None = None

    def feed(self, data: bytes) -> None:
        self.buf.extend(data)
        if self.gap is not None:
            self.gap.cancel()
            self.gap = None
        if self.line.rtu:
            self._scan_rtu(final=False)
            if self.buf:
                self.gap = asyncio.get_running_loop().call_later(RTU_GAP_S, self._gap_expired)
        else:
            self._scan_mbap()

    # -- RTU --------------------------------------------------------------------------
    def _scan_rtu(self, *, final: bool) -> None:
        i = 0
        buf = self.buf
        while len(buf) - i >= 4:
            n = _rtu_length(buf, i)
            if n is None or (n and len(buf) - i < n):
                if not final:
                    break
                i += 1  # a false start inside garbage: look further
                continue
            if n == 0:
                i += 1
                continue
            frame = bytes(buf[i : i + n])
            if FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")):
                if i:
                    log.debug("RTU: skipped %r before a frame", bytes(buf[:i]))
                del buf[: i + n]
                i = 0
                self.line.request(self, frame[0], 0, frame[1:-2])
            else:
                i += 1
        # bytes not (yet) part of a frame stay until the line falls silent: they may be the
        # start of a frame with a function code we do not know (answered with 01)
        if final or len(buf) > 512:
            buf.clear()

    def _gap_expired(self) -> None:
        """Silence after bytes: a whole frame with a valid CRC whose function code we do not
        know gets exception 01; anything else is line noise and is dropped."""
        self.gap = None
        buf = bytes(self.buf)
        if len(buf) >= 4 and FramerRTU.check_CRC(buf[:-2], int.from_bytes(buf[-2:], "big")):
            self.buf.clear()
            self.line.request(self, buf[0], 0, buf[1:-2])
            return
        self._scan_rtu(final=True)

    # -- TCP (MBAP) ---------------------------------------------------------------------
    def _scan_mbap(self) -> None:
        buf = self.buf
        while len(buf) >= 7:
            tid, pid, length, unit = struct.unpack(">HHHB", buf[:7])
            if not 2 <= length <= 254:  # no way to find the next frame: start afresh
                log.debug("MBAP: bad length in %r, dropped", bytes(buf))
                buf.clear()
                return
            if len(buf) < 6 + length:
                return
            pdu = bytes(buf[7 : 6 + length])
            del buf[: 6 + length]
            if pid != 0:  # not Modbus: ignored, as the spec says
                log.debug("MBAP: protocol id %d, ignored", pid)
                continue
            self.line.request(self, unit, tid, pdu)


class _Registers:
    """The datastore interface pymodbus' request classes execute against."""

    def __init__(self, sim: ModbusSimulator):
        self.sim = sim
        self._echo: tuple[int, int, list[Any]] | None = None

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if self._echo is not None and self._echo[:2] == (func_code, address):
            values = self._echo[2]  # write-single echoes what was written
            self._echo = None
            return values
        return self.sim.read(TABLE_OF_FC[func_code], address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[Any]
    ) -> ExcCodes | None:
        table = TABLE_OF_FC[func_code]
        vals = [bool(v) for v in values] if table == "coil" else [int(v) for v in values]
        rc = self.sim.write(table, address, vals)
        self._echo = (func_code, address, vals) if rc is None and func_code in (5, 6) else None
        return rc

    def device_ids(self) -> list[int]:
        return [self.sim.unit_id]


class ModbusLine:
    """The instruments of one Modbus line (pty or TCP endpoint), by unit id."""

    def __init__(self, sims: Sequence[ModbusSimulator], *, rtu: bool):
        self.rtu = rtu
        self.units: dict[int, ModbusSimulator] = {}
        for sim in sims:
            if sim.unit_id in self.units:
                raise ValueError(f"two instruments with unit id {sim.unit_id} on one line")
            self.units[sim.unit_id] = sim
            sim.modbus_line = self
        self.decoder = DecodePDU(True)
        self.framer = FramerRTU(self.decoder) if rtu else FramerSocket(self.decoder)
        self._sessions: dict[Reply, _Session] = {}

    def feed(self, data: bytes, reply: Reply) -> None:
        session = self._sessions.get(reply)
        if session is None:
            if len(self._sessions) > 64:  # forget long-gone TCP peers
                self._sessions.pop(next(iter(self._sessions)))
            session = self._sessions[reply] = _Session(self, reply)
        session.feed(data)

    def request(self, session: _Session, unit: int, tid: int, pdu: bytes) -> None:
        """One framed request: route it to its instrument."""
        if not pdu:
            return
        sim = self.units.get(unit)
        if sim is None and not self.rtu and unit in (0, 255) and len(self.units) == 1:
            sim = next(iter(self.units.values()))
        if sim is not None:
            sim.requests += 1
            sim.spawn(self._execute(sim, session, unit, tid, pdu, answer=True))
        elif self.rtu and unit == 0:  # broadcast: everybody executes, nobody answers
            for each in self.units.values():
                each.requests += 1
                each.spawn(self._execute(each, session, unit, tid, pdu, answer=False))
        elif not self.rtu:
            resp = ExceptionResponse(pdu[0] & 0x7F, ExcCodes.GATEWAY_NO_RESPONSE)
            resp.dev_id, resp.transaction_id = unit, tid
            session.reply(self.framer.buildFrame(resp))
        # RTU, another unit's frame: not ours, stay silent

    async def _execute(
        self, sim: ModbusSimulator, session: _Session, unit: int, tid: int, pdu: bytes,
        *, answer: bool,
    ) -> None:
        async with session.lock:  # answers leave in the order requests came
            resp = await self._respond(sim, unit, pdu)
            if not answer:
                return
            resp.dev_id, resp.transaction_id = unit, tid
            sim.send(session.reply, self.framer.buildFrame(resp))

    async def _respond(self, sim: ModbusSimulator, unit: int, pdu: bytes) -> ModbusPDU:
        fc = pdu[0]
        injected = sim.faults.take_error()
        if injected:
            return ExceptionResponse(fc & 0x7F, int(injected))
        if fc not in sim.function_codes:
            return ExceptionResponse(fc & 0x7F, ExcCodes.ILLEGAL_FUNCTION)
        if fc == 5 and pdu[3:5] not in (b"\xff\x00", b"\x00\x00"):
            return ExceptionResponse(fc, ExcCodes.ILLEGAL_VALUE)
        request = self.decoder.decode(pdu)
        if request is None:  # a function we implement, with a bad count or length
            return ExceptionResponse(fc, ExcCodes.ILLEGAL_VALUE)
        request.dev_id = unit
        try:
            sim.advance()
            resp = await request.datastore_update(sim.registers, unit)  # type: ignore[arg-type]
        except Exception:  # a simulator bug must answer, not kill the line
            log.exception("%s: executing %r", sim.name, pdu)
            return ExceptionResponse(fc, ExcCodes.DEVICE_FAILURE)
        return resp


class ModbusSimulator(Simulator):
    """A Modbus instrument: registers with behaviour behind them."""

    #: function codes the instrument implements (others: exception 01)
    function_codes: ClassVar[frozenset[int]] = frozenset()

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.unit_id = int(self.address) if self.address not in (None, "") else 1  # type: ignore[arg-type]
        if not 1 <= self.unit_id <= 247:
            raise ValueError(f"{self.name}: unit id must be 1-247, got {self.unit_id}")
        self.registers = _Registers(self)
        self.modbus_line: ModbusLine | None = None
        #: requests addressed to this instrument so far (tests: "nothing was sent")
        self.requests = 0

    @classmethod
    async def serve_group(cls, sims: list[Simulator], endpoint: str = "pty") -> Served:
        """Serve Modbus instruments on one endpoint: RTU on a pty, MBAP on TCP (option
        `framer = "rtu"`: RTU over TCP)."""
        msims = [s for s in sims if isinstance(s, ModbusSimulator)]
        if len(msims) != len(sims):
            raise ValueError("only Modbus instruments can share a Modbus line")
        framer = str(msims[0].options.get("framer", "") or "").lower()
        rtu = endpoint == "pty" or framer == "rtu"
        line = ModbusLine(msims, rtu=rtu)
        server = ByteServer(line.feed, name="+".join(s.name for s in msims))
        url = await server.start(endpoint)
        try:
            for sim in msims:
                sim.server = server
                await sim.start()
        except BaseException:
            await server.close()
            raise
        return Served(endpoint=url, simulators=list(sims), server=server,
                      extra={"framing": "rtu" if rtu else "mbap"})

    def feed(self, data: bytes, reply: Reply) -> None:
        """Bytes from a plain byte server (when not served by `serve_group`)."""
        if self.modbus_line is None:
            ep = str(getattr(self.server, "endpoint", ""))
            rtu = not ep.startswith("socket://") or self.options.get("framer") == "rtu"
            ModbusLine([self], rtu=rtu)
        assert self.modbus_line is not None
        self.modbus_line.feed(data, reply)

    # -- registers: subclasses implement ------------------------------------------------
    def read(self, table: str, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        """Values of `count` points from `address` of `table`, or an exception code."""
        return ExcCodes.ILLEGAL_ADDRESS

    def write(self, table: str, address: int, values: list[Any]) -> ExcCodes | None:
        """Write points (all or none), or return an exception code."""
        return ExcCodes.ILLEGAL_ADDRESS

    def advance(self) -> None:
        """Bring the physics up to the clock's now (before every request)."""


def _u32(value: float) -> tuple[int, int]:
    v = max(0, min(0xFFFFFFFF, round(value)))
    return v >> 16, v & 0xFFFF


class ModbusPumpSimulator(ModbusSimulator):
    """Peristaltic pump on the labctl reference map.

    Options: `tubing_ul_per_rev` (initial calibration, default 100), `source`,
    `destination` (world vessels; "@valve" routes allowed: liquid moves source ->
    destination when turning clockwise, back when counter-clockwise), `ramp_rpm_s`
    (acceleration, default 1200 rpm/s), `head_open` (start with the head open),
    `faults` (Faults fields). `faults.stall` stalls the motor at its next movement
    (fault code 1); an empty source or an overflowing destination does the same.
    """

    kind = "modbus-pump"
    line = "Modbus RTU 9600 8N1 (or Modbus TCP)"
    function_codes = frozenset({1, 3, 4, 5, 6, 16})
    MAX_SPEED_RAW = 6000

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        o = self.options
        self.coils = [False, False, False]  # run, direction, prime
        self.holding = [0, int(o.get("tubing_ul_per_rev", 100)), 0, 0, 0]
        if not 1 <= self.holding[1] <= 0xFFFF:
            raise ValueError(f"{self.name}: tubing_ul_per_rev must be 1-65535")
        self.source: str | None = o.get("source")
        self.destination: str | None = o.get("destination")
        self.ramp_rpm_s = float(o.get("ramp_rpm_s", 1200.0))
        self.speed_rpm = 0.0
        self.volume_ul = 0.0
        self.target_reached = False
        self.fault_code = 0
        self.head_open = bool(o.get("head_open", False))
        if self.head_open:
            self.fault_code = 2
        self._last_t = self.clock.monotonic()
        self._loop_task: asyncio.Task[Any] | None = None

    # -- the map --------------------------------------------------------------------------
    def _inputs(self) -> list[int]:
        status = (
            (1 if self.motor_on else 0)
            | (2 if self.target_reached else 0)
            | (4 if self.fault_code else 0)
            | (8 if self.head_open else 0)
        )
        hi, lo = _u32(self.volume_ul)
        return [round(self.speed_rpm * 10), status, hi, lo, self.fault_code]

    def read(self, table: str, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        data: list[Any]
        if table == "coil":
            data = list(self.coils)
        elif table == "holding":
            data = list(self.holding)
        elif table == "input":
            data = self._inputs()
        else:
            return ExcCodes.ILLEGAL_ADDRESS
        if address < 0 or address + count > len(data):
            return ExcCodes.ILLEGAL_ADDRESS
        return data[address : address + count]

    def write(self, table: str, address: int, values: list[Any]) -> ExcCodes | None:
        if table == "coil":
            if address < 0 or address + len(values) > 3:
                return ExcCodes.ILLEGAL_ADDRESS
            self.advance()
            new = list(self.coils)
            new[address : address + len(values)] = [bool(v) for v in values]
            starting = (new[0] and not self.coils[0]) or (new[2] and not self.coils[2])
            if starting and self.head_open:
                return ExcCodes.DEVICE_FAILURE
            was_running = self.coils[0]
            self.coils = new
            if new[0] and not was_running:
                self._run_started()
            self._motor_changed()
            return None
        if table == "holding":
            if address < 0 or address + len(values) > 5:
                return ExcCodes.ILLEGAL_ADDRESS
            regs = list(self.holding)
            regs[address : address + len(values)] = [int(v) for v in values]
            if regs[0] > self.MAX_SPEED_RAW or regs[1] == 0 or regs[4] not in (0, 1):
                return ExcCodes.ILLEGAL_VALUE
            self.advance()
            self.holding = regs
            return None
        return ExcCodes.ILLEGAL_ADDRESS

    # -- behaviour --------------------------------------------------------------------------
    @property
    def motor_on(self) -> bool:
        return self.coils[0] or self.coils[2]

    @property
    def target_ul(self) -> int:
        return (self.holding[2] << 16) | self.holding[3]

    def _run_started(self) -> None:
        self.volume_ul = 0.0
        self.target_reached = False
        self.fault_code = 2 if self.head_open else 0
        self.speed_rpm = 0.0

    def _motor_changed(self) -> None:
        if not self.motor_on:
            self.speed_rpm = 0.0
            return
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = self.spawn(self._turn())

    async def _turn(self) -> None:
        """Keep the physics going while the motor turns (auto-stop, world transfer)."""
        try:
            while self.motor_on:
                await self.clock.sleep(TICK_WALL_S * self.clock.time_scale)
                self.advance()
        finally:
            self._loop_task = None

    def _stop_motor(self) -> None:
        self.coils[0] = False
        self.coils[2] = False
        self.speed_rpm = 0.0

    def _fault(self, code: int) -> None:
        self.fault_code = code
        self._stop_motor()

    def advance(self) -> None:
        now = self.clock.monotonic()
        dt, self._last_t = max(0.0, now - self._last_t), now
        if not self.motor_on or dt == 0:
            if not self.motor_on:
                self.speed_rpm = 0.0
            return
        if self.faults.take_stall():
            self._fault(1)
            return
        prime = self.coils[2]
        target = 600.0 if prime else self.holding[0] / 10
        v0 = self.speed_rpm
        step = self.ramp_rpm_s * dt
        if abs(target - v0) <= step:  # reaches the setpoint within dt
            t_ramp = abs(target - v0) / self.ramp_rpm_s if self.ramp_rpm_s > 0 else 0.0
            revs = ((v0 + target) / 2 * t_ramp + target * (dt - t_ramp)) / 60
            v1 = target
        else:
            v1 = v0 + math.copysign(step, target - v0)
            revs = (v0 + v1) / 2 * dt / 60
        volume = revs * self.holding[1]
        reached = False
        volume_mode = self.holding[4] == 1 and not prime and self.target_ul > 0
        if volume_mode:
            remaining = self.target_ul - self.volume_ul
            if volume >= remaining:
                volume, reached = max(0.0, remaining), True
        try:
            self._move(volume * 1e-6)
        except WorldFault as exc:
            log.info("%s: stall: %s", self.name, exc)
            # the head turns until the liquid runs out, whatever the clock's tick
            self.volume_ul += self._move(volume * 1e-6, partial=True) * 1e6
            self._fault(1)
            return
        self.volume_ul += volume
        self.speed_rpm = v1
        if reached:
            self._stop_motor()
            self.target_reached = True

    def _move(self, volume_l: float, *, partial: bool = False) -> float:
        """Move liquid in the world; `partial` moves only what fits. Returns the volume."""
        if self.world is None or not self.source or not self.destination or volume_l <= 0:
            return volume_l
        src, dst = self.source, self.destination
        if self.coils[1]:
            src, dst = dst, src
        if partial:
            volume_l = self.world.movable_l(src, dst, volume_l)
            if volume_l <= 0:
                return 0.0
        self.world.move_volume(src, dst, volume_l)
        return volume_l

    # -- for tests and operators -----------------------------------------------------------
    def set_head_open(self, is_open: bool = True) -> None:
        """Open (fault code 2, the pump stops) or close the pump head."""
        self.advance()
        self.head_open = is_open
        if is_open:
            self._fault(2)
        elif self.fault_code == 2:
            self.fault_code = 0

    def inject_fault(self, code: int) -> None:
        """Report a fault code (1 stall, 3 overtemperature) and stop."""
        self.advance()
        self._fault(code)

    def snapshot(self) -> dict[str, Any]:
        self.advance()
        return {
            "run": self.coils[0], "direction": int(self.coils[1]), "prime": self.coils[2],
            "speed_setpoint_rpm": self.holding[0] / 10, "tubing_ul_per_rev": self.holding[1],
            "target_ul": self.target_ul, "mode": self.holding[4],
            "speed_rpm": self.speed_rpm, "volume_ul": self.volume_ul,
            "target_reached": self.target_reached, "fault_code": self.fault_code,
            "head_open": self.head_open, "requests": self.requests,
        }

    def is_safe(self) -> bool:
        return not self.motor_on


class OmegaCN7500Simulator(ModbusSimulator):
    """Omega CN7500 PID controller heating a block (and the world vessel in it).

    Map: 0x1000 PV (read only), 0x1001 SV, 0x1002/0x1003 upper/lower SV limits, 0x1004
    input sensor type, 0x1005 control mode (holding, 0.1 degC, signed); run bit 0x0814
    (read with 02, written with 05). 0x1002-0x1004 are not on the labctl page: they fill the
    gap as on the Delta DTB family the CN7500 belongs to, so block reads 0x1000-0x1005 work.
    Options: `vessel` (world vessel heated), `tau_s` (time constant, default 90 s),
    `ambient_c` (default: the vessel's temperature, else 22 degC). `faults.stall` is a heater
    failure: the block cools to ambient until the run bit is set again.
    """

    kind = "omega-cn7500"
    line = "Modbus RTU 9600 8E1 (or Modbus TCP)"
    function_codes = frozenset({2, 3, 5, 6})
    RUN_BIT = 0x0814
    BASE = 0x1000

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        o = self.options
        self.vessel: str | None = o.get("vessel")
        self.tau_s = float(o.get("tau_s", 90.0))
        ambient = o.get("ambient_c")
        if ambient is None and self.world is not None and self.vessel:
            with contextlib.suppress(WorldFault):
                ambient = self.world.vessel(self.vessel).temperature_c
        self.ambient_c = float(ambient if ambient is not None else AMBIENT_C)
        self.sv_raw = 250
        self.upper_raw = 6000
        self.lower_raw = -2000
        self.sensor_type = 0
        self.control_mode = 0
        self.running = False
        self.heater_failed = False
        self._t0 = self.clock.monotonic()
        self._pv0 = self.ambient_c

    # -- physics ------------------------------------------------------------------------------
    def _goal_c(self) -> float:
        if self.running and not self.heater_failed:
            return max(self.sv_raw / 10, self.ambient_c)  # a heater cannot cool
        return self.ambient_c

    def pv_c(self) -> float:
        dt = max(0.0, self.clock.monotonic() - self._t0)
        goal = self._goal_c()
        return goal + (self._pv0 - goal) * math.exp(-dt / self.tau_s)

    def _reanchor(self) -> None:
        """The goal is about to change: continue the curve from where it is now."""
        self._pv0, self._t0 = self.pv_c(), self.clock.monotonic()

    def advance(self) -> None:
        if self.faults.take_stall():
            self._reanchor()
            self.heater_failed = True
        if self.world is not None and self.vessel:
            try:
                self.world.set_temperature(self.vessel, self.pv_c())
            except WorldFault as exc:
                log.debug("%s: %s", self.name, exc)

    async def start(self) -> None:
        self.spawn(self._follow())

    async def _follow(self) -> None:
        while True:
            await self.clock.sleep(5 * TICK_WALL_S * self.clock.time_scale)
            self.advance()

    # -- the map --------------------------------------------------------------------------
    def _holding(self) -> list[int]:
        pv = round(self.pv_c() * 10)
        return [v & 0xFFFF for v in (pv, self.sv_raw, self.upper_raw, self.lower_raw,
                                     self.sensor_type, self.control_mode)]

    def read(self, table: str, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        if table in ("coil", "discrete"):
            if address != self.RUN_BIT or count != 1:
                return ExcCodes.ILLEGAL_ADDRESS
            return [self.running]
        if table == "holding":
            regs = self._holding()
            off = address - self.BASE
            if off < 0 or off + count > len(regs):
                return ExcCodes.ILLEGAL_ADDRESS
            return regs[off : off + count]
        return ExcCodes.ILLEGAL_ADDRESS

    def write(self, table: str, address: int, values: list[Any]) -> ExcCodes | None:
        if table == "coil":
            if address != self.RUN_BIT or len(values) != 1:
                return ExcCodes.ILLEGAL_ADDRESS
            run = bool(values[0])
            if run != self.running or (run and self.heater_failed):
                self._reanchor()
                if run:
                    self.heater_failed = False
                self.running = run
            return None
        if table != "holding" or len(values) != 1:
            return ExcCodes.ILLEGAL_ADDRESS
        off = address - self.BASE
        raw = values[0]
        signed = raw - 0x10000 if raw & 0x8000 else raw
        if off == 1:
            if not self.lower_raw <= signed <= self.upper_raw:
                return ExcCodes.ILLEGAL_VALUE
            self._reanchor()
            self.sv_raw = signed
        elif off in (2, 3):
            lo, hi = (self.lower_raw, signed) if off == 2 else (signed, self.upper_raw)
            if lo >= hi:
                return ExcCodes.ILLEGAL_VALUE
            self.lower_raw, self.upper_raw = lo, hi
        elif off == 4:
            if not 0 <= raw <= 17:
                return ExcCodes.ILLEGAL_VALUE
            self.sensor_type = raw
        elif off == 5:
            if raw not in (0, 1, 2, 3):
                return ExcCodes.ILLEGAL_VALUE
            self.control_mode = raw
        else:  # PV is read only; nothing else is mapped
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def snapshot(self) -> dict[str, Any]:
        return {
            "pv_c": self.pv_c(), "sv_c": self.sv_raw / 10, "running": self.running,
            "control_mode": self.control_mode, "heater_failed": self.heater_failed,
            "tau_s": self.tau_s, "ambient_c": self.ambient_c, "requests": self.requests,
        }

    def is_safe(self) -> bool:
        return not self.running
