"""Mettler Toledo balance (MT-SICS) and Quantos powder dosing (QB1 subset on MT-SICS).

Written from shared/protocols/mettler-mt-sics.md only. Commands are upper-case ASCII lines
ending CR LF (a bare LF is accepted too); replies are `<command> <status> [values]` CR LF,
`ES` for an unknown command, `ET` for a line with bytes that are not printable ASCII
(a transmission error), weights as `S S` + value + ` g` (`S S      12.3456 g`).

The balance weighs the world vessel on its pan (option `vessel`): gross = mass of the
vessel and contents + zero offset, net = gross − tare. After the mass changes the reading
is dynamic (`D`) for `settle_s` simulated seconds; `S`, `Z`, `T` wait for stability up to
`stable_timeout_s` and answer `I` when it does not come.

Commands run one after the other, as on the instrument; `@` cancels whatever runs (and a
running `SIR`) at once. The Quantos answers a long action (`QRA ...`) with `B` at once and
`A` or `I <code>` when it ends, and accepts other commands meanwhile (`SI`, `QRA 61 4`).

Balance options: `vessel`, `model`, `serial`, `firmware`, `capacity_g`, `decimals`,
`settle_s`, `stable_timeout_s`, `zero_offset_g`, `zero_range_pct` (of capacity, default
100; real balances allow ±2 %), `faults`. Quantos adds `head_material`, `head_content`
("20 g"), `head_mounted`, `seed`, `door_s`, `sampler_s`, `min_target_mg`,
`max_target_mg`, `dose_s_per_mg` (0.3: 30 s per 100 mg), `dose_timeout_s`, `sampler`
({"0": "cell_vial", "1": "a1", ...}: the vessel each autosampler position presents under
the head and on the pan; without it the `vessel` option is always there; a position the
map does not name presents nothing: the pan is empty and a dose fails with `I 4`).

Faults: `error` = a reply line (str, e.g. "EL") answers the next command instead of
executing it; for the Quantos an int n makes the next dose fail with `I n` half way.
`stall`: the next wait for stability never succeeds (balance) / the next dose delivers
nothing and ends with `I 3` (timeout) (Quantos).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
from typing import Any, ClassVar

from simulators.base import Reply, Simulator
from simulators.world import WorldFault, parse_amount

_TOKENS = re.compile(r'"[^"]*"|\S+')
_PRINTABLE = re.compile(r"[\x20-\x7e\t]*")
#: The value field: `S S      12.3456 g` (the page's example, byte for byte).
VALUE_WIDTH = 12


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


#: defaults of the options the timing depends on (the planner's model reads the same)
SETTLE_S = 1.5
DOSE_S_PER_MG = 0.3
END_SETTLE_FACTOR = 4


def dose_time_s(options: dict[str, Any], mass_g: float) -> float:
    """Simulated seconds a Quantos dose of `mass_g` takes with these options, as the
    simulator runs it: the tare settles, the powder flows at 1/dose_s_per_mg mg/s, the
    end is reported once the balance has settled (END_SETTLE_FACTOR x settle_s), and the
    dosed mass is read once stable. The planner's estimate (simulators.timing)."""
    settle = float(options.get("settle_s", SETTLE_S))
    per_mg = float(options.get("dose_s_per_mg", DOSE_S_PER_MG))
    return settle + mass_g * 1000.0 * per_mg + settle * END_SETTLE_FACTOR


