"""A run record as Bluesky event-model documents (`labctl runs export --format bluesky`).

One RunStart (the recipe as plan, labctl's provenance under `labctl`); per data file an
EventDescriptor (stream named after the step, data keys from the BDF columns with their
units, the instrument's identity as configuration) and one Event per row; a stream
`weighings` with the balance readings of the journal; a stream `figures_of_merit` with one
Event holding the scalar figures; a RunStop with the run's exit status. Documents are made
with event-model's `compose_run` (which validates each one against event-model's schemas)
and written as JSON Lines of `[name, document]`, the form suitcase-jsonl and databroker's
importers read. UIDs derive from the run id, so exporting a run twice gives the same
documents. event-model is imported here, not with labctl.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labctl.bdf import TEST_TIME, UNIX_TIME, read_bdf

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/labctl/labctl/bluesky")
EXIT_STATUS: dict[str, Literal["success", "abort", "fail"]] = {
    "completed": "success", "aborted": "abort"}


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def _epoch(iso: str | None, default: float) -> float:
    if not iso:
        return default
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def data_key_name(column: str) -> str:
    """A BDF column ("Test Time / s") as an event-model data key ("test_time"): event-model
    keys may hold neither "." nor "/"."""
    quantity = column.split(" / ", 1)[0]
    return re.sub(r"[^0-9a-zA-Z]+", "_", quantity).strip("_").lower() or "value"


def _unit(column: str) -> str:
    return column.split(" / ", 1)[1] if " / " in column else ""


def _value(x: Any) -> Any:
    """JSON-safe: numpy scalars as Python numbers, NaN (an empty BDF cell) as None."""
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return None if math.isnan(f) else f
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.str_):
        return str(x)
    return x


def documents(folder: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (name, document) pairs of the run in `folder`, each validated by event-model."""
    from event_model import compose_run

    meta = _read(folder / "metadata.json") or {}
    result = _read(folder / "result.json") or {}
    run_id = str(meta.get("run_id", folder.name))
    times = meta.get("times", {})
    t_start = _epoch(times.get("started") or times.get("created"), 0.0)
    t_end = _epoch(times.get("ended"), t_start)
    recipe = meta.get("recipe", {})
    steps = {str(s.get("id")): s for s in meta.get("steps", [])}
    instruments = meta.get("instruments", {})
    provenance = {k: meta.get(k) for k in ("run_id", "recipe", "parameters", "instigator",
                                           "bench", "times", "fidelity", "software",
                                           "materials", "additions", "outcome")
                  if meta.get(k) is not None}
    bundle = compose_run(uid=_uid(run_id), time=t_start, metadata={
        "plan_name": str(recipe.get("name", "?")),
        "plan_args": {k: str(v) for k, v in (meta.get("parameters") or {}).items()},
        "labctl_run_id": run_id,
        "labctl": json.loads(json.dumps(provenance, default=str)),
        "detectors": sorted({str(s["device"]) for s in steps.values() if s.get("device")}),
    })
    yield "start", dict(bundle.start_doc)

    data_dir = folder / "data"
    for path in sorted(data_dir.glob("*.csv")) if data_dir.exists() else []:
        step = path.name.split(".", 1)[0]
        cols = read_bdf(path)
        device = str(steps.get(step, {}).get("device") or "")
        ident = (instruments.get(device) or {}).get("identity") or {}
        keys: dict[str, str] = {}
        for column, values in cols.items():
            if values.dtype.kind == "f" and not np.isfinite(values).any():
                continue  # a column this technique leaves empty
            keys[column] = data_key_name(column)
        data_keys: dict[str, Any] = {
            key: {"source": f"labctl:{device or step}:{column}",
                  "dtype": "number" if cols[column].dtype.kind in "fiu" else "string",
                  "shape": [], "units": _unit(column)}
            for column, key in keys.items()}
        config = {device or step: {"data": {k: str(v) for k, v in ident.items()},
                                   "timestamps": {k: t_start for k in ident},
                                   "data_keys": {k: {"source": f"labctl:{device}:identity",
                                                     "dtype": "string", "shape": []}
                                                 for k in ident}}}
        desc = bundle.compose_descriptor(
            name=step, data_keys=data_keys, uid=_uid(run_id, step), time=t_start,
            object_keys={device or step: list(data_keys)}, configuration=config)
        yield "descriptor", dict(desc.descriptor_doc)
        n = len(next(iter(cols.values()))) if cols else 0
        unix = cols.get(UNIX_TIME)
        test_time = cols.get(TEST_TIME)
        for row in range(n):
            if unix is not None and np.isfinite(unix[row]):
                t = float(unix[row])
            elif test_time is not None and np.isfinite(test_time[row]):
                t = t_start + float(test_time[row])
            else:
                t = t_start
            data = {key: _value(cols[column][row]) for column, key in keys.items()}
            event = desc.compose_event(data=data, timestamps=dict.fromkeys(data, t),
                                       seq_num=row + 1, uid=_uid(run_id, step, str(row)),
                                       time=t)
            yield "event", dict(event)

    weighings = [e for e in _journal(folder) if e.get("event") == "record"
                 and e.get("kind") == "weighing" and e.get("mass_g") is not None]
    if weighings:  # the balance readings of the run, one event each
        device = str(weighings[0].get("device") or "balance")
        desc = bundle.compose_descriptor(
            name="weighings", uid=_uid(run_id, "weighings"), time=t_start,
            data_keys={"mass": {"source": f"labctl:{device}:weigh", "dtype": "number",
                                "shape": [], "units": "g"},
                       "step": {"source": "labctl:journal", "dtype": "string", "shape": []}},
            object_keys={device: ["mass"]})
        yield "descriptor", dict(desc.descriptor_doc)
        for k, e in enumerate(weighings, start=1):
            t = float(e.get("ts") or t_start)
            data = {"mass": float(e["mass_g"]), "step": str(e.get("step") or "")}
            yield "event", dict(desc.compose_event(
                data=data, timestamps=dict.fromkeys(data, t), seq_num=k,
                uid=_uid(run_id, "weighings", str(k)), time=t))

    scalars = {f["name"]: f for f in result.get("figures_of_merit") or []
               if isinstance(f.get("value"), (int, float)) and not isinstance(f["value"], bool)}
    if scalars:
        desc = bundle.compose_descriptor(
            name="figures_of_merit", uid=_uid(run_id, "figures_of_merit"), time=t_end,
            data_keys={name: {"source": f"labctl:analysis:{f.get('analysis', '')}",
                              "dtype": "number", "shape": [], "units": str(f.get("unit") or ""),
                              "method": str(f.get("method") or ""),
                              "iri": str(f.get("iri") or "")}
                       for name, f in scalars.items()})
        yield "descriptor", dict(desc.descriptor_doc)
        data = {name: float(f["value"]) for name, f in scalars.items()}
        yield "event", dict(desc.compose_event(data=data, timestamps=dict.fromkeys(data, t_end),
                                               seq_num=1, uid=_uid(run_id, "figures", "1"),
                                               time=t_end))
    status = str(result.get("status") or (meta.get("outcome") or {}).get("status") or "fail")
    errors = result.get("errors") or []
    reason = "; ".join(str(e.get("message") or e) for e in errors)
    yield "stop", dict(bundle.compose_stop(exit_status=EXIT_STATUS.get(status, "fail"),
                                           reason=reason, uid=_uid(run_id, "stop"),
                                           time=t_end))


def export_jsonl(folder: Path, dest: Path) -> tuple[Path, dict[str, int]]:
    """Write the documents as JSON Lines of `[name, document]`; the count of each name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for name, doc in documents(folder):
            f.write(json.dumps([name, doc], allow_nan=False) + "\n")
            counts[name] = counts.get(name, 0) + 1
    tmp.replace(dest)
    return dest, counts


def _journal(folder: Path) -> list[dict[str, Any]]:
    from labctl.store import read_journal

    path = folder / "events.jsonl"
    return list(read_journal(path)) if path.exists() else []


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    value = json.loads(path.read_text())
    return value if isinstance(value, dict) else None
