"""The base of every analysis: `AnalysisSpec` (arguments with units, the function, the
figures a refusal marks failed), `Refusal`, and helpers to read a step's data (`load`) and
build a figure (`fig`). Plugins build their analyses on it (see labctl.analysis.registry).

An analysis is called as `spec(files, **args)` → figures of merit.

`files` is `{step_id: path}` or a list of BDF paths (data/<step_id>.bdf.csv); args are
quantities with units (strings like "1.0 /cm", "25 degC") or floats already in the unit the
spec states. The result holds `figures` (each with name, value, unit, method and the
ontology IRI of formats.md where one exists) and the same figures by name.

Physically meaningless input (an open-circuit spectrum, a sweep that never sweeps, cycles
without current) is refused: `AnalysisRefused` carries the reason and the analysis's main
figures marked `"status": "failed"` with `value` None, which the executor records before the
step fails. A refusal never yields a number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.bdf import pick, read_bdf
from labctl.units import to

Files = Mapping[str, Any] | Sequence[Any]


class Refusal(ValueError):
    """Raised inside an analysis: this input has no meaningful figure; `details` go to the
    record."""

    def __init__(self, reason: str, **details: Any):
        super().__init__(reason)
        self.reason = reason
        self.details = details


class AnalysisRefused(ValueError):
    """An analysis refused its input: the reason, and its main figures marked failed."""

    def __init__(self, analysis: str, reason: str, failed_figures: list[dict[str, Any]]):
        super().__init__(f"{analysis} refused its input: {reason}")
        self.analysis = analysis
        self.reason = reason
        self.failed_figures = failed_figures

    def __reduce__(self) -> tuple[Any, ...]:
        # crosses from the analysis process (labctl.analysis.worker) with all three
        return (type(self), (self.analysis, self.reason, self.failed_figures))


@dataclass(frozen=True)
class ArgSpec:
    unit: str | None = None  # None: taken as it is (text, integer)
    default: Any = None
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis: its arguments (with units) and the function computing it."""

    name: str
    description: str
    args: dict[str, ArgSpec]
    func: Callable[..., list[dict[str, Any]]]
    iri: str = ""
    columns: tuple[str, ...] = field(default_factory=tuple)
    #: (name, unit) of the figures a refusal marks failed
    main_figures: tuple[tuple[str, str], ...] = ()
    #: imports what the analysis needs (impedance.py, scipy), so that the analysis process
    #: does it while the run's steps go on (labctl.analysis.worker); None: nothing to do
    prepare: Callable[[], None] | None = None

    def convert(self, args: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in self.args.items():
            value = args.get(name, spec.default)
            if value is None:
                if spec.required:
                    raise ValueError(f"{self.name}: argument {name!r} is required")
                out[name] = None
                continue
            if spec.unit is not None and isinstance(value, str):
                value = to(value, spec.unit)
            elif spec.unit is not None:
                value = float(value)
            out[name] = value
        return out

    def __call__(self, files: Files, **args: Any) -> dict[str, Any]:
        known = self.convert(args)
        try:
            figures = self.func(files, **known)
        except Refusal as exc:
            failed = [fig(name, None, unit, self.description, self.iri, status="failed",
                          reason=exc.reason, **exc.details)
                      for name, unit in self.main_figures]
            raise AnalysisRefused(self.name, exc.reason, failed) from exc
        return {"analysis": self.name, "figures": figures,
                **{f["name"]: f for f in figures}}


def _paths(files: Files) -> list[tuple[str, Path]]:
    if isinstance(files, Mapping):
        return [(str(k), Path(v)) for k, v in files.items()]
    out = []
    for p in files:
        path = Path(p)
        out.append((path.name.split(".", 1)[0], path))
    return out


def load(files: Files, step: str | None, needs: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The columns of the named step's file, or of the first file having `needs`."""
    candidates = _paths(files)
    if step is not None:
        chosen = [(s, p) for s, p in candidates if s == step]
        if not chosen:
            raise ValueError(f"no data file for step {step!r} (have {[s for s, _ in candidates]})")
        candidates = chosen
    for sid, path in candidates:
        cols = read_bdf(path)
        if all(pick(cols, n) is not None for n in needs):
            return sid, cols
    raise ValueError(f"no data file with columns {', '.join(needs)}")


def fig(name: str, value: Any, unit: str, method: str, iri: str = "", **extra: Any
        ) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "method": method, "iri": iri, **extra}
