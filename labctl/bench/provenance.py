"""What the bench writes about a run besides the journal: recipe.json (the resolved recipe
and its planned steps), the context that becomes metadata.json (labctl.store.provenance
builds the document from it), and result.json. Pure functions of the plan and the bench:
no device is asked anything but its description."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from labctl.config import BenchConfig
from labctl.executor import jsonable
from labctl.instruments import Instruments
from labctl.recipe.plan import Plan, PlannedStep
from labctl.run_machine import RunState
from labctl.store import RunIndex, RunRecord, utc_iso
from labctl.store import provenance as prov

log = logging.getLogger("labctl.bench")

RECIPE_DOC = "labctl.run-recipe/1"
RESULT_DOC = "labctl.run-result/1"
#: the planned step's fields recorded in recipe.json (children follow)
STEP_FIELDS = ("id", "path", "kind", "device", "action", "args", "duration_s", "timeout_s",
               "retries", "on_error", "idempotent", "estimated_s", "description")


def plan_document(plan: Plan, parameters: Mapping[str, Any], source: str | None
                  ) -> dict[str, Any]:
    """recipe.json: the resolved recipe with its parameters and the planned steps."""
    return {
        "schema": RECIPE_DOC,
        "source": source,
        "sha256": plan.sha256,
        "parameters_submitted": jsonable(dict(parameters)),
        "parameters": jsonable(plan.parameters or {}),
        "estimated_s": plan.estimated_s,
        "recipe": jsonable(plan.recipe),
        "steps": [_step_doc(s) for s in plan.steps],
    }


def _step_doc(step: PlannedStep) -> dict[str, Any]:
    doc = {k: jsonable(getattr(step, k)) for k in STEP_FIELDS}
    doc["children"] = [_step_doc(c) for c in step.children]
    return doc


def resolved_parameters(plan: Plan) -> dict[str, Any]:
    """Every parameter's resolved value, defaults included, typed with its unit
    (`{"value": 1.2, "unit": "mol/kg", "type": "quantity", "text": ..., "source": ...}`);
    plain text values for plans built without the typed form."""
    if plan.parameters_typed:
        return dict(jsonable(plan.parameters_typed))
    return dict(jsonable(plan.parameters or {}))


def recipe_info(plan: Plan) -> dict[str, Any]:
    """Name, version, description and hash of the plan's recipe (index row, status)."""
    recipe = plan.recipe or {}
    return {"name": str(recipe.get("name") or "recipe"),
            "version": recipe.get("version"),
            "description": recipe.get("description"),
            "sha256": plan.sha256}


def safe_state_error(errors: dict[str, str]) -> dict[str, Any]:
    """The result's error entry for devices whose safe state failed: the device names
    and each one's error, and a message saying it all (what every adapter shows)."""
    text = "; ".join(f"{name}: {err}" for name, err in sorted(errors.items()))
    return {"type": "SafeStateError", "devices": dict(errors),
            "message": f"safe state not reached on {', '.join(sorted(errors))} ({text})"}


def run_context(cfg: BenchConfig, instruments: Instruments, run_id: str, plan: Plan,
                params: dict[str, Any], who: dict[str, Any], source: str | None
                ) -> dict[str, Any]:
    """Everything metadata.json says about a run that is known when it is submitted:
    recipe, parameters, instigator, bench, conditions, materials, instruments, software,
    fidelity, the planned steps, and its first session."""
    devices = instruments.devices
    kinds = {n: (cfg.devices[n].simulator.kind or cfg.devices[n].driver)
             for n in devices if n in cfg.devices}
    described = {}
    for name, dev in devices.items():
        d = dev.describe()
        d["simulated"] = bool(cfg.bench.simulate)
        if cfg.bench.simulate:
            d["simulator"] = kinds.get(name)
        described[name] = d
    materials = (plan.recipe or {}).get("materials")
    return {
        "run_id": run_id,
        "recipe": {**recipe_info(plan), "source": source},
        "parameters": jsonable(params),
        "parameters_resolved": resolved_parameters(plan),
        "instigator": who,
        "bench": prov.bench_info(cfg),
        "conditions": prov.conditions_info(cfg),
        "times": {"created": utc_iso()},
        "materials": prov.materials_info(cfg, jsonable(materials or {})),
        "instruments": described,
        "software": prov.software_info(),
        "fidelity": prov.fidelity_info(cfg, kinds),
        "sop": {"planned_steps": [
            {"id": s.id, "description": s.description, "estimated_s": s.estimated_s}
            for s in plan.leaves()],
            "estimated_s": plan.estimated_s},
        "sessions": [{"started": utc_iso(), "kind": "run",
                      "time_scale": instruments.clock.time_scale}],
    }


