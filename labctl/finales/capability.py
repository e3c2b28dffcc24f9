"""What a bench can answer on FINALES2, read from its recipes: every recipe with a
`"finales"` block is one capability (quantity + method). The tenant description that
FINALES2's admin command `finales db add tenant` takes is derived from those recipes'
parameter bounds and the bench's materials, not written by hand.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl.config import BenchConfig
from labctl.errors import ConfigError
from labctl.finales.formulation import (
    Refusal,
    by_material,
    mapping_materials,
    to_fractions,
)
from labctl.recipe.models import FinalesCapability, Recipe
from labctl.units import to

#: points per mapped parameter when sampling the recipe's bounds for the fraction limits
GRID = 21


@dataclass(frozen=True)
class Capability:
    """One recipe that answers one FINALES quantity and method."""

    path: Path
    recipe: Recipe

    @property
    def finales(self) -> FinalesCapability:
        assert self.recipe.finales is not None
        return self.recipe.finales

    @property
    def key(self) -> tuple[str, str]:
        return (self.finales.quantity, self.finales.method)


def recipes_dir(cfg: BenchConfig) -> Path:
    """The config's recipes_dir, relative to the working directory (as `labctl serve`)."""
    d = Path(cfg.bench.recipes_dir)
    return d if d.is_absolute() else Path.cwd() / d


def load_capabilities(cfg: BenchConfig, recipes: list[Path] | None = None) -> list[Capability]:
    """The recipes (given, or every *.json of the recipes dir) that declare `finales`; a
    ConfigError naming the file when two answer the same quantity and method or when a
    mapping names a material the bench cannot convert."""
    paths = recipes if recipes else sorted(recipes_dir(cfg).glob("*.json"))
    caps: dict[tuple[str, str], Capability] = {}
    problems: list[tuple[str, str]] = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError) as exc:
            if recipes:
                problems.append((str(p), f"cannot read: {exc}"))
            continue
        if not isinstance(data, dict) or "finales" not in data:
            if recipes:
                problems.append((str(p), "has no 'finales' block"))
            continue
        try:
            recipe = Recipe.model_validate(data)
        except ValueError as exc:
            problems.append((str(p), str(exc).splitlines()[-1] if str(exc) else repr(exc)))
            continue
        cap = Capability(Path(p), recipe)
        if cap.key in caps:
            problems.append((str(p), f"finales: {cap.key[0]}/{cap.key[1]} is already answered "
                             f"by {caps[cap.key].path}"))
            continue
        mats = by_material(cfg)
        for mat in mapping_materials(cap.finales):
            c = mats.get(mat)
            if c is None:
                problems.append((str(p), f"finales: material {mat} has no inchikey in the "
                                 "bench config"))
            elif c.molar_mass_g_mol is None or c.density_g_ml is None:
                problems.append((str(p), f"finales: material {mat} needs molar_mass and "
                                 "density in the bench config"))
        caps[cap.key] = cap
    if problems:
        raise ConfigError("; ".join(f"{f}: {m}" for f, m in problems), problems=problems)
    return list(caps.values())


def limitations(cap: Capability, cfg: BenchConfig) -> dict[str, Any]:
    """FINALES limitations of one capability: each dosable chemical with the range of molar
    fraction the recipe's parameter bounds allow (sampled on a grid), and the temperature
    range in kelvin."""
    fin = cap.finales
    recipe = cap.recipe
    axes: dict[str, list[float]] = {}
    temp: dict[str, float] | None = None
    for name, m in fin.parameters.items():
        spec = recipe.parameters[name]
        if m.from_ == "temperature":
            lo, hi = (_bound(spec.min, spec.unit, "K"), _bound(spec.max, spec.unit, "K"))
            if lo is not None and hi is not None:
                temp = {"min": round(lo, 6), "max": round(hi, 6)}
            continue
        unit = "mol/kg" if m.from_ == "molality" else None
        lo, hi = _bound(spec.min, spec.unit, unit), _bound(spec.max, spec.unit, unit)
        if lo is None or hi is None:
            lo, hi = (0.0, 1.0) if unit is None else (0.0, 0.0)
        axes[name] = [lo + (hi - lo) * i / (GRID - 1) for i in range(GRID)]
    ranges: dict[str, list[float]] = {}
    for point in itertools.product(*axes.values()):
        try:
            fr = to_fractions(fin, cfg, dict(zip(axes, point, strict=True)), recipe)
        except Refusal:
            continue
        for mat, f in fr.items():
            lo_hi = ranges.setdefault(mat, [f, f])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], f), max(lo_hi[1], f)
    mats = by_material(cfg)
    components = [{
        "chemical": {"SMILES": mats[mat].smiles, "InChIKey": mats[mat].inchikey},
        "fraction": [{"min": round(ranges[mat][0], 6), "max": round(ranges[mat][1], 6)}],
        "fraction_type": [fin.fraction_type],
    } for mat in mapping_materials(fin) if mat in ranges and mat in mats]
    out: dict[str, Any] = {"formulation": [components]}
    if temp is not None:
        out["temperature"] = [temp]
    return {"quantity": fin.quantity, "method": fin.method, "limitations": out}


def tenant_description(cfg: BenchConfig, caps: list[Capability], *, name: str | None = None,
                       contact: str | None = None) -> dict[str, Any]:
    """The JSON `finales db add tenant --input-filepath F` takes."""
    return {
        "name": name or cfg.bench.id,
        "limitations": [limitations(c, cfg) for c in caps],
        "contact_person": contact or f"operator of labctl bench {cfg.bench.id}",
    }


def _bound(value: Any, unit: str | None, target: str | None) -> float | None:
    if value is None:
        return None
    if target is None:
        return float(value)
    return to(value if isinstance(value, str) else f"{value} {unit}", target)


def admits(limit: Any, value: Any) -> bool:
    """Whether a FINALES limitations value admits a request value: one allowed value or a
    list of them, `{"min", "max"}` for numbers, objects key by key, a list of objects as a
    list of alternative lists. Chemicals are compared by InChIKey (SMILES have many
    spellings). A missing or null request value is admitted (the tenant's default)."""
    if value is None:
        return True
    if isinstance(limit, list):
        if isinstance(value, list):
            if limit and all(isinstance(alt, list) for alt in limit):
                return any(all(any(admits(item, v) for item in alt) for v in value)
                           for alt in limit)
            return all(any(admits(item, v) for item in limit) for v in value)
        return any(admits(item, value) for item in limit)
    if isinstance(limit, dict):
        if limit and set(limit) <= {"min", "max", "step"}:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            lo, hi = limit.get("min"), limit.get("max")
            return (lo is None or value >= lo - 1e-12) and (hi is None or value <= hi + 1e-12)
        if not isinstance(value, dict):
            return False
        return all(admits(limit[k], v) for k, v in value.items()
                   if k in limit and k != "SMILES")
    return bool(limit == value)
