"""Bench configuration (TOML): devices, vessels, materials, simulation.

A bad file gets a `ConfigError` naming the file, the key and the reason (exit code 2 from
the CLI). `config/sim.toml` is the default, simulated bench.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from labctl.device import DeviceSpec
from labctl.errors import ConfigError
from labctl.registry import available_drivers, driver_class
from labctl.transport import SerialSettings
from labctl.units import UnitError, quantity, to

DEFAULT_CONFIG = Path("config/sim.toml")
#: room temperature when a bench declares none
AMBIENT_C = 22.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SerialConfig(_Strict):
    baudrate: int | None = Field(default=None, gt=0)
    bytesize: Literal[5, 6, 7, 8] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: float | None = Field(default=None, description="1, 1.5 or 2")
    xonxoff: bool | None = None

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, v: float | None) -> float | None:
        if v is not None and v not in (1, 1.5, 2):
            raise ValueError(f"stop bits are 1, 1.5 or 2, got {v}")
        return v


class SimulatorConfig(_Strict):
    kind: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class DeviceConfig(_Strict):
    """`[devices.NAME]` as written. Frozen: what runs is the DeviceSpec converted from it
    when the config loads (BenchConfig.device_spec), so a change after that would be
    silently ignored; build a new config instead."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    driver: str
    endpoint: str = ""
    address: int | str | None = None
    bus: str | None = None
    enabled: bool = True
    timeout: str = "2 s"
    description: str = ""
    serial: SerialConfig | None = None
    params: Mapping[str, Any] = Field(default_factory=dict)
    limits: Mapping[str, str | float | int] = Field(default_factory=dict)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)

    @field_validator("limits")
    @classmethod
    def _limits_are_quantities(cls, v: Mapping[str, Any]) -> Mapping[str, Any]:
        for key, value in v.items():
            if isinstance(value, str):
                try:
                    quantity(value)
                except UnitError as exc:
                    raise ValueError(f"{key}: {exc}") from None
        return MappingProxyType(dict(v))

    @field_validator("params")
    @classmethod
    def _read_only(cls, v: Mapping[str, Any]) -> Mapping[str, Any]:
        return MappingProxyType(dict(v))


