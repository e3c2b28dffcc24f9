"""The run queue on its own: up to max_concurrent runs at once, priorities (higher first,
submission order within), and a resumed run (it restores set-points before its claims
begin) run alone."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

from labctl.bench.queue import RunQueue, RunTicket


def ticket(run_id: str, priority: int = 0, resumed: bool = False) -> RunTicket:
    t = RunTicket(run_id=run_id, plan=None, record=None, machine=None,  # type: ignore[arg-type]
                  context={}, parameters={}, instigator={}, priority=priority)
    if resumed:
        t.resumed, t.skip = True, {"done-step"}
    return t


async def serve(q: RunQueue, release: dict[str, asyncio.Event], log: list[Any]) -> None:
    async def run(t: RunTicket) -> None:
        log.append(("start", t.run_id, sorted(x.run_id for x in q.running)))
        await release[t.run_id].wait()
        log.append(("end", t.run_id))

    async def crashed(t: RunTicket, exc: Exception) -> None:
        raise AssertionError(exc)

    await q.serve(run, crashed)


async def test_priority_order_and_max_concurrent() -> None:
    q = RunQueue(max_concurrent=2)
    ids = ["a", "b", "low", "high", "mid"]
    release = {i: asyncio.Event() for i in ids}
    log: list[Any] = []
    worker = asyncio.create_task(serve(q, release, log))
    q.add(ticket("a"))
    q.add(ticket("b"))
    await asyncio.sleep(0.05)
    assert [r.run_id for r in q.running] == ["a", "b"]
    q.add(ticket("low"))
    q.add(ticket("high", priority=5))
    q.add(ticket("mid", priority=1))
    assert [t.run_id for t in q.waiting] == ["high", "mid", "low"]
    assert q.position("high") == 1 and q.position("low") == 3
    for rid in ids:
        release[rid].set()
        await asyncio.sleep(0.02)
    starts = [e[1] for e in log if e[0] == "start"]
    assert starts == ["a", "b", "high", "mid", "low"]
    worker.cancel()


async def test_a_resumed_run_runs_alone() -> None:
    q = RunQueue(max_concurrent=3)
    release = {i: asyncio.Event() for i in ("a", "resumed", "c")}
    log: list[Any] = []
    q.add(ticket("a"))
    q.add(ticket("resumed", resumed=True))
    q.add(ticket("c"))
    worker = asyncio.create_task(serve(q, release, log))
    await asyncio.sleep(0.05)
    assert [r.run_id for r in q.running] == ["a"]  # the resumed run waits for a to end
    release["a"].set()
    await asyncio.sleep(0.05)
    assert [r.run_id for r in q.running] == ["resumed"]  # and c waits for it
    release["resumed"].set()
    await asyncio.sleep(0.05)
    assert [r.run_id for r in q.running] == ["c"]
    release["c"].set()
    await asyncio.sleep(0.02)
    worker.cancel()


def test_the_active_runs_are_read_safely_from_a_planning_thread() -> None:
    """A submit plans in a worker thread, which asks for the active runs (their claims and
    reservations count) while the event loop adds tickets and forgets ended ones. Iterating
    the ticket dict there raised "dictionary changed size during iteration" when a switch
    fell inside the loop; the switch interval is cut to a microsecond to make it fall
    there at once."""
    from labctl.run_machine import RunMachine

    q = RunQueue()
    for i in range(KEEP := 200):  # ended ones kept, and a long queue
        q.tickets[f"old-{i}"] = ticket(f"old-{i}")
        q.tickets[f"old-{i}"].machine = RunMachine()
    errors: list[BaseException] = []
    stop = threading.Event()

    def planner() -> None:
        while not stop.is_set():
            try:
                assert len(q.active()) >= KEEP
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)
                return

    spare = ticket("spare")
    spare.machine = RunMachine()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=planner)
    thread.start()
    try:
        i, until = 0, time.monotonic() + 3.0
        while not errors and time.monotonic() < until:  # what accept and forget_old do
            q.tickets[f"new-{i}"] = spare
            if i % 2:
                del q.tickets[f"new-{i - 1}"]
                del q.tickets[f"new-{i}"]
            i += 1
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert errors == []
