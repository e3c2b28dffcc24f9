"""Actions of a powder dispenser (capability "dispenser"): dose a mass of solid into the
vessel below it and record the mass that landed. A dispenser that reports its tare before
dosing (`DosesAgainstTare`) lets a dose a crash interrupted be weighed on resume.

A dispenser with an autosampler (param `sampler = {"0" = "cell_vial", "1" = "a1", ...}`,
a driver with `move_sampler(position)`) doses into the vessel the recipe names with `to`:
the sampler presents that vessel first (the default is params.vessel), so a rack of vials
is dosed by one head. Every dose moves the sampler, because another run may have left it
elsewhere; the balance under the sampler weighs the vessel presented."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from labctl.actions.args import Arg, Q
from labctl.actions.base import (
    ActionContext,
    ActionSpec,
    ArgIssue,
    Args,
    DeviceView,
    Effect,
    Result,
)
from labctl.actions.display import fmt
from labctl.capabilities.dispenser import Dispenser
from labctl.errors import DeviceFault, MaterialInDoubt

log = logging.getLogger("labctl.actions")


@runtime_checkable
class DosesAgainstTare(Protocol):
    """A dispenser that hands the tare it took to `on_tared` before the dose starts, and
    weighs what landed since a tare (drivers that predate it are dosed without)."""

    async def dispense(self, mass_g: float, *, tolerance_pct: float = 2.0,
                       on_tared: Callable[[float], None] | None = None) -> float: ...

    async def landed_since(self, reference_g: float) -> float: ...


@runtime_checkable
class PresentsVessels(Protocol):
    """A dispenser whose autosampler puts the vessel at a position under the head."""

    async def move_sampler(self, position: int) -> None: ...


def sampler_map(dev: DeviceView) -> dict[str, int] | None:
    """vessel -> sampler position from params.sampler (None: no autosampler)."""
    raw = dev.param("sampler")
    if not isinstance(raw, dict):
        return None
    out: dict[str, int] = {}
    for pos, vessel in raw.items():
        try:
            out.setdefault(str(vessel), int(pos))
        except (TypeError, ValueError):
            continue
    return out


def _doses_against_tare(device: object) -> bool:
    """Does this (third-party) driver take `on_tared` and weigh what landed?"""
    if not isinstance(device, DosesAgainstTare):
        return False
    try:
        return "on_tared" in inspect.signature(device.dispense).parameters
    except (TypeError, ValueError):
        return False


class DispenserDispense(ActionSpec[Dispenser]):
    capability = "dispenser"
    name = "dispense"
    moves_material = True
    retry_safe = True  # what a failed dose delivered is weighed; a retry doses the rest
    summary = ("Dose a mass of solid into the vessel below (or the vessel `to` the "
               "autosampler presents); records the actual mass.")
    args = (Q("mass", "g", "mass_g", positive=True),
            Arg("tolerance", "quantity", key="tolerance_pct", unit="percent", required=False,
                default=2.0, minimum=0.0, exclusive_minimum=True),
            Arg("material", "string", required=False),
            Arg("to", "string", key="to", required=False,
                description="the vessel to dose into, presented by the autosampler "
                            "(params.sampler); default params.vessel"))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues = dev.over("mass", a["mass_g"], dev.limit("max_mass", "g"), "g",
                       "max_mass")
        head = dev.param("head_material")
        if a.get("material") and head and a["material"] != head:
            issues.append(("material", f"{dev.name} doses {head}, not {a['material']}"))
        a["material"] = a.get("material") or head
        a["vessel"] = a.get("to") or dev.param("vessel")
        a["sampler_position"] = None
        if not a["vessel"]:
            issues.append(("mass", f"{dev.name} has no target vessel (params.vessel)"))
            return issues
        positions = sampler_map(dev)
        if positions is not None:
            if a["vessel"] not in positions:
                issues.append(("to", f"{dev.name}'s sampler presents no vessel "
                                     f"{a['vessel']!r} (params.sampler: "
                                     f"{', '.join(positions) or 'none'})"))
            else:
                a["sampler_position"] = positions[a["vessel"]]
        elif a.get("to") and a["to"] != dev.param("vessel"):
            issues.append(("to", f"{dev.name} has no autosampler (params.sampler): it doses "
                                 f"only into {dev.param('vessel')}"))
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 30.0 + 10.0 * a["mass_g"] + (2.0 if a.get("sampler_position") is not None
                                            else 0.0)

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        if not a.get("vessel"):
            return []
        return [Effect("move", source=f"#{dev.name}", destination=a["vessel"],
                       amount=a["mass_g"], material=a.get("material"), solid=True, arg="mass")]

    def describe(self, dev: DeviceView, a: Args) -> str:
        return (f"Dose {fmt(a['mass_g'], 'g')} of {a.get('material')} into {a.get('vessel')} "
                f"with {dev.name} (±{a['tolerance_pct']:g} %).")

    async def run(self, device: Dispenser, a: Args, ctx: ActionContext) -> Result:
        # a retry: what the failed attempts delivered is in the vessel already
        if ctx.earlier("addition_in_doubt"):
            raise MaterialInDoubt(
                f"step {ctx.step_id}: an earlier attempt delivered powder that could not be "
                "weighed; not dosing again without an operator's decision (labctl resume)",
                device=ctx.device_name)
        before_g = sum(float(f.get("actual") or 0.0) for f in ctx.earlier("addition"))
        want_g = a["mass_g"] - before_g
        if before_g and want_g <= a["mass_g"] * a["tolerance_pct"] / 100.0:
            return {"requested_g": a["mass_g"], "actual_g": before_g}  # already there
        await _present(device, a)
        references: list[float] = []

        def reference(reference_g: float) -> None:
            # journaled (fsync'd) before the dose starts: a resume after a crash weighs
            # what landed against it (see `recover`)
            ctx.record("dose_reference", durable=True, material=a.get("material"),
                       vessel=a.get("vessel"), requested=want_g,
                       reference_g=reference_g, unit="g")
            references.append(reference_g)

        try:
            if _doses_against_tare(device):
                assert isinstance(device, DosesAgainstTare)
                actual = await device.dispense(want_g, tolerance_pct=a["tolerance_pct"],
                                               on_tared=reference)
            else:
                actual = await device.dispense(want_g, tolerance_pct=a["tolerance_pct"])
        except Exception:
            # a dose that failed half-way still put powder in the vial: record it, or a
            # retry (which tares again) or a resume would leave it out of the additions
            if references and isinstance(device, DosesAgainstTare):
                await self._record_landed(device, a, references[-1], ctx, "failed",
                                          requested_g=want_g)
            raise
        if before_g:
            ctx.record("addition", material=a.get("material"), vessel=a.get("vessel"),
                       requested=want_g, actual=actual, unit="g",
                       note=f"retry: the rest after {before_g:.4f} g delivered by the "
                            "failed attempt(s)")
        else:
            ctx.record("addition", material=a.get("material"), vessel=a.get("vessel"),
                       requested=want_g, actual=actual, unit="g")
        return {"requested_g": a["mass_g"], "actual_g": before_g + actual}

    async def _record_landed(self, device: DosesAgainstTare, a: Args, reference_g: float,
                             ctx: ActionContext, how: str,
                             requested_g: float | None = None) -> float | None:
        """Weigh what landed since the reference and record it as an addition (None and
        nothing recorded when the balance cannot be read now)."""
        try:
            landed = float(await device.landed_since(reference_g))
        except Exception as exc:  # the run goes on failing; a resume weighs it again
            log.warning("%s: what the %s dose delivered could not be weighed: %s",
                        ctx.device_name, how, exc)
            ctx.record("addition_in_doubt", durable=True, material=a.get("material"),
                       vessel=a.get("vessel"), reference_g=reference_g, error=str(exc))
            return None
        requested = a["mass_g"] if requested_g is None else requested_g
        ctx.record("addition", material=a.get("material"), vessel=a.get("vessel"),
                   requested=requested, actual=landed, unit="g", interrupted=True,
                   reference_g=reference_g,
                   note=f"dose {how}: what landed, weighed against the tare taken before it")
        return landed

    async def recover(self, device: Dispenser, a: Args, facts: list[dict[str, Any]],
                      ctx: ActionContext) -> Result | None:
        """A dose a crash interrupted (the step is in doubt; the operator accepted it or
        asked for it again): what landed is weighed against the reference journaled before
        the dose, and recorded as the addition it was. None when no reference was journaled
        (the dose had not started: nothing landed)."""
        ref = next((f for f in reversed(facts) if f.get("kind") == "dose_reference"), None)
        if ref is None or not isinstance(device, DosesAgainstTare):
            return None
        await _present(device, a)  # weigh the vessel the dose went to
        landed = float(await device.landed_since(float(ref["reference_g"])))
        ctx.record("addition", material=a.get("material"), vessel=a.get("vessel"),
                   requested=a["mass_g"], actual=landed, unit="g", interrupted=True,
                   reference_g=ref["reference_g"],
                   note="dose interrupted (crash or abort): what landed, weighed on resume "
                        "against the tare taken before the dose")
        return {"requested_g": a["mass_g"], "actual_g": landed, "interrupted": True}


async def _present(device: Dispenser, a: Args) -> None:
    """Have the autosampler present the step's vessel (no-op without a sampler)."""
    position = a.get("sampler_position")
    if position is None:
        return
    if not isinstance(device, PresentsVessels):
        raise DeviceFault(f"{device.name} cannot move an autosampler to present "
                          f"{a.get('vessel')} (position {position})", device=device.name)
    await device.move_sampler(int(position))


ACTIONS = (DispenserDispense,)
