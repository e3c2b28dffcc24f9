"""A recipe's parameters as a form, checked by the bench before anything runs.

Every field starts at the declared default; a last field sets the run's queue priority
(higher first, then submission order; 0 unless changed). Start validates on the bench
(locally with the recipe planner, remotely through the agent) and either queues the run or
shows each problem under the field its JSON path names (`parameters.flow`); problems
elsewhere in the recipe (a step's volume over a syringe's size) are listed at the top.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from labctl.mqtt.payloads import PRIORITY_MAX, PRIORITY_MIN, parse_priority
from labctl.problems import BenchError
from labctl.recipe.parameters import coerce_value
from labctl.tui.backend import BenchBackend, Problem, RecipeEntry


class FormProblems(Exception):
    """Fields that cannot be read as their declared type."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(f"{p.path}: {p.message}" for p in problems))
        self.problems = problems


def field_of(path: str, names: list[str]) -> str | None:
    """`parameters.flow` or `parameters.flow.default` -> `flow` (when it is a field)."""
    parts = path.split(".")
    if len(parts) >= 2 and parts[0] == "parameters" and parts[1] in names:
        return parts[1]
    return None


def describe(name: str, decl: dict[str, Any]) -> str:
    kind = str(decl.get("type") or "value")
    unit = f" {decl['unit']}" if decl.get("unit") else ""
    bits = [f"{name} ({kind}{unit})"]
    if decl.get("min") is not None or decl.get("max") is not None:
        bits.append(f"[{decl.get('min', '')} … {decl.get('max', '')}]")
    if decl.get("choices"):
        bits.append("one of " + ", ".join(map(str, decl["choices"])))
    if decl.get("description"):
        bits.append(f"— {decl['description']}")
    return " ".join(bits)


def initial(decl: dict[str, Any]) -> str:
    d = decl.get("default")
    if d is None:
        return ""
    if isinstance(d, bool):
        return "true" if d else "false"
    return str(d)


class ParameterFormScreen(ModalScreen[str | None]):
    """Dismissed with the queued run's id, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "start", "Start run"),
        Binding("e", "app.estop", "E-STOP"),  # e-stop works over every dialog
    ]

    def __init__(self, backend: BenchBackend, entry: RecipeEntry):
        super().__init__()
        self.backend = backend
        self.entry = entry
        self.names = list(entry.parameters)
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(id="form-box", classes="dialog"):
            yield Static(Text(f"{self.entry.name}  ({self.entry.path.name})", style="bold"),
                         classes="dialog-title")
            yield Static("", id="form-problems")
            with VerticalScroll(id="form-fields"):
                if not self.names:
                    yield Static("this recipe has no parameters", classes="field-label")
                for name in self.names:
                    decl = self.entry.parameters[name]
                    yield Static(describe(name, decl), classes="field-label")
                    yield Input(initial(decl), id=f"param-{name}", placeholder=name)
                    yield Static("", id=f"err-{name}", classes="field-error")
                yield Static(f"queue priority (integer {PRIORITY_MIN} … {PRIORITY_MAX}) — "
                             "higher runs first, then submission order",
                             classes="field-label")
                yield Input("0", id="run-priority", placeholder="0")
                yield Static("", id="err-run-priority", classes="field-error")
            with Horizontal(classes="buttons"):
                yield Button("Start (ctrl+s)", id="form-start", variant="success")
                yield Button("Cancel (esc)", id="form-cancel")

    def values(self) -> dict[str, Any]:
        """What the operator typed, typed by the recipe's declarations (an integer as an
        int, a quantity as text with its unit...); an emptied field means the declared
        default. Raises FormProblems when a field cannot be read as its type."""
        out: dict[str, Any] = {}
        problems: list[Problem] = []
        for name in self.names:
            text = self.query_one(f"#param-{name}", Input).value.strip()
            if not text:
                continue
            try:
                out[name] = coerce_value(self.entry.parameters[name], text)
            except ValidationError:  # a broken declaration: the planner reports it
                out[name] = text
            except ValueError as exc:
                kind = self.entry.parameters[name].get("type") or "value"
                problems.append(Problem(f"parameters.{name}",
                                        f"{text!r} is not a valid {kind}: {exc}"))
        if problems:
            raise FormProblems(problems)
        return out

    def priority(self) -> int:
        """The queue priority typed (empty: 0); FormProblems when it is not an integer in
        the range every adapter accepts."""
        try:
            return parse_priority(self.query_one("#run-priority", Input).value)
        except ValueError as exc:
            raise FormProblems([Problem("priority", str(exc))]) from None

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "form-start":
            self.action_start()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_start()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_start(self) -> None:
        if self.busy:
            return
        problems: list[Problem] = []
        values: dict[str, Any] = {}
        priority = 0
        try:
            values = self.values()
        except FormProblems as exc:
            problems += exc.problems
        try:
            priority = self.priority()
        except FormProblems as exc:
            problems += exc.problems
        if problems:  # nothing goes to the bench
            self.show_problems(problems)
            return
        self.busy = True
        self.query_one("#form-problems", Static).update(Text("checking on the bench…",
                                                             style="italic"))
        self._submit(values, priority)

    @work(exclusive=True, group="form")
    async def _submit(self, values: dict[str, Any], priority: int) -> None:
        try:
            run_id = await self.backend.submit(self.entry.path, values, priority=priority)
        except BenchError as exc:  # an invalid recipe lists every issue
            self.show_problems(exc.issues or [Problem("", exc.message)])
        else:
            self.dismiss(run_id)
        finally:
            self.busy = False

    def _mark(self, input_id: str, err_id: str, msgs: list[str]) -> None:
        """A field's problems under it (none: cleared), the field marked invalid."""
        err = self.query_one(f"#{err_id}", Static)
        err.update(Text("✖ " + "; ".join(msgs), style="bold") if msgs else "")
        err.set_class(bool(msgs), "shown")
        self.query_one(f"#{input_id}", Input).set_class(bool(msgs), "invalid-field")

    def show_problems(self, problems: list[Problem]) -> None:
        per_field: dict[str, list[str]] = {}
        general: list[str] = []
        priority_msgs: list[str] = []
        for p in problems:
            name = field_of(p.path, self.names)
            if p.path == "priority":
                priority_msgs.append(p.message)
            elif name is not None:
                per_field.setdefault(name, []).append(p.message)
            else:
                general.append(f"{p.path}: {p.message}" if p.path else p.message)
        for name in self.names:
            self._mark(f"param-{name}", f"err-{name}", per_field.get(name) or [])
        self._mark("run-priority", "err-run-priority", priority_msgs)
        box = self.query_one("#form-problems", Static)
        if general:
            box.update(Text("✖ not started:\n" + "\n".join(f"  {g}" for g in general),
                            style="bold"))
        elif per_field or priority_msgs:
            box.update(Text("✖ not started: fix the fields marked below", style="bold"))
        else:
            box.update("")
        first = next(iter(per_field), None)
        if first is not None:
            self.query_one(f"#param-{first}", Input).focus()
        elif priority_msgs:
            self.query_one("#run-priority", Input).focus()
