"""Resume after a kill, for every shipped recipe (issue 12, items 8 and 9).

Every recipe in recipes/ (the folder is listed at collection time, so a new recipe is
covered without touching this file) is run on the simulated bench of config/sim.toml, its
`labctl run` SIGKILLed while a step is in progress (the Nth step of its plan, N varied from
recipe to recipe so that transfers, dispenses, valve moves, stirs, measurements and analyses
get hit), and `labctl resume`d to completion, deciding its in-doubt material moves from what
the resume report says the saved simulated world holds. The figures of merit must match an
uninterrupted run's.

The simulators run in the killed process here (simulate = true), so they die with it: a
resumed run must start them from the world the run saved (`<run>/sim_world.json`), or it
measures an empty cell (σ = 1e-10 S/m).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from labctl.analysis.eis import KK_LIMIT
from labctl.bench import plan_document, replan_source
from labctl.config import load_config
from labctl.executor import iter_leaves
from labctl.recipe import build_plan
from labctl.store import read_journal, replay

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "sim.toml"
RECIPES = sorted((ROOT / "recipes").glob("*.json"))
LABCTL = [sys.executable, "-m", "labctl"]
#: parameters that shorten a recipe whose defaults take hours of simulated time (a new
#: recipe runs with its defaults)
QUICKER = {"galvanostatic_cycling": ("n_cycles=1", "c_rate=2 /h")}
#: wall seconds a run should take: the time scale follows from the plan's estimate
WALL_S = 2.5
pytestmark = pytest.mark.timeout(300)


def params_of(recipe: Path) -> list[str]:
    return list(QUICKER.get(recipe.stem, ()))


def plan_of(recipe: Path) -> Any:
    cfg = load_config(CONFIG)
    return build_plan(recipe, dict(p.split("=", 1) for p in params_of(recipe)), cfg)


def time_scale(plan: Any) -> float:
    return min(5000.0, max(1000.0, float(plan.estimated_s) / WALL_S))


def kill_point(plan: Any, k: int) -> int:
    """Which step of the plan (index of its leaves) to kill the k-th recipe in: the first
    step of one of its kinds of step (a kind is device and action, or wait, or analysis),
    the kind stepping on with k, so that the recipes get killed in different kinds of step
    (today: a heated hold, a stir, a transfer, a dispense, a wait, an LSV)."""
    leaves = iter_leaves(plan.steps)

    def kind(s: Any) -> str:
        return f"{s.kind} {s.device or ''}.{s.action or ''}"

    kinds = list(dict.fromkeys(kind(s) for s in leaves[1:]))
    wanted = kinds[(4 + 3 * k + k // 3) % len(kinds)]
    return next(i for i, s in enumerate(leaves) if i > 0 and kind(s) == wanted)


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def run_args(recipe: Path, data: Path, scale: float) -> list[str]:
    args = ["run", str(recipe), "--config", str(CONFIG), "--data-dir", str(data),
            "--time-scale", f"{scale:g}", "--operator", "kill-test", "--json"]
    for p in params_of(recipe):
        args += ["--param", p]
    return args


def last_json(stdout: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return doc


def figures(result: dict[str, Any]) -> dict[str, float]:
    return {f["name"]: float(f["value"]) for f in result.get("figures_of_merit") or []
            if isinstance(f.get("value"), (int, float)) and not isinstance(f["value"], bool)}


def journal_of(data: Path) -> Path | None:
    dirs = [p for p in data.iterdir() if p.is_dir()] if data.exists() else []
    return dirs[0] / "events.jsonl" if dirs else None


def leaf_starts(events: list[dict[str, Any]]) -> list[str]:
    return [e["step"] for e in events if e["event"] == "step_started"
            and e.get("kind") not in ("sequence", "parallel")]


def kill_after_start(recipe: Path, data: Path, scale: float, target: str) -> Path:
    """Start `labctl run`, SIGKILL it as soon as the journal says `target` started."""
    proc = subprocess.Popen([*LABCTL, *run_args(recipe, data, scale)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal: Path | None = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            journal = journal_of(data)
            if journal is not None and journal.exists() and target in leaf_starts(
                    read_journal(journal)):
                break
            time.sleep(0.002)
        else:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"{recipe.name}: the run ended (or stalled) before step {target} "
                        f"started: {err[-800:]}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert journal is not None
    return journal


def resume_deciding(data: Path, run_id: str, scale: float) -> subprocess.CompletedProcess[str]:
    """`labctl resume`; when it asks for decisions, redo what the saved world holds none of
    and accept what it holds all of (the operator's reading of the resume report)."""
    base = ["resume", run_id, "--config", str(CONFIG), "--data-dir", str(data),
            "--time-scale", f"{scale:g}", "--operator", "carol", "--json"]
    out = cli(*base)
    if out.returncode != 2:
        return out
    asked = last_json(out.stdout)
    if not asked.get("in_doubt"):
        return out  # refused for another reason: the caller shows it
    decisions: list[str] = []
    world = asked.get("sim_world") or {}
    for step in asked["in_doubt"]:
        assert step in world, ("the resume report does not say what the simulated world "
                               f"holds of {step}: {asked['error']}")
        holds = world[step]["holds"]
        assert holds in ("none", "all", "part"), asked
        assert f"of {step}" in asked["error"], asked["error"]  # the message says it too
        decisions += ["--accept-in-doubt", step] if holds == "all" else ["--redo", step]
    return cli(*base, *decisions)


# ---------------------------------------------------------------- the record plans again


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_the_recipe_a_run_records_plans_again_to_the_same_steps(recipe: Path) -> None:
    """recipe.json (includes inlined) must load again: resume plans from it."""
    cfg = load_config(CONFIG)
    plan = plan_of(recipe)
    doc = json.loads(json.dumps(plan_document(plan, {}, str(recipe))))
    again = build_plan(*replan_source(doc), cfg)
    assert again.sha256 == plan.sha256
    before = [(s.id, s.kind, s.device, s.action, s.idempotent) for s in iter_leaves(plan.steps)]
    after = [(s.id, s.kind, s.device, s.action, s.idempotent) for s in iter_leaves(again.steps)]
    assert after == before
    for a, b in zip(iter_leaves(plan.steps), iter_leaves(again.steps), strict=True):
        for key, value in (a.args or {}).items():  # quantities written with 12 digits
            if isinstance(value, float):
                assert b.args[key] == pytest.approx(value, rel=1e-9), (a.id, key)
            else:
                assert b.args[key] == value, (a.id, key)


# ---------------------------------------------------------------- kill, resume, compare


#: figures that measure the noise of a measurement, not the sample: two uninterrupted runs
#: differ by more than 5 % too; after a resume they must still pass their own limit
NOISE_FIGURES = {"spectrum_validity": 100 * KK_LIMIT}  # Lin-KK largest residual, %


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_kill_mid_step_then_resume_completes_with_the_same_figures(
        tmp_path: Path, recipe: Path) -> None:
    plan = plan_of(recipe)
    scale = time_scale(plan)
    n = kill_point(plan, RECIPES.index(recipe))
    target = str(iter_leaves(plan.steps)[n].id)

    clean = cli(*run_args(recipe, tmp_path / "clean", scale))
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]
    expected = figures(last_json(clean.stdout))

    data = tmp_path / "killed"
    journal = kill_after_start(recipe, data, scale, target)
    run_id = journal.parent.name
    events = read_journal(journal)
    before = replay(events)
    assert target in before.in_doubt or target in before.completed
    done_before = set(before.completed)

    out = resume_deciding(data, run_id, scale)
    where = f"{recipe.name}: killed in step {target} (#{n + 1}); "
    assert out.returncode == 0, where + out.stdout[-2000:] + out.stderr[-2000:]
    result = last_json(out.stdout)
    assert result["status"] == "completed", where + str(result.get("errors"))

    events = read_journal(journal)
    i_res = max(i for i, e in enumerate(events) if e["event"] == "resumed")
    resumed = events[i_res]
    assert (resumed.get("sim_world") or {}).get("restored") is True, where
    again = set(leaf_starts(events[i_res:]))
    assert not again & done_before, where + "completed steps were repeated"
    for decision in (e for e in events if e["event"] == "decision"):
        assert decision["operator"] in ("carol", "labctl"), decision
    got = figures(result)
    assert set(got) == set(expected), where
    for name, value in expected.items():
        assert math.isfinite(got[name]), where + name
        if name in NOISE_FIGURES:  # a statistic of the noise: differs between any two runs
            assert got[name] <= NOISE_FIGURES[name], where + f"{name}: {got[name]}"
            continue
        assert got[name] == pytest.approx(value, rel=0.05, abs=1e-6), (
            where + f"{name}: {got[name]} after resume, {value} uninterrupted")


