"""The one error type of the recipe language: every fault found, each with its JSON path
(labctl.problems.Issue, the problem type every front end shows)."""

from __future__ import annotations

from labctl.errors import LabctlError
from labctl.problems import Issue


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


__all__ = ["Issue", "RecipeError"]