class MettlerBalanceSimulator(Simulator):
    """An MT-SICS level 0/1 balance weighing a world vessel."""

    kind: ClassVar[str] = "mettler-balance"
    line: ClassVar[str] = "9600 8N1"
    default_model: ClassVar[str] = "XPR204S"
    default_capacity_g: ClassVar[float] = 220.0
    default_decimals: ClassVar[int] = 4
    default_serial: ClassVar[str] = "B123456789"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        o = self.options
        self.vessel: str | None = o.get("vessel")
        self.model = str(o.get("model", self.default_model))
        self.serial = str(o.get("serial", self.default_serial))
        self.firmware = str(o.get("firmware", "2.10.3"))
        self.capacity_g = float(o.get("capacity_g", self.default_capacity_g))
        self.decimals = int(o.get("decimals", self.default_decimals))
        self.settle_s = float(o.get("settle_s", SETTLE_S))
        self.stable_timeout_s = float(o.get("stable_timeout_s", 10.0))
        self.zero_offset_g = float(o.get("zero_offset_g", 0.0))
        self.zero_range_g = self.capacity_g * float(o.get("zero_range_pct", 100.0)) / 100
        self.tare_g = 0.0
        self.display_text: str | None = None
        self.unit = "g"
        self.commands = 0
        self._buf = bytearray()
        self._queue: asyncio.Queue[tuple[str, Reply]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._current: asyncio.Task[None] | None = None
        self._sir: asyncio.Task[None] | None = None
        self._last_raw = self._raw()
        self._changed_at = self.clock.monotonic() - self.settle_s

    # -- the pan --------------------------------------------------------------------------
    def _raw(self) -> float:
        if self.world is None or not self.vessel:
            return 0.0
        try:
            return float(self.world.mass_g(self.vessel))
        except WorldFault:
            return 0.0

    def _observe(self) -> float:
        raw = self._raw()
        if abs(raw - self._last_raw) > 1e-12:
            self._last_raw = raw
            self._changed_at = self.clock.monotonic()
        return raw

    def gross_g(self) -> float:
        return self._observe() + self.zero_offset_g

    def net_g(self) -> float:
        return self.gross_g() - self.tare_g

    def stable(self) -> bool:
        self._observe()
        return self.clock.monotonic() - self._changed_at >= self.settle_s

    def _range(self) -> str | None:
        """'+' overload, '-' underload, None within range."""
        raw = self._observe()
        if raw > self.capacity_g:
            return "+"
        if raw + self.zero_offset_g < -0.02 * self.capacity_g:
            return "-"
        return None

    async def _wait_stable(self, timeout_s: float, *, stalled: bool = False) -> bool:
        start = self.clock.monotonic()
        floor = 0.005 * self.clock.time_scale
        while True:
            if not stalled and self.stable():
                return True
            now = self.clock.monotonic()
            if now - start >= timeout_s:
                return False
            left = self.settle_s - (now - self._changed_at)
            step = min(max(left, 0.05), timeout_s - (now - start))
            await self.clock.sleep(max(step, floor))

    def _balance_stall(self) -> bool:
        """The stall fault, for a balance: the next wait for stability never ends."""
        return self.faults.take_stall()

    def _value(self, grams: float) -> str:
        return f"{grams:>{VALUE_WIDTH}.{self.decimals}f} {self.unit}"

    def _weight_line(self, prefix: str = "S") -> str:
        over = self._range()
        if over:
            return f"{prefix} {over}"
        status = "S" if self.stable() else "D"
        return f"{prefix} {status} {self._value(self.net_g())}"

    # -- bytes ----------------------------------------------------------------------------
    def feed(self, data: bytes, reply: Reply) -> None:
        self._buf.extend(data)
        while (end := self._buf.find(b"\n")) >= 0:
            raw = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            self._line(raw, reply)
        if len(self._buf) > 4096:  # no line end in sight: noise
            self._buf.clear()

    def _line(self, raw: bytes, reply: Reply) -> None:
        if self._sir is not None:  # SIR runs until the next command
            self._sir.cancel()
            self._sir = None
        text = raw.decode("latin-1")
        if not text.strip():
            return
        if text.strip() == "@":
            self._cancel_all()
            self.reset()
            self.commands += 1
            self._say(reply, f'I4 A "{self.serial}"')
            return
        self._ensure_worker()
        assert self._queue is not None
        self._queue.put_nowait((text, reply))

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue()
            self._worker = self.spawn(self._work())

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            text, reply = await self._queue.get()
            self._current = self.spawn(self._handle(text, reply))
            await asyncio.wait({self._current})
            self._current = None

    def _cancel_all(self) -> None:
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()
        if self._current is not None:
            self._current.cancel()

    def _say(self, reply: Reply, text: str) -> None:
        self.send(reply, text.encode("ascii", errors="replace") + b"\r\n")

    async def _handle(self, text: str, reply: Reply) -> None:
        if not _PRINTABLE.fullmatch(text):
            self._say(reply, "ET")
            return
        tokens = _TOKENS.findall(text)
        if not tokens:
            return
        err = self.faults.error
        if isinstance(err, (str, bytes)):
            self.faults.take_error()
            self._say(reply, err.decode("ascii", "replace") if isinstance(err, bytes) else err)
            return
        answer = await self.execute(tokens, reply)
        if answer is None:
            self._say(reply, "ES")
            return
        self.commands += 1
        for line in answer:
            self._say(reply, line)

    def reset(self) -> None:
        """`@`: back to the state after switching on, without zeroing."""
        self.tare_g = 0.0
        self.display_text = None

    # -- commands -------------------------------------------------------------------------
    async def execute(self, t: list[str], reply: Reply) -> list[str] | None:
        """Answer lines for one command, or None when the command is unknown (ES)."""
        cmd, args = t[0], t[1:]
        if cmd == "I2" and not args:
            return [f'I2 A "{self.model} {self.capacity_g:.{self.decimals}f} g"']
        if cmd == "I3" and not args:
            return [f'I3 A "{self.firmware}"']
        if cmd == "I4" and not args:
            return [f'I4 A "{self.serial}"']
        if cmd == "S" and not args:
            return [await self._stable_weight()]
        if cmd == "SI" and not args:
            return [self._weight_line()]
        if cmd == "SIR" and not args:
            self._sir = self.spawn(self._repeat(reply))
            return []
        if cmd == "SC" and len(args) <= 1:
            return [await self._stable_or_dynamic(args)]
        if cmd in ("Z", "ZI") and not args:
            return [await self._zero(immediately=cmd == "ZI")]
        if cmd in ("T", "TI") and not args:
            return [await self._tare(immediately=cmd == "TI")]
        if cmd == "TA":
            return [self._tare_value(args)]
        if cmd == "TAC" and not args:
            self.tare_g = 0.0
            return ["TAC A"]
        if cmd == "M21":
            return [self._unit(args)]
        if cmd == "D":
            text = " ".join(args)
            self.display_text = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' \
                else text
            return ["D A"]
        if cmd == "DW" and not args:
            self.display_text = None
            return ["DW A"]
        return None

    async def _stable_weight(self) -> str:
        stalled = self._balance_stall()
        if over := self._range():
            return f"S {over}"
        if not await self._wait_stable(self.stable_timeout_s, stalled=stalled):
            return "S I"
        return self._weight_line()

    async def _stable_or_dynamic(self, args: list[str]) -> str:
        timeout = _number(args[0]) if args else self.stable_timeout_s
        if timeout is None or timeout < 0:
            return "S L"
        stalled = self._balance_stall()
        if over := self._range():
            return f"S {over}"
        await self._wait_stable(timeout, stalled=stalled)
        return self._weight_line()

    async def _repeat(self, reply: Reply) -> None:
        period = max(0.1, 0.01 * self.clock.time_scale)  # 10 per second, at most 100 wall/s
        while True:
            self._say(reply, self._weight_line())
            await self.clock.sleep(period)

    async def _zero(self, *, immediately: bool) -> str:
        cmd = "ZI" if immediately else "Z"
        stalled = False if immediately else self._balance_stall()
        if over := self._range():
            return f"{cmd} {over}"
        raw = self._observe()
        gross_from_initial = raw + float(self.options.get("zero_offset_g", 0.0))
        if gross_from_initial > self.zero_range_g:
            return f"{cmd} +"
        if gross_from_initial < -self.zero_range_g:
            return f"{cmd} -"
        if immediately:
            status = "S" if self.stable() else "D"
        elif await self._wait_stable(self.stable_timeout_s, stalled=stalled):
            status = "A"
        else:
            return "Z I"
        self.zero_offset_g = -self._observe()
        self.tare_g = 0.0
        return f"{cmd} {status}"

    async def _tare(self, *, immediately: bool) -> str:
        cmd = "TI" if immediately else "T"
        stalled = False if immediately else self._balance_stall()
        if over := self._range():
            return f"{cmd} {over}"
        if immediately:
            status = "S" if self.stable() else "D"
        elif await self._wait_stable(self.stable_timeout_s, stalled=stalled):
            status = "S"
        else:
            return "T I"
        self.tare_g = self.gross_g()
        return f"{cmd} {status} {self._value(self.tare_g)}"

    def _tare_value(self, args: list[str]) -> str:
        if not args:
            return f"TA A {self._value(self.tare_g)}"
        value = _number(args[0])
        unit = args[1] if len(args) > 1 else "g"
        if value is None or len(args) > 2 or unit != "g" or not 0 <= value <= self.capacity_g:
            return "TA L"
        self.tare_g = value
        return f"TA A {self._value(self.tare_g)}"

    def _unit(self, args: list[str]) -> str:
        if not args:
            return "M21 A 0 0"
        if len(args) == 2 and args[0].isdigit() and args[1] == "0":
            self.unit = "g"
            return "M21 A"
        return "M21 L"

    # -- views ----------------------------------------------------------------------------
    def saved_state(self) -> dict[str, Any]:
        """The tare the balance holds."""
        return {"tare_g": self.tare_g}

    def restore_state(self, state: dict[str, Any]) -> None:
        if "tare_g" in state:
            self.tare_g = float(state["tare_g"])

    def snapshot(self) -> dict[str, Any]:
        return {
            "gross_g": self.gross_g(),
            "net_g": self.net_g(),
            "tare_g": self.tare_g,
            "zero_offset_g": self.zero_offset_g,
            "stable": self.stable(),
            "display_text": self.display_text,
            "sir": self._sir is not None,
            "commands": self.commands,
        }


class QuantosSimulator(MettlerBalanceSimulator):
    """Quantos QB1: an MT-SICS balance with a powder dosing head over the vessel."""

    kind: ClassVar[str] = "quantos-dispenser"
    line: ClassVar[str] = "9600 8N1, Xon/Xoff"
    default_model: ClassVar[str] = "XPE206DR"
    default_decimals: ClassVar[int] = 5
    default_serial: ClassVar[str] = "Q123456789"

    DOOR_CLOSED, DOOR_OPEN, DOOR_MOVING = 2, 3, 9

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        o = self.options
        self.head_material: str | None = o.get("head_material", "powder") or None
        content = o.get("head_content", "20 g")
        grams, unit = parse_amount(content)
        if unit != "g":
            raise ValueError(f"head_content must be a mass, got {content!r}")
        self.head_content_g = grams
        self.head_mounted = bool(o.get("head_mounted", True))
        self.rng = random.Random(o.get("seed"))
        self.door_s = float(o.get("door_s", 3.0))
        self.sampler_s = float(o.get("sampler_s", 2.0))
        self.min_target_mg = float(o.get("min_target_mg", 0.1))
        self.max_target_mg = float(o.get("max_target_mg", 100_000.0))
        self.dose_s_per_mg = float(o.get("dose_s_per_mg", DOSE_S_PER_MG))
        self.dose_timeout_s: float | None = (
            float(o["dose_timeout_s"]) if o.get("dose_timeout_s") is not None else None
        )
        self.target_mg: float | None = None
        self.tolerance_pct = 1.0
        self.door = self.DOOR_CLOSED
        self.sampler = 0
        raw_map = o.get("sampler")
        #: autosampler position -> the vessel it presents (None: no autosampler)
        self.sampler_map: dict[int, str] | None = (
            {int(k): str(v) for k, v in raw_map.items()} if isinstance(raw_map, dict) else None)
        self._home_vessel = self.vessel
        self._present()
        self.dosed_g = 0.0  # of the last (or running) dose
        self.doses: list[dict[str, Any]] = []
        self._action: asyncio.Task[None] | None = None
        self._dose: asyncio.Task[None] | None = None
        self._dose_reply: Reply | None = None

    def _balance_stall(self) -> bool:
        return False  # on the Quantos the stall fault belongs to the next dose

    def busy(self) -> bool:
        return self._action is not None and not self._action.done()

    def reset(self) -> None:
        super().reset()
        if self._action is not None and not self._action.done():
            self._action.cancel()
        if self.door == self.DOOR_MOVING:
            self.door = self.DOOR_CLOSED

    async def execute(self, t: list[str], reply: Reply) -> list[str] | None:
        if t[0] == "QRD":
            return [self._qrd(t[1:])]
        if t[0] == "QRA":
            return self._qra(t[1:], reply)
        return await super().execute(t, reply)

    def _qrd(self, a: list[str]) -> str:
        if a[:3] == ["1", "1", "5"] and len(a) == 4 and (v := _number(a[3])) is not None:
            self.target_mg = v
            return "QRD A"
        if a[:3] == ["1", "1", "6"] and len(a) == 4 and (v := _number(a[3])) is not None:
            if not 0 < v <= 100:
                return "QRD L"
            self.tolerance_pct = v
            return "QRD A"
        if a == ["2", "3", "7"]:
            return f"QRD 2 3 7 A {self.door}"
        return "QRD L"

    def _qra(self, a: list[str], reply: Reply) -> list[str]:
        head = " ".join(["QRA", *a[:2]])
        if a == ["61", "4"]:
            lines = ["QRA 61 4 A"]
            if self._dose is not None and not self._dose.done():
                self._dose.cancel()
                lines.append("QRA 61 1 A")  # the dose ends: the host reads what landed
            return lines
        if a[:2] == ["60", "7"] and len(a) == 3:
            if a[2] not in ("2", "3"):
                return [f"{head} L"]
            if self.busy():
                return [f"{head} I 2"]
            self._start(self._move_door(int(a[2]), reply))
            return [f"{head} B"]
        if a[:2] == ["60", "8"] and len(a) == 3:
            n = _number(a[2])
            if n is None or n != int(n) or not 0 <= n <= 30:
                return [f"{head} L"]
            if self.busy():
                return [f"{head} I 2"]
            self._start(self._move_sampler(int(n), reply))
            return [f"{head} B"]
        if a == ["61", "1"]:
            code = self._refuse_dose()
            if code:
                return [f"QRA 61 1 I {code}"]
            self._dose = self._start(self._dosing(reply))
            return ["QRA 61 1 B"]
        return ["QRA L"]

    def _start(self, coro: Any) -> asyncio.Task[None]:
        self._action = self.spawn(coro)
        return self._action

    def _refuse_dose(self) -> int:
        """The failure code that keeps a dose from starting (0: none)."""
        if self.busy():
            return 2
        if not self.head_mounted:
            return 1
        if not self.head_material or not self.vessel:
            return 4
        if self.door != self.DOOR_CLOSED:
            return 6
        t = self.target_mg
        if t is None or not self.min_target_mg <= t <= self.max_target_mg:
            return 7
        if self.head_content_g <= 0:
            return 5
        return 0

    async def _move_door(self, state: int, reply: Reply) -> None:
        if self.door != state:
            self.door = self.DOOR_MOVING
            await self.clock.sleep(self.door_s)
            self.door = state
        self._say(reply, "QRA 60 7 A")

    async def _move_sampler(self, n: int, reply: Reply) -> None:
        await self.clock.sleep(self.sampler_s)
        self.sampler = n
        self._present()
        self._say(reply, "QRA 60 8 A")

    def _present(self) -> None:
        """The vessel the sampler's position puts under the head and on the pan (the
        balance reading changes with it: it is dynamic until it settles)."""
        if self.sampler_map is not None:
            self.vessel = self.sampler_map.get(self.sampler)
        else:
            self.vessel = self._home_vessel

    async def _dosing(self, reply: Reply) -> None:
        assert self.target_mg is not None and self.head_material is not None
        target_g = self.target_mg / 1000
        tol = self.tolerance_pct / 100
        goal = min(max(self.rng.gauss(target_g, 0.005 * target_g), target_g * (1 - tol)),
                   target_g * (1 + tol))
        stalled = self.faults.take_stall()
        err = self.faults.error
        fail_code: int | None = None
        if isinstance(err, int) and not isinstance(err, bool):
            fail_code = int(self.faults.take_error())
            goal = goal / 2
        rate = 1 / (self.dose_s_per_mg * 1000)  # g per simulated second
        expected = goal / rate
        timeout = self.dose_timeout_s or 3 * expected + 60
        step = max(0.5, 0.02 * self.clock.time_scale)
        self.dosed_g = 0.0
        record: dict[str, Any] = {"target_g": target_g, "goal_g": goal, "dosed_g": 0.0,
                                  "result": None}
        self.doses.append(record)
        started = self.clock.monotonic()
        last = started
        result = "A"
        try:
            while self.dosed_g < goal - 1e-12:
                await self.clock.sleep(step)
                now = self.clock.monotonic()
                if stalled:
                    if now - started >= timeout:
                        result = "I 3"
                        break
                    last = now
                    continue
                amount = min(goal - self.dosed_g, rate * (now - last))
                last = now
                empty = amount >= self.head_content_g
                amount = min(amount, self.head_content_g)
                try:
                    self.world.add_solid(self.vessel, self.head_material, amount)
                except (WorldFault, AttributeError):
                    result = "I 4"
                    break
                self.head_content_g -= amount
                self.dosed_g += amount
                record["dosed_g"] = self.dosed_g
                if empty and self.dosed_g < goal - 1e-12:
                    result = "I 5"
                    break
            if result == "A" and fail_code is not None:
                result = f"I {fail_code}"
            # the Quantos reports the end once the balance has settled
            await self._wait_stable(self.settle_s * END_SETTLE_FACTOR)
        except asyncio.CancelledError:
            record["result"] = "stopped"
            raise
        record["result"] = result
        self._say(reply, f"QRA 61 1 {result}")

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap.update({
            "door": self.door,
            "sampler": self.sampler,
            "presented": self.vessel,
            "target_mg": self.target_mg,
            "tolerance_pct": self.tolerance_pct,
            "head_content_g": self.head_content_g,
            "dosing": self._dose is not None and not self._dose.done(),
            "dosed_g": self.dosed_g,
        })
        return snap

    def saved_state(self) -> dict[str, Any]:
        """The powder left in the dosing head (the world gets what it doses), and the
        balance's tare."""
        return {**super().saved_state(), "head_content_g": self.head_content_g,
                "sampler": self.sampler}

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        if "head_content_g" in state:
            self.head_content_g = float(state["head_content_g"])
        if "sampler" in state:
            self.sampler = int(state["sampler"])
            self._present()
            self._last_raw = self._raw()

    def is_safe(self) -> bool:
        return not (self._dose is not None and not self._dose.done())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self._action is not None:
                self._action.cancel()
        await super().stop()
