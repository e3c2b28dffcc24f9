"""Bench configuration (TOML): devices, vessels, materials, simulation.

A bad file gets a `ConfigError` naming the file, the key and the reason (exit code 2 from
the CLI). `config/sim.toml` is the default, simulated bench.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labctl.device import DeviceSpec
from labctl.errors import ConfigError
from labctl.transport import SerialSettings
from labctl.units import UnitError, quantity

DEFAULT_CONFIG = Path("config/sim.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SerialConfig(_Strict):
    baudrate: int | None = None
    bytesize: Literal[5, 6, 7, 8] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: float | None = Field(default=None, description="1, 1.5 or 2")
    xonxoff: bool | None = None


class SimulatorConfig(_Strict):
    kind: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class DeviceConfig(_Strict):
    driver: str
    endpoint: str = ""
    address: int | str | None = None
    bus: str | None = None
    enabled: bool = True
    timeout: str = "2 s"
    description: str = ""
    serial: SerialConfig | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, str | float | int] = Field(default_factory=dict)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)

    @field_validator("limits")
    @classmethod
    def _limits_are_quantities(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if isinstance(value, str):
                try:
                    quantity(value)
                except UnitError as exc:
                    raise ValueError(f"{key}: {exc}") from None
        return v


class MaterialConfig(_Strict):
    name: str = ""
    smiles: str | None = None
    inchikey: str | None = None
    supplier: str | None = None
    lot: str | None = None
    phase: Literal["liquid", "solid"] = "liquid"
    density: str | None = None  # "1.07 g/mL"
    molar_mass: str | None = None  # "90.08 g/mol"


class VesselConfig(_Strict):
    kind: Literal["reservoir", "vial", "waste"] = "vial"
    capacity: str = "20 mL"
    empty_mass: str = "0 g"
    contents: dict[str, str] = Field(default_factory=dict)
    description: str = ""


class BenchSection(_Strict):
    id: str = "bench"
    site: str = ""
    simulate: bool = False
    time_scale: float = Field(default=1.0, gt=0)
    recipes_dir: str = "recipes"


class BenchConfig(_Strict):
    bench: BenchSection = Field(default_factory=BenchSection)
    devices: dict[str, DeviceConfig] = Field(default_factory=dict)
    vessels: dict[str, VesselConfig] = Field(default_factory=dict)
    materials: dict[str, MaterialConfig] = Field(default_factory=dict)

    # filled by load_config
    path: str = ""

    def enabled_devices(self) -> dict[str, DeviceConfig]:
        return {n: d for n, d in self.devices.items() if d.enabled}

    def device_spec(self, name: str) -> DeviceSpec:
        d = self.devices[name]
        from labctl.registry import driver_class

        base = driver_class(d.driver).default_serial
        serial = base
        if d.serial is not None:
            overrides = {k: v for k, v in d.serial.model_dump().items() if v is not None}
            serial = SerialSettings(**{**base.__dict__, **overrides})
        from labctl.units import to

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

    def world_spec(self) -> dict[str, Any]:
        """The simulated world (plain data for simulators/) from vessels and materials."""
        from labctl.units import to

        materials: dict[str, Any] = {}
        for mid, m in self.materials.items():
            materials[mid] = {
                "name": m.name or mid,
                "phase": m.phase,
                "density_g_ml": to(m.density, "g/mL") if m.density else 1.0,
                "molar_mass_g_mol": to(m.molar_mass, "g/mol") if m.molar_mass else None,
            }
        vessels = {
            name: {
                "kind": v.kind,
                "capacity": f"{to(v.capacity, 'mL')} mL",
                "empty_mass_g": to(v.empty_mass, "g"),
                "contents": {
                    mid: (f"{to(a, 'mL')} mL" if quantity(a).check("[volume]")
                          else f"{to(a, 'g')} g")
                    for mid, a in v.contents.items()
                },
            }
            for name, v in self.vessels.items()
        }
        return {"materials": materials, "vessels": vessels}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(data: dict[str, Any], path: str = "<config>") -> BenchConfig:
    try:
        cfg = BenchConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        msgs = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors)
        raise ConfigError(msgs, file=path) from None
    cfg.path = path
    _check_references(cfg, path)
    return cfg


def _check_references(cfg: BenchConfig, path: str) -> None:
    from labctl.registry import available_drivers

    drivers = available_drivers()
    for name, d in cfg.devices.items():
        if not d.enabled:
            continue
        if d.driver not in drivers:
            raise ConfigError(
                f"unknown driver {d.driver!r} (installed: {', '.join(sorted(drivers))})",
                file=path, key=f"devices.{name}.driver",
            )
        if not cfg.bench.simulate and not d.endpoint:
            raise ConfigError("endpoint is required when simulate = false", file=path,
                              key=f"devices.{name}.endpoint")
        for port, vessel in (d.params.get("port_map") or {}).items():
            if vessel not in cfg.vessels and not str(vessel).startswith("@"):
                raise ConfigError(
                    f"port {port} connects to unknown vessel {vessel!r}",
                    file=path, key=f"devices.{name}.params.port_map.{port}",
                )
    for vname, v in cfg.vessels.items():
        for key in ("capacity", "empty_mass"):
            try:
                quantity(getattr(v, key))
            except UnitError as exc:
                raise ConfigError(str(exc), file=path, key=f"vessels.{vname}.{key}") from None
        for mid, amount in v.contents.items():
            if mid not in cfg.materials:
                raise ConfigError(f"unknown material {mid!r}", file=path,
                                  key=f"vessels.{vname}.contents.{mid}")
            try:
                q = quantity(amount)
            except UnitError as exc:
                raise ConfigError(str(exc), file=path,
                                  key=f"vessels.{vname}.contents.{mid}") from None
            if not (q.check("[volume]") or q.check("[mass]")):
                raise ConfigError(f"{amount!r} is neither a volume nor a mass", file=path,
                                  key=f"vessels.{vname}.contents.{mid}")


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