# ---------------------------------------------------------------- the simulated world


CONDUCTIVITY = ROOT / "recipes" / "electrolyte_conductivity.json"


def world_total_g(run: Path) -> float:
    """Every gram the saved simulated world holds: vessels, syringes, the dosing head."""
    state = json.loads((run / "sim_world.json").read_text())["state"]
    vessels = sum(sum(v["contents_g"].values()) for v in state["world"]["vessels"].values())
    heads = sum(float(i.get("head_content_g", 0.0)) for i in state["instruments"].values())
    return float(vessels + heads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, Path]:
    """σ of an uninterrupted conductivity run, and its record."""
    data = tmp_path_factory.mktemp("clean")
    out = cli(*run_args(CONDUCTIVITY, data, 1000))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = last_json(out.stdout)
    return figures(result)["ionic_conductivity"], Path(result["record"])


@pytest.mark.parametrize(("target", "decision"), [("mix", None), ("dmc", "--redo")],
                         ids=["after-the-material-steps", "during-a-transfer"])
def test_a_resumed_conductivity_run_measures_the_electrolyte_it_made(
        tmp_path: Path, uninterrupted: tuple[float, Path], target: str,
        decision: str | None) -> None:
    """Killed after the salt and solvents went in (in the stir), or in the middle of the DMC
    transfer: the resumed run finds the vial as the run left it and measures the same σ."""
    sigma, clean = uninterrupted
    data = tmp_path / "runs"
    journal = kill_after_start(CONDUCTIVITY, data, 1000, target)
    run = journal.parent
    path = run / "sim_world.json"
    saved = json.loads(path.read_text()) if path.exists() else None  # as the kill left it
    r = replay(read_journal(journal))
    base = ["resume", run.name, "--config", str(CONFIG), "--data-dir", str(data),
            "--time-scale", "1000", "--operator", "carol", "--json"]
    if decision is not None:
        asked = cli(*base)
        assert asked.returncode == 2
        refusal = last_json(asked.stdout)
        assert refusal["in_doubt"] == [target]
        holds = refusal["sim_world"][target]["holds"]
        assert holds in ("none", "part") and f"of {target}" in refusal["error"]
        out = cli(*base, decision, target)
    else:
        out = cli(*base)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = last_json(out.stdout)
    got = figures(result)["ionic_conductivity"]
    assert got > 0.1, f"σ = {got} S/m: the resumed run measured an empty cell"
    assert got == pytest.approx(sigma, rel=0.03)
    # the world saved before the kill agrees with the journal: every completed material
    # step is in it
    assert saved is not None, "the run saved no simulated world"
    vial = saved["state"]["world"]["vessels"]["cell_vial"]["contents_g"]
    assert "salt" in r.completed and vial.get("LiPF6", 0.0) > 0.5
    assert "ec" in r.completed and vial.get("EC", 0.0) > 2.0
    if target == "mix":
        assert vial.get("DMC", 0.0) > 1.5
    events = read_journal(journal)
    resumed = [e for e in events if e["event"] == "resumed"][-1]
    assert resumed["sim_world"]["restored"] is True
    if decision is not None:
        [d] = [e for e in events if e["event"] == "decision"]
        assert d["step"] == target and d["decision"] == "redo"
        assert d["sim_world_holds"] == holds  # the journal says what the operator was told
    # nothing created or lost across the kill: the world ends holding what a clean run's does
    assert world_total_g(run) == pytest.approx(world_total_g(clean), abs=1e-6)


