"""Actions of a potentiostat (capability "potentiostat"): one action per technique of
labctl.techniques (OCV, CA, CP, LSV, CV, PEIS, GCPL). The resolved args are the fields of
the technique model; `run` builds it, streams the points to the step's data file and
records the measurement with the cell's measured temperature.

A multiplexed potentiostat (param `channels = {"0" = "cell_vial", "1" = "a1", ...}`, a
driver whose `measure` takes `channel`) reaches one cell per vessel: the optional `vessel`
argument names the vessel whose cell to measure (default params.vessel), validation turns
it into the channel, and the driver selects that channel in the script it sends."""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

from pydantic import ValidationError

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
from labctl.capabilities.potentiostat import Potentiostat
from labctl.errors import DeviceFault
from labctl.techniques import TECHNIQUES, GCPLPhase, Technique

_VESSEL = Arg("vessel", "string", required=False,
              description="the vessel whose cell to measure (a channel of params.channels); "
                          "default params.vessel")
_VS = Arg("vs", "enum", choices=("ref", "ocp"), required=False, default="ref",
          description="reference of the potentials: the reference electrode or open circuit")


class _Technique(ActionSpec[Potentiostat]):
    """A potentiostat technique: the resolved args are the fields of the technique model
    (labctl.techniques), so `run` builds it and streams the points to the data writer."""

    capability = "potentiostat"
    records_data = True
    #: resolved keys that are potentials / currents / frequencies (for the limit checks)
    potentials: ClassVar[tuple[str, ...]] = ()
    currents: ClassVar[tuple[str, ...]] = ()

    def technique_args(self, a: Args) -> Args:
        return {k: v for k, v in a.items() if k in self._model().model_fields}

    def _model(self) -> type[Technique]:
        return TECHNIQUES[self.name]

    def build(self, a: Args) -> Technique:
        return self._model()(**self.technique_args(a))

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues: list[ArgIssue] = []
        names = {a_.rkey: a_.name for a_ in self.args}
        lo, hi = dev.limit("min_potential", "V"), dev.limit("max_potential", "V")
        for key in self.potentials:
            v = a.get(key)
            if v is None:
                continue
            if hi is not None and v > hi:
                issues.append((names.get(key, key), f"{fmt(v, 'V')} exceeds {dev.name} "
                                                    f"max_potential {fmt(hi, 'V')}"))
            if lo is not None and v < lo:
                issues.append((names.get(key, key), f"{fmt(v, 'V')} is below {dev.name} "
                                                    f"min_potential {fmt(lo, 'V')}"))
        imax = dev.limit("max_current", "A")
        for key in self.currents:
            v = a.get(key)
            if v is not None and imax is not None and abs(v) > imax:
                issues.append((names.get(key, key), f"{fmt(abs(v), 'A')} exceeds {dev.name} "
                                                    f"max_current {fmt(imax, 'A')}"))
        if not issues:
            try:
                self.build(a)
            except ValidationError as exc:
                for e in exc.errors():
                    field = str(e["loc"][0]) if e["loc"] else ""
                    issues.append((names.get(field, field), str(e["msg"])))
        a["reference_electrode"] = dev.param("reference_electrode")
        return issues + _channel_of(dev, a)

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        default = dev.param("vessel")
        vessel = a.get("vessel") or default
        named = "vessel" if vessel != default else ""  # blame the arg the recipe gave
        return [Effect("needs_liquid", destination=str(vessel), arg=named)] if vessel else []

    def describe(self, dev: DeviceView, a: Args) -> str:
        shown = []
        for arg in self.args:
            v = a.get(arg.rkey)
            if v is None or arg.kind == "phases":
                continue
            text = fmt(v, arg.unit) if arg.unit and arg.unit != "percent" else str(v)
            shown.append(f"{arg.name} {text}")
        vs = ""
        if "vs" in a:
            vs = (f", potentials vs {a.get('reference_electrode') or 'reference'}"
                  if a["vs"] == "ref" else ", potentials vs open circuit")
        return f"{self.name.upper()} on {dev.name}: {', '.join(shown)}{vs}."

    async def run(self, device: Potentiostat, a: Args, ctx: ActionContext) -> Result:
        technique = self.build(a)
        reader = getattr(ctx, "cell_temperature", None)
        before = await reader(a.get("vessel")) if reader is not None else None
        writer = ctx.data_writer(technique)
        n = 0
        try:
            async for point in _measure(device, technique, a.get("channel")):
                writer.write(point)
                n += 1
        finally:
            writer.close()
        after = await reader(a.get("vessel")) if reader is not None else None
        cell = _cell_temperature(before, after)
        ctx.record("measurement", technique=self.name, iri=technique.iri, points=n,
                   vs=a.get("vs"), reference_electrode=a.get("reference_electrode"),
                   vessel=a.get("vessel"), cell_temperature_c=(cell or {}).get("measured_c"))
        out: dict[str, Any] = {"technique": self.name, "points": n}
        if cell is not None:
            ctx.record("temperature", **cell)
            out["cell_temperature"] = cell
        return out


