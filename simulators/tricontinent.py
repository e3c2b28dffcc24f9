"""TriContinent C-series syringe pump (C3000), instrument side of the DT protocol.

Written from shared/protocols/tricontinent-c-series.md only. One instance is one pump; several
instances on one served line form an RS-485 bus: every instance parses every byte and only
the addressed one answers (group addresses execute with no answer at all).

Model: a command string is checked when it arrives (unknown character -> error 2, operand
out of its range -> 3, move while not initialised -> 7, plunger move in bypass -> 11, and
relative moves past the stroke that fail before the pump would have gone busy -> 3: all
immediate, nothing runs). It then runs in the background on the simulated clock; an error
raised while it runs stops it and is kept for the next `Q` (deferred; most recent wins).
Errors 1, 9 and 10 leave the pump uninitialised.

Options: `address` (1..15, or the address character), `syringe_volume` ("5 mL"), `valve`
("distribution" | "3-way" | "4-way"), `ports` (distribution valve ports, default 6),
`port_map` ({"1": "res_ec", "2": "@sel_valve"}; 3/4-way valves use "input", "output",
"bypass", "extra"), `firmware` ("C3000: 042517"), `faults` (see `simulators.base.Faults`).
With a world, a syringe vessel `<name>.syringe` is added; plunger moves move liquid between
it and the vessel of the current port. Liquid pushed to a port with no mapping goes to a
`<name>.drain` vessel so amounts stay conserved; a port with no mapping supplies air.
An impossible move (empty reservoir, full vial, route to nowhere) stalls the plunger where
the liquid ran out: error 9 (plunger overload), never a negative amount. A frozen reservoir
(a material below its melting point, `World.frozen`) stalls it at once: error 9.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from simulators.base import Reply, Simulator
from simulators.world import WorldFault, parse_amount

ETX_CRLF = b"\x03\r\n"
OEM_STARTS = (0x02, 0xFF)
MAX_STRING = 255
MAX_LOOP_DEPTH = 10

INIT_S = 2.5
PLUNGER_INIT_S = 2.0
VALVE_INIT_S = 1.0
VALVE_STEP_S = 0.25
HALF_STEPS_PER_STROKE = 6000  # a full stroke is 6000 half-steps in every resolution mode

# Command characters with the operand each takes: (min, max) or None for no operand;
# "stroke" means 0..steps-per-stroke of the resolution in force. P and D take any count:
# whether the result stays within the stroke is known only when they run.
_NO_OPERAND = None
_RANGES: dict[str, tuple[int, int] | str | None] = {
    "Z": (0, 2), "Y": (0, 2), "W": (0, 2), "w": _NO_OPERAND,
    "A": "stroke", "a": "stroke", "P": (0, 999999), "D": (0, 999999), "p": (0, 999999),
    "d": (0, 999999),
    "V": (1, 6000), "v": (1, 1000), "c": (1, 2700), "S": (0, 40), "L": (1, 20),
    "N": (0, 2), "k": (0, 120), "M": (0, 30000), "g": _NO_OPERAND, "G": (0, 30000),
    "I": "valve", "O": "valve", "B": _NO_OPERAND, "E": _NO_OPERAND,
}
_OPTIONAL = {"Z", "Y", "W", "G"}  # operand may be omitted (default 0)
_PLUNGER = {"A", "P", "D", "a", "p", "d"}
_VALVE = {"I", "O", "B", "E"}
_INIT = {"Z", "Y", "W"}
_TIMED = _PLUNGER | _VALVE | _INIT | {"w", "M"}


def _speed_table() -> list[int]:
    """Preset speed codes S0..S40 in half-steps/s (S0 = 6000, S11 = 1400, S40 = 10).
    Codes 0-17 follow the vendor's table; 18-40 are a labctl interpolation down to 10."""
    head = [6000, 5600, 5000, 4400, 3800, 3200, 2600, 2200, 2000, 1800, 1600, 1400,
            1200, 1000, 800, 600, 400, 200]
    tail = [round(190 - (n - 18) * 180 / 22) for n in range(18, 41)]
    return head + tail


SPEED_CODES = _speed_table()


#: a vessel drawn dry by at most this many plunger steps lets the plunger finish, drawing
#: air (a real pump cannot tell a bubble at the bottom of a vial); a larger shortfall is
#: the empty-reservoir fault: the plunger stalls (error 9) where the liquid ran out.
AIR_TOLERANCE_STEPS = 3

