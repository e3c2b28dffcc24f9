"""The action catalogue: every action a recipe step may ask of a capability.

One `ActionSpec` per (capability, action). A spec knows its typed arguments (quantities with
their canonical SI unit), how to check them against the bench config before anything moves
(syringe volume, flows, speeds, temperatures, potentials, ports and vessels), how long it
should take, which material it moves where (for the overflow and availability checks over a
whole recipe), and how to run it on a connected device through the capability methods.

Validation (labctl.recipe) calls `resolve` → `check` → `estimate_s` / `effects` /
`describe`, all pure. The executor calls `run(device, args, ctx)` with the resolved args of
the plan (SI floats under suffixed keys: `volume_l`, `flow_l_s`, `temperature_c`...).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, ClassVar, Literal, Protocol

import pint
from pydantic import ValidationError

from labctl.clock import Clock
from labctl.config import BenchConfig, DeviceConfig
from labctl.errors import DeviceFault
from labctl.units import UnitError, quantity, to, ureg
from labctl.units import fmt as _fmt

_LITRE = re.compile(r"(?<![A-Za-z])([mµunk]?)l(?![A-Za-z])")


def litres_upper(text: str) -> str:
    """'5 ml/min' -> '5 mL/min': the litre symbol the way chemists write it."""
    return _LITRE.sub(r"\1L", text)


def fmt(value: float, unit: str, digits: int = 4) -> str:
    """A value for people, in the unit recipes use for it: flows in mL/min, speeds in rpm,
    temperatures in °C, durations in s/min/h, otherwise compacted ('30 mL', '5 mg')."""
    if unit == "L/s":
        return f"{value * 6e4:.{digits}g} mL/min"
    if unit in ("1/h", "A*h"):  # '0.5 C', '1 mAh', not '500 1/kh', '1 h·mA'
        from labctl.display import quantity as display_quantity

        return display_quantity(value, unit, digits)
    if unit == "rpm":
        return f"{value:.{digits}g} rpm"
    if unit == "degC":
        return f"{value:.{digits}g} °C"
    if unit == "s":
        if abs(value) < 120:
            return f"{value:.{digits}g} s"
        if abs(value) < 7200:
            return f"{value / 60:.{digits}g} min"
        return f"{value / 3600:.{digits}g} h"
    scales = _SCALES.get(unit)
    if scales is not None and math.isfinite(value):
        if value == 0:
            return f"0 {next(sym for f, sym in scales if f == 1.0)}"
        for factor, symbol in scales:
            if abs(value) >= factor or factor == scales[-1][0]:
                return f"{value / factor:.{digits}g} {symbol}"
    try:
        return litres_upper(_fmt(value, unit, digits))
    except Exception:  # odd values (inf) are shown plainly
        return f"{value:.{digits}g} {unit}"


#: prefixes for the common units, cheaper than pint's to_compact (plans have many steps)
_SCALES: dict[str, tuple[tuple[float, str], ...]] = {
    "L": ((1.0, "L"), (1e-3, "mL"), (1e-6, "µL"), (1e-9, "nL")),
    "g": ((1e3, "kg"), (1.0, "g"), (1e-3, "mg"), (1e-6, "µg")),
    "V": ((1.0, "V"), (1e-3, "mV"), (1e-6, "µV")),
    "A": ((1.0, "A"), (1e-3, "mA"), (1e-6, "µA"), (1e-9, "nA"), (1e-12, "pA")),
    "Hz": ((1e6, "MHz"), (1e3, "kHz"), (1.0, "Hz"), (1e-3, "mHz"), (1e-6, "µHz")),
}

# ---------------------------------------------------------------- the executor's side


class DataWriter(Protocol):
    """Where a technique's points go (a labctl.bdf writer)."""

    def write(self, point: Any) -> None: ...

    def close(self) -> None: ...


class ActionContext(Protocol):
    """What the executor hands to `ActionSpec.run` for one step."""

    step_id: str
    clock: Clock
    device_name: str

    def data_writer(self, technique: Any) -> DataWriter:
        """A writer for the measurement data of this step (technique: labctl.techniques)."""
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

    async def resolve_route(self, target: str | None) -> dict[str, Any]:
        """The vessel `@device` leads to now: {"vessel", "route", ["route_error"]}."""
        ...

    async def cell_temperature(self, vessel: str | None) -> dict[str, Any] | None:
        """A vessel's measured temperature and its source, None when nothing reads it."""
        ...


log = logging.getLogger("labctl.actions")


# ---------------------------------------------------------------- capabilities of drivers

#: capability of each built-in driver, so validation needs no driver import.
BUILTIN_CAPABILITIES: dict[str, str] = {
    "tricontinent-c3000": "syringe_pump",
    "newera-ne1000": "pump",
    "vici-valve": "valve",
    "ika-hotplate": "stirrer",
    "mettler-balance": "balance",
    "quantos-dispenser": "dispenser",
    "modbus-pump": "pump",
    "omega-cn7500": "temperature_controller",
    "palmsens-emstat": "potentiostat",
}


def _accepts(fn: Any, keyword: str) -> bool:
    """Does a (driver's) method take this keyword? Third-party drivers may predate it."""
    try:
        return keyword in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def driver_capabilities(driver: str) -> tuple[str, ...]:
    """Capabilities of a driver: the built-in table, else the registered class's own."""
    if driver in BUILTIN_CAPABILITIES:
        return (BUILTIN_CAPABILITIES[driver],)
    try:
        from labctl.registry import driver_class

        return tuple(driver_class(driver).capabilities)
    except Exception:  # a third-party driver that cannot load offers nothing
        return ()


# ---------------------------------------------------------------- arguments

#: human names of the dimensions of canonical units, for error messages
DIMENSION_NAMES: dict[str, str] = {
    "L": "volume", "L/s": "flow", "s": "duration", "g": "mass", "degC": "temperature",
    "rpm": "speed", "V": "potential", "A": "current", "Hz": "frequency", "V/s": "scan rate",
    "1/h": "C-rate", "A*h": "capacity", "percent": "percentage",
}

ArgKind = Literal["quantity", "number", "integer", "boolean", "string", "enum", "target",
                  "position", "phases"]


