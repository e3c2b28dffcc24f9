"""The bench's persisted inventory as runs see it (labctl.store.inventory underneath).

At submit: what each step of the plan takes from reservoirs and dispenser heads (its
planned uses) is recorded, and the plan is validated from the persisted levels less what
queued and running runs will still take — so a run, or a campaign of them, that would run
a reservoir dry is refused before anything moves. While a run goes: at the end of each
step that took material, the run's journal is read and its debits applied; the journal is
the truth (measured amounts from its `addition` records where the step recorded them), the
store only applies each (run, step, attempt) once. Reconciling again at resume, at start-up
and at the run's end therefore neither loses nor doubles a debit after a kill.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from labctl.actions import Effect
from labctl.config import BenchConfig
from labctl.recipe.inventory import Inventory, Levels
from labctl.recipe.plan import Plan
from labctl.store.inventory import Debit, InventoryError, InventoryStore, Level

log = logging.getLogger("labctl.bench.stock")

#: (holding, material, amount, unit)
UseRow = tuple[str, str, float, str]
#: journal events that end a step's attempt or decide on it
_STEP_ENDS = ("step_finished", "step_failed", "decision")


class BenchStock:
    """One bench's inventory: levels, refills, planned uses and debits."""

    def __init__(self, cfg: BenchConfig, data_dir: str | Path):
        self.cfg = cfg
        self.store = InventoryStore(Path(data_dir))
        seedinv = Inventory(cfg)
        lots = {mid: m.lot for mid, m in cfg.materials.items()}
        self.store.seed((h, m, a, u, lots.get(m)) for h, m, a, u in seedinv.stock())
        self._holdings = {h for h, *_ in seedinv.stock()}

    def close(self) -> None:
        self.store.close()

    # -- what validation starts from -----------------------------------------------------
    def for_plan(self, active: Iterable[str] = ()) -> tuple[Levels, Levels]:
        """(levels less what the active runs will still take, that reservation)."""
        levels, outstanding = self.store.plan_view(active)
        reserved: Levels = {}
        units = {(h, m): u for h, mats in levels.items() for m, (_a, u) in mats.items()}
        for (h, m), amount in outstanding.items():
            unit = units.get((h, m), "L")
            reserved.setdefault(h, {})[m] = (amount, unit)
            have = levels.get(h, {}).get(m, (0.0, unit))[0]
            levels.setdefault(h, {})[m] = (have - amount, unit)
        return levels, reserved

    # -- planned uses --------------------------------------------------------------------
    def step_uses(self, plan: Plan) -> dict[str, list[UseRow]]:
        """Per leaf step, what it takes from reservoirs and dispenser heads (replaying the
        plan's effects with routes, as validation does, from unlimited stock)."""
        inv = Inventory(self.cfg)
        for h in inv.holdings.values():
            if h.kind in ("reservoir", "head"):
                for d in (h.liquids_l, h.solids_g):
                    for m in d:
                        d[m] = 1e9
        out: dict[str, list[UseRow]] = {}
        for leaf in plan.leaves():
            before = {k: u.amount for k, u in inv.uses.items()}
            for e in leaf.effects:
                inv.apply(Effect(**e), leaf.id)
            rows = [(u.source, u.material, u.amount - before.get(k, 0.0), u.unit)
                    for k, u in inv.uses.items() if u.amount - before.get(k, 0.0) > 1e-15]
            if rows:
                out[leaf.id] = rows
        return out

    def provenance(self, uses: dict[str, list[UseRow]]) -> dict[str, Any]:
        """What metadata.json says of the stock a run draws on: per holding and material
        the level at submit, its lot and the date of the refill that brought that lot."""
        used = {(h, m) for rows in uses.values() for h, m, _a, _u in rows}
        return {"levels_at_submit": [lv.to_dict() for lv in self.store.levels()
                                     if (lv.holding, lv.material) in used]}

    # -- debits --------------------------------------------------------------------------
    def debits_from_journal(self, run_id: str, events: list[dict[str, Any]]) -> list[Debit]:
        return debits_from_journal(run_id, events, self.store.planned(run_id))

    def sync(self, run_id: str, events: list[dict[str, Any]]) -> list[Debit]:
        """Apply whatever the journal says the run took and the store has not yet debited."""
        return self.store.apply_debits(self.debits_from_journal(run_id, events))

    def observe(self, ev: dict[str, Any], events: Callable[[], list[dict[str, Any]]]) -> None:
        """A journal event of a run just written: a step that ended may have taken stock."""
        if ev.get("event") not in _STEP_ENDS or not ev.get("run_id"):
            return
        run_id = str(ev["run_id"])
        if str(ev.get("step")) not in self.store.planned(run_id):
            return
        try:
            self.sync(run_id, events())
        except Exception:  # the journal has it: the next reconciliation applies it
            log.exception("run %s: inventory debit failed", run_id)

    # -- operator -------------------------------------------------------------------------
    def capacity_l(self, holding: str) -> float | None:
        v = self.cfg.vessels.get(holding)
        if v is None:
            return None
        from labctl.units import to

        try:
            return to(v.capacity, "L")
        except Exception:
            return None

    def known(self, holding: str) -> None:
        names = {lv.holding for lv in self.store.levels()} | self._holdings
        if holding not in names:
            raise InventoryError(f"no reservoir or dispenser {holding!r} in the inventory "
                                 f"(known: {', '.join(sorted(names))})")

    def refill(self, holding: str, amount: str, *, lot: str | None, who: str) -> Level:
        self.known(holding)
        value, unit = parse_amount(amount, holding)
        return self.store.refill(holding, value, lot=lot, who=who,
                                 capacity=self.capacity_l(holding), unit=unit)

    def set(self, holding: str, material: str, amount: str, *, lot: str | None,
            who: str) -> Level:
        self.known(holding)
        value, unit = parse_amount(amount, holding)
        return self.store.set_level(holding, material, value, unit, lot=lot, who=who,
                                    capacity=self.capacity_l(holding))

    def show(self) -> dict[str, Any]:
        return {"levels": [lv.to_dict() for lv in self.store.levels()],
                "events": self.store.events(limit=20)}


