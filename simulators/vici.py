"""VICI Valco universal electric actuator (multiposition selector valve), device side
(shared/protocols/vici-universal-actuator.md).

Commands end with the delimiter of the DEL setting (CR by default); replies end with CR.
Moves take 100 ms of simulator clock per position stepped; `CP` reports the position being
left until the move ends. When the valve settles at a position with a `port_map` entry it
routes the world (`world.set_route(name, vessel)`), so pumps aimed at "@<name>" reach that
vessel; while moving, or at an unmapped position, the route points nowhere.

Options: `positions` (default 10), `port_map` ({"1": "cell_vial", ...}), `id` (device ID
0–9/A–Z; default the bench address, else none), `mode` (AM, default 3), `firmware`
(default "2.3"), `faults` (simulators.base.Faults; `stall` jams the next move so the valve
stays where it was; `error` answers the next command with `Bad command`).

labctl choices where the page is silent: broadcast (`*`) commands are executed without a
reply; commands with a leading digit while no ID is set are taken as addressed to another
device and ignored; `NP` positions range 2–96; `ID` with no ID set answers `ID*`; `IFM1`
and `IFM2` both answer `CPnn` (or `CPA`/`CPB`) when a move ends; a move command received
during a move starts when the current one ends; `DEL<n>` and `SB<n>` are accepted,
`DEL`/`SB` query them.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from simulators.base import Reply, Simulator

STEP_S = 0.1
DELIMITERS: dict[int, bytes] = {1: b"\r", 2: b"\n", 3: b"\r\n"}
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400)
BAD = "Bad command"
#: command names, longest match first (IFM before ID)
COMMANDS = ("IFM", "DEL", "ID", "CP", "GO", "CW", "CC", "HM", "TO", "NP", "AM", "VR", "SB")


class ViciValveSimulator(Simulator):
    kind: ClassVar[str] = "vici-valve"
    line: ClassVar[str] = "9600 8N1"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        opts = self.options
        self.n_positions = int(opts.get("positions", 10))
        self.port_map: dict[str, str] = {
            str(k): str(v) for k, v in dict(opts.get("port_map") or {}).items()
        }
        ident = opts.get("id", self.address)
        self.device_id: str | None = None if ident is None else str(ident).upper()
        self.mode = int(opts.get("mode", 3))
        self.firmware = str(opts.get("firmware", "2.3"))
        self.model = str(opts.get("model", "Universal Actuator"))
        self.delimiter = 1
        self.baud = 9600
        self.ifm = 0
        self.current = 1
        self.target: int | None = None  # while moving
        self.moves = 0
        self.jammed = False
        self._buf = bytearray()
        self._queue: asyncio.Lock | None = None

    async def start(self) -> None:
        self._settled()

    # -- bytes ----------------------------------------------------------------------------
    def feed(self, data: bytes, reply: Reply) -> None:
        self._buf.extend(data)
        delim = DELIMITERS[self.delimiter]
        while True:
            idx = self._buf.find(delim)
            if idx < 0:
                if len(self._buf) > 4096:
                    self._buf.clear()
                return
            raw = bytes(self._buf[:idx])
            del self._buf[: idx + len(delim)]
            text = "".join(chr(b) for b in raw if 32 < b < 127).upper()
            if text:
                self._handle(text, reply)
                delim = DELIMITERS[self.delimiter]  # DEL may have changed it

    def _say(self, reply: Reply, *lines: str) -> None:
        self.send(reply, b"".join(line.encode("ascii") + b"\r" for line in lines))

    def _handle(self, text: str, reply: Reply) -> None:
        broadcast = False
        if text == "ID*":  # clears the ID, addressed or not
            self.device_id = None
            return
        if text.startswith("*"):
            broadcast, text = True, text[1:]
        elif self.device_id is not None:
            if not text.startswith(self.device_id):
                return
            text = text[len(self.device_id) :]
        elif text[0].isdigit():
            return  # addressed to another device
        if self.faults.take_error() is not None:
            if not broadcast:
                self._say(reply, BAD)
            return
        try:
            out = self._execute(text, reply)
        except ValueError:
            out = [BAD]
        if out and not broadcast:
            self._say(reply, *out)

    # -- commands -------------------------------------------------------------------------
    def _two_position(self) -> bool:
        return self.mode in (1, 2)

    def _pos_text(self, pos: int) -> str:
        if self._two_position():
            return "A" if pos == 1 else "B"
        return f"{pos:02d}"

    def _parse_pos(self, arg: str) -> int:
        if self._two_position() and arg in ("A", "B"):
            return 1 if arg == "A" else 2
        if not arg.isdigit():
            raise ValueError(arg)
        pos = int(arg)
        if not 1 <= pos <= self._count():
            raise ValueError(arg)
        return pos

    def _count(self) -> int:
        return 2 if self._two_position() else self.n_positions

    def _execute(self, text: str, reply: Reply) -> list[str]:
        for name in COMMANDS:
            if text.startswith(name):
                cmd, arg = name, text[len(name) :]
                break
        else:
            raise ValueError(text)
        n = self._count()
        if cmd == "CP" and not arg:
            return [f"CP{self._pos_text(self.current)}"]
        if cmd == "GO":
            if not arg:
                base = self.target if self.target is not None else self.current
                self._move(base % n + 1, "short", reply)
            else:
                self._move(self._parse_pos(arg), "short", reply)
            return []
        if cmd in ("CW", "CC"):
            base = self.target if self.target is not None else self.current
            if arg:
                pos = self._parse_pos(arg)
            else:
                pos = base % n + 1 if cmd == "CW" else (base - 2) % n + 1
            self._move(pos, cmd, reply)
            return []
        if cmd == "HM" and not arg:
            self._move(1, "short", reply)
            return []
        if cmd == "TO" and not arg:
            if not self._two_position():
                raise ValueError(text)
            base = self.target if self.target is not None else self.current
            self._move(2 if base == 1 else 1, "short", reply)
            return []
        if cmd == "NP":
            if not arg:
                return [f"NP{self.n_positions:02d}"]
            if not arg.isdigit() or not 2 <= int(arg) <= 96:
                raise ValueError(arg)
            self.n_positions = int(arg)
            self.current = min(self.current, self.n_positions)
            self._settled()
            return []
        if cmd == "AM":
            if not arg:
                return [f"AM{self.mode}"]
            if arg not in ("1", "2", "3"):
                raise ValueError(arg)
            self.mode = int(arg)
            self.current = min(self.current, self._count())
            self._settled()
            return []
        if cmd == "VR" and not arg:
            return [self.model, f"Version {self.firmware}"]
        if cmd == "IFM":
            if not arg:
                return [f"IFM{self.ifm}"]
            if arg not in ("0", "1", "2"):
                raise ValueError(arg)
            self.ifm = int(arg)
            return []
        if cmd == "ID":
            if not arg:
                return [f"ID{self.device_id or '*'}"]
            if arg == "*":
                self.device_id = None
                return []
            if len(arg) != 1 or not (arg.isdigit() or arg.isalpha()):
                raise ValueError(arg)
            self.device_id = arg
            return []
        if cmd == "DEL":
            if not arg:
                return [f"DEL{self.delimiter}"]
            if arg not in ("1", "2", "3"):
                raise ValueError(arg)
            self.delimiter = int(arg)
            return []
        if cmd == "SB":
            if not arg:
                return [f"SB{self.baud}"]
            if not arg.isdigit() or int(arg) not in BAUDS:
                raise ValueError(arg)
            self.baud = int(arg)
            return []
        raise ValueError(text)

    # -- motion ---------------------------------------------------------------------------
    def _steps(self, start: int, goal: int, how: str) -> int:
        n = self._count()
        cw, cc = (goal - start) % n, (start - goal) % n
        if how == "CW":
            return cw
        if how == "CC":
            return cc
        return min(cw, cc)

    def _move(self, goal: int, how: str, reply: Reply) -> None:
        if self._queue is None:
            self._queue = asyncio.Lock()
        self.spawn(self._do_move(goal, how, reply, self._queue))

    async def _do_move(self, goal: int, how: str, reply: Reply, queue: asyncio.Lock) -> None:
        async with queue:
            steps = self._steps(self.current, goal, how)
            self.target = goal
            if self.world is not None:
                self.world.routes.pop(self.name, None)
            try:
                await self.clock.sleep(STEP_S * steps)
                if self.faults.take_stall():
                    self.jammed = True
                else:
                    self.jammed = False
                    self.current = goal
                    self.moves += 1
            finally:
                self.target = None
                self._settled()
            if self.ifm:
                self._say(reply, f"CP{self._pos_text(self.current)}")

    def _settled(self) -> None:
        """Route the world through the position the valve now rests at."""
        if self.world is None:
            return
        vessel = self.port_map.get(str(self.current))
        if vessel is None:
            self.world.routes.pop(self.name, None)
        else:
            self.world.set_route(self.name, vessel)

    # -- views ----------------------------------------------------------------------------
    def saved_state(self) -> dict[str, Any]:
        """The position the valve stands at (the route it gives is in the world)."""
        return {"current": self.current}

    def restore_state(self, state: dict[str, Any]) -> None:
        if "current" in state:
            self.current = int(state["current"])
            self._settled()

    def snapshot(self) -> dict[str, Any]:
        return {
            "position": self.current,
            "target": self.target,
            "positions": self.n_positions,
            "mode": self.mode,
            "id": self.device_id,
            "delimiter": self.delimiter,
            "ifm": self.ifm,
            "moves": self.moves,
            "jammed": self.jammed,
            "route": self.port_map.get(str(self.current)),
        }

    def is_safe(self) -> bool:
        return self.target is None
