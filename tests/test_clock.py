"""Real and scaled clocks."""

from __future__ import annotations

import time

import pytest

from labctl.clock import RealClock, ScaledClock, make_clock


async def test_scaled_clock_runs_simulated_time_faster() -> None:
    clock = ScaledClock(1000)
    t0_sim, t0_wall = clock.monotonic(), time.monotonic()
    await clock.sleep(50.0)  # 50 simulated seconds
    sim, wall = clock.monotonic() - t0_sim, time.monotonic() - t0_wall
    assert sim >= 50.0
    assert wall < 50.0  # far less wall time than simulated time
    assert clock.to_wall(10.0) == pytest.approx(0.01)


def test_make_clock_picks_real_for_scale_one() -> None:
    assert isinstance(make_clock(None), RealClock)
    assert isinstance(make_clock(1), RealClock)
    assert isinstance(make_clock(10), ScaledClock)


def test_scale_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ScaledClock(0)
