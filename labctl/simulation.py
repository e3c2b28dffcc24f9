"""Start the simulated instruments of a bench config in-process, on pseudo-terminals, and
keep their world with the run.

labctl never imports simulators/ directly: the simulated bench is found through the
`labctl.simulation` entry point, keeping the core free of vendor knowledge.

The simulated world (vials, reservoirs, what is in them, their temperatures) dies with the
process that serves it in-process. It is part of a simulated run's state: `WorldKeeper`
saves it in the run folder (`sim_world.json`, replaced atomically) at every step boundary,
before the journal records the step's start or end, and `labctl resume` rebuilds the
simulated bench from it. After a kill the saved world is therefore the one of the last
boundary the journal knows of: every completed step's moves are in it; an in-doubt step's
moves are in it as far as they had gone at the last boundary (`running` says which).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labctl.clock import Clock
from labctl.config import BenchConfig
from labctl.errors import ConfigError
from labctl.registry import installed_entry_points
from labctl.store.journal import utc_iso
from labctl.store.record import write_json_atomic

WORLD_FILE = "sim_world.json"
WORLD_SCHEMA = "labctl.sim-world/1"


def simulation_spec(cfg: BenchConfig, only: list[str] | None = None) -> dict[str, Any]:
    devices = []
    for name, d in cfg.enabled_devices().items():
        if only is not None and name not in only:
            continue
        options = {**d.params, **d.simulator.options}
        devices.append({
            "name": name,
            "kind": d.simulator.kind or d.driver,
            "address": d.address,
            "options": options,
            "bus": d.bus,
            "endpoint": "pty",
        })
    return {"world": cfg.world_spec(), "devices": devices}


async def start_simulation(cfg: BenchConfig, clock: Clock, only: list[str] | None = None,
                           state: Mapping[str, Any] | None = None) -> Any:
    """Start every enabled device's simulator; returns the simulated bench (with
    `.endpoints[name]`, `.world`, `.simulators[name]`, `state()`, `close()`). `state`: a
    saved world (`WorldKeeper`) to start from instead of the config's initial contents."""
    eps = {ep.name: ep for ep in installed_entry_points("labctl.simulation")}
    if "bench" not in eps:
        raise ConfigError(
            "simulate = true but no simulators are installed (entry point labctl.simulation:bench)",
            file=cfg.path, key="bench.simulate",
        )
    start = eps["bench"].load()
    spec = simulation_spec(cfg, only)
    if state is not None:
        spec["state"] = dict(state)
    return await start(spec, clock)


def can_save(simulation: Any) -> bool:
    """Whether an in-process simulated bench can save its world (simulator plugins that
    predate it cannot)."""
    return simulation is not None and all(
        callable(getattr(simulation, m, None)) for m in ("state", "ledger_length", "moves_since"))


class WorldKeeper:
    """Saves one run's simulated world at its step boundaries (see the module docstring).
    `boundary` is called by the executor before it journals a leaf step's start or end."""

    def __init__(self, simulation: Any, folder: Path, run_id: str):
        self.simulation = simulation
        self.path = Path(folder) / WORLD_FILE
        self.run_id = run_id
        #: the world ledger's length when each step in progress started
        self._started_at: dict[str, int] = {}

    def boundary(self, event: str, step: str) -> None:
        if event == "step_started":
            self._started_at[step] = self.simulation.ledger_length()
        # a step that ends is still listed in this save (with all its moves): the kill may
        # come before the journal records its end
        self.save({"event": event, "step": step})
        if event != "step_started":
            self._started_at.pop(step, None)

    def marks(self) -> list[int]:
        """Ledger entries where this run's steps in progress started (their moves must be
        kept for its saves)."""
        return list(self._started_at.values())

    def save(self, at: Mapping[str, Any]) -> None:
        running = {sid: self.simulation.moves_since(i) for sid, i in self._started_at.items()}
        write_json_atomic(self.path, {
            "schema": WORLD_SCHEMA,
            "run_id": self.run_id,
            "saved": utc_iso(),
            "at": dict(at),
            "running": running,
            "state": self.simulation.state(),
        })


def read_saved_world(folder: Path) -> dict[str, Any] | None:
    """The world a run saved (None when it saved none: not simulated in-process, or killed
    before its first step)."""
    return read_world_file(Path(folder) / WORLD_FILE)


def world_document(simulation: Any) -> dict[str, Any]:
    """A simulated bench's world as saved (a copy: the simulators go on changing theirs)."""
    return {"schema": WORLD_SCHEMA, "saved": utc_iso(), "state": simulation.state()}


def save_world_file(simulation: Any, path: Path) -> None:
    """Save a simulated bench's world to `path` (atomically): `labctl sim serve --state`."""
    write_json_atomic(Path(path), world_document(simulation))


def read_world_file(path: Path) -> dict[str, Any] | None:
    """A saved world document (None when the file does not exist)."""
    import json

    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: the saved simulated world cannot be read: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != WORLD_SCHEMA:
        raise ConfigError(f"{path}: not a saved simulated world ({WORLD_SCHEMA})")
    return doc


def in_doubt_report(saved: Mapping[str, Any] | None, in_doubt: list[str]) -> dict[str, Any]:
    """What the saved world holds of each in-doubt step: the moves made while it ran, up
    to the last boundary before the kill (none when it was saved as the step started)."""
    if saved is None:
        return {}
    running = saved.get("running") or {}
    at = saved.get("at") or {}
    out: dict[str, Any] = {}
    for sid in in_doubt:
        moves = running.get(sid) or []
        if at.get("step") == sid and at.get("event") == "step_finished":
            holds = "all"  # saved after its end; the kill came before the journal knew
        elif at.get("step") == sid and at.get("event") != "step_started":
            holds = "as it failed" if moves else "none"
        else:
            holds = "part" if moves else "none"
        out[sid] = {"holds": holds, "moves": moves, "saved_at": dict(at)}
    return out


def describe_in_doubt(report: Mapping[str, Any]) -> str:
    """One sentence per in-doubt step: what the restored simulated world holds of it."""
    words = {"all": "all of its moves", "part": "the moves it had made when the world was "
             "last saved", "none": "none of its moves", "as it failed": "its moves up to "
             "its failure"}
    parts = []
    for sid, r in report.items():
        moves = r.get("moves") or []
        what = "; ".join(_move_text(m) for m in moves[-3:])
        parts.append(f"the simulated world holds {words.get(r['holds'], r['holds'])} of "
                     f"{sid}" + (f" ({len(moves)} moves; last: {what})" if moves else ""))
    return "; ".join(parts)


def _move_text(move: Mapping[str, Any]) -> str:
    grams = move.get("grams")
    total = sum(grams.values()) if isinstance(grams, Mapping) else grams
    if move.get("op") == "move_volume":
        return (f"{float(move.get('volume_l') or 0) * 1e3:.4g} mL {move.get('from')} → "
                f"{move.get('to')}")
    return f"{float(total or 0):.4g} g {move.get('material', '')} → {move.get('to')}"
