"""Value checks of a bench config, run once at load, before any device is built or moved.

Each check returns `(key, reason)` problems; `parse_config` reports all of them at once.
Names of params and limits are labctl's configuration vocabulary (the one the action
catalogue reads); what only one protocol knows (its address range, its own options) comes
from the driver class's `config_problems`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from labctl.units import UnitError, quantity, to

if TYPE_CHECKING:
    from labctl.config import BenchConfig, DeviceConfig

Problem = tuple[str, str]

#: params that are amounts: name -> (unit it converts to, what it is, zero allowed, a bare
#: number allowed (then meaning `unit`, as the driver reads it))
AMOUNT_PARAMS: dict[str, tuple[str, str, bool, bool]] = {
    "syringe_volume": ("mL", "syringe volume", False, False),
    "syringe_diameter": ("mm", "syringe diameter", False, False),
    "default_flow": ("mL/min", "default flow", False, False),
    "cell_constant": ("1/cm", "cell constant", False, False),
    "electrode_area": ("cm^2", "electrode area", False, False),
    "head_content": ("g", "dosing head content", True, False),
    "tubing_ul_per_rev": ("uL", "tubing calibration", False, True),
    "dose_time_per_100mg": ("s", "dosing time", False, True),
    "stable_timeout": ("s", "stability timeout", False, True),
    "watchdog": ("s", "watchdog", True, True),
}
#: params that count things (positive integers)
COUNT_PARAMS: dict[str, str] = {
    "ports": "number of ports",
    "positions": "number of positions",
    "top_speed": "top speed (half-steps/s)",
}
#: params naming where liquid comes from / goes to, or the vessel a device works on
VESSEL_PARAMS = ("vessel", "source", "destination")
#: limits: name -> (unit, must be > 0)
LIMITS: dict[str, tuple[str, bool]] = {
    "max_flow": ("mL/min", True),
    "max_speed": ("rpm", True),
    "max_mass": ("g", True),
    "max_current": ("A", True),
    "max_potential": ("V", False),
    "min_potential": ("V", False),
    "max_temperature": ("degC", False),
    "min_temperature": ("degC", False),
    "max_frequency": ("Hz", True),
    "min_frequency": ("Hz", True),
}


def _amount(raw: Any, unit: str) -> tuple[float | None, str | None]:
    """(value in `unit`, None) or (None, why not)."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        return None, f"expected a quantity like '5 {unit}', got {raw!r}"
    if isinstance(raw, (int, float)):
        return None, f"{raw!r} has no unit (write it like '{raw} {unit}')"
    try:
        value = to(raw, unit)
    except UnitError as exc:
        return None, str(exc)
    except Exception as exc:  # pint's dimensionality / offset errors
        return None, f"{raw!r} is not a {unit} quantity ({type(exc).__name__})"
    if not math.isfinite(value):
        return None, f"{raw!r} is not a finite number"
    return value, None


def _positive(key: str, raw: Any, unit: str, what: str, allow_zero: bool) -> list[Problem]:
    value, why = _amount(raw, unit)
    if why is not None:
        return [(key, why)]
    assert value is not None
    if value < 0 or (value == 0 and not allow_zero):
        need = "at least 0" if allow_zero else "greater than 0"
        return [(key, f"{what} must be {need}, got {raw!r}")]
    return []


def _count(key: str, raw: Any, what: str) -> tuple[int | None, list[Problem]]:
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None, [(key, f"{what} must be a whole number, got {raw!r}")]
    if raw < 1:
        return None, [(key, f"{what} must be at least 1, got {raw}")]
    return raw, []


def _target_problems(cfg: BenchConfig, key: str, target: Any) -> list[Problem]:
    """A vessel name, or `@device` naming a configured routing device (one with ports)."""
    if not isinstance(target, str) or not target:
        return [(key, f"expected a vessel name or @device, got {target!r}")]
    if target.startswith("@"):
        other = cfg.devices.get(target[1:])
        if other is None:
            return [(key, f"{target!r} names no configured device")]
        if not other.enabled:
            return [(key, f"{target!r} is disabled")]
        if not isinstance(other.params.get("port_map"), dict):
            return [(key, f"{target!r} has no port_map to route through")]
        return []
    if target not in cfg.vessels:
        return [(key, f"unknown vessel {target!r} (vessels: {', '.join(cfg.vessels) or 'none'})")]
    return []


