"""The run queue: one run at a time, in submission order, held after an e-stop until
released. Knows tickets, not devices: the service hands it the coroutine that runs one."""

from __future__ import annotations

import asyncio
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

    @property
    def ended(self) -> bool:
        return self.done is not None and self.done.done()


RunFn = Callable[[RunTicket], Awaitable[None]]
CrashFn = Callable[[RunTicket, Exception], Awaitable[None]]


class RunQueue:
    """Tickets by run id, the waiting ones in order, the one running, and the hold."""

    def __init__(self) -> None:
        self.tickets: dict[str, RunTicket] = {}
        self.waiting: deque[RunTicket] = deque()
        self.current: RunTicket | None = None
        #: after an e-stop: waiting runs stay queued until released
        self.held = False
        self._wake = asyncio.Event()

    def add(self, ticket: RunTicket) -> int:
        """Queue a ticket; its position (0 = next to run when nothing runs)."""
        self.tickets[ticket.run_id] = ticket
        self.waiting.append(ticket)
        self._wake.set()
        return len(self.waiting) - (0 if self.current else 1)

    def position(self, run_id: str) -> int | None:
        """0 = running now (or next), 1 = after that..."""
        if self.current is not None and self.current.run_id == run_id:
            return 0
        for i, t in enumerate(self.waiting):
            if t.run_id == run_id:
                return i + (1 if self.current is not None else 0)
        return None

    def withdraw(self, run_id: str) -> RunTicket | None:
        """Take a waiting run out of the queue (None when it is not waiting)."""
        for t in list(self.waiting):
            if t.run_id == run_id:
                self.waiting.remove(t)
                return t
        return None

    def active(self) -> set[str]:
        """Run ids queued or running (not ended)."""
        return {rid for rid, t in self.tickets.items() if not t.machine.final}

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False
        self._wake.set()

    async def serve(self, run: RunFn, crashed: CrashFn) -> None:
        """Run the waiting tickets one by one, forever; a run that raises is handed to
        `crashed` (a bug must not stop the bench)."""
        while True:
            while not self.waiting or self.held:
                self._wake.clear()
                await self._wake.wait()
            ticket = self.waiting.popleft()
            self.current = ticket
            try:
                await run(ticket)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the bench: fail the run
                log.exception("run %s crashed", ticket.run_id)
                await crashed(ticket, exc)
            finally:
                self.current = None

    def forget_old(self) -> None:
        """Keep the last KEEP_FINISHED_TICKETS ended runs in memory (plans, executors); older
        ones are on disk only, so a bench that serves for weeks does not grow with every
        run."""
        ended = [rid for rid, t in self.tickets.items() if t.ended]
        for rid in ended[:-KEEP_FINISHED_TICKETS] if len(ended) > KEEP_FINISHED_TICKETS else []:
            del self.tickets[rid]
