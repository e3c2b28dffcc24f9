"""The small typed base every action is built on.

An `ActionSpec[D]` is one action of one capability, run on a device of type `D` (the
capability's interface, labctl.capabilities). Validation (labctl.recipe) calls `resolve`
→ `check` → `estimate_s` / `effects` / `describe`, all pure, on a `DeviceView` (the
config, no I/O). The executor calls `run(device, args, ctx)` with the resolved args of the
plan (SI floats under suffixed keys: `volume_l`, `flow_l_s`, `temperature_c`...) and an
`ActionContext` for what the run records.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from labctl.actions.args import Arg, Schema
from labctl.actions.display import fmt
from labctl.clock import Clock
from labctl.config import BenchConfig, DeviceConfig
from labctl.device import Device
from labctl.units import quantity

#: the resolved arguments of one step: SI values under their keys, plus what `check` derived
Args = dict[str, Any]
#: what `run` returns (JSON data: the step's result)
Result = dict[str, Any]
#: (argument name, message): one problem with one argument
ArgIssue = tuple[str, str]

D = TypeVar("D", bound=Device, contravariant=True)


# ---------------------------------------------------------------- the executor's side


class DataWriter(Protocol):
    """Where a technique's points go (a labctl.bdf writer)."""

    def write(self, point: Any) -> None: ...

    def close(self) -> None: ...


class ActionContext(Protocol):
    """What the executor hands to `ActionSpec.run` for one step."""

    step_id: str
    clock: Clock
    device_name: str | None

    def data_writer(self, technique: Any) -> DataWriter:
        """A writer for the measurement data of this step (technique: labctl.techniques or
        a plugin's own technique model)."""
        ...

    def record(self, kind: str, *, durable: bool = False, **fields: Any) -> None:
        """A provenance fact: "addition" (material, vessel, requested, actual, unit),
        "mixing" (speed_rpm, duration_s, temperature_c), "heating", "measurement",
        "weighing", "dose_reference". `durable`: fsync'd before this returns (a fact a
        resume after a crash depends on)."""
        ...

    async def checkpoint(self) -> None:
        """Return at once when running, wait while paused, raise when aborted."""
        ...

    def earlier(self, kind: str) -> list[dict[str, Any]]:
        """Facts of `kind` this step recorded in its earlier attempts of this session."""
        ...

    async def resolve_route(self, target: str | None) -> dict[str, Any]:
        """The vessel `@device` leads to now: {"vessel", "route", ["route_error"]}."""
        ...

    def shared_with(self) -> list[str]:
        """Other runs holding this step's device now: a vial block stirred for several
        runs is stopped by the last of them, not under the others' samples."""
        ...

    async def cell_temperature(self, vessel: str | None) -> dict[str, Any] | None:
        """A vessel's measured temperature and its source, None when nothing reads it."""
        ...


# ---------------------------------------------------------------- what validation knows


@dataclass(frozen=True)
class Effect:
    """What a step does to the material on the bench, in the order it happens.

    kind "move": `amount` (L for liquids; g with `material` for solids) from `source` to
    `destination`. Names are vessels, `@device` (wherever that routing device leads now) or
    `#device` (a device's own container: a syringe barrel, a dispenser head).
    `expect_source` / `expect_destination` name the vessel a route must lead to.
    kind "route": routing `device` (a valve, a pump's port) now leads to `target` (None =
    unknown or unconnected). kind "needs_liquid": `destination` must hold liquid now.
    kind "init": `device` is initialised (homed); "needs_init": it must be by now.
    `arg` names the recipe argument to blame."""

    kind: Literal["move", "route", "needs_liquid", "init", "needs_init"]
    source: str | None = None
    destination: str | None = None
    amount: float = 0.0
    material: str | None = None
    device: str | None = None
    target: str | None = None
    expect_source: str | None = None
    expect_destination: str | None = None
    arg: str = ""
    #: a solid dispensed from a device head rather than a liquid volume
    solid: bool = False

    def to_dict(self) -> dict[str, object]:
        """The fields that say something (for the plan and the record)."""
        out: dict[str, object] = {}
        for f in _EFFECT_FIELDS:
            value = getattr(self, f)
            if value not in (None, "", False):
                out[f] = value
        return out


_EFFECT_FIELDS = tuple(f.name for f in fields(Effect))


