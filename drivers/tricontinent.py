"""TriContinent C-series (C3000) syringe pump over the DT protocol.

Written from shared/protocols/tricontinent-c-series.md. One command string per exchange:
`/` + address character + string + CR; the answer is `/0` + status + data + ETX CR LF.
Several pumps share one RS-485 line: they share a `Link` (from the `LinkPool`) and each
exchange holds `link.lock`.

Addressing: the config's `address` is 1..15 and is sent as the character chr(0x30 + address),
so address 1 is the protocol's character '1' (rotary switch 0) and 15 is '?' (switch E).

Configuration (`params`): `syringe_volume` ("5 mL"), `resolution` (0: 3000 steps per stroke;
1 or 2: 24000), `valve` ("distribution" with `ports` = n, or "3-way" / "4-way" giving the
ports input/output/bypass(/extra)), `port_map`, `init_force` (0 full, 1 half, 2 one third, or
"full"/"half"/"third"), `init_direction` ("Z": output right, "Y": output left), `top_speed`
(half-steps/s used when no flow is given; default 1400), `serial` (from the pump's label:
the DT protocol has no serial-number report). Limits: `max_flow`.

Errors: an answer's error code is raised at once (immediate errors); an error found by the
`Q` polls of `wait_idle` (deferred: it arose while the string ran) is raised from the call
that waited. Codes map to: 2, 4 -> ProtocolError; 7 -> NotInitialized; 15 -> DeviceBusy;
1, 3, 6, 8, 9, 10, 11 (and unknown codes) -> DeviceFault carrying the code and the vendor
text. Errors 1, 9 and 10 leave the pump uninitialised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from labctl.capabilities.syringe_pump import SyringePump
from labctl.clock import Clock
from labctl.device import DeviceInfo, DeviceSpec, DeviceState, DeviceStatus
from labctl.errors import (
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    LimitError,
    NotInitialized,
    ProtocolError,
    Stalled,
)
from labctl.transport import Link, LinkPool, SerialSettings
from labctl.units import fmt, to

ERROR_TEXT: dict[int, str] = {
    1: "initialization failure",
    2: "invalid command",
    3: "invalid operand",
    4: "invalid checksum",
    6: "EEPROM failure",
    7: "device not initialized",
    8: "CAN failure",
    9: "plunger overload",
    10: "valve overload",
    11: "plunger move not allowed (valve in bypass)",
    15: "command overflow",
}
UNINITIALIZING = (1, 9, 10)
HALF_STEPS_PER_STROKE = 6000  # V and friends count half-steps; a stroke is 6000 of them
DEFAULT_TOP_SPEED = 1400
MAX_TOP_SPEED = 6000
INIT_TIME_S = 2.5
VALVE_STEP_S = 0.25
FORCES = {"full": 0, "half": 1, "third": 2, "one third": 2}
VALVE_PORTS = {"3-way": ["input", "output", "bypass"],
               "4-way": ["input", "output", "bypass", "extra"]}
VALVE_LETTERS = {"input": "I", "output": "O", "bypass": "B", "extra": "E"}
VALVE_NAMES = {"i": "input", "o": "output", "b": "bypass", "e": "extra"}


def error_for(code: int, device: str, context: str = "") -> DeviceError:
    """The labctl exception of a DT error code."""
    text = ERROR_TEXT.get(code, "unknown error")
    where = f"{context}: " if context else ""
    if code in (2, 4):
        return ProtocolError(f"{where}pump answered error {code} ({text})", device=device)
    if code == 7:
        return NotInitialized(f"{where}pump is not initialized", device=device, code=code,
                              vendor_text=text)
    if code == 9:
        return Stalled(f"{where}{text}: the plunger stalled (an empty or frozen reservoir, "
                       "a blocked line)", device=device, code=code, vendor_text=text)
    if code == 15:
        return DeviceBusy(f"{where}pump is busy and refused the command (error 15, {text})",
                          device=device)
    return DeviceFault(f"{where}{text}", device=device, code=code, vendor_text=text)


def address_char(address: int | str | None) -> bytes:
    """Config address 1..15 -> the DT address character '1'..'?'."""
    if isinstance(address, str) and address.strip().isdigit():
        address = int(address)
    if not isinstance(address, int) or not 1 <= address <= 15:
        raise LimitError(f"address must be an integer 1..15, got {address!r}",
                         parameter="address", value=address, limit="1..15")
    return bytes([0x30 + address])


def group_char_for(addresses: Sequence[int]) -> str:
    """The smallest group address reaching every given pump: its pair, quad, or all ('_')."""
    pairs = {chr(0x41 + 2 * ((a - 1) // 2)) for a in addresses}
    if len(pairs) == 1:
        return pairs.pop()
    quads = {chr(0x51 + 4 * ((a - 1) // 4)) for a in addresses}
    if len(quads) == 1:
        return quads.pop()
    return "_"


def group_members(group: str) -> set[int]:
    """Addresses (1..15) a group character reaches."""
    if group == "_":
        return set(range(1, 16))
    code = ord(group)
    if group in "ACEGIKMO":
        first = (code - 0x41) + 1
        return {a for a in (first, first + 1) if a <= 15}
    if group in "QUY]":
        first = (code - 0x51) + 1
        return {a for a in range(first, first + 4) if a <= 15}
    raise LimitError(f"{group!r} is no group address (pairs ACEGIKMO, quads QUY], all _)",
                     parameter="group", value=group)


@dataclass(frozen=True)
class Answer:
    """One decoded DT answer."""

    status: int
    data: str

    @property
    def busy(self) -> bool:
        return not self.status & 0x20

    @property
    def error(self) -> int:
        return self.status & 0x0F


def parse_answer(frame: bytes, device: str) -> Answer:
    """`/0<status>[data]ETX` -> Answer. A reply cut short and followed by a whole one leaves
    two starts in the frame: the last one is the real answer."""
    start = frame.rfind(b"/0")
    body = frame[start + 2 :]
    if body.endswith(b"\x03"):
        body = body[:-1]
    if not body:
        raise ProtocolError(f"answer without status: {frame!r}", device=device)
    status = body[0]
    if status & 0xD0 != 0x40:
        raise ProtocolError(f"bad status byte 0x{status:02x} in {frame!r}", device=device)
    try:
        data = body[1:].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"non-ASCII data in {frame!r}", device=device) from None
    return Answer(status, data)


class TriContinentPump(SyringePump):
    """A C3000 (or C-series) pump on a DT line. See the module docstring for params."""

    protocol: ClassVar[str] = "TriContinent C-series DT"
    default_serial: ClassVar[SerialSettings] = SerialSettings(baudrate=9600)
    #: query retries after a lost or garbled answer (commands are never repeated: a move
    #: whose answer was lost may have run)
    query_retries: ClassVar[int] = 1

    @classmethod
    def config_problems(cls, name: str, address: Any, params: dict[str, Any],
                        limits: dict[str, Any]) -> list[tuple[str, str]]:
        """Address 1..15, the syringe, resolution, valve kind and its ports, init options."""
        base = f"devices.{name}"
        out: list[tuple[str, str]] = []
        try:
            address_char(address)
        except LimitError as exc:
            out.append((f"{base}.address", exc.message))
        if "syringe_volume" not in params:
            out.append((f"{base}.params.syringe_volume",
                        "required: the volume of the fitted syringe, e.g. '5 mL'"))
        res = params.get("resolution", 0)
        if isinstance(res, bool) or res not in (0, 1, 2):
            out.append((f"{base}.params.resolution", f"must be 0, 1 or 2, got {res!r}"))
        valve = str(params.get("valve", "distribution")).lower()
        if valve != "distribution" and valve not in VALVE_PORTS:
            out.append((f"{base}.params.valve",
                        f"must be distribution, 3-way or 4-way, got {valve!r}"))
        elif valve in VALVE_PORTS:
            for port in dict(params.get("port_map") or {}):
                if str(port) not in VALVE_PORTS[valve]:
                    out.append((f"{base}.params.port_map.{port}",
                                f"a {valve} valve has the ports "
                                f"{', '.join(VALVE_PORTS[valve])}"))
        force = params.get("init_force", 0)
        if not (isinstance(force, str) and force.lower() in FORCES) and (
                isinstance(force, bool) or force not in (0, 1, 2)):
            out.append((f"{base}.params.init_force",
                        f"must be 0, 1, 2 or full/half/third, got {force!r}"))
        if str(params.get("init_direction", "Z")).upper() not in ("Z", "Y"):
            out.append((f"{base}.params.init_direction",
                        f"must be Z or Y, got {params.get('init_direction')!r}"))
        speed = params.get("top_speed", DEFAULT_TOP_SPEED)
        if isinstance(speed, int) and not isinstance(speed, bool) and speed > MAX_TOP_SPEED:
            out.append((f"{base}.params.top_speed",
                        f"must be at most {MAX_TOP_SPEED} half-steps/s, got {speed}"))
        return out

    def __init__(self, spec: DeviceSpec, *, links: LinkPool | None = None,
                 clock: Clock | None = None):
        super().__init__(spec, links=links, clock=clock)
        p = spec.params
        self.addr = address_char(spec.address)
        self.address = self.addr[0] - 0x30
        if "syringe_volume" not in p:
            raise LimitError("params.syringe_volume is required", device=self.name,
                             parameter="syringe_volume")
        self._syringe_l = to(p["syringe_volume"], "L")
        self.resolution = int(p.get("resolution", 0))
        if self.resolution not in (0, 1, 2):
            raise LimitError(f"resolution must be 0, 1 or 2, got {self.resolution}",
                             device=self.name, parameter="resolution", value=self.resolution)
        self.stroke_steps = 3000 if self.resolution == 0 else 24000
        self.valve_kind = str(p.get("valve", "distribution")).lower()
        if self.valve_kind == "distribution":
            self.n_ports = int(p.get("ports", 6))
            self._ports = [str(i) for i in range(1, self.n_ports + 1)]
        elif self.valve_kind in VALVE_PORTS:
            self.n_ports = 0
            self._ports = list(VALVE_PORTS[self.valve_kind])
        else:
            raise LimitError(f"valve must be distribution, 3-way or 4-way, got {self.valve_kind!r}",
                             device=self.name, parameter="valve", value=self.valve_kind)
        force = p.get("init_force", 0)
        self.init_force = FORCES[force.lower()] if isinstance(force, str) else int(force)
        if self.init_force not in (0, 1, 2):
            raise LimitError(f"init_force must be 0, 1 or 2, got {force!r}", device=self.name,
                             parameter="init_force", value=force)
        self.init_direction = str(p.get("init_direction", "Z")).upper()
        if self.init_direction not in ("Z", "Y"):
            raise LimitError(f"init_direction must be Z or Y, got {self.init_direction!r}",
                             device=self.name, parameter="init_direction")
        self.top_speed = int(p.get("top_speed", DEFAULT_TOP_SPEED))
        self.max_flow_l_s = self.limit("max_flow", "L/s")
        self.poll_s = 0.1  # simulated seconds between `Q` polls (at least 2 ms of wall time)
        self._position: int | None = None  # steps, as last known
        self._valve: str | None = None
        #: strings started (and stops): a status read across one of them is not what the
        #: pump holds afterwards, so it must not replace what that string's end recorded
        self._strings = 0
        self._initialized: bool | None = None
        self._fault: str | None = None

    # -- configuration views ---------------------------------------------------------
    @property
    def syringe_volume_l(self) -> float:
        return self._syringe_l

    @property
    def ports(self) -> list[str]:
        return list(self._ports)

    def steps_for(self, volume_l: float) -> int:
        return round(volume_l / self._syringe_l * self.stroke_steps)

    def volume_for(self, steps: int) -> float:
        return steps * self._syringe_l / self.stroke_steps

    def speed_for(self, flow_l_s: float | None) -> int:
        """Top speed (half-steps/s) for a flow; LimitError outside the pump's and the
        configured range."""
        if flow_l_s is None:
            return self.top_speed
        self.check_range("flow", flow_l_s, 0.0, self.max_flow_l_s, "L/s")
        speed = round(flow_l_s / self._syringe_l * HALF_STEPS_PER_STROKE)
        lo = self._syringe_l / HALF_STEPS_PER_STROKE
        hi = self._syringe_l * MAX_TOP_SPEED / HALF_STEPS_PER_STROKE
        if not 1 <= speed <= MAX_TOP_SPEED:
            self.check_range("flow", flow_l_s, lo, hi, "L/s")
        return max(1, min(MAX_TOP_SPEED, speed))

    # -- wire ------------------------------------------------------------------------
    def frame(self, command: str) -> bytes:
        return b"/" + self.addr + command.encode("ascii") + b"\r"

    async def exchange(self, command: str, *, timeout: float | None = None) -> Answer:
        """Send one string and read its answer (holding the bus lock). Does not raise on
        the answer's error code."""
        link = self.open_link()
        async with link.lock:
            link.reset_input()
            await link.write(self.frame(command))
            raw = await link.read_frame(b"/0", b"\x03", timeout or self.spec.timeout_s)
        return parse_answer(raw, self.name)

    async def query(self, command: str) -> Answer:
        """A report or `Q`: retried after a lost or garbled answer, raises its error code."""
        last: DeviceError | None = None
        for _ in range(self.query_retries + 1):
            try:
                answer = await self.exchange(command)
            except (DeviceTimeout, ProtocolError) as exc:
                last = exc
                continue
            if answer.error and command not in ("Q", "?29"):
                raise error_for(answer.error, self.name, command)
            return answer
        assert last is not None
        raise last

    async def command(self, command: str) -> Answer:
        """A command string (executed when it ends in R); raises the immediate error."""
        answer = await self.exchange(command)
        if answer.error:
            self._note_error(answer.error)
            raise error_for(answer.error, self.name, command)
        return answer

    def _note_error(self, code: int) -> None:
        self._fault = f"error {code}: {ERROR_TEXT.get(code, 'unknown error')}"
        if code in UNINITIALIZING:
            self._initialized = False
        self._position = None

    async def poll(self) -> Answer:
        """`Q`; a deferred error in it is raised (and the pump's state noted)."""
        answer = await self.query("Q")
        if answer.error:
            self._note_error(answer.error)
            raise error_for(answer.error, self.name, "while running")
        return answer

    async def wait_idle(self, expected_s: float = 10.0) -> None:
        """Poll `Q` on the clock until idle; raises the deferred error if the string failed.
        Gives up (DeviceTimeout) after three times the expected duration plus 10 s, in
        simulated time, and never before 10 s of wall time."""
        clock = self.clock
        deadline = clock.monotonic() + 3 * expected_s + 10.0
        wall_deadline = time.monotonic() + 10.0
        interval = max(self.poll_s, 0.002 * clock.time_scale)
        while True:
            answer = await self.poll()
            if not answer.busy:
                return
            if clock.monotonic() > deadline and time.monotonic() > wall_deadline:
                raise DeviceTimeout(f"still busy after {3 * expected_s + 10:g} s",
                                    device=self.name)
            await clock.sleep(interval)

    async def run(self, string: str, expected_s: float) -> None:
        """Execute a string (R appended) and wait until the pump is idle again."""
        self._strings += 1
        await self.command(string + "R")
        await self.wait_idle(expected_s)

    # -- life cycle ------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the (shared) link and check that the pump answers `Q`."""
        link = self.open_link()
        async with link.lock:  # pumps of one bus connect concurrently: open the line once
            await link.open()
        try:
            answer = await self.query("Q")
        except DeviceTimeout as exc:
            raise DeviceTimeout(f"no answer at address {self.address} "
                                f"({self.addr.decode()!r}): {exc.message}",
                                device=self.name) from exc
        if answer.error:
            self._note_error(answer.error)
        self._initialized = (await self.query("?19")).data.strip() == "1"

    async def identify(self) -> DeviceInfo:
        """Model and firmware from `?23` (e.g. 'C3000: 042517'). The DT protocol reports no
        serial number: `params.serial` (from the pump's label) is used when configured."""
        text = (await self.query("?23")).data.strip()
        model, sep, firmware = text.partition(":")
        info = DeviceInfo(
            model=f"TriContinent {model.strip()}" if sep else "TriContinent C-series",
            serial=str(self.spec.params.get("serial", "")),
            firmware=firmware.strip() if sep else text,
            vendor="TriContinent",
        )
        self.info = info
        return info

    async def status(self) -> DeviceStatus:
        """State (busy/idle, fault after a deferred error), plunger volume, valve port and
        whether the pump is initialised."""
        strings = self._strings
        answer = await self.query("Q")
        if answer.error:
            self._note_error(answer.error)
        position = await self._report_steps()
        valve = self._valve_name((await self.query("?6")).data)
        initialized = (await self.query("?19")).data.strip() == "1"
        self._initialized = initialized
        # Each query is an exchange of its own: a run's string may have moved the plunger
        # or the valve between them (a status poll beside a transfer). What was read is
        # then already old, and the string's end recorded where the pump is now.
        if not answer.busy and self._strings == strings:
            self._position, self._valve = position, valve
        state = DeviceState.BUSY if answer.busy else DeviceState.IDLE
        if answer.error:
            state = DeviceState.FAULT
        return DeviceStatus(
            state=state,
            readings={
                "plunger_volume_l": self.volume_for(position),
                "plunger_steps": position,
                "valve_port": valve,
                "initialized": initialized,
            },
            fault=self._fault if answer.error else None,
        )

    def _valve_name(self, data: str) -> str:
        data = data.strip()
        return VALVE_NAMES.get(data, data)

    # -- actions ---------------------------------------------------------------------
    async def initialize(self) -> None:
        """Home plunger and valve (Z or Y with the configured force), in the configured
        resolution mode."""
        await self.run(f"N{self.resolution}{self.init_direction}{self.init_force}", INIT_TIME_S)
        self._initialized, self._position, self._fault = True, 0, None
        self._valve = "1" if self.valve_kind == "distribution" else "input"

    def _valve_string(self, port: str) -> tuple[str, float]:
        """The valve command for a port (the shorter way round on a distribution valve)."""
        if self.valve_kind != "distribution":
            return VALVE_LETTERS[port], VALVE_STEP_S
        n = int(port)
        if self._valve is None or not self._valve.isdigit():
            return f"I{n}", VALVE_STEP_S * self.n_ports
        cur = int(self._valve)
        cw, ccw = (n - cur) % self.n_ports, (cur - n) % self.n_ports
        return (f"I{n}", VALVE_STEP_S * cw) if cw <= ccw else (f"O{n}", VALVE_STEP_S * ccw)

    async def set_valve(self, port: str) -> None:
        """Turn the valve to a port ("1".."n", "input"...) or the port a vessel is on."""
        name = self.port_for(str(port))
        string, expected = self._valve_string(name)
        self._valve = None
        await self.run(string, expected)
        self._valve = name

    async def _position_steps(self) -> int:
        if self._position is None:
            self._position = await self._report_steps()
        return self._position

    async def _report_steps(self) -> int:
        """The absolute plunger position (`?`); a non-numeric report is a protocol error."""
        data = (await self.query("?")).data
        try:
            return int(data)
        except ValueError:
            raise ProtocolError(f"plunger position report {data!r} is not a number",
                                device=self.name) from None

    def _move_time(self, steps: int, speed: int) -> float:
        return steps * HALF_STEPS_PER_STROKE / self.stroke_steps / speed

    def _check_volume(self, volume_l: float) -> int:
        self.check_range("volume", volume_l, 0.0, self._syringe_l, "L")
        return self.steps_for(volume_l)

    async def aspirate(self, volume_l: float, *, flow_l_s: float | None = None) -> None:
        """Pick up `volume_l` (P) through the current port at `flow_l_s`."""
        steps = self._check_volume(volume_l)
        speed = self.speed_for(flow_l_s)
        position = await self._position_steps()
        room = self.stroke_steps - position
        if steps > room:
            raise LimitError(
                f"volume {fmt(volume_l, 'L')} exceeds the room left in the syringe "
                f"({fmt(self.volume_for(room), 'L')})",
                device=self.name, parameter="volume", value=volume_l,
                limit=self.volume_for(room),
            )
        await self._plunger(f"V{speed}P{steps}", position + steps, self._move_time(steps, speed))

    async def dispense(self, volume_l: float, *, flow_l_s: float | None = None) -> None:
        """Dispense `volume_l` (D) through the current port at `flow_l_s`."""
        steps = self._check_volume(volume_l)
        speed = self.speed_for(flow_l_s)
        position = await self._position_steps()
        if steps > position:
            raise LimitError(
                f"volume {fmt(volume_l, 'L')} exceeds the syringe content "
                f"({fmt(self.volume_for(position), 'L')})",
                device=self.name, parameter="volume", value=volume_l,
                limit=self.volume_for(position),
            )
        await self._plunger(f"V{speed}D{steps}", position - steps, self._move_time(steps, speed))

    async def move_to(self, volume_l: float, *, flow_l_s: float | None = None) -> None:
        """Move the plunger to an absolute volume in the syringe (A)."""
        steps = self._check_volume(volume_l)
        speed = self.speed_for(flow_l_s)
        position = await self._position_steps()
        await self._plunger(f"V{speed}A{steps}", steps,
                            self._move_time(abs(steps - position), speed))

    async def _plunger(self, string: str, target: int, expected_s: float) -> None:
        self._position = None
        await self.run(string, expected_s)
        self._position = target

    async def plunger_volume_l(self) -> float:
        """Volume in the syringe, from the pump's plunger position (`?`)."""
        strings = self._strings
        position = await self._report_steps()
        if self._strings == strings:  # no string moved it meanwhile (see status)
            self._position = position
        return self.volume_for(position)

    async def set_speed(self, top_speed: int) -> None:
        """Top speed in half-steps/s (accepted while busy)."""
        self.check_range("top_speed", top_speed, 1, MAX_TOP_SPEED, "1/s")
        await self.command(f"V{top_speed}R")

    async def stop(self) -> None:
        """Terminate the running string (`T`): the plunger stops where it is."""
        self._strings += 1
        answer = await self.exchange("T")
        self._position = None
        if answer.error and answer.error != 7:
            self._note_error(answer.error)
            raise error_for(answer.error, self.name, "T")

    async def safe_state(self) -> None:
        """Terminate any move. On a dead link this raises a DeviceError saying the safe
        state could not be confirmed (never another kind of exception, never a hang)."""
        last: Exception | None = None
        for _ in range(3):  # T is harmless to repeat: a lost or garbled answer is retried
            try:
                await self.stop()
                return
            except (DeviceTimeout, ProtocolError, OSError) as exc:
                last = exc
            except DeviceError as exc:
                raise DeviceError(f"safe state not confirmed (T not acknowledged): "
                                  f"{exc.message}", device=self.name) from exc
        text = last.message if isinstance(last, DeviceError) else str(last)
        raise DeviceError(f"safe state not confirmed (T not acknowledged): {text}",
                          device=self.name) from last

    @classmethod
    async def initialize_group(
        cls, pumps: Sequence[TriContinentPump], group: str | None = None
    ) -> None:
        """Initialise several pumps of one bus with one group-addressed string (no pump
        answers a group address), then poll each member until it is idle. `group` defaults
        to the smallest pair/quad/all group reaching every pump; note that a group also
        reaches pumps of its range that are not listed."""
        await initialize_group(pumps, group)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["address_char"] = self.addr.decode()
        return out