class _Terminate(Exception):
    """`T` inside a string: the rest of it does not run."""


class _Fail(Exception):
    """A command string fails with a DT error code."""

    def __init__(self, code: int):
        self.code = code
        super().__init__(code)


@dataclass
class _Profile:
    """Trapezoid velocity profile of one plunger move, in half-steps and seconds."""

    distance: float
    v0: float
    vp: float
    vc: float
    accel: float
    t1: float
    t2: float
    t3: float

    @classmethod
    def plan(
        cls, distance: float, start: float, top: float, cutoff: float, accel: float
    ) -> _Profile:
        v0, vc = min(start, top), min(cutoff, top)
        if distance <= 0:
            return cls(0.0, v0, top, vc, accel, 0.0, 0.0, 0.0)
        d1 = (top * top - v0 * v0) / (2 * accel)
        d3 = (top * top - vc * vc) / (2 * accel)
        vp = top
        if d1 + d3 > distance:  # never reaches top speed: triangle
            vp = math.sqrt((2 * accel * distance + v0 * v0 + vc * vc) / 2)
        if vp < max(v0, vc):  # too short for any ramp: constant speed
            speed = max(v0, vc, 1.0)
            return cls(distance, speed, speed, speed, accel, 0.0, distance / speed, 0.0)
        t1 = (vp - v0) / accel
        t3 = (vp - vc) / accel
        d1 = (v0 + vp) / 2 * t1
        d3 = (vp + vc) / 2 * t3
        t2 = max(0.0, distance - d1 - d3) / vp
        return cls(distance, v0, vp, vc, accel, t1, t2, t3)

    @property
    def duration(self) -> float:
        return self.t1 + self.t2 + self.t3

    def travelled(self, t: float) -> float:
        """Half-steps covered `t` seconds after the start."""
        if t <= 0:
            return 0.0
        if t < self.t1:
            return min(self.distance, self.v0 * t + self.accel * t * t / 2)
        d1 = (self.v0 + self.vp) / 2 * self.t1
        if t < self.t1 + self.t2:
            return min(self.distance, d1 + self.vp * (t - self.t1))
        tau = t - self.t1 - self.t2
        if tau < self.t3:
            return min(self.distance, d1 + self.vp * self.t2 + self.vp * tau
                       - self.accel * tau * tau / 2)
        return self.distance


@dataclass
class _Move:
    start: int
    target: int
    t0: float
    profile: _Profile


Token = tuple[str, int | None]


def address_char(address: int | str | None) -> str:
    """Rotary switch value + 1 as a character: 1 -> '1' ... 15 -> '?'."""
    if address is None:
        return "1"
    if isinstance(address, str) and not address.isdigit():
        if len(address) == 1 and "1" <= address <= "?":
            return address
        raise ValueError(f"address must be 1..15 or a character '1'..'?', got {address!r}")
    n = int(address)
    if not 1 <= n <= 15:
        raise ValueError(f"address must be 1..15, got {n}")
    return chr(0x30 + n)


