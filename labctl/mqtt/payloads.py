"""Pydantic models of every MQTT payload, and the strict decoding of incoming commands.

They are the published contract with AI servers (`labctl schema --mqtt` prints their JSON
Schemas), so the agent decodes through them and the client SDK encodes through them.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from labctl.problems import ErrorCode, Issue

#: the queue priorities every adapter accepts (higher runs first)
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000


def parse_priority(text: str) -> int:
    """A queue priority typed by a person (the TUI form, a CSV cell); empty means 0.
    ValueError saying the range when it is not an integer in it."""
    text = text.strip()
    try:
        value = int(text) if text else 0
    except ValueError:
        value = None
    if value is None or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(f"{text!r} is not an integer from {PRIORITY_MIN} to {PRIORITY_MAX}")
    return value

MAX_PAYLOAD_BYTES = 1024 * 1024
"""Commands larger than this (1 MiB) are refused unread."""

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_RECIPE_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"

CommandName = Literal[
    "submit", "validate", "pause", "resume", "abort", "estop", "cancel", "status", "list",
    "inventory", "samples"
]

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInfo(BaseModel):
    """The AI server's own request id and whatever metadata it wants in the provenance."""

    model_config = ConfigDict(extra="allow")
    id: str | None = Field(default=None, max_length=256, description="The AI server's request id.")
    client: str | None = Field(default=None, max_length=256, description="AI client / tenant.")


class _CommandBase(_Model):
    id: str = Field(pattern=_ID_PATTERN, description="Unique command id (also a topic level).")


class _RecipeSource(_CommandBase):
    recipe: dict[str, Any] | None = Field(
        default=None, description="An inline recipe object (schema labctl.recipe/1).")
    recipe_ref: str | None = Field(
        default=None, pattern=_RECIPE_REF_PATTERN,
        description="Name of a recipe in the bench's recipe folder (no paths).")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Recipe parameter values (strings with units, numbers).")

    @model_validator(mode="after")
    def _one_source(self) -> _RecipeSource:
        if (self.recipe is None) == (self.recipe_ref is None):
            raise ValueError("exactly one of 'recipe' and 'recipe_ref' is required")
        if self.recipe_ref is not None and ".." in self.recipe_ref:
            raise ValueError("recipe_ref must not contain '..'")
        return self


class SubmitCommand(_RecipeSource):
    """Queue a run of a recipe; the reply carries its run id and queue position."""

    command: Literal["submit"]
    request: RequestInfo | None = None
    priority: int = Field(default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX,
                          description="Higher runs first; equal priorities in submission "
                                      "order.")


class ValidateCommand(_RecipeSource):
    """Check a recipe and parameters against the bench without running anything."""

    command: Literal["validate"]


class _RunControl(_CommandBase):
    run_id: str | None = Field(default=None, pattern=_ID_PATTERN,
                               description="The running run to act on; omitted: every "
                                           "running run.")


class PauseCommand(_RunControl):
    command: Literal["pause"]


class ResumeCommand(_RunControl):
    command: Literal["resume"]


class AbortCommand(_RunControl):
    command: Literal["abort"]


class EstopCommand(_CommandBase):
    command: Literal["estop"]


class CancelCommand(_CommandBase):
    """Remove a queued (not yet started) run."""

    command: Literal["cancel"]
    run_id: str = Field(pattern=_ID_PATTERN)


class StatusCommand(_CommandBase):
    command: Literal["status"]


#: The most runs one `list` command may ask for.
LIST_LIMIT_MAX = 1000


class ListCommand(_CommandBase):
    """Recent runs of the bench, newest first."""

    command: Literal["list"]
    limit: int = Field(default=50, ge=1, le=LIST_LIMIT_MAX)


