"""metadata.json: the provenance of one run, as ../shared/formats.md lists it.

Built from three sources so that it can always be rebuilt: the context fixed when the run
was created (who, where, which instruments and software), the resolved recipe, and the
journal (when each step ran, what each addition requested and actually delivered, mixing,
temperatures, decisions). Data files are hashed from disk.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from labctl._version import __version__
from labctl.registry import installed_entry_points
from labctl.store.journal import LEAF_KINDS, replay, utc_iso

SCHEMA = "labctl.run-metadata/1"
#: record kinds the actions report through ActionContext.record, and where they go
SECTIONS = {"addition": "additions", "mixing": "mixing", "heating": "temperatures",
            "temperature": "temperatures"}


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout labctl runs from (None when installed elsewhere)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5, check=False,
    )
    return commit + ("-dirty" if dirty.stdout.strip() else "")


@lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    """Versions of the libraries loaded in this process (reading package metadata costs
    ~5 ms each, and the loaded code cannot change under a running process)."""
    packages = {}
    for name in ("pydantic", "transitions", "pyserial", "pymodbus", "pint", "numpy", "scipy"):
        try:
            packages[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return packages


def software_info() -> dict[str, Any]:
    packages = dict(_package_versions())
    return {
        "name": "labctl",
        "version": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "git_commit": git_commit(),
        "packages": packages,
    }


def instigator_info(instigator: str | dict[str, Any] | None,
                    request: dict[str, Any] | None = None) -> dict[str, Any]:
    """'operator:alice', 'ai:client-7', a dict, or None (the local user)."""
    if isinstance(instigator, dict):
        info = dict(instigator)
    else:
        text = instigator or "operator:unknown"
        kind, sep, who = text.partition(":")
        if not sep:
            kind, who = "operator", text
        info = {"kind": kind, "id": who}
    info.setdefault("kind", "operator")
    if request is not None:
        info["request"] = request
        rid = request.get("id") or request.get("request_id") or request.get("request_uuid")
        if rid is not None:
            info["request_id"] = rid
    return info


def bench_info(cfg: Any) -> dict[str, Any]:
    return {"id": cfg.bench.id, "site": cfg.bench.site, "config": cfg.path,
            "simulated": bool(cfg.bench.simulate), "time_scale": cfg.bench.time_scale}


def conditions_info(cfg: Any) -> dict[str, Any]:
    """Ambient and run conditions: what the bench config declares (`[conditions]`: glovebox
    O2/H2O, humidity...); the measured cell temperatures are added from the journal."""
    section = getattr(cfg, "conditions", None)
    declared = section.record() if section is not None else {}
    return {"declared": declared,
            "declared_source": (f"bench config {cfg.path} [conditions], as declared (not "
                                "measured by labctl)") if declared else
                               "none declared (the bench config has no [conditions] table)"}


def materials_info(cfg: Any, recipe_materials: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The recipe's materials, completed from the bench config (SMILES, InChIKey, lot...)."""
    out: list[dict[str, Any]] = []
    ids = list(recipe_materials or {})
    for mid in ids:
        entry: dict[str, Any] = {"id": mid}
        if cfg is not None and mid in cfg.materials:
            entry.update({k: v for k, v in cfg.materials[mid].model_dump().items()
                          if v not in (None, "")})
        rm = (recipe_materials or {}).get(mid)
        if isinstance(rm, dict):
            entry.update({k: v for k, v in rm.items() if v not in (None, "")})
        elif rm is not None and hasattr(rm, "model_dump"):
            entry.update({k: v for k, v in rm.model_dump(mode="json").items()
                          if v not in (None, "")})
        out.append(entry)
    return out


@lru_cache(maxsize=1)
def _simulator_packages() -> tuple[str, dict[str, tuple[str, str]]]:
    """labctl's version, and the (package, version) of each simulator kind a plugin
    registers (labctl.simulators entry points). Read once per process: the code that runs
    is the code loaded, and scanning every installed distribution took ~9 ms per submit."""
    try:
        sim_version = importlib_metadata.version("labctl")
    except importlib_metadata.PackageNotFoundError:
        sim_version = "unknown"
    plugins = {ep.name: (ep.dist.name, ep.dist.version)
               for ep in installed_entry_points("labctl.simulators")
               if ep.dist is not None}
    return sim_version, plugins


def fidelity_info(cfg: Any, kinds: dict[str, str] | None = None) -> dict[str, Any]:
    """'simulated' (and by which simulators) or 'measured'. An AI server must never take
    simulated data for measured data."""
    if cfg is None or not cfg.bench.simulate:
        return {"level": "measured", "simulators": {}}
    sim_version, plugins = _simulator_packages()
    sims: dict[str, Any] = {}
    for name, kind in (kinds or {}).items():
        if kind in plugins:
            package, version = plugins[kind]
            sims[name] = {"kind": kind, "package": package, "version": version}
        else:
            sims[name] = {"kind": kind, "package": "simulators", "version": sim_version}
    return {"level": "simulated", "simulators": sims,
            "note": "data produced by labctl's instrument simulators, not by physical "
                    "instruments"}


