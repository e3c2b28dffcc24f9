"""Which journal lines the executor fsyncs: every action's step_started is on disk before the
action starts (the durability that a resume relies on); a container's (sequence, parallel)
start is not fsync'd on its own, since it acts on nothing (issue 18)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from labctl.actions import get_action
from labctl.capabilities.valve import Valve
from labctl.clock import ScaledClock
from labctl.device import DeviceInfo, DeviceSpec, DeviceState, DeviceStatus
from labctl.executor import Executor
from labctl.recipe.plan import Plan, PlannedStep
from labctl.run_machine import RunMachine
from labctl.store import RunRecord


class RecordingValve(Valve):
    """An in-process valve that notes, at each move, which journal lines are on disk."""

    protocol: ClassVar[str] = "none (in-process)"

    def __init__(self, synced: list[dict[str, Any]]):
        super().__init__(DeviceSpec(name="valve", driver="recording-valve",
                                    params={"positions": 6}))
        self._pos = 1
        self._synced = synced
        self.seen_synced: list[list[dict[str, Any]]] = []

    @property
    def positions(self) -> int:
        return 6

    async def connect(self) -> None:
        return None

    async def identify(self) -> DeviceInfo:
        return DeviceInfo(model="recording")

    async def status(self) -> DeviceStatus:
        return DeviceStatus(DeviceState.IDLE, {"position": self._pos})

    async def move(self, position: int) -> None:
        self.seen_synced.append(list(self._synced))
        self._pos = position

    async def position(self) -> int:
        return self._pos

    async def home(self) -> None:
        self._pos = 1


def _move(sid: str, position: int) -> PlannedStep:
    return PlannedStep(id=sid, path=sid, kind="action", device="valve", action="move",
                       args={"position": position}, idempotent=True)


@pytest.mark.asyncio
async def test_actions_are_fsynced_before_they_act_containers_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[dict[str, Any]] = []  # the journal's last line at each fsync of it
    rec = RunRecord.create(tmp_path, "fsync-run")
    events = rec.journal.path
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        real_fsync(fd)
        if os.path.samestat(os.fstat(fd), os.stat(events)):
            lines = events.read_bytes().splitlines()
            synced.append(json.loads(lines[-1]))

    monkeypatch.setattr(os, "fsync", spy_fsync)
    valve = RecordingValve(synced)
    steps = [
        PlannedStep(id="outer", path="steps[0]", kind="sequence", children=[
            _move("a", 2),
            PlannedStep(id="both", path="steps[0].steps[1]", kind="parallel", children=[
                _move("b", 3),
                PlannedStep(id="pause", path="p", kind="wait", duration_s=0.01),
            ]),
        ]),
        _move("c", 4),
    ]
    plan = Plan(name="fsync", version="1", description="", recipe={"name": "fsync"},
                parameters={}, sha256="0" * 64, steps=steps, estimated_s=0.0, materials=[],
                material_effects=[])
    machine = RunMachine(journal=lambda info: rec.journal.append("transition", **info))
    await machine.request("validate")
    await machine.request("validated")
    spec = get_action(valve, "move")
    ex = Executor(plan, {"valve": valve}, clock=ScaledClock(1000), record=rec, machine=machine,
                  actions=lambda dev, name: spec)
    state = await ex.execute()
    rec.close()
    assert str(state) == "completed"

    # each move saw its own step_started fsync'd before it acted
    assert len(valve.seen_synced) == 3
    for sid, seen in zip(["a", "b", "c"], valve.seen_synced, strict=True):
        assert any(e["event"] == "step_started" and e.get("step") == sid for e in seen), sid
    # the wait is a leaf too: fsync'd at its start
    assert any(e["event"] == "step_started" and e.get("step") == "pause" for e in synced)
    # no fsync was made for a container's start
    starts = [e.get("step") for e in synced if e["event"] == "step_started"]
    assert "outer" not in starts and "both" not in starts
    # ... yet the container's start is in the journal (it reached the disk with the next leaf)
    written = [json.loads(line) for line in events.read_bytes().splitlines()]
    assert {"outer", "both"} <= {e.get("step") for e in written if e["event"] == "step_started"}


@pytest.mark.asyncio
async def test_analysis_runs_off_the_event_loop(tmp_path: Path) -> None:
    """An analysis (its first imports: impedance, pandas, matplotlib; its fit) runs in a worker
    thread, so the event loop keeps serving the connected devices meanwhile."""
    import asyncio
    import threading

    loop_thread = threading.get_ident()
    seen: list[int] = []

    def probe(files: dict[str, str]) -> dict[str, Any]:
        seen.append(threading.get_ident())
        return {"files": len(files)}

    rec = RunRecord.create(tmp_path, "analysis-run")
    steps = [PlannedStep(id="fit", path="steps[0]", kind="analysis", action="probe",
                         analysis="probe", idempotent=True)]
    plan = Plan(name="analysis", version="1", description="", recipe={"name": "analysis"},
                parameters={}, sha256="0" * 64, steps=steps, estimated_s=0.0, materials=[],
                material_effects=[])
    machine = RunMachine(journal=lambda info: rec.journal.append("transition", **info))
    await machine.request("validate")
    await machine.request("validated")
    ex = Executor(plan, {}, clock=ScaledClock(1000), record=rec, machine=machine,
                  analyses={"probe": probe})
    state = await ex.execute()
    rec.close()
    assert str(state) == "completed"
    assert ex.results["fit"] == {"files": 0}
    assert seen and seen[0] != loop_thread
    assert asyncio.get_running_loop() is not None
