"""Result documents in the shape FINALES2_schemas registers for a method: for conductivity
(two_electrode, and the others that share ConductivityOutput) `{"run_info": RunInfo,
"conductivity": {"values": [S/m], "meta": {"success", "rating"}, "temperature": K}}`.

run_info.formulation is what the bench really made (from the additions the run recorded),
not what was asked; chemicals_info names the bench's lots. A refused or failed request gets
the same shape with no values, `meta.success` false, rating 0 and `meta.reason` saying why.
"""

from __future__ import annotations

from typing import Any

from labctl.config import BenchConfig
from labctl.finales.formulation import KELVIN_OFFSET, by_material, fractions_from_amounts
from labctl.recipe.models import FinalesCapability

#: quantity -> (figure of merit holding the value, its unit)
FIGURES = {"conductivity": ("ionic_conductivity", "S/m")}
#: Lin-KK-valid spectrum on the bench -> rating; an invalid one (kept, but doubtful) -> 1
RATING_VALID = 4
RATING_DOUBTFUL = 1


def result_body(request: dict[str, Any], method: str, tenant_uuid: str,
                data: dict[str, Any]) -> dict[str, Any]:
    """The `POST /results/` body answering a RequestInfo with `data`."""
    req = request["request"]
    return {"data": data, "quantity": req["quantity"], "method": [method],
            "parameters": {method: req["parameters"][method]}, "tenant_uuid": tenant_uuid,
            "request_uuid": request["uuid"]}


def failed_data(quantity: str, formulation: Any, reason: str, code: str,
                internal_reference: str) -> dict[str, Any]:
    """A result that says the bench did not (or could not) measure, and why."""
    return {
        "run_info": {"formulation": formulation if isinstance(formulation, list) else [],
                     "internal_reference": internal_reference},
        quantity: {"values": [], "temperature": None,
                   "meta": {"success": False, "rating": 0, "reason": reason, "code": code}},
    }


def measured_data(quantity: str, cap: FinalesCapability, cfg: BenchConfig,
                  run: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """The result of a completed run; a failed one when the run has no such figure."""
    figure, unit = FIGURES[quantity]
    figs = run.get("figures_of_merit") or []
    hit = next((f for f in figs if f.get("name") == figure and f.get("unit") == unit), None)
    if hit is None or not isinstance(hit.get("value"), (int, float)):
        return failed_data(quantity, _formulation(cfg, cap, metadata),
                           f"run {run.get('run_id')} gave no {figure} in {unit}",
                           "no_value", str(run.get("run_id")))
    validity = next((f for f in figs if f.get("name") == "spectrum_validity"
                     and f.get("step") == hit.get("step")), None)
    rating = RATING_DOUBTFUL if validity is not None and not validity.get("valid") \
        else RATING_VALID
    meta: dict[str, Any] = {"success": True, "rating": rating,
                            "fidelity": (run.get("fidelity") or {}).get("level"),
                            "labctl_run_id": run.get("run_id")}
    return {
        "run_info": {
            "formulation": _formulation(cfg, cap, metadata),
            "internal_reference": str(run.get("run_id")),
            "formulation_info": None,
            "chemicals_info": _chemicals_info(cfg, cap),
        },
        quantity: {"values": [float(hit["value"])],
                   "temperature": _measured_temperature_k(metadata, hit, figs),
                   "meta": meta},
    }


def _formulation(cfg: BenchConfig, cap: FinalesCapability,
                 metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """What went into the vessel, as FINALES FormulationComponents (molar fractions)."""
    from labctl.finales.formulation import mapping_materials

    wanted = set(mapping_materials(cap))
    adds = [(a["material"], float(a["actual"]), str(a.get("unit")))
            for a in metadata.get("additions") or []
            if a.get("material") in wanted and isinstance(a.get("actual"), (int, float))]
    chems = by_material(cfg)
    return [{"chemical": {"SMILES": chems[m].smiles, "InChIKey": chems[m].inchikey},
             "fraction": round(f, 8), "fraction_type": cap.fraction_type}
            for m, f in fractions_from_amounts(cfg, adds).items()]


def _chemicals_info(cfg: BenchConfig, cap: FinalesCapability) -> dict[str, Any]:
    """Molar masses and densities the conversion used (uncertainty 0: the config states
    none), with the bench's lot and supplier."""
    from labctl.finales.formulation import mapping_materials

    chems = by_material(cfg)
    out: dict[str, Any] = {}
    for m in mapping_materials(cap):
        c = chems.get(m)
        if c is None:
            continue
        out[c.inchikey] = {
            "name": c.name,
            "molar_mass": [c.molar_mass_g_mol, 0.0] if c.molar_mass_g_mol else None,
            "density": [c.density_g_ml, 0.0] if c.density_g_ml else None,
            "batch": c.lot, "manufacturer": c.supplier, "manufacturing_date": None}
    return out


def _measured_temperature_k(metadata: dict[str, Any], hit: dict[str, Any],
                            figs: list[dict[str, Any]]) -> float | None:
    """The cell temperature measured during the measurement step (mean of its start and
    end), else the analysis' temperature figure."""
    for t in (metadata.get("conditions") or {}).get("cell_temperature") or []:
        if t.get("step") == hit.get("step"):
            vals = [v for v in (t.get("measured_start_c"), t.get("measured_end_c"))
                    if isinstance(v, (int, float))]
            if vals:
                return round(sum(vals) / len(vals) + KELVIN_OFFSET, 3)
            if isinstance(t.get("measured_c"), (int, float)):
                return round(float(t["measured_c"]) + KELVIN_OFFSET, 3)
    temp = next((f for f in figs if f.get("name") == "temperature" and f.get("unit") == "K"
                 and f.get("step") == hit.get("step")), None)
    return float(temp["value"]) if temp is not None else None
