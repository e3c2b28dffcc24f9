"""Clocks: every wait in labctl and in the simulators goes through one.

A `ScaledClock` with time_scale=100 runs simulated time 100x faster than the wall clock,
so a 10-minute stir takes 6 s while everything on the wire stays the same.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Monotonic time and sleeping, in the clock's own (possibly simulated) seconds."""

    time_scale: float

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def to_wall(self, seconds: float) -> float: ...


class RealClock:
    """Wall time (time_scale 1)."""

    time_scale: float = 1.0

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def to_wall(self, seconds: float) -> float:
        return seconds


class ScaledClock:
    """Simulated time running `time_scale` times faster than the wall clock."""

    def __init__(self, time_scale: float = 1.0):
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.time_scale = float(time_scale)
        self._t0_wall = time.monotonic()
        self._t0_epoch = time.time()

    def monotonic(self) -> float:
        return (time.monotonic() - self._t0_wall) * self.time_scale

    def time(self) -> float:
        """Simulated epoch seconds (starts at the real epoch time of creation)."""
        return self._t0_epoch + self.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.time_scale)

    def to_wall(self, seconds: float) -> float:
        """Wall seconds that `seconds` of this clock take."""
        return seconds / self.time_scale


def make_clock(time_scale: float | None) -> Clock:
    if time_scale is None or time_scale == 1:
        return RealClock()
    return ScaledClock(time_scale)