def result_document(*, bench_id: str, run_id: str, record_folder: str, state: RunState | str,
                    plan: Plan, parameters: Mapping[str, Any], instigator: dict[str, Any],
                    errors: list[dict[str, Any]], figures: list[dict[str, Any]],
                    meta: dict[str, Any]) -> dict[str, Any]:
    """result.json of a run that ended under this bench (completed, failed, aborted)."""
    return {
        "schema": RESULT_DOC,
        "run_id": run_id,
        "status": str(state),
        "recipe": meta.get("recipe"),
        "parameters": meta.get("parameters_resolved") or resolved_parameters(plan),
        "parameters_submitted": jsonable(dict(parameters)),
        "instigator": instigator,
        "request_id": instigator.get("request_id"),
        "bench_id": bench_id,
        "started": meta["times"].get("started"),
        "ended": meta["times"].get("ended"),
        "figures_of_merit": figures,
        "errors": errors,
        "in_doubt": meta.get("outcome", {}).get("in_doubt", []),
        "fidelity": meta.get("fidelity"),
        "data_files": [{"path": d["path"], "sha256": d["sha256"]}
                       for d in meta.get("data_files", [])],
        "record": record_folder,
        **_samples(meta),
    }


def _samples(meta: dict[str, Any]) -> dict[str, Any]:
    """The samples a run took (parameter -> sample id) and made, when it took or made any
    (metadata.json has their chains of origin)."""
    s = meta.get("samples") or {}
    used = {k: v.get("sample_id") for k, v in (s.get("inputs") or {}).items()}
    made = list(s.get("made") or [])
    return {"samples": {"used": used, "made": made}} if used or made else {}


def close_record(rec: RunRecord, *, bench_id: str, state: RunState, plan: Plan,
                 context: dict[str, Any], parameters: Mapping[str, Any],
                 instigator: dict[str, Any], errors: list[dict[str, Any]],
                 figures: list[dict[str, Any]], index: RunIndex
                 ) -> tuple[RunState, dict[str, Any]]:
    """Journal the end of a run, write metadata.json and result.json, close and index it;
    the final state and the result. Each part is tried on its own: a full disk or a
    broken index must still end the run for `wait()` and the adapters, with the failure
    to record named in the result (and a run whose record is incomplete did not
    complete)."""
    run_id = rec.run_id
    record_errors: list[str] = []

    def attempt(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # each part of the record is tried on its own
            log.error("run %s: could not %s: %s", run_id, what, exc)
            record_errors.append(f"could not {what}: {exc}")
            return None

    attempt("journal the end of the run", lambda: rec.journal.append(
        "run_finished", run_id=run_id, status=str(state), errors=errors, figures=figures))
    meta = attempt("build the metadata", lambda: prov.build_metadata(
        context=context, events=rec.events(), data_files=rec.data_files(),
        figures=figures, status=str(state)))
    if meta is None:
        meta = {"times": {"ended": utc_iso()}, "outcome": {"in_doubt": []}}
    else:
        attempt("write metadata.json", lambda: rec.write_metadata(meta))
    if record_errors:
        errors = [*errors, {"type": "RecordError", "message": "; ".join(record_errors)}]
        if state == RunState.COMPLETED:
            state = RunState.FAILED
    result = result_document(
        bench_id=bench_id, run_id=run_id, record_folder=str(rec.folder), state=state,
        plan=plan, parameters=parameters, instigator=instigator, errors=errors,
        figures=figures, meta=meta)
    attempt("write result.json", lambda: rec.write_result(result))
    attempt("close the record", rec.close)
    attempt("index the run", lambda: index.upsert_run(
        run_id, status=str(state), ended=meta["times"].get("ended"), figures=figures,
        error="; ".join(str(e.get("message") or e) for e in errors) or None))
    return state, result
