"""Values for people: units the way a lab writes them.

Inside labctl quantities are SI floats under suffixed keys (`volume_l`, `c_rate_h`); people
read volumes in mL/µL (never litres), C-rates as `0.5 C` (not `0.5 1 / h`), capacities as
`1 mAh` (not `1 h * mA`). Display only: these strings are not meant to be parsed back
(recipes write `0.5 /h` and `1 mA*h`; `C` would be coulombs to pint).
"""

from __future__ import annotations

import math
import re
from typing import Any

#: canonical unit of a key suffix (labctl.units.SUFFIX_UNITS, longest suffix first)
_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_l_s", "L/s"), ("_v_s", "V/s"), ("_ohm", "ohm"), ("_rpm", "rpm"), ("_hz", "Hz"),
    ("_ah", "A*h"), ("_l", "L"), ("_g", "g"), ("_s", "s"), ("_c", "degC"), ("_v", "V"),
    ("_a", "A"), ("_h", "1/h"),
)

#: the unit recipes and people use for each canonical unit (for argument tables)
UNIT_LABELS: dict[str, str] = {
    "L": "mL, µL", "L/s": "mL/min", "s": "s, min, h", "g": "g, mg", "degC": "°C (degC)",
    "rpm": "rpm", "V": "V, mV", "A": "mA, µA", "Hz": "Hz, kHz", "V/s": "mV/s",
    "1/h": "C (C-rate)", "A*h": "mAh", "percent": "%", "K": "K, °C", "1/m": "1/cm",
    "m^2": "cm²", "A/m^2": "mA/cm²", "ohm": "Ω",
}

_PREFIXED: dict[str, tuple[tuple[float, str], ...]] = {
    # volumes never in litres: a bench moves mL and µL
    "L": ((1e-3, "mL"), (1e-6, "µL"), (1e-9, "nL")),
    "L/s": ((1e-3 / 60, "mL/min"), (1e-6 / 60, "µL/min")),
    "g": ((1.0, "g"), (1e-3, "mg"), (1e-6, "µg")),
    "V": ((1.0, "V"), (1e-3, "mV"), (1e-6, "µV")),
    "A": ((1.0, "A"), (1e-3, "mA"), (1e-6, "µA"), (1e-9, "nA"), (1e-12, "pA")),
    "A*h": ((1.0, "Ah"), (1e-3, "mAh"), (1e-6, "µAh")),
    "Hz": ((1e6, "MHz"), (1e3, "kHz"), (1.0, "Hz"), (1e-3, "mHz")),
    "V/s": ((1.0, "V/s"), (1e-3, "mV/s")),
    "ohm": ((1e6, "MΩ"), (1e3, "kΩ"), (1.0, "Ω"), (1e-3, "mΩ")),
}


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def quantity(value: float, unit: str, digits: int = 4) -> str:
    """A float in a canonical unit for people: '2.5 mL' (not '0.0025 L'), '0.5 C' (a C-rate,
    not '0.5 1 / h'), '1 mAh' (not '0.001 h * A'), '25 °C', '10 mL/min', '5 min'."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(
            value):
        return f"{value} {unit}".strip()
    if unit == "1/h":
        return f"{_number(value, digits)} C"
    if unit == "degC":
        return f"{_number(value, digits)} °C"
    if unit == "rpm":
        return f"{_number(value, digits)} rpm"
    if unit == "s":
        if abs(value) < 120:
            return f"{_number(value, digits)} s"
        if abs(value) < 7200:
            return f"{_number(value / 60, digits)} min"
        return f"{_number(value / 3600, digits)} h"
    scales = _PREFIXED.get(unit)
    if scales is None:
        return f"{_number(value, digits)} {unit_symbol(unit)}".strip()
    if value == 0:
        return f"0 {scales[0][1]}"
    for factor, symbol in scales:
        if abs(value) >= factor * 0.9995:
            return f"{_number(value / factor, digits)} {symbol}"
    factor, symbol = scales[-1]
    return f"{_number(value / factor, digits)} {symbol}"


def unit_symbol(unit: str) -> str:
    """A unit as written in a table head: 'mAh' for 'h * mA', 'C' for '1 / h', '°C'."""
    compact = unit.replace(" ", "").replace("·", "*")
    table = {"1/h": "C", "/h": "C", "degC": "°C", "ohm": "Ω", "percent": "%"}
    m = re.fullmatch(r"(?:h\*([mµunk]?)A|([mµunk]?)A\*h)", compact)
    if m:
        return f"{m.group(1) or m.group(2) or ''}Ah"
    return table.get(compact, unit)


def value_text(value: Any) -> str:
    """A pint quantity (or anything) for a message: '10 C' for a C-rate, '100 mAh', '2 mL'."""
    units = getattr(value, "units", None)
    if units is None:
        return str(value)
    mag = float(value.magnitude)
    mag_s = str(int(mag)) if mag.is_integer() and abs(mag) < 1e15 else f"{mag:.6g}"
    symbol = unit_symbol(re.sub(r"(?<![A-Za-z])([mµunk]?)l(?![A-Za-z])", r"\1L",
                                f"{units:~}"))
    return f"{mag_s} {symbol}".strip()


def reading(key: str, value: Any) -> str:
    """`plunger_volume_l`, 0.0025 -> 'plunger_volume 2.5 mL'; other keys as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key} {value}"
    for suffix, unit in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return f"{key[: -len(suffix)]} {quantity(float(value), unit)}"
    return f"{key} {_number(float(value), 4) if isinstance(value, float) else value}"


def short_time(iso: str | None) -> str:
    """'2026-12-05T13:12:51.123456+00:00' -> '2026-12-05 13:12:51' (UTC as recorded)."""
    if not iso:
        return ""
    m = re.match(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)", iso)
    return f"{m.group(1)} {m.group(2)}" if m else iso
