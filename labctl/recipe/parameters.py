"""Typed recipe parameters: the declarations checked, the values given (by `--param` or an
AI server) parsed, defaulted and bounded.

A parameter whose value is wrong gets the POISON value so that the expressions using it are
skipped instead of piling up follow-on errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pint

from labctl.display import value_text
from labctl.recipe.expressions import POISON, format_value
from labctl.recipe.issues import Issue
from labctl.recipe.models import Parameter
from labctl.units import UnitError, quantity, ureg


class _Bad(ValueError):
    pass


def _as_quantity(value: Any, unit: str) -> pint.Quantity:
    """A quantity in the declared unit's dimension; a bare number means the declared
    unit (AI servers often send numbers)."""
    if isinstance(value, bool):
        raise _Bad(f"expected a quantity in {unit}, got {value!r}")
    if isinstance(value, pint.Quantity):
        q = ureg.Quantity(float(value.magnitude), unit) if value.unitless else value
    elif isinstance(value, (int, float)):
        q = ureg.Quantity(float(value), unit)
    elif isinstance(value, str):
        try:
            q = quantity(value)
        except UnitError as exc:
            raise _Bad(str(exc)) from None
        if q.unitless:
            q = ureg.Quantity(float(q.magnitude), unit)
    else:
        raise _Bad(f"expected a quantity in {unit}, got {value!r}")
    try:
        converted = float(q.to(unit).magnitude)
    except pint.DimensionalityError:
        raise _Bad(f"wrong unit: {value_text(q)} is not convertible to {unit}") from None
    except Exception as exc:
        raise _Bad(f"{value!r}: {exc}") from None
    if not math.isfinite(converted):
        raise _Bad(f"{value!r} is not finite")
    return q


def _as_number(value: Any, integer: bool) -> float | int:
    if isinstance(value, bool):
        raise _Bad(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            raise _Bad(f"expected a number, got {value!r}") from None
    else:
        raise _Bad(f"expected a number, got {value!r}")
    if not math.isfinite(x):
        raise _Bad(f"{value!r} is not finite")
    if integer:
        if not x.is_integer():
            raise _Bad(f"expected a whole number, got {value!r}")
        return int(x)
    return x


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no",
                                                            "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise _Bad(f"expected true or false, got {value!r}")


def _convert(decl: Parameter, value: Any) -> Any:
    if isinstance(value, pint.Quantity) and decl.type != "quantity":
        # the value of an expression (an include's params): a plain number, or text
        value = float(value.magnitude) if value.unitless else format_value(value)
    if decl.type == "quantity":
        return _as_quantity(value, decl.unit or "")
    if decl.type in ("number", "integer"):
        return _as_number(value, decl.type == "integer")
    if decl.type == "boolean":
        return _as_bool(value)
    if decl.type == "enum":
        choices = decl.choices or []
        for c in choices:
            if value == c or (isinstance(value, str) and value == format_value(c)):
                return c
        raise _Bad(f"{value!r} is not one of {', '.join(map(str, choices))}")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _Bad(f"expected text, got {value!r}")
    return str(value)


def _bound(decl: Parameter, which: str) -> Any:
    raw = getattr(decl, which)
    if raw is None:
        return None
    return _convert(decl, raw)


def check_declaration(name: str, decl: Parameter, path: str) -> list[Issue]:
    """The declaration itself: unit parseable, bounds and default of the right kind."""
    issues: list[Issue] = []
    if decl.type == "quantity":
        if not decl.unit:
            return [Issue(f"{path}.unit", "a quantity parameter needs a unit")]
        try:
            ureg.Unit(decl.unit)
        except Exception:
            return [Issue(f"{path}.unit", f"unknown unit {decl.unit!r}")]
    elif decl.unit is not None:
        issues.append(Issue(f"{path}.unit", f"only quantity parameters have a unit "
                                            f"(type is {decl.type})"))
    if decl.type == "enum" and not decl.choices:
        issues.append(Issue(f"{path}.choices", "an enum parameter needs choices"))
    if decl.type != "enum" and decl.choices is not None:
        issues.append(Issue(f"{path}.choices", f"only enum parameters have choices "
                                               f"(type is {decl.type})"))
    if decl.rack is not None and decl.type != "vial":
        issues.append(Issue(f"{path}.rack", f"only vial parameters have a rack (type is "
                                            f"{decl.type})"))
    if decl.type in ("string", "enum", "boolean", "vial", "sample"):
        for which in ("min", "max"):
            if getattr(decl, which) is not None:
                issues.append(Issue(f"{path}.{which}", f"a {decl.type} parameter has no "
                                                       f"{which}"))
        return issues
    lo = hi = None
    for which in ("min", "max"):
        try:
            b = _bound(decl, which)
        except _Bad as exc:
            issues.append(Issue(f"{path}.{which}", str(exc)))
            continue
        if which == "min":
            lo = b
        else:
            hi = b
    try:
        if lo is not None and hi is not None and lo > hi:
            issues.append(Issue(f"{path}.min", f"min {value_text(lo)} is above max "
                                               f"{value_text(hi)}"))
    except Exception:  # incomparable bounds were already reported
        pass
    return issues


def resolve_parameters(
    decls: Mapping[str, Parameter], given: Mapping[str, Any], path: str = "parameters",
    given_path: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[Issue]]:
    """(values for expressions, JSON-able values for the record, issues).
    `given_path` is where given values are blamed (default: the declaration's path)."""
    values: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    issues: list[Issue] = []
    for name in given:
        if name not in decls:
            known = ", ".join(decls) or "none"
            where = f"{given_path}.{name}" if given_path else f"{path}.{name}"
            issues.append(Issue(where, f"unknown parameter {name!r} (declared: {known})"))
    for name, decl in decls.items():
        p = f"{path}.{name}"
        decl_issues = check_declaration(name, decl, p)
        issues += decl_issues
        if decl_issues:
            values[name] = POISON
            continue
        source, raw = ("value", given[name]) if name in given else ("default", decl.default)
        where = (f"{given_path}.{name}" if given_path else p) if source == "value" else (
            f"{p}.default")
        if raw is None:
            issues.append(Issue(p, f"missing value for parameter {name!r} (no default)"))
            values[name] = POISON
            continue
        try:
            value = _convert(decl, raw)
            lo, hi = _bound(decl, "min"), _bound(decl, "max")
            if lo is not None and value < lo:
                raise _Bad(f"{value_text(value)} is below the minimum {value_text(lo)}")
            if hi is not None and value > hi:
                raise _Bad(f"{value_text(value)} is above the maximum {value_text(hi)}")
        except _Bad as exc:
            issues.append(Issue(where, f"parameter {name!r}: {exc}"))
            values[name] = POISON
            continue
        except Exception as exc:  # odd comparisons of odd values: reported, not raised
            issues.append(Issue(where, f"parameter {name!r}: {exc}"))
            values[name] = POISON
            continue
        values[name] = value
        shown[name] = format_value(value) if isinstance(value, pint.Quantity) else value
    return values, shown, issues


def typed_parameters(decls: Mapping[str, Parameter], values: Mapping[str, Any],
                     given: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The resolved parameters for the record, typed: per name its value as a JSON number,
    boolean or text (a quantity as its magnitude in the declared unit), the unit, the
    declared type, the text form and whether it was submitted or is the recipe's default.
    A downstream tool never has to parse "1.2 mol / kg" back."""
    out: dict[str, dict[str, Any]] = {}
    for name, decl in decls.items():
        value = values.get(name, POISON)
        if value is POISON or value is None:
            continue
        entry: dict[str, Any] = {"type": decl.type}
        if isinstance(value, pint.Quantity):
            unit = decl.unit or f"{value.units:~}"
            entry["value"] = float(value.to(unit).magnitude)
            entry["unit"] = unit
        else:
            entry["value"] = value
            entry["unit"] = None
        entry["text"] = format_value(value)
        entry["source"] = "submitted" if name in given else "default"
        out[name] = entry
    return out


def coerce_value(decl: Parameter | Mapping[str, Any], value: Any) -> Any:
    """A value typed the way its declaration says, as JSON data: an integer as an int, a
    number as a float, a boolean as a bool, an enum as its choice, a quantity as text
    with its unit as written ('3' for a mL parameter becomes '3 mL'). Text typed into a form or
    given on a command line thus records like a value an AI server sends. Bounds are the
    planner's to check. Raises ValueError naming what is wrong."""
    if not isinstance(decl, Parameter):
        decl = Parameter.model_validate(dict(decl))
    try:
        typed = _convert(decl, value.strip() if isinstance(value, str) else value)
    except _Bad as exc:
        raise ValueError(str(exc)) from None
    if isinstance(typed, pint.Quantity):
        if isinstance(value, str) and not quantity(value).unitless:
            return value.strip()  # as written ('20 mL/min'), known to parse and convert
        return format_value(ureg.Quantity(float(typed.magnitude), decl.unit or ""))
    return typed
