"""The `${…}` evaluator: arithmetic with units over names, and nothing else."""

from __future__ import annotations

import builtins
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from labctl.recipe.expressions import (
    POISON,
    ExpressionError,
    Unresolved,
    evaluate,
    format_value,
    substitute,
)
from labctl.units import Q_

NAMES: dict[str, Any] = {
    "salt_molality": Q_(1.2, "mol/kg"),
    "solvent_mass": Q_(10, "g"),
    "x": 2.0,
    "n": 3,
    "vial": "cell_vial",
    "T": Q_(25, "degC"),
}


@pytest.mark.parametrize(("text", "unit", "expected"), [
    ("salt_molality * solvent_mass * 151.9 g/mol", "g", 1.2 * 10 / 1000 * 151.9),
    ("2.5 mL * x", "mL", 5.0),
    ("50 mV/s", "V/s", 0.05),
    ("-3 ** 2", "", -9.0),
    ("2^3", "", 8.0),
    ("(1 + 2) * 3 - 4 / 2", "", 7.0),
    ("0.196 cm^2", "cm**2", 0.196),
    ("min(2 mL, 3 mL)", "mL", 2.0),
    ("max(1, x)", "", 2.0),
    ("abs(-2 V)", "V", 2.0),
    ("10 min", "s", 600.0),
    ("1.2 / x / 1 h", "1/h", 0.6),
    ("1.2 / x / 1 h/s", "s/h", 0.6),
    ("x / 2 mL/min", "min/mL", 1.0),
    ("5 mL/min / x", "mL/min", 2.5),
    ("n * 2", "", 6.0),
    ("1e-3 L + 1 mL", "mL", 2.0),
    ("2 %", "percent", 2.0),
    ("+x", "", 2.0),
])
def test_evaluates(text: str, unit: str, expected: float) -> None:
    value = evaluate(text, NAMES)
    got = value.to(unit).magnitude if unit else (
        value.to("dimensionless").magnitude if hasattr(value, "to") else value)
    assert got == pytest.approx(expected)


def test_a_number_and_its_unit_bind_tighter_than_operators() -> None:
    assert evaluate("6 mL / 2 mL", {}).to("dimensionless").magnitude == pytest.approx(3.0)


def test_names_in_scope_are_never_units() -> None:
    assert evaluate("2 * g", {"g": 4.0}) == 8.0
    assert evaluate("2 g", {}).to("g").magnitude == 2.0


# -- issue 12 item 13: unit names never leak into the names of an expression -----------------
#: unit names a recipe author might write alone, by mistake or for a missing parameter
UNIT_NAMES = ("rpm", "mL", "L", "min", "s", "h", "g", "mg", "V", "mV", "A", "mA", "degC",
              "K", "Hz", "percent", "mol", "m", "cm", "W", "Pa", "bar", "ohm", "minute")
FUNCTIONS = ("min", "max", "abs")


@pytest.mark.parametrize("unit", UNIT_NAMES)
def test_a_unit_name_alone_is_an_unknown_name(unit: str) -> None:
    """`${rpm}` was 1 rpm, `${mL}` 1 mL: a missing parameter became a unit quantity."""
    for text, position in ((unit, 0), (f"x * {unit}", 4), (f"2 mL / {unit}", 7),
                           (f"({unit})", 1), (f"max({unit}, 1)", 4)):
        with pytest.raises(ExpressionError) as info:
            evaluate(text, NAMES)
        assert f"unknown name {unit!r}" in str(info.value), text
        assert info.value.position == position, text
        assert not isinstance(info.value, Unresolved)


@pytest.mark.parametrize("unit", UNIT_NAMES)
def test_a_unit_right_after_a_number_still_is_a_unit(unit: str) -> None:
    value = evaluate(f"2 {unit}", {})
    assert value.magnitude == 2.0 and str(value.units) != "dimensionless"
    assert evaluate(f"x * 2 {unit}", NAMES).magnitude == pytest.approx(4.0)


@pytest.mark.parametrize(("text", "unit", "expected"), [
    ("volume * 2", "mL", 5.0),             # a quantity parameter keeps its unit
    ("volume / 1 min", "mL/min", 2.5),     # divide by a unit: write a number before it
    ("volume / 2 mL/min", "min", 1.25),    # a compound unit written without spaces
    ("min(volume, 1 mL)", "mL", 1.0),      # the functions are names only when called
    ("rpm * 2", "", 6.0),                  # a parameter named like a unit is the parameter
])
def test_names_in_scope_and_units_after_numbers(text: str, unit: str, expected: float) -> None:
    names = {"volume": Q_(2.5, "mL"), "rpm": 3.0}
    value = evaluate(text, names)
    got = value.to(unit).magnitude if unit else value
    assert got == pytest.approx(expected)


def test_a_spaced_slash_after_a_unit_is_division_by_a_name() -> None:
    """`10 mL / min` is not the unit mL/min: `min` must be a name, and is not one."""
    with pytest.raises(ExpressionError, match="unknown name 'min'"):
        evaluate("10 mL / min", {})
    assert evaluate("10 mL / t", {"t": 2.0}).to("mL").magnitude == pytest.approx(5.0)


_IDENT = st.one_of(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True),
                   st.sampled_from(UNIT_NAMES))
