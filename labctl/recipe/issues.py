"""The one error type of the recipe language: every fault found, each with its JSON path."""

from __future__ import annotations

from dataclasses import dataclass

from labctl.errors import LabctlError


@dataclass(frozen=True)
class Issue:
    """One fault: where (a JSON path such as `steps[3].args.volume`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class RecipeError(LabctlError):
    """A recipe cannot run as given. Carries every issue found, not only the first, so an
    author (or an AI server) can fix them all at once."""

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues) or [Issue("", "invalid recipe")]
        lines = "\n".join(f"  {i}" for i in self.issues[:50])
        more = f"\n  … and {len(self.issues) - 50} more" if len(self.issues) > 50 else ""
        super().__init__(f"invalid recipe ({len(self.issues)} "
                         f"issue{'s' if len(self.issues) != 1 else ''}):\n{lines}{more}")

    @classmethod
    def one(cls, path: str, message: str) -> RecipeError:
        return cls([Issue(path, message)])

    def to_dict(self) -> dict[str, object]:
        return {"ok": False, "errors": [i.to_dict() for i in self.issues]}
