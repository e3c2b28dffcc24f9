"""The `spectrometer.scan` action: record the absorbance spectrum of the sample in the
device's vessel. Built on labctl's action base like the built-in actions, registered by
this plugin's `labctl.actions` entry point."""

from __future__ import annotations

from dataclasses import dataclass

from labctl.actions import (
    ActionContext,
    ActionSpec,
    ArgIssue,
    Args,
    DeviceView,
    Effect,
    Q,
    Result,
)
from labctl_uvvis.capability import Spectrometer

WAVELENGTH = "Wavelength / nm"
ABSORBANCE = "Absorbance / 1"
#: the instrument's own range (nm), when the config sets no narrower limits
RANGE_NM = (190.0, 1100.0)


@dataclass(frozen=True)
class UvVisScan:
    """The technique, as the data file and the record name it (labctl.bdf writes the
    `columns` it states)."""

    start_nm: float
    end_nm: float
    step_nm: float
    technique: str = "uvvis"
    iri: str = ""
    columns: tuple[str, ...] = (WAVELENGTH, ABSORBANCE)


class Scan(ActionSpec[Spectrometer]):
    capability = "spectrometer"
    name = "scan"
    records_data = True
    summary = "Record the absorbance spectrum of the sample from start to end every step."
    args = (Q("start", "nm", "start_nm", positive=True, what="wavelength"),
            Q("end", "nm", "end_nm", positive=True, what="wavelength"),
            Q("step", "nm", "step_nm", required=False, default=5.0, positive=True,
              what="wavelength step"))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        lo = max(RANGE_NM[0], dev.limit("min_wavelength", "nm") or RANGE_NM[0])
        hi = min(RANGE_NM[1], dev.limit("max_wavelength", "nm") or RANGE_NM[1])
        issues: list[ArgIssue] = []
        for arg in ("start", "end"):
            v = a[f"{arg}_nm"]
            if not lo <= v <= hi:
                issues.append((arg, f"{v:g} nm is outside {dev.name}'s range "
                                    f"{lo:g}–{hi:g} nm"))
        if a["end_nm"] <= a["start_nm"]:
            issues.append(("end", f"end {a['end_nm']:g} nm is not above start "
                                  f"{a['start_nm']:g} nm"))
        if not 1.0 <= a["step_nm"] <= 50.0:
            issues.append(("step", f"step {a['step_nm']:g} nm is outside 1–50 nm"))
        a["vessel"] = dev.param("vessel")
        if not a["vessel"]:
            issues.append(("start", f"{dev.name} has no sample vessel (params.vessel)"))
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        points = (a["end_nm"] - a["start_nm"]) / a["step_nm"] + 1
        return 5.0 + 0.01 * points  # lamp warm-up, then 10 ms a point

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        vessel = dev.param("vessel")
        return [Effect("needs_liquid", destination=str(vessel))] if vessel else []

    def describe(self, dev: DeviceView, a: Args) -> str:
        return (f"Scan the absorbance of {a.get('vessel')} on {dev.name} from "
                f"{a['start_nm']:g} to {a['end_nm']:g} nm every {a['step_nm']:g} nm.")

    async def run(self, device: Spectrometer, a: Args, ctx: ActionContext) -> Result:
        technique = UvVisScan(a["start_nm"], a["end_nm"], a["step_nm"])
        await device.lamp(True)
        points = await device.scan(a["start_nm"], a["end_nm"], a["step_nm"])
        writer = ctx.data_writer(technique)
        try:
            for p in points:
                writer.write({"time_s": p.time_s, WAVELENGTH: p.wavelength_nm,
                              ABSORBANCE: p.absorbance})
        finally:
            writer.close()
        peak = max(points, key=lambda p: p.absorbance)
        ctx.record("measurement", technique=technique.technique, points=len(points),
                   vessel=a.get("vessel"), start_nm=a["start_nm"], end_nm=a["end_nm"],
                   step_nm=a["step_nm"])
        return {"technique": technique.technique, "points": len(points),
                "max_absorbance": peak.absorbance, "at_nm": peak.wavelength_nm}


ACTIONS = (Scan,)
