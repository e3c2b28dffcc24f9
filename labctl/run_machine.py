"""The life cycle of one run as a state machine (transitions' Machine).

States: idle → validating → ready → running ⇄ pausing → paused → running …, ending in
completed, aborted (through stopping) or failed. Only the transitions in `TRANSITIONS` exist;
asking for any other gets `IllegalTransition` with a sentence saying what is possible, never
a transitions.MachineError trace. Every transition is handed to the journal callback before
the state changes, so the record always knows at least as much as the bench did.

The machine is transitions' synchronous `Machine`: its callbacks (the journal line, the
listeners) are synchronous, so a transition is one step on the event loop that nothing can
interleave with. transitions' AsyncMachine gave up the loop inside every trigger (two of
them in each submit), letting other work in between for nothing.

One `Machine` serves every run: the states and transitions are the same for all, and each
run's state lives on a model of its own that the machine drives (`Event.trigger(model)`).
A machine per run cost ~0.1 ms on the loop at every submit, and each one was a reference
cycle of ~300 objects that only the garbage collector's full passes freed (issue 18).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from transitions import Machine, MachineError

from labctl.errors import LabctlError


class RunState(StrEnum):
    IDLE = "idle"
    VALIDATING = "validating"
    READY = "ready"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPING = "stopping"
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


FINAL_STATES = frozenset({RunState.COMPLETED, RunState.ABORTED, RunState.FAILED})
ACTIVE_STATES = frozenset({RunState.RUNNING, RunState.PAUSING, RunState.PAUSED, RunState.STOPPING})

S = RunState
#: (trigger, sources, destination)
TRANSITIONS: list[tuple[str, list[RunState], RunState]] = [
    ("validate", [S.IDLE], S.VALIDATING),
    ("validated", [S.VALIDATING], S.READY),
    ("start", [S.READY], S.RUNNING),
    ("pause", [S.RUNNING], S.PAUSING),
    ("paused", [S.PAUSING], S.PAUSED),
    ("resume", [S.PAUSING, S.PAUSED], S.RUNNING),
    ("abort", [S.READY, S.RUNNING, S.PAUSING, S.PAUSED], S.STOPPING),
    ("stopped", [S.STOPPING], S.ABORTED),
    ("complete", [S.RUNNING], S.COMPLETED),
    ("fail", [S.VALIDATING, S.READY, S.RUNNING, S.PAUSING, S.PAUSED, S.STOPPING], S.FAILED),
]
TRIGGERS = tuple(t for t, _, _ in TRANSITIONS)

JournalFn = Callable[[dict[str, Any]], None]
ListenerFn = Callable[[RunState, RunState, str, dict[str, Any]], None]


class IllegalTransition(LabctlError):
    """A request the run cannot honour in its present state (e.g. resume while running)."""

    def __init__(self, trigger: str, state: RunState, allowed: list[str]):
        self.trigger = trigger
        self.state = state
        self.allowed = allowed
        can = ", ".join(allowed) if allowed else "nothing (the run has ended)"
        super().__init__(f"cannot {trigger} a run that is {state}; possible now: {can}")


class _Model:
    """What transitions drives for one run: its `state`, and (weakly, so that a finished
    run is freed by reference counting) the RunMachine it belongs to."""

    __slots__ = ("owner", "state")

    def __init__(self, owner: RunMachine, initial: RunState):
        self.state: str = initial.value
        self.owner = weakref.ref(owner)


def _before(event: Any) -> None:
    machine = event.model.owner()
    if machine is not None:
        machine._before(event)


def _after(event: Any) -> None:
    machine = event.model.owner()
    if machine is not None:
        machine._after(event)


#: the one machine every run's model goes through (built on first use)
_shared: Machine | None = None


def _machine() -> Machine:
    global _shared
    if _shared is None:
        _shared = Machine(
            model=None,
            states=[s.value for s in RunState],
            transitions=[{"trigger": t, "source": [s.value for s in src], "dest": dst.value}
                         for t, src, dst in TRANSITIONS],
            initial=RunState.IDLE.value,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=True,
            before_state_change=[_before],
            after_state_change=[_after],
        )
    return _shared


class RunMachine:
    """`await machine.request("pause")` → the new state, or IllegalTransition."""

    def __init__(self, *, journal: JournalFn | None = None, initial: RunState = RunState.IDLE):
        self._journal = journal
        self._listeners: list[ListenerFn] = []
        self._model = _Model(self, initial)
        self._info: dict[str, Any] = {}

    @property
    def state(self) -> RunState:
        return RunState(self._model.state)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def allowed(self) -> list[str]:
        """Triggers legal in the present state, in declaration order."""
        st = self.state
        return [t for t, src, _ in TRANSITIONS if st in src]

    def can(self, trigger: str) -> bool:
        return trigger in self.allowed()

    def on_change(self, fn: ListenerFn) -> None:
        """Call fn(source, dest, trigger, info) after each transition."""
        self._listeners.append(fn)

    async def request(self, trigger: str, **info: Any) -> RunState:
        """Fire `trigger`; `info` (reason, error...) goes into the journal line. A
        coroutine for its callers' sake (they await it); it completes without giving up
        the event loop."""
        if trigger not in TRIGGERS:
            raise IllegalTransition(trigger, self.state, self.allowed())
        if not self.can(trigger):
            raise IllegalTransition(trigger, self.state, self.allowed())
        self._info = info
        try:
            ok = _machine().events[trigger].trigger(self._model)
        except MachineError:
            raise IllegalTransition(trigger, self.state, self.allowed()) from None
        finally:
            self._info = {}
        if not ok:
            raise IllegalTransition(trigger, self.state, self.allowed())
        return self.state

    # -- transitions callbacks -----------------------------------------------------------
    def _before(self, event: Any) -> None:
        """Journal first: a crash right after this line still shows where the run went."""
        if self._journal is not None:
            self._journal({"trigger": event.event.name, "source": event.transition.source,
                           "dest": event.transition.dest, **self._info})

    def _after(self, event: Any) -> None:
        src, dst = RunState(event.transition.source), RunState(event.transition.dest)
        for fn in list(self._listeners):
            fn(src, dst, event.event.name, dict(self._info))
