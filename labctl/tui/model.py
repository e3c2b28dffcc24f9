"""The TUI's view of a bench: plain data that both backends fill and every widget reads.

Local and remote benches report in different shapes (an in-process `Bench`, MQTT payloads);
the backends translate both into this one model, so the widgets never know which they show.
Each section carries a version counter: the app redraws a widget only when its section
changed, which keeps the screen still at 10 updates per second.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

STALE_AFTER_S = 5.0
"""A device reading older than this (wall seconds) is shown as stale."""
EVENT_LINES = 500
PLOT_POINTS = 5000
LEAF_KINDS = ("action", "wait", "analysis")
ACTIVE_RUN_STATES = ("validating", "ready", "running", "pausing", "paused", "stopping")
FINAL_RUN_STATES = ("completed", "aborted", "failed")


@dataclass
class DeviceRow:
    """One device: its last good reading, and whether that is still fresh."""

    name: str
    state: str = "unknown"
    readings: dict[str, Any] = field(default_factory=dict)
    fault: str | None = None
    error: str | None = None  # the last poll's failure (the reading is then kept, stale)
    updated: float | None = None  # time.time() of the last good reading

    def age_s(self, now: float | None = None) -> float | None:
        if self.updated is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.updated)

    def stale(self, now: float | None = None, after_s: float = STALE_AFTER_S) -> bool:
        age = self.age_s(now)
        return self.error is not None or age is None or age > after_s


@dataclass
class StepRow:
    """One leaf step of the run and how far it got."""

    id: str
    kind: str = "action"
    device: str | None = None
    action: str | None = None
    description: str = ""
    state: str = "pending"  # pending running paused retrying done failed cancelled skipped
    attempt: int = 0
    error: str | None = None


@dataclass
class RunView:
    run_id: str
    recipe: str = ""
    version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    state: str = "ready"
    steps: list[StepRow] = field(default_factory=list)
    plan_known: bool = True  # False: steps are learnt from events (remote benches)
    fraction: float = 0.0
    steps_done: int = 0
    steps_total: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    result: dict[str, Any] | None = None

    def step(self, step_id: str) -> StepRow | None:
        for s in self.steps:
            if s.id == step_id:
                return s
        return None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_RUN_STATES


@dataclass
class QueueRow:
    """A queued run, or (state other than "queued") one running beside the run shown."""

    run_id: str
    recipe: str = ""
    position: int | None = None
    priority: int = 0
    state: str = "queued"

    @property
    def queued(self) -> bool:
        return self.state == "queued"


@dataclass
class Measurement:
    """The points of the measurement in progress (or the last one), as x/y pairs."""

    run_id: str | None
    step: str | None
    technique: str
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)

    @property
    def axes(self) -> tuple[str, str, str]:
        """(title, x label, y label) for this technique."""
        return plot_axes(self.technique)

    def add(self, x: float, y: float) -> None:
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > PLOT_POINTS:  # keep the newest; a plot this wide shows no more
            del self.xs[: len(self.xs) - PLOT_POINTS]
            del self.ys[: len(self.ys) - PLOT_POINTS]


def plot_axes(technique: str) -> tuple[str, str, str]:
    t = technique.lower()
    if t in ("cv", "lsv"):
        return (t.upper(), "E / V", "I / A")
    if t in ("peis", "eis", "geis"):
        return ("EIS (Nyquist)", "Re Z / ohm", "-Im Z / ohm")
    if t == "ca":
        return ("CA", "t / s", "I / A")
    return (t.upper(), "t / s", "U / V")


@dataclass
class EventLine:
    time: str  # HH:MM:SS from the event's own timestamp (never the screen's clock)
    kind: str
    text: str
    level: str = "info"  # info warning error


@dataclass
class BenchView:
    """Everything the screens show, with a version counter per section."""

    bench_id: str = ""
    mode: str = "local"  # local | remote
    connected: bool = False
    connection: str = "starting"  # what the link to the bench is doing, in words
    state: str = "unknown"
    simulated: bool | None = None
    run: RunView | None = None
    queue: list[QueueRow] = field(default_factory=list)
    devices: dict[str, DeviceRow] = field(default_factory=dict)
    measurement: Measurement | None = None
    events: deque[EventLine] = field(default_factory=lambda: deque(maxlen=EVENT_LINES))
    events_total: int = 0  # lines ever added (the log appends only the new ones)
    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("bench", "run", "queue", "devices", "plot", "events"), 0))

    def touch(self, *sections: str) -> None:
        for s in sections:
            self.versions[s] = self.versions.get(s, 0) + 1

    @property
    def run_active(self) -> bool:
        return self.run is not None and self.run.active

    def log(self, ev: EventLine) -> None:
        self.events.append(ev)
        self.events_total += 1
        self.touch("events")


# ---------------------------------------------------------------- events -> view

def event_kind(ev: dict[str, Any]) -> str:
    return str(ev.get("event") or ev.get("type") or "event")


def hms(stamp: Any) -> str:
    """`2026-01-02T03:04:05.678Z` -> `03:04:05` (the event's time, not the screen's)."""
    text = str(stamp or "")
    if "T" in text:
        return text.split("T", 1)[1][:8]
    return text[:8]


def _failures(errors: Any) -> str:
    """Devices whose safe state failed, each with its error text."""
    if not isinstance(errors, dict):
        return str(errors)
    return "; ".join(f"{name} ({text})" for name, text in errors.items())


def describe_event(ev: dict[str, Any]) -> EventLine | None:
    """One line of the event log, or None for events too chatty to list."""
    kind = event_kind(ev)
    step = ev.get("step")
    level = "info"
    if kind == "transition":
        text = f"run {ev.get('source')} -> {ev.get('dest')}"
        if ev.get("reason"):
            text += f" ({ev['reason']})"
        if ev.get("dest") == "failed":
            level = "error"
    elif kind == "step_started":
        if ev.get("kind") not in LEAF_KINDS:
            return None
        what = f"{ev['device']}.{ev.get('action')}" if ev.get("device") else ev.get("kind")
        again = f" (attempt {ev['attempt']})" if (ev.get("attempt") or 1) > 1 else ""
        text = f"start {step}: {what}{again}"
    elif kind == "step_finished":
        if ev.get("kind") not in LEAF_KINDS:
            return None
        text = f"done  {step}"
    elif kind == "step_failed":
        level = "warning" if ev.get("retrying") or ev.get("continued") else "error"
        text = f"FAIL  {step}: {ev.get('error')}" + (" (retrying)" if ev.get("retrying") else "")
    elif kind == "step_cancelled":
        text = f"cancel {step}"
    elif kind == "run_finished":
        text = f"run {ev.get('run_id')} {str(ev.get('status', '')).upper()}"
        level = "info" if ev.get("status") == "completed" else "error"
    elif kind == "estop":
        text, level = "E-STOP: every device to its safe state", "error"
    elif kind == "safe_state":
        text = f"safe state ({ev.get('reason')})"
        level = "warning"
    elif kind == "safe_state_done":
        errs = ev.get("errors") or {}
        text = "safe state applied" + (f"; FAILED on {_failures(errs)}" if errs else "")
        level = "error" if errs else "info"
    elif kind == "warning":
        text, level = f"warning: {ev.get('message')}", "warning"
    elif kind == "queued":
        text = f"queued {ev.get('run_id')} at position {ev.get('position')}"
    elif kind == "queue_released":
        text = "queue released"
    elif kind == "device_paused":
        text = f"paused {ev.get('device')} in {step}"
    elif kind == "device_resumed":
        text = f"resumed {ev.get('device')} in {step}"
    elif kind == "bench_started":
        errs = ev.get("safe_state_errors") or {}
        text = "bench started, devices safe" + (f" except {_failures(errs)}" if errs else "")
        level = "error" if errs else "info"
    elif kind == "data_file":
        text = f"data {ev.get('technique')} -> {ev.get('path')}"
    elif kind == "record":
        return None  # provenance facts: in the run record, too many for the log
    elif kind == "operator":
        text = str(ev.get("message"))
        level = str(ev.get("level") or "info")
    else:
        text = kind + (f" {step}" if step else "")
    return EventLine(hms(ev.get("t") or ev.get("time")), kind, text, level)


def apply_event(view: BenchView, ev: dict[str, Any]) -> None:
    """Fold one bench event into the view (step states, run state, log)."""
    line = describe_event(ev)
    if line is not None:
        view.log(line)
    run = view.run
    if run is None or (ev.get("run_id") and ev.get("run_id") != run.run_id):
        return
    kind = event_kind(ev)
    step_id = ev.get("step")
    row = run.step(str(step_id)) if step_id is not None else None
    if kind == "step_started" and ev.get("kind") in LEAF_KINDS and step_id is not None:
        if row is None:  # learnt from events (no plan at hand)
            row = StepRow(id=str(step_id), kind=str(ev.get("kind")), device=ev.get("device"),
                          action=ev.get("action"))
            run.steps.append(row)
        row.state = "running"
        row.attempt = int(ev.get("attempt") or 1)
    elif row is not None and kind == "step_finished":
        row.state = "done"
    elif row is not None and kind == "step_failed":
        row.state = "retrying" if ev.get("retrying") else "failed"
        row.error = str(ev.get("error"))
    elif row is not None and kind == "step_cancelled":
        row.state = "cancelled"
    elif row is not None and kind == "device_paused":
        row.state = "paused"
    elif row is not None and kind == "device_resumed":
        row.state = "running"
    elif kind == "transition" and ev.get("dest"):
        run.state = str(ev["dest"])
        if run.state == "paused":
            for s in run.steps:
                if s.state == "running" and s.kind == "wait":
                    s.state = "paused"
        elif run.state == "running":
            for s in run.steps:
                if s.state == "paused":
                    s.state = "running"
        view.touch("bench")
    elif kind == "run_finished":
        run.state = str(ev.get("status") or run.state)
        result = ev.get("result")
        if isinstance(result, dict):
            run.result = result
        run.eta_s = 0.0
        if run.state == "completed":
            run.fraction = 1.0
        view.touch("bench")
    else:
        return
    if not run.plan_known:
        run.steps_total = len(run.steps)
    run.steps_done = sum(1 for s in run.steps if s.state in ("done", "skipped"))
    view.touch("run")