@dataclass(frozen=True)
class Arg:
    """One typed argument. `key` is its name in the resolved args (SI suffix)."""

    name: str
    kind: ArgKind
    key: str = ""
    unit: str | None = None
    required: bool = True
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # in `unit`, or plain for numbers
    exclusive_minimum: bool = False
    description: str = ""

    @property
    def rkey(self) -> str:
        return self.key or self.name

    @property
    def dimension(self) -> str:
        return DIMENSION_NAMES.get(self.unit or "", self.unit or "")

    def json_schema(self) -> dict[str, Any]:
        """A JSON Schema fragment for editors and AI servers."""
        expr = {"type": "string", "pattern": r"^.*\$\{.*\}.*$"}
        if self.kind == "quantity":
            example = {"L": "2.5 mL", "L/s": "10 mL/min", "s": "10 min", "g": "0.5 g",
                       "degC": "25 degC", "rpm": "500 rpm", "V": "0.1 V", "A": "1 mA",
                       "Hz": "100 kHz", "V/s": "50 mV/s", "1/h": "0.1 /h",
                       "A*h": "2 mA*h"}.get(self.unit or "", "")
            s: dict[str, Any] = {"type": "string",
                                 "description": f"{self.dimension} with units, e.g. '{example}'"}
            if self.unit == "percent":
                s = {"anyOf": [{"type": "number"}, {"type": "string"}]}
            return s
        if self.kind == "number":
            return {"anyOf": [{"type": "number"}, expr]}
        if self.kind == "integer":
            return {"anyOf": [{"type": "integer"}, expr]}
        if self.kind == "boolean":
            return {"anyOf": [{"type": "boolean"}, expr]}
        if self.kind == "enum":
            return {"anyOf": [{"enum": list(self.choices)}, expr]}
        if self.kind == "position":
            return {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]}
        if self.kind == "phases":
            return {"type": "array", "items": {"type": "object"}, "minItems": 1}
        return {"type": "string"}

    def coerce(self, value: Any) -> Any:
        """The SI value of a raw recipe value (string, number or pint Quantity);
        raises ValueError with a message for the recipe author."""
        if self.kind == "quantity":
            return _coerce_quantity(value, self.unit or "", self.dimension, self.minimum,
                                    self.exclusive_minimum)
        if self.kind == "number":
            x = _coerce_number(value)
            if self.minimum is not None and (x <= self.minimum if self.exclusive_minimum
                                             else x < self.minimum):
                raise ValueError(f"{x:g} is below the minimum {self.minimum:g}")
            return x
        if self.kind == "integer":
            x = _coerce_number(value)
            if x != int(x):
                raise ValueError(f"expected a whole number, got {x:g}")
            if self.minimum is not None and x < self.minimum:
                raise ValueError(f"{int(x)} is below the minimum {self.minimum:g}")
            return int(x)
        if self.kind == "boolean":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise ValueError(f"expected true or false, got {_show(value)}")
        if self.kind == "enum":
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}, got {_show(value)}")
            return value
        if self.kind in ("string", "target"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"expected a name, got {_show(value)}")
            return value
        if self.kind == "position":
            if isinstance(value, bool):
                raise ValueError(f"expected a position number or a vessel, got {_show(value)}")
            if isinstance(value, (int, float)) and float(value).is_integer():
                return int(value)
            if isinstance(value, pint.Quantity) and value.dimensionless:
                m = float(value.to("dimensionless").magnitude)
                if m.is_integer():
                    return int(m)
            if isinstance(value, str) and value:
                return int(value) if value.isdigit() else value
            raise ValueError(f"expected a position number or a vessel, got {_show(value)}")
        if self.kind == "phases":
            if not isinstance(value, list) or not value:
                raise ValueError("expected a non-empty list of phases")
            return value
        raise ValueError(f"unsupported argument kind {self.kind}")  # pragma: no cover


