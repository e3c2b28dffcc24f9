"""Time-scale floors (issue 12, item 14): at high time scales every timeout that covers
serial traffic keeps a wall-clock floor, so the simulated bench works instead of failing
its steps on their own exchanges.

`labctl run` is the real CLI on the default simulated bench (config/sim.toml: simulators
in-process on pseudo-terminals, drivers over real bytes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labctl.clock import Deadline, RealClock, ScaledClock, wall_budget

ROOT = Path(__file__).resolve().parent.parent
LABCTL = [sys.executable, "-m", "labctl"]
pytestmark = pytest.mark.timeout(240)


def run_recipe(recipe: str, scale: float, data: Path) -> tuple[int, dict[str, Any], str]:
    out = subprocess.run([*LABCTL, "run", f"recipes/{recipe}", "--time-scale", f"{scale:g}",
                          "--data-dir", str(data), "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=200)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return out.returncode, result, out.stderr


def test_conductivity_recipe_completes_at_time_scale_30000(tmp_path: Path) -> None:
    """At 30000x the salt step's 600 s timeout was 20 ms of wall time: shorter than the
    dispenser's own serial exchanges, so every run failed there."""
    code, result, err = run_recipe("electrolyte_conductivity.json", 30000, tmp_path)
    assert code == 0, (result, err)
    assert result["status"] == "completed"
    assert not result.get("errors")
    assert any(f.get("value") is not None for f in result.get("figures_of_merit") or [])
    meta = json.loads(next(tmp_path.glob("*/metadata.json")).read_text())
    hotplate = meta["instruments"]["hotplate"]
    # even the hotplate's longest watchdog (1500 s) is 50 ms at 30000x: no keep-alive can
    # promise that, so the simulated hotplate ran without one, and the record says so
    assert hotplate["watchdog_armed_s"] is None
    assert "not armed" in hotplate["watchdog_note"] and "30000" in hotplate["watchdog_note"]


def test_stability_window_completes_at_time_scale_10000(tmp_path: Path) -> None:
    """At 10000x the hotplate's 600 s watchdog was 60 ms of wall time: any hiccup of the
    event loop tripped it and the mix step failed."""
    code, result, err = run_recipe("stability_window.json", 10000, tmp_path)
    assert code == 0, (result, err)
    assert result["status"] == "completed"


def test_wall_budget_floors_a_scaled_timeout_but_never_lengthens_a_real_one() -> None:
    fast = ScaledClock(30000)
    assert wall_budget(fast, 600.0, 10.0) == 10.0  # not 0.02 s
    assert wall_budget(fast, 3.0, 10.0) == 3.0  # capped at its own real-time length
    assert wall_budget(RealClock(), 600.0, 10.0) == 600.0  # scale 1: unchanged
    assert wall_budget(ScaledClock(10), 600.0, 10.0) == 60.0  # scaled time is above floor
    deadline = Deadline(fast, 600.0, 10.0)
    assert not deadline.expired() and 9.0 < deadline.left_wall() <= 10.0
