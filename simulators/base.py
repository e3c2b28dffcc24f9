"""What every instrument simulator shares: addressing, reply path, fault injection.

A simulator gets every chunk of bytes that arrives on its line (`feed`), keeps its own
parse buffer, and answers through `send(reply, data)`, which applies the injected faults.
Simulators are written from shared/protocols/*.md, never from the drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from labctl.clock import Clock, RealClock

Reply = Callable[[bytes], None]


@dataclass
class Faults:
    """Faults to inject, settable at run time (tests) or from options (`faults = {...}`).

    silence: drop every reply (True) or the next n replies (int).
    delay_s: wall seconds to hold each reply back.
    truncate: cut the next reply in half (one shot).
    garbage: bytes sent before the next reply (one shot).
    error: simulator-specific error to answer the next command with (one shot).
    stall: simulator-specific overload/stall during the next move (one shot).
    """

    silence: bool | int = False
    delay_s: float = 0.0
    truncate: bool = False
    garbage: bytes = b""
    error: Any = None
    stall: bool = False

    def take_error(self) -> Any:
        err, self.error = self.error, None
        return err

    def take_stall(self) -> bool:
        stall, self.stall = self.stall, False
        return stall


class Simulator(ABC):
    """Device side of one instrument protocol."""

    kind: ClassVar[str] = ""
    #: serial settings of the real instrument (documentation only on a pty)
    line: ClassVar[str] = ""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        address: int | str | None = None,
        world: Any = None,
        options: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        self.clock: Clock = clock or RealClock()
        self.address = address
        self.world = world
        self.options: dict[str, Any] = dict(options or {})
        self.name = name or self.kind
        self.faults = Faults()
        for key, value in dict(self.options.get("faults", {})).items():
            setattr(self.faults, key, value)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.server: Any = None  # set by the serving code, for disconnect faults

    # -- bytes ------------------------------------------------------------------------
    @abstractmethod
    def feed(self, data: bytes, reply: Reply) -> None:
        """Bytes from the line (every chunk, addressed to this device or not)."""

    def send(self, reply: Reply, data: bytes) -> None:
        """Answer, through the injected faults."""
        f = self.faults
        if f.silence:
            if isinstance(f.silence, int) and not isinstance(f.silence, bool):
                f.silence -= 1
            return
        if f.truncate:
            f.truncate = False
            data = data[: max(1, len(data) // 2)]
        if f.garbage:
            data, f.garbage = f.garbage + data, b""
        if f.delay_s > 0:
            asyncio.get_running_loop().call_later(f.delay_s, reply, data)
        else:
            reply(data)

    async def disconnect(self) -> None:
        """Fault: drop the line (TCP peers are closed; a pty goes deaf until reconnect)."""
        if self.server is not None:
            await self.server.disconnect()

    def reconnect(self) -> None:
        if self.server is not None:
            self.server.reconnect()

    # -- background activity ----------------------------------------------------------
    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a coroutine (a move, a ramp) in the background, cancelled on `stop`."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        """Start background physics, if any."""

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def snapshot(self) -> dict[str, Any]:
        """Internal state for tests and the world view (what the instrument 'really' does)."""
        return {}

    def saved_state(self) -> dict[str, Any]:
        """What this instrument holds that outlives a power cycle and is not in the world
        (a dosing head's powder, a cell's state of charge), as plain JSON data. Saved with
        the world so a resumed simulated run continues from it; {} for most instruments."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take back what `saved_state` returned (called before the instrument serves)."""

    def is_safe(self) -> bool:
        """True when the instrument is in its safe state (nothing moving, heating, on)."""
        return True
