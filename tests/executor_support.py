"""Helpers for the executor tests: small plans built straight from the action catalogue
(labctl.actions: resolve + check against the bench config, exactly what the recipe planner
does per step) into the planner's own types (labctl.recipe.plan's Plan and PlannedStep),
and a simulated bench on real ptys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from labctl.actions import DeviceView, driver_capabilities, get_action
from labctl.config import BenchConfig, load_config
from labctl.recipe.plan import Plan, PlannedStep

CONFIG = Path(__file__).parent / "configs" / "exec_bench.toml"


#: the planner's own step type: the executor takes nothing else
Step = PlannedStep


def config() -> BenchConfig:
    return load_config(CONFIG)


def action(cfg: BenchConfig, sid: str, device: str, name: str, **raw: Any) -> Step:
    """A device step with args resolved and checked by the action catalogue."""
    opts = {k: raw.pop(k) for k in ("timeout_s", "retries", "on_error", "idempotent")
            if k in raw}
    cap = driver_capabilities(cfg.devices[device].driver)[0]
    spec = get_action(cap, name)
    assert spec is not None, f"no action {cap}.{name}"
    args, issues = spec.resolve({k.rstrip("_"): v for k, v in raw.items()})
    view = DeviceView(device, cap, cfg.devices[device], cfg)
    issues += spec.check(view, args)
    assert not issues, issues
    return Step(id=sid, path=sid, kind="action", device=device, action=name, capability=cap,
                args=args, estimated_s=spec.estimate_s(view, args),
                description=spec.describe(view, args), moves_material=spec.moves_material,
                **opts)


def wait(sid: str, seconds: float, **opts: Any) -> Step:
    return Step(id=sid, path=sid, kind="wait", duration_s=seconds, estimated_s=seconds,
                idempotent=True, **opts)


def parallel(sid: str, *children: Step) -> Step:
    return Step(id=sid, path=sid, kind="parallel", children=list(children),
                estimated_s=max((c.estimated_s for c in children), default=0.0))


def plan(name: str, *steps: Step) -> Plan:
    doc = {"name": name, "version": "1", "description": f"test plan {name}",
           "materials": {"DMC": {"name": "dimethyl carbonate"},
                         "EC": {"name": "ethylene carbonate"}},
           "steps": [asdict(s) for s in steps]}
    sha = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return Plan(name=name, version="1", description=doc["description"], recipe=doc,
                parameters={}, sha256=sha, steps=list(steps),
                estimated_s=sum(s.estimated_s for s in steps), materials=[],
                material_effects=[])