def group_chars(own: str) -> set[str]:
    """Group addresses a pump answers to silently: its pair, its quad and all pumps."""
    n = ord(own) - 0x30
    pair = chr(0x41 + 2 * ((n - 1) // 2))
    quad = chr(0x51 + 4 * ((n - 1) // 4))
    return {pair, quad, "_"}


class TriContinentSimulator(Simulator):
    kind: ClassVar[str] = "tricontinent-c3000"
    line: ClassVar[str] = "9600 8N1 (38400 by jumper), RS-232/RS-485, half duplex"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        opts = self.options
        addr = self.address if self.address is not None else opts.get("address")
        self.addr = address_char(addr)
        self.groups = group_chars(self.addr)
        self.firmware: str = str(opts.get("firmware", "C3000: 042517"))
        valve = str(opts.get("valve", "distribution")).lower()
        if valve not in ("distribution", "3-way", "4-way"):
            raise ValueError(f"valve must be distribution, 3-way or 4-way, got {valve!r}")
        self.valve_kind = valve
        self.n_ports = int(opts.get("ports", 6)) if valve == "distribution" else 0
        self.port_map: dict[str, str] = {str(k): str(v) for k, v in
                                         dict(opts.get("port_map") or {}).items()}
        self.syringe_l: float | None = None
        if opts.get("syringe_volume") is not None:
            vol, unit = parse_amount(opts["syringe_volume"])
            if unit != "L":
                raise ValueError(f"syringe_volume must be a volume, got {opts['syringe_volume']!r}")
            self.syringe_l = vol
        # pump state
        self.initialized = False
        self.mode = 0  # N0/N1/N2
        self.position = 0  # steps in the current mode
        self.valve: int | str = 1 if valve == "distribution" else "i"
        self.top_speed = 1400
        self.start_speed = 900
        self.cutoff_speed = 900
        self.slope = 14
        self.backlash = 24
        self.error = 0  # deferred error, reported (and cleared) by the next Q
        self.stored: str | None = None
        self.last_executed: str | None = None
        self.busy = False
        self.report_idle = False  # a/p/d moves report not busy
        self._run: asyncio.Task[None] | None = None
        self._move: _Move | None = None
        self._deferred_failure: int | None = None
        self._buf = bytearray()
        #: frames addressed to this pump or its groups (recent ones), bytes seen on the line
        self.received: deque[bytes] = deque(maxlen=1000)
        self.rx_bytes = 0
        if self.world is not None and self.syringe_l is not None:
            self.world.add_vessel(f"{self.name}.syringe", kind="syringe",
                                  capacity_l=self.syringe_l)

    # -- derived quantities -----------------------------------------------------------
    @property
    def stroke(self) -> int:
        return 3000 if self.mode == 0 else 24000

    def actual_position(self) -> int:
        mv = self._move
        if mv is None:
            return self.position
        done = mv.profile.travelled(self.clock.monotonic() - mv.t0)
        steps = round(done * self.stroke / HALF_STEPS_PER_STROKE)
        sign = 1 if mv.target >= mv.start else -1
        return mv.start + sign * min(steps, abs(mv.target - mv.start))

    def status_char(self, err: int) -> int:
        idle = not self.busy or self.report_idle
        return 0x40 | (0x20 if idle else 0) | (err & 0x0F)

    # -- bytes ------------------------------------------------------------------------
    def feed(self, data: bytes, reply: Reply) -> None:
        self.rx_bytes += len(data)
        self._buf.extend(data)
        while self._buf:
            head = self._buf[0]
            if head in OEM_STARTS:
                if not self._skip_oem():
                    return
                continue
            if head != ord("/"):
                del self._buf[0]  # line noise between frames
                continue
            cr = self._buf.find(b"\r")
            nxt = self._buf.find(b"/", 1)
            if 0 < nxt and (cr < 0 or nxt < cr):
                del self._buf[:nxt]  # an unterminated frame followed by a new one
                continue
            if cr < 0:
                if len(self._buf) > 2 * MAX_STRING:
                    self._buf.clear()
                return
            frame = bytes(self._buf[1:cr])
            del self._buf[: cr + 1]
            self._frame(frame, reply)

    def _skip_oem(self) -> bool:
        """Drop an OEM frame ([0xFF] STX … ETX checksum) silently; False while it is
        incomplete. A lone 0xFF, or an STX followed by a CR before any ETX, is line noise:
        only that byte goes, so a stray byte cannot make the pump deaf."""
        if self._buf[0] == 0xFF and len(self._buf) > 1 and self._buf[1] != 0x02:
            del self._buf[0]
            return True
        etx = self._buf.find(b"\x03", 1)
        cr = self._buf.find(b"\r", 1)
        if cr >= 0 and (etx < 0 or cr < etx):
            del self._buf[0]
            return True
        if etx >= 0 and len(self._buf) > etx + 1:
            del self._buf[: etx + 2]
            return True
        if len(self._buf) > 2 * MAX_STRING:
            del self._buf[0]
            return True
        return False

    def _frame(self, frame: bytes, reply: Reply) -> None:
        if not frame:
            return
        addr = chr(frame[0])
        if addr != self.addr and addr not in self.groups:
            return
        try:
            text = frame[1:].decode("ascii")
        except UnicodeDecodeError:
            text = "\x00"  # no command: answers error 2
        answer = addr == self.addr
        self.received.append(frame)
        if answer:
            injected = self.faults.take_error()
            if injected is not None:
                code = int(injected)
                if code in (1, 9, 10):
                    self.initialized = False
                self.send(reply, self._answer(code))
                return
        err, data = self.handle(text.replace(" ", ""))
        if answer:
            self.send(reply, self._answer(err, data))

    def _answer(self, err: int, data: str = "") -> bytes:
        return b"/0" + bytes([self.status_char(err)]) + data.encode("ascii") + ETX_CRLF

    # -- commands ---------------------------------------------------------------------
    def handle(self, cmd: str) -> tuple[int, str]:
        """One command string (spaces removed); returns (error code, data)."""
        if len(cmd) > MAX_STRING:
            return 15, ""
        report = cmd[:-1] if cmd.endswith("R") and cmd[:1] in ("Q", "?", "&", "F") else cmd
        if report in ("Q", "?29"):
            err, self.error = self.error, 0
            return err, ""
        if report == "":
            return 0, ""
        if report[0] in "?&F":
            return self._report(report)
        if cmd in ("T", "TR"):
            self.terminate()
            return 0, ""
        try:
            tokens = self.tokenize(cmd)
        except _Fail as exc:
            return exc.code, ""
        if self.busy:
            setters = [t for t in tokens if t[0] != "R"]
            if setters and all(c == "V" for c, _ in setters):
                try:
                    self._check(setters)
                except _Fail as exc:
                    return exc.code, ""
                for _, n in setters:
                    self.top_speed = int(n or 0)
                return 0, ""
            return 15, ""
        if cmd == "R":
            if self.stored is None:
                return 0, ""
            string, self.stored = self.stored, None
            return self._execute(string)
        if cmd in ("X", "XR"):
            if self.last_executed is None:
                return 0, ""
            return self._execute(self.last_executed)
        if any(c in "RXT" and n is not None for c, n in tokens):
            return 3, ""
        if any(c in "RX" for c, _ in tokens[:-1]) or tokens[-1][0] == "X":
            return 2, ""
        if tokens[-1][0] != "R":
            try:
                self._check(tokens, dynamic=False)
            except _Fail as exc:
                return exc.code, ""
            self.stored = cmd
            return 0, ""
        return self._execute(cmd[:-1])

    def tokenize(self, cmd: str) -> list[Token]:
        """Split into (command, operand); unknown characters are error 2."""
        tokens: list[Token] = []
        i = 0
        while i < len(cmd):
            c = cmd[i]
            if c not in _RANGES and c not in "RXT":
                raise _Fail(2)
            j = i + 1
            while j < len(cmd) and cmd[j].isdigit():
                j += 1
            digits = cmd[i + 1 : j]
            if len(digits) > 6:
                raise _Fail(3)
            tokens.append((c, int(digits) if digits else None))
            i = j
        return tokens

    def _check(self, tokens: list[Token], *, dynamic: bool = True) -> None:
        """Everything that fails before the string would run: raises _Fail with the code.
        With `dynamic`, also the relative moves up to the first timed command."""
        mode, valve, init = self.mode, self.valve, self.initialized
        pos: int | None = self.position if dynamic else None
        depth = 0
        for c, n in tokens:
            if c in "RXT":
                if n is not None:
                    raise _Fail(3)
                continue
            rng = _RANGES[c]
            if c == "I" or c == "O":
                if self.valve_kind == "distribution":
                    if n is None or not 1 <= n <= self.n_ports:
                        raise _Fail(3)
                elif n is not None:
                    raise _Fail(3)
            elif c in ("B", "E"):
                if self.valve_kind == "distribution" or (c == "E" and self.valve_kind == "3-way"):
                    raise _Fail(2)
                if n is not None:
                    raise _Fail(3)
            elif rng is None:
                if n is not None:
                    raise _Fail(3)
            elif n is None:
                if c not in _OPTIONAL:
                    raise _Fail(3)
            else:
                lo, hi = (0, 3000 if mode == 0 else 24000) if isinstance(rng, str) else rng
                if not lo <= n <= hi:
                    raise _Fail(3)
            if c == "g":
                depth += 1
                if depth > MAX_LOOP_DEPTH:
                    raise _Fail(3)
            elif c == "G":
                depth -= 1
                if depth < 0:
                    raise _Fail(3)
            elif c == "N":
                if pos is not None:
                    pos = pos * 8 if (mode == 0 and n) else (pos // 8 if (mode and not n) else pos)
                mode = int(n or 0)
            if c in _INIT:
                init = True
                valve = 1 if self.valve_kind == "distribution" else "i"
            elif c in _PLUNGER | _VALVE and not init and dynamic:
                raise _Fail(7)
            if c in _VALVE:
                valve = int(n) if n is not None else c.lower()
            if c in _PLUNGER and valve == "b" and dynamic:
                raise _Fail(11)
            if pos is not None and c in _PLUNGER:
                stroke = 3000 if mode == 0 else 24000
                target = self._target(c, int(n or 0), pos)
                if not 0 <= target <= stroke:
                    raise _Fail(3)
            if c in _TIMED:
                pos = None  # from here on the pump is busy: later failures are deferred
        if depth != 0:
            raise _Fail(3)

    @staticmethod
    def _target(c: str, n: int, pos: int) -> int:
        if c in "Aa":
            return n
        return pos + n if c in "Pp" else pos - n

    def _execute(self, string: str) -> tuple[int, str]:
        try:
            tokens = self.tokenize(string)
            self._check(tokens)
        except _Fail as exc:
            return exc.code, ""
        self.last_executed = string
        if not any(c in _TIMED for c, _ in tokens):
            self._run_instant(tokens)
            return 0, ""
        self.busy = True
        self._run = self.spawn(self._run_string(tokens))
        return 0, ""

    def _run_instant(self, tokens: list[Token]) -> None:
        for c, n in tokens:
            if c not in "gG":
                self._set(c, n)

    async def _run_string(self, tokens: list[Token]) -> None:
        try:
            await self._run_block(tokens)
        except _Terminate:
            pass
        except _Fail as exc:
            self.error = exc.code
            if exc.code in (1, 9, 10):
                self.initialized = False
        finally:
            if self._run is asyncio.current_task():  # not replaced after a `T`
                self.busy = False
                self.report_idle = False
                self._move = None
                self._run = None

    async def _run_block(self, tokens: list[Token]) -> None:
        i = 0
        while i < len(tokens):
            c, n = tokens[i]
            if c == "g":
                end = self._loop_end(tokens, i)
                count = tokens[end][1] or 0
                body = tokens[i + 1 : end]
                k = 0
                while count == 0 or k < count:
                    await self._run_block(body)
                    k += 1
                    if count == 0 and not any(t[0] in _TIMED for t in body):
                        await self.clock.sleep(0.01)  # an empty endless loop still yields
                i = end + 1
                continue
            await self._step(c, n)
            i += 1

    @staticmethod
    def _loop_end(tokens: list[Token], start: int) -> int:
        depth = 0
        for j in range(start, len(tokens)):
            if tokens[j][0] == "g":
                depth += 1
            elif tokens[j][0] == "G":
                depth -= 1
                if depth == 0:
                    return j
        raise _Fail(3)

    def _set(self, c: str, n: int | None) -> None:
        if c == "V":
            self.top_speed = int(n or 0)
        elif c == "v":
            self.start_speed = int(n or 0)
        elif c == "c":
            self.cutoff_speed = int(n or 0)
        elif c == "S":
            self.top_speed = SPEED_CODES[int(n or 0)]
        elif c == "L":
            self.slope = int(n or 0)
        elif c == "k":
            self.backlash = int(n or 0)
        elif c == "N":
            new = int(n or 0)
            if (self.mode == 0) != (new == 0):
                self.position = self.position * 8 if new else self.position // 8
            self.mode = new

    async def _step(self, c: str, n: int | None) -> None:
        if c in _INIT or c == "w":
            await self._initialize(c)
        elif c in _VALVE:
            await self._valve_move(c, n)
        elif c in _PLUNGER:
            await self._plunger_move(c, int(n or 0))
        elif c == "M":
            await self.clock.sleep((n or 0) / 1000)
        elif c == "T":
            raise _Terminate
        elif c not in "RX":
            self._set(c, n)

    def _take_failure(self, codes: tuple[int, ...]) -> int | None:
        code = self._deferred_failure
        if code is not None and (code in codes or code not in (1, 9, 10)):
            self._deferred_failure = None
            return code
        return None

    async def _initialize(self, c: str) -> None:
        """Z/Y home the valve (port 1, or input) and then the plunger; W the plunger only
        (through the port where the valve is), w the valve only."""
        await self.clock.sleep({"w": VALVE_INIT_S, "W": PLUNGER_INIT_S}.get(c, INIT_S))
        failure = self._take_failure((1,))
        if failure is not None:
            raise _Fail(failure)
        if c != "W":
            self.valve = 1 if self.valve_kind == "distribution" else "i"
        if c == "w":
            return
        if self.world is not None and self.syringe_l is not None:
            try:  # the plunger goes home: whatever is in the syringe leaves by the port
                self._world_dispense(self.world.volume_l(self._syringe), exact=True)
            except WorldFault:
                raise _Fail(1) from None
        self.position = 0
        self.initialized = True

    async def _valve_move(self, c: str, n: int | None) -> None:
        if not self.initialized:
            raise _Fail(7)
        if self.valve_kind == "distribution":
            port, cur = int(n or 1), int(self.valve)
            steps = (port - cur) % self.n_ports if c == "I" else (cur - port) % self.n_ports
            target: int | str = port
        else:
            target = c.lower()
            steps = 0 if target == self.valve else 1
        await self.clock.sleep(VALVE_STEP_S * steps)
        failure = self._take_failure((10,))
        if failure is not None:
            raise _Fail(failure)
        self.valve = target

    async def _plunger_move(self, c: str, n: int) -> None:
        if not self.initialized:
            raise _Fail(7)
        if self.valve == "b":
            raise _Fail(11)
        start = self.position
        target = self._target(c, n, start)
        if not 0 <= target <= self.stroke:
            raise _Fail(3)
        failure = self._take_failure((9,))
        stall = self.faults.take_stall() or failure == 9
        stop_at = target
        if stall:
            stop_at = start + (target - start) // 2
        world_fail = self._world_limit(start, stop_at)
        if world_fail is not None:
            stop_at, stall = world_fail, True
        half_steps = abs(stop_at - start) * HALF_STEPS_PER_STROKE / self.stroke
        profile = _Profile.plan(half_steps, self.start_speed, self.top_speed,
                                self.cutoff_speed, self.slope * 2500.0)
        self._move = _Move(start, stop_at, self.clock.monotonic(), profile)
        self.report_idle = c.islower()
        try:
            await self.clock.sleep(profile.duration)
        except asyncio.CancelledError:
            if self._move is not None:
                self._finish_move(self.actual_position())
            raise
        self._finish_move(stop_at)
        self.report_idle = False
        if failure is not None and failure != 9:
            raise _Fail(failure)
        if stall:
            raise _Fail(9)

    def _finish_move(self, reached: int) -> None:
        start = self.position
        self._move = None
        self.position = reached
        if self.world is None or self.syringe_l is None or reached == start:
            return
        volume = abs(reached - start) * self.syringe_l / self.stroke
        try:
            if reached > start:
                self._world_aspirate(volume)
            else:
                self._world_dispense(volume)
        except WorldFault:  # checked before the move; a concurrent change is not modelled
            pass

    # -- the simulated world ----------------------------------------------------------
    @property
    def _syringe(self) -> str:
        return f"{self.name}.syringe"

    def _port_key(self) -> str:
        if isinstance(self.valve, int):
            return str(self.valve)
        return {"i": "input", "o": "output", "b": "bypass", "e": "extra"}[self.valve]

    def _port_vessel(self) -> str | None:
        key = self._port_key()
        return self.port_map.get(key) or self.port_map.get(key[:1])

    def _drain(self) -> str:
        assert self.world is not None
        self.world.add_vessel(f"{self.name}.drain", kind="waste", capacity_l=1e3)
        return f"{self.name}.drain"

    def _world_aspirate(self, volume: float) -> None:
        """Liquid in; the last bit of a vessel drawn dry is air (see AIR_TOLERANCE_STEPS)."""
        vessel = self._port_vessel()
        if vessel is not None and self.world is not None:
            volume = min(volume, self.world.volume_l(vessel))
            self.world.move_volume(vessel, self._syringe, volume)

    def _liquid_out(self, volume: float) -> float:
        """Liquid leaving for a plunger displacement of `volume`: air in the barrel goes
        first, so the syringe keeps as much liquid as still fits."""
        assert self.world is not None and self.syringe_l is not None
        liquid = self.world.volume_l(self._syringe)
        remaining = max(0.0, self.position * self.syringe_l / self.stroke)
        return max(0.0, liquid - remaining) if volume > 0 else 0.0

    def _world_dispense(self, volume: float, *, exact: bool = False) -> None:
        assert self.world is not None
        out = volume if exact else self._liquid_out(volume)
        if out <= 0:
            return
        dest = self._port_vessel() or self._drain()
        self.world.move_volume(self._syringe, dest, out)

    def _world_limit(self, start: int, target: int) -> int | None:
        """Where the plunger stalls for lack of liquid or room (None: it does not)."""
        if self.world is None or self.syringe_l is None or target == start:
            return None
        per_step = self.syringe_l / self.stroke
        volume = abs(target - start) * per_step
        vessel = self._port_vessel()
        try:
            if target > start:
                if vessel is None:
                    return None
                if self.world.frozen(vessel):
                    return start  # a solid in the reservoir: the plunger cannot draw
                available = self.world.volume_l(vessel)
                if volume <= available + AIR_TOLERANCE_STEPS * per_step:
                    return None
                return start + int(available / per_step)
            liquid = self.world.volume_l(self._syringe)
            after = target * per_step
            out = max(0.0, liquid - after)
            if out <= 0:
                return None
            dest = vessel or self._drain()
            room = self.world.vessel(dest).capacity_l - self.world.volume_l(dest)
            if out <= room * (1 + 1e-9) + 1e-12:
                return None
            # liquid out at plunger position p is liquid - p * per_step: stall where it
            # would exceed the room left
            return min(start, math.ceil((liquid - room) / per_step - 1e-9))
        except WorldFault:
            return start

    # -- reports and terminate ----------------------------------------------------------
    def _report(self, report: str) -> tuple[int, str]:
        if report == "&":
            return 0, self.firmware
        if report == "F":
            return 0, "1" if self.stored else "0"
        if report[0] != "?":
            return 2, ""
        digits = report[1:]
        if not digits.isdigit() and digits != "":
            return 2, ""
        num = int(digits) if digits else 0
        valve = str(self.valve)
        values = {
            0: str(self.position if self._move is None else self._move.target),
            1: str(self.start_speed), 2: str(self.top_speed), 3: str(self.cutoff_speed),
            4: str(self.actual_position()), 6: valve,
            10: "1" if self.stored else "0", 19: "1" if self.initialized else "0",
            23: self.firmware, 24: str(self.backlash),
        }
        if num not in values:
            return 3, ""
        return 0, values[num]

    def terminate(self) -> None:
        """`T`: stop the running string at once; the plunger stays where it is."""
        run, self._run = self._run, None
        if self._move is not None:
            self._finish_move(self.actual_position())
        self.busy = False
        self.report_idle = False
        if run is not None:
            run.cancel()

    def inject_deferred(self, code: int) -> None:
        """Test hook: the next executed string fails with `code` while it runs (1 during an
        initialisation, 9 during a plunger move, 10 during a valve move, others at the first
        timed step)."""
        self._deferred_failure = code

    # -- views ------------------------------------------------------------------------
    def saved_state(self) -> dict[str, Any]:
        """Initialisation, plunger and valve: a pump keeps them while the host restarts
        (the liquid in its syringe is in the world)."""
        return {"initialized": self.initialized, "mode": self.mode,
                "position": self.actual_position(), "valve": self.valve}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.initialized = bool(state.get("initialized", self.initialized))
        self.mode = int(state.get("mode", self.mode))
        self.position = int(state.get("position", self.position))
        valve = state.get("valve", self.valve)
        self.valve = valve if isinstance(valve, str) else int(valve)

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "address": self.addr, "initialized": self.initialized, "busy": self.busy,
            "position": self.actual_position(), "stroke": self.stroke, "mode": self.mode,
            "valve": self.valve, "top_speed": self.top_speed, "error": self.error,
            "stored": self.stored,
        }
        if self.syringe_l is not None:
            snap["plunger_volume_l"] = self.actual_position() * self.syringe_l / self.stroke
        if self.world is not None and self.syringe_l is not None:
            snap["syringe_liquid_l"] = self.world.volume_l(self._syringe)
        return snap

    def is_safe(self) -> bool:
        return not self.busy
