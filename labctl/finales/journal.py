"""The tenant's own journal: `<data-dir>/finales/<tenant uuid>.jsonl`, one fsync'd line per
step of each request it touches, written BEFORE the step is acted on.

FINALES2 does not stop a request being reserved twice or answered twice, so after a crash
the tenant must know from its own disk what it had done: which requests it was reserving
or had reserved, which run answers which request, whether a result was being posted or had
been posted (and its id). Replaying the journal gives the last state of each request.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.store import utc_iso

#: a request in one of these states needs nothing more from this tenant
FINAL = frozenset({"posted", "released", "superseded", "retracted", "post_refused"})


@dataclass
class Entry:
    """What this tenant knows of one request."""

    request_id: str
    state: str
    method: str | None = None
    quantity: str | None = None
    run_id: str | None = None
    result_id: str | None = None
    data: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class TenantJournal:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, Entry] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:  # a line torn by a crash mid-write: nothing after it
                    break
                self._apply(ev)
        self._fh = open(path, "a", encoding="utf-8")

    def close(self) -> None:
        self._fh.close()

    def record(self, request_id: str, state: str, **fields: Any) -> Entry:
        """Append (fsync'd) and apply one state change of a request."""
        ev = {"t": utc_iso(), "request_id": request_id, "state": state, **fields}
        self._fh.write(json.dumps(ev, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._apply(ev)

    def _apply(self, ev: dict[str, Any]) -> Entry:
        rid = str(ev["request_id"])
        e = self.entries.get(rid) or Entry(request_id=rid, state=ev["state"])
        e.state = ev["state"]
        for k in ("method", "quantity", "run_id", "result_id", "data"):
            if ev.get(k) is not None:
                setattr(e, k, ev[k])
        e.history.append({k: v for k, v in ev.items() if k != "data"})
        self.entries[rid] = e
        return e

    def open_entries(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.state not in FINAL]
