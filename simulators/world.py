"""The simulated world: materials, reservoirs, vials and what is in them.

Simulated pumps and dispensers move real amounts between vessels, the balance weighs the
vessel on it, the hotplate sets its temperature and the potentiostat's cell reads its
electrolyte. Amounts are conserved: every transfer takes from one vessel what it adds to
another, and impossible moves (taking more than a vessel holds, overfilling one) raise
`WorldFault` so the simulator can turn them into the instrument's own error (stall, alarm).

Amounts are kept as grams per material. The volume of a vessel is the volume of its liquids
(mass / density); dissolved solids add mass but, as a stated simplification, no volume.

A reservoir is kept at its declared temperature (a warmed reservoir for a material that is
solid at room temperature, such as neat ethylene carbonate, m.p. 36.4 °C). A reservoir
whose contents are mostly a material below its melting point is frozen: drawing from it is
a `WorldFault` of kind "frozen" (the pump stalls), as a real bench would fail. Lines and
syringe barrels are taken as traced (a stated simplification): only reservoirs freeze.

Chemistry that runs by itself (the sol-gel reaction of `simulators.solgel`) is advanced by
`World.react(dt)`, which the simulated bench calls on its clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

AMBIENT_C = 22.0


class WorldFault(Exception):
    """A physically impossible move: empty source, overflowing destination, unknown vessel."""

    def __init__(self, message: str, *, kind: str, vessel: str):
        self.kind = kind  # "empty", "overflow", "unknown", "frozen"
        self.vessel = vessel
        super().__init__(message)


@dataclass
class Material:
    id: str
    name: str = ""
    phase: str = "liquid"  # liquid | solid
    density_g_ml: float = 1.0
    molar_mass_g_mol: float | None = None
    melting_point_c: float | None = None
    #: for a solution (e.g. 1 mol/L hydrochloric acid): mol of its compound per litre
    concentration_mol_l: float | None = None
    cas: str | None = None


@dataclass
class Vessel:
    name: str
    kind: str = "vial"  # reservoir | vial | waste | syringe | tubing
    capacity_l: float = 0.02
    empty_mass_g: float = 0.0
    contents_g: dict[str, float] = field(default_factory=dict)
    temperature_c: float = AMBIENT_C
    stir_rpm: float = 0.0
    #: extent of a sol-gel reaction towards its gel point (0 fresh sol, 1 gelled)
    gel_progress: float = 0.0


def parse_amount(text: Any) -> tuple[float, str]:
    """'50 mL' -> (0.05, 'L'); '10 g' -> (10.0, 'g'); numbers are grams."""
    if isinstance(text, (int, float)):
        return float(text), "g"
    value, _, unit = str(text).strip().partition(" ")
    unit = unit.strip()
    factors = {"L": (1.0, "L"), "mL": (1e-3, "L"), "uL": (1e-6, "L"), "µL": (1e-6, "L"),
               "g": (1.0, "g"), "mg": (1e-3, "g"), "kg": (1e3, "g")}
    if unit not in factors:
        raise ValueError(f"amount {text!r}: unit must be one of {', '.join(factors)}")
    f, base = factors[unit]
    return float(value) * f, base


class World:
    """All vessels of a simulated bench."""

    def __init__(self) -> None:
        self.materials: dict[str, Material] = {}
        self.vessels: dict[str, Vessel] = {}
        #: the moves made, oldest first; entries before `ledger_base` have been dropped
        #: (trim_ledger), so a serving bench does not grow with every run
        self.ledger: list[dict[str, Any]] = []
        self.ledger_base = 0
        #: where a routing device currently leads: "@sel_valve" -> "vial_1"
        self.routes: dict[str, str] = {}

    def trim_ledger(self, keep_from: int) -> None:
        """Drop the ledger's entries before absolute index `keep_from`."""
        drop = min(keep_from - self.ledger_base, len(self.ledger))
        if drop > 0:
            del self.ledger[:drop]
            self.ledger_base += drop

    # -- building -----------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> World:
        """Build from plain data: {"materials": {id: {...}}, "vessels": {name: {...}}}.
        Vessel `capacity` and contents amounts are strings like '20 mL' / '1.5 g'."""
        world = cls()
        for mid, m in (spec.get("materials") or {}).items():
            world.materials[mid] = Material(
                id=mid,
                name=m.get("name", mid),
                phase=m.get("phase", "liquid"),
                density_g_ml=float(m.get("density_g_ml", 1.0)),
                molar_mass_g_mol=m.get("molar_mass_g_mol"),
                melting_point_c=m.get("melting_point_c"),
                concentration_mol_l=m.get("concentration_mol_l"),
                cas=m.get("cas"),
            )
        for vname, v in (spec.get("vessels") or {}).items():
            cap, unit = parse_amount(v.get("capacity", "20 mL"))
            if unit != "L":
                raise ValueError(f"vessel {vname}: capacity must be a volume")
            vessel = Vessel(
                name=vname,
                kind=v.get("kind", "vial"),
                capacity_l=cap,
                empty_mass_g=float(v.get("empty_mass_g", 0.0)),
            )
            if v.get("temperature_c") is not None:
                vessel.temperature_c = float(v["temperature_c"])
            world.vessels[vname] = vessel
            for mid, amount in (v.get("contents") or {}).items():
                world._ensure_material(mid)
                qty, unit = parse_amount(amount)
                grams = qty * 1000 * world.materials[mid].density_g_ml if unit == "L" else qty
                vessel.contents_g[mid] = vessel.contents_g.get(mid, 0.0) + grams
        return world

    # -- saving and restoring ----------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything the world holds, as plain JSON data: materials, every vessel (contents
        in grams, temperature, stirring) and the routes. A simulated bench saves it so that
        a run resumed after a crash finds the vials as they were, not an empty bench."""
        return {
            "materials": {mid: asdict(m) for mid, m in self.materials.items()},
            "vessels": {name: asdict(v) for name, v in self.vessels.items()},
            "routes": dict(self.routes),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> World:
        """The world `to_state` saved (the ledger starts empty: it is this process's)."""
        world = cls()
        for mid, m in (state.get("materials") or {}).items():
            world.materials[mid] = Material(**{**m, "id": mid})
        for name, v in (state.get("vessels") or {}).items():
            world.vessels[name] = Vessel(**{**v, "name": name,
                                            "contents_g": dict(v.get("contents_g") or {})})
        world.routes = {str(k): str(v) for k, v in (state.get("routes") or {}).items()}
        return world

    def _ensure_material(self, mid: str) -> Material:
        if mid not in self.materials:
            self.materials[mid] = Material(id=mid, name=mid)
        return self.materials[mid]

    def resolve(self, target: str) -> str:
        """A vessel name, following routes: '@sel_valve' is wherever that valve points."""
        seen = 0
        while target.startswith("@"):
            if target[1:] not in self.routes:
                raise WorldFault(f"{target}: the routing device points nowhere", kind="unknown",
                                 vessel=target)
            target = self.routes[target[1:]]
            seen += 1
            if seen > 10:
                raise WorldFault(f"{target}: routing loop", kind="unknown", vessel=target)
        return target

    def set_route(self, device: str, vessel: str) -> None:
        """A routing device (selector valve) now leads to `vessel` (itself maybe a route)."""
        self.routes[device] = vessel

    def vessel(self, name: str) -> Vessel:
        name = self.resolve(name)
        try:
            return self.vessels[name]
        except KeyError:
            raise WorldFault(f"no vessel {name!r}", kind="unknown", vessel=name) from None

    def add_vessel(self, name: str, *, kind: str = "syringe", capacity_l: float = 0.005) -> Vessel:
        """Internal vessels of instruments (a syringe barrel) are vessels too."""
        if name not in self.vessels:
            self.vessels[name] = Vessel(name=name, kind=kind, capacity_l=capacity_l)
        return self.vessels[name]

    # -- reading ------------------------------------------------------------------------
    def volume_l(self, name: str) -> float:
        v = self.vessel(name)
        return sum(
            g / (self.materials[m].density_g_ml * 1000)
            for m, g in v.contents_g.items()
            if self.materials[m].phase == "liquid"
        )

    def mass_g(self, name: str) -> float:
        """What a balance under the vessel reads (vessel + contents)."""
        v = self.vessel(name)
        return v.empty_mass_g + sum(v.contents_g.values())

    def frozen(self, name: str) -> str | None:
        """Why liquid cannot be drawn from a reservoir (None: it can): most of what it holds
        is a material below its melting point."""
        v = self.vessel(name)
        if v.kind != "reservoir" or not v.contents_g:
            return None
        total = sum(v.contents_g.values())
        for mid, g in v.contents_g.items():
            mp = self.materials[mid].melting_point_c if mid in self.materials else None
            if mp is not None and v.temperature_c < mp and g > 0.5 * total:
                return (f"{v.name} is frozen: {mid} melts at {mp:g} °C, the reservoir is at "
                        f"{v.temperature_c:g} °C")
        return None

    def react(self, dt_s: float) -> None:
        """Advance the chemistry that runs by itself in every vessel by dt_s seconds."""
        if dt_s <= 0:
            return
        from simulators import solgel

        for v in self.vessels.values():
            if v.contents_g:
                solgel.advance(self, v, dt_s)

    def total_mass_g(self) -> float:
        return sum(sum(v.contents_g.values()) for v in self.vessels.values())

    def composition(self, name: str) -> dict[str, float]:
        """Grams of each material in the vessel."""
        return dict(self.vessel(name).contents_g)

    # -- moving -------------------------------------------------------------------------
    def move_volume(self, source: str, destination: str, volume_l: float) -> dict[str, float]:
        """Move a volume of the (well-mixed) liquid from one vessel to another."""
        if volume_l <= 0:
            return {}
        source, destination = self.resolve(source), self.resolve(destination)
        src, dst = self.vessel(source), self.vessel(destination)
        frozen = self.frozen(source)
        if frozen:
            raise WorldFault(frozen, kind="frozen", vessel=source)
        available = self.volume_l(source)
        if volume_l > available * (1 + 1e-9) + 1e-12:
            raise WorldFault(
                f"{source} holds {available * 1e3:.4g} mL, cannot take {volume_l * 1e3:.4g} mL",
                kind="empty", vessel=source,
            )
        if self.volume_l(destination) + volume_l > dst.capacity_l * (1 + 1e-9):
            raise WorldFault(
                f"{destination} would overflow ({dst.capacity_l * 1e3:.4g} mL capacity)",
                kind="overflow", vessel=destination,
            )
        fraction = min(1.0, volume_l / available) if available > 0 else 0.0
        portion = {m: g * fraction for m, g in src.contents_g.items()}
        for m, g in portion.items():
            src.contents_g[m] -= g
            if src.contents_g[m] <= 1e-15:
                del src.contents_g[m]
            dst.contents_g[m] = dst.contents_g.get(m, 0.0) + g
        self.ledger.append(
            {"op": "move_volume", "from": source, "to": destination, "volume_l": volume_l,
             "grams": portion}
        )
        return portion

    def movable_l(self, source: str, destination: str, volume_l: float) -> float:
        """How much of `volume_l` can move before the source runs dry or the destination
        is full (0 when a route points nowhere): what a pump delivers before it stalls."""
        try:
            if self.frozen(source):
                return 0.0
            available = self.volume_l(source)
            room = self.vessel(destination).capacity_l - self.volume_l(destination)
        except WorldFault:
            return 0.0
        return max(0.0, min(volume_l, available, room))

    def add_solid(self, destination: str, material: str, mass_g: float) -> None:
        """Dose a solid from a dispenser head (the head is outside the world's vessels)."""
        destination = self.resolve(destination)
        dst = self.vessel(destination)
        self._ensure_material(material)
        dst.contents_g[material] = dst.contents_g.get(material, 0.0) + mass_g
        self.ledger.append({"op": "add_solid", "to": destination, "material": material,
                            "grams": mass_g})

    def set_contents(self, name: str, contents_g: dict[str, float]) -> None:
        """What an operator put in a vessel (a refilled reservoir, a counted bottle): its
        contents become `contents_g`, in the ledger as such (not a move: it comes from
        outside the bench)."""
        vessel = self.vessel(name)
        for mid in contents_g:
            self._ensure_material(mid)
        before = dict(vessel.contents_g)
        vessel.contents_g = {m: g for m, g in contents_g.items() if g > 0}
        self.ledger.append({"op": "set_contents", "vessel": name, "before": before,
                            "grams": dict(vessel.contents_g)})

    def set_temperature(self, name: str, temperature_c: float) -> None:
        self.vessel(name).temperature_c = temperature_c

    def set_stirring(self, name: str, rpm: float) -> None:
        self.vessel(name).stir_rpm = rpm
