"""`labctl schema`, `labctl validate` and `labctl plan`: the recipe language on the command
line. Nothing here touches a device: validation and planning are pure."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from labctl.cli import display
from labctl.cli.common import (
    DEFAULT_CONFIG_PATH,
    EXIT_INVALID,
    EXIT_OK,
    ConfigOpt,
    JsonOpt,
    ParamOpt,
    fail,
    load_bench_config,
)
from labctl.cli.root import app

RecipeArg = Annotated[Path, typer.Argument(help="The recipe (JSON file).")]


def _params(items: list[str] | None, as_json: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            fail(f"--param {item!r}: expected NAME=VALUE", EXIT_INVALID, as_json=as_json)
        out[name.strip()] = value.strip()
    return out


#: `--data-dir` of validate and plan: opt-in, so that checking a recipe stays a pure check
StoreOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Also check against this bench's persisted inventory (reservoir and "
    "dispenser levels) and samples (sample ids, free vials), as `labctl run` will.")]


def _plan_or_exit(recipe: Path, config: Path, param: list[str] | None, as_json: bool,
                  data_dir: Path | None = None) -> Any:
    from labctl.recipe import RecipeError, build_plan

    params = _params(param, as_json)
    cfg = load_bench_config(config, as_json=as_json)
    try:
        if data_dir is None:
            return cfg, build_plan(recipe, params, cfg)
        from labctl.bench.samples import bind_offline

        bound, stock = bind_offline(cfg, data_dir, recipe, params)
        return cfg, build_plan(recipe, bound, cfg, stock=stock)
    except RecipeError as exc:
        if as_json:
            print(json.dumps(exc.to_dict(), indent=2))
        else:
            print(f"{recipe}: {len(exc.issues)} problem{'s' if len(exc.issues) != 1 else ''}",
                  file=sys.stderr)
            for issue in exc.issues:
                print(f"  {issue}", file=sys.stderr)
        raise typer.Exit(EXIT_INVALID) from None


@app.command()
def schema(
    mqtt: Annotated[bool, typer.Option("--mqtt", help="The MQTT topics and the schemas of "
                                       "their payloads instead.")] = False,
    asyncapi: Annotated[bool, typer.Option("--asyncapi", help="The MQTT API as an AsyncAPI "
                                           "3.0 document (docs/asyncapi.json).")] = False,
) -> None:
    """Print the JSON Schema (draft 2020-12) of recipes, with the action catalogue."""
    if asyncapi:
        from labctl.mqtt.asyncapi import asyncapi as build

        print(json.dumps(build(), indent=2, ensure_ascii=False))
        return
    if mqtt:
        from labctl.mqtt.asyncapi import topics_table
        from labctl.mqtt.payloads import json_schemas

        print(json.dumps({"topics": topics_table(), **json_schemas()}, indent=2))
        return
    from labctl.recipe import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command()
def validate(
    recipe: Annotated[Path | None, typer.Argument(
        help="The recipe (JSON file); without it only the bench config is checked.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    param: ParamOpt = None,
    data_dir: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a recipe against a bench: syntax, schema, parameters, expressions, devices,
    limits, vessels, materials. Exit 0 when valid, 2 with every problem listed. Without a
    recipe, checks the bench config alone."""
    if recipe is None:
        cfg = load_bench_config(config, as_json=json_out)
        if json_out:
            print(json.dumps({"ok": True, "errors": [], "config": str(config)}))
        else:
            print(f"{config}: valid bench config ({len(cfg.enabled_devices())} devices, "
                  f"{len(cfg.vessels)} vessels)")
        raise typer.Exit(EXIT_OK)
    _cfg, plan = _plan_or_exit(recipe, config, param, json_out, data_dir)
    if json_out:
        print(json.dumps({"ok": True, "errors": [], "sha256": plan.sha256,
                          "estimated_s": plan.estimated_s}))
    else:
        leaves = sum(1 for _ in plan.leaves())
        print(f"{recipe}: valid ({leaves} steps, about {plan.estimated_s / 60:.1f} min on "
              f"bench {plan.bench_id})")
    raise typer.Exit(EXIT_OK)


def _rows(steps: list[Any], depth: int = 0) -> list[tuple[str, str, str, str]]:
    rows = []
    for s in steps:
        rows.append(("  " * depth + s.id, s.kind, display.quantity(s.estimated_s, "s", 3),
                     s.description))
        rows += _rows(s.children, depth + 1)
    return rows


@app.command()
def plan(
    recipe: RecipeArg,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    param: ParamOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the materials request list "
                                             "(CSV) and the SOP (Markdown, and CSV with one "
                                             "row per step) here.")] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Materials for this many runs.")]
    = 1,
    data_dir: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the resolved steps with estimated durations and the total; with --out, write
    the materials request list (CSV) and the standard operating procedure (Markdown with
    hazards and PPE, and CSV with one row per step)."""
    from labctl.recipe.sop import write_outputs

    cfg, p = _plan_or_exit(recipe, config, param, json_out, data_dir)
    written = [str(x) for x in write_outputs(p, cfg, out, runs)] if out is not None else []
    if json_out:
        print(json.dumps({"ok": True, "plan": p.to_dict(), "files": written}, indent=2,
                         default=str))
        raise typer.Exit(EXIT_OK)
    table = display.table(f"{p.name} v{p.version} on {p.bench_id}, sha256 {p.sha256[:12]}",
                          "step", "kind", "est.", "what", ids=("step", "kind", "est."))
    display.fit_ids(table, _rows(p.steps))
    console = display.console()
    console.print(table)
    console.print(f"Total estimated time: {p.estimated_s:.0f} s ({p.estimated_s / 60:.1f} min)")
    for m in p.materials:
        if m.amount > 0:
            console.print(f"  {m.material}: {m.amount:.4g} {m.unit} from {m.source}")
    for path in written:
        console.print(f"wrote {path}")
    raise typer.Exit(EXIT_OK)


@app.command()
def actions(
    markdown: Annotated[bool, typer.Option("--markdown", help="labctl's own, as the Markdown "
                                           "section of docs/recipes.md.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The catalogue of actions (per capability) and analyses, with their arguments and
    units, as recipes use them."""
    from labctl import catalogue_doc

    if json_out:
        print(json.dumps(catalogue_doc.catalogue(), indent=2, ensure_ascii=False, default=str))
    elif markdown:
        print(catalogue_doc.markdown(), end="")
    else:
        print(catalogue_doc.text(), end="")
