"""The standard operating procedure (Markdown, and CSV with one row per step) and the
materials request list (CSV) of a Plan: what the BIG-MAP data management plan asks a robot
to produce for each suggested experiment — parameters, materials needed and where they come
from, their hazards and the PPE they call for, steps in words."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from labctl.actions import fmt
from labctl.config import BenchConfig
from labctl.hazards import precautions, statement
from labctl.recipe.plan import Plan, PlannedStep

CSV_COLUMNS = ("material", "amount", "unit", "where from", "per run")


def _amount(x: float) -> str:
    return f"{x:.6g}"


def materials_csv(plan: Plan, runs: int = 1) -> str:
    """One row per material and source: the amount for `runs` runs, its unit, where the
    bench takes it from, and the amount per run."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for m in plan.materials:
        if m.amount <= 0:
            continue
        w.writerow([m.material, _amount(m.amount * runs), m.unit, m.source, _amount(m.amount)])
    return buf.getvalue()


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _step_lines(steps: list[PlannedStep], depth: int, counter: list[int]) -> list[str]:
    lines: list[str] = []
    for s in steps:
        indent = "   " * depth
        if s.kind in ("action", "wait", "analysis"):
            counter[0] += 1
            extra = []
            if s.timeout_s is not None:
                extra.append(f"timeout {_duration(s.timeout_s)}")
            if s.retries:
                extra.append(f"retries {s.retries}")
            if s.on_error != "abort":
                extra.append(f"on error: {s.on_error}")
            note = f" ({'; '.join(extra)})" if extra else ""
            lines.append(f"{indent}{counter[0]}. `{s.id}` — {s.description}{note} "
                         f"[~{_duration(s.estimated_s)}]")
        elif s.kind == "parallel":
            lines.append(f"{indent}- **In parallel** (`{s.id}`, ~{_duration(s.estimated_s)}):")
            for b in s.children:
                lines.append(f"{indent}   - branch `{b.id}`:")
                lines += _step_lines(b.children, depth + 2, counter)
        else:
            lines.append(f"{indent}- **{s.description}** (`{s.id}`, "
                         f"~{_duration(s.estimated_s)}):")
            lines += _step_lines(s.children, depth + 1, counter)
    return lines


def sop_markdown(plan: Plan, cfg: BenchConfig) -> str:
    """The SOP: what is made or measured, with which parameters, materials, instruments,
    in which order of steps, and how long it takes."""
    out: list[str] = [
        f"# SOP: {plan.name} (version {plan.version})",
        "",
        plan.description or "",
        "",
        f"- Bench: `{plan.bench_id}` ({cfg.bench.site or 'site not stated'}), "
        f"{'simulated instruments' if cfg.bench.simulate else 'physical instruments'}",
        f"- Recipe: `{plan.source}`"
        + (f", including {', '.join(f'`{i}`' for i in plan.includes)}" if plan.includes else ""),
        f"- Resolved recipe SHA-256: `{plan.sha256}`",
        f"- Estimated duration: {_duration(plan.estimated_s)}",
        "",
        "## Parameters",
        "",
    ]
    decls = plan.recipe.get("parameters") or {}
    if plan.parameters:
        out += ["| parameter | value | description |", "|---|---|---|"]
        for name, value in plan.parameters.items():
            desc = decls.get(name, {}).get("description", "") if isinstance(decls.get(name),
                                                                            dict) else ""
            out.append(f"| {name} | {value} | {desc} |")
    else:
        out.append("None.")
    out += ["", "## Materials", ""]
    if plan.materials:
        out += ["| material | name | SMILES | InChIKey | supplier | lot | where from | per run |",
                "|---|---|---|---|---|---|---|---|"]
        for m in plan.materials:
            amount = f"{_amount(m.amount)} {m.unit}" if m.amount > 0 else "—"
            out.append(f"| {m.material} | {m.name} | {m.smiles or ''} | {m.inchikey or ''} | "
                       f"{m.supplier or ''} | {m.lot or ''} | {m.source} | {amount} |")
    else:
        out.append("None.")
    out += ["", *_hazard_lines(plan, cfg)]
    out += ["", "## Instruments", "", "| device | driver | description | configuration |",
            "|---|---|---|---|"]
    for name in plan.devices:
        d = cfg.devices.get(name)
        if d is None:
            continue
        conf = ", ".join(f"{k} = {v}" for k, v in {**d.params, **d.limits}.items()
                         if not isinstance(v, dict))
        out.append(f"| {name} | {d.driver} | {d.description} | {conf} |")
    out += ["", "## Procedure", ""]
    out += _step_lines(plan.steps, 0, [0])
    out += ["", f"Total estimated time: {_duration(plan.estimated_s)}.", "",
            "## Safety", "",
            "On any fault, abort or emergency stop every device is brought to its safe state "
            "(pumps stopped, heaters and stirrers off, cell switched off). Steps that move "
            "material are never repeated after a crash without an operator's decision.", ""]
    vessel_notes = []
    for v, vc in cfg.vessels.items():
        if vc.kind == "vial":
            vessel_notes.append(f"`{v}` (capacity {fmt(_q(vc.capacity), 'L')})")
    if vessel_notes:
        out += [f"Vials used on this bench: {', '.join(vessel_notes)}. Make sure they are empty "
                "and clean before the run.", ""]
    return "\n".join(out)