@dataclass(frozen=True)
class DeviceView:
    """One configured device as validation sees it: config only, no I/O."""

    name: str
    capability: str
    config: DeviceConfig
    bench: BenchConfig

    def param(self, key: str, default: Any = None) -> Any:
        return self.config.params.get(key, default)

    def param_q(self, key: str, unit: str) -> float | None:
        return _converted(self.config.params.get(key), unit)

    def limit(self, key: str, unit: str) -> float | None:
        return _converted(self.config.limits.get(key), unit)

    @property
    def port_map(self) -> dict[str, str]:
        pm = self.config.params.get("port_map") or {}
        return {str(k): str(v) for k, v in pm.items()} if isinstance(pm, dict) else {}

    def vessel_exists(self, name: str) -> bool:
        return name in self.bench.vessels

    def over(self, arg: str, value: float, limit: float | None, unit: str,
             limit_name: str) -> list[ArgIssue]:
        """A problem when `value` exceeds this device's `limit` (None: no limit)."""
        if limit is not None and value > limit * (1 + 1e-9):
            return [(arg, f"{fmt(value, unit)} exceeds {self.name} {limit_name} "
                          f"{fmt(limit, unit)}")]
        return []


def temperature_checks(dev: DeviceView, arg: str, t: float | None) -> list[ArgIssue]:
    """A temperature against the device's `max_temperature` / `min_temperature` limits."""
    if t is None:
        return []
    issues = dev.over(arg, t, dev.limit("max_temperature", "degC"), "degC", "max_temperature")
    low = dev.limit("min_temperature", "degC")
    if low is not None and t < low:
        issues.append((arg, f"{t:g} °C is below {dev.name} min_temperature {low:g} °C"))
    return issues


def _converted(raw: object, unit: str) -> float | None:
    """A config value ('5 mL', 25) in `unit`, None when absent or not convertible."""
    if raw is None or isinstance(raw, (bool, dict, list)):
        return None
    if isinstance(raw, str):
        return _converted_cached(raw, unit)
    if isinstance(raw, (int, float)):
        return _converted_cached(float(raw), unit)
    return None


@lru_cache(maxsize=1024)
def _converted_cached(raw: str | float, unit: str) -> float | None:
    try:
        return float(quantity(raw).to(unit).magnitude)
    except Exception:
        return None


class ActionSpec(Generic[D]):
    """Base of every action. Subclasses set the class attributes and override what they
    need; every method but `run` (and `recover`) is pure (no I/O) and must not raise on
    odd input. `D` is the capability interface `run` needs of its device."""

    capability: ClassVar[str] = ""
    name: ClassVar[str] = ""
    args: ClassVar[tuple[Arg, ...]] = ()
    moves_material: ClassVar[bool] = False
    #: a mover that may be retried: it measures what a failed attempt delivered and a
    #: retry adds only the rest (the executor passes the earlier attempts' facts)
    retry_safe: ClassVar[bool] = False
    #: `run` writes a data file (ctx.data_writer) that analyses may read
    records_data: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    # -- validation ---------------------------------------------------------------------
    def resolve(self, raw: dict[str, object]) -> tuple[Args, list[ArgIssue]]:
        """Typed SI values under their keys, defaults applied; issues for unknown, missing
        or ill-typed arguments."""
        issues: list[ArgIssue] = []
        out: Args = {}
        known = {a.name: a for a in self.args}
        for name in raw:
            if name not in known:
                choices = ", ".join(known) or "none"
                issues.append((name, f"unknown argument {name!r} for {self.capability}."
                                     f"{self.name} (arguments: {choices})"))
        for a in self.args:
            if a.name in raw and raw[a.name] is not None:
                try:
                    out[a.rkey] = a.coerce(raw[a.name])
                except ValueError as exc:
                    issues.append((a.name, str(exc)))
            elif a.required:
                issues.append((a.name, f"missing required argument {a.name!r}"
                                       + (f" ({a.dimension})" if a.unit else "")))
            else:
                out[a.rkey] = a.default
        return out, issues

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        """Limits of the device; may add derived keys to `a` (a port, a material)."""
        return []

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 1.0

    def effects(self, dev: DeviceView, a: Args) -> list[Effect]:
        return []

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"{dev.name}: {self.name}"

    # -- execution ----------------------------------------------------------------------
    async def run(self, device: D, a: Args, ctx: ActionContext) -> Result:
        raise NotImplementedError

    # -- the catalogue ------------------------------------------------------------------
    def args_schema(self) -> Schema:
        props = {a.name: {**a.json_schema(), **({"description": a.description}
                                                if a.description else {})}
                 for a in self.args}
        return {"type": "object", "properties": props, "additionalProperties": False,
                "required": [a.name for a in self.args if a.required]}

    def describe_spec(self) -> dict[str, object]:
        """The action as plain data (the public catalogue, generated docs)."""
        return {"capability": self.capability, "name": self.name, "summary": self.summary,
                "moves_material": self.moves_material, "records_data": self.records_data,
                "args": [a.describe() for a in self.args]}