class MaterialConfig(_Strict):
    name: str = ""
    smiles: str | None = None
    inchikey: str | None = None
    supplier: str | None = None
    lot: str | None = None
    phase: Literal["liquid", "solid"] = "liquid"
    density: str | None = None  # "1.07 g/mL"
    molar_mass: str | None = None  # "90.08 g/mol"
    #: a material that is solid below this cannot be pumped from a colder reservoir
    melting_point: str | None = None  # "36.4 degC"
    #: a solution's amount of its compound (cas, molar_mass) per litre; the rest is water
    concentration: str | None = None  # "1 mol/L"
    # hazards for the SOP (labctl.hazards): from the supplier's safety data sheet
    cas: str | None = None  # "64-17-5"
    ghs: list[str] = Field(default_factory=list)  # hazard statement codes, ["H225", "H319"]
    handling: str = ""  # e.g. "moisture sensitive: hydrolyses to HF"

    @field_validator("melting_point")
    @classmethod
    def _melting_point(cls, v: str | None) -> str | None:
        return _temperature(v)

    @field_validator("concentration")
    @classmethod
    def _concentration(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            q = quantity(v)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
        if not q.check("[substance] / [volume]") or q.magnitude <= 0:
            raise ValueError(f"{v!r} is not a positive concentration (e.g. '1 mol/L')")
        return v

    @field_validator("cas")
    @classmethod
    def _cas_number(cls, v: str | None) -> str | None:
        from labctl.hazards import check_cas

        why = check_cas(v) if v is not None else None
        if why:
            raise ValueError(why)
        return v

    @field_validator("ghs")
    @classmethod
    def _hazard_codes(cls, v: list[str]) -> list[str]:
        from labctl.hazards import check_code

        for code in v:
            why = check_code(code)
            if why:
                raise ValueError(why)
        return v


class VesselConfig(_Strict):
    kind: Literal["reservoir", "vial", "waste"] = "vial"
    capacity: str = "20 mL"
    empty_mass: str = "0 g"
    contents: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    #: a thermostatted vessel (a warmed reservoir) is held at this temperature; others
    #: are at the ambient temperature
    temperature: str | None = None  # "40 degC"
    #: a vial in a rack (a vial block, a sampler tray): the rack's name and the vial's
    #: position in it. Runs are assigned free vials of a rack; samples are located by it.
    rack: str | None = None
    position: int | None = Field(default=None, ge=1)

    @field_validator("temperature")
    @classmethod
    def _is_temperature(cls, v: str | None) -> str | None:
        return _temperature(v)


def _temperature(v: str | None) -> str | None:
    """A temperature quantity ('40 degC') or None."""
    if v is None:
        return v
    try:
        q = quantity(v)
    except UnitError as exc:
        raise ValueError(str(exc)) from None
    if not q.check("[temperature]"):
        raise ValueError(f"{v!r} is not a temperature (e.g. '40 degC')")
    return v


class BenchSection(_Strict):
    id: str = "bench"
    site: str = ""
    simulate: bool = False
    time_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    recipes_dir: str = "recipes"
    #: how many runs may run at once (their steps still wait for the devices and vessels
    #: they touch: labctl.bench.resources); 1 runs one after the other
    concurrency: int = Field(default=1, ge=1, le=64)


# ---------------------------------------------------------------- ambient/run conditions
# (kept apart from the device and limit validation above: a separate section to merge)


class ConditionsConfig(_Strict):
    """`[conditions]`: the ambient and run conditions the data management plan asks for,
    as the bench declares them (a glovebox's O2/H2O monitor, the room's humidity). Every
    key is optional; each value recorded in metadata.json says it was declared, not
    measured by labctl."""

    atmosphere: str | None = Field(default=None, description="e.g. 'argon glovebox', 'air'")
    o2_ppm: float | None = Field(default=None, ge=0, le=1e6, description="O2 in ppm")
    h2o_ppm: float | None = Field(default=None, ge=0, le=1e6, description="H2O in ppm")
    relative_humidity: float | None = Field(default=None, ge=0, le=100,
                                            description="relative humidity in %")
    ambient_temperature: str | None = Field(default=None, description="e.g. '22 degC'")
    pressure: str | None = Field(default=None, description="e.g. '1 atm'")
    note: str = ""

    @field_validator("ambient_temperature")
    @classmethod
    def _is_temperature(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            q = quantity(v)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
        if not q.check("[temperature]"):
            raise ValueError(f"{v!r} is not a temperature (e.g. '22 degC')")
        return v

    @field_validator("pressure")
    @classmethod
    def _is_pressure(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            q = quantity(v)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
        if not q.check("[pressure]"):
            raise ValueError(f"{v!r} is not a pressure (e.g. '1 atm', '101.3 kPa')")
        return v

    def record(self) -> dict[str, Any]:
        """The declared conditions for metadata.json, each value with its unit."""
        out: dict[str, Any] = {}
        if self.atmosphere is not None:
            out["atmosphere"] = self.atmosphere
        for key, unit in (("o2_ppm", "ppm"), ("h2o_ppm", "ppm"),
                          ("relative_humidity", "%")):
            value = getattr(self, key)
            if value is not None:
                out[key.removesuffix("_ppm")] = {"value": value, "unit": unit}
        if self.ambient_temperature is not None:
            out["ambient_temperature"] = {"value": to(self.ambient_temperature, "degC"),
                                          "unit": "degC"}
        if self.pressure is not None:
            out["pressure"] = {"value": to(self.pressure, "kPa"), "unit": "kPa"}
        if self.note:
            out["note"] = self.note
        return out


class BenchConfig(_Strict):
    bench: BenchSection = Field(default_factory=BenchSection)
    conditions: ConditionsConfig | None = None
    devices: dict[str, DeviceConfig] = Field(default_factory=dict)
    vessels: dict[str, VesselConfig] = Field(default_factory=dict)
    materials: dict[str, MaterialConfig] = Field(default_factory=dict)

    # filled by load_config
    path: str = ""
    #: each device's spec, converted once (at load)
    _specs: dict[str, DeviceSpec] = PrivateAttr(default_factory=dict)

    def enabled_devices(self) -> dict[str, DeviceConfig]:
        return {n: d for n, d in self.devices.items() if d.enabled}

    def device_spec(self, name: str) -> DeviceSpec:
        """The typed spec a driver is built from, converted once (parse_config does it for
        every enabled device when the config loads)."""
        spec = self._specs.get(name)
        if spec is None:
            spec = self._specs[name] = _device_spec(name, self.devices[name])
        return spec

    def vessel_temperature_c(self, name: str) -> float:
        """A vessel's temperature as declared: its own `temperature`, else the declared
        ambient (`[conditions] ambient_temperature`), else 22 °C."""
        v = self.vessels[name]
        if v.temperature is not None:
            return to(v.temperature, "degC")
        if self.conditions is not None and self.conditions.ambient_temperature is not None:
            return to(self.conditions.ambient_temperature, "degC")
        return AMBIENT_C

    def world_spec(self) -> dict[str, Any]:
        """The simulated world (plain data for simulators/) from vessels and materials
        (asked once per bench start)."""
        return _world_spec(self)


def _device_spec(name: str, d: DeviceConfig) -> DeviceSpec:
    """A device's table converted: the driver's line settings with the config's overrides,
    the timeout in seconds, the limits parsed."""
    base = driver_class(d.driver).default_serial
    serial = base
    if d.serial is not None:
        overrides = {k: v for k, v in d.serial.model_dump().items() if v is not None}
        serial = SerialSettings(**{**base.__dict__, **overrides})
    return DeviceSpec(
        name=name,
        driver=d.driver,
        endpoint=d.endpoint,
        address=d.address,
        serial=serial,
        params=dict(d.params),
        limits=dict(d.limits),
        simulator=d.simulator.kind or d.driver,
        bus=d.bus,
        timeout_s=to(d.timeout, "s"),
    )


def _world_spec(cfg: BenchConfig) -> dict[str, Any]:
    materials: dict[str, Any] = {}
    for mid, m in cfg.materials.items():
        materials[mid] = {
            "name": m.name or mid,
            "phase": m.phase,
            "density_g_ml": to(m.density, "g/mL") if m.density else 1.0,
            "molar_mass_g_mol": to(m.molar_mass, "g/mol") if m.molar_mass else None,
            "melting_point_c": to(m.melting_point, "degC") if m.melting_point else None,
            "concentration_mol_l": (to(m.concentration, "mol/L") if m.concentration
                                    else None),
            "cas": m.cas,
        }
    vessels = {
        name: {
            "kind": v.kind,
            "capacity": f"{to(v.capacity, 'mL')} mL",
            "empty_mass_g": to(v.empty_mass, "g"),
            "temperature_c": cfg.vessel_temperature_c(name),
            "contents": {
                mid: (f"{to(a, 'mL')} mL" if quantity(a).check("[volume]")
                      else f"{to(a, 'g')} g")
                for mid, a in v.contents.items()
            },
        }
        for name, v in cfg.vessels.items()
    }
    return {"materials": materials, "vessels": vessels}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(data: dict[str, Any], path: str = "<config>") -> BenchConfig:
    """Validate a parsed config: the schema first, then references and values; every
    problem found is reported at once (one ConfigError listing them)."""
    try:
        cfg = BenchConfig.model_validate(data)
    except ValidationError as exc:
        problems = [(_loc(e["loc"]), str(e["msg"])) for e in exc.errors()]
        raise ConfigError(problems[0][1] if len(problems) == 1 else "invalid config",
                          file=path, key=problems[0][0], problems=problems) from None
    cfg.path = path
    problems = _reference_problems(cfg)
    problems += _value_problems(cfg)
    if problems:
        key, message = problems[0]
        raise ConfigError(message, file=path, key=key, problems=problems)
    # converted once, here: what every adapter and driver uses from now on
    for name in cfg.enabled_devices():
        cfg.device_spec(name)
    return cfg


def _value_problems(cfg: BenchConfig) -> list[tuple[str, str]]:
    from labctl.config_checks import bus_problems, device_problems, vessel_problems

    drivers = available_drivers()
    problems: list[tuple[str, str]] = []
    for name, d in cfg.devices.items():
        if not d.enabled:
            continue
        problems += device_problems(cfg, name, d)
        if d.driver in drivers:
            try:
                cls = driver_class(d.driver)
            except ConfigError:
                continue  # reported by the reference check
            problems += cls.config_problems(name, d.address, dict(d.params), dict(d.limits))
    problems += bus_problems(cfg)
    problems += vessel_problems(cfg)
    return problems


def _reference_problems(cfg: BenchConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    drivers = available_drivers()
    for name, d in cfg.devices.items():
        if not d.enabled:
            continue
        if d.driver not in drivers:
            problems.append((f"devices.{name}.driver",
                             f"unknown driver {d.driver!r} (installed: "
                             f"{', '.join(sorted(drivers))})"))
        if not cfg.bench.simulate and not d.endpoint:
            problems.append((f"devices.{name}.endpoint",
                             "endpoint is required when simulate = false"))
    for vname, v in cfg.vessels.items():
        for key in ("capacity", "empty_mass"):
            try:
                quantity(getattr(v, key))
            except UnitError as exc:
                problems.append((f"vessels.{vname}.{key}", str(exc)))
        for mid, amount in v.contents.items():
            key = f"vessels.{vname}.contents.{mid}"
            if mid not in cfg.materials:
                problems.append((key, f"unknown material {mid!r}"))
                continue
            try:
                q = quantity(amount)
            except UnitError as exc:
                problems.append((key, str(exc)))
                continue
            if not (q.check("[volume]") or q.check("[mass]")):
                problems.append((key, f"{amount!r} is neither a volume nor a mass"))
    return problems


def load_config(path: str | Path | None = None) -> BenchConfig:
    """Read and validate a bench config file (default config/sim.toml)."""
    p = Path(path) if path else DEFAULT_CONFIG
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(p)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(p)) from None
    return parse_config(data, str(p))