def _material_hazards(plan: Plan, cfg: BenchConfig) -> dict[str, list[str]]:
    """Hazard codes per material the plan uses (from the bench config's materials)."""
    return {m.material: list(cfg.materials[m.material].ghs)
            for m in plan.materials if m.material in cfg.materials}


def _hazard_lines(plan: Plan, cfg: BenchConfig) -> list[str]:
    """Hazards of the materials (CAS, GHS statements, handling) and the precautions and
    PPE they call for, each naming the materials that call for it."""
    out = ["## Hazards and PPE", ""]
    used = [m.material for m in plan.materials]
    if not used:
        return [*out, "No materials."]
    out += ["| material | CAS | GHS hazard statements | handling |", "|---|---|---|---|"]
    undeclared = []
    for mid in used:
        mc = cfg.materials.get(mid)
        if mc is None or (not mc.ghs and not mc.cas):
            undeclared.append(mid)
        codes = "; ".join(statement(c) for c in (mc.ghs if mc else []))
        out.append(f"| {mid} | {(mc.cas if mc else None) or 'not declared'} | "
                   f"{codes or 'none declared'} | {(mc.handling if mc else '') or ''} |")
    out += ["", "Precautions and PPE:", ""]
    smiles = {mid: cfg.materials[mid].smiles for mid in used if mid in cfg.materials}
    for what, because in precautions(_material_hazards(plan, cfg), smiles):
        out.append(f"- {what}" + (f" ({', '.join(because)})" if because else ""))
    if undeclared:
        out += ["", f"**No hazard data declared for {', '.join(undeclared)}**: read the "
                "supplier's safety data sheet before the run (add `cas` and `ghs` to the "
                "material in the bench config)."]
    return out


SOP_CSV_COLUMNS = ("number", "step", "kind", "device", "action", "description",
                   "estimated_s", "timeout_s", "retries", "on_error", "moves_material",
                   "materials", "hazards")


def sop_csv(plan: Plan, cfg: BenchConfig) -> str:
    """The procedure as CSV, one row per step in the order it runs: what it does, on
    which device, how long, and the hazard codes of the materials it moves."""
    hazards = _material_hazards(plan, cfg)
    moved: dict[str, list[str]] = {}
    for e in plan.material_effects:
        names = moved.setdefault(str(e.get("step")), [])
        for mid in [*(e.get("liquids_l") or {}), *(e.get("solids_g") or {})]:
            if mid not in names:
                names.append(mid)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SOP_CSV_COLUMNS)
    for n, step in enumerate(plan.leaves(), start=1):
        mats = moved.get(step.id, [])
        codes = sorted({c for m in mats for c in hazards.get(m, [])})
        w.writerow([n, step.id, step.kind, step.device or "", step.action or "",
                    step.description, f"{step.estimated_s:.6g}",
                    "" if step.timeout_s is None else f"{step.timeout_s:.6g}", step.retries,
                    step.on_error, str(step.moves_material).lower(), " ".join(mats),
                    " ".join(codes)])
    return buf.getvalue()


def _q(text: str) -> float:
    from labctl.units import to

    try:
        return to(text, "L")
    except Exception:
        return 0.0


def write_outputs(plan: Plan, cfg: BenchConfig, out_dir: Path, runs: int = 1) -> list[Path]:
    """Write `<name>.materials.csv`, `<name>.sop.md` and `<name>.sop.csv` (one row per
    step) into out_dir; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", plan.name)[:100] or "recipe"
    csv_path = out_dir / f"{stem}.materials.csv"
    sop_path = out_dir / f"{stem}.sop.md"
    sop_csv_path = out_dir / f"{stem}.sop.csv"
    csv_path.write_text(materials_csv(plan, runs), encoding="utf-8")
    sop_path.write_text(sop_markdown(plan, cfg), encoding="utf-8")
    sop_csv_path.write_text(sop_csv(plan, cfg), encoding="utf-8")
    return [csv_path, sop_path, sop_csv_path]
