"""A small, safe evaluator for `${…}` in recipe strings.

Recipes are data written by people and by AI servers, so nothing in them is ever handed to
Python's eval/exec: this module tokenizes and parses the text itself (recursive descent)
and knows only numbers, quantities with units (pint), parameter and loop-variable names,
+ − × ÷, ** (or ^), parentheses, unary minus and the functions min, max and abs. Anything
else is an `ExpressionError` that says where.

A unit is read only right after a number (`2.5 mL`, `20 mL/min`, `0.196 cm^2`; a compound
unit is written without spaces around its `/`), and it binds tighter than the operators, so
`salt_molality * solvent_mass * 151.9 g/mol` reads as `… * (151.9 g/mol)`. Every other name
must be a parameter or a loop variable in scope, or one of the functions min, max, abs
(called): a unit name on its own (`${rpm}`, `${x / min}`) is an unknown name, never a unit,
so a missing parameter cannot quietly become "1 rpm". Write `${x / 1 min}` to divide by a
unit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pint

from labctl.units import ureg

MAX_LENGTH = 2000
MAX_DEPTH = 48
MAX_EXPONENT = 64.0

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<name>[^\W\d]\w*)
      | (?P<op>\*\*|[-+*/^(),%])
    """,
    re.VERBOSE | re.UNICODE,
)
_PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")


class ExpressionError(ValueError):
    """A `${…}` that is not a valid expression; `position` counts from 0 in `text`."""

    def __init__(self, message: str, text: str = "", position: int | None = None):
        self.reason = message
        self.text = text
        self.position = position
        where = f" at position {position}" if position is not None else ""
        shown = text if len(text) <= 80 else text[:77] + "..."
        super().__init__(f"bad expression '${{{shown}}}': {message}{where}")


class Unresolved(ExpressionError):
    """A name whose value is not known (a parameter that is itself in error, or a loop
    variable outside its loop). Callers may skip these silently."""


class _Poison:
    """The value of a parameter that failed its own checks."""

    def __repr__(self) -> str:
        return "<invalid>"


POISON = _Poison()


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, name, op, end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            raise ExpressionError(f"unexpected character {text[i]!r}", text, i)
        kind = m.lastgroup or ""
        if kind == "name" and m.group().startswith("__"):
            raise ExpressionError(f"name {m.group()!r} is not allowed", text, i)
        if kind != "ws":
            out.append(_Tok(kind, m.group(), i))
        i = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


def _unit(name: str) -> pint.Unit | None:
    """A pint unit by name; never a dunder or private name."""
    if name.startswith("_"):
        return None
    try:
        unit = ureg.parse_units(name)
    except Exception:  # pint raises several unrelated types for unknown names
        return None
    return unit if isinstance(unit, pint.Unit) else None


def _finite(value: Any, text: str, pos: int) -> Any:
    mag = value.magnitude if isinstance(value, pint.Quantity) else value
    if isinstance(mag, (int, float)) and not isinstance(mag, bool) and not math.isfinite(mag):
        raise ExpressionError("result is not a finite number", text, pos)
    return value


