"""Resuming an interrupted (or failed, aborted) run: what may be skipped, what needs an
operator's decision, and the journal of those decisions. Touches no device.

Completed steps are kept; idempotent in-doubt steps re-run; an in-doubt step that may not
simply be repeated (it could add material twice) waits for "accept" (mark it done as it
stands) or "redo" (repeat it). Each decision is journaled before the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from labctl.bench.errors import InDoubtError, NothingToResume
from labctl.executor import moves_material
from labctl.recipe.plan import Plan, PlannedStep
from labctl.simulation import WORLD_FILE, in_doubt_report, read_saved_world
from labctl.store import Replay, RunRecord, RunStore, utc_iso

#: builds a plan from a recipe document and its parameters (Bench.plan)
PlanFn = Callable[[dict[str, Any], dict[str, Any]], Plan]

#: metadata.json keys a resumed run carries over from its first session
CARRIED_CONTEXT = ("run_id", "recipe", "parameters", "parameters_resolved", "instigator",
                   "bench", "conditions", "times", "materials", "instruments", "software",
                   "fidelity", "sop", "sessions")


@dataclass(frozen=True)
class ResumeCheck:
    """Everything a resume needs to know, found touching no device and writing nothing."""

    record: RunRecord
    #: the plan rebuilt from the recorded recipe (same sha256)
    plan: Plan
    #: recipe.json as recorded
    document: dict[str, Any]
    #: the journal replayed
    replay: Replay
    #: leaf steps started and not finished (decided or not)
    in_doubt: list[str]


def replan_source(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe and parameters that rebuild a recorded plan: the resolved recipe (what
    ran, includes inlined — not the files, which may have changed since) with its parameter
    declarations, and the resolved parameter values."""
    recipe = dict(doc["recipe"])
    decls = recipe.get("parameters")
    if isinstance(decls, dict):
        recipe["parameters"] = {n: ({k: v for k, v in d.items() if k != "value"}
                                    if isinstance(d, dict) else d) for n, d in decls.items()}
    params = doc.get("parameters")
    if not isinstance(params, dict):
        params = doc.get("parameters_submitted") or {}
    return recipe, dict(params)


def is_idempotent(step: PlannedStep) -> bool:
    """Waits and analyses may always be repeated; actions only when declared so, and never
    one that moves material, whatever its flag says (a plan built by hand, a recorded
    recipe edited by hand): an in-doubt addition waits for an operator's decision."""
    if moves_material(step):
        return False
    return step.kind in ("wait", "analysis") or step.idempotent


def check_resume(store: RunStore, run_id: str, plan: PlanFn, *, active: Collection[str],
                 simulate: bool, accept_in_doubt: Collection[str] = (),
                 redo: Collection[str] = ()) -> ResumeCheck:
    """Can `run_id` be resumed with these decisions? Raises NothingToResume (completed,
    unknown, queued or running in `active`, recipe changed, unknown step), InDoubtError
    (undecided in-doubt steps) or the planner's RecipeError."""
    try:
        rec = store.open(run_id)
    except FileNotFoundError as exc:
        raise NothingToResume(str(exc)) from None
    if run_id in active:
        raise NothingToResume(f"run {run_id} is queued or running in this bench")
    r = rec.replay()
    if r.finished is not None and r.finished.get("status") == "completed":
        raise NothingToResume(f"run {run_id} completed; nothing to resume")
    doc = rec.read_json("recipe.json")
    if doc is None:
        raise NothingToResume(f"run {run_id} has no recipe.json")
    rebuilt = plan(*replan_source(doc))
    if doc.get("sha256") and rebuilt.sha256 and rebuilt.sha256 != doc["sha256"]:
        raise NothingToResume(
            f"run {run_id}: the recipe no longer resolves to the recorded one "
            f"(sha256 {rebuilt.sha256} != {doc['sha256']}); the bench config changed?")
    leaves = {s.id: s for s in rebuilt.leaves()}
    unknown = [s for s in [*accept_in_doubt, *redo] if s not in leaves]
    if unknown:
        raise NothingToResume(f"run {run_id} has no step {', '.join(unknown)}")
    in_doubt = [s for s in r.in_doubt if s in leaves]
    undecided = [s for s in in_doubt if s not in accept_in_doubt and s not in redo
                 and not is_idempotent(leaves[s])]
    if undecided:
        world = in_doubt_report(read_saved_world(rec.folder), undecided) if simulate else None
        raise InDoubtError(run_id, undecided, world)
    return ResumeCheck(record=rec, plan=rebuilt, document=doc, replay=r, in_doubt=in_doubt)