_TEMPLATES = ("{n}", "2 * {n}", "({n} + 1 mL)", "max({n}, 1 mL)", "1 mL * {n}", "-{n}",
              "{n} ** 2", "abs({n})", "3 mL/min / {n}", "{n} / 2 mL/min")


@settings(max_examples=300, deadline=None)
@given(name=_IDENT, template=st.sampled_from(_TEMPLATES), declared=st.booleans())
def test_every_bare_name_must_be_in_scope(name: str, template: str, declared: bool) -> None:
    """Every identifier an expression uses on its own is a parameter or loop variable in
    scope; anything else (a unit, a typo, a Python name) is "unknown name", whatever it
    looks like."""
    text = template.format(n=name)
    names: dict[str, Any] = {"other": 1.0}
    if declared:
        # a name in scope is never read as a unit, not even after a number: keep the
        # templates' own units out of the names
        assume(name not in ("mL", "min"))
        names[name] = Q_(2.0, "mL")
        value = evaluate(text, names)
        assert value is not None
        return
    with pytest.raises(ExpressionError) as info:
        evaluate(text, names)
    assert f"unknown name {name!r}" in str(info.value), text
    assert info.value.position == template.index("{n}")


@settings(max_examples=100, deadline=None)
@given(name=_IDENT.filter(lambda n: n not in FUNCTIONS))
def test_only_the_documented_functions_may_be_called(name: str) -> None:
    with pytest.raises(ExpressionError, match=f"unknown function {name!r}"):
        evaluate(f"{name}(1)", {name: 1.0})


def test_a_loop_variable_may_be_a_name() -> None:
    assert evaluate("vial", NAMES) == "cell_vial"


@pytest.mark.parametrize(("text", "fragment", "position"), [
    ("__import__('os').system('true')", "'__import__' is not allowed", 0),
    ("x + __class__", "'__class__' is not allowed", 4),
    ("x.real", "unexpected character '.'", 1),
    ("open('f')", "unexpected character", 5),
    ("exec(x)", "unknown function 'exec'", 0),
    ("eval", "unknown name 'eval'", 0),
    ("foo + 1", "unknown name 'foo'", 0),
    ("1 / 0", "division by zero", 2),
    ("x +", "unexpected end of expression", 3),
    ("(1 + 2", "expected ')'", 6),
    ("1 2", "unexpected '2'", 2),
    ("lambda: 1", "unexpected character ':'", 6),
    ("[1, 2]", "unexpected character '['", 0),
    ("x if x else 1", "unexpected 'if'", 2),
    ("vial + 1", "needs numbers or quantities", 5),
    ("1 m + 1 s", "incompatible units", 4),
    ("2 ** 1000", "exponent 1000 is larger than 64", 2),
    ("1e400", "too large", 0),
    ("2 mL ** (2 mL)", "exponent must be a plain number", 5),
    ("", "empty expression", 0),
    ("1 zorks", "unknown unit 'zorks'", 2),
    ("abs(1, 2)", "abs() takes one argument", 0),
    ("1.2 / x /h", "unknown name 'h'", 9),
    ("rpm", "unknown name 'rpm'", 0),
    ("mL", "unknown name 'mL'", 0),
])
def test_rejects_with_position(text: str, fragment: str, position: int | None) -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate(text, NAMES)
    assert fragment in str(info.value)
    if position is not None:
        assert info.value.position == position


def test_nesting_and_length_are_bounded() -> None:
    with pytest.raises(ExpressionError, match="nested deeper"):
        evaluate("(" * 200 + "1" + ")" * 200, {})
    with pytest.raises(ExpressionError, match="nested deeper"):
        evaluate("-" * 500 + "1", {})
    with pytest.raises(ExpressionError, match="longer than"):
        evaluate("1+" * 2000 + "1", {})


def test_nothing_is_handed_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluator works without eval, exec, compile or __import__ at all."""
    def forbidden(*a: Any, **k: Any) -> None:
        raise AssertionError("the evaluator must not call Python's evaluators")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert evaluate("3 mL * x + 1 mL", NAMES).to("mL").magnitude == pytest.approx(7.0)
    with pytest.raises(ExpressionError):
        evaluate("__import__('os')", NAMES)


def test_poisoned_names_are_unresolved_not_errors() -> None:
    with pytest.raises(Unresolved):
        evaluate("bad * 2", {"bad": POISON})


def test_substitute_whole_and_embedded() -> None:
    assert substitute("${2 * x} mL", NAMES) == "4 mL"
    assert substitute("sample_${n}", NAMES) == "sample_3"
    assert substitute("${vial}", NAMES) == "cell_vial"
    whole = substitute("${solvent_mass * 2}", NAMES)
    assert whole.to("g").magnitude == pytest.approx(20.0)
    assert substitute("no expression", NAMES) == "no expression"
    with pytest.raises(ExpressionError, match="unclosed"):
        substitute("${x", NAMES)


def test_format_value_round_trips_through_pint() -> None:
    for q in (Q_(8, "mL"), Q_(1.5, "mL/min"), Q_(25, "degC"), Q_(0.05, "mA/cm^2"),
              Q_(2, "mA*h")):
        text = format_value(q)
        back = Q_(text)
        assert back.to(q.units).magnitude == pytest.approx(q.magnitude)
    assert format_value(Q_(8, "mL")) == "8 mL"
    assert format_value(3.0) == "3" and format_value(True) == "true"
