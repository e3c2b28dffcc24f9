"""FINALES formulations (components with SMILES, InChIKey and a molar fraction, plus a
temperature in kelvin) to and from a recipe's parameters.

Chemicals are matched to the bench's materials by InChIKey only (SMILES have many spellings);
molar fractions become the recipe's molality and volume fractions through the materials'
molar masses and densities from the bench config. Whatever the bench cannot make exactly is
a `Refusal` with its reason, never a guess: after the forward mapping the parameters are
mapped back to fractions and must give the requested formulation again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from labctl.config import BenchConfig
from labctl.recipe.models import FinalesCapability, Recipe
from labctl.units import to

#: molar fractions must add up to 1 within this
SUM_TOLERANCE = 1e-3
#: a formulation mapped to parameters and back must match the request within this
ROUND_TRIP_TOLERANCE = 1e-6
KELVIN_OFFSET = 273.15


class Refusal(Exception):
    """The bench cannot answer a request as asked; `code` and `reason` go into the failed
    result's meta so the requester learns why."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Chemical:
    """A bench material as FINALES names it, with what the conversions need."""

    material: str
    inchikey: str
    smiles: str
    name: str
    molar_mass_g_mol: float | None
    density_g_ml: float | None
    lot: str | None
    supplier: str | None


@dataclass(frozen=True)
class Component:
    inchikey: str
    smiles: str
    fraction: float
    fraction_type: str


def bench_chemicals(cfg: BenchConfig) -> dict[str, Chemical]:
    """The bench's materials that carry an InChIKey, by InChIKey."""
    out: dict[str, Chemical] = {}
    for mid, m in cfg.materials.items():
        if not m.inchikey:
            continue
        out[m.inchikey] = Chemical(
            material=mid, inchikey=m.inchikey, smiles=m.smiles or "", name=m.name or mid,
            molar_mass_g_mol=to(m.molar_mass, "g/mol") if m.molar_mass else None,
            density_g_ml=to(m.density, "g/mL") if m.density else None,
            lot=m.lot, supplier=m.supplier)
    return out


def by_material(cfg: BenchConfig) -> dict[str, Chemical]:
    return {c.material: c for c in bench_chemicals(cfg).values()}


def parse_request(parameters: Mapping[str, Any]) -> tuple[list[Component], float | None]:
    """The components and the temperature (K, or None) of a ConductivityInput-shaped
    request; a Refusal naming the field for anything malformed."""
    if not isinstance(parameters, Mapping):
        raise Refusal("malformed", "parameters: expected an object")
    form = parameters.get("formulation")
    if not isinstance(form, list) or not form:
        raise Refusal("malformed", "formulation: expected a non-empty list of components")
    comps: list[Component] = []
    for i, c in enumerate(form):
        where = f"formulation[{i}]"
        chem = c.get("chemical") if isinstance(c, Mapping) else None
        if not isinstance(chem, Mapping) or not isinstance(chem.get("InChIKey"), str):
            raise Refusal("malformed", f"{where}.chemical: needs an InChIKey")
        frac = c.get("fraction")
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) \
                or not math.isfinite(frac) or not 0.0 <= frac <= 1.0:
            raise Refusal("malformed", f"{where}.fraction: {frac!r} is not a fraction in [0, 1]")
        comps.append(Component(inchikey=chem["InChIKey"], smiles=str(chem.get("SMILES", "")),
                               fraction=float(frac), fraction_type=str(c.get("fraction_type"))))
    temp = parameters.get("temperature")
    if temp is not None and (isinstance(temp, bool) or not isinstance(temp, (int, float))
                             or not math.isfinite(temp) or temp <= 0):
        raise Refusal("malformed", f"temperature: {temp!r} is not a temperature in kelvin")
    return comps, (float(temp) if temp is not None else None)


