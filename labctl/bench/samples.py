"""Samples as runs make and use them (labctl.store.samples underneath).

At submit, `bind` turns the recipe's vessel parameters into vessels: a "sample" parameter's
id becomes the vessel the sample sits in (the run record keeps the id and its chain of
origin), a "vial" parameter left out gets a free vial of its rack (free: no live sample in
it and not claimed by a queued or running run). While and after a run, `sync` reads its
journal: every vial it added material to becomes a sample (grams per material from the
recorded amounts), additions to a sample it took as a parameter add to that sample's
composition, measurements at a sample's vessel are "measured" events, and a vial the plan
leaves empty at the end (drained, rinsed) is "disposed".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from labctl.actions import Effect
from labctl.config import BenchConfig
from labctl.recipe.inventory import EPS, Inventory, Levels
from labctl.recipe.issues import Issue, RecipeError
from labctl.recipe.loading import RecipeSource, load_source
from labctl.recipe.plan import Plan
from labctl.recipe.vessel_params import rack_of
from labctl.store.samples import LIVE, SampleError, SampleStore
from labctl.units import to

log = logging.getLogger("labctl.bench.samples")

#: record kinds that are a measurement of what is in a vessel
MEASURED = ("measurement", "weighing")


class BenchSamples:
    def __init__(self, cfg: BenchConfig, data_dir: str | Path):
        self.cfg = cfg
        self.store = SampleStore(Path(data_dir), cfg.bench.id)
        #: run id -> vessels its vessel parameters bound (claims on vials)
        self.claims: dict[str, set[str]] = {}
        #: run id -> {parameter: sample id}
        self.inputs: dict[str, dict[str, str]] = {}

    def close(self) -> None:
        self.store.close()

    # -- at submit ------------------------------------------------------------------------
    def bind(self, recipe: RecipeSource, params: Mapping[str, Any],
             active: Iterable[str] = (), base_dir: Path | None = None,
             exclude: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, str], set[str]]:
        """(parameters with vessels for samples and assigned vials, {parameter: sample id},
        vessels claimed). RecipeError naming the parameter when a sample is unknown or gone,
        or a rack has no free vial. `exclude`: vials taken by runs not submitted yet (the
        earlier rows of a campaign)."""
        from labctl.recipe.validate import parse_recipe

        out = dict(params)
        try:
            doc = load_source(recipe, base_dir)
        except Exception:
            return out, {}, set()  # the planner reports it with its JSON path
        parsed, _issues = parse_recipe(doc.data)
        if parsed is None:
            return out, {}, set()
        claimed = {v for rid in active for v in self.claims.get(rid, ())} | set(exclude)
        live = self.store.live_at()
        inputs: dict[str, str] = {}
        vessels: set[str] = set()
        issues: list[Issue] = []
        for name, d in parsed.parameters.items():
            path = f"parameters.{name}"
            if d.type == "sample":
                sid = out.get(name, d.default)
                if sid is None:
                    continue
                try:
                    s = self.store.get(str(sid))
                except SampleError as exc:
                    issues.append(Issue(path, f"parameter {name!r}: {exc}"))
                    continue
                if s["status"] != LIVE:
                    issues.append(Issue(path, f"parameter {name!r}: sample {s['id']} was "
                                              f"{s['status']}; it is no longer in "
                                              f"{s['vessel']}"))
                    continue
                out[name] = s["vessel"]
                inputs[name] = s["id"]
                vessels.add(s["vessel"])
            elif d.type == "vial":
                given = out.get(name, d.default)
                if given is not None:
                    v = str(given)
                    if v in live:
                        issues.append(Issue(path, f"parameter {name!r}: vial {v} holds "
                                                  f"sample {live[v]} (pass it as a sample "
                                                  "parameter, or dispose of it first)"))
                    elif v in claimed:
                        issues.append(Issue(path, f"parameter {name!r}: vial {v} is claimed "
                                                  "by a queued or running run"))
                    vessels.add(v)
                    continue
                vials = rack_of(self.cfg, d.rack)
                free = [v for v in vials if v not in live and v not in claimed
                        and v not in vessels]
                if not free:
                    taken = ", ".join(f"{v}: {live.get(v) or 'claimed'}" for v in vials)
                    issues.append(Issue(path, f"parameter {name!r}: no free vial in rack "
                                              f"{d.rack!r} ({taken or 'it has no vials'})"))
                    continue
                out[name] = free[0]
                vessels.add(free[0])
        if issues:
            raise RecipeError(issues)
        return out, inputs, vessels

    def check_free(self, plan: Plan, active: Iterable[str]) -> None:
        """A planned run's vial parameters name vials still free (two submits planned at
        once must not both get one vial): RecipeError naming the parameter."""
        claimed = {v: rid for rid in active for v in self.claims.get(rid, ())}
        live = self.store.live_at()
        issues = []
        for name, t in plan.parameters_typed.items():
            v = t.get("value")
            if t.get("type") != "vial" or not isinstance(v, str):
                continue
            if v in live:
                issues.append(Issue(f"parameters.{name}", f"parameter {name!r}: vial {v} "
                                                          f"holds sample {live[v]}"))
            elif v in claimed:
                issues.append(Issue(f"parameters.{name}", f"parameter {name!r}: vial {v} "
                                                          f"is claimed by run {claimed[v]}"))
        if issues:
            raise RecipeError(issues)

    def claim(self, run_id: str, vessels: set[str], inputs: dict[str, str]) -> None:
        self.claims[run_id] = set(vessels)
        self.inputs[run_id] = dict(inputs)
        if inputs:
            self.store.note_inputs(run_id, inputs)

    def provenance(self, inputs: Mapping[str, str]) -> dict[str, Any]:
        """The samples a run takes, each with its chain of origin."""
        return {"inputs": {name: {"sample_id": sid, "chain": self.store.chain(sid)}
                           for name, sid in inputs.items()}, "made": []}

    # -- from the journal -----------------------------------------------------------------
    def sync(self, run_id: str, events: list[dict[str, Any]], plan: Plan | None = None,
             *, final: bool = False) -> list[str]:
        """Samples made, added to and measured by a run, from its journal (idempotent).
        `final` (the run has ended): a vial the plan leaves empty is disposed."""
        inputs = self.inputs.get(run_id) or self.store.inputs_of(run_id)
        by_vessel: dict[str, str] = {}
        for sid in inputs.values():
            with_id = self.store.get(sid)
            by_vessel[with_id["vessel"]] = sid
        made: dict[str, dict[str, Any]] = {}
        added: dict[str, dict[str, float]] = {}
        history: list[tuple[str, str, str, str, dict[str, Any]]] = []
        for ev in events:
            if ev.get("event") != "record":
                continue
            vessel = ev.get("vessel")
            v = self.cfg.vessels.get(str(vessel))
            if v is None or v.kind != "vial":
                continue
            kind, step, t = ev.get("kind"), str(ev.get("step") or ""), str(ev.get("t") or "")
            if kind == "addition":
                grams = self._grams(ev)
                if grams is None:
                    continue
                mat, g = grams
                if vessel in by_vessel:
                    sid = by_vessel[vessel]
                    comp = added.setdefault(sid, {})
                    history.append((sid, "added", step, t, {"material": mat, "g": g}))
                else:
                    info = made.setdefault(str(vessel), {"rack": v.rack,
                                                         "position": v.position,
                                                         "grams": {}, "step": step, "t": t})
                    comp = info["grams"]
                comp[mat] = comp.get(mat, 0.0) + g
            elif kind in MEASURED:
                target = by_vessel.get(str(vessel), str(vessel))
                if target in by_vessel.values() or vessel in made:
                    history.append((target, "measured", step, t,
                                    {"technique": ev.get("technique") or kind}))
        if final and plan is not None:
            for vessel in self._emptied(plan):
                target = by_vessel.get(vessel, vessel)
                if vessel in made or vessel in by_vessel:
                    history.append((target, "disposed", "", _last_t(events),
                                    {"why": "the run leaves the vial empty"}))
        return self.store.record_run(run_id, made=made, added=added, events=history)

    def vial_levels(self) -> Levels:
        """What vials holding a live sample hold, as validation counts it: liquids (by
        their density) in L, the rest in g."""
        out: Levels = {}
        for s in self.store.list_samples(status=LIVE, limit=10_000):
            mats: dict[str, tuple[float, str]] = {}
            for mid, g in s["composition_g"].items():
                m = self.cfg.materials.get(mid)
                density = None
                if m is not None and m.density and m.phase != "solid":
                    try:
                        density = to(m.density, "g/L")
                    except Exception:
                        density = None
                mats[mid] = (g / density, "L") if density else (g, "g")
            out[s["vessel"]] = mats
        return out

    def release(self, run_id: str) -> None:
        self.claims.pop(run_id, None)
        self.inputs.pop(run_id, None)  # the store keeps them (inputs_of): no per-run memory

    def _grams(self, ev: dict[str, Any]) -> tuple[str, float] | None:
        mat = ev.get("material")
        actual = ev.get("actual")
        if not mat or not isinstance(actual, (int, float)):
            return None
        if ev.get("unit") == "g":
            return str(mat), float(actual)
        m = self.cfg.materials.get(str(mat))
        try:
            density = to(m.density, "g/L") if m is not None and m.density else None
        except Exception:
            density = None
        if density is None:
            return None
        return str(mat), float(actual) * density

    def _emptied(self, plan: Plan) -> list[str]:
        """Vials the plan fills and then leaves with no liquid (a rinse, a drain)."""
        inv = Inventory(self.cfg)
        filled: set[str] = set()
        for leaf in plan.leaves():
            for e in leaf.effects:
                inv.apply(Effect(**e), leaf.id)
        for mv in inv.moves:
            filled.add(str(mv.get("to")))
        return [n for n in filled if n in self.cfg.vessels
                and self.cfg.vessels[n].kind == "vial"
                and inv.holdings[n].volume_l <= EPS]


def _last_t(events: list[dict[str, Any]]) -> str:
    return str(events[-1].get("t")) if events else ""


def plan_claims(plan: Plan, submitted: Mapping[str, Any]) -> tuple[set[str], dict[str, str]]:
    """(vessels, {parameter: sample id}) of a plan made with its vessel parameters already
    bound (labctl run binds before it plans)."""
    vessels: set[str] = set()
    inputs: dict[str, str] = {}
    for name, t in plan.parameters_typed.items():
        if t.get("type") in ("vial", "sample") and isinstance(t.get("value"), str):
            vessels.add(t["value"])
            given = submitted.get(name)
            if t["type"] == "sample" and isinstance(given, str) and given != t["value"]:
                inputs[name] = given
    return vessels, inputs


def bind_offline(cfg: BenchConfig, data_dir: str | Path, recipe: RecipeSource,
                 params: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], tuple[Levels | None, Levels | None]]:
    """`BenchSamples.bind` for a command that plans before its bench starts (`labctl run`):
    the parameters with sample ids and omitted vials bound to vessels, and the stock to
    plan from (persisted levels, vials holding samples)."""
    from labctl.bench.stock import BenchStock

    if not Path(data_dir).exists():  # a new bench: the config's levels, no samples yet (and
        # a refused run must leave no data dir behind)
        import tempfile

        with tempfile.TemporaryDirectory() as empty:
            fresh = BenchSamples(cfg, empty)
            try:
                return fresh.bind(recipe, params)[0], (None, None)
            finally:
                fresh.close()
    samples = BenchSamples(cfg, data_dir)
    stock = BenchStock(cfg, data_dir)
    try:
        levels, reserved = stock.for_plan()
        return samples.bind(recipe, params)[0], ({**levels, **samples.vial_levels()},
                                                 reserved)
    finally:
        samples.close()
        stock.close()
