"""The one problem type and the one error type, from validation to the operator's screen.

`Issue` is a fault with its JSON path (`steps[3].args.volume`): the recipe validator
collects them, the MQTT reply carries them (its schema is this class's), the TUI lists
them. `BenchError` is a bench refusing or failing a command, with a code from the MQTT
contract: the local service (labctl.bench.local) raises it, the agent sends it, the MQTT
client raises it again from the reply, the TUI shows it. Nothing translates it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict

from labctl.errors import LabctlError

ErrorCode = Literal[
    "too_large",        # payload over 1 MiB
    "bad_json",         # not UTF-8 JSON, or not an object
    "bad_payload",      # JSON object with wrong/missing fields (path names the field)
    "unknown_command",
    "invalid_recipe",   # the recipe or its parameters failed validation (issues listed)
    "recipe_not_found", # recipe_ref names no recipe of the bench's recipe folder
    "refused",          # not possible in the bench's present state (e.g. pause when idle)
    "not_found",        # unknown run id
    "forbidden",        # not the sender's to do: another owner's run, a reply topic outside
                        # the sender's own reply namespace
    "internal",         # a bug; the agent keeps serving
]

#: codes that never go on the wire: the bench could not be asked at all
LocalCode = Literal["timeout", "unreachable", "not_authorized"]


def _no_description(schema: dict[str, Any]) -> None:
    schema.pop("description", None)  # the MQTT reply schema predates this docstring


@dataclass(frozen=True)
class Issue:
    """One fault: where (a JSON path such as `steps[3].args.volume`) and what."""

    __pydantic_config__ = ConfigDict(json_schema_extra=_no_description)

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class BenchError(LabctlError):
    """A command the bench refused (code, message, JSON path, every issue) or could not
    be asked (`timeout`, `unreachable`)."""

    def __init__(self, code: ErrorCode | LocalCode, message: str, *, path: str | None = None,
                 issues: list[Issue] | None = None):
        super().__init__(message)
        self.code: ErrorCode | LocalCode = code
        self.message = message
        self.path = path
        self.issues: list[Issue] = list(issues or [])

    @classmethod
    def invalid(cls, issues: list[Issue]) -> BenchError:
        """An invalid recipe: every issue, the first one named in the message."""
        found = list(issues) or [Issue("", "invalid recipe")]
        first = found[0]
        return cls("invalid_recipe", f"{len(found)} problem(s): {first.path}: {first.message}",
                   path=first.path or None, issues=found)


def wire_code(code: ErrorCode | LocalCode) -> ErrorCode:
    """The code a reply may carry: a local-only code (the bench could not be asked) never
    comes from a bench, so one reaching the wire is a bug."""
    if code in ("timeout", "unreachable", "not_authorized"):
        return "internal"
    return code  # type: ignore[return-value]  # the other codes are ErrorCode's
