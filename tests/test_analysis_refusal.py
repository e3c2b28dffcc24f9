"""A refused analysis on the simulated bench: the impedance of the cell in an empty vial
(the planner cannot know the vial was spilled; here the plan skips its check) fails the run
with the reason, and the result records the conductivity as a failed figure, no number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl.bench import Bench
from labctl.config import load_config
from tests.executor_support import Step, action, plan

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


async def test_open_circuit_spectrum_fails_the_run_with_a_failed_figure(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "sim.toml")
    bench = Bench(cfg, data_dir=tmp_path / "runs", time_scale=1000.0)
    await bench.start()
    try:
        p = plan("dry_cell",
                 action(cfg, "eis", "potentiostat", "peis", E_dc="0 V", vs="ocp",
                        amplitude="10 mV", f_start="100 kHz", f_end="1 Hz",
                        points_per_decade=5),
                 Step(id="conductivity", path="conductivity", kind="analysis",
                      action="ionic_conductivity", args={"step": "eis"}))
        run_id = await bench.submit(p, instigator="operator:test")
        result = await bench.wait(run_id)
        record = bench.store.open(run_id).folder
    finally:
        await bench.close()
    assert result["status"] == "failed"
    [error] = result["errors"]
    assert error["step"] == "conductivity" and "open circuit" in json.dumps(error)
    figures = {f["name"]: f for f in result["figures_of_merit"]}
    sigma = figures["ionic_conductivity"]
    assert sigma["value"] is None and sigma["status"] == "failed"
    assert "no real-axis intercept" in sigma["reason"]
    assert sigma["analysis_step"] == "conductivity"
    on_disk = json.loads((record / "result.json").read_text())
    assert on_disk["figures_of_merit"] == result["figures_of_merit"]
