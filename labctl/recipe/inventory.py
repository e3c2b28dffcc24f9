"""Material bookkeeping over a whole recipe, before anything moves.

Starting from the bench config (reservoir contents, dispenser heads, empty vials), the
planned steps' material effects are applied in order: volumes leave one vessel and enter
another, routing devices (selector valves, pump valves) lead somewhere. Taking more than a
vessel holds, overfilling a vessel, or relying on a route nobody set is reported against
the step that would do it. What is taken from reservoirs and dispenser heads becomes the
materials request list.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from labctl.actions import Effect, fmt
from labctl.config import BenchConfig
from labctl.units import quantity, to

EPS = 1e-12
#: stands for liquid a step takes that was not there (already reported)
SHORTFALL = "(missing)"


@dataclass
class Holding:
    """A vessel (or a syringe barrel, a dispenser head) as bookkeeping: liquids by
    volume, solids by mass."""

    name: str
    kind: str
    capacity_l: float | None
    liquids_l: dict[str, float] = field(default_factory=dict)
    solids_g: dict[str, float] = field(default_factory=dict)

    @property
    def volume_l(self) -> float:
        return sum(self.liquids_l.values())


@dataclass
class Use:
    """An amount of a material taken from one source."""

    material: str
    source: str
    amount: float
    unit: str  # "L" or "g"


#: persisted levels (labctl.store.inventory): holding -> material -> (amount, "L" | "g");
#: a holding is a reservoir's vessel name or a dispenser's device name (its head)
Levels = dict[str, dict[str, tuple[float, str]]]


class Inventory:
    """`levels`, when given, replace what the config says reservoirs and dispenser heads
    hold (the bench's persisted inventory) and what vials holding a live sample hold; the
    other vials start as the config says."""

    def __init__(self, cfg: BenchConfig, levels: Levels | None = None,
                 reserved: Levels | None = None):
        self.cfg = cfg
        #: what queued and running runs will still take (already left out of `levels`)
        self.reserved = reserved or {}
        self.holdings: dict[str, Holding] = {}
        self.routes: dict[str, str | None] = {}
        self.initialized: set[str] = set()
        self.uses: dict[tuple[str, str], Use] = {}
        self.moves: list[dict[str, Any]] = []
        self._transit: tuple[dict[str, float], dict[str, float]] | None = None
        for name, v in cfg.vessels.items():
            cap = _q(v.capacity, "L")
            h = Holding(name, v.kind, cap)
            for mid, amount in v.contents.items():
                vol = _q(amount, "L")
                if vol is not None:
                    h.liquids_l[mid] = vol
                else:
                    mass = _q(amount, "g")
                    if mass is not None:
                        self._add_solid_or_liquid(h, mid, mass)
            self.holdings[name] = h
        for dname, d in cfg.devices.items():
            if d.params.get("syringe_volume") is not None and d.params.get("port_map"):
                self.holdings[f"#{dname}"] = Holding(
                    f"{dname} syringe", "syringe", _q(d.params["syringe_volume"], "L"))
            head = d.params.get("head_material")
            if head:
                content = _q(d.params.get("head_content"), "g")
                h = Holding(dname, "head", None)
                h.solids_g[str(head)] = content if content is not None else float("inf")
                self.holdings[f"#{dname}"] = h
        if levels:
            self._use_levels(levels)

    def _use_levels(self, levels: Levels) -> None:
        for name, mats in levels.items():
            h = self.holdings.get(name) or self.holdings.get(f"#{name}")
            if h is None:
                continue
            h.liquids_l.clear()
            h.solids_g.clear()
            for mid, (amount, unit) in mats.items():
                (h.liquids_l if unit == "L" else h.solids_g)[mid] = max(0.0, amount)

    def stock(self) -> list[tuple[str, str, float, str]]:
        """What reservoirs and dispenser heads hold: (holding, material, amount, unit);
        a head's holding is its device name. What a persisted inventory starts from."""
        out = []
        for key, h in self.holdings.items():
            if h.kind not in ("reservoir", "head"):
                continue
            name = key.lstrip("#")
            for mid, v in h.liquids_l.items():
                out.append((name, mid, v, "L"))
            for mid, g in h.solids_g.items():
                if g != float("inf"):
                    out.append((name, mid, g, "g"))
        return out

    def holding_of(self, name: str) -> Holding | None:
        return self.holdings.get(name) or self.holdings.get(f"#{name}")

    def _add_solid_or_liquid(self, h: Holding, mid: str, mass_g: float) -> None:
        m = self.cfg.materials.get(mid)
        if m is not None and m.phase == "liquid" and m.density:
            dens = _q(m.density, "g/L")
            if dens:
                h.liquids_l[mid] = h.liquids_l.get(mid, 0.0) + mass_g / dens
                return
        h.solids_g[mid] = h.solids_g.get(mid, 0.0) + mass_g

    # -- routes -------------------------------------------------------------------------
    def resolve(self, name: str) -> tuple[str | None, str | None]:
        """(vessel, None) or (None, why not)."""
        seen = 0
        while name.startswith("@"):
            device = name[1:]
            target = self.routes.get(device)
            if target is None:
                why = ("is not set to a known position before this step" if device not in
                       self.routes else "leads to no vessel the bench knows at this step")
                return None, f"{device} {why}"
            name = target
            seen += 1
            if seen > 16:
                return None, f"routing loop through {device}"
        if name not in self.holdings:
            return None, f"no vessel {name!r} on the bench"
        return name, None

    # -- effects ------------------------------------------------------------------------
    def apply(self, effect: Effect, step_id: str) -> list[tuple[str, str]]:
        """Apply one effect; returns (argument, message) problems."""
        if effect.kind == "route":
            if effect.device:
                self.routes[effect.device] = effect.target
            return []
        if effect.kind == "init":
            self.initialized.add(effect.device or "")
            return []
        if effect.kind == "needs_init":
            if effect.device not in self.initialized:
                return [("", f"{effect.device} is not initialised before this step (add an "
                             f"initialize step for it earlier in the recipe)")]
            return []
        if effect.kind == "needs_liquid":
            vessel, why = self.resolve(effect.destination or "")
            if vessel is None:
                return [(effect.arg, why or "")]
            if self.holdings[vessel].volume_l <= EPS:
                return [(effect.arg, f"{vessel} holds no liquid at this step")]
            return []
        return self._move(effect, step_id)

    def _end(self, name: str | None, expect: str | None, arg: str
             ) -> tuple[Holding | None, list[tuple[str, str]]]:
        if name is None:
            return None, []
        vessel, why = self.resolve(name)
        if vessel is None:
            return None, [(arg, why or "")]
        if expect is not None and vessel != expect:
            via, hop, hops = name.lstrip("@"), name, 0
            while hop.startswith("@") and hops < 16:  # the last routing device decides
                via, hop, hops = hop[1:], self.routes.get(hop[1:]) or "", hops + 1
            return None, [(arg, f"{expect} is reached through {via}, which leads to "
                                f"{self.holdings[vessel].name} at this step")]
        return self.holdings[vessel], []

    def _move(self, e: Effect, step_id: str) -> list[tuple[str, str]]:
        src, p1 = self._end(e.source, e.expect_source, e.arg)
        dst, p2 = self._end(e.destination, e.expect_destination, e.arg)
        problems = p1 + p2
        if problems:
            if e.destination is None:
                self._transit = ({}, {})
            return problems
        liquids: dict[str, float] = {}
        solids: dict[str, float] = {}
        if e.source is None:
            liquids, solids = self._transit or ({}, {})
            self._transit = None
        elif src is not None and e.solid:
            mat = e.material or ""
            have = src.solids_g.get(mat, 0.0)
            if e.amount > have * (1 + 1e-9) + EPS:
                problems.append((e.arg, f"{src.name} holds {fmt(have, 'g')} of {mat}, "
                                        f"cannot dose {fmt(e.amount, 'g')} at this step"
                                        + self._reserved_note(src.name)))
                return problems
            src.solids_g[mat] = have - e.amount
            solids = {mat: e.amount}
            self._use(mat, src, e.amount, "g")
        elif src is not None:
            frozen = self.frozen(src)
            if frozen:
                problems.append((e.arg, frozen))
            have = src.volume_l
            shortfall = 0.0
            if e.amount > have * (1 + 1e-9) + EPS:
                problems.append((e.arg, f"{src.name} holds {fmt(have, 'L')}, cannot take "
                                        f"{fmt(e.amount, 'L')} at this step"
                                        + self._reserved_note(src.name)))
                # carry on as if it had been there, so later steps are not blamed for it
                shortfall = e.amount - have
            fraction = min(1.0, e.amount / have) if have > 0 else 0.0
            for m, v in list(src.liquids_l.items()):
                liquids[m] = v * fraction
                src.liquids_l[m] = v - liquids[m]
                self._use(m, src, liquids[m], "L")
            for m, g in list(src.solids_g.items()):
                solids[m] = g * fraction
                src.solids_g[m] = g - solids[m]
            if shortfall > 0:
                liquids[SHORTFALL] = liquids.get(SHORTFALL, 0.0) + shortfall
        if e.destination is None:
            self._transit = (liquids, solids)
            return problems
        if dst is None:
            return problems
        added = sum(liquids.values())
        if dst.capacity_l is not None and dst.volume_l + added > dst.capacity_l * (1 + 1e-9):
            problems.append((e.arg, f"{dst.name} would overflow: "
                                    f"{fmt(dst.volume_l + added, 'L')} in a "
                                    f"{fmt(dst.capacity_l, 'L')} vessel"))
        for m, v in liquids.items():
            dst.liquids_l[m] = dst.liquids_l.get(m, 0.0) + v
        for m, g in solids.items():
            dst.solids_g[m] = dst.solids_g.get(m, 0.0) + g
        self.moves.append({"step": step_id, "to": dst.name,
                           "liquids_l": {m: v for m, v in liquids.items() if v > EPS},
                           "solids_g": {m: g for m, g in solids.items() if g > EPS}})
        return problems

    def _reserved_note(self, name: str) -> str:
        held = self.reserved.get(name) or {}
        parts = [fmt(a, u) + f" of {m}" for m, (a, u) in held.items() if a > EPS]
        if not parts:
            return ""
        return (f" ({', '.join(parts)} more in it is reserved by queued and running runs; "
                "refill it: labctl inventory refill)")

    def frozen(self, src: Holding) -> str | None:
        """Why liquid cannot be drawn from a reservoir: most of it is a material whose
        declared melting point is above the reservoir's declared temperature (neat EC, m.p.
        36.4 °C, in a reservoir at room temperature is a solid)."""
        if src.kind != "reservoir" or src.name not in self.cfg.vessels or src.volume_l <= EPS:
            return None
        temperature = self.cfg.vessel_temperature_c(src.name)
        declared = self.cfg.vessels[src.name].temperature is not None
        for mid, vol in src.liquids_l.items():
            m = self.cfg.materials.get(mid)
            if m is None or m.melting_point is None or vol <= 0.5 * src.volume_l:
                continue
            mp = to(m.melting_point, "degC")
            if temperature < mp:
                how = ("declared at" if declared
                       else "at the ambient temperature (no vessels."
                            f"{src.name}.temperature declared),")
                return (f"{mid} (materials.{mid}.melting_point {mp:g} °C) is solid in "
                        f"{src.name}, {how} {temperature:g} °C: it cannot be pumped; keep "
                        f"{src.name} warmed above {mp:g} °C")
        return None

    def _use(self, material: str, src: Holding, amount: float, unit: str) -> None:
        """Count what leaves a reservoir or a dispenser head (not what moves between
        vials or passes through a syringe)."""
        if src.kind not in ("reservoir", "head") or amount <= EPS or material == SHORTFALL:
            return
        key = (material, src.name)
        if key not in self.uses:
            self.uses[key] = Use(material, src.name, 0.0, unit)
        self.uses[key].amount += amount

    def contents(self, vessel: str) -> dict[str, Any]:
        h = self.holdings[vessel]
        return {"volume_l": h.volume_l, "liquids_l": dict(h.liquids_l),
                "solids_g": dict(h.solids_g)}


def _q(value: Any, unit: str) -> float | None:
    """`value` (a quantity string, a number, a Quantity) in `unit`; None when it is none
    or not convertible."""
    if value is None:
        return None
    if isinstance(value, (str, int, float)):
        return _q_cached(value, unit)
    return _q_uncached(value, unit)


@functools.lru_cache(maxsize=4096)
def _q_cached(value: str | float, unit: str) -> float | None:
    # every submit builds several Inventory objects from the same config strings: parsing
    # and converting them with pint each time was half of an MQTT submit's latency
    return _q_uncached(value, unit)


def _q_uncached(value: Any, unit: str) -> float | None:
    try:
        return float(quantity(value).to(unit).magnitude)
    except Exception:
        return None
