"""The main screen, frozen: SVG snapshots at 80×24 and 120×40 (they fail when the screen
changes; `pytest --snapshot-update` records a deliberate change), the same screen read
without colour, and updates in place (nothing redrawn when nothing changed)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from tui_support import FrozenBackend, screen_text, until

from labctl.tui import LabctlApp
from labctl.tui.model import (
    DeviceRow,
    EventLine,
    Measurement,
    QueueRow,
    RunView,
    StepRow,
)
from labctl.tui.widgets import DevicesPanel, RunPanel

NOW = 1_800_000_000.0  # the frozen "now" staleness is judged by


def frozen_backend() -> FrozenBackend:
    be = FrozenBackend()
    v = be.view
    v.bench_id, v.simulated, v.connected, v.connection = "sim-bench-1", True, True, "local"
    v.state = "running"
    v.run = RunView(
        run_id="20260101T000000Z-stability_window-abc123", recipe="stability_window",
        version="1", parameters={"salt_molality": "1 mol / kg", "scan_rate": "5 mV / s"},
        state="running", fraction=0.42, steps_done=4, steps_total=7, elapsed_s=754.0,
        eta_s=1040.0,
        steps=[
            StepRow("init.pump_ec", "action", "pump_ec", "initialize", state="done"),
            StepRow("salt", "action", "dispenser", "dispense", state="done"),
            StepRow("ec", "action", "pump_ec", "transfer", state="done"),
            StepRow("mix", "action", "hotplate", "stir", state="done"),
            StepRow("anodic", "action", "potentiostat", "lsv", state="running"),
            StepRow("rest", "wait", description="Wait 2 min.", state="pending"),
            StepRow("window", "analysis", action="stability_window", state="pending"),
        ])
    fresh = NOW - 1.0
    v.devices = {
        "pump_ec": DeviceRow("pump_ec", "idle", {"plunger_volume_l": 0.0025, "valve_port": 2},
                             updated=fresh),
        "sel_valve": DeviceRow("sel_valve", "idle", {"position": 1, "vessel": "cell_vial"},
                               updated=NOW - 42.0, error="DeviceTimeout: no reply"),
        "hotplate": DeviceRow("hotplate", "busy", {"speed_rpm": 598.0, "speed_setpoint_rpm": 600,
                                                   "medium_temperature_c": 24.6,
                                                   "temperature_setpoint_c": 25.0,
                                                   "heater_on": True}, updated=fresh),
        "balance": DeviceRow("balance", "idle", {"mass_g": 18.1234, "stable": True},
                             updated=fresh),
        "rinse_pump": DeviceRow("rinse_pump", "fault", {"speed_rpm": 0.0},
                                fault="3: tubing blocked", updated=fresh),
        "potentiostat": DeviceRow("potentiostat", "busy", {"potential_v": 4.512,
                                                           "current_a": 2.3e-6,
                                                           "points_received": 180},
                                  updated=fresh),
    }
    v.queue = [QueueRow("20260101T000100Z-rinse-def456", "rinse", 1)]
    m = Measurement(v.run.run_id, "anodic", "lsv")
    for i in range(180):
        e = 3.0 + i * 0.01
        m.add(e, 1e-7 * math.exp((e - 3.0) * 2.2))
    v.measurement = m
    for t, kind, text, level in (
        ("00:12:01", "step_started", "start mix: hotplate.stir", "info"),
        ("00:12:31", "step_finished", "done  mix", "info"),
        ("00:12:31", "warning", "warning: rinse_pump: tubing blocked", "warning"),
        ("00:12:32", "step_started", "start anodic: potentiostat.lsv", "info"),
    ):
        v.log(EventLine(t, kind, text, level))
    v.touch("bench", "run", "devices", "queue", "plot")
    return be


def app() -> LabctlApp:
    return LabctlApp(frozen_backend(), now=NOW)


async def settle(pilot: Any) -> None:
    await until(pilot, pilot.app.backend_ready.is_set, "the frozen backend")
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_main_screen_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=settle)


async def test_main_screen_reads_without_colour() -> None:
    a = app()
    async with a.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        text = screen_text(a)  # rendered with no colour system at all
    lines = text.splitlines()

    def line_of(word: str) -> str:
        """The device row (it starts with the name) or step row (the id after the state)."""
        rows = [ln for ln in lines if ln.lstrip("│ ").startswith(word + " ")]
        return rows[0] if rows else next(ln for ln in lines if f"  {word}  " in ln)

    assert "✖ FAULT" in line_of("rinse_pump") and "tubing blocked" in line_of("rinse_pump")
    assert "idle~" in line_of("sel_valve") and "(stale 42s" in line_of("sel_valve")
    assert "(stale" not in line_of("pump_ec") and "plunger 2.500 mL" in line_of("pump_ec")
    assert "598 rpm (sp 600)" in line_of("hotplate") and "24.6 °C (sp 25.0)" in line_of("hotplate")
    assert "18.1234 g" in line_of("balance")
    assert "[lsv]" in line_of("potentiostat") and "E 4.51 V" in line_of("potentiostat")
    assert "✔ done" in line_of("init.pump_ec") and "▶ running" in line_of("anodic")
    assert "· pending" in line_of("rest")
    assert "RUNNING  stability_window v1" in text
    assert "4/7" in text and "t 12:34" in text and "ETA 17:20" in text and "42%" in text
    assert "LSV anodic  (180 points)" in text
    assert "00:12:31 ! warning: rinse_pump: tubing blocked" in text
    assert " 1. rinse  20260101T000100Z-r" in text


async def test_nothing_is_redrawn_when_nothing_changed() -> None:
    a = app()
    async with a.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        devices = a.query_one(DevicesPanel)
        run = a.query_one(RunPanel)
        cell_updates: list[tuple[Any, Any]] = []
        run_shows: list[int] = []
        real_update, real_show = devices.update_cell, run.show
        devices.update_cell = lambda r, c, v, **kw: (  # type: ignore[method-assign]
            cell_updates.append((r, c)), real_update(r, c, v, **kw))[1]
        run.show = lambda view: (run_shows.append(1), real_show(view))[1]  # type: ignore[method-assign]
        await pilot.pause(1.5)  # 15 ticks at 10 Hz, including a periodic device redraw
        assert cell_updates == [] and run_shows == []

        v = a.view
        v.devices["balance"].readings = {"mass_g": 18.5, "stable": True}
        v.touch("devices")
        await until(pilot, lambda: bool(cell_updates), "the balance cell")
        await pilot.pause(0.3)
        assert cell_updates == [("balance", "readings")]
        assert run_shows == []
