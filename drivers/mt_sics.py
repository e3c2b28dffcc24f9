"""Mettler Toledo balances over MT-SICS, and the Quantos powder dosing subset (QB1).

Written from shared/protocols/mettler-mt-sics.md. Every reply is `<command> <status>
[values]` CR LF or one of the bare errors `ES`/`ET`/`EL`; `parse_reply` and `raise_for`
below are the one place that turns those into values and labctl exceptions, for both the
balance and the dispenser:

| reply | exception |
|---|---|
| `ES` (command not understood), `ET` (transmission error) | ProtocolError (ET retried) |
| `EL` (logical error), `L` (parameter not allowed) | DeviceFault |
| `I` (cannot execute now) | DeviceBusy (`S I`/`Z I`/`T I` are retried until a deadline) |
| `+` / `-` (overload / underload, outside the zero range) | DeviceFault |
| Quantos `I <n>` | 2: DeviceBusy; 1, 3–7: DeviceFault with the code and its text |

Weights are always grams (`M21 0 0` at connect where the balance knows it; otherwise
kg/mg replies are converted). Connecting never sends `@`: MT-SICS `@` resets the balance as
after switching on, clearing the tare (and cancelling a Quantos action), so a host that
reconnects after its own crash would erase the reference of an addition under way and read
the gross mass as the addition. Connect sends `I4` instead: any command ends a running `SIR`,
and lines of other commands are skipped until its answer.

A Quantos dose: door closed, tare (its value, the gross mass before the dose, is handed to
the host first), `QRD 1 1 5` target (mg), `QRD 1 1 6` tolerance (%), `QRA 61 1` (`B` at
once, `A` or `I <n>` when it ends: awaited on the bench clock with a generous budget,
without holding the line so `stop()` can get through), then `SI`: after the tare the net
weight is the dosed mass. After a crash of the host, `landed_since(reference)` (stable net +
`TA`, minus the gross mass before the dose) tells what landed, tare kept or not.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from labctl.capabilities.balance import Balance
from labctl.capabilities.dispenser import Dispenser
from labctl.clock import Deadline
from labctl.device import DeviceInfo, DeviceState, DeviceStatus
from labctl.errors import (
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    LimitError,
    ProtocolError,
)
from labctl.transport import SerialSettings
from labctl.units import to

log = logging.getLogger("labctl.drivers.mt_sics")

CRLF = b"\r\n"
_TOKENS = re.compile(r'"[^"]*"|\S+')
BARE_ERRORS = {"ES": "syntax error (command not understood)", "ET": "transmission error",
               "EL": "logical error"}
STATUS_TEXT = {"I": "cannot execute now", "L": "parameter not allowed",
               "+": "overload (upper limit exceeded)", "-": "underload (lower limit exceeded)"}
UNIT_TO_G = {"g": 1.0, "mg": 1e-3, "kg": 1e3, "ug": 1e-6}
QUANTOS_CODES = {
    1: "not mounted",
    2: "busy",
    3: "timeout",
    4: "not selected / dosing head missing",
    5: "powder empty",
    6: "front door open",
    7: "target outside the allowed range",
}
DOOR_STATES = {2: "closed", 3: "open", 9: "moving"}
#: long actions whose final `A`/`I` line arrives later, maybe while other commands run
LONG_ACTIONS = ("QRA 61 1", "QRA 60 7", "QRA 60 8")


@dataclass(frozen=True)
class SicsReply:
    """One MT-SICS reply line split into the command echo, status and values."""

    line: str
    command: str
    status: str
    values: list[str] = field(default_factory=list)

    def text(self, i: int = 0) -> str:
        """Value i without its double quotes."""
        if i >= len(self.values):
            raise ProtocolError(f"reply {self.line!r} has no value {i + 1}")
        v = self.values[i]
        return v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v

    def weight_g(self) -> float:
        """`<value> <unit>` converted to grams."""
        if len(self.values) < 2:
            raise ProtocolError(f"no weight in {self.line!r}")
        try:
            value = float(self.values[0])
        except ValueError:
            raise ProtocolError(f"bad weight value in {self.line!r}") from None
        unit = self.values[1]
        if unit not in UNIT_TO_G:
            raise ProtocolError(f"unknown weight unit {unit!r} in {self.line!r}")
        return value * UNIT_TO_G[unit]


def _seconds(value: Any) -> float:
    """A duration from the config: a quantity string, or a bare number of seconds."""
    return float(value) if isinstance(value, (int, float)) else to(value, "s")


def echo_for(command: str) -> str:
    """What a reply to `command` starts with: weights answer `S`, `@` answers `I4`, a
    Quantos action echoes its first two numbers, a QRD query itself, a QRD set `QRD`."""
    parts = command.split()
    head = parts[0] if parts else ""
    if head in ("S", "SI", "SIR", "SC"):
        return "S"
    if head == "@":
        return "I4"
    if head == "QRA":
        return " ".join(parts[:3])
    if head == "QRD" and parts[1:] == ["2", "3", "7"]:
        return command.strip()
    return head


#: the command words this driver sends: a reply line starting with one is an answer
COMMAND_WORDS = frozenset({"S", "SI", "SIR", "SC", "Z", "ZI", "T", "TI", "TA", "TAC", "DW",
                           "I2", "I3", "I4", "M21", "QRD", "QRA", "@"})


def answers_another(line: str, echo: str) -> bool:
    """A well-formed reply to another command than the one whose echo is `echo`: a late
    answer to an earlier attempt (retried after garbage, or timed out) that arrived after
    the input was reset. Skipped rather than taken as this command's (failed) answer, so
    one late line cannot shift every later reply by one."""
    tokens = _TOKENS.findall(line)
    if len(tokens) < 2 or line in BARE_ERRORS or tokens[0] not in COMMAND_WORDS:
        return False
    head = echo.split()
    return tokens[: len(head)] != head


#: how long a reply may still come after a line of noise (wall seconds): line noise and
#: the reply it precedes arrive together; when nothing follows, the noise was the answer
NOISE_GRACE_S = 0.1


def is_noise(line: str) -> bool:
    """A line that is no reply at all (line noise, a power-on banner): its first word is
    not a command word nor a bare error."""
    tokens = _TOKENS.findall(line)
    return not tokens or (tokens[0] not in COMMAND_WORDS and line not in BARE_ERRORS)


def parse_reply(line: bytes | str, echo: str) -> SicsReply:
    """Split a reply to a command whose echo is `echo` (`S`, `QRD 2 3 7`, `QRA 61 1`)."""
    text = line.decode("ascii", errors="replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n").strip()
    if text in BARE_ERRORS:
        return SicsReply(text, "", text)
    tokens = _TOKENS.findall(text)
    head = echo.split()
    if tokens[: len(head)] != head or len(tokens) <= len(head):
        raise ProtocolError(f"reply {text!r} does not answer {echo!r}")
    return SicsReply(text, echo, tokens[len(head)], tokens[len(head) + 1 :])


def raise_for(reply: SicsReply, device: str | None, *, ok: str = "AS") -> SicsReply:
    """Return the reply if its status is one of `ok`, else raise the matching error."""
    st = reply.status
    if st in ok:
        return reply
    if st in ("ES", "ET"):
        raise ProtocolError(f"{BARE_ERRORS[st]} ({st})", device=device)
    if st == "EL":
        raise DeviceFault("the balance refused the command", device=device, code="EL",
                          vendor_text=BARE_ERRORS["EL"])
    if reply.command in LONG_ACTIONS and st == "I" and reply.values:
        raise quantos_error(reply.values[0], device, reply.command)
    if st == "I":
        raise DeviceBusy(f"{reply.command}: {STATUS_TEXT['I']} ({reply.line})", device=device)
    if st in STATUS_TEXT:
        raise DeviceFault(f"{reply.command}: {STATUS_TEXT[st]}", device=device, code=st,
                          vendor_text=reply.line)
    raise ProtocolError(f"unexpected status {st!r} in {reply.line!r}", device=device)


def quantos_error(code_text: str, device: str | None, command: str) -> DeviceError:
    """Quantos failure code n (`I n`): DeviceBusy for 2, DeviceFault for the others."""
    try:
        code = int(code_text)
    except ValueError:
        return ProtocolError(f"{command}: bad failure code {code_text!r}", device=device)
    text = QUANTOS_CODES.get(code, "unknown failure")
    if code == 2:
        return DeviceBusy(f"{command}: {text} (code 2)", device=device)
    return DeviceFault(f"{command} failed", device=device, code=code, vendor_text=text)


class MettlerBalance(Balance):
    """MT-SICS balance: stable/immediate weight, zero, tare, identity."""

    default_serial: ClassVar[SerialSettings] = SerialSettings(9600, 8, "N", 1)
    protocol: ClassVar[str] = "MT-SICS"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.spec.params
        #: how long the balance may take to settle (its own S/Z/T timeout is shorter)
        self.stable_wait_s = _seconds(p.get("stable_timeout", "30 s"))
        #: the least wall time a bench-clock deadline over serial polls gets (labctl.clock)
        self.floor_wall_s = 5 * self.spec.timeout_s
        self.capacity_g: float | None = None
        self.grams_forced = False
        self._ends: dict[str, SicsReply] = {}

    # -- wire -----------------------------------------------------------------------------
    def _absorb(self, stale: bytes) -> None:
        """Keep the end lines of long actions found among discarded bytes."""
        for raw in stale.split(CRLF):
            self._note_end(raw.decode("ascii", errors="replace").strip())

    def _note_end(self, text: str) -> bool:
        for echo in LONG_ACTIONS:
            if text.startswith(echo + " "):
                try:
                    reply = parse_reply(text, echo)
                except ProtocolError:
                    return False
                if reply.status in ("A", "I"):
                    self._ends[echo] = reply
                    return True
        return False

    async def command(self, command: str, echo: str | None = None, *,
                      wait_s: float = 0.0, retries: int = 1,
                      skip_others: bool = False) -> SicsReply:
        """Send one command, return its reply line (parsed, not yet checked).

        `wait_s` (bench-clock seconds) is added to the read timeout for commands the
        balance itself holds back (S, Z, T). Silence and garbled or `ET` replies are
        retried `retries` times; `skip_others` ignores lines of other commands (the
        stream of a running SIR before `@` stops it)."""
        echo = echo or echo_for(command)
        link = self.open_link()
        timeout = self.spec.timeout_s + self.clock.to_wall(wait_s)
        last: DeviceError | None = None
        for _ in range(retries + 1):
            try:
                async with link.lock:
                    self._absorb(link.reset_input())
                    await link.write(command.encode("ascii") + CRLF)
                    noise: ProtocolError | None = None
                    while True:
                        try:
                            raw = await link.read_until(
                                CRLF, timeout if noise is None else NOISE_GRACE_S)
                        except DeviceTimeout:
                            if noise is not None:  # only noise came: that was the answer
                                raise noise from None
                            raise
                        text = raw.decode("ascii", errors="replace").strip()
                        if echo not in LONG_ACTIONS and self._note_end(text):
                            continue
                        if skip_others and not text.startswith(echo.split()[0]):
                            continue
                        if answers_another(text, echo):
                            log.debug("%s: late reply %r skipped while awaiting %s",
                                      self.name, text, echo)
                            continue
                        try:
                            reply = parse_reply(text, echo)
                        except ProtocolError as exc:
                            if noise is not None or not is_noise(text):
                                raise
                            noise = exc  # the reply may follow the noise on its own line
                            continue
                        break
                if reply.status == "ET":
                    last = ProtocolError("transmission error (ET)", device=self.name)
                    continue
                return reply
            except (DeviceTimeout, ProtocolError) as exc:
                if isinstance(exc, ProtocolError) and exc.device is None:
                    exc = ProtocolError(exc.message, device=self.name)
                last = exc
                log.debug("%s: %s failed (%s)", self.name, command, exc)
        assert last is not None
        raise last

    # -- life cycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        """`I4` (ends a running SIR; a command still pending on the balance answers first,
        hence the wait for stability in the budget), then grams if supported. Never `@`:
        it would clear the tare an addition in progress is weighed against."""
        await self.open_link().open()
        raise_for(await self.command("I4", "I4", skip_others=True,
                                     wait_s=self.stable_wait_s), self.name, ok="A")
        reply = await self.command("M21 0 0")
        self.grams_forced = reply.status == "A"
        if not self.grams_forced:
            log.info("%s: M21 0 0 not supported (%s); converting units", self.name,
                     reply.line)

    async def identify(self) -> DeviceInfo:
        i2 = raise_for(await self.command("I2"), self.name, ok="A")
        parts = i2.text().split()
        model = " ".join(parts[:-2]) if len(parts) >= 3 else i2.text()
        if len(parts) >= 3:
            try:
                self.capacity_g = float(parts[-2]) * UNIT_TO_G.get(parts[-1], 1.0)
            except ValueError:
                self.capacity_g = None
        firmware = raise_for(await self.command("I3"), self.name, ok="A").text()
        serial = raise_for(await self.command("I4"), self.name, ok="A").text()
        self.info = DeviceInfo(model=model, serial=serial, firmware=firmware,
                               vendor="Mettler Toledo")
        return self.info

    # -- weighing -------------------------------------------------------------------------
    async def _until_ready(self, command: str, timeout_s: float | None) -> SicsReply:
        """Repeat a command the balance answers `I` while unstable, up to the deadline."""
        budget = self.stable_wait_s if timeout_s is None else timeout_s
        deadline = Deadline(self.clock, budget, self.floor_wall_s)
        while True:
            reply = await self.command(command, wait_s=budget)
            if reply.status != "I":
                return reply
            if deadline.expired():
                raise DeviceTimeout(f"{command}: no stable weight within {budget:g} s",
                                    device=self.name)
            await self.clock.sleep(min(1.0, budget / 10))

    async def weigh(self, *, stable: bool = True, timeout_s: float | None = None) -> float:
        """Net grams: `S` (retried on `S I`) or `SI` (stable or dynamic)."""
        if stable:
            reply = await self._until_ready("S", timeout_s)
        else:
            reply = await self.command("SI")
        return raise_for(reply, self.name, ok="SD").weight_g()

    async def reading(self) -> tuple[float, bool]:
        """`SI`: net grams and whether the balance calls it stable."""
        reply = raise_for(await self.command("SI"), self.name, ok="SD")
        return reply.weight_g(), reply.status == "S"

    async def zero(self) -> None:
        raise_for(await self._until_ready("Z", None), self.name, ok="A")

    async def zero_immediately(self) -> None:
        raise_for(await self.command("ZI"), self.name, ok="SD")

    async def tare(self) -> float:
        return raise_for(await self._until_ready("T", None), self.name, ok="S").weight_g()

    async def tare_immediately(self) -> float:
        return raise_for(await self.command("TI"), self.name, ok="SD").weight_g()

    async def tare_value(self) -> float:
        return raise_for(await self.command("TA"), self.name, ok="A").weight_g()

    async def preset_tare(self, mass_g: float) -> float:
        if self.capacity_g is not None:
            self.check_range("tare", mass_g, 0.0, self.capacity_g, "g")
        reply = await self.command(f"TA {mass_g:.6f} g", "TA")
        return raise_for(reply, self.name, ok="A").weight_g()

    async def gross(self, *, timeout_s: float | None = None) -> float:
        """Gross grams (stable net + the tare value `TA`): what is on the pan whatever
        the tare, so a mass measured against a reference survives a cleared tare."""
        net = await self.weigh(stable=True, timeout_s=timeout_s)
        return net + await self.tare_value()

    async def clear_tare(self) -> None:
        raise_for(await self.command("TAC"), self.name, ok="A")

    async def display(self, text: str) -> None:
        """Show a text on the balance display (`D "text"`); `display_weight()` undoes it."""
        clean = text.replace('"', "'")
        raise_for(await self.command(f'D "{clean}"', "D"), self.name, ok="A")

    async def display_weight(self) -> None:
        raise_for(await self.command("DW"), self.name, ok="A")

    async def status(self) -> DeviceStatus:
        reply = await self.command("SI")
        if reply.status in ("+", "-"):
            return DeviceStatus(DeviceState.FAULT, {}, fault=STATUS_TEXT[reply.status])
        raise_for(reply, self.name, ok="SD")
        readings: dict[str, Any] = {
            "mass_g": reply.weight_g(),
            "stable": reply.status == "S",
            "tare_g": await self.tare_value(),
        }
        return DeviceStatus(DeviceState.IDLE, readings)


class QuantosDispenser(MettlerBalance, Dispenser):
    """Quantos powder dosing on MT-SICS (Xon/Xoff); also a balance weighing its vial.

    Parameters: `dose_time_per_100mg` ("30 s": sets the wait budget, 3× plus 2 min),
    `stable_timeout`. Limits: `max_mass` (checked, with mass > 0, before anything is sent).
    """

    capabilities: ClassVar[tuple[str, ...]] = ("dispenser", "balance")
    default_serial: ClassVar[SerialSettings] = SerialSettings(9600, 8, "N", 1, xonxoff=True)
    protocol: ClassVar[str] = "MT-SICS Quantos"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.s_per_mg = _seconds(self.spec.params.get("dose_time_per_100mg", "30 s")) / 100
        self.max_mass_g = self.limit("max_mass", "g")
        self._dose_lock = asyncio.Lock()
        self._stop_requested = False
        self.dosing = False

    # -- long actions ---------------------------------------------------------------------
    async def _long_action(self, command: str, echo: str, budget_s: float) -> SicsReply:
        """Start a long action (`B`), then await its `A`/`I` on the bench clock without
        holding the line between polls."""
        self._ends.pop(echo, None)
        first = await self.command(command, echo, retries=0)
        if first.status != "B":
            return raise_for(first, self.name, ok="A")
        link = self.open_link()
        deadline = Deadline(self.clock, budget_s, self.floor_wall_s)
        while echo not in self._ends:
            left = deadline.left_wall()
            if left <= 0:
                raise DeviceTimeout(f"{command}: no end within {budget_s:g} s", device=self.name)
            async with link.lock:
                try:
                    raw = await link.read_until(CRLF, min(0.25, left))
                except DeviceTimeout:
                    raw = b""
            text = raw.decode("ascii", errors="replace").strip()
            if text and not self._note_end(text):
                log.debug("%s: stray line %r while awaiting %s", self.name, text, echo)
            await asyncio.sleep(0)
        return raise_for(self._ends.pop(echo), self.name, ok="A")

    async def door_state(self) -> str:
        """`QRD 2 3 7`: closed, open or moving."""
        reply = raise_for(await self.command("QRD 2 3 7", "QRD 2 3 7"), self.name, ok="A")
        try:
            return DOOR_STATES[int(reply.values[0])]
        except (IndexError, ValueError, KeyError):
            raise ProtocolError(f"door state {reply.line!r}", device=self.name) from None

    async def close_door(self) -> None:
        await self._long_action("QRA 60 7 2", "QRA 60 7", 60.0)

    async def open_door(self) -> None:
        await self._long_action("QRA 60 7 3", "QRA 60 7", 60.0)

    async def move_sampler(self, position: int) -> None:
        if not 0 <= position <= 30:
            raise LimitError(f"sampler position {position} is outside 0-30", device=self.name,
                             parameter="sampler position", value=position, limit=30)
        await self._long_action(f"QRA 60 8 {int(position)}", "QRA 60 8", 60.0)

    async def _ensure_door_closed(self) -> None:
        state = await self.door_state()
        if state == "closed":
            return
        await self.close_door()
        if await self.door_state() != "closed":
            raise DeviceFault("the front door did not close", device=self.name, code=6,
                              vendor_text=QUANTOS_CODES[6])

    # -- dosing ---------------------------------------------------------------------------
    def _check_dose(self, mass_g: float, tolerance_pct: float) -> None:
        if not mass_g > 0:
            raise LimitError(f"mass {mass_g:g} g must be positive", device=self.name,
                             parameter="mass", value=mass_g, limit=0.0)
        self.check_range("mass", mass_g, None, self.max_mass_g, "g")
        if not 0 < tolerance_pct <= 100:
            raise LimitError(f"tolerance {tolerance_pct:g} % must be in (0, 100]",
                             device=self.name, parameter="tolerance", value=tolerance_pct,
                             limit=100.0)

    async def dispense(self, mass_g: float, *, tolerance_pct: float = 2.0,
                       on_tared: Callable[[float], None] | None = None) -> float:
        """Dose `mass_g` into the vial; returns the weighed dosed mass in grams.
        `on_tared(reference_g)` gets the tare (the gross mass before the dose) before the
        dose starts, so that the host can keep it where a crash cannot lose it: after one,
        `landed_since(reference_g)` tells what landed."""
        self._check_dose(mass_g, tolerance_pct)
        async with self._dose_lock:
            self._stop_requested = False
            await self._ensure_door_closed()
            reference_g = await self.tare()
            if on_tared is not None:
                on_tared(reference_g)
            mg = mass_g * 1000
            raise_for(await self.command(f"QRD 1 1 5 {mg:.3f}", "QRD"), self.name, ok="A")
            raise_for(await self.command(f"QRD 1 1 6 {tolerance_pct:g}", "QRD"), self.name,
                      ok="A")
            budget = 3 * mg * self.s_per_mg + 120
            self.dosing = True
            try:
                await self._long_action("QRA 61 1", "QRA 61 1", budget)
            except DeviceFault as exc:
                landed = await self._landed()
                if landed is not None:
                    exc.args = (f"{exc.args[0]}; {landed:.5f} g landed",)
                raise
            finally:
                self.dosing = False
            landed = await self._dosed_mass()
            if self._stop_requested:
                raise DeviceFault(f"dosing stopped by the host after {landed:.5f} g",
                                  device=self.name)
            return landed

    async def landed_since(self, reference_g: float) -> float:
        """Grams on the pan above a reference gross mass (the tare taken before a dose
        that a crash interrupted): stable gross now − reference."""
        return await self.gross() - reference_g

    async def _dosed_mass(self) -> float:
        """Net weight after the tare: `SI`, repeated briefly until it is stable."""
        deadline = Deadline(self.clock, self.stable_wait_s, self.floor_wall_s)
        while True:
            grams, stable = await self.reading()
            if stable:
                return grams
            if deadline.expired():
                log.warning("%s: dosed mass read unstable: %g g", self.name, grams)
                return grams
            await self.clock.sleep(0.5)

    async def _landed(self) -> float | None:
        try:
            return (await self.reading())[0]
        except DeviceError:
            return None

    async def stop(self) -> None:
        """`QRA 61 4`: stop dosing (harmless when nothing doses)."""
        self._stop_requested = True
        raise_for(await self.command("QRA 61 4"), self.name, ok="A")

    async def safe_state(self) -> None:
        await self.stop()

    async def status(self) -> DeviceStatus:
        st = await super().status()
        st.readings["door"] = await self.door_state()
        st.readings["dosing"] = self.dosing
        if st.state is DeviceState.IDLE and self.dosing:
            st.state = DeviceState.BUSY
        return st