def test_resume_puts_back_the_setpoints_completed_steps_left_running() -> None:
    """The conductivity recipe heats with `hotplate set` and measures later: killed after
    the heat, the start-up safe state has switched the heater off, so the resumed run must
    switch it on again (an `off` or a heated `stir` end ends what they set)."""
    from labctl.executor import standing_setpoints

    leaves = iter_leaves(plan_of(CONDUCTIVITY).steps)
    ids = [str(s.id) for s in leaves]
    upto = set(ids[: ids.index("mix") + 1])
    assert standing_setpoints(leaves, upto) == {"hotplate": {"temperature_c": 25.0}}
    assert standing_setpoints(leaves, upto | {"eis", "cool"}) == {}
    assert standing_setpoints(leaves, set(ids[: ids.index("heat")])) == {}


# ---------------------------------------------------------------- `labctl sim serve --state`


EXEC_BENCH = ROOT / "tests" / "configs" / "exec_bench.toml"
EXEC_FILL = ROOT / "tests" / "recipes" / "exec_fill.json"


def serve_sim(state: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    server = subprocess.Popen([*LABCTL, "sim", "serve", "--config", str(EXEC_BENCH),
                               "--time-scale", "1000", "--state", str(state)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout is not None
    endpoints = {}
    for _ in range(3):
        line = json.loads(server.stdout.readline())
        endpoints[line["name"]] = line["endpoint"]
    return server, endpoints


def vial_g(state: Path) -> dict[str, float]:
    doc = json.loads(state.read_text())
    contents: dict[str, float] = doc["state"]["world"]["vessels"]["vial"]["contents_g"]
    return contents


def test_sim_serve_keeps_its_world_across_a_restart(tmp_path: Path) -> None:
    """Instruments served in a process of their own outlive a kill of `labctl run`; with
    --state they also outlive their own restart: the vial still holds what a run put in."""
    state = tmp_path / "world.json"
    server, endpoints = serve_sim(state)
    try:
        text = EXEC_BENCH.read_text().replace("simulate = true", "simulate = false")
        text = text.replace('watchdog = "1500 s"\n', "")  # host clock real, see test_crash_resume
        for name, placeholder in (("pump_a", "/dev/ttyUSB0"), ("pump_b", "/dev/ttyUSB1"),
                                  ("hotplate", "/dev/ttyUSB5")):
            text = text.replace(f'endpoint = "{placeholder}"',
                                f'endpoint = "{endpoints[name]}"')
        bench = tmp_path / "bench.toml"
        bench.write_text(text)
        out = cli("run", str(EXEC_FILL), "--config", str(bench), "--data-dir",
                  str(tmp_path / "runs"), "--param", "mix_time=1 s", "--param", "rest=1 s",
                  "--json")
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(30)
    filled = vial_g(state)
    assert filled.get("DMC", 0.0) > 1.0 and filled.get("EC", 0.0) > 1.0
    server, _ = serve_sim(state)  # the config's vial is empty: the file must win
    server.terminate()
    server.wait(30)
    assert vial_g(state) == pytest.approx(filled)


def test_figures_of_an_analysis_done_before_the_kill_are_in_the_resumed_result(
        tmp_path: Path) -> None:
    """Stability window killed in its rinse, after its analysis: the resumed run skips the
    analysis (completed) and must still report its figures."""
    recipe = ROOT / "recipes" / "stability_window.json"
    data = tmp_path / "runs"
    journal = kill_after_start(recipe, data, 1000, "rinse.init")
    r = replay(read_journal(journal))
    assert "window" in r.completed
    done = r.steps["window"].result or {}
    before = {f["name"]: f["value"] for f in done.get("figures") or []}
    assert before, done
    out = resume_deciding(data, journal.parent.name, 1000)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = last_json(out.stdout)
    events = read_journal(journal)
    i_res = max(i for i, e in enumerate(events) if e["event"] == "resumed")
    assert "window" not in leaf_starts(events[i_res:])  # not computed again
    assert {k: v for k, v in figures(result).items() if k in before} == before