def _show(value: Any) -> str:
    if isinstance(value, pint.Quantity):
        return format_quantity(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_quantity(q: pint.Quantity) -> str:
    """A quantity as a string pint parses back ('2.5 mL', '25 °C')."""
    mag = q.magnitude
    if isinstance(mag, float) and mag.is_integer() and abs(mag) < 1e15:
        mag_s = str(int(mag))
    else:
        mag_s = f"{float(mag):.12g}"
    units = litres_upper(f"{q.units:~}")
    return f"{mag_s} {units}".strip() if units else mag_s


def _coerce_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {_show(value)}")
    if isinstance(value, pint.Quantity):
        if not value.dimensionless:
            raise ValueError(f"expected a plain number, got {_show(value)}")
        x = float(value.to("dimensionless").magnitude)
    elif isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {_show(value)}") from None
    else:
        raise ValueError(f"expected a number, got {_show(value)}")
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {_show(value)}")
    return x


def _coerce_quantity(value: Any, unit: str, dimension: str, minimum: float | None,
                     exclusive: bool) -> float:
    bare_ok = unit == "percent"
    if isinstance(value, bool):
        raise ValueError(f"expected a {dimension} with units, got {_show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not bare_ok:
            example = fmt(1.0, unit) if unit not in ("degC",) else "25 degC"
            raise ValueError(f"{value!r} needs a unit: expected a {dimension} like '{example}'")
        x = float(value)
    else:
        try:
            q = value if isinstance(value, pint.Quantity) else quantity(value)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
        if bare_ok and q.unitless:
            q = ureg.Quantity(float(q.magnitude), "percent")
        try:
            x = to(q, unit)  # labctl.units.to: also reads '5 degC' as a difference
        except UnitError:
            raise ValueError(
                f"{_show(value)} is not a {dimension}: expected units of {unit}"
                f" ({ureg.Unit(unit).dimensionality}), got {q.dimensionality}"
            ) from None
        except Exception as exc:  # pint raises several types for odd quantities
            raise ValueError(f"{_show(value)}: {exc}") from None
    if not math.isfinite(x):
        raise ValueError(f"{_show(value)} is not a finite {dimension}")
    if minimum is not None and (x <= minimum if exclusive else x < minimum):
        word = "above" if exclusive else "at least"
        raise ValueError(f"{dimension} must be {word} {fmt(minimum, unit)}, got {_show(value)}")
    return x


def Q(name: str, unit: str, key: str, *, required: bool = True, default: Any = None,
      positive: bool = False, nonneg: bool = False, description: str = "") -> Arg:
    """A quantity argument (shorthand for the catalogue below)."""
    return Arg(name, "quantity", key=key, unit=unit, required=required, default=default,
               minimum=0.0 if (positive or nonneg) else None, exclusive_minimum=positive,
               description=description)


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


    def to_dict(self) -> dict[str, Any]:
        """The fields that say something (for the plan and the record)."""
        out = {}
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


def _converted(raw: Any, unit: str) -> float | None:
    """A config value ('5 mL', 25) in `unit`, None when absent or not convertible."""
    if raw is None or isinstance(raw, (bool, dict, list)):
        return None
    return _converted_cached(raw if isinstance(raw, str) else float(raw), unit)


@lru_cache(maxsize=1024)
def _converted_cached(raw: str | float, unit: str) -> float | None:
    try:
        return float(quantity(raw).to(unit).magnitude)
    except Exception:
        return None


ArgIssue = tuple[str, str]  # (argument name, message)


class ActionSpec:
    """Base of every action. Subclasses set the class attributes and override what they
    need; every method but `run` is pure (no I/O) and must not raise on odd input."""

    capability: ClassVar[str] = ""
    name: ClassVar[str] = ""
    args: ClassVar[tuple[Arg, ...]] = ()
    moves_material: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    # -- validation ---------------------------------------------------------------------
    def resolve(self, raw: dict[str, Any]) -> tuple[dict[str, Any], list[ArgIssue]]:
        """Typed SI values under their keys, defaults applied; issues for unknown, missing
        or ill-typed arguments."""
        issues: list[ArgIssue] = []
        out: dict[str, Any] = {}
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

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        """Limits of the device; may add derived keys to `a` (a port, a material)."""
        return []

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 1.0

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        return []

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"{dev.name}: {self.name}"

    # -- execution ----------------------------------------------------------------------
    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        raise NotImplementedError

    def args_schema(self) -> dict[str, Any]:
        props = {a.name: {**a.json_schema(), **({"description": a.description}
                                                if a.description else {})}
                 for a in self.args}
        return {"type": "object", "properties": props, "additionalProperties": False,
                "required": [a.name for a in self.args if a.required]}


def _over(dev: DeviceView, arg: str, what: str, value: float, limit: float | None,
          unit: str, limit_name: str) -> list[ArgIssue]:
    if limit is not None and value > limit * (1 + 1e-9):
        return [(arg, f"{fmt(value, unit)} exceeds {dev.name} {limit_name} {fmt(limit, unit)}")]
    return []


Watch = Callable[[], Awaitable[None]]

#: how often (simulated seconds, at least one slice) a hold asks its device how it is doing
WATCH_EVERY_S = 10.0


async def _hold(ctx: ActionContext, duration_s: float, watch: Watch | None = None) -> float:
    """Hold for `duration_s` on the context's clock in short slices, honouring pause and
    abort between slices; returns the time held (paused time not counted). `watch` is
    called every WATCH_EVERY_S and raises when the device stopped doing what the hold
    relies on (a hotplate tripped, a heater failed): a hold must not record mixing or
    heating that did not happen."""
    held = 0.0
    since_watch = 0.0
    slice_s = max(0.05, 0.2 * ctx.clock.time_scale)
    while duration_s - held > 1e-9:
        step = min(slice_s, duration_s - held)
        await ctx.clock.sleep(step)
        held += step
        since_watch += step
        await ctx.checkpoint()
        if watch is not None and since_watch >= WATCH_EVERY_S:
            since_watch = 0.0
            await watch()
    if watch is not None:
        await watch()
    return held


def _watch_status(device: Any) -> Watch:
    """A watch that fails when the device reports a fault."""

    async def watch() -> None:
        st = await device.status()
        if str(st.state) == "fault":
            raise DeviceFault(st.fault or "the device reports a fault", device=device.name,
                              code="fault", vendor_text=st.fault)

    return watch


def _watch_temperature(device: Any, setpoint_c: float, band_c: float) -> Watch:
    """A guaranteed-soak watch: once the temperature is within ±band of the setpoint, leaving
    the band (a failed heater, a lost probe) is a fault; a device fault is one at once."""
    reached = False
    status_watch = _watch_status(device)

    async def watch() -> None:
        nonlocal reached
        await status_watch()
        t = await device.temperature_c()
        inside = abs(t - setpoint_c) <= band_c
        if inside:
            reached = True
        elif reached:
            raise DeviceFault(
                f"temperature {t:.1f} °C left the ±{band_c:g} °C band around the setpoint "
                f"{setpoint_c:g} °C during the hold (heater failure?)",
                device=device.name, code="soak_band",
            )

    return watch


class _TemperatureLog:
    """Measured temperatures of a device during a hold, for the record: a sample at the
    start, at every watch and at the end. A reading that fails is noted, not fatal (a
    hotplate without a probe still mixes)."""

    def __init__(self, device: Any, ctx: ActionContext):
        self.device = device
        self.clock = ctx.clock
        self.t0 = ctx.clock.monotonic()
        self.samples: list[dict[str, float]] = []
        self.error: str | None = None

    async def sample(self) -> float | None:
        try:
            value = float(await self.device.temperature_c())
        except DeviceFault:
            raise
        except Exception as exc:  # noted in the record
            self.error = f"temperature unreadable: {exc}"
            return None
        self.samples.append({"t_s": round(self.clock.monotonic() - self.t0, 3),
                             "measured_c": value})
        return value

    def watch(self, inner: Watch | None) -> Watch:
        async def watch() -> None:
            if inner is not None:
                await inner()
            await self.sample()

        return watch

    def summary(self) -> dict[str, Any]:
        values = [x["measured_c"] for x in self.samples]
        out: dict[str, Any] = {"measured_c": None, "temperatures": self.samples}
        if values:
            out.update(measured_c=sum(values) / len(values), measured_min_c=min(values),
                       measured_max_c=max(values))
        if self.error:
            out["temperature_error"] = self.error
        return out


async def _stirrer_setpoint(device: Any, given: float | None) -> float | None:
    """The heater setpoint in force: the one this step sets, else the device's own (a
    `set` step before), None when the heater is off."""
    if given is not None:
        return given
    try:
        readings = (await device.status()).readings
    except Exception:  # the setpoint is then unknown, not invented
        return None
    if readings.get("heater_on") is False:
        return None
    sp = readings.get("temperature_setpoint_c")
    return float(sp) if isinstance(sp, (int, float)) else None


# ---------------------------------------------------------------- syringe pump


def _syringe_ports(dev: DeviceView) -> list[str]:
    n = dev.param("ports")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return [str(i) for i in range(1, n + 1)]
    return ["input", "output", "bypass", "extra"]


def _routing_devices(dev: DeviceView) -> dict[str, dict[str, str]]:
    """Routing devices (`@name`) on this device's ports: name -> their port maps."""
    out: dict[str, dict[str, str]] = {}
    for target in dev.port_map.values():
        if target.startswith("@"):
            other = dev.bench.devices.get(target[1:])
            pm = other.params.get("port_map") if other is not None else None
            out[target] = {str(k): str(v) for k, v in pm.items()} if isinstance(pm, dict) else {}
    return out


def _port_target(dev: DeviceView, target: str, arg: str
                 ) -> tuple[str | None, str | None, str | None, list[ArgIssue]]:
    """(port, what the port leads to, vessel expected through a route, issues)."""
    ports = _syringe_ports(dev)
    pm = dev.port_map
    if target in ports:
        return target, pm.get(target), None, []
    for port, lead in pm.items():
        if lead == target:
            return port, lead, None, []
    for route, rmap in _routing_devices(dev).items():
        if target in rmap.values():
            port = next(p for p, lead in pm.items() if lead == route)
            return port, route, target, []
    where = ", ".join(f"{p}→{lead}" for p, lead in pm.items()) or "none mapped"
    return None, None, None, [(arg, f"{target!r} is neither a port of {dev.name} "
                                    f"({', '.join(ports)}) nor a vessel it reaches ({where})")]


def _default_flow(dev: DeviceView) -> float:
    """Flow when a recipe gives none: the configured default, else a full stroke in ~4.3 s
    (the C3000's factory speed), never above max_flow."""
    flow = dev.param_q("default_flow", "L/s")
    if flow is None:
        vol = dev.param_q("syringe_volume", "L") or 0.005
        flow = vol / 4.3
    mx = dev.limit("max_flow", "L/s")
    return min(flow, mx) if mx else flow


def _reservoir_material(dev: DeviceView, vessel: str | None) -> str | None:
    """The material a reservoir holds when it holds exactly one (for provenance)."""
    if vessel is None:
        return None
    v = dev.bench.vessels.get(vessel)
    if v is not None and len(v.contents) == 1:
        return next(iter(v.contents))
    return None


async def _reached(ctx: ActionContext, target: str | None) -> dict[str, Any]:
    """Where material sent to `target` actually goes, read at the time of the move: a
    vessel as it is, a routing device (`@sel_valve`) resolved through its position now."""
    if target is None or not str(target).startswith("@"):
        return {"vessel": target}
    resolve = getattr(ctx, "resolve_route", None)
    if resolve is None:
        return {"vessel": None, "route": [], "route_error": "route not resolvable here"}
    found: dict[str, Any] = await resolve(target)
    return found


def _expected(expect: str | None, lead: str | None) -> str | None:
    """The vessel validation expected a move to reach (None: a bare port through a route)."""
    if expect:
        return expect
    return lead if lead and not lead.startswith("@") else None


def _addition(where: dict[str, Any], expected: str | None = None,
              after: dict[str, Any] | None = None) -> dict[str, Any]:
    """The vessel fields of an addition record: the vessel reached, the route it went
    through, and what the recipe expected when that differs (a misrouted addition)."""
    fields: dict[str, Any] = {"vessel": where.get("vessel")}
    if where.get("route"):
        fields["route"] = where["route"]
    if where.get("route_error"):
        fields["route_error"] = where["route_error"]
    if expected is not None and where.get("vessel") != expected:
        fields["expected_vessel"] = expected
    if after is not None and after.get("vessel") != where.get("vessel"):
        fields["route_changed_to"] = after.get("vessel")
    return fields


class _SyringeAction(ActionSpec):
    capability = "syringe_pump"

    def _flow_checks(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        flow = a.get("flow_l_s")
        if flow is None:
            return []
        return _over(dev, "flow", "flow", flow, dev.limit("max_flow", "L/s"), "L/s", "max_flow")

    def _barrel(self, dev: DeviceView) -> str:
        return f"#{dev.name}"

    def _stroke_s(self, dev: DeviceView, volume_l: float, flow: float | None) -> float:
        f = flow or _default_flow(dev)
        return volume_l / f if f > 0 else 0.0


class SyringeInitialize(_SyringeAction):
    name = "initialize"
    summary = "Home plunger and valve."

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 3.0

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        return [Effect("init", device=dev.name), Effect("route", device=dev.name, target=None)]

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Initialise {dev.name} (home plunger and valve)."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.initialize()
        return {}


class SyringeValve(_SyringeAction):
    name = "valve"
    summary = "Turn the pump's valve to a port (or to the port of a vessel)."
    args = (Arg("port", "target", description="port name or a vessel on port_map"),)

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        port, lead, expect, issues = _port_target(dev, a["port"], "port")
        a["port_id"], a["leads_to"], a["expect"] = port, lead, expect
        return issues

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 0.5

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        return [Effect("needs_init", device=dev.name),
                Effect("route", device=dev.name, target=a.get("leads_to"), arg="port")]

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Turn the valve of {dev.name} to port {a.get('port_id')} ({a.get('leads_to')})."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.set_valve(a["port_id"])
        return {"port": a["port_id"]}


class SyringeAspirate(_SyringeAction):
    name = "aspirate"
    moves_material = True
    summary = "Draw a volume into the syringe (through `from`, else the current port)."
    args = (Q("volume", "L", "volume_l", positive=True),
            Arg("from", "target", key="source", required=False),
            Q("flow", "L/s", "flow_l_s", required=False, positive=True))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        issues = _over(dev, "volume", "volume", a["volume_l"],
                       dev.param_q("syringe_volume", "L"), "L", "syringe volume")
        issues += self._flow_checks(dev, a)
        a["source_port"] = a["leads_to"] = a["expect"] = None
        if a.get("source"):
            port, lead, expect, more = _port_target(dev, a["source"], "from")
            a["source_port"], a["leads_to"], a["expect"] = port, lead, expect
            issues += more
            a["material"] = _reservoir_material(dev, expect or lead)
        return issues

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return self._stroke_s(dev, a["volume_l"], a.get("flow_l_s")) + (
            0.5 if a.get("source_port") else 0.0)

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        out = [Effect("needs_init", device=dev.name)]
        if a.get("source_port"):
            out.append(Effect("route", device=dev.name, target=a.get("leads_to"), arg="from"))
        out.append(Effect("move", source=f"@{dev.name}", destination=self._barrel(dev),
                          amount=a["volume_l"], expect_source=a.get("expect"),
                          arg="from" if a.get("source") else "volume"))
        return out

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        src = f" from {a['source']}" if a.get("source") else ""
        flow = f" at {fmt(a['flow_l_s'], 'L/s')}" if a.get("flow_l_s") else ""
        return f"Aspirate {fmt(a['volume_l'], 'L')}{src} into {dev.name}{flow}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        if a.get("source_port"):
            await device.set_valve(a["source_port"])
        await device.aspirate(a["volume_l"], flow_l_s=a.get("flow_l_s"))
        return {"volume_l": a["volume_l"], "plunger_volume_l": await device.plunger_volume_l()}


class SyringeDispense(_SyringeAction):
    name = "dispense"
    moves_material = True
    summary = "Push a volume out of the syringe (through `to`, else the current port)."
    args = (Q("volume", "L", "volume_l", positive=True),
            Arg("to", "target", key="destination", required=False),
            Q("flow", "L/s", "flow_l_s", required=False, positive=True))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        issues = _over(dev, "volume", "volume", a["volume_l"],
                       dev.param_q("syringe_volume", "L"), "L", "syringe volume")
        issues += self._flow_checks(dev, a)
        a["destination_port"] = a["leads_to"] = a["expect"] = None
        if a.get("destination"):
            port, lead, expect, more = _port_target(dev, a["destination"], "to")
            a["destination_port"], a["leads_to"], a["expect"] = port, lead, expect
            issues += more
        return issues

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return self._stroke_s(dev, a["volume_l"], a.get("flow_l_s")) + (
            0.5 if a.get("destination_port") else 0.0)

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        out = [Effect("needs_init", device=dev.name)]
        if a.get("destination_port"):
            out.append(Effect("route", device=dev.name, target=a.get("leads_to"), arg="to"))
        out.append(Effect("move", source=self._barrel(dev), destination=f"@{dev.name}",
                          amount=a["volume_l"], expect_destination=a.get("expect"),
                          arg="to" if a.get("destination") else "volume"))
        return out

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        dst = f" to {a['destination']}" if a.get("destination") else ""
        flow = f" at {fmt(a['flow_l_s'], 'L/s')}" if a.get("flow_l_s") else ""
        return f"Dispense {fmt(a['volume_l'], 'L')} from {dev.name}{dst}{flow}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        if a.get("destination_port"):
            await device.set_valve(a["destination_port"])
        where = await _reached(ctx, a.get("leads_to")) if a.get("destination") else {}
        await device.dispense(a["volume_l"], flow_l_s=a.get("flow_l_s"))
        if a.get("destination"):
            ctx.record("addition", material=a.get("material"),
                       **_addition(where, _expected(a.get("expect"), a.get("leads_to"))),
                       requested=a["volume_l"], actual=a["volume_l"], unit="L")
        return {"volume_l": a["volume_l"], "plunger_volume_l": await device.plunger_volume_l()}


class SyringeTransfer(_SyringeAction):
    name = "transfer"
    moves_material = True
    summary = "Move a volume from one port/vessel to another, in syringe-sized strokes."
    args = (Q("volume", "L", "volume_l", positive=True),
            Arg("from", "target", key="source"),
            Arg("to", "target", key="destination"),
            Q("flow", "L/s", "flow_l_s", required=False, positive=True))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        issues = self._flow_checks(dev, a)
        sp, slead, sexp, more = _port_target(dev, a["source"], "from")
        dp, dlead, dexp, more2 = _port_target(dev, a["destination"], "to")
        issues += more + more2
        a.update(source_port=sp, source_leads_to=slead, source_expect=sexp,
                 destination_port=dp, destination_leads_to=dlead, destination_expect=dexp,
                 material=_reservoir_material(dev, sexp or slead))
        if sp is not None and sp == dp:
            issues.append(("to", f"from and to are the same port ({sp}) of {dev.name}"))
        return issues

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        syringe = dev.param_q("syringe_volume", "L") or a["volume_l"]
        strokes = max(1, math.ceil(a["volume_l"] / syringe - 1e-9)) if syringe > 0 else 1
        return 2 * self._stroke_s(dev, a["volume_l"], a.get("flow_l_s")) + strokes * 1.0

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        # the source route is read before, the destination route after: both ports are used
        return [
            Effect("needs_init", device=dev.name),
            Effect("route", device=dev.name, target=a.get("source_leads_to"), arg="from"),
            Effect("move", source=f"@{dev.name}", destination=None, amount=a["volume_l"],
                   expect_source=a.get("source_expect"), arg="from"),
            Effect("route", device=dev.name, target=a.get("destination_leads_to"), arg="to"),
            Effect("move", source=None, destination=f"@{dev.name}", amount=a["volume_l"],
                   expect_destination=a.get("destination_expect"), arg="to"),
        ]

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        flow = f" at {fmt(a['flow_l_s'], 'L/s')}" if a.get("flow_l_s") else ""
        via = ""
        for key in ("source", "destination"):
            if a.get(f"{key}_expect"):
                via = f" (via {str(a.get(f'{key}_leads_to') or '').lstrip('@')})"
        return (f"Transfer {fmt(a['volume_l'], 'L')} from {a['source']} to "
                f"{a['destination']}{via} with {dev.name}{flow}.")

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        where = await _reached(ctx, a.get("destination_leads_to"))
        moved = await device.transfer(a["volume_l"], a["source_port"], a["destination_port"],
                                      flow_l_s=a.get("flow_l_s"))
        ctx.record("addition", material=a.get("material"),
                   **_addition(where, _expected(a.get("destination_expect"),
                                                    a.get("destination_leads_to"))),
                   requested=a["volume_l"], actual=moved, unit="L")
        return {"volume_l": moved}


# ---------------------------------------------------------------- continuous pump


class _PumpAction(ActionSpec):
    capability = "pump"

    def _ends(self, dev: DeviceView, direction: str) -> tuple[str | None, str | None]:
        src, dst = dev.param("source"), dev.param("destination")
        src = str(src) if src else None
        dst = str(dst) if dst else None
        return (src, dst) if direction == "infuse" else (dst, src)

    def _flow_checks(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        return _over(dev, "flow", "flow", a["flow_l_s"], dev.limit("max_flow", "L/s"),
                     "L/s", "max_flow")


class PumpTransfer(_PumpAction):
    name = "transfer"
    moves_material = True
    summary = "Pump a volume at a flow from the pump's source to its destination."
    args = (Q("volume", "L", "volume_l", positive=True),
            Q("flow", "L/s", "flow_l_s", positive=True),
            Arg("direction", "enum", choices=("infuse", "withdraw"), required=False,
                default="infuse"))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        issues = self._flow_checks(dev, a)
        issues += _over(dev, "volume", "volume", a["volume_l"],
                        dev.param_q("syringe_volume", "L"), "L", "syringe volume")
        src, dst = self._ends(dev, a["direction"])
        if src is None or dst is None:
            issues.append(("direction", f"{dev.name} has no configured source/destination "
                                        "(params.source, params.destination)"))
        a["source"], a["destination"] = src, dst
        a["material"] = _reservoir_material(dev, src)
        return issues

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return a["volume_l"] / a["flow_l_s"] + 1.0

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        if not a.get("source") or not a.get("destination"):
            return []
        return [Effect("move", source=a["source"], destination=a["destination"],
                       amount=a["volume_l"], arg="volume")]

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return (f"Pump {fmt(a['volume_l'], 'L')} from {a.get('source')} to "
                f"{a.get('destination')} with {dev.name} at {fmt(a['flow_l_s'], 'L/s')}.")

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        from labctl.capabilities.pump import PumpDirection

        where = await _reached(ctx, a.get("destination"))
        moved = await device.pump_volume(a["volume_l"], a["flow_l_s"],
                                         PumpDirection(a["direction"]))
        after = await _reached(ctx, a.get("destination")) if where.get("route") else None
        ctx.record("addition", material=a.get("material"), **_addition(where, after=after),
                   requested=a["volume_l"], actual=moved, unit="L")
        return {"volume_l": moved}


class PumpStart(_PumpAction):
    name = "start"
    #: it infuses or withdraws until `stop`: re-run after a crash it would move more
    moves_material = True
    summary = "Start pumping continuously at a flow (until `stop`)."
    args = (Q("flow", "L/s", "flow_l_s", positive=True),
            Arg("direction", "enum", choices=("infuse", "withdraw"), required=False,
                default="infuse"))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        return self._flow_checks(dev, a)

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Start {dev.name} ({a['direction']}) at {fmt(a['flow_l_s'], 'L/s')}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        from labctl.capabilities.pump import PumpDirection

        await device.set_flow(a["flow_l_s"])
        await device.start(PumpDirection(a["direction"]))
        return {}


class PumpStop(_PumpAction):
    name = "stop"
    summary = "Stop the pump; reports the volume pumped since the start."

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Stop {dev.name}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.stop()
        return {"pumped_volume_l": await device.pumped_volume_l()}


# ---------------------------------------------------------------- valve


def _valve_positions(dev: DeviceView) -> int:
    n = dev.param("positions")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 6


class ValveMove(ActionSpec):
    capability = "valve"
    name = "move"
    summary = "Move to a position (a number, or the vessel on it)."
    args = (Arg("position", "position"),)

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        pos = a["position"]
        n = _valve_positions(dev)
        if isinstance(pos, str):
            for p, vessel in dev.port_map.items():
                if vessel == pos:
                    a["position"], a["vessel"] = int(p), vessel
                    return []
            known = ", ".join(f"{p}→{v}" for p, v in dev.port_map.items()) or "none"
            return [("position", f"no position of {dev.name} leads to {pos!r} ({known})")]
        if not 1 <= pos <= n:
            return [("position", f"position {pos} does not exist on {dev.name} (1…{n})")]
        a["vessel"] = dev.port_map.get(str(pos))
        return []

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 0.25 * _valve_positions(dev) / 2

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        return [Effect("route", device=dev.name, target=a.get("vessel"), arg="position")]

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        to = f" ({a['vessel']})" if a.get("vessel") else ""
        return f"Move {dev.name} to position {a['position']}{to}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.move(int(a["position"]))
        return {"position": int(a["position"])}


class ValveHome(ActionSpec):
    capability = "valve"
    name = "home"
    summary = "Home the valve (position 1)."

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 0.25 * _valve_positions(dev)

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        return [Effect("route", device=dev.name, target=dev.port_map.get("1"))]

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Home {dev.name}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.home()
        return {"position": await device.position()}


# ---------------------------------------------------------------- balance


class BalanceWeigh(ActionSpec):
    capability = "balance"
    name = "weigh"
    summary = "Read the net mass (a stable reading unless stable = false)."
    args = (Arg("stable", "boolean", required=False, default=True),)

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 5.0 if a.get("stable", True) else 1.0

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        on = f" ({dev.param('vessel')})" if dev.param("vessel") else ""
        return f"Weigh on {dev.name}{on}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        mass = await device.weigh(stable=bool(a.get("stable", True)))
        ctx.record("weighing", vessel=a.get("vessel"), mass_g=mass)
        return {"mass_g": mass}

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        a["vessel"] = dev.param("vessel")
        return []


class BalanceTare(ActionSpec):
    capability = "balance"
    name = "tare"
    summary = "Tare: what is on the pan now reads zero."

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 3.0

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Tare {dev.name}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        return {"tare_g": await device.tare()}


class BalanceZero(ActionSpec):
    capability = "balance"
    name = "zero"
    summary = "Zero the balance."

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 3.0

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Zero {dev.name}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.zero()
        return {}


# ---------------------------------------------------------------- dispenser


class DispenserDispense(ActionSpec):
    capability = "dispenser"
    name = "dispense"
    moves_material = True
    summary = "Dose a mass of solid into the vessel below; records the actual mass."
    args = (Q("mass", "g", "mass_g", positive=True),
            Arg("tolerance", "quantity", key="tolerance_pct", unit="percent", required=False,
                default=2.0, minimum=0.0, exclusive_minimum=True),
            Arg("material", "string", required=False))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        issues = _over(dev, "mass", "mass", a["mass_g"], dev.limit("max_mass", "g"), "g",
                       "max_mass")
        head = dev.param("head_material")
        if a.get("material") and head and a["material"] != head:
            issues.append(("material", f"{dev.name} doses {head}, not {a['material']}"))
        a["material"] = a.get("material") or head
        a["vessel"] = dev.param("vessel")
        if not a["vessel"]:
            issues.append(("mass", f"{dev.name} has no target vessel (params.vessel)"))
        return issues

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return 30.0 + 10.0 * a["mass_g"]

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        if not a.get("vessel"):
            return []
        return [Effect("move", source=f"#{dev.name}", destination=a["vessel"],
                       amount=a["mass_g"], material=a.get("material"), solid=True, arg="mass")]

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return (f"Dose {fmt(a['mass_g'], 'g')} of {a.get('material')} into {a.get('vessel')} "
                f"with {dev.name} (±{a['tolerance_pct']:g} %).")

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"tolerance_pct": a["tolerance_pct"]}
        references: list[float] = []
        if _accepts(device.dispense, "on_tared") and callable(
                getattr(device, "landed_since", None)):
            def reference(reference_g: float) -> None:
                # journaled (fsync'd) before the dose starts: a resume after a crash
                # weighs what landed against it (see `recover`)
                ctx.record("dose_reference", durable=True, material=a.get("material"),
                           vessel=a.get("vessel"), requested=a["mass_g"],
                           reference_g=reference_g, unit="g")
                references.append(reference_g)

            kwargs["on_tared"] = reference
        try:
            actual = await device.dispense(a["mass_g"], **kwargs)
        except Exception:
            # a dose that failed half-way still put powder in the vial: record it, or a
            # retry (which tares again) or a resume would leave it out of the additions
            if references:
                await self._record_landed(device, a, references[-1], ctx, "failed")
            raise
        ctx.record("addition", material=a.get("material"), vessel=a.get("vessel"),
                   requested=a["mass_g"], actual=actual, unit="g")
        return {"requested_g": a["mass_g"], "actual_g": actual}

    async def _record_landed(self, device: Any, a: dict[str, Any], reference_g: float,
                             ctx: ActionContext, how: str) -> float | None:
        """Weigh what landed since the reference and record it as an addition (None and
        nothing recorded when the balance cannot be read now)."""
        try:
            landed = float(await device.landed_since(reference_g))
        except Exception as exc:  # the run goes on failing; a resume weighs it again
            log.warning("%s: what the %s dose delivered could not be weighed: %s",
                        ctx.device_name, how, exc)
            return None
        ctx.record("addition", material=a.get("material"), vessel=a.get("vessel"),
                   requested=a["mass_g"], actual=landed, unit="g", interrupted=True,
                   reference_g=reference_g,
                   note=f"dose {how}: what landed, weighed against the tare taken before it")
        return landed

    async def recover(self, device: Any, a: dict[str, Any], facts: list[dict[str, Any]],
                      ctx: ActionContext) -> dict[str, Any] | None:
        """A dose a crash interrupted (the step is in doubt; the operator accepted it or
        asked for it again): what landed is weighed against the reference journaled before
        the dose, and recorded as the addition it was. None when no reference was journaled
        (the dose had not started: nothing landed)."""
        ref = next((f for f in reversed(facts) if f.get("kind") == "dose_reference"), None)
        if ref is None or not callable(getattr(device, "landed_since", None)):
            return None
        landed = float(await device.landed_since(float(ref["reference_g"])))
        ctx.record("addition", material=a.get("material"), vessel=a.get("vessel"),
                   requested=a["mass_g"], actual=landed, unit="g", interrupted=True,
                   reference_g=ref["reference_g"],
                   note="dose interrupted (crash or abort): what landed, weighed on resume "
                        "against the tare taken before the dose")
        return {"requested_g": a["mass_g"], "actual_g": landed, "interrupted": True}


# ---------------------------------------------------------------- stirrer


def _temperature_checks(dev: DeviceView, arg: str, t: float | None) -> list[ArgIssue]:
    if t is None:
        return []
    issues = _over(dev, arg, "temperature", t, dev.limit("max_temperature", "degC"), "degC",
                   "max_temperature")
    low = dev.limit("min_temperature", "degC")
    if low is not None and t < low:
        issues.append((arg, f"{t:g} °C is below {dev.name} min_temperature {low:g} °C"))
    return issues


class StirrerStir(ActionSpec):
    capability = "stirrer"
    name = "stir"
    summary = "Stir at a speed (optionally heated) for a duration, then stop."
    args = (Q("speed", "rpm", "speed_rpm", positive=True),
            Q("duration", "s", "duration_s", nonneg=True),
            Q("temperature", "degC", "temperature_c", required=False))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        issues = _over(dev, "speed", "speed", a["speed_rpm"], dev.limit("max_speed", "rpm"),
                       "rpm", "max_speed")
        return issues + _temperature_checks(dev, "temperature", a.get("temperature_c"))

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return a["duration_s"] + 1.0

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        t = f" at {a['temperature_c']:g} °C" if a.get("temperature_c") is not None else ""
        on = f" ({dev.param('vessel')})" if dev.param("vessel") else ""
        return (f"Stir on {dev.name}{on} at {a['speed_rpm']:g} rpm{t} for "
                f"{fmt(a['duration_s'], 's')}.")

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        t = a.get("temperature_c")
        if t is not None:
            await device.set_temperature(t)
        await device.set_speed(a["speed_rpm"])
        setpoint = await _stirrer_setpoint(device, t)
        temps = _TemperatureLog(device, ctx)
        await temps.sample()
        held = await _hold(ctx, a["duration_s"], temps.watch(_watch_status(device)))
        await device.set_speed(0)
        if t is not None:
            await device.set_temperature(None)
        measured = temps.summary()
        ctx.record("mixing", speed_rpm=a["speed_rpm"], duration_s=held,
                   temperature_c=measured["measured_c"], setpoint_c=setpoint, **{
                       k: v for k, v in measured.items() if k != "measured_c"},
                   measured_c=measured["measured_c"])
        return {"duration_s": held, "setpoint_c": setpoint,
                "temperature_c": measured["measured_c"]}


class StirrerSet(ActionSpec):
    capability = "stirrer"
    name = "set"
    summary = "Set speed and/or temperature and leave them running."
    args = (Q("speed", "rpm", "speed_rpm", required=False, nonneg=True),
            Q("temperature", "degC", "temperature_c", required=False))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        if a.get("speed_rpm") is None and a.get("temperature_c") is None:
            return [("speed", "give speed, temperature or both")]
        issues: list[ArgIssue] = []
        if a.get("speed_rpm") is not None:
            issues += _over(dev, "speed", "speed", a["speed_rpm"],
                            dev.limit("max_speed", "rpm"), "rpm", "max_speed")
        return issues + _temperature_checks(dev, "temperature", a.get("temperature_c"))

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        parts = []
        if a.get("speed_rpm") is not None:
            parts.append(f"speed {a['speed_rpm']:g} rpm")
        if a.get("temperature_c") is not None:
            parts.append(f"temperature {a['temperature_c']:g} °C")
        return f"Set {dev.name}: {', '.join(parts)}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        if a.get("temperature_c") is not None:
            await device.set_temperature(a["temperature_c"])
        if a.get("speed_rpm") is not None:
            await device.set_speed(a["speed_rpm"])
        return {}


class StirrerOff(ActionSpec):
    capability = "stirrer"
    name = "off"
    summary = "Heater and motor off."

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Switch {dev.name} off (heater and motor)."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.set_temperature(None)
        await device.set_speed(0)
        return {}


# ---------------------------------------------------------------- temperature controller


class TcSetTemperature(ActionSpec):
    capability = "temperature_controller"
    name = "set_temperature"
    summary = "Set the setpoint and run the controller."
    args = (Q("temperature", "degC", "temperature_c"),)

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        return _temperature_checks(dev, "temperature", a["temperature_c"])

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Set {dev.name} to {a['temperature_c']:g} °C."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.set_temperature(a["temperature_c"])
        return {}


#: a hold whose temperature, once reached, strays further than this has failed
DEFAULT_SOAK_BAND_C = 5.0


class TcHold(ActionSpec):
    capability = "temperature_controller"
    name = "hold"
    summary = "Set the setpoint and hold it for a duration (one segment of a schedule)."
    args = (Q("temperature", "degC", "temperature_c"),
            Q("duration", "s", "duration_s", nonneg=True),
            Q("band", "delta_degC", "band_c", required=False, positive=True))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
        return _temperature_checks(dev, "temperature", a["temperature_c"])

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        return a["duration_s"]

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        on = f" ({dev.param('vessel')})" if dev.param("vessel") else ""
        return f"Hold {dev.name}{on} at {a['temperature_c']:g} °C for {fmt(a['duration_s'], 's')}."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.set_temperature(a["temperature_c"])
        band = a.get("band_c") or DEFAULT_SOAK_BAND_C
        temps = _TemperatureLog(device, ctx)
        held = await _hold(ctx, a["duration_s"], temps.watch(
            _watch_temperature(device, a["temperature_c"], band)))
        reading = await device.temperature_c()
        ctx.record("heating", temperature_c=a["temperature_c"], setpoint_c=a["temperature_c"],
                   duration_s=held, measured_c=reading, vessel=getattr(
                       getattr(device, "spec", None), "params", {}).get("vessel"),
                   **{k: v for k, v in temps.summary().items() if k != "measured_c"},
                   measured_mean_c=temps.summary()["measured_c"])
        return {"duration_s": held, "temperature_c": reading}


class TcOff(ActionSpec):
    capability = "temperature_controller"
    name = "off"
    summary = "Stop control (heater off)."

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
        return f"Switch {dev.name} off."

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        await device.set_temperature(None)
        return {}


# ---------------------------------------------------------------- potentiostat

_VS = Arg("vs", "enum", choices=("ref", "ocp"), required=False, default="ref",
          description="reference of the potentials: the reference electrode or open circuit")


class _Technique(ActionSpec):
    """A potentiostat technique: the resolved args are the fields of the technique model
    (labctl.techniques), so `run` builds it and streams the points to the data writer."""

    capability = "potentiostat"
    #: resolved keys that are potentials / currents / frequencies (for the limit checks)
    potentials: ClassVar[tuple[str, ...]] = ()
    currents: ClassVar[tuple[str, ...]] = ()

    def technique_args(self, a: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in a.items() if k in self._model().model_fields}

    def _model(self) -> Any:
        from labctl.techniques import TECHNIQUES

        return TECHNIQUES[self.name]

    def build(self, a: dict[str, Any]) -> Any:
        return self._model()(**self.technique_args(a))

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
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
        a["vessel"] = dev.param("vessel")
        return issues

    def effects(self, dev: DeviceView, a: dict[str, Any]) -> list[Effect]:
        vessel = dev.param("vessel")
        return [Effect("needs_liquid", destination=str(vessel))] if vessel else []

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
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

    async def run(self, device: Any, a: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        technique = self.build(a)
        reader = getattr(ctx, "cell_temperature", None)
        before = await reader(a.get("vessel")) if reader is not None else None
        writer = ctx.data_writer(technique)
        n = 0
        try:
            async for point in device.measure(technique):
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

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
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

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
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

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
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

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
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

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
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

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
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

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
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

    def check(self, dev: DeviceView, a: dict[str, Any]) -> list[ArgIssue]:
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
            from labctl.techniques import GCPLPhase

            for i, ph in enumerate(phases):
                try:
                    GCPLPhase(**ph)
                except ValidationError as exc:
                    for e in exc.errors():
                        issues.append((f"phases[{i}]", str(e["msg"])))
        if not issues:
            issues += super().check(dev, a)
        a["reference_electrode"] = dev.param("reference_electrode")
        a["vessel"] = dev.param("vessel")
        return issues

    def estimate_s(self, dev: DeviceView, a: dict[str, Any]) -> float:
        per_cycle = sum(float(p.get("max_time_s", 0.0)) for p in a.get("phases", [])
                        if isinstance(p, dict))
        return a["n_cycles"] * per_cycle

    def describe(self, dev: DeviceView, a: dict[str, Any]) -> str:
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


# ---------------------------------------------------------------- the catalogue

_ALL: tuple[type[ActionSpec], ...] = (
    SyringeInitialize, SyringeValve, SyringeAspirate, SyringeDispense, SyringeTransfer,
    PumpTransfer, PumpStart, PumpStop,
    ValveMove, ValveHome,
    BalanceWeigh, BalanceTare, BalanceZero,
    DispenserDispense,
    StirrerStir, StirrerSet, StirrerOff,
    TcSetTemperature, TcHold, TcOff,
    Ocv, Ca, Cp, Lsv, Cv, Peis, Gcpl,
)

#: capability -> action name -> spec
ACTIONS: dict[str, dict[str, ActionSpec]] = {}
for _cls in _ALL:
    ACTIONS.setdefault(_cls.capability, {})[_cls.name] = _cls()


def get_action(capability: Any, name: str) -> ActionSpec | None:
    """The spec for a capability name, or for a device (any of its `capabilities`)."""
    if isinstance(capability, str):
        return ACTIONS.get(capability, {}).get(name)
    for cap in getattr(capability, "capabilities", ()):
        spec = ACTIONS.get(cap, {}).get(name)
        if spec is not None:
            return spec
    return None


def catalogue_schema() -> dict[str, Any]:
    """The catalogue as plain data (for `labctl schema` and AI servers)."""
    return {cap: {name: {"summary": spec.summary, "moves_material": spec.moves_material,
                         "args": spec.args_schema()}
                  for name, spec in actions.items()}
            for cap, actions in ACTIONS.items()}
