"""Typed arguments of actions and their coercion from recipe values.

An `Arg` turns what a recipe author wrote ('2.5 mL', 3, "true", a pint Quantity) into the
SI value the action runs with, or raises ValueError with a message for that author.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import pint

from labctl.actions.display import fmt, litres_upper
from labctl.units import UnitError, quantity, to, ureg

#: human names of the dimensions of canonical units, for error messages
DIMENSION_NAMES: dict[str, str] = {
    "L": "volume", "L/s": "flow", "s": "duration", "g": "mass", "degC": "temperature",
    "rpm": "speed", "V": "potential", "A": "current", "Hz": "frequency", "V/s": "scan rate",
    "1/h": "C-rate", "A*h": "capacity", "percent": "percentage",
}

#: an example value per canonical unit, for editors' JSON Schemas
_EXAMPLES: dict[str, str] = {
    "L": "2.5 mL", "L/s": "10 mL/min", "s": "10 min", "g": "0.5 g", "degC": "25 degC",
    "rpm": "500 rpm", "V": "0.1 V", "A": "1 mA", "Hz": "100 kHz", "V/s": "50 mV/s",
    "1/h": "0.1 /h", "A*h": "2 mA*h",
}

ArgKind = Literal["quantity", "number", "integer", "boolean", "string", "enum", "target",
                  "position", "phases"]

#: what a resolved argument holds: an SI float, an integer, a flag, a name, or phases
ArgValue = float | int | bool | str | list[Any] | None

#: a JSON Schema fragment
Schema = dict[str, object]


@dataclass(frozen=True)
class Arg:
    """One typed argument. `key` is its name in the resolved args (SI suffix)."""

    name: str
    kind: ArgKind
    key: str = ""
    unit: str | None = None
    required: bool = True
    default: ArgValue = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # in `unit`, or plain for numbers
    exclusive_minimum: bool = False
    description: str = ""
    #: what the quantity is, for messages ("wavelength"), when its unit does not say it
    what: str = ""

    @property
    def rkey(self) -> str:
        return self.key or self.name

    @property
    def dimension(self) -> str:
        return self.what or DIMENSION_NAMES.get(self.unit or "", self.unit or "")

    def json_schema(self) -> Schema:
        """A JSON Schema fragment for editors and AI servers."""
        expr = {"type": "string", "pattern": r"^.*\$\{.*\}.*$"}
        if self.kind == "quantity":
            if self.unit == "percent":
                return {"anyOf": [{"type": "number"}, {"type": "string"}]}
            example = _EXAMPLES.get(self.unit or "", "")
            return {"type": "string",
                    "description": f"{self.dimension} with units, e.g. '{example}'"}
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

    def describe(self) -> dict[str, object]:
        """The argument as plain data (the public catalogue, generated docs)."""
        return {"name": self.name, "kind": self.kind, "key": self.rkey, "unit": self.unit,
                "dimension": self.dimension or None, "required": self.required,
                "default": self.default, "choices": list(self.choices),
                "minimum": self.minimum, "exclusive_minimum": self.exclusive_minimum,
                "description": self.description}

    def coerce(self, value: object) -> ArgValue:
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
            return _coerce_position(value)
        if self.kind == "phases":
            if not isinstance(value, list) or not value:
                raise ValueError("expected a non-empty list of phases")
            return value
        raise ValueError(f"unsupported argument kind {self.kind}")  # pragma: no cover


def Q(name: str, unit: str, key: str, *, required: bool = True, default: ArgValue = None,
      positive: bool = False, nonneg: bool = False, description: str = "",
      what: str = "") -> Arg:
    """A quantity argument (shorthand for the catalogues)."""
    return Arg(name, "quantity", key=key, unit=unit, required=required, default=default,
               minimum=0.0 if (positive or nonneg) else None, exclusive_minimum=positive,
               description=description, what=what)


def format_quantity(q: pint.Quantity) -> str:
    """A quantity as a string pint parses back ('2.5 mL', '25 °C')."""
    mag = q.magnitude
    if isinstance(mag, float) and mag.is_integer() and abs(mag) < 1e15:
        mag_s = str(int(mag))
    else:
        mag_s = f"{float(mag):.12g}"
    units = litres_upper(f"{q.units:~}")
    return f"{mag_s} {units}".strip() if units else mag_s


def _show(value: object) -> str:
    if isinstance(value, pint.Quantity):
        return format_quantity(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce_position(value: object) -> int | str:
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


def _coerce_number(value: object) -> float:
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


def _coerce_quantity(value: object, unit: str, dimension: str, minimum: float | None,
                     exclusive: bool) -> float:
    bare_ok = unit == "percent"
    if isinstance(value, bool):
        raise ValueError(f"expected a {dimension} with units, got {_show(value)}")
    if isinstance(value, (int, float)):
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
