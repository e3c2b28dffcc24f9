"""The record of the current or last run: outcome, figures of merit, errors, provenance."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def error_lines(err: Any) -> list[str]:
    """What one entry of a result's `errors` says, never "None": its message, and for a
    safe-state failure each device with its error (records written before the entry had a
    message carry only the devices)."""
    if not isinstance(err, dict):
        return [str(err)]
    kind = err.get("type")
    devices = err.get("devices")
    if isinstance(devices, dict) and devices:
        head = "safe state not reached" if kind == "SafeStateError" else str(kind or "error")
        return [f"{head}: {name}: {text}" for name, text in devices.items()]
    msg = err.get("message") or err.get("error")
    if msg:
        return [str(msg)]
    rest = {k: v for k, v in err.items() if v is not None}
    return [json.dumps(rest, default=str) if rest else "unknown error (no details recorded)"]


def summary(rec: dict[str, Any]) -> Text:
    result = rec.get("result") or {}
    index = rec.get("index") or {}
    meta = rec.get("metadata") or {}
    t = Text()
    t.append(f"run {rec.get('run_id')}\n", style="bold")
    status = result.get("status") or index.get("status") or "in progress"
    t.append("status      ")
    t.append(f"{str(status).upper()}\n", style="bold")
    recipe = result.get("recipe") or meta.get("recipe") or {}
    if isinstance(recipe, dict):
        t.append(f"recipe      {recipe.get('name')} v{recipe.get('version')}\n")
    params = result.get("parameters") or meta.get("parameters")
    if params:
        t.append("parameters  " + ", ".join(
            f"{k}={v.get('text', v.get('value')) if isinstance(v, dict) else v}"
            for k, v in params.items()) + "\n")
    who = result.get("instigator") or meta.get("instigator") or {}
    if who:
        t.append(f"instigator  {who.get('kind')}:{who.get('id')}\n")
    times = meta.get("times") or {}
    started = result.get("started") or times.get("started") or index.get("started")
    ended = result.get("ended") or times.get("ended") or index.get("ended")
    t.append(f"started     {started or '-'}\nended       {ended or '-'}\n")
    fid = result.get("fidelity") or meta.get("fidelity")
    if isinstance(fid, dict):
        t.append(f"fidelity    {fid.get('level')}\n")
    for fig in result.get("figures_of_merit") or []:
        name = fig.get("name") or fig.get("quantity") or fig.get("analysis")
        t.append(f"figure      {name} = {fig.get('value')} {fig.get('unit') or ''}\n",
                 style="bold")
    for err in result.get("errors") or []:
        for line in error_lines(err):
            t.append(f"error       {line}\n", style="reverse")
    for f in result.get("data_files") or []:
        t.append(f"data        {f.get('path')}\n")
    if rec.get("path"):
        t.append(f"record      {rec['path']}\n")
    return t


class RunRecordScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"), Binding("l", "close", "Close"),
        Binding("e", "app.estop", "E-STOP"),  # e-stop works over every dialog
    ]

    def __init__(self, record: dict[str, Any]):
        super().__init__()
        self.record = record

    def compose(self) -> ComposeResult:
        with Vertical(id="record-box", classes="dialog"):
            yield Static("Run record  (Esc to close)", classes="dialog-title")
            with VerticalScroll(id="record-scroll"):
                yield Static(summary(self.record), id="record-summary")
                meta = self.record.get("metadata")
                if meta:
                    yield Static(Text("metadata.json", style="bold"))
                    yield Static(Text(json.dumps(meta, indent=2, default=str)),
                                 id="record-metadata")

    def action_close(self) -> None:
        self.dismiss(None)