async def initialize_group(pumps: Sequence[TriContinentPump], group: str | None = None) -> None:
    """See `TriContinentPump.initialize_group`."""
    if not pumps:
        return
    links = {id(p.open_link()) for p in pumps}
    if len(links) != 1:
        raise LimitError("group initialisation needs pumps on one bus (one link)",
                         parameter="pumps", value=[p.name for p in pumps])
    addresses = [p.address for p in pumps]
    group = group or group_char_for(addresses)
    missing = set(addresses) - group_members(group)
    if missing:
        raise LimitError(f"group {group!r} does not reach address(es) {sorted(missing)}",
                         parameter="group", value=group)
    first = pumps[0]
    link: Link = first.open_link()
    force = {p.init_force for p in pumps}
    direction = {p.init_direction for p in pumps}
    resolution = {p.resolution for p in pumps}
    if len(force) > 1 or len(direction) > 1 or len(resolution) > 1:
        raise LimitError("pumps initialised together need the same init force, direction "
                         "and resolution", parameter="pumps")
    string = f"N{resolution.pop()}{direction.pop()}{force.pop()}R"
    async with link.lock:
        link.reset_input()
        await link.write(b"/" + group.encode("ascii") + string.encode("ascii") + b"\r")
    errors: list[DeviceError] = []

    async def settle(pump: TriContinentPump) -> None:
        try:
            await pump.wait_idle(INIT_TIME_S)
            if (await pump.query("?19")).data.strip() != "1":  # a refused group string is silent
                raise NotInitialized("group initialisation did not take effect",
                                     device=pump.name, code=7)
        except DeviceError as exc:
            errors.append(exc)
            return
        pump._initialized, pump._position, pump._fault = True, 0, None
        pump._valve = "1" if pump.valve_kind == "distribution" else "input"

    await asyncio.gather(*(settle(p) for p in pumps))
    if errors:
        raise errors[0]