def _num(value: Any) -> bool:
    return isinstance(value, (int, float, pint.Quantity)) and not isinstance(value, bool)


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ;
    unary := ('-'|'+') unary | power ; power := atom (('**'|'^') unary)? ;
    atom := NUMBER unit? | NAME '(' args ')' | NAME | '(' expr ')'"""

    FUNCTIONS: ClassVar[dict[str, Callable[..., Any]]] = {"min": min, "max": max, "abs": abs}

    def __init__(self, text: str, names: Mapping[str, Any]):
        self.text = text
        self.names = names
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    # -- helpers ------------------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def error(self, message: str, pos: int | None = None) -> ExpressionError:
        return ExpressionError(message, self.text, self.tok.pos if pos is None else pos)

    def _apply(self, op: str, a: Any, b: Any, pos: int) -> Any:
        for v in (a, b):
            if not _num(v):
                raise self.error(f"{op!r} needs numbers or quantities, got {v!r}", pos)
        try:
            if op == "+":
                r = a + b
            elif op == "-":
                r = a - b
            elif op == "*":
                r = a * b
            elif op == "/":
                r = a / b
            else:
                r = self._power(a, b, pos)
        except ZeroDivisionError:
            raise self.error("division by zero", pos) from None
        except ExpressionError:
            raise
        except (pint.DimensionalityError, pint.OffsetUnitCalculusError) as exc:
            raise self.error(f"incompatible units: {exc}", pos) from None
        except (OverflowError, ValueError, TypeError, ArithmeticError) as exc:
            raise self.error(str(exc) or type(exc).__name__, pos) from None
        except pint.PintError as exc:
            raise self.error(str(exc), pos) from None
        return _finite(r, self.text, pos)

    def _power(self, a: Any, b: Any, pos: int) -> Any:
        if isinstance(b, pint.Quantity):
            if not b.dimensionless:
                raise self.error("an exponent must be a plain number", pos)
            b = float(b.to("dimensionless").magnitude)
        if abs(float(b)) > MAX_EXPONENT:
            raise self.error(f"exponent {b:g} is larger than {MAX_EXPONENT:g}", pos)
        if isinstance(a, pint.Quantity) and a.dimensionless and a.unitless:
            a = float(a.magnitude)
        if isinstance(a, (int, float)):
            a = float(a)
            if a < 0 and not float(b).is_integer():
                raise self.error("a negative number to a fractional power", pos)
        return a ** float(b)

    # -- grammar ------------------------------------------------------------------------
    def parse(self) -> Any:
        value = self.expr()
        if self.tok.kind != "end":
            raise self.error(f"unexpected {self.tok.text!r}")
        return value

    def expr(self) -> Any:
        value = self.term()
        while self.tok.kind == "op" and self.tok.text in "+-":
            op = self.take()
            value = self._apply(op.text, value, self.term(), op.pos)
        return value

    def term(self) -> Any:
        value = self.unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/"):
            op = self.take()
            value = self._apply(op.text, value, self.unary(), op.pos)
        return value

    def unary(self) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels")
        try:
            if self.tok.kind == "op" and self.tok.text in "+-":
                op = self.take()
                value = self.unary()
                if not _num(value):
                    raise self.error(f"unary {op.text!r} needs a number", op.pos)
                return -value if op.text == "-" else value
            return self.power()
        finally:
            self.depth -= 1

    def power(self) -> Any:
        base = self.atom()
        if self.tok.kind == "op" and self.tok.text in ("**", "^"):
            op = self.take()
            return self._apply("**", base, self.unary(), op.pos)
        return base

    def atom(self) -> Any:
        t = self.tok
        if t.kind == "num":
            self.take()
            try:
                number = float(t.text)
            except ValueError:  # pragma: no cover - the regex admits only floats
                raise self.error(f"bad number {t.text!r}", t.pos) from None
            if not math.isfinite(number):
                raise self.error(f"number {t.text} is too large", t.pos)
            unit = self.unit_after_number()
            if unit is None:
                return number
            try:
                return ureg.Quantity(number, unit)
            except Exception as exc:
                raise self.error(f"bad unit: {exc}", t.pos) from None
        if t.kind == "name":
            self.take()
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.call(t)
            if t.text in self.names:
                value = self.names[t.text]
                if value is POISON:
                    raise Unresolved(f"{t.text} has no valid value", self.text, t.pos)
                return value
            raise ExpressionError(f"unknown name {t.text!r}{self._name_hint(t.text)}",
                                  self.text, t.pos)
        if t.kind == "op" and t.text == "(":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"nested deeper than {MAX_DEPTH} levels")
            value = self.expr()
            self.depth -= 1
            if not (self.tok.kind == "op" and self.tok.text == ")"):
                raise self.error("expected ')'")
            self.take()
            return value
        if t.kind == "end":
            raise self.error("unexpected end of expression")
        raise self.error(f"unexpected {t.text!r}")

    def unit_after_number(self) -> Any:
        """`2.5 mL`, `50 mV/s`, `0.196 cm^2`, `2 %`: a unit written right after a number.
        Names that are variables in scope are never taken as units."""
        if self.tok.kind == "op" and self.tok.text == "%":
            self.take()
            return ureg.Unit("percent")
        unit = self._unit_factor()
        if unit is None:
            return None
        while (self.tok.kind == "op" and self.tok.text == "/"
               and self.tok.pos == self.toks[self.i - 1].pos + len(self.toks[self.i - 1].text)
               and self.toks[self.i + 1].kind == "name"
               and self.toks[self.i + 1].pos == self.tok.pos + 1
               and self.toks[self.i + 1].text not in self.names
               and not (self.toks[self.i + 2].kind == "op" and self.toks[self.i + 2].text == "(")
               and _unit(self.toks[self.i + 1].text) is not None):
            self.take()
            divisor = self._unit_factor()
            assert divisor is not None
            unit = unit / divisor
        return unit

    def _unit_factor(self) -> Any:
        t = self.tok
        if t.kind != "name" or t.text in self.names:
            return None
        if self.toks[self.i + 1].kind == "op" and self.toks[self.i + 1].text == "(":
            return None
        unit: Any = _unit(t.text)
        if unit is None:
            raise self.error(f"unknown unit {t.text!r}")
        self.take()
        if self.tok.kind == "op" and self.tok.text in ("^", "**"):
            nxt = self.toks[self.i + 1]
            sign = 1.0
            j = self.i + 1
            if nxt.kind == "op" and nxt.text in "+-":
                sign = -1.0 if nxt.text == "-" else 1.0
                j += 1
            if self.toks[j].kind == "num":
                exponent = sign * float(self.toks[j].text)
                if abs(exponent) > MAX_EXPONENT:
                    raise self.error(f"exponent {exponent:g} is larger than {MAX_EXPONENT:g}")
                self.i = j + 1
                unit = unit ** exponent
        return unit

    def _name_hint(self, name: str) -> str:
        """Why a name is unknown, and what is known: parameters and loop variables in
        scope (a unit goes right after a number)."""
        known = sorted(self.names)
        shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
        hint = f" (names in scope: {shown or 'none'})"
        if _unit(name) is not None:
            hint += f"; {name!r} is a unit, and a unit goes right after a number: '1 {name}'"
        return hint

    def call(self, name: _Tok) -> Any:
        fn = self.FUNCTIONS.get(name.text)
        if fn is None:
            raise ExpressionError(f"unknown function {name.text!r} (functions: "
                                  f"{', '.join(self.FUNCTIONS)})", self.text, name.pos)
        self.take()  # (
        args = [self.expr()]
        while self.tok.kind == "op" and self.tok.text == ",":
            self.take()
            args.append(self.expr())
        if not (self.tok.kind == "op" and self.tok.text == ")"):
            raise self.error("expected ')' or ','")
        self.take()
        for a in args:
            if not _num(a):
                raise self.error(f"{name.text}() needs numbers or quantities", name.pos)
        if name.text == "abs" and len(args) != 1:
            raise self.error("abs() takes one argument", name.pos)
        try:
            return fn(*args) if len(args) > 1 or name.text == "abs" else args[0]
        except (pint.DimensionalityError, pint.PintError, TypeError, ValueError) as exc:
            raise self.error(f"{name.text}(): {exc}", name.pos) from None


def evaluate(text: str, names: Mapping[str, Any]) -> Any:
    """The value of one expression (the inside of `${…}`): a float, a pint Quantity, or
    the value of a variable (a string for a loop over names)."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters", text[:40], 0)
    if not text.strip():
        raise ExpressionError("empty expression", text, 0)
    return _Parser(text, names).parse()


