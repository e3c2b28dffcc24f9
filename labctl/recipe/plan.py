"""The resolved Plan the executor runs: every step expanded, every value resolved.

`build_plan` is pure: it reads the recipe (and the files it includes) and the bench config,
never a device. It raises `RecipeError` with every issue found, or returns a Plan whose
step ids are stable for the same recipe and parameters (loops are expanded here, with ids
such as `cycle[2].stir`), so a crashed run can be resumed step by step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

StepKind = Literal["action", "wait", "parallel", "sequence", "analysis"]


@dataclass
class PlannedStep:
    """One step of the plan. Leaves are "action", "wait" and "analysis"; "parallel" has
    one child per branch, each branch a "sequence"."""

    id: str
    path: str
    kind: StepKind
    device: str | None = None
    action: str | None = None  # the action, or the analysis name for analysis steps
    capability: str | None = None
    analysis: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None  # wait
    children: list[PlannedStep] = field(default_factory=list)
    timeout_s: float | None = None
    retries: int = 0
    on_error: str = "abort"
    idempotent: bool = False
    moves_material: bool = False
    #: an automatic retry cannot add material twice (nothing moved, or the action
    #: measures what a failed attempt delivered and adds only the rest)
    retry_safe: bool = True
    estimated_s: float = 0.0
    description: str = ""
    #: material effects as plain data (for the record and the TUI)
    effects: list[dict[str, Any]] = field(default_factory=list)

    def leaves(self) -> Iterator[PlannedStep]:
        if self.kind in ("action", "wait", "analysis"):
            yield self
        for child in self.children:
            yield from child.leaves()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MaterialUse:
    """One line of the materials request list."""

    material: str
    amount: float  # per run, in `unit`
    unit: str  # "mL" or "g"
    source: str  # where it is taken from (a reservoir, a dispenser)
    name: str = ""
    smiles: str | None = None
    inchikey: str | None = None
    supplier: str | None = None
    lot: str | None = None
    declared: bool = True  # listed in the recipe's materials


@dataclass
class Plan:
    name: str
    version: str
    description: str
    recipe: dict[str, Any]  # resolved: parameters applied, includes inlined
    parameters: dict[str, Any]  # resolved values, JSON-able ("1.2 mol / kg", 3, true)
    sha256: str  # of the canonical resolved recipe JSON
    steps: list[PlannedStep]
    estimated_s: float
    materials: list[MaterialUse]
    #: material moves in plan order: {"step", "to", "liquids_l", "solids_g"}
    material_effects: list[dict[str, Any]]
    bench_id: str = ""
    source: str = ""
    includes: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    #: resolved parameters typed for the record: name -> {value, unit, type, text, source}
    parameters_typed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def leaves(self) -> Iterator[PlannedStep]:
        for s in self.steps:
            yield from s.leaves()

    def step(self, step_id: str) -> PlannedStep | None:
        """The planned step (leaf or container) with this id; the first in plan order if
        ids repeat. Through an index built at the first call: the bench asks at every
        journal event of a run, and walking the tree each time made a run of N steps cost
        N² (a plan is not changed once built)."""
        index: dict[str, PlannedStep] | None = self.__dict__.get("_steps_by_id")
        if index is None:
            index = {}
            todo = list(reversed(self.steps))
            while todo:  # depth first, in plan order
                s = todo.pop()
                index.setdefault(s.id, s)
                todo.extend(reversed(s.children))
            self.__dict__["_steps_by_id"] = index
        return index.get(step_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