def parse_amount(text: str, holding: str) -> tuple[float, str]:
    """'50 mL' -> (0.05, 'L'); '5 g' -> (5.0, 'g'). A volume or a mass, nothing else."""
    from labctl.units import quantity

    try:
        q = quantity(str(text))
    except Exception as exc:
        raise InventoryError(f"{holding}: {text!r} is not an amount ({exc})") from None
    for unit in ("L", "g"):
        try:
            value = float(q.to(unit).magnitude)
        except Exception:
            continue
        if not value >= 0 or value == float("inf"):
            raise InventoryError(f"{holding}: amount {text!r} must be ≥ 0 and finite")
        return value, unit
    raise InventoryError(f"{holding}: {text!r} is neither a volume (mL) nor a mass (g)")


def debits_from_journal(run_id: str, events: list[dict[str, Any]],
                        planned: dict[str, list[UseRow]]) -> list[Debit]:
    """Every debit a run's journal justifies, each keyed by its step's attempt (the seq of
    its step_started line). A finished attempt takes its planned uses, scaled to what its
    `addition` records say was actually delivered; a failed attempt takes only what it
    recorded as delivered; an in-doubt step the operator accepted as done takes its planned
    uses unless an attempt of it was already debited."""
    out: list[Debit] = []
    started: dict[str, int] = {}
    additions: dict[str, list[dict[str, Any]]] = {}
    debited: set[str] = set()

    def take(step: str, attempt: str, recorded: list[dict[str, Any]] | None) -> None:
        rows = planned.get(step) or []
        total = sum(a for _h, _m, a, _u in rows)
        factor = 1.0
        if recorded is not None:
            measured = sum(float(r.get("actual") or 0.0) for r in recorded)
            factor = measured / total if total > 0 else 0.0
        for h, m, a, u in rows:
            if a * factor > 0:
                out.append(Debit(run_id, step, attempt, h, m, a * factor, u))
        debited.add(step)

    for ev in events:
        kind = ev.get("event")
        step = ev.get("step")
        if not isinstance(step, str) or step not in planned:
            continue
        if kind == "step_started":
            started[step] = int(ev.get("seq", 0))
            additions[step] = []
        elif kind == "record" and ev.get("kind") == "addition":
            additions.setdefault(step, []).append(ev)
        elif kind == "step_finished":
            recorded = additions.get(step) or None
            take(step, str(started.get(step, ev.get("seq"))), recorded)
        elif kind == "step_failed":
            recorded = additions.get(step) or []
            if recorded:
                take(step, str(started.get(step, ev.get("seq"))), recorded)
        elif kind == "decision" and ev.get("decision") == "accept":
            if step not in debited:
                recorded = additions.get(step) or None
                take(step, f"accept@{ev.get('seq')}", recorded)
    return out


def check_plans(stock: BenchStock, plans: list[Plan], active: Iterable[str] = (),
                vials: Levels | None = None) -> None:
    """Refuse (RecipeError) one run or a whole campaign of them that the persisted levels,
    less what the active runs will still take, cannot serve: the plans' material effects
    are replayed one after the other from the same stock, so the sum counts. Each issue
    names the step, the holding, what it needs and what it holds."""
    from labctl.recipe.issues import Issue, RecipeError

    levels, reserved = stock.for_plan(active)
    levels = {**levels, **(vials or {})}
    inv = Inventory(stock.cfg, levels, reserved)
    issues: list[Issue] = []
    for i, plan in enumerate(plans):
        where = f"run {i + 1} of {len(plans)}: " if len(plans) > 1 else ""
        for leaf in plan.leaves():
            for e in leaf.effects:
                for arg, message in inv.apply(Effect(**e), leaf.id):
                    if "cannot take" not in message and "cannot dose" not in message:
                        continue  # vials and routes were checked when the plan was made
                    path = f"{leaf.path}.args.{arg}" if arg else leaf.path
                    issues.append(Issue(path, f"{where}{message} (step {leaf.id}; "
                                              "inventory)"))
        if i == len(plans) - 1:
            break
        inv.routes.clear()
        inv.initialized.clear()
        fresh = Inventory(stock.cfg, vials).holdings  # each run starts with its vials as
        for h in inv.holdings.values():               # they are
            if h.kind not in ("reservoir", "head") and h.name in fresh:
                start = fresh[h.name]
                h.liquids_l, h.solids_g = dict(start.liquids_l), dict(start.solids_g)
    if issues:
        raise RecipeError(issues)
