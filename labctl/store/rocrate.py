"""Export a run folder as an RO-Crate 1.1 zip, built with ro-crate-py (`rocrate`), following
the Process Run Crate profile 0.5: the run is a CreateAction with the instruments it used
(labctl and the devices its steps drove), the recipe as object, the data and result as
result, the instigator as agent, start and end times.

The zip has `ro-crate-metadata.json` at its root next to the run's files, and the run's
figures (`labctl runs plot`, made afresh for the export) under `figures/`. rocrate and
matplotlib are imported when a crate is built, not with labctl.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

RO_CRATE_VERSION = "1.1"
PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
LICENSE = "https://spdx.org/licenses/CC-BY-4.0"
POTENTIOSTAT_IRI = ("https://w3id.org/emmo/domain/electrochemistry#"
                    "electrochemistry_a9fc3f77_e48e_4bce_b118_044d608722f6")
FORMATS = {".csv": "text/csv", ".json": "application/json", ".jsonl": "application/jsonl",
           ".png": "image/png", ".svg": "image/svg+xml", ".md": "text/markdown"}


def used_instruments(meta: dict[str, Any]) -> list[str]:
    """Devices the run drove: named by a step that started, in the bench's order."""
    used = {str(s["device"]) for s in meta.get("steps", [])
            if s.get("device") and s.get("started")}
    return [name for name in meta.get("instruments", {}) if name in used]


def _files(folder: Path) -> list[Path]:
    """The record's files (the figures folder is made afresh for the crate)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and p.relative_to(folder).parts[0] != "figures"
                  and p.name != "ro-crate-metadata.json")


def build_crate(folder: Path, meta: dict[str, Any], result: dict[str, Any] | None,
                figures: Path | None = None) -> Any:
    """The `rocrate.rocrate.ROCrate` describing the run folder (and its figures folder)."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.model.person import Person
    from rocrate.model.softwareapplication import SoftwareApplication
    from rocrate.rocrate import ROCrate

    crate = ROCrate(version=RO_CRATE_VERSION)
    run_id = meta.get("run_id", folder.name)
    recipe = meta.get("recipe", {})
    times = meta.get("times", {})
    root = crate.root_dataset
    root["name"] = f"labctl run {run_id}"
    root["description"] = (f"Run of recipe {recipe.get('name', '?')} on bench "
                           f"{meta.get('bench', {}).get('id', '?')}")
    root["datePublished"] = times.get("ended") or times.get("created")
    root["license"] = crate.add(ContextEntity(crate, LICENSE, properties={
        "@type": "CreativeWork", "name": "CC BY 4.0"}))
    root["conformsTo"] = crate.add(ContextEntity(crate, PROCESS_RUN_CRATE, properties={
        "@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"}))

    by_path = {d["path"]: d for d in meta.get("data_files", [])}
    entities: dict[str, Any] = {}
    for p in _files(folder):
        rel = p.relative_to(folder).as_posix()
        props: dict[str, Any] = {"name": p.name,
                                 "encodingFormat": FORMATS.get(p.suffix, "text/plain"),
                                 "contentSize": str(p.stat().st_size)}
        if rel in by_path:
            props["sha256"] = by_path[rel].get("sha256")
            if by_path[rel].get("format"):
                props["description"] = by_path[rel]["format"]
        entities[rel] = crate.add_file(p, dest_path=rel, properties=props)
    for p in sorted(figures.iterdir()) if figures is not None and figures.exists() else []:
        if p.suffix not in (".png", ".svg"):
            continue
        step = p.stem.split("_", 1)[0]
        props = {"@type": ["File", "ImageObject"], "name": p.name,
                 "encodingFormat": FORMATS[p.suffix],
                 "description": f"figure of run {run_id} (labctl runs plot)"}
        data = f"data/{step}.bdf.csv"
        if data in entities:
            props["about"] = entities[data]
        entities[f"figures/{p.name}"] = crate.add_file(p, dest_path=f"figures/{p.name}",
                                                       properties=props)

    agent_info = meta.get("instigator", {})
    agent_id = f"#agent-{agent_info.get('kind', 'operator')}-{agent_info.get('id', 'unknown')}"
    agent_props: dict[str, Any] = {"name": str(agent_info.get("id", "unknown"))}
    if agent_info.get("request_id"):
        agent_props["identifier"] = str(agent_info["request_id"])
    if agent_info.get("kind") == "ai":
        agent = crate.add(SoftwareApplication(crate, agent_id, properties=agent_props))
    else:
        agent = crate.add(Person(crate, agent_id, properties=agent_props))
    sw = meta.get("software", {})
    labctl = crate.add(SoftwareApplication(crate, "#software-labctl", properties={
        "name": "labctl", "version": sw.get("version"),
        "softwareVersion": sw.get("git_commit") or "", "url": "https://github.com/labctl/labctl"}))
    instruments = [labctl]
    for name in used_instruments(meta):
        inst = meta["instruments"][name]
        ident = inst.get("identity") or {}
        props = {"@type": "IndividualProduct", "name": name, "model": ident.get("model"),
                 "serialNumber": ident.get("serial"), "softwareVersion": ident.get("firmware"),
                 "description": f"driver {inst.get('driver')} at {inst.get('endpoint')}"}
        if "potentiostat" in (inst.get("capabilities") or []):
            props["additionalType"] = {"@id": POTENTIOSTAT_IRI}
        instruments.append(crate.add(ContextEntity(crate, f"#instrument-{name}",
                                                   properties=props)))

    status = (result or {}).get("status") or meta.get("outcome", {}).get("status")
    outputs = [e for rel, e in entities.items() if rel.startswith("data/")]
    if "result.json" in entities:
        outputs.append(entities["result.json"])
    props = {
        "name": f"run {run_id} of {recipe.get('name', '?')}",
        "startTime": times.get("started"), "endTime": times.get("ended"),
        "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"
                         if status == "completed" else "http://schema.org/FailedActionStatus"},
        "additionalType": meta.get("fidelity", {}).get("level", "unknown"),
    }
    if status not in (None, "completed"):
        errors = meta.get("outcome", {}).get("errors") or (result or {}).get("errors") or []
        props["error"] = "; ".join(str(e.get("error") or e.get("message")) for e in errors) \
            or str(status)
    action = crate.add_action(labctl, identifier=f"#run-{run_id}",
                              object=[entities["recipe.json"]] if "recipe.json" in entities
                              else [], result=outputs, properties=props)
    action["instrument"] = instruments
    action["agent"] = agent
    root["mentions"] = [action]
    return crate


def export_zip(folder: Path, meta: dict[str, Any], result: dict[str, Any] | None,
               dest: Path) -> Path:
    """Write `dest` (a .zip): ro-crate-metadata.json at its root, the run's files and its
    figures under the paths the crate names."""
    from labctl.plots import plot_run

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labctl-figures-") as tmp:
        figures = Path(tmp)
        plot_run(folder, figures)
        crate = build_crate(folder, meta, result, figures)
        crate.write_zip(str(dest))
    return dest