def journal_decisions(check: ResumeCheck, *, accept_in_doubt: Collection[str],
                      redo: Collection[str], operator: str,
                      world: dict[str, Any] | None) -> set[str]:
    """Journal the decision on every in-doubt step (and every redone completed one); the
    step ids the resumed run skips."""
    journal = check.record.journal
    run_id = check.record.run_id
    skip = set(check.replay.completed)
    holds = (world or {}).get("in_doubt") or {}

    def sim(s: str) -> dict[str, Any]:
        return {"sim_world_holds": holds[s]["holds"]} if s in holds else {}

    for s in check.in_doubt:
        if s in accept_in_doubt:
            journal.append("decision", run_id=run_id, step=s, decision="accept",
                           operator=operator, note="in-doubt step accepted as it stands",
                           **sim(s))
            skip.add(s)
        elif s in redo:
            journal.append("decision", run_id=run_id, step=s, decision="redo",
                           operator=operator, note="in-doubt step repeated on resume", **sim(s))
        else:
            journal.append("decision", run_id=run_id, step=s, decision="rerun",
                           operator="labctl", note="idempotent step re-run on resume")
    for s in redo:  # a completed step may be redone on request too
        if s not in check.in_doubt:
            journal.append("decision", run_id=run_id, step=s, decision="redo",
                           operator=operator, note="completed step repeated on resume")
            skip.discard(s)
    return skip


def resumed_context(meta: dict[str, Any], fresh: dict[str, Any], *, reason: str,
                    operator: str, skip: set[str], time_scale: float,
                    world: dict[str, Any] | None) -> dict[str, Any]:
    """The run's recorded context with one more session (who, why, what was skipped, the
    software and instruments of this session)."""
    context = {k: v for k, v in meta.items() if k in CARRIED_CONTEXT}
    for key in ("instruments", "software", "fidelity"):
        context.setdefault(key, fresh[key])
    context["sessions"] = [*context.get("sessions", []),
                           {"started": utc_iso(), "kind": reason, "operator": operator,
                            "skipped": sorted(skip),
                            "time_scale": time_scale,
                            "instruments": fresh["instruments"],
                            "software": fresh["software"],
                            **({"sim_world": world} if world is not None else {})}]
    return context


def prior_results(check: ResumeCheck) -> dict[str, dict[str, Any]]:
    """The results of the steps completed in earlier sessions (analyses read their data)."""
    return {sid: st.result or {} for sid, st in check.replay.steps.items()
            if st.state == "completed"}


def world_on_resume(rec: RunRecord, in_doubt: list[str],
                    saved: dict[str, Any] | None) -> dict[str, Any]:
    """What the resumed run's simulated world is (journaled with `resumed`): the world the
    run saved when the simulators were started from it (`saved`), else a note why not."""
    if saved is not None:
        return {"restored": True, "saved": saved.get("saved"), "saved_at": saved.get("at"),
                "in_doubt": in_doubt_report(saved, in_doubt)}
    has = (rec.folder / WORLD_FILE).exists()
    return {"restored": False,
            "note": ("the run saved its simulated world, but this bench's simulators "
                     "were started without it (resume with `labctl resume`, which starts "
                     "them from it)") if has else "the run saved no simulated world"}