def mapping_materials(cap: FinalesCapability) -> list[str]:
    """The recipe materials the mapping can dose, in declaration order."""
    seen: list[str] = []
    for m in cap.parameters.values():
        for mat in [m.of, *(m.in_ or [])]:
            if mat is not None and mat not in seen:
                seen.append(mat)
    return seen


def to_recipe_parameters(recipe: Recipe, cap: FinalesCapability, cfg: BenchConfig,
                         components: list[Component],
                         temperature_k: float | None) -> dict[str, Any]:
    """Recipe parameters (strings with the parameters' own units, or numbers) that make the
    requested formulation at the requested temperature; Refusal when they cannot."""
    chems = bench_chemicals(cfg)
    usable = mapping_materials(cap)
    x: dict[str, float] = dict.fromkeys(usable, 0.0)
    for i, c in enumerate(components):
        where = f"formulation[{i}]"
        if c.fraction_type != cap.fraction_type:
            raise Refusal("unsupported_fraction_type",
                          f"{where}.fraction_type: {c.fraction_type!r}; this bench takes "
                          f"{cap.fraction_type!r}")
        chem = chems.get(c.inchikey)
        if chem is None:
            raise Refusal("unknown_chemical",
                          f"{where}.chemical: InChIKey {c.inchikey} ({c.smiles or 'no SMILES'})"
                          f" is not a material of bench {cfg.bench.id}")
        if chem.material not in usable:
            raise Refusal("unknown_chemical",
                          f"{where}.chemical: {chem.material} ({c.inchikey}) is on bench "
                          f"{cfg.bench.id} but recipe {recipe.name} cannot dose it "
                          f"(it doses {', '.join(usable) or 'nothing'})")
        if any(c2.inchikey == c.inchikey for c2 in components[:i]):
            raise Refusal("malformed", f"{where}.chemical: {c.inchikey} is listed twice")
        x[chem.material] = c.fraction
    total = sum(c.fraction for c in components)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise Refusal("malformed", f"formulation: molar fractions add up to {total:.6g}, not 1")
    x = {k: v / total for k, v in x.items()}  # rounding in the request is not a wish
    params: dict[str, Any] = {}
    raw: dict[str, float] = {}  # in the mapping's units (mol/kg, volume fraction)
    for name, m in cap.parameters.items():
        spec = recipe.parameters[name]
        where = f"parameters.{name}"
        if m.from_ == "temperature":
            if temperature_k is None:
                continue  # the recipe's default; the result reports the measured temperature
            params[name] = _in_unit(temperature_k, "K", spec.unit, spec.type)
            continue
        assert m.of is not None and m.in_ is not None  # the recipe model checked it
        of = _chem(m.of, cfg)
        if m.from_ == "molality":
            solvent_g = sum(x[s] * _need(_chem(s, cfg), "molar_mass_g_mol") for s in m.in_)
            if solvent_g <= 0:
                raise Refusal("out_of_limits", f"{where}: the formulation holds none of "
                              f"{', '.join(m.in_)} to dissolve {m.of} in")
            raw[name] = x[m.of] / solvent_g * 1000.0
            params[name] = _in_unit(raw[name], "mol/kg", spec.unit, spec.type)
        else:  # volume_fraction
            vols = {s: x[s] * _need(_chem(s, cfg), "molar_mass_g_mol")
                    / _need(_chem(s, cfg), "density_g_ml") for s in m.in_}
            vol = sum(vols.values())
            if vol <= 0:
                raise Refusal("out_of_limits",
                              f"{where}: the formulation holds none of {', '.join(m.in_)}")
            share = (x[m.of] * _need(of, "molar_mass_g_mol") / _need(of, "density_g_ml")) / vol
            raw[name] = share
            params[name] = share
    back = to_fractions(cap, cfg, raw, recipe)
    for mat, want in x.items():
        got = back.get(mat, 0.0)
        if abs(got - want) > ROUND_TRIP_TOLERANCE:
            raise Refusal("unsupported_formulation",
                          f"formulation: recipe {recipe.name} cannot make this formulation "
                          f"exactly ({mat}: asked {want:.6g}, its parameters give {got:.6g})")
    return params