_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class InventoryCommand(_CommandBase):
    """The bench's reservoir and dispenser levels: `show` (anyone), `refill` (vessel,
    amount, lot) or `set` (vessel, material, amount, lot) — operators only."""

    command: Literal["inventory"]
    action: Literal["show", "refill", "set"] = "show"
    vessel: str | None = Field(default=None, pattern=_NAME_PATTERN)
    material: str | None = Field(default=None, pattern=_NAME_PATTERN)
    amount: str | None = Field(default=None, max_length=64,
                               description="With its unit: '100 mL', '10 g'.")
    lot: str | None = Field(default=None, max_length=128)


class SamplesCommand(_CommandBase):
    """The bench's samples: `list`, or `show` one (with its chain of origin)."""

    command: Literal["samples"]
    action: Literal["list", "show"] = "list"
    sample_id: str | None = Field(default=None, pattern=_ID_PATTERN)


Command = Annotated[
    SubmitCommand | ValidateCommand | PauseCommand | ResumeCommand | AbortCommand
    | EstopCommand | CancelCommand | StatusCommand | ListCommand | InventoryCommand
    | SamplesCommand,
    Field(discriminator="command"),
]
COMMANDS: tuple[str, ...] = CommandName.__args__  # type: ignore[attr-defined]
_command_adapter: TypeAdapter[Any] = TypeAdapter(Command)


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str
    path: str | None = Field(default=None, description="JSON path of the fault, when one.")
    issues: list[Issue] | None = None


