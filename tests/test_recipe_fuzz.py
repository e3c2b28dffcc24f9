"""Fuzzing: arbitrary JSON and mutated example recipes. The validator answers with a Plan
or a RecipeError — never another exception, never an internal error — and never executes
anything (no eval/exec, no process, no device link) while it does."""

from __future__ import annotations

import builtins
import contextlib
import copy
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.config import BenchConfig
from labctl.recipe import Plan, RecipeError, build_plan
from tests.config_support import every_device_enabled, load_edited

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
EXAMPLES = {p.name: json.loads(p.read_text()) for p in sorted(RECIPES.glob("*.json"))}


def _bench() -> BenchConfig:
    return load_edited(ROOT / "config" / "sim.toml", every_device_enabled)


CFG = _bench()
# warm up: the first plan imports codecs and optional modules, which is not validation
for _doc in EXAMPLES.values():
    with contextlib.suppress(RecipeError):
        build_plan(_doc, {}, CFG, base_dir=RECIPES)


def _forbidden(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("validation must not execute or touch anything")


@contextlib.contextmanager
def nothing_executes() -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for target, name in ((builtins, "eval"), (builtins, "exec"), (os, "system"),
                             (os, "popen"), (subprocess, "Popen")):
            stack.enter_context(mock.patch.object(target, name, _forbidden))
        stack.enter_context(mock.patch("labctl.transport.LinkPool.get", _forbidden))
        stack.enter_context(mock.patch("labctl.instruments.Instruments.start", _forbidden))
        yield


def check(source: Any, params: dict[str, Any] | None = None) -> Plan | RecipeError:
    with nothing_executes():
        try:
            plan = build_plan(source, params or {}, CFG, base_dir=RECIPES)
        except RecipeError as exc:
            assert exc.issues
            for issue in exc.issues:
                assert isinstance(issue.path, str) and isinstance(issue.message, str)
                assert not issue.message.startswith("internal error"), issue
            return exc
    json.dumps(plan.recipe, allow_nan=False)
    return plan


json_scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=25,
)

keys = st.sampled_from(["schema", "name", "steps", "id", "device", "action", "args", "wait",
                        "parallel", "repeat", "for_each", "var", "in", "analysis", "include",
                        "params", "timeout", "retries", "on_error", "idempotent", "parameters",
                        "materials", "type", "unit", "default", "min", "max", "volume", "from",
                        "to", "flow", "speed", "duration", "temperature", "position", "mass"])
snippets = st.sampled_from([
    "${", "}", "${vol}", "${1/0}", "${__import__('os')}", "${x.y}", "${2 ** 99}", "${-}",
    "5 mL", "3 s", "25 degC", "1e308 mL", "-1 mL", "cell_vial", "@sel_valve", "../x.json",
    "/etc/passwd", "rinse.json", "pump_ec", "sel_valve", "dispenser", "potentiostat", "NaN",
    "${salt_molality * 2}", "${min(1 mL, 2)}", "", " ", "0", "9999999 rpm", "${vial}",
])
recipe_like = st.recursive(
    json_scalars | snippets,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30,
)

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=60)


@SETTINGS
@given(json_values)
def test_arbitrary_json_values(data: Any) -> None:
    source = data if isinstance(data, dict) else json.dumps(data)
    assert isinstance(check(source), RecipeError)


@SETTINGS
@given(st.dictionaries(keys, recipe_like, max_size=6))
def test_recipe_shaped_objects(data: dict[str, Any]) -> None:
    check({"schema": "labctl.recipe/1", "name": "fuzz", **data})


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    assert isinstance(check("{" + text), RecipeError)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], how: str, new: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return new if how == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "replace":
        parent[last] = new
    elif how == "delete":
        del parent[last]
    elif how == "duplicate" and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))
    elif how == "stringify":
        parent[last] = json.dumps(parent[last])
    return doc


@FEW
@given(st.sampled_from(sorted(EXAMPLES)), st.data())
def test_mutated_examples(name: str, data: st.DataObject) -> None:
    doc = EXAMPLES[name]
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths))
        how = data.draw(st.sampled_from(["replace", "delete", "duplicate", "stringify"]))
        new = data.draw(recipe_like) if how == "replace" else None
        doc = _mutate(doc, path, how, new)
    check(doc)


@FEW
@given(st.sampled_from(sorted(EXAMPLES)),
       st.dictionaries(st.sampled_from(["salt_molality", "ec_fraction", "solvent_volume",
                                        "temperature", "vial", "n_cycles", "c_rate",
                                        "teos_volume", "segment", "scan_rate", "nope"]),
                       snippets | st.text(max_size=12) | st.floats(allow_nan=False)
                       | st.integers(-5, 10**9), max_size=3))
def test_examples_with_fuzzed_parameters(name: str, params: dict[str, Any]) -> None:
    check(EXAMPLES[name], params)


def test_the_fuzzer_reaches_valid_plans_too() -> None:
    """Not every case is an error: the unmutated examples plan."""
    for name, doc in EXAMPLES.items():
        assert isinstance(check(doc), Plan), name
