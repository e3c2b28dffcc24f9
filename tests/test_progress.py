"""Run progress moves within a step (a long hold is not one frozen number), the ETA is
revised from what the run has measured, the CLI's first frame says what is known instead of
"0.0 %  s", and its last frame says 100 % for a completed run. On the simulated bench of
config/sim.toml; progress is judged on the run's own (simulated) clock, never the wall's."""

from __future__ import annotations

import asyncio
import io
import itertools
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from labctl.bench import Bench
from labctl.cli.run_cmds import LiveView
from labctl.config import load_config
from labctl.progress import RunProgress

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "tests" / "tui_recipes" / "tui_steps.json"


def _plan(*steps: tuple[str, float]) -> dict[str, Any]:
    return {"estimated_s": sum(e for _, e in steps),
            "steps": [{"id": s, "kind": "action", "estimated_s": e} for s, e in steps]}


def test_a_step_in_flight_is_credited_with_its_elapsed_share() -> None:
    p = RunProgress(_plan(("a", 10.0), ("b", 90.0)))
    p.feed({"event": "step_started", "step": "a", "kind": "action"}, 0.0)
    p.feed({"event": "step_finished", "step": "a", "kind": "action"}, 10.0)
    p.feed({"event": "step_started", "step": "b", "kind": "action"}, 10.0)
    fractions = [p.snapshot(t)["fraction"] for t in (10.0, 40.0, 70.0, 95.0)]
    assert fractions == pytest.approx([0.10, 0.40, 0.70, 0.95], abs=1e-3)
    assert p.snapshot(500.0)["fraction"] < 1.0  # overrunning: never done before it is
    p.feed({"event": "step_finished", "step": "b", "kind": "action"}, 100.0)
    p.end("completed", 100.0)
    assert p.snapshot(100.0)["fraction"] == 1.0 and p.snapshot(100.0)["eta_s"] == 0.0


def test_the_eta_is_revised_from_what_was_measured() -> None:
    plan = _plan(("a", 10.0), ("b", 10.0), ("c", 80.0))
    on_time, slow = RunProgress(plan), RunProgress(plan)
    for p, took in ((on_time, 10.0), (slow, 30.0)):
        p.start("a", 0.0)
        p.finish("a", took)
        p.start("b", took)
        p.finish("b", 2 * took)
    eta_on_time = on_time.snapshot(20.0)["eta_s"]
    eta_slow = slow.snapshot(60.0)["eta_s"]
    assert eta_on_time == pytest.approx(80.0, rel=1e-3)
    assert eta_slow == pytest.approx(3 * 80.0, rel=1e-3)  # the steps took 3x their estimate


def test_paused_time_is_neither_progress_nor_pace() -> None:
    p = RunProgress(_plan(("hold", 100.0)))
    p.start("hold", 0.0)
    p.pause(20.0)
    assert p.snapshot(70.0)["fraction"] == pytest.approx(0.2)
    p.resume(70.0)
    assert p.snapshot(80.0)["fraction"] == pytest.approx(0.3)
    assert p.snapshot(80.0)["eta_s"] == pytest.approx(70.0)


async def test_progress_moves_within_a_long_step_on_the_simulated_bench(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "sim.toml")
    bench = Bench(cfg, data_dir=tmp_path / "runs", time_scale=2000.0)
    await bench.start()
    try:
        run_id = await bench.submit(RECIPE, {"hold": "30 min", "rest": "0 s"})
        seen: list[tuple[float, float, float]] = []  # (simulated s, fraction, ETA wall s)
        while True:
            st = bench.status()
            prog = (st.get("run") or {}).get("progress") or {}
            steps = [s["id"] for s in prog.get("steps") or []]
            if steps == ["hold"]:
                seen.append((bench.instruments.clock.monotonic(), prog["fraction"],
                             prog["eta_s"]))
            elif seen:
                break
            await asyncio.sleep(0.05)
        result = await bench.wait(run_id)
    finally:
        await bench.close()
    assert result["status"] == "completed"
    # samples at least a simulated minute apart within the hold: each one further on
    spaced = [seen[0]]
    for s in seen[1:]:
        if s[0] - spaced[-1][0] >= 60.0:
            spaced.append(s)
    assert len(spaced) >= 5, seen
    fractions = [f for _, f, _ in spaced]
    assert all(b > a for a, b in itertools.pairwise(fractions)), fractions
    etas = [e for _, _, e in spaced]
    assert all(b < a for a, b in itertools.pairwise(etas)), etas


def _text(renderable: Any) -> str:
    console = Console(width=100, file=io.StringIO(), color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


async def test_cli_first_frame_says_what_is_known_and_last_frame_100(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "sim.toml")
    bench = Bench(cfg, data_dir=tmp_path / "runs", time_scale=2000.0)
    await bench.start()
    try:
        views: list[LiveView] = []

        async def feed() -> None:  # as `labctl run` feeds its live view: the bench's events
            async for ev in bench.subscribe():
                for v in views:
                    v.feed(ev)

        feeder = asyncio.create_task(feed())
        await asyncio.sleep(0)
        run_id = await bench.submit(RECIPE, {"hold": "1 min", "rest": "0 s"})
        view = LiveView(bench, run_id)
        views.append(view)
        first = _text(view.render())
        result = await bench.wait(run_id)
        await asyncio.sleep(0.2)  # the run_finished event reaches the view
        last = _text(view.render())
        feeder.cancel()
    finally:
        await bench.close()
    assert "steps 0/0" not in first and " s / 0.0 s" not in first, first
    assert "estimated" in first or "ETA" in first, first  # a number for the time ahead
    assert result["status"] == "completed"
    assert "100.0 %" in last and "0/0" not in last, last
