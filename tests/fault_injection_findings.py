"""Faults the run does not notice: found by tests/test_fault_injection.py, waiting for a fix
in labctl/actions.py (not collected by a plain `pytest` run; run it explicitly):

    .venv/bin/python -m pytest tests/fault_injection_findings.py -q

`stirrer.stir` and `temperature_controller.hold` switch the device on, then only sleep
(`_hold`) until the duration is over: nothing asks the device how it is doing meanwhile. A
hotplate that trips mid-stir (IKA `Er 2`: heater and motor off) or a heated block whose
heater fails mid-hold (the Omega's PV falls back to ambient) leaves a run that completes
with no error — and provenance that records mixing or heating that did not happen. When the
actions watch their device, move these tests into tests/test_fault_injection.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from test_fault_injection import BY_DEVICE, recipe, run_with_fault, sim_bench, simulators


async def _strike_mid_hold(device: str, fault: str, value: object,
                           tmp_path: Path) -> dict[str, Any]:
    t = BY_DEVICE[device]
    steps = [dict(s) for s in t.steps]
    for s in steps:
        if s["id"] == "target":  # a long hold, struck well inside it
            s["args"] = {**s["args"], "duration": "30 min"}
    async with sim_bench(tmp_path / "runs") as bench:
        sim = simulators(bench)[device]

        async def strike() -> None:
            await asyncio.sleep(0.3)
            setattr(sim.faults, fault, value)

        result = await run_with_fault(bench, recipe(f"mid_hold_{device}", steps), "target",
                                      lambda: asyncio.ensure_future(strike()))
        return result


async def test_hotplate_tripping_mid_stir_fails_the_run(tmp_path: Path) -> None:
    result = await _strike_mid_hold("hotplate", "error", 2, tmp_path)
    assert result["status"] == "failed", "the stir completed although the motor stopped"
    assert result["errors"][0]["device"] == "hotplate"


async def test_heater_failing_mid_hold_fails_the_run(tmp_path: Path) -> None:
    result = await _strike_mid_hold("block_heater", "stall", True, tmp_path)
    assert result["status"] == "failed", "the hold completed although the block went cold"
    assert result["errors"][0]["device"] == "block_heater"
