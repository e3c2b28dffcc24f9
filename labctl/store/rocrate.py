"""Export a run folder as a zip with an RO-Crate 1.1 `ro-crate-metadata.json` following the
Process Run Crate profile (a CreateAction: the run, with its instruments, the recipe as
object, the data as result, the instigator as agent, start and end times)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from labctl.store.journal import dumps

RO_CRATE_CONTEXT = "https://w3id.org/ro/crate/1.1/context"
RO_CRATE_SPEC = "https://w3id.org/ro/crate/1.1"
PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
POTENTIOSTAT_IRI = ("https://w3id.org/emmo/domain/electrochemistry#"
                    "electrochemistry_a9fc3f77_e48e_4bce_b118_044d608722f6")


def crate_metadata(
    folder: Path, meta: dict[str, Any], result: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON-LD graph describing the run folder."""
    run_id = meta.get("run_id", folder.name)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and not p.name.startswith("."))
    graph: list[dict[str, Any]] = []
    graph.append({
        "@id": "ro-crate-metadata.json", "@type": "CreativeWork",
        "conformsTo": {"@id": RO_CRATE_SPEC}, "about": {"@id": "./"},
    })
    recipe = meta.get("recipe", {})
    data_results = [{"@id": f} for f in files if f.startswith("data/")]
    agent_info = meta.get("instigator", {})
    agent_id = f"#agent-{agent_info.get('kind', 'operator')}-{agent_info.get('id', 'unknown')}"
    instruments = meta.get("instruments", {})
    graph.append({
        "@id": "./", "@type": "Dataset",
        "name": f"labctl run {run_id}",
        "description": f"Run of recipe {recipe.get('name', '?')} on bench "
                       f"{meta.get('bench', {}).get('id', '?')}",
        "datePublished": meta.get("times", {}).get("ended") or meta.get("times", {}).get("created"),
        "conformsTo": {"@id": PROCESS_RUN_CRATE},
        "hasPart": [{"@id": f} for f in files],
        "mentions": {"@id": f"#run-{run_id}"},
        "license": {"@id": "https://spdx.org/licenses/CC-BY-4.0"},
    })
    graph.append({"@id": PROCESS_RUN_CRATE, "@type": "CreativeWork",
                  "name": "Process Run Crate", "version": "0.5"})
    graph.append({"@id": "https://spdx.org/licenses/CC-BY-4.0", "@type": "CreativeWork",
                  "name": "CC BY 4.0"})
    status = (result or {}).get("status") or meta.get("outcome", {}).get("status")
    action: dict[str, Any] = {
        "@id": f"#run-{run_id}", "@type": "CreateAction",
        "name": f"run {run_id} of {recipe.get('name', '?')}",
        "startTime": meta.get("times", {}).get("started"),
        "endTime": meta.get("times", {}).get("ended"),
        "agent": {"@id": agent_id},
        "instrument": [{"@id": "#software-labctl"}]
                      + [{"@id": f"#instrument-{n}"} for n in instruments],
        "object": [{"@id": "recipe.json"}],
        "result": [*data_results, {"@id": "result.json"}] if (folder / "result.json").exists()
                  else data_results,
        "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"} if status == "completed"
                        else {"@id": "http://schema.org/FailedActionStatus"},
        "additionalType": meta.get("fidelity", {}).get("level", "unknown"),
    }
    if status not in (None, "completed"):
        errors = meta.get("outcome", {}).get("errors") or []
        action["error"] = "; ".join(str(e.get("error")) for e in errors) or status
    graph.append(action)
    person = {"@id": agent_id,
              "@type": "SoftwareApplication" if agent_info.get("kind") == "ai" else "Person",
              "name": str(agent_info.get("id", "unknown"))}
    if agent_info.get("request_id"):
        person["identifier"] = str(agent_info["request_id"])
    graph.append(person)
    sw = meta.get("software", {})
    graph.append({"@id": "#software-labctl", "@type": "SoftwareApplication", "name": "labctl",
                  "version": sw.get("version"), "softwareVersion": sw.get("git_commit") or "",
                  "url": "https://github.com/labctl/labctl"})
    for name, inst in instruments.items():
        ident = inst.get("identity") or {}
        entry = {"@id": f"#instrument-{name}", "@type": "IndividualProduct", "name": name,
                 "model": ident.get("model"), "serialNumber": ident.get("serial"),
                 "softwareVersion": ident.get("firmware"),
                 "description": f"driver {inst.get('driver')} at {inst.get('endpoint')}"}
        if "potentiostat" in (inst.get("capabilities") or []):
            entry["additionalType"] = {"@id": POTENTIOSTAT_IRI}
        graph.append(entry)
    by_path = {d["path"]: d for d in meta.get("data_files", [])}
    for f in files:
        if f == "ro-crate-metadata.json":
            continue
        entry = {"@id": f, "@type": "File", "name": Path(f).name}
        d = by_path.get(f)
        if d:
            entry["sha256"] = d.get("sha256")
            entry["contentSize"] = str(d.get("bytes"))
            entry["encodingFormat"] = "text/csv"
        elif f.endswith(".json"):
            entry["encodingFormat"] = "application/json"
        elif f.endswith(".jsonl"):
            entry["encodingFormat"] = "application/jsonl"
        graph.append(entry)
    return {"@context": RO_CRATE_CONTEXT, "@graph": graph}


def export_zip(folder: Path, meta: dict[str, Any], result: dict[str, Any] | None,
               dest: Path) -> Path:
    """Write `dest` (a .zip): every file of the run folder under `<run_id>/` plus the crate."""
    crate = crate_metadata(folder, meta, result)
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = folder.name
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                z.write(p, f"{prefix}/{p.relative_to(folder)}")
        z.writestr(f"{prefix}/ro-crate-metadata.json", dumps(crate))
    return dest
