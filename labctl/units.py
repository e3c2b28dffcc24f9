"""Units at the boundary.

Convention (used everywhere inside labctl): device methods take and return plain floats in
fixed units named by a suffix — `_l` litres, `_l_s` litres per second, `_g` grams, `_s`
seconds, `_c` degrees Celsius, `_rpm` revolutions per minute, `_v` volts, `_a` amperes,
`_hz` hertz, `_ohm` ohms. Recipes and configuration carry strings with units (`"2.5 mL"`);
they are converted once, here, with pint.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pint


def _make_registry() -> pint.UnitRegistry:
    """Pint parses its definition files on every start (~0.5 s); its disk cache makes every
    `labctl` command start faster. A read-only home just means no cache."""
    try:
        return pint.UnitRegistry(autoconvert_offset_to_baseunit=True, cache_folder=":auto:")
    except Exception:  # pint's cache layer can fail in odd ways; the plain registry works
        return pint.UnitRegistry(autoconvert_offset_to_baseunit=True)


ureg: pint.UnitRegistry = _make_registry()
ureg.formatter.default_format = "~P"
Q_ = ureg.Quantity

# The unit each suffix stands for.
SUFFIX_UNITS: dict[str, str] = {
    "l": "L",
    "l_s": "L/s",
    "g": "g",
    "s": "s",
    "c": "degC",
    "rpm": "rpm",
    "v": "V",
    "a": "A",
    "hz": "Hz",
    "ohm": "ohm",
    "v_s": "V/s",
}


class UnitError(ValueError):
    """A quantity string could not be parsed or has the wrong dimension."""


@lru_cache(maxsize=4096)
def _parse(text: str) -> pint.Quantity:
    try:
        q: Any = ureg.Quantity(text)
    except Exception as exc:  # pint raises several unrelated types
        raise UnitError(f"cannot parse quantity {text!r}: {exc}") from None
    if not isinstance(q, pint.Quantity):
        q = ureg.Quantity(q, "dimensionless")
    return q


def quantity(value: Any) -> pint.Quantity:
    """Parse a string like '2.5 mL' (or pass a Quantity through)."""
    if isinstance(value, pint.Quantity):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ureg.Quantity(value, "dimensionless")
    if not isinstance(value, str):
        raise UnitError(f"expected a quantity string with units, got {value!r}")
    return _parse(value.strip())


def to(value: Any, unit: str) -> float:
    """Convert a quantity (string or Quantity) to a float in `unit`, checking the dimension."""
    if isinstance(value, str):
        return _text_to(value, unit)
    return _to(value, unit)


@lru_cache(maxsize=8192)
def _text_to(text: str, unit: str) -> float:
    """`to` for a string: the same few strings (a material's density, a step's volume) are
    converted again and again (every journal event a run's samples are rebuilt from), and
    pint's conversion costs ~25 µs each time."""
    return _to(text, unit)


def _to(value: Any, unit: str) -> float:
    q = quantity(value)
    try:
        return float(q.to(unit).magnitude)
    except pint.DimensionalityError:
        deltas: dict[Any, str] = {ureg.Unit("degC"): "delta_degC", ureg.Unit("degF"): "delta_degF"}
        if unit.startswith("delta_") and q.units in deltas:
            # a temperature *difference* written '5 degC' means 5 delta_degC
            return float(ureg.Quantity(q.magnitude, deltas[q.units]).to(unit).magnitude)
        raise UnitError(
            f"{value!s} has the wrong dimension: expected {ureg.Unit(unit).dimensionality}, "
            f"got {q.dimensionality}"
        ) from None


def fmt(value: float, unit: str, digits: int = 4) -> str:
    """Human form of a float in a given unit, compacted ('0.005 L' -> '5 mL')."""
    q: Any = ureg.Quantity(value, unit)
    try:
        q = q.to_compact()
    except pint.OffsetUnitCalculusError:  # offset units (°C) take no prefix: as given
        pass
    return f"{q.magnitude:.{digits}g} {q.units:~P}"
