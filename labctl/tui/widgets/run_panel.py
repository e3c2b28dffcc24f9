"""The run: recipe, parameters, each step's state, progress, elapsed and ETA.

The step table is rebuilt only when a new run appears; after that single cells change. The
state of every step is a word and a symbol (`✔ done`, `▶ running`), not only a colour.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, ProgressBar, Static

from labctl.tui.model import BenchView, RunView, StepRow
from labctl.tui.readings import format_duration

STEP_STATES = {
    "pending": ("·", "pending", "dim"),
    "running": ("▶", "running", "bold"),
    "paused": ("⏸", "paused", "bold reverse"),
    "retrying": ("↻", "retrying", "bold"),
    "done": ("✔", "done", ""),
    "failed": ("✖", "FAILED", "bold reverse"),
    "cancelled": ("■", "cancelled", "italic"),
    "skipped": ("»", "skipped", "dim"),
}
RUN_STYLE = {"failed": "bold reverse", "aborted": "bold reverse", "paused": "bold reverse",
             "stopping": "bold reverse", "completed": "bold"}


def step_state_cell(step: StepRow) -> Text:
    sym, word, style = STEP_STATES.get(step.state, ("?", step.state, ""))
    return Text(f"{sym} {word}", style=style)


def step_what(step: StepRow) -> str:
    if step.kind == "wait":
        return step.description or "wait"
    if step.kind == "analysis":
        return f"analysis {step.action or ''}".strip()
    what = f"{step.device}.{step.action}" if step.device else (step.action or step.kind)
    return what


def _param(v: Any) -> str:
    return str(v)


class RunPanel(Vertical):
    """`show(view)` updates the panel in place."""

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self._run_id: str | None = None
        self._cells: dict[tuple[str, str], str] = {}
        self._step_ids: list[str] = []
        self._cursor_on: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="run-title")
        yield Static("", id="run-params")
        with Horizontal(id="run-progress-row"):
            yield ProgressBar(total=100, show_eta=False, id="run-progress")
            yield Static("", id="run-times")
        yield DataTable(cursor_type="row", show_header=False, id="run-steps")

    def on_mount(self) -> None:
        table = self.query_one("#run-steps", DataTable)
        table.add_column("state", key="state", width=11)
        table.add_column("step", key="step")
        table.add_column("what", key="what")

    def show(self, view: BenchView) -> None:
        run = view.run
        title = self.query_one("#run-title", Static)
        params = self.query_one("#run-params", Static)
        times = self.query_one("#run-times", Static)
        bar = self.query_one("#run-progress", ProgressBar)
        if run is None:
            title.update(Text("no run yet: press s to start a recipe", style="italic"))
            params.update("")
            times.update("")
            bar.update(progress=0)
            self._steps(None)
            return
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(run.state.upper(), style=RUN_STYLE.get(run.state, "bold"))
        t.append(f"  {run.recipe or 'recipe'}", style="bold")
        if run.version:
            t.append(f" v{run.version}")
        t.append(f"  {run.run_id}")
        title.update(t)
        shown = ", ".join(f"{k}={_param(v)}" for k, v in run.parameters.items())
        params.update(Text(f"params: {shown}" if shown else "params: (none)",
                           no_wrap=True, overflow="ellipsis"))
        bar.update(progress=round(100 * run.fraction, 1))
        total = run.steps_total if run.plan_known else None
        steps = f"{run.steps_done}/{total}" if total else f"{run.steps_done} done"
        times.update(Text(f" {steps}  t {format_duration(run.elapsed_s)}"
                          f"  ETA {format_duration(run.eta_s)}", no_wrap=True,
                          overflow="ellipsis"))
        self._steps(run)

    def _steps(self, run: RunView | None) -> None:
        table = self.query_one("#run-steps", DataTable)
        ids = [s.id for s in run.steps] if run else []
        rid = run.run_id if run else None
        if rid != self._run_id or ids[: len(self._step_ids)] != self._step_ids:
            table.clear()
            self._cells.clear()
            self._step_ids = []
            self._cursor_on = None
            self._run_id = rid
        if run is None:
            return
        for s in run.steps[len(self._step_ids):]:  # new rows (remote runs learn steps)
            table.add_row(step_state_cell(s), Text(s.id), Text(step_what(s)), key=s.id)
            self._step_ids.append(s.id)
        for s in run.steps:
            cell = step_state_cell(s)
            sig = f"{cell.plain}|{cell.style}"
            if self._cells.get((s.id, "state")) != sig:
                self._cells[(s.id, "state")] = sig
                table.update_cell(s.id, "state", cell)
        current = next((s.id for s in run.steps if s.state in ("running", "paused",
                                                                "retrying", "failed")), None)
        if current is not None and current != self._cursor_on:
            self._cursor_on = current
            table.move_cursor(row=self._step_ids.index(current))