def has_expression(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def names_in(text: str) -> set[str]:
    """Names an expression string refers to (for telling loop-dependent strings)."""
    out: set[str] = set()
    for m in _PLACEHOLDER.finditer(text):
        try:
            toks = _tokenize(m.group(1))
        except ExpressionError:
            continue
        out.update(t.text for t in toks if t.kind == "name")
    return out


def format_value(value: Any) -> str:
    """A value as text that parses back ('2.5 mL', '3', 'cell_vial')."""
    if isinstance(value, pint.Quantity):
        mag = float(value.magnitude)
        mag_s = str(int(mag)) if mag.is_integer() and abs(mag) < 1e15 else f"{mag:.12g}"
        from labctl.actions import litres_upper

        units = litres_upper(f"{value.units:~}")
        return f"{mag_s} {units}" if units else mag_s
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.12g}"
    return str(value)


def substitute(text: str, names: Mapping[str, Any]) -> Any:
    """Resolve the `${…}` in a string. A string that is exactly one `${…}` becomes the
    expression's value; otherwise each is replaced by its value as text."""
    if "${" not in text:
        return text
    whole = _PLACEHOLDER.fullmatch(text)
    if whole is not None:
        return evaluate(whole.group(1), names)
    out: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        out.append(text[last:m.start()])
        out.append(format_value(evaluate(m.group(1), names)))
        last = m.end()
    out.append(text[last:])
    joined = "".join(out)
    if "${" in joined:
        pos = joined.find("${")
        raise ExpressionError("unclosed or nested '${'", text, pos)
    return joined