def device_problems(cfg: BenchConfig, name: str, d: DeviceConfig) -> list[Problem]:
    """Params, limits and timeout of one enabled device."""
    base = f"devices.{name}"
    out: list[Problem] = []
    out += _positive(f"{base}.timeout", d.timeout, "s", "reply timeout", False)
    p = d.params
    for pname, (unit, what, zero, bare) in AMOUNT_PARAMS.items():
        if pname not in p or (pname == "watchdog" and p[pname] in ("", 0)):
            continue
        raw = p[pname]
        if bare and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            raw = f"{raw} {unit}"
        out += _positive(f"{base}.params.{pname}", raw, unit, what, zero)
    counts: dict[str, int] = {}
    for pname, what in COUNT_PARAMS.items():
        if pname in p:
            n, probs = _count(f"{base}.params.{pname}", p[pname], what)
            out += probs
            if n is not None:
                counts[pname] = n
    for pname in VESSEL_PARAMS:
        if pname in p:
            out += _target_problems(cfg, f"{base}.params.{pname}", p[pname])
    if "vessels" in p:  # a vial block: every vessel on the device
        if not isinstance(p["vessels"], list) or not p["vessels"]:
            out.append((f"{base}.params.vessels", "expected a list of vessel names"))
        else:
            for i, v in enumerate(p["vessels"]):
                out += _target_problems(cfg, f"{base}.params.vessels[{i}]", v)
    for pname in ("sampler", "channels"):  # position/channel -> the vessel it reaches
        if pname not in p:
            continue
        table = p[pname]
        if not isinstance(table, dict):
            out.append((f"{base}.params.{pname}", f"expected a table {pname[:-1]} number = "
                                                  "vessel"))
            continue
        for k, v in table.items():
            key = f"{base}.params.{pname}.{k}"
            if not str(k).isdigit():
                out.append((key, f"{k!r} is not a {pname[:-1]} number (0, 1, ...)"))
            out += _target_problems(cfg, key, v)
    if "head_material" in p and p["head_material"] not in cfg.materials:
        out.append((f"{base}.params.head_material",
                    f"unknown material {p['head_material']!r}"))
    port_map = p.get("port_map")
    if port_map is not None:
        if not isinstance(port_map, dict):
            out.append((f"{base}.params.port_map", "expected a table port = vessel"))
        else:
            n_ports = counts.get("positions")
            if n_ports is None and str(p.get("valve", "distribution")).lower() == "distribution":
                n_ports = counts.get("ports")
            for port, target in port_map.items():
                key = f"{base}.params.port_map.{port}"
                if target == f"@{name}":
                    out.append((key, "a device cannot route through itself"))
                    continue
                out += _target_problems(cfg, key, target)
                if n_ports is not None and not (str(port).isdigit()
                                                and 1 <= int(port) <= n_ports):
                    out.append((key, f"port {port} is not one of 1..{n_ports}"))
    limits: dict[str, float] = {}
    for lname, raw in d.limits.items():
        key = f"{base}.limits.{lname}"
        if lname in LIMITS:
            unit, positive = LIMITS[lname]
            value, why = _amount(raw, unit)
            if why is not None:
                out.append((key, why))
                continue
            assert value is not None
            if positive and value <= 0:
                out.append((key, f"{lname} must be greater than 0, got {raw!r}"))
                continue
            limits[lname] = value
        elif isinstance(raw, str):
            try:
                if not math.isfinite(float(quantity(raw).magnitude)):
                    out.append((key, f"{raw!r} is not a finite number"))
            except UnitError:
                pass  # reported by the schema's own check
    for lname, value in limits.items():
        if lname.startswith("min_") and f"max_{lname[4:]}" in limits:
            hi = limits[f"max_{lname[4:]}"]
            if value >= hi:
                out.append((f"{base}.limits.{lname}",
                            f"{lname} {d.limits[lname]!r} must be below max_{lname[4:]} "
                            f"{d.limits['max_' + lname[4:]]!r}"))
    return out