def _channel_of(dev: DeviceView, a: Args) -> list[ArgIssue]:
    """Resolve the `vessel` argument to the channel whose cell sits in it (a["vessel"],
    a["channel"]; channel None: a single-channel instrument's own cell)."""
    default = dev.param("vessel")
    a["vessel"] = a.get("vessel") or default
    a["channel"] = None
    raw = dev.param("channels")
    if isinstance(raw, dict):
        channels: dict[str, int] = {}
        for ch, vessel in raw.items():
            try:
                channels.setdefault(str(vessel), int(ch))
            except (TypeError, ValueError):
                continue
        if a["vessel"] in channels:
            a["channel"] = channels[a["vessel"]]
            return []
        if a["vessel"] == default:
            a["channel"] = 0
            return []
        return [("vessel", f"{dev.name} has no channel to a cell in {a['vessel']!r} "
                           f"(params.channels: {', '.join(channels) or 'none'})")]
    if a["vessel"] != default:
        return [("vessel", f"{dev.name} has one cell, in {default!r}, not in "
                           f"{a['vessel']!r} (no params.channels)")]
    return []


def _measure(device: Potentiostat, technique: Technique, channel: int | None) -> Any:
    """The device's point stream on `channel` (None: its only cell)."""
    if channel is None:
        return device.measure(technique)
    try:
        takes = "channel" in inspect.signature(device.measure).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:
        return device.measure(technique, channel=channel)  # type: ignore[call-arg]
    if channel == 0:
        return device.measure(technique)
    raise DeviceFault(f"{device.name} cannot select channel {channel} (its driver measures "
                      "one cell)", device=device.name)


