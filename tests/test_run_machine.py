"""RunMachine: every legal transition works, every other request is refused with a clear
IllegalTransition (never a transitions.MachineError), and each transition is journaled
before the state changes."""

from __future__ import annotations

from typing import Any

import pytest

from labctl.run_machine import (
    FINAL_STATES,
    TRANSITIONS,
    TRIGGERS,
    IllegalTransition,
    RunMachine,
    RunState,
)

LEGAL = {(src, trig): dst for trig, srcs, dst in TRANSITIONS for src in srcs}


@pytest.mark.parametrize(("src", "trigger"), sorted(LEGAL, key=str))
async def test_legal_transition(src: RunState, trigger: str) -> None:
    log: list[dict[str, Any]] = []
    m = RunMachine(journal=log.append, initial=src)
    assert await m.request(trigger, reason="test") == LEGAL[(src, trigger)]
    assert log == [{"trigger": trigger, "source": src.value,
                    "dest": LEGAL[(src, trigger)].value, "reason": "test"}]


ILLEGAL = [(s, t) for s in RunState for t in TRIGGERS if (s, t) not in LEGAL]


@pytest.mark.parametrize(("src", "trigger"), ILLEGAL)
async def test_illegal_transition_is_refused_and_changes_nothing(src: RunState,
                                                                 trigger: str) -> None:
    log: list[dict[str, Any]] = []
    m = RunMachine(journal=log.append, initial=src)
    with pytest.raises(IllegalTransition) as info:
        await m.request(trigger)
    assert m.state == src and log == []
    msg = str(info.value)
    assert f"cannot {trigger} a run that is {src.value}" in msg
    assert info.value.allowed == m.allowed()


async def test_unknown_trigger_is_refused() -> None:
    m = RunMachine()
    with pytest.raises(IllegalTransition, match="cannot explode a run that is idle"):
        await m.request("explode")


def test_final_states_allow_nothing() -> None:
    for s in FINAL_STATES:
        assert RunMachine(initial=s).allowed() == []
    assert "nothing (the run has ended)" in str(
        IllegalTransition("resume", RunState.COMPLETED, []))


async def test_journal_sees_the_transition_before_the_state_changes() -> None:
    seen: list[tuple[str, str]] = []
    m: RunMachine

    def journal(info: dict[str, Any]) -> None:
        seen.append((info["dest"], m.state.value))

    m = RunMachine(journal=journal)
    await m.request("validate")
    assert seen == [("validating", "idle")]


async def test_a_journal_failure_stops_the_transition() -> None:
    def journal(info: dict[str, Any]) -> None:
        raise OSError("disk full")

    m = RunMachine(journal=journal)
    with pytest.raises(OSError):
        await m.request("validate")
    assert m.state == RunState.IDLE


async def test_full_life_cycle_with_pause_and_listeners() -> None:
    changes: list[tuple[str, str, str]] = []
    m = RunMachine()
    m.on_change(lambda s, d, t, info: changes.append((s.value, d.value, t)))
    for trig in ("validate", "validated", "start", "pause", "paused", "resume", "pause",
                 "resume", "abort", "stopped"):
        await m.request(trig)
    assert m.state == RunState.ABORTED and m.final
    assert changes[3] == ("running", "pausing", "pause")
    assert changes[-1] == ("stopping", "aborted", "stopped")


async def test_runs_share_one_machine_and_keep_their_own_state_and_journal() -> None:
    """Every run's model goes through one transitions Machine: one run's transitions never
    move, journal or notify another, however they interleave."""
    logs: dict[str, list[str]] = {"a": [], "b": []}
    heard: dict[str, list[str]] = {"a": [], "b": []}
    machines = {k: RunMachine(journal=lambda info, k=k: logs[k].append(info["dest"]))
                for k in logs}
    for k, m in machines.items():
        m.on_change(lambda s, d, t, info, k=k: heard[k].append(d.value))
    await machines["a"].request("validate")
    await machines["b"].request("validate")
    await machines["a"].request("validated")
    await machines["a"].request("start")
    await machines["b"].request("fail", error="bad recipe")
    assert machines["a"].state == RunState.RUNNING
    assert machines["b"].state == RunState.FAILED
    assert logs == {"a": ["validating", "ready", "running"], "b": ["validating", "failed"]}
    assert heard == logs
    with pytest.raises(IllegalTransition):
        await machines["b"].request("start")
    assert machines["a"].state == RunState.RUNNING  # b's refusal left a alone


async def test_a_finished_runs_machine_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle: a run's machine goes when its last reference does, not at the
    collector's next full pass (which stopped labctl serve's loop for tens of ms)."""
    import gc
    import weakref

    gc.disable()
    try:
        m = RunMachine(journal=lambda info: None)
        for trig in ("validate", "validated", "start", "complete"):
            await m.request(trig)
        gone = weakref.ref(m)
        del m
        assert gone() is None
    finally:
        gc.enable()
