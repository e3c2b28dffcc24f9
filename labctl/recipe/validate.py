"""Validation of a recipe against a bench, producing the Plan.

The checks run in the order of the recipe issue — JSON syntax (line, column), schema (JSON
path of each fault), parameters (unknown, missing, out of bounds, wrong unit), expressions,
then the bench: devices exist, are enabled and support the action, arguments within each
device's limits, vessels exist and never overflow, materials are available where they are
taken, parallel branches do not share a device. Every issue is collected and reported at
once, each with its JSON path; nothing here touches a device.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pint
from pydantic import ValidationError

from labctl.actions import (
    ACTIONS,
    ActionSpec,
    Arg,
    DeviceView,
    Effect,
    driver_capabilities,
    fmt,
    get_action,
)
from labctl.config import BenchConfig
from labctl.estimates import action_estimate_s, analysis_estimate_s
from labctl.recipe.expressions import (
    POISON,
    ExpressionError,
    Unresolved,
    format_value,
    substitute,
)
from labctl.recipe.inventory import Inventory, Levels
from labctl.recipe.issues import Issue, RecipeError
from labctl.recipe.loading import (
    MAX_INCLUDE_DEPTH,
    Document,
    RecipeSource,
    include_path,
    load_source,
    read_file,
)
from labctl.recipe.models import (
    STEP_TAGS,
    ActionStep,
    AnalysisStep,
    ForEachStep,
    IncludeStep,
    InlinedStep,
    Material,
    ParallelStep,
    Recipe,
    RepeatStep,
    SequenceStep,
    WaitStep,
)
from labctl.recipe.parameters import resolve_parameters, typed_parameters
from labctl.recipe.plan import MaterialUse, Plan, PlannedStep
from labctl.recipe.vessel_params import check_vessel_parameters, rack_vials
from labctl.units import quantity

#: (levels, reserved) of a persisted inventory (labctl.store.inventory) to validate from
Stock = tuple[Levels | None, Levels | None]

MAX_REPEAT = 10_000
MAX_STEPS = 50_000
#: analysis args that name earlier steps (resolved to plan ids)
DATA_REF_KEYS = ("data", "step", "steps", "source", "anodic_step", "cathodic_step")

_DURATION = Arg("duration", "quantity", unit="s", minimum=0.0)
_TIMEOUT = Arg("timeout", "quantity", unit="s", minimum=0.0, exclusive_minimum=True)
_COUNT = Arg("repeat", "integer", minimum=0)


class _TooBig(Exception):
    pass


@dataclass(frozen=True)
class _Ctx:
    doc: Document
    id_prefix: str
    names: Mapping[str, Any]
    chain: tuple[Path, ...]
    loop: str | None = None
    params: frozenset[str] = frozenset()


def _loc_path(loc: tuple[Any, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if part in STEP_TAGS or part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "$"


def _schema_message(err: Any) -> str:
    kind = err.get("type", "")
    loc = err.get("loc", ())
    last = next((str(p) for p in reversed(loc) if isinstance(p, str) and p not in STEP_TAGS),
                "")
    if kind == "extra_forbidden":
        return f"unknown field {last!r}"
    if kind == "missing":
        return f"missing required field {last!r}"
    if kind == "string_pattern_mismatch" and last == "id":
        return ("a step id starts with a letter or '_' and has letters, digits, '_' or '-' "
                "(at most 64; no dots or brackets)")
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "[key]":
        return f"{loc[-2]!r} is not a valid name (letters, digits and '_', starting with a letter)"
    if kind == "literal_error" and last == "schema":
        return "expected \"labctl.recipe/1\""
    if kind == "model_type" and not loc:
        return "a recipe is a JSON object"
    return str(err.get("msg", "invalid"))


def parse_recipe(data: Any, prefix: str = "") -> tuple[Recipe | None, list[Issue]]:
    """The schema check: a Recipe, or the issues with their JSON paths."""
    if not isinstance(data, dict):
        return None, [Issue(prefix.rstrip(".") or "$", "a recipe is a JSON object, not "
                                                       f"{type(data).__name__}")]
    try:
        return Recipe.model_validate(data), []
    except ValidationError as exc:
        issues = [Issue(_loc_path(tuple(e["loc"]), prefix.rstrip(".")), _schema_message(e))
                  for e in exc.errors()]
        seen: set[tuple[str, str]] = set()
        unique = []
        for i in issues:
            if (i.path, i.message) not in seen:
                seen.add((i.path, i.message))
                unique.append(i)
        return None, unique


def _analyses() -> dict[str, Any] | None:
    """The analysis registry when it is importable (labctl.analysis)."""
    try:
        from labctl.analysis import ANALYSES
    except Exception:  # not written yet, or broken: names are then not checked
        return None
    try:
        return dict(ANALYSES)
    except Exception:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, pint.Quantity):
        return format_value(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return value
    return value


class Compiler:
    """One validation pass: walks the steps, expands loops and includes, collects issues."""

    def __init__(self, cfg: BenchConfig, root: Path, stock: Stock | None = None):
        self.cfg = cfg
        self.root = root
        #: persisted levels and reservations the material flow starts from
        self.stock = stock
        self.issues: list[Issue] = []
        self._seen: set[tuple[str, str]] = set()
        self.count = 0
        self.effects: dict[str, list[Effect]] = {}
        self.leaves: dict[str, PlannedStep] = {}
        self.failed: set[str] = set()  # steps already reported, so references stay quiet
        self.seq: dict[str, int] = {}  # planning order of each step id
        self.first_failure = MAX_STEPS + 1  # planning order of the first rejected step
        self.materials: dict[str, Material] = {}
        self.includes: list[str] = []
        self.inlined: dict[str, tuple[dict[str, Any], Mapping[str, Any], Document]] = {}
        self.analyses = _analyses()

    # -- issues ---------------------------------------------------------------------------
    def issue(self, path: str, message: str, loop: str | None = None) -> None:
        key = (path, message)
        if key in self._seen:
            return
        self._seen.add(key)
        self.issues.append(Issue(path, message + (f" (in {loop})" if loop else "")))

    # -- values -------------------------------------------------------------------------
    def evaluate(self, value: Any, names: Mapping[str, Any], path: str,
                 loop: str | None) -> tuple[bool, Any]:
        """Resolve `${…}` anywhere in a value; (False, None) after reporting a problem."""
        if isinstance(value, str):
            if "${" not in value:
                return True, value
            try:
                return True, substitute(value, names)
            except Unresolved:
                return False, None
            except ExpressionError as exc:
                self.issue(path, str(exc), loop)
                return False, None
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            ok = True
            for k, v in value.items():
                good, out[k] = self.evaluate(v, names, f"{path}.{k}", loop)
                ok = ok and good
            return ok, out
        if isinstance(value, list):
            items: list[Any] = []
            ok = True
            for i, v in enumerate(value):
                good, item = self.evaluate(v, names, f"{path}[{i}]", loop)
                items.append(item)
                ok = ok and good
            return ok, items
        return True, value

    def coerce(self, arg: Arg, raw: Any, names: Mapping[str, Any], path: str,
               loop: str | None) -> Any:
        ok, value = self.evaluate(raw, names, path, loop)
        if not ok:
            return None
        try:
            return arg.coerce(value)
        except ValueError as exc:
            self.issue(path, str(exc), loop)
            return None

    # -- materials ----------------------------------------------------------------------
    def check_materials(self, materials: Mapping[str, Material], path: str) -> None:
        cfg = self.cfg
        for mid, m in materials.items():
            p = f"{path}.{mid}"
            self.materials.setdefault(mid, m)
            holders = [v for v, vc in cfg.vessels.items() if mid in vc.contents]
            heads = [d for d, dc in cfg.enabled_devices().items()
                     if dc.params.get("head_material") == mid]
            loc = m.location
            if loc:
                if loc in cfg.vessels:
                    if mid not in cfg.vessels[loc].contents:
                        held = ", ".join(cfg.vessels[loc].contents) or "nothing"
                        self.issue(f"{p}.location", f"{loc} holds {held}, not {mid}")
                elif loc in cfg.devices:
                    dc = cfg.devices[loc]
                    head = dc.params.get("head_material")
                    if not dc.enabled:
                        self.issue(f"{p}.location", f"device {loc!r} is disabled on bench "
                                                    f"{cfg.bench.id} (enabled = false)")
                    elif head != mid:
                        self.issue(f"{p}.location", f"{loc} doses {head or 'nothing'}, "
                                                    f"not {mid}")
                else:
                    self.issue(f"{p}.location", f"no vessel or device {loc!r} on bench "
                                                f"{cfg.bench.id}")
            elif not holders and not heads:
                if mid not in cfg.materials:
                    known = ", ".join(sorted(cfg.materials)) or "none"
                    self.issue(p, f"unknown material {mid!r}: bench {cfg.bench.id} has no such "
                                  f"material (materials: {known})")
                else:
                    self.issue(p, f"{mid} is not available on bench {cfg.bench.id}: no "
                                  "reservoir holds it and no enabled dispenser doses it")

    # -- steps --------------------------------------------------------------------------
    def steps(self, steps: list[Any], path: str, ctx: _Ctx) -> list[PlannedStep]:
        out: list[PlannedStep] = []
        first: dict[str, int] = {}
        for i, st in enumerate(steps):
            p = f"{path}[{i}]"
            if st.id in first:
                self.issue(f"{p}.id", f"duplicate step id {st.id!r} (also {path}[{first[st.id]}])")
            first.setdefault(st.id, i)
            planned = self.step(st, p, ctx)
            if planned is not None:
                out.append(planned)
        return out

    def step(self, st: Any, p: str, ctx: _Ctx) -> PlannedStep | None:
        self.count += 1
        order = self.count
        if self.count > MAX_STEPS:
            raise _TooBig(p)
        if isinstance(st, ActionStep):
            planned = self.action(st, p, ctx)
        elif isinstance(st, WaitStep):
            planned = self.wait(st, p, ctx)
        elif isinstance(st, ParallelStep):
            planned = self.parallel(st, p, ctx)
        elif isinstance(st, RepeatStep | ForEachStep):
            planned = self.loop(st, p, ctx)
        elif isinstance(st, SequenceStep):
            pid = ctx.id_prefix + st.id
            children = self.steps(st.steps, f"{p}.steps", replace(ctx, id_prefix=pid + "."))
            planned = PlannedStep(pid, p, "sequence", children=children,
                                  estimated_s=sum(c.estimated_s for c in children),
                                  description=st.description or f"Sequence {st.id}")
        elif isinstance(st, AnalysisStep):
            planned = self.analysis(st, p, ctx)
        elif isinstance(st, IncludeStep):
            planned = self.include(st, p, ctx)
        elif isinstance(st, InlinedStep):
            planned = self.inlined_include(st, p, ctx)
        else:  # pragma: no cover - the schema admits no other kind
            self.issue(p, "unknown kind of step")
            return None
        if planned is not None:
            self.options(st, planned, p, ctx)
            self.seq[planned.id] = order
        else:
            self.failed.add(ctx.id_prefix + st.id)
            self.first_failure = min(self.first_failure, order)
        return planned

    def options(self, st: Any, planned: PlannedStep, p: str, ctx: _Ctx) -> None:
        planned.retries = st.retries
        planned.on_error = st.on_error
        if st.on_error == "retry" and st.retries < 1:
            self.issue(f"{p}.retries", "on_error \"retry\" needs retries of at least 1",
                       ctx.loop)
        if st.retries > 0:
            unsafe = next((leaf for leaf in planned.leaves() if not leaf.retry_safe), None)
            if unsafe is not None:
                where = "" if unsafe is planned else f"step {unsafe.id} inside it: "
                self.issue(f"{p}.retries",
                           f"{where}'{unsafe.device}.{unsafe.action}' moves material and "
                           "cannot tell how much a failed attempt moved, so it is never "
                           "retried automatically (a retry could add it twice); leave "
                           "retries out and decide with `labctl resume`", ctx.loop)
        if st.idempotent:
            mover = next((leaf for leaf in planned.leaves() if leaf.moves_material), None)
            if mover is planned:
                self.issue(f"{p}.idempotent", f"'{st.device}.{st.action}' moves material and "
                                              "can never be re-run without an operator's "
                                              "decision", ctx.loop)
                return
            if mover is not None:
                self.issue(f"{p}.idempotent", f"step {mover.id} ('{mover.device}."
                                              f"{mover.action}') inside it moves material and "
                                              "can never be re-run without an operator's "
                                              "decision", ctx.loop)
                return
        if st.idempotent is not None:
            planned.idempotent = st.idempotent
        if st.description:
            planned.description = st.description
        if st.timeout is not None:
            t = self.coerce(_TIMEOUT, st.timeout, ctx.names, f"{p}.timeout", ctx.loop)
            if t is not None:
                planned.timeout_s = t
                if t < planned.estimated_s * (1 - 1e-9):
                    self.issue(f"{p}.timeout", f"timeout {fmt(t, 's')} is shorter than the "
                                               f"step's estimated {fmt(planned.estimated_s, 's')}",
                               ctx.loop)

    def action(self, st: ActionStep, p: str, ctx: _Ctx) -> PlannedStep | None:
        cfg = self.cfg
        dc = cfg.devices.get(st.device)
        if dc is None:
            known = ", ".join(sorted(cfg.enabled_devices())) or "none"
            self.issue(f"{p}.device", f"unknown device {st.device!r} on bench {cfg.bench.id} "
                                      f"(devices: {known})")
            return None
        if not dc.enabled:
            self.issue(f"{p}.device", f"device {st.device!r} is disabled on bench "
                                      f"{cfg.bench.id} (enabled = false)")
            return None
        caps = driver_capabilities(dc.driver)
        spec: ActionSpec | None = None
        cap = caps[0] if caps else ""
        for c in caps:
            spec = get_action(c, st.action)
            if spec is not None:
                cap = c
                break
        if spec is None:
            offered = sorted({n for c in caps for n in ACTIONS.get(c, {})})
            self.issue(f"{p}.action", f"{st.device} ({', '.join(caps) or 'no known capability'})"
                                      f" does not support action {st.action!r} (actions: "
                                      f"{', '.join(offered) or 'none'})")
            return None
        view = DeviceView(st.device, cap, dc, cfg)
        ok, raw = self.evaluate(st.args, ctx.names, f"{p}.args", ctx.loop)
        if not ok:
            return None
        args, problems = spec.resolve(raw)
        if not problems:
            problems = spec.check(view, args)
        for arg, message in problems:
            self.issue(f"{p}.args.{arg}", message, ctx.loop)
        if problems:
            return None
        pid = ctx.id_prefix + st.id
        effects = spec.effects(view, args)
        planned = PlannedStep(
            pid, p, "action", device=st.device, action=st.action, capability=cap,
            args=_jsonable(args), estimated_s=action_estimate_s(spec, view, args),
            description=spec.describe(view, args), moves_material=spec.moves_material,
            idempotent=not spec.moves_material,
            retry_safe=not spec.moves_material or spec.retry_safe,
            effects=[e.to_dict() for e in effects],
        )
        self.effects[pid] = effects
        self.leaves[pid] = planned
        return planned

    def wait(self, st: WaitStep, p: str, ctx: _Ctx) -> PlannedStep | None:
        d = self.coerce(_DURATION, st.wait, ctx.names, f"{p}.wait", ctx.loop)
        if d is None:
            return None
        pid = ctx.id_prefix + st.id
        planned = PlannedStep(pid, p, "wait", duration_s=d, estimated_s=d, idempotent=True,
                              description=f"Wait {fmt(d, 's')}.")
        self.leaves[pid] = planned
        return planned

    def parallel(self, st: ParallelStep, p: str, ctx: _Ctx) -> PlannedStep | None:
        pid = ctx.id_prefix + st.id
        inner = replace(ctx, id_prefix=pid + ".")
        branches: list[tuple[int, PlannedStep]] = []
        first: dict[str, int] = {}
        for k, el in enumerate(st.parallel):
            bp = f"{p}.parallel[{k}]"
            if el.id in first:
                self.issue(f"{bp}.id", f"duplicate step id {el.id!r} (also "
                                       f"{p}.parallel[{first[el.id]}])")
            first.setdefault(el.id, k)
            planned = self.step(el, bp, inner)
            if planned is None:
                continue
            if planned.kind != "sequence":
                planned = PlannedStep(f"{pid}[{k}]", bp, "sequence", children=[planned],
                                      estimated_s=planned.estimated_s,
                                      description=planned.description,
                                      idempotent=planned.idempotent)
            branches.append((k, planned))
        users: dict[str, list[int]] = {}
        for k, b in branches:
            for d in sorted({leaf.device for leaf in b.leaves() if leaf.device}):
                users.setdefault(d, []).append(k)
        for d, ks in users.items():
            if len(ks) > 1:
                self.issue(f"{p}.parallel[{ks[1]}]",
                           f"device {d} is used by parallel branches {ks[0]} and {ks[1]}; "
                           "each device may be used by one branch only", ctx.loop)
        return PlannedStep(pid, p, "parallel", children=[b for _, b in branches],
                           estimated_s=max((b.estimated_s for _, b in branches), default=0.0),
                           description=st.description or f"In parallel: {len(branches)} "
                                                         "branches")

    def loop(self, st: RepeatStep | ForEachStep, p: str, ctx: _Ctx) -> PlannedStep | None:
        pid = ctx.id_prefix + st.id
        bindings: list[dict[str, Any]] = []
        if isinstance(st, RepeatStep):
            n = self.coerce(_COUNT, st.repeat, ctx.names, f"{p}.repeat", ctx.loop)
            if n is None:
                return None
            if n > MAX_REPEAT:
                self.issue(f"{p}.repeat", f"{n} repetitions is more than {MAX_REPEAT}", ctx.loop)
                return None
            if self.count + n * _static_size(st.steps) > MAX_STEPS:
                raise _TooBig(p)
            var = st.var
            bindings = [{var: k} if var else {} for k in range(n)]
            what = f"Repeat {n} times"
        else:
            var = st.for_each.var
            for i, item in enumerate(st.for_each.in_):
                ok, value = self.evaluate(item, ctx.names, f"{p}.for_each.in[{i}]", ctx.loop)
                if not ok:
                    return None
                bindings.append({var: _loop_value(value)})
            shown = ", ".join(format_value(b[var]) for b in bindings[:6])
            what = f"For each {var} in {shown}{', …' if len(bindings) > 6 else ''}"
        if var and var in ctx.params:
            self.issue(f"{p}.var" if isinstance(st, RepeatStep) else f"{p}.for_each.var",
                       f"loop variable {var!r} hides a parameter of the same name", ctx.loop)
        iterations: list[PlannedStep] = []
        for k, bound in enumerate(bindings):
            iid = f"{pid}[{k}]"
            inner = replace(ctx, id_prefix=iid + ".", names={**ctx.names, **bound}, loop=iid)
            children = self.steps(st.steps, f"{p}.steps", inner)
            iterations.append(PlannedStep(
                iid, p, "sequence", children=children,
                estimated_s=sum(c.estimated_s for c in children),
                description=f"{st.id} iteration {k}"
                + (f" ({var} = {format_value(bound[var])})" if var in bound else "")))
        return PlannedStep(pid, p, "sequence", children=iterations,
                           estimated_s=sum(i.estimated_s for i in iterations),
                           description=st.description or what)

    def analysis(self, st: AnalysisStep, p: str, ctx: _Ctx) -> PlannedStep | None:
        if self.analyses is not None and st.analysis not in self.analyses:
            known = ", ".join(sorted(self.analyses)) or "none"
            self.issue(f"{p}.analysis", f"unknown analysis {st.analysis!r} (analyses: {known})")
            return None
        ok, args = self.evaluate(st.args, ctx.names, f"{p}.args", ctx.loop)
        if not ok:
            return None
        args = _jsonable(args)
        good = self._analysis_args(st.analysis, args, p, ctx)
        for key in DATA_REF_KEYS:
            if key not in args:
                continue
            refs = args[key]
            single = isinstance(refs, str)
            ref_list = [refs] if single else refs
            if not isinstance(ref_list, list) or not all(isinstance(r, str) for r in ref_list):
                self.issue(f"{p}.args.{key}", "expected a step id or a list of step ids",
                           ctx.loop)
                good = False
                continue
            resolved = []
            for r in ref_list:
                sid = self._find_step(r, ctx.id_prefix)
                if sid is None and self._find_step(r, ctx.id_prefix, self.failed):
                    good = False
                    continue
                if sid is None:
                    self.issue(f"{p}.args.{key}", f"no earlier step {r!r} to analyse", ctx.loop)
                    good = False
                    continue
                leaf = self.leaves[sid]
                spec = get_action(leaf.capability or "", leaf.action or "")
                if spec is None or not spec.records_data:
                    self.issue(f"{p}.args.{key}", f"step {r!r} records no data (it is "
                                                  f"{leaf.kind} {leaf.action or ''})".rstrip(),
                               ctx.loop)
                    good = False
                    continue
                resolved.append(sid)
            args[key] = resolved[0] if single and resolved else resolved
        if not good:
            return None
        pid = ctx.id_prefix + st.id
        planned = PlannedStep(pid, p, "analysis", action=st.analysis, analysis=st.analysis,
                              args=args, estimated_s=analysis_estimate_s(
                                  str(st.analysis), self.cfg), idempotent=True,
                              description=f"Analysis {st.analysis}"
                              + (f" of {args.get('data')}" if args.get("data") else "") + ".")
        self.leaves[pid] = planned
        return planned

    def _analysis_args(self, name: str, args: dict[str, Any], p: str, ctx: _Ctx) -> bool:
        """Arguments against the analysis's own declaration, when it has one
        (labctl.analysis AnalysisSpec.args: name -> ArgSpec(unit, default, required))."""
        declared = getattr((self.analyses or {}).get(name), "args", None)
        if not isinstance(declared, dict):
            return True
        from labctl.units import to

        good = True
        for key, value in args.items():
            if key in DATA_REF_KEYS:
                continue
            spec = declared.get(key)
            if spec is None:
                self.issue(f"{p}.args.{key}", f"unknown argument {key!r} for analysis {name} "
                                              f"(arguments: {', '.join(declared)})", ctx.loop)
                good = False
                continue
            unit = getattr(spec, "unit", None)
            if unit is not None and isinstance(value, str):
                try:
                    to(value, unit)
                except Exception as exc:
                    self.issue(f"{p}.args.{key}", str(exc), ctx.loop)
                    good = False
        for key, spec in declared.items():
            if getattr(spec, "required", False) and key not in args:
                self.issue(f"{p}.args", f"missing required argument {key!r} for analysis "
                                        f"{name}", ctx.loop)
                good = False
        return good

    def _find_step(self, ref: str, id_prefix: str,
                   among: Mapping[str, Any] | set[str] | None = None) -> str | None:
        """A step id as written in the recipe, looked up from the innermost scope out."""
        pool = self.leaves if among is None else among
        parts = id_prefix.split(".")[:-1] if id_prefix else []
        for n in range(len(parts), -1, -1):
            cand = ".".join([*parts[:n], ref])
            if cand in pool:
                return cand
        return None

    def include(self, st: IncludeStep, p: str, ctx: _Ctx) -> PlannedStep | None:
        if len(ctx.chain) > MAX_INCLUDE_DEPTH:
            self.issue(f"{p}.include", f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
            return None
        try:
            path = include_path(st.include, ctx.doc, self.root)
        except ValueError as exc:
            self.issue(f"{p}.include", str(exc))
            return None
        if path in ctx.chain:
            names = " → ".join(c.name for c in (*ctx.chain, path))
            self.issue(f"{p}.include", f"include cycle: {names}")
            return None
        try:
            doc = read_file(path, label=st.include)
        except RecipeError as exc:
            for i in exc.issues:
                self.issue(f"{p}.include", i.message)
            return None
        sub = f"{p}.include({st.include})."
        recipe, schema_issues = parse_recipe(doc.data, sub)
        for i in schema_issues:
            self.issue(i.path, i.message)
        if recipe is None:
            return None
        ok, given = self.evaluate(dict(st.params), ctx.names, f"{p}.params", ctx.loop)
        if not ok:
            return None
        values, _shown, issues = resolve_parameters(recipe.parameters, given,
                                                    path=f"{sub}parameters",
                                                    given_path=f"{p}.params")
        for i in issues:
            self.issue(i.path, i.message, ctx.loop)
        self.check_materials(recipe.materials, f"{sub}materials")
        rel = str(path.relative_to(self.root.resolve()))
        if rel not in self.includes:
            self.includes.append(rel)
        self.inlined[p] = (doc.data, values, doc)
        pid = ctx.id_prefix + st.id
        inner = _Ctx(doc, pid + ".", values, (*ctx.chain, path), ctx.loop,
                     frozenset(recipe.parameters))
        children = self.steps(recipe.steps, f"{sub}steps", inner)
        return PlannedStep(pid, p, "sequence", children=children,
                           estimated_s=sum(c.estimated_s for c in children),
                           description=f"Include {st.include}: "
                                       f"{recipe.description or recipe.name}")

    def inlined_include(self, st: InlinedStep, p: str, ctx: _Ctx) -> PlannedStep | None:
        """An include already inlined by an earlier planning (a run's recipe.json): planned
        exactly as the include was — same ids, its own parameters and values — from the
        record itself, without reading any file."""
        ok, given = self.evaluate(dict(st.params), ctx.names, f"{p}.params", ctx.loop)
        if not ok:
            return None
        values, _shown, issues = resolve_parameters(st.parameters, given,
                                                    path=f"{p}.parameters",
                                                    given_path=f"{p}.params")
        for i in issues:
            self.issue(i.path, i.message, ctx.loop)
        if issues:
            return None
        self.inlined[p] = ({}, values, ctx.doc)
        pid = ctx.id_prefix + st.id
        inner = _Ctx(ctx.doc, pid + ".", values, ctx.chain, ctx.loop,
                     frozenset(st.parameters))
        children = self.steps(st.steps, f"{p}.steps", inner)
        return PlannedStep(pid, p, "sequence", children=children,
                           estimated_s=sum(c.estimated_s for c in children),
                           description=f"Include {st.included_from}")

    # -- whole-recipe checks ------------------------------------------------------------
    def check_material_flow(self, steps: list[PlannedStep]) -> Inventory:
        levels, reserved = self.stock if self.stock is not None else (None, None)
        inv = Inventory(self.cfg, levels, reserved)
        blamed: set[str] = set()
        for s in steps:
            for leaf in s.leaves():
                if self.seq.get(leaf.id, 0) > self.first_failure:
                    # a step before this one was rejected: what it would have moved is
                    # unknown, so later shortages or overflows would be guesses
                    return inv
                for e in self.effects.get(leaf.id, []):
                    for arg, message in inv.apply(e, leaf.id):
                        path = f"{leaf.path}.args.{arg}" if arg else leaf.path
                        if path in blamed:
                            continue
                        blamed.add(path)
                        where = f" (step {leaf.id})" if leaf.id != leaf.path else ""
                        self.issue(path, message + where)
        return inv


def _static_size(steps: list[Any]) -> int:
    """Steps a list expands to, counting literal repeat counts (expressions as 1): lets a
    runaway loop be refused before it is expanded."""
    total = 0
    for st in steps:
        total += 1
        inner = getattr(st, "steps", None) or getattr(st, "parallel", None) or []
        size = _static_size(inner) if inner else 0
        if isinstance(st, RepeatStep):
            size *= st.repeat if isinstance(st.repeat, int) else 1
        elif isinstance(st, ForEachStep):
            size *= len(st.for_each.in_)
        total += size
        if total > MAX_STEPS:
            return total
    return total


def _loop_value(value: Any) -> Any:
    """A for_each item: quantities parsed ('25 degC'), names kept as text."""
    if isinstance(value, str):
        try:
            q = quantity(value)
        except Exception:
            return value
        if not q.unitless:
            return q
        return float(q.magnitude)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value
    return value


# ---------------------------------------------------------------- the resolved recipe


def _apply(value: Any, names: Mapping[str, Any]) -> Any:
    """`${…}` replaced where it depends only on `names` (loop variables stay as written)."""
    if isinstance(value, str) and "${" in value:
        try:
            return _jsonable(substitute(value, names))
        except ExpressionError:
            return value
    if isinstance(value, dict):
        return {k: _apply(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_apply(v, names) for v in value]
    return value


def _resolved_steps(raw_steps: Any, path: str, names: Mapping[str, Any],
                    comp: Compiler) -> list[Any]:
    out = []
    for i, raw in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        p = f"{path}[{i}]"
        if not isinstance(raw, dict):
            out.append(raw)
            continue
        step: dict[str, Any] = {}
        if "include" in raw and p in comp.inlined:
            out.append(_inlined_step(raw, p, names, comp))
            continue
        inner = names
        if "included_from" in raw and p in comp.inlined:  # planned again from a record
            inner = comp.inlined[p][1]
        var = _loop_var(raw)
        if var:  # inside the loop its variable is not known here: kept as written (a
            # name like `T` must not resolve to the unit tesla)
            inner = {**inner, var: POISON}
        for k, v in raw.items():
            if k == "steps":
                step[k] = _resolved_steps(v, f"{p}.steps", inner, comp)
            elif k == "parallel":
                step[k] = _resolved_steps(v, f"{p}.parallel", names, comp)
            elif k in ("params", "parameters") and inner is not names:
                step[k] = v
            else:
                step[k] = _apply(v, names)
        out.append(step)
    return out


def _loop_var(raw: dict[str, Any]) -> str | None:
    """The variable a repeat / for_each step binds in its body, if any."""
    var = raw.get("var") if "repeat" in raw else None
    each = raw.get("for_each")
    if isinstance(each, dict):
        var = each.get("var")
    return var if isinstance(var, str) and var else None


def _inlined_step(raw: dict[str, Any], p: str, names: Mapping[str, Any],
                  comp: Compiler) -> dict[str, Any]:
    """An include as the resolved recipe records it (models.InlinedStep): the included
    steps with its parameters resolved, the declarations and every value they took, so the
    record plans again by itself (resume) to the same steps."""
    data, values, _doc = comp.inlined[p]
    ref = raw["include"]
    step: dict[str, Any] = {k: _apply(v, names) for k, v in raw.items()
                            if k not in ("include", "params")}
    step["included_from"] = ref
    decls = data.get("parameters")
    step["parameters"] = decls if isinstance(decls, dict) else {}
    step["params"] = {n: _jsonable(v) for n, v in values.items()}
    step["steps"] = _resolved_steps(data.get("steps"), f"{p}.include({ref}).steps", values,
                                    comp)
    return step


def resolved_recipe(data: dict[str, Any], values: Mapping[str, Any], shown: Mapping[str, Any],
                    comp: Compiler) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k == "steps":
            out[k] = _resolved_steps(v, "steps", values, comp)
        elif k == "parameters" and isinstance(v, dict):
            out[k] = {n: {**d, "value": shown.get(n)} if isinstance(d, dict) else d
                      for n, d in v.items()}
        else:
            out[k] = v
    return out


def canonical_sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- entry points


def _materials(comp: Compiler, inv: Inventory) -> list[MaterialUse]:
    cfg = comp.cfg
    out: list[MaterialUse] = []

    def info(mid: str) -> dict[str, Any]:
        m = comp.materials.get(mid)
        b = cfg.materials.get(mid)
        return {
            "name": (m.name if m and m.name else (b.name if b and b.name else mid)),
            "smiles": (m.smiles if m and m.smiles else (b.smiles if b else None)),
            "inchikey": (m.inchikey if m and m.inchikey else (b.inchikey if b else None)),
            "supplier": (m.supplier if m and m.supplier else (b.supplier if b else None)),
            "lot": (m.lot if m and m.lot else (b.lot if b else None)),
        }

    used: set[str] = set()
    for (mid, source), use in inv.uses.items():
        used.add(mid)
        amount = use.amount * 1000 if use.unit == "L" else use.amount
        out.append(MaterialUse(mid, amount, "mL" if use.unit == "L" else "g", source,
                               declared=mid in comp.materials, **info(mid)))
    for mid, m in comp.materials.items():
        if mid in used:
            continue
        source = m.location or next((v for v, vc in cfg.vessels.items() if mid in vc.contents),
                                    "")
        out.append(MaterialUse(mid, 0.0, "", source, declared=True, **info(mid)))
    return out


def build_plan(recipe_source: RecipeSource, params: Mapping[str, Any] | None,
               cfg: BenchConfig, *, base_dir: Path | None = None,
               stock: Stock | None = None) -> Plan:
    """Validate a recipe against a bench and resolve it into a Plan (pure, no device I/O).
    `recipe_source`: a path, JSON text, or parsed data; `params`: NAME -> value (strings as
    from `--param`, or JSON values). Raises RecipeError listing every issue."""
    return compile_plan(recipe_source, dict(params or {}), cfg, base_dir=base_dir,
                        stock=stock)


def compile_plan(source: RecipeSource, params: dict[str, Any], cfg: BenchConfig, *,
                 base_dir: Path | None = None, stock: Stock | None = None) -> Plan:
    """`build_plan` with `params` already a dict."""
    try:
        return _compile(source, params, cfg, base_dir, stock)
    except RecipeError:
        raise
    except _TooBig as exc:
        raise RecipeError([Issue(str(exc), f"the recipe expands to more than {MAX_STEPS} "
                                           "steps; refused")]) from None
    except RecursionError:
        raise RecipeError([Issue("", "the recipe is nested too deeply; refused")]) from None
    except Exception as exc:  # the validator's promise: only RecipeError comes out
        raise RecipeError([Issue("", f"internal error while validating: "
                                     f"{type(exc).__name__}: {exc}")]) from exc


def _compile(source: RecipeSource, params: dict[str, Any], cfg: BenchConfig,
             base_dir: Path | None, stock: Stock | None = None) -> Plan:
    doc = load_source(source, base_dir)
    recipe, issues = parse_recipe(doc.data)
    if recipe is None:
        raise RecipeError(issues)
    root = doc.base_dir
    comp = Compiler(cfg, root, stock)
    params = {**rack_vials(recipe.parameters, params, cfg), **params}
    values, shown, p_issues = resolve_parameters(recipe.parameters, params)
    for i in p_issues:
        comp.issue(i.path, i.message)
    for i in check_vessel_parameters(recipe.parameters, values, cfg):
        comp.issue(i.path, i.message)
    comp.check_materials(recipe.materials, "materials")
    chain: tuple[Path, ...] = ()
    if isinstance(source, (Path, str)) and not (isinstance(source, str) and source.lstrip()
                                                 .startswith(("{", "["))):
        chain = (Path(source).resolve(),)
    ctx = _Ctx(doc, "", values, chain, None, frozenset(recipe.parameters))
    steps = comp.steps(recipe.steps, "steps", ctx)
    inv = comp.check_material_flow(steps)
    if comp.issues:
        raise RecipeError(comp.issues)
    data = doc.data if isinstance(doc.data, dict) else {}
    resolved = resolved_recipe(data, values, shown, comp)
    leaves = [leaf for s in steps for leaf in s.leaves()]
    return Plan(
        name=recipe.name,
        version=str(recipe.version),
        description=recipe.description,
        recipe=resolved,
        parameters=dict(shown),
        sha256=canonical_sha256(resolved),
        steps=steps,
        estimated_s=sum(s.estimated_s for s in steps),
        materials=_materials(comp, inv),
        material_effects=inv.moves,
        bench_id=cfg.bench.id,
        source=doc.label,
        includes=comp.includes,
        devices=sorted({leaf.device for leaf in leaves if leaf.device}),
        parameters_typed=typed_parameters(recipe.parameters, values, params),
    )


def validate(source: RecipeSource, params: Mapping[str, Any] | None, cfg: BenchConfig, *,
             base_dir: Path | None = None) -> list[Issue]:
    """Every issue of a recipe on a bench (empty when it is valid)."""
    try:
        compile_plan(source, dict(params or {}), cfg, base_dir=base_dir)
    except RecipeError as exc:
        return exc.issues
    return []


__all__ = ["Compiler", "compile_plan", "parse_recipe", "validate"]