def _cell_temperature(before: dict[str, Any] | None,
                      after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cell's temperature over a measurement: the mean of the readings at its start
    and end, both kept, and the device and sensor they came from."""
    readings = [r for r in (before, after) if r is not None]
    if not readings:
        return None
    values = [float(r["measured_c"]) for r in readings]
    cell = {k: v for k, v in readings[0].items() if k != "measured_c"}
    cell.update(measured_c=sum(values) / len(values),
                measured_start_c=before["measured_c"] if before else None,
                measured_end_c=after["measured_c"] if after else None)
    cell["source"] = (str(cell.get("source", "measured"))
                      + " at the start and end of the measurement")
    return cell


class Ocv(_Technique):
    name = "ocv"
    summary = "Open-circuit potential over time."
    args = (Q("duration", "s", "duration_s", positive=True),
            Q("sample_interval", "s", "sample_interval_s", positive=True))

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return a["duration_s"]


class Ca(_Technique):
    name = "ca"
    summary = "Chronoamperometry: hold a potential, record the current."
    args = (Q("potential", "V", "potential_v"), _VS,
            Q("duration", "s", "duration_s", positive=True),
            Q("sample_interval", "s", "sample_interval_s", positive=True),
            Q("current_range", "A", "current_range_a", required=False, positive=True))
    potentials = ("potential_v",)
    currents = ("current_range_a",)

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return a["duration_s"]


class Cp(_Technique):
    name = "cp"
    summary = "Chronopotentiometry: hold a current, record the potential."
    args = (Q("current", "A", "current_a"),
            Q("duration", "s", "duration_s", positive=True),
            Q("sample_interval", "s", "sample_interval_s", positive=True),
            Q("potential_min", "V", "potential_min_v", required=False),
            Q("potential_max", "V", "potential_max_v", required=False))
    potentials = ("potential_min_v", "potential_max_v")
    currents = ("current_a",)

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return a["duration_s"]


class Lsv(_Technique):
    name = "lsv"
    summary = "Linear sweep voltammetry."
    args = (Q("E_begin", "V", "E_begin_v"), Q("E_end", "V", "E_end_v"),
            Q("E_step", "V", "E_step_v", positive=True),
            Q("scan_rate", "V/s", "scan_rate_v_s", positive=True), _VS,
            Q("current_range", "A", "current_range_a", required=False, positive=True))
    potentials = ("E_begin_v", "E_end_v")
    currents = ("current_range_a",)

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return abs(a["E_end_v"] - a["E_begin_v"]) / a["scan_rate_v_s"]


class Cv(_Technique):
    name = "cv"
    summary = "Cyclic voltammetry: begin → vertex 1 → vertex 2 → begin, n scans."
    args = (Q("E_begin", "V", "E_begin_v"), Q("E_vertex1", "V", "E_vertex1_v"),
            Q("E_vertex2", "V", "E_vertex2_v"), Q("E_step", "V", "E_step_v", positive=True),
            Q("scan_rate", "V/s", "scan_rate_v_s", positive=True),
            Arg("n_scans", "integer", required=False, default=1, minimum=1), _VS,
            Q("current_range", "A", "current_range_a", required=False, positive=True))
    potentials = ("E_begin_v", "E_vertex1_v", "E_vertex2_v")
    currents = ("current_range_a",)

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        path = (abs(a["E_vertex1_v"] - a["E_begin_v"]) + abs(a["E_vertex2_v"] - a["E_vertex1_v"])
                + abs(a["E_begin_v"] - a["E_vertex2_v"]))
        return a["n_scans"] * path / a["scan_rate_v_s"]


class Peis(_Technique):
    name = "peis"
    summary = ("Potentiostatic EIS over a log-spaced grid of n_frequencies points from f_start "
               "to f_end (or points_per_decade).")
    args = (Q("E_dc", "V", "E_dc_v", required=False, default=0.0),
            Arg("vs", "enum", choices=("ref", "ocp"), required=False, default="ocp"),
            Q("amplitude", "V", "amplitude_v", positive=True,
              description="AC amplitude, V rms"),
            Q("f_start", "Hz", "f_start_hz", positive=True),
            Q("f_end", "Hz", "f_end_hz", positive=True),
            Arg("n_frequencies", "integer", required=False, minimum=1),
            Arg("points_per_decade", "number", required=False, minimum=0.0,
                exclusive_minimum=True))
    potentials = ("E_dc_v",)

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        ppd = a.get("points_per_decade")
        if (a.get("n_frequencies") is None) == (ppd is None):
            return [("n_frequencies", "give exactly one of n_frequencies and points_per_decade")]
        if ppd is not None:
            decades = abs(math.log10(a["f_start_hz"] / a["f_end_hz"]))
            a["n_frequencies"] = max(1, round(decades * ppd) + 1)
        issues: list[ArgIssue] = []
        lo, hi = dev.limit("min_frequency", "Hz"), dev.limit("max_frequency", "Hz")
        for key in ("f_start", "f_end"):
            f = a[f"{key}_hz"]
            if hi is not None and f > hi:
                issues.append((key, f"{fmt(f, 'Hz')} exceeds {dev.name} max_frequency "
                                    f"{fmt(hi, 'Hz')}"))
            if lo is not None and f < lo:
                issues.append((key, f"{fmt(f, 'Hz')} is below {dev.name} min_frequency "
                                    f"{fmt(lo, 'Hz')}"))
        if a["n_frequencies"] > 1000:
            issues.append(("n_frequencies", f"{a['n_frequencies']} frequencies is more than "
                                            "1000"))
        return issues + super().check(dev, a)

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        n = int(a.get("n_frequencies") or 1)
        f0, f1 = a["f_start_hz"], a["f_end_hz"]
        total = 0.0
        for i in range(min(n, 1000)):
            f = f0 * (f1 / f0) ** (i / (n - 1)) if n > 1 else f0
            total += max(3.0 / f, 0.1)  # a few periods, at least the settling overhead
        return total


class Gcpl(_Technique):
    name = "gcpl"
    summary = ("Galvanostatic cycling: phases (mode cc|rest, current or c_rate, cut-offs, "
               "max_time, sample_interval) run in order, n_cycles times.")
    args = (Arg("phases", "phases"), Arg("n_cycles", "integer", minimum=1),
            Q("nominal_capacity", "A*h", "nominal_capacity_ah", required=False, positive=True))
    PHASE_ARGS: ClassVar[tuple[Arg, ...]] = (
        Arg("mode", "enum", choices=("cc", "rest")),
        Q("current", "A", "current_a", required=False),
        Q("c_rate", "1/h", "c_rate_h", required=False),
        Q("upper_cutoff", "V", "upper_cutoff_v", required=False),
        Q("lower_cutoff", "V", "lower_cutoff_v", required=False),
        Q("max_time", "s", "max_time_s", positive=True),
        Q("sample_interval", "s", "sample_interval_s", positive=True),
    )

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        issues: list[ArgIssue] = []
        phases: list[dict[str, Any]] = []
        known = {p.name: p for p in self.PHASE_ARGS}
        lo, hi = dev.limit("min_potential", "V"), dev.limit("max_potential", "V")
        imax = dev.limit("max_current", "A")
        for i, raw in enumerate(a["phases"]):
            where = f"phases[{i}]"
            if not isinstance(raw, dict):
                issues.append((where, "a phase is an object {mode, current|c_rate, ...}"))
                continue
            ph: dict[str, Any] = {}
            for name in raw:
                if name not in known:
                    issues.append((f"{where}.{name}", f"unknown phase field {name!r} "
                                                      f"(fields: {', '.join(known)})"))
            for p in self.PHASE_ARGS:
                if raw.get(p.name) is not None:
                    try:
                        ph[p.rkey] = p.coerce(raw[p.name])
                    except ValueError as exc:
                        issues.append((f"{where}.{p.name}", str(exc)))
                elif p.required:
                    issues.append((f"{where}.{p.name}", f"missing required field {p.name!r}"))
            if "c_rate_h" in ph:
                if "current_a" in ph:
                    issues.append((f"{where}.c_rate", "give current or c_rate, not both"))
                elif a.get("nominal_capacity_ah") is None:
                    issues.append((f"{where}.c_rate", "a C-rate needs nominal_capacity"))
                else:
                    ph["current_a"] = ph["c_rate_h"] * a["nominal_capacity_ah"]
            ph.pop("c_rate_h", None)
            if ph.get("mode") == "cc" and "current_a" not in ph:
                issues.append((f"{where}.current", "a cc phase needs current or c_rate"))
            cur = ph.get("current_a")
            if cur is not None and imax is not None and abs(cur) > imax:
                issues.append((f"{where}.current", f"{fmt(abs(cur), 'A')} exceeds {dev.name} "
                                                   f"max_current {fmt(imax, 'A')}"))
            for key in ("upper_cutoff", "lower_cutoff"):
                v = ph.get(f"{key}_v")
                if v is not None and ((hi is not None and v > hi) or (lo is not None and v < lo)):
                    issues.append((f"{where}.{key}", f"{fmt(v, 'V')} is outside {dev.name} "
                                                     f"potential limits"))
            phases.append(ph)
        a["phases"] = phases
        if not issues:
            for i, ph in enumerate(phases):
                try:
                    GCPLPhase(**ph)
                except ValidationError as exc:
                    for e in exc.errors():
                        issues.append((f"phases[{i}]", str(e["msg"])))
        if not issues:
            issues += super().check(dev, a)
        else:
            issues += _channel_of(dev, a)
        a["reference_electrode"] = dev.param("reference_electrode")
        return issues

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        per_cycle = sum(float(p.get("max_time_s", 0.0)) for p in a.get("phases", [])
                        if isinstance(p, dict))
        return a["n_cycles"] * per_cycle

    def describe(self, dev: DeviceView, a: Args) -> str:
        parts = []
        for p in a.get("phases", []):
            if not isinstance(p, dict):
                continue
            if p.get("mode") == "rest":
                parts.append(f"rest {fmt(p.get('max_time_s', 0.0), 's')}")
            else:
                cut = p.get("upper_cutoff_v") if p.get("current_a", 0) > 0 else p.get(
                    "lower_cutoff_v")
                parts.append(f"cc {fmt(p.get('current_a', 0.0), 'A')}"
                             + (f" to {fmt(cut, 'V')}" if cut is not None else ""))
        return f"GCPL on {dev.name}: {a['n_cycles']} cycles of ({'; '.join(parts)})."


ACTIONS = (Ocv, Ca, Cp, Lsv, Cv, Peis, Gcpl)
for _action in ACTIONS:  # every technique can name the vessel whose cell it measures
    _action.args = (*_action.args, _VESSEL)
