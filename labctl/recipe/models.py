"""Pydantic models of the recipe format `"schema": "labctl.recipe/1"`, and its JSON Schema.

These models check the shape only (keys, types, which kind of step); what the values mean
(units, expressions, devices, limits) is checked by labctl.recipe.validate, which can say
much more precisely what is wrong and where.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)

SCHEMA_ID = "labctl.recipe/1"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: a step id: a name, no dots or brackets (those join ids in the plan: `cycle[2].stir`)
StepId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")]
#: a parameter or loop variable name: usable inside `${…}`
VarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
Text = Annotated[str, StringConstraints(max_length=10_000)]
Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Parameter(_Strict):
    """A value the AI server (or the operator) fills in; typed, with bounds."""

    #: "vial": a vessel of `rack` (omitted: the bench assigns a free one at submit);
    #: "sample": a sample id (inside the recipe `${name}` is the sample's vessel)
    type: Literal["quantity", "number", "integer", "string", "enum", "boolean", "vial",
                  "sample"]
    unit: str | None = Field(default=None, description="quantity: the unit values must "
                             "convert to (their dimension), e.g. 'mol/kg'")
    default: Scalar | None = None
    min: str | int | float | None = None
    max: str | int | float | None = None
    choices: list[str | int | float] | None = None
    rack: str | None = Field(default=None, description="vial: the rack its vials come from")
    description: Text = ""


class Material(_Strict):
    """What is known of a material the recipe uses and where it sits on the bench."""

    name: Text = ""
    smiles: str | None = None
    inchikey: str | None = None
    supplier: str | None = None
    lot: str | None = None
    location: str | None = Field(default=None, description="a vessel (reservoir) or a "
                                 "device (dispenser) of the bench")
    description: Text = ""


class _StepBase(_Strict):
    id: StepId
    description: Text | None = None
    timeout: str | None = Field(default=None, description="a duration, e.g. '10 min'")
    retries: int = Field(default=0, ge=0, le=100)
    on_error: Literal["abort", "continue", "retry"] = "abort"
    idempotent: bool | None = Field(default=None, description="may be repeated after a "
                                    "crash without asking; never true on a step that moves "
                                    "material (or a group holding one): an in-doubt "
                                    "addition needs an operator's decision")


class ActionStep(_StepBase):
    device: str
    action: str
    args: dict[str, Any] = Field(default_factory=dict)


class WaitStep(_StepBase):
    wait: str = Field(description="a duration, e.g. '5 min'")


class ParallelStep(_StepBase):
    parallel: list[Step] = Field(min_length=1, max_length=64)


class SequenceStep(_StepBase):
    steps: list[Step] = Field(min_length=1)


class RepeatStep(_StepBase):
    repeat: int | str = Field(description="how many times (or an expression)")
    var: VarName | None = Field(default=None, description="name of the 0-based iteration "
                                "index inside the loop")
    steps: list[Step] = Field(min_length=1)


class ForEach(_Strict):
    var: VarName
    in_: list[Scalar] = Field(alias="in", min_length=1, max_length=10_000)


class ForEachStep(_StepBase):
    for_each: ForEach
    steps: list[Step] = Field(min_length=1)


class AnalysisStep(_StepBase):
    analysis: str
    args: dict[str, Any] = Field(default_factory=dict)


class IncludeStep(_StepBase):
    include: str = Field(description="another recipe file, relative to this one")
    params: dict[str, Scalar] = Field(default_factory=dict)


class InlinedStep(_StepBase):
    """An include as a run's resolved recipe (`<run>/recipe.json`) records it: the included
    recipe's steps inlined, with its parameter declarations and the values they took. labctl
    writes these so that a run can be planned again (resume) from its own record, not from
    files that may have changed since; recipes people write use `include`."""

    included_from: str = Field(description="the recipe file that was included")
    parameters: dict[VarName, Parameter] = Field(default_factory=dict)
    params: dict[str, Scalar] = Field(default_factory=dict, description="the values the "
                                      "included recipe's parameters took")
    steps: list[Step] = Field(min_length=1)


STEP_TAGS = ("ActionStep", "WaitStep", "ParallelStep", "SequenceStep", "RepeatStep",
             "ForEachStep", "AnalysisStep", "IncludeStep", "InlinedStep")


def step_kind(value: Any) -> str | None:
    """Which kind of step an object is, from the keys it has."""
    keys = value.keys() if isinstance(value, dict) else (
        set(type(value).model_fields) if isinstance(value, BaseModel) else set())
    for key, tag in (("include", "IncludeStep"), ("included_from", "InlinedStep"),
                     ("parallel", "ParallelStep"),
                     ("repeat", "RepeatStep"), ("for_each", "ForEachStep"),
                     ("wait", "WaitStep"), ("analysis", "AnalysisStep"),
                     ("device", "ActionStep"), ("action", "ActionStep"),
                     ("steps", "SequenceStep")):
        if key in keys:
            return tag
    return None


Step = Annotated[
    Annotated[ActionStep, Tag("ActionStep")]
    | Annotated[WaitStep, Tag("WaitStep")]
    | Annotated[ParallelStep, Tag("ParallelStep")]
    | Annotated[SequenceStep, Tag("SequenceStep")]
    | Annotated[RepeatStep, Tag("RepeatStep")]
    | Annotated[ForEachStep, Tag("ForEachStep")]
    | Annotated[AnalysisStep, Tag("AnalysisStep")]
    | Annotated[IncludeStep, Tag("IncludeStep")]
    | Annotated[InlinedStep, Tag("InlinedStep")],
    Discriminator(
        step_kind,
        custom_error_type="step_kind",
        custom_error_message=("a step needs one of: device + action, wait, parallel, "
                              "repeat, for_each, steps, analysis, include"),
    ),
]


class FinalesParameter(_Strict):
    """How one recipe parameter is computed from a FINALES request (labctl.finales):
    `temperature` (the request's kelvin, converted to the parameter's unit), `molality` (mol
    of `of` per kg of the `in` materials), `volume_fraction` (volume of `of` over the `in`
    materials' volume, pure-component densities)."""

    from_: Literal["temperature", "molality", "volume_fraction"] = Field(
        alias="from")
    of: str | None = Field(default=None, description="a material of the recipe")
    in_: list[str] | None = Field(default=None, alias="in", min_length=1,
                                  description="materials of the recipe (the solvent)")


class FinalesCapability(_Strict):
    """The FINALES2 quantity and method this recipe answers, and how a request's parameters
    (a formulation of molar fractions, a temperature) become the recipe's parameters.
    Parameters not named keep their defaults."""

    quantity: str = Field(min_length=1, description="e.g. conductivity")
    method: str = Field(min_length=1, description="e.g. two_electrode")
    fraction_type: Literal["molPerMol"] = "molPerMol"
    parameters: dict[VarName, FinalesParameter] = Field(min_length=1)


class Recipe(_Strict):
    """A recipe: metadata, typed parameters, materials and ordered steps."""

    model_config = ConfigDict(extra="forbid", title="labctl recipe",
                              json_schema_extra={"$id": "https://labctl.dev/schema/recipe/1"})

    schema_: Literal["labctl.recipe/1"] = Field(alias="schema")
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    version: str | int = "1"
    description: Text = ""
    author: str | None = None
    tags: list[str] = Field(default_factory=list)
    parameters: dict[VarName, Parameter] = Field(default_factory=dict)
    materials: dict[str, Material] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)
    finales: FinalesCapability | None = Field(
        default=None, description="answer FINALES2 requests of this quantity and method")

    @model_validator(mode="after")
    def _finales_names(self) -> Recipe:
        """The FINALES mapping may only name this recipe's parameters and materials."""
        if self.finales is None:
            return self
        problems = []
        for name, m in self.finales.parameters.items():
            where = f"finales.parameters.{name}"
            if name not in self.parameters:
                problems.append(f"{where}: no recipe parameter {name!r}")
            for mat in [m.of, *(m.in_ or [])]:
                if mat is not None and mat not in self.materials:
                    problems.append(f"{where}: {mat!r} is not a material of the recipe")
            if m.from_ != "temperature" and (m.of is None or not m.in_):
                problems.append(f"{where}: {m.from_!r} needs 'of' and 'in'")
        if problems:
            raise ValueError("; ".join(problems))
        return self


for _m in (ParallelStep, SequenceStep, RepeatStep, ForEachStep, InlinedStep, Recipe):
    _m.model_rebuild()


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a recipe, with the action catalogue attached
    under `x-labctl-actions` for tools that build requests."""
    from labctl.actions import catalogue_schema

    schema = Recipe.model_json_schema(by_alias=True, mode="validation")
    out: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT}
    out.update(schema)
    out["description"] = (
        "A labctl recipe (labctl.recipe/1). Quantities are strings with units ('2.5 mL', "
        "'50 mV/s'); `${…}` in a string is an expression over parameters and loop variables.")
    out["x-labctl-actions"] = catalogue_schema()
    return out