class Reply(BaseModel):
    """The answer to one command (published again, identical, for a duplicate id)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None
    ok: bool
    command: str | None = None
    error: ErrorInfo | None = None
    run_id: str | None = None
    queue_position: int | None = Field(default=None, description="0 = running now.")
    status: dict[str, Any] | None = None
    runs: list[dict[str, Any]] | None = None
    issues: list[Issue] | None = None
    inventory: dict[str, Any] | None = Field(default=None, description="inventory: levels "
                                             "(and recent events) after the command.")
    samples: list[dict[str, Any]] | None = Field(default=None, description="samples: list, "
                                                 "or [the sample] for show.")


class StatusPayload(BaseModel):
    """Retained on `status`: what the bench is doing now."""

    model_config = ConfigDict(extra="allow")
    bench_id: str
    time: str = Field(description="UTC ISO-8601.")
    state: str = Field(description="idle, running, pausing, paused, stopping, ...")
    run_id: str | None = None
    step: str | None = None
    progress: float | None = Field(default=None, description="0..1 of the current run.")
    queue: list[str] = Field(default_factory=list, description="Queued run ids, next first.")
    running: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Every running run (run_id, recipe, state, steps, progress, owner); "
                    "run_id/step/progress above are the first of them.")
    devices: dict[str, Any] = Field(default_factory=dict)


class EventPayload(BaseModel):
    """One run event on `events`, as it happens."""

    model_config = ConfigDict(extra="allow")
    bench_id: str
    seq: int = Field(description="Per-agent sequence number (gaps mean dropped events).")
    time: str
    type: str = Field(description="e.g. run_started, step_started, step_finished, fault.")
    run_id: str | None = None
    step: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ResultPayload(BaseModel):
    """Retained on `runs/<run_id>/result` (QoS 1): the outcome of one run."""

    model_config = ConfigDict(extra="allow")
    bench_id: str
    run_id: str
    status: str = Field(description="completed, failed or aborted; interrupted when the "
                        "agent's process died during the run (in_doubt names the steps that "
                        "started and did not finish, resume how an operator continues it).")
    request_id: str | None = Field(default=None, description="The AI request this answers.")
    request: dict[str, Any] | None = None
    figures_of_merit: list[dict[str, Any]] = Field(
        default_factory=list, description="[{name, value, unit, method, ...}] per figure.")
    data_files: list[dict[str, Any]] = Field(default_factory=list,
                                             description="{path, sha256} per data file.")
    fidelity: dict[str, Any] | str | None = Field(
        default=None, description="Whether the data come from simulators or instruments.")
    provenance: dict[str, Any] = Field(default_factory=dict)
    errors: list[Any] = Field(default_factory=list)


class AgentPayload(BaseModel):
    """Retained on `agent`: which agent instance controls the bench."""

    model_config = ConfigDict(extra="allow")
    instance: str = Field(description="Random id of this agent process.")
    host: str
    pid: int
    since: str = Field(description="UTC ISO-8601 start time of the agent.")
    bench_id: str
    client_id: str = Field(description="The agent's MQTT client id.")


OnlineState = Literal["online", "offline"]
"""Retained on `online` as plain text (MQTT 5 user properties carry instance, host, pid,
since and reason)."""


class PayloadError(Exception):
    """An incoming payload that cannot be served; `command_id` is set when one was found."""

    def __init__(self, code: ErrorCode, message: str, *, path: str | None = None,
                 command_id: str | None = None, command: str | None = None):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.path = path
        self.command_id = command_id
        self.command = command

    def reply(self) -> Reply:
        return Reply(id=self.command_id, ok=False, command=self.command,
                     error=ErrorInfo(code=self.code, message=self.message, path=self.path))


_ID_PEEK = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9_.:-]{0,127})"')


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def decode_command(payload: bytes) -> Any:
    """Bytes from `cmd` -> one of the command models; PayloadError (with the command id
    whenever it can be found) for anything else. Never raises anything else."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        m = _ID_PEEK.search(payload[:4096])
        raise PayloadError("too_large",
                           f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES} bytes",
                           command_id=m.group(1).decode() if m else None)
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        m = _ID_PEEK.search(payload[:4096])
        raise PayloadError("bad_json", f"not valid UTF-8 JSON: {exc}",
                           command_id=m.group(1).decode() if m else None) from None
    if not isinstance(data, dict):
        raise PayloadError("bad_json", f"a command is a JSON object, not {type(data).__name__}")
    raw_id = data.get("id")
    cid = raw_id if isinstance(raw_id, str) and re.match(_ID_PATTERN, raw_id) else None
    name = data.get("command")
    cname = name if isinstance(name, str) else None
    if cname not in COMMANDS:
        where = "command"
        msg = (f"unknown command {name!r} (one of {', '.join(COMMANDS)})" if "command" in data
               else "missing field 'command'")
        raise PayloadError("unknown_command", msg, path=where, command_id=cid, command=cname)
    try:
        return _command_adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if p != cname)
        path = _loc(loc) or None
        message = f"{path}: {first['msg']}" if path else first["msg"]
        if len(exc.errors()) > 1:
            message += f" (and {len(exc.errors()) - 1} more)"
        raise PayloadError("bad_payload", message, path=path, command_id=cid,
                           command=cname) from None
    except RecursionError:
        raise PayloadError("bad_payload", "nested too deeply", command_id=cid,
                           command=cname) from None


SCHEMA_VERSION = "1.0.0"
"""Version of the payload schemas (semver: a new optional field is a minor step, anything
an older client would misread a major one). Part of every schema's `$id`."""

#: topic role -> the pydantic type of its payload
PAYLOAD_TYPES: dict[str, Any] = {
    "cmd": Command,
    "reply": Reply,
    "status": StatusPayload,
    "events": EventPayload,
    "result": ResultPayload,
    "online": OnlineState,
    "agent": AgentPayload,
}


def schema_id(role: str) -> str:
    return f"urn:labctl:mqtt:{role}:{SCHEMA_VERSION}"


def json_schema(role: str) -> dict[str, Any]:
    """JSON Schema (draft 2020-12, as pydantic emits) of one payload, with `$id` and
    version."""
    body = TypeAdapter(PAYLOAD_TYPES[role]).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id(role),
            "x-version": SCHEMA_VERSION, **body}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The schema of every payload, by topic role."""
    return {role: json_schema(role) for role in PAYLOAD_TYPES}
