"""Clocks: every wait in labctl and in the simulators goes through one.

A `ScaledClock` with time_scale=100 runs simulated time 100x faster than the wall clock,
so a 10-minute stir takes 6 s while everything on the wire stays the same.

Serial traffic does not scale: a reply takes its wall-clock milliseconds whatever the scale.
A timeout or deadline that covers serial exchanges therefore gets a wall-clock floor
(`wall_budget`, `Deadline`): at 30000x a 600 s step timeout would otherwise be 20 ms, less
than the exchanges themselves.
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


def wall_budget(clock: Clock, seconds: float, floor_wall_s: float) -> float:
    """Wall seconds to allow for `seconds` of `clock` time that include serial traffic: the
    scaled time, but never less than `floor_wall_s` of real time, nor more than `seconds`
    themselves would be in real time (so at time scale 1 nothing changes)."""
    return max(clock.to_wall(seconds), min(seconds, floor_wall_s))


class Deadline:
    """`seconds` from now on `clock`, kept on the wall clock with `wall_budget`'s floor: for
    driver loops that poll a device over serial until something happens."""

    def __init__(self, clock: Clock, seconds: float, floor_wall_s: float):
        self.seconds = seconds
        self.wall_s = wall_budget(clock, seconds, floor_wall_s)
        self._end = time.monotonic() + self.wall_s

    def left_wall(self) -> float:
        """Wall seconds left (0 once expired)."""
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end


def make_clock(time_scale: float | None) -> Clock:
    if time_scale is None or time_scale == 1:
        return RealClock()
    return ScaledClock(time_scale)
