"""The TUI's pure parts: folding bench events into the view, following a BDF file while it
is written, readings in a few words, staleness, and which form field a problem belongs to."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import bdf
from labctl.tui.measurement import BdfTail
from labctl.tui.model import (
    BenchView,
    DeviceRow,
    Measurement,
    RunView,
    StepRow,
    apply_event,
    describe_event,
)
from labctl.tui.readings import format_duration, format_readings
from labctl.tui.screens.param_form import field_of


def view_with_run() -> BenchView:
    v = BenchView()
    v.run = RunView("r1", steps=[StepRow("a"), StepRow("w", kind="wait"), StepRow("b")],
                    steps_total=3, state="running")
    return v


def test_step_lifecycle_from_events() -> None:
    v = view_with_run()
    apply_event(v, {"event": "step_started", "run_id": "r1", "step": "a", "kind": "action",
                    "device": "pump", "action": "transfer", "attempt": 1,
                    "t": "2026-01-01T10:00:01.000Z"})
    assert v.run is not None and v.run.step("a").state == "running"  # type: ignore[union-attr]
    apply_event(v, {"event": "step_failed", "run_id": "r1", "step": "a", "retrying": True,
                    "error": "DeviceTimeout: x"})
    assert v.run.step("a").state == "retrying"  # type: ignore[union-attr]
    apply_event(v, {"event": "step_started", "run_id": "r1", "step": "a", "kind": "action",
                    "attempt": 2})
    apply_event(v, {"event": "step_finished", "run_id": "r1", "step": "a", "kind": "action"})
    assert v.run.step("a").state == "done" and v.run.steps_done == 1  # type: ignore[union-attr]
    apply_event(v, {"event": "step_started", "run_id": "r1", "step": "w", "kind": "wait"})
    apply_event(v, {"event": "transition", "run_id": "r1", "source": "pausing",
                    "dest": "paused"})
    assert v.run.state == "paused" and v.run.step("w").state == "paused"  # type: ignore[union-attr]
    apply_event(v, {"event": "transition", "run_id": "r1", "source": "paused",
                    "dest": "running"})
    assert v.run.step("w").state == "running"  # type: ignore[union-attr]
    apply_event(v, {"event": "step_cancelled", "run_id": "r1", "step": "w", "kind": "wait"})
    apply_event(v, {"event": "run_finished", "run_id": "r1", "status": "aborted",
                    "result": {"status": "aborted"}})
    assert v.run.state == "aborted" and v.run.result == {"status": "aborted"}
    assert v.run.step("w").state == "cancelled"  # type: ignore[union-attr]
    assert v.run.step("b").state == "pending"  # type: ignore[union-attr]
    texts = [e.text for e in v.events]
    assert texts[0] == "start a: pump.transfer"
    assert "(attempt 2)" in texts[2]
    assert v.events[0].time == "10:00:01"  # the event's own time, not the screen's


def test_events_of_another_run_do_not_touch_the_steps_and_records_are_not_logged() -> None:
    v = view_with_run()
    apply_event(v, {"event": "step_finished", "run_id": "other", "step": "a", "kind": "action"})
    assert v.run is not None and v.run.step("a").state == "pending"  # type: ignore[union-attr]
    apply_event(v, {"event": "record", "run_id": "r1", "kind": "addition"})
    assert [e.kind for e in v.events] == ["step_finished"]


def test_steps_learnt_from_events_when_no_plan_is_at_hand() -> None:
    v = BenchView()
    v.run = RunView("r2", plan_known=False)
    apply_event(v, {"event": "step_started", "run_id": "r2", "step": "first", "kind": "wait"})
    apply_event(v, {"event": "step_started", "run_id": "r2", "step": "p", "kind": "parallel"})
    assert [s.id for s in v.run.steps] == ["first"] and v.run.steps_total == 1


def test_failures_and_estop_are_marked_as_errors() -> None:
    line = describe_event({"event": "step_failed", "step": "s", "error": "DeviceFault: E7"})
    assert line is not None and line.level == "error" and "FAIL" in line.text
    estop = describe_event({"event": "estop"})
    assert estop is not None and estop.level == "error" and "E-STOP" in estop.text


def test_a_failed_safe_state_is_logged_with_its_text() -> None:
    err = "TimeoutError: not confirmed within 6 s (no answer)"
    done = describe_event({"event": "safe_state_done", "errors": {"dispenser": err}})
    assert done is not None and done.level == "error"
    assert f"dispenser ({err})" in done.text
    started = describe_event({"event": "bench_started",
                              "safe_state_errors": {"potentiostat": "DeviceTimeout: silent"}})
    assert started is not None and "potentiostat (DeviceTimeout: silent)" in started.text


def write_rows(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def test_bdf_tail_reads_whole_rows_only(tmp_path: Path) -> None:
    path = tmp_path / "s.bdf.csv"
    cols = [bdf.TEST_TIME, bdf.WE_POTENTIAL, bdf.CURRENT]
    m = Measurement("r", "s", "cv")
    tail = BdfTail(path, m)
    assert tail.poll() == 0  # not there yet
    write_rows(path, ",".join(cols) + "\n0.0,3.0,1e-6\n0.1,3.1,2e-6\n0.2,3.2")
    assert tail.poll() == 2
    assert m.xs == [3.0, 3.1] and m.ys == [1e-6, 2e-6]
    write_rows(path, ",4e-6\n0.3,,\n")  # the partial row completed; an empty one skipped
    assert tail.poll() == 1
    assert m.xs == [3.0, 3.1, 3.2] and m.ys[-1] == 4e-6
    assert tail.poll() == 0


def test_bdf_tail_nyquist_plots_minus_imaginary(tmp_path: Path) -> None:
    path = tmp_path / "eis.bdf.csv"
    write_rows(path, f"{bdf.FREQUENCY},{bdf.Z_REAL},{bdf.Z_IMAG}\n1000,12.5,-3.0\n")
    m = Measurement("r", "eis", "peis")
    assert BdfTail(path, m).poll() == 1
    assert (m.xs, m.ys) == ([12.5], [3.0])
    assert m.axes == ("EIS (Nyquist)", "Re Z / ohm", "-Im Z / ohm")


def test_cycling_plots_voltage_against_time() -> None:
    assert Measurement(None, None, "gcpl").axes[1:] == ("t / s", "U / V")


@pytest.mark.parametrize(("readings", "expected"), [
    ({"plunger_volume_l": 0.0025, "valve_port": 3}, "plunger 2.500 mL  port 3"),
    ({"position": 2, "vessel": "coat_vial"}, "pos 2 coat_vial"),
    ({"flow_l_s": 1e-3 / 60, "volume_l": 0.002, "speed_rpm": 10.0},
     "1.00 mL/min  vol 2.000 mL  10 rpm"),
    ({"temperature_c": 80.04, "setpoint_c": 80.0, "running": True}, "80.0 °C (sp 80.0)"),
    ({"temperature_c": 25.0, "setpoint_c": 80.0, "running": False}, "25.0 °C"),
    ({"mass_g": 1.23456, "stable": False}, "1.2346 g unstable"),
    ({"potential_v": 0.35, "current_a": -1.5e-9, "points_received": 7}, "E 350 mV  I -1.5 nA  #7"),
])
def test_readings_in_a_few_words(readings: dict[str, object], expected: str) -> None:
    assert format_readings(readings) == expected


def test_durations() -> None:
    assert (format_duration(None), format_duration(65), format_duration(3723)) == (
        "--", "1:05", "1:02:03")


def test_staleness() -> None:
    row = DeviceRow("d", updated=100.0)
    assert not row.stale(now=102.0, after_s=5.0)
    assert row.stale(now=106.0, after_s=5.0)
    row.error = "DeviceTimeout"
    assert row.stale(now=100.5, after_s=5.0)  # a failed poll: stale at once
    assert DeviceRow("never").stale(now=0.0)


def test_problem_paths_name_their_field() -> None:
    names = ["flow", "volume"]
    assert field_of("parameters.flow", names) == "flow"
    assert field_of("parameters.volume.default", names) == "volume"
    assert field_of("parameters.other", names) is None
    assert field_of("steps[2].args.volume", names) is None