def to_fractions(cap: FinalesCapability, cfg: BenchConfig, values: Mapping[str, float],
                 recipe: Recipe) -> dict[str, float]:
    """Molar fractions the recipe makes with these parameter values (numbers in the units
    the mapping uses: mol/kg, volume fractions); missing ones take the recipe's defaults."""
    def val(name: str, unit: str | None) -> float:
        if name in values:
            return float(values[name])
        spec = recipe.parameters[name]
        if spec.default is None:
            raise Refusal("unsupported_formulation", f"parameters.{name}: no default")
        return _in_unit_text(spec.default, unit) if unit else float(spec.default)

    vol_frac: dict[str, float] = {}
    solvents: list[str] = []
    for name, m in cap.parameters.items():
        if m.from_ == "volume_fraction":
            assert m.of is not None and m.in_ is not None
            vol_frac[m.of] = val(name, None)
            solvents.extend(s for s in m.in_ if s not in solvents)
        elif m.from_ == "molality":
            assert m.in_ is not None
            solvents.extend(s for s in m.in_ if s not in solvents)
    free = [s for s in solvents if s not in vol_frac]
    if len(free) > 1:
        raise Refusal("unsupported_formulation",
                      f"finales: solvents {', '.join(free)} have no volume fraction parameter")
    if free:
        vol_frac[free[0]] = 1.0 - sum(vol_frac.values())
    moles: dict[str, float] = {}
    mass_g: dict[str, float] = {}
    for s, phi in vol_frac.items():  # per mL of solvent mixture
        c = _chem(s, cfg)
        mass_g[s] = phi * _need(c, "density_g_ml")
        moles[s] = mass_g[s] / _need(c, "molar_mass_g_mol")
    for name, m in cap.parameters.items():
        if m.from_ == "molality":
            assert m.of is not None and m.in_ is not None
            kg = sum(mass_g.get(s, 0.0) for s in m.in_) / 1000.0
            moles[m.of] = moles.get(m.of, 0.0) + val(name, "mol/kg") * kg
    total = sum(moles.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in moles.items()}


def fractions_from_amounts(cfg: BenchConfig, amounts: Iterable[tuple[str, float, str]]
                           ) -> dict[str, float]:
    """Molar fractions of what was really added: (material, amount, unit "g" or "L")."""
    chems = by_material(cfg)
    moles: dict[str, float] = {}
    for mat, amount, unit in amounts:
        c = chems.get(mat)
        if c is None or c.molar_mass_g_mol is None:
            continue
        grams = amount if unit == "g" else to(f"{amount} {unit}", "mL") * _need(c, "density_g_ml")
        moles[mat] = moles.get(mat, 0.0) + grams / c.molar_mass_g_mol
    total = sum(moles.values())
    return {k: v / total for k, v in moles.items()} if total > 0 else {}


def _chem(material: str, cfg: BenchConfig) -> Chemical:
    c = by_material(cfg).get(material)
    if c is None:
        raise Refusal("unknown_chemical", f"material {material}: the bench config gives it no "
                      "InChIKey")
    return c


def _need(c: Chemical, attr: str) -> float:
    v = getattr(c, attr)
    if v is None or v <= 0:
        what = "molar_mass" if attr.startswith("molar") else "density"
        raise Refusal("unsupported_formulation",
                      f"materials.{c.material}.{what}: needed to convert molar fractions")
    return float(v)


def _in_unit(value: float, unit: str, target: str | None, kind: str) -> Any:
    """A recipe parameter value: a number for number parameters, else 'V UNIT'."""
    if kind == "quantity" and target:
        return f"{to(f'{value!r} {unit}', target):.12g} {target}"
    if target:
        return float(f"{to(f'{value!r} {unit}', target):.12g}")
    return value


def _in_unit_text(text: Any, unit: str) -> float:
    return to(text if isinstance(text, str) else f"{text} {unit}", unit)
