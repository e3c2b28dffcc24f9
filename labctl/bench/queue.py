"""The run queue: up to `max_concurrent` runs at once (1: one after the other), the
waiting ones by priority (higher first, then in submission order), held after an e-stop
until released. Knows tickets, not devices: the service hands it the coroutine that runs
one; which steps of running runs may go at once is labctl.bench.resources' business."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from labctl.executor import Executor
from labctl.recipe.plan import Plan
from labctl.run_machine import RunMachine
from labctl.store import RunRecord

log = logging.getLogger("labctl.bench")

#: ended runs whose tickets stay in memory (the rest are read from disk when asked)
KEEP_FINISHED_TICKETS = 20


@dataclass
class RunTicket:
    """A submitted run: queued, running, or ended."""

    run_id: str
    plan: Plan
    record: RunRecord
    machine: RunMachine
    context: dict[str, Any]
    parameters: dict[str, Any]
    instigator: dict[str, Any]
    request: dict[str, Any] | None = None
    skip: set[str] = field(default_factory=set)
    prior_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    executor: Executor | None = None
    done: asyncio.Future[dict[str, Any]] | None = None
    submitted_wall: float = field(default_factory=time.monotonic)
    resumed: bool = False
    #: higher runs first; equal priorities in submission order
    priority: int = 0
    #: what its steps touch (labctl.bench.resources.RunClaims), computed at submit
    claims: Any = None
    #: while it is being submitted: its first journal lines, written with its folder
    unwritten: list[dict[str, Any]] | None = None
    #: while it runs on an in-process simulated bench: its WorldKeeper (ledger marks)
    keeper: Any = None
    #: its folder being synced after the submit was answered (labctl.bench.service.accept);
    #: awaited before anything is done to or written in it
    syncing: asyncio.Future[None] | None = None

    async def synced(self) -> None:
        """Once its folder is on disk for good (raises what the sync raised)."""
        if self.syncing is not None:
            await asyncio.shield(self.syncing)

    @property
    def ended(self) -> bool:
        return self.done is not None and self.done.done()

    @property
    def alone(self) -> bool:
        """Must run with no other run beside it: a resumed run puts back set-points and
        recovers interrupted steps on devices before its steps (and their claims) begin."""
        return self.resumed and bool(self.skip)


RunFn = Callable[[RunTicket], Awaitable[None]]
CrashFn = Callable[[RunTicket, Exception], Awaitable[None]]


class RunQueue:
    """Tickets by run id, the waiting ones in order, the one running, and the hold."""

    def __init__(self, max_concurrent: int = 1) -> None:
        self.tickets: dict[str, RunTicket] = {}
        self.waiting: deque[RunTicket] = deque()
        #: the runs started and not yet ended, in the order they started
        self.running: list[RunTicket] = []
        self.max_concurrent = max(1, int(max_concurrent))
        #: after an e-stop: waiting runs stay queued until released
        self.held = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> RunTicket | None:
        """The first running run (what clients of a one-run bench call the current run)."""
        return self.running[0] if self.running else None

    def add(self, ticket: RunTicket) -> int:
        """Queue a ticket behind every waiting run of its priority or higher; its position
        (0 = running now or next)."""
        self.tickets[ticket.run_id] = ticket
        self.waiting.insert(self._place(ticket.priority), ticket)
        self._wake_soon()
        pos = self.position(ticket.run_id)
        return 0 if pos is None else pos

    def _wake_soon(self) -> None:
        """Wake the worker at the next loop turn, not in this one: whoever queued the run
        (the agent answering a submit) gets the loop before the run's start takes it."""
        try:
            asyncio.get_running_loop().call_soon(self._wake.set)
        except RuntimeError:  # no loop running (a synchronous caller): nothing to wait for
            self._wake.set()

    def _place(self, priority: int) -> int:
        """Where a run of this priority goes among the waiting ones."""
        for i, t in enumerate(self.waiting):
            if t.priority < priority:
                return i
        return len(self.waiting)

    def position_if_added(self, priority: int) -> int:
        """The position `add` would give a run of this priority now."""
        return self._slot(self._place(priority))

    def _slot(self, i: int) -> int:
        # the first `free` waiting runs start at once (0); one slot ahead otherwise
        free = max(0, self.max_concurrent - len(self.running))
        return max(0, i - free + 1) if free else i + 1

    def position(self, run_id: str) -> int | None:
        """0 = running now (or next to start), 1 = after that..."""
        if any(t.run_id == run_id for t in self.running):
            return 0
        for i, t in enumerate(self.waiting):
            if t.run_id == run_id:
                return self._slot(i)
        return None

    def reprioritise(self, run_id: str, priority: int) -> RunTicket | None:
        """Move a waiting run to its place for a new priority (None: not waiting)."""
        t = self.withdraw(run_id)
        if t is None:
            return None
        t.priority = int(priority)
        self.add(t)
        return t

    def withdraw(self, run_id: str) -> RunTicket | None:
        """Take a waiting run out of the queue (None when it is not waiting)."""
        for t in list(self.waiting):
            if t.run_id == run_id:
                self.waiting.remove(t)
                return t
        return None

    def active(self) -> set[str]:
        """Run ids queued or running (not ended). Safe from a worker thread (a submit's
        planning asks): the tickets are copied in one step, which the loop adding or
        forgetting a ticket cannot interrupt; iterating the dict itself could be."""
        return {t.run_id for t in list(self.tickets.values()) if not t.machine.final}

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False
        self._wake.set()

    async def serve(self, run: RunFn, crashed: CrashFn) -> None:
        """Start waiting tickets while fewer than `max_concurrent` run, forever; a run that
        raises is handed to `crashed` (a bug must not stop the bench). Cancelled: the
        running runs are cancelled and awaited."""
        try:
            while True:
                while (not self.waiting or self.held
                       or len(self.running) >= self.max_concurrent
                       or any(t.alone for t in self.running)
                       or (self.running and self.waiting[0].alone)):
                    self._wake.clear()
                    await self._wake.wait()
                ticket = self.waiting.popleft()
                self.running.append(ticket)
                task = asyncio.create_task(self._one(ticket, run, crashed),
                                           name=f"run-{ticket.run_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(0)  # let it start before the next is considered
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(BaseException):
                    await task

    async def _one(self, ticket: RunTicket, run: RunFn, crashed: CrashFn) -> None:
        try:
            await run(ticket)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not kill the bench: fail the run
            log.exception("run %s crashed", ticket.run_id)
            await crashed(ticket, exc)
        finally:
            with contextlib.suppress(ValueError):
                self.running.remove(ticket)
            self._wake.set()

    def forget_old(self) -> None:
        """Keep the last KEEP_FINISHED_TICKETS ended runs in memory (plans, executors); older
        ones are on disk only, so a bench that serves for weeks does not grow with every
        run."""
        ended = [rid for rid, t in self.tickets.items() if t.ended]
        for rid in ended[:-KEEP_FINISHED_TICKETS] if len(ended) > KEEP_FINISHED_TICKETS else []:
            del self.tickets[rid]