def bus_problems(cfg: BenchConfig) -> list[Problem]:
    """Two enabled devices on one line (same endpoint, or same `bus`) need different
    addresses: the second would answer to the first one's commands."""
    out: list[Problem] = []
    lines: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, d in cfg.devices.items():
        if not d.enabled:
            continue
        if d.endpoint:
            lines[("endpoint", d.endpoint)].append(name)
        if d.bus:
            lines[("bus", d.bus)].append(name)
    reported: set[tuple[str, str]] = set()
    for (_, line), names in lines.items():
        seen: dict[str, str] = {}
        for name in names:
            d = cfg.devices[name]
            key = f"devices.{name}.address"
            if len(names) > 1 and d.address in (None, ""):
                if (name, "none") not in reported:
                    others = ", ".join(f"devices.{n}" for n in names if n != name)
                    out.append((key, f"no address, but the bus {line} is shared with "
                                     f"{others}"))
                    reported.add((name, "none"))
                continue
            addr = str(d.address).strip().upper()
            if addr.isdigit():
                addr = str(int(addr))
            first = seen.get(addr)
            if first is not None:
                if (name, first) not in reported:
                    out.append((key, f"address {d.address} is already used by "
                                     f"devices.{first} on the same bus {line}"))
                    reported.add((name, first))
            else:
                seen[addr] = name
    return out


def vessel_problems(cfg: BenchConfig) -> list[Problem]:
    """Capacities, empty masses, contents that fit; material densities and molar masses."""
    out: list[Problem] = []
    densities: dict[str, float] = {}
    for mid, m in cfg.materials.items():
        base = f"materials.{mid}"
        if m.density is not None:
            value, why = _amount(m.density, "g/mL")
            if why is not None or value is None or value <= 0:
                out.append((f"{base}.density", why or f"density must be greater than 0, "
                                                      f"got {m.density!r}"))
            else:
                densities[mid] = value
        if m.molar_mass is not None:
            out += _positive(f"{base}.molar_mass", m.molar_mass, "g/mol", "molar mass", False)
    for vname, v in cfg.vessels.items():
        base = f"vessels.{vname}"
        capacity, why = _amount(v.capacity, "mL")
        if why is not None:
            out.append((f"{base}.capacity", why))
            capacity = None
        elif capacity is not None and capacity <= 0:
            out.append((f"{base}.capacity", f"capacity must be greater than 0, got "
                                            f"{v.capacity!r}"))
            capacity = None
        out += _positive(f"{base}.empty_mass", v.empty_mass, "g", "empty mass", True)
        liquid_ml = 0.0
        for mid, amount in v.contents.items():
            key = f"{base}.contents.{mid}"
            try:
                q = quantity(amount)
            except UnitError:
                continue  # reported by the reference check
            material = cfg.materials.get(mid)
            if q.check("[volume]"):
                ml, why = _amount(amount, "mL")
            elif q.check("[mass]"):
                grams, why = _amount(amount, "g")
                ml = None if grams is None else grams / densities.get(mid, 1.0)
            else:
                continue  # reported by the reference check
            if why is not None or ml is None:
                out.append((key, why or f"{amount!r} is not a number"))
                continue
            if ml < 0:
                out.append((key, f"an amount cannot be negative, got {amount!r}"))
            elif material is not None and material.phase == "liquid":
                liquid_ml += ml
        if capacity is not None and liquid_ml > capacity * (1 + 1e-9):
            out.append((f"{base}.contents", f"{liquid_ml:g} mL of liquid does not fit in the "
                                            f"capacity {v.capacity}"))
    return out
