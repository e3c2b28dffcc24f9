"""VICI Valco universal electric actuator driver (shared/protocols/vici-universal-actuator.md).

Move commands (GO, HM, NP set) have no reply, so each is followed, under the same bus
lock, by a `CP` query: its reply proves the line is alive, and a `Bad command` line before
it tells the command was refused. A move is then polled with `CP` until the valve reports
the target (CP shows the position being left until the move ends).

Params: `positions` (number of positions; read with NP when absent), `port_map`
({"1": "cell_vial", ...}). spec.address, when set, is the device ID (0–9 or A–Z) that
prefixes every command.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, ClassVar

from labctl.capabilities.valve import Valve
from labctl.clock import Clock
from labctl.device import DeviceInfo, DeviceSpec, DeviceState, DeviceStatus
from labctl.errors import ConfigError, DeviceFault, DeviceTimeout, ProtocolError
from labctl.transport import LinkPool, SerialSettings

log = logging.getLogger("labctl.drivers.vici")

STEP_S = 0.1  # nominal move time per position
BAD = "Bad command"
_CP = re.compile(r"CP(\d{1,2}|[AB])$")  # searched: tolerates line noise before it


class ViciValve(Valve):
    """Multiposition selector valve on a VICI universal actuator."""

    default_serial: ClassVar[SerialSettings] = SerialSettings(baudrate=9600)
    protocol: ClassVar[str] = "VICI universal actuator ASCII"

    @classmethod
    def config_problems(cls, name: str, address: Any, params: dict[str, Any],
                        limits: dict[str, Any]) -> list[tuple[str, str]]:
        """The device ID: none, or one character 0-9 / A-Z."""
        if address is None or address == "":
            return []
        if isinstance(address, bool) or not re.fullmatch(r"[0-9A-Z]", str(address).upper()):
            return [(f"devices.{name}.address", f"VICI ID must be 0-9 or A-Z, got {address!r}")]
        return []

    def __init__(
        self, spec: DeviceSpec, *, links: LinkPool | None = None, clock: Clock | None = None
    ):
        super().__init__(spec, links=links, clock=clock)
        ident = spec.address
        self.device_id = "" if ident is None else str(ident).upper()
        if self.device_id and not re.fullmatch(r"[0-9A-Z]", self.device_id):
            raise ConfigError(f"VICI ID must be 0–9 or A–Z, got {ident!r}",
                              key=f"devices.{self.name}.address")
        raw = spec.params.get("positions")
        self._positions: int | None = int(raw) if raw is not None else None

    @property
    def positions(self) -> int:
        if self._positions is None:
            raise ProtocolError("number of positions unknown before connect", device=self.name)
        return self._positions

    # -- exchanges --------------------------------------------------------------------------
    def _encode(self, command: str) -> bytes:
        return f"{self.device_id}{command}\r".encode("ascii")

    async def _line(self, timeout: float) -> str:
        assert self.link is not None
        raw = await self.link.read_until(b"\r", timeout)
        return raw.decode("ascii", errors="replace").strip()

    async def query(self, command: str, *, lines: int = 1) -> list[str]:
        """A command with a reply of `lines` lines (retried once if lost)."""
        link = self.open_link()
        for attempt in (0, 1):
            try:
                async with link.lock:
                    link.reset_input()
                    await link.write(self._encode(command))
                    out = [await self._line(self.spec.timeout_s) for _ in range(lines)]
            except (DeviceTimeout, ProtocolError):
                if attempt:
                    raise
                continue
            if out and out[0] == BAD:
                raise DeviceFault(f"{command!r} refused", device=self.name, code=BAD,
                                  vendor_text=BAD)
            return out
        raise AssertionError("unreachable")

    async def _act(self, command: str) -> str:
        """A command without a reply, then CP under the same lock; returns the CP reply.
        Only absolute commands use this, so a lost exchange is resent once."""
        link = self.open_link()
        for attempt in (0, 1):
            try:
                async with link.lock:
                    link.reset_input()
                    await link.write(self._encode(command) + self._encode("CP"))
                    first = await self._line(self.spec.timeout_s)
                    if first == BAD:
                        await self._line(self.spec.timeout_s)  # the CP reply that follows
                        raise DeviceFault(f"{command!r} refused", device=self.name, code=BAD,
                                          vendor_text=BAD)
                self._position_of(first)
                return first
            except (DeviceTimeout, ProtocolError):
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _position_of(self, reply: str) -> int:
        m = _CP.search(reply)
        if m is None:
            raise ProtocolError(f"unexpected CP reply {reply!r}", device=self.name)
        value = m.group(1)
        return {"A": 1, "B": 2}.get(value) or int(value)

    # -- life cycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        link = self.open_link()
        await link.open()
        (np_reply,) = await self.query("NP")
        m = re.fullmatch(r"NP\s*=?\s*(\d+)", np_reply)
        if m is None:
            raise ProtocolError(f"unexpected NP reply {np_reply!r}", device=self.name)
        reported = int(m.group(1))
        if self._positions is None:
            self._positions = reported
        elif reported != self._positions:
            log.warning("%s: actuator set for %d positions, configured %d: setting NP",
                        self.name, reported, self._positions)
            await self._act(f"NP{self._positions:02d}")
        await self._act("IFM0")  # no unsolicited replies: moves are polled

    async def identify(self) -> DeviceInfo:
        """VR answers several lines; a CP sent after it marks where they end."""
        link = self.open_link()
        async with link.lock:
            link.reset_input()
            await link.write(self._encode("VR") + self._encode("CP"))
            lines: list[str] = []
            while True:
                line = await self._line(self.spec.timeout_s)
                if _CP.search(line):
                    break
                if line:
                    lines.append(line)
                if len(lines) > 20:
                    raise ProtocolError(f"VR reply does not end: {lines!r}", device=self.name)
        if not lines or lines[0] == BAD:
            raise ProtocolError(f"unexpected VR reply {lines!r}", device=self.name)
        firmware = ""
        for line in lines:
            fm = re.search(r"version\s*([\w.\-]+)", line, re.I)
            if fm:
                firmware = fm.group(1)
        self.info = DeviceInfo(model=lines[0], firmware=firmware, vendor="VICI Valco")
        return self.info

    async def status(self) -> DeviceStatus:
        pos = await self.position()
        vessel = self.spec.params.get("port_map", {}).get(str(pos))
        return DeviceStatus(DeviceState.IDLE, {"position": pos, "vessel": vessel,
                                               "positions": self._positions})

    # -- moves ------------------------------------------------------------------------------
    async def position(self) -> int:
        (reply,) = await self.query("CP")
        return self._position_of(reply)

    async def move(self, position: int | str) -> None:
        """Go to a position (or the position of a vessel in `port_map`) by the shortest
        route and wait until the valve is there."""
        pos = self.position_for(position)
        start = self._position_of(await self._act(f"GO{pos:02d}"))
        await self._wait_at(pos, start)

    async def home(self) -> None:
        start = self._position_of(await self._act("HM"))
        await self._wait_at(1, start)

    async def _wait_at(self, target: int, start: int) -> None:
        n = self.positions
        steps = min((target - start) % n, (start - target) % n)
        expected = STEP_S * steps
        poll = max(0.05, 0.02 * self.clock.time_scale)
        allowed = max(self.clock.to_wall(3 * expected + 1.0), 3 * self.spec.timeout_s)
        deadline = time.monotonic() + allowed
        while True:
            if steps:
                await self.clock.sleep(min(poll, expected))
            pos = await self.position()
            if pos == target:
                return
            if time.monotonic() > deadline:
                raise DeviceFault(
                    f"valve did not reach position {target} (still at {pos} after "
                    f"{allowed:.1f} s)", device=self.name, code="stall",
                )

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["positions"] = self._positions
        return out
