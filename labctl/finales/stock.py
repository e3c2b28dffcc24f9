"""Stock a tenant can still promise: what the bench config says its reservoirs and dispenser
heads held when the tenant started, minus what the runs it submitted since then plan to
take. A request whose run would need more is refused before anything is reserved or moved
(a single run larger than a reservoir is already refused by the plan's own bookkeeping)."""

from __future__ import annotations

from typing import Any

from labctl.config import BenchConfig
from labctl.finales.formulation import Refusal
from labctl.recipe.inventory import Inventory

#: a run may use this much more than its plan (pump strokes, dose tolerance)
MARGIN = 1.02


class StockLedger:
    def __init__(self, cfg: BenchConfig):
        inv = Inventory(cfg)
        #: (source, material) -> amount, mL for liquids, g for solids
        self.start: dict[tuple[str, str], float] = {}
        for name, h in inv.holdings.items():
            if h.kind not in ("reservoir", "head"):
                continue
            source = name.lstrip("#")
            for mat, litres in h.liquids_l.items():
                self.start[(source, mat)] = litres * 1000.0
            for mat, grams in h.solids_g.items():
                self.start[(source, mat)] = grams
        self.used: dict[tuple[str, str], float] = {}
        self.by_run: dict[str, list[str]] = {}

    def check(self, plan: Any) -> None:
        """Refusal when the plan takes more of a material than is left where it comes from."""
        for use in getattr(plan, "materials", []) or []:
            key = (use.source, use.material)
            if key not in self.start:
                continue
            left = self.start[key] - self.used.get(key, 0.0)
            need = use.amount * MARGIN
            if need > left + 1e-9:
                runs = ", ".join(self.by_run.get(f"{use.source}/{use.material}", [])) or "none"
                raise Refusal("not_enough_stock",
                              f"{use.material} in {use.source}: {left:.4g} {use.unit} left "
                              f"({self.start[key]:.4g} {use.unit} at start, used by runs: "
                              f"{runs}); this run needs {need:.4g} {use.unit}")

    def take(self, plan: Any, run_id: str) -> None:
        for use in getattr(plan, "materials", []) or []:
            key = (use.source, use.material)
            if key in self.start:
                self.used[key] = self.used.get(key, 0.0) + use.amount * MARGIN
                self.by_run.setdefault(f"{use.source}/{use.material}", []).append(run_id)
