"""The bench's event stream: journal lines of runs and queue changes, fanned out to every
subscriber (the MQTT agent, the TUI). A slow subscriber loses its oldest events, never
the bench's time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from labctl.store import utc_iso

SUBSCRIBER_QUEUE = 10_000


class EventHub:
    """`publish` stamps an event with its type, bench id and time and queues it for every
    subscriber; `subscribe` yields them from now on."""

    def __init__(self, bench_id: str):
        self.bench_id = bench_id
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, ev: dict[str, Any]) -> None:
        ev = {**ev, "type": ev.get("event"), "bench_id": self.bench_id}
        ev.setdefault("t", utc_iso())
        for q in list(self._subscribers):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()  # a slow subscriber loses the oldest, not the newest
            q.put_nowait(ev)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)