def steps_from_journal(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: start/end (UTC), status, attempts, result, error."""
    steps: dict[str, dict[str, Any]] = {}
    for ev in events:
        kind = ev.get("event")
        if kind not in ("step_started", "step_finished", "step_failed"):
            continue
        sid = str(ev["step"])
        s = steps.setdefault(sid, {"id": sid, "kind": ev.get("kind"), "device": ev.get("device"),
                                   "action": ev.get("action"), "attempts": 0})
        if kind == "step_started":
            s["attempts"] = int(ev.get("attempt", s["attempts"] + 1))
            s.setdefault("started", ev["t"])
            s["status"] = "started"
            if ev.get("args") is not None:
                s["args"] = ev.get("args")
            if ev.get("path") is not None:
                s["path"] = ev.get("path")
        elif kind == "step_finished":
            s["ended"] = ev["t"]
            s["status"] = "completed"
            if ev.get("result") is not None:
                s["result"] = ev["result"]
        else:
            s["ended"] = ev["t"]
            s["status"] = "failed (continued)" if ev.get("continued") else "failed"
            s["error"] = ev.get("error")
    return list(steps.values())


def records_from_journal(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Additions (in order, numbered), mixing, temperatures and other observations."""
    out: dict[str, list[dict[str, Any]]] = {"additions": [], "mixing": [], "temperatures": [],
                                            "observations": []}
    for ev in events:
        if ev.get("event") != "record":
            continue
        entry = {k: v for k, v in ev.items() if k not in ("event", "seq", "ts", "kind")}
        entry["time"] = entry.pop("t")
        section = SECTIONS.get(str(ev.get("kind")), "observations")
        if section == "observations":
            entry["kind"] = ev.get("kind")
        out[section].append(entry)
        if section == "mixing" and (entry.get("measured_c") is not None
                                    or entry.get("setpoint_c") is not None
                                    or entry.get("temperature_c") is not None):
            # older journals have only temperature_c (the setpoint given to the stir)
            setpoint = entry.get("setpoint_c", entry.get("temperature_c")
                                 if "measured_c" not in entry else None)
            out["temperatures"].append({
                **{k: v for k, v in entry.items() if k != "temperatures"},
                "setpoint_c": setpoint, "source": "mixing"})
    for i, a in enumerate(out["additions"], start=1):
        a["order"] = i
    return out


CLOCK_NOTES = {
    "simulated": "Unix Time in the data files is simulated time: simulated seconds since "
                 "the run start, anchored once at the wall-clock time of that start (a "
                 "simulated bench runs faster than the wall clock, so these times run ahead "
                 "of it); monotonic across the steps of the run",
    "wall": "Unix Time in the data files is the computer's wall clock (UTC) at each point",
}


def clock_from_journal(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Which clock the data's Unix Time follows, and where each session anchored it."""
    anchors = [e for e in events if e.get("event") == "clock_anchor"]
    basis = str(anchors[-1].get("basis")) if anchors else "wall"
    return {"basis": basis, "note": CLOCK_NOTES.get(basis, ""),
            "sessions": [{"anchor_unix_s": e.get("anchor_unix_s"),
                          "anchor_utc": e.get("t"), "time_scale": e.get("time_scale")}
                         for e in anchors]}


def build_metadata(
    *,
    context: dict[str, Any],
    events: list[dict[str, Any]],
    data_files: list[dict[str, Any]],
    figures: list[dict[str, Any]] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """The whole metadata.json: the fixed context plus what the journal and disk say."""
    r = replay(events)
    starts = [e["t"] for e in events
              if e.get("event") == "transition" and e.get("dest") == "running"]
    ends = [e["t"] for e in events if e.get("event") == "run_finished"]
    meta = dict(context)
    meta["schema"] = SCHEMA
    meta["times"] = {
        **context.get("times", {}),
        "started": starts[0] if starts else None,
        "ended": ends[-1] if ends else None,
        "updated": utc_iso(),
    }
    meta["steps"] = steps_from_journal(events)
    records = records_from_journal(events)
    meta.update(records)
    conditions = dict(meta.get("conditions") or {})
    conditions["cell_temperature"] = [
        {k: t.get(k) for k in ("step", "device", "vessel", "measured_c", "measured_start_c",
                               "measured_end_c", "source", "time") if k in t}
        for t in records["temperatures"] if t.get("source", "").startswith("measured")]
    meta["conditions"] = conditions
    meta["clock"] = clock_from_journal(events)
    basis = meta["clock"]["basis"]
    meta["data_files"] = [
        {**d, "unix_time_clock": basis}
        if any(c.get("name") == "Unix Time / s" for c in d.get("columns") or []) else d
        for d in data_files]
    meta["figures_of_merit"] = figures or []
    meta["outcome"] = {
        "status": status or (r.finished or {}).get("status") or r.state,
        "errors": r.errors,
        "in_doubt": [s for s in r.in_doubt if r.steps[s].kind in LEAF_KINDS],
        "decisions": [{k: v for k, v in d.items() if k not in ("event", "seq", "ts")}
                      for d in r.decisions],
    }
    return meta
