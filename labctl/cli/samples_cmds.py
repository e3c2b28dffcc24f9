"""`labctl samples list|show`: the samples runs made (labctl.store.samples), where they
are, what is in them, and — for `show` — the chain of runs and samples they came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from labctl.cli.common import EXIT_INVALID, DataDirOpt, JsonOpt, fail
from labctl.cli.root import app

samples_app = typer.Typer(help="Samples: ids, locations, compositions, history, origin.",
                          no_args_is_help=True)
app.add_typer(samples_app, name="samples")


def _store(data_dir: Path) -> Any:
    from labctl.store.samples import SampleStore

    return SampleStore(data_dir)


def _composition(comp: dict[str, float]) -> str:
    return ", ".join(f"{m} {g:.4g} g" for m, g in comp.items()) or "-"


@samples_app.command("list")
def samples_list(
    data_dir: DataDirOpt = Path("runs"),
    status: Annotated[str | None, typer.Option(help="Only these (live, consumed, "
                                                    "disposed).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every sample, newest first."""
    store = _store(data_dir)
    try:
        rows = store.list_samples(status=status)
    finally:
        store.close()
    if as_json:
        print(json.dumps(rows))
        return
    print(f"{'sample':<22} {'status':<9} {'vessel':<10} {'rack/pos':<10} {'made by run':<44} "
          "composition")
    for s in rows:
        where = f"{s['rack']}/{s['position']}" if s["rack"] else "-"
        print(f"{s['id']:<22} {s['status']:<9} {s['vessel']:<10} {where:<10} "
              f"{s['parent_run']:<44} {_composition(s['composition_g'])}")


@samples_app.command("show")
def samples_show(
    sample_id: Annotated[str, typer.Argument(help="Sample id (or its barcode).")],
    data_dir: DataDirOpt = Path("runs"),
    as_json: JsonOpt = False,
) -> None:
    """One sample: location, composition, history and its chain of origin."""
    from labctl.store.samples import SampleError

    store = _store(data_dir)
    try:
        s = store.get(sample_id)
        s["chain"] = store.chain(s["id"])
    except SampleError as exc:
        fail(str(exc), EXIT_INVALID, as_json=as_json)
    finally:
        store.close()
    if as_json:
        print(json.dumps(s))
        return
    print(f"{s['id']}  ({s['status']})  barcode {s['barcode'] or '-'}")
    print(f"  location    {s['vessel']}" + (f", rack {s['rack']} position {s['position']}"
                                           if s["rack"] else ""))
    print(f"  composition {_composition(s['composition_g'])}")
    print(f"  made by     {s['parent_run']}")
    print("  history")
    for h in s["history"]:
        print(f"    {h['t']}  {h['kind']:<9} run {h['run_id']}"
              + (f" step {h['step']}" if h.get("step") else ""))
    print("  chain of origin")
    for c in s["chain"]:
        ins = ", ".join(f"{k}={v}" for k, v in c["inputs"].items())
        print(f"    {'  ' * c['level']}{c['sample_id']} <- run {c['parent_run']}"
              + (f" (took {ins})" if ins else ""))
