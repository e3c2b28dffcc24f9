"""The run journal (`events.jsonl`): an append-only, crash-safe record of everything a run
does, written before it is done.

Each event is one JSON line, written with a single `write()` on an `O_APPEND` descriptor, so a
killed process never leaves half a line. Lines marked durable (anything that precedes an
action: a transition, a step start) are also fsync'd before `append` returns; the other lines
(a step's end) are written at once — a killed process keeps them, the page cache does — and
reach the disk with the next durable line, before the next action starts. A power cut can
at worst cut the final line short: `read_journal` ignores such a tail and `Journal` trims it
before appending again, so every line of the file always parses.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: leaf step kinds: the ones that act (or wait); containers only group them.
LEAF_KINDS = ("action", "wait", "analysis")


def utc_iso(epoch: float | None = None) -> str:
    """UTC ISO-8601 with milliseconds and a Z ('2025-11-26T03:12:45.123Z')."""
    t = time.time() if epoch is None else epoch
    # time.gmtime + integer milliseconds: two thirds of datetime.strftime's cost, and this runs
    # for every journal line (bench/bench_executor.py). Same rounding as datetime: to the
    # microsecond (half to even), then cut to milliseconds.
    frac, whole = math.modf(t)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{us // 1000:03d}Z"


def _default(obj: Any) -> Any:
    """JSON fallback for the odd value in an event (paths, enums, pint quantities)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":"))


def journal_line(seq: int, event: str, fields: dict[str, Any]) -> dict[str, Any]:
    """One event as the journal writes it: sequence number, time (ISO and epoch), name."""
    now = time.time()
    return {"seq": seq, "t": utc_iso(now), "ts": round(now, 6), "event": event, **fields}


class Journal:
    """Appends events to one run's `events.jsonl`."""

    def __init__(self, path: str | Path, *, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._seq = 0
        self._dirty = False
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        # Appends and the torn-tail trim hold an exclusive file lock, so a journal opened
        # while another process appends never mistakes a line being written for a torn one.
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _trim_torn_tail(self.path)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        for ev in read_journal(self.path):
            self._seq = max(self._seq, int(ev.get("seq", 0)))

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, event: str, *, durable: bool = True, **fields: Any) -> dict[str, Any]:
        """Write one event line; with `durable` it is on disk when this returns."""
        with self._lock:
            if self._fd is None:
                raise ValueError(f"journal {self.path} is closed")
            self._seq += 1
            record = journal_line(self._seq, event, fields)
            data = (dumps(record) + "\n").encode("utf-8")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            size: int | None = None
            try:
                size = os.fstat(self._fd).st_size
                n = os.write(self._fd, data)
                if n != len(data):  # regular files do not short-write short of a full disk
                    raise OSError(f"journal {self.path}: short write ({n} of {len(data)} bytes)"
                                  " (disk full?)")
            except OSError:
                # never leave part of a line behind: cut the file back to its last whole line
                if size is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, size)
                self._seq -= 1
                raise
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            if durable and self._fsync:
                os.fsync(self._fd)
                self._dirty = False
            else:
                self._dirty = True
            return record

    def sync(self) -> None:
        """Make every line written so far durable."""
        with self._lock:
            if self._fd is not None and self._dirty and self._fsync:
                os.fsync(self._fd)
            self._dirty = False

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            if self._dirty and self._fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def _trim_torn_tail(path: Path) -> None:
    """Cut a final line that has no newline (only a power cut can leave one)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        content = f.read()
        keep = content.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event line (a torn final line, if any, is left out unless it parses);
    a line in the middle that is not JSON is a ValueError naming it. One read of a
    `JournalReader`, which parses the lines for both."""
    return JournalReader(path).read()


class JournalReader:
    """Reads one run's journal as `read_journal` does, parsing only the lines appended since
    its last read. The bench reads a run's journal at every step that takes stock or moves
    material; read whole each time, a run of 1,500 steps spent half its wall time parsing
    lines it had parsed before (bench/long_recipe.py). Thread-safe. A journal replaced or
    cut short since (a folder rebuilt at start-up) is read again from its start; a torn
    final line is returned when it parses, as by `read_journal`, and read again next time.
    The events returned are shared between reads: read them, do not change them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._inode: int | None = None
        self._offset = 0  # bytes of whole lines parsed
        self._lines = 0  # lines parsed (blank ones too), for the line number of an error
        self._events: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                self._forget(None)
                return []
            try:
                st = os.fstat(fd)
                if st.st_ino != self._inode or st.st_size < self._offset or (
                        self._offset and os.pread(fd, 1, self._offset - 1) != b"\n"):
                    self._forget(st.st_ino)
                raw = os.pread(fd, st.st_size - self._offset, self._offset)
            finally:
                os.close(fd)
            whole = raw.rfind(b"\n") + 1
            lines = raw[:whole].split(b"\n")[:-1]
            new: list[dict[str, Any]] = []
            for i, line in enumerate(lines, self._lines + 1):
                if not line.strip():
                    continue
                try:
                    new.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{self.path}: line {i} is not valid JSON") from None
            self._events += new
            self._offset += whole
            self._lines += len(lines)
            out = list(self._events)
            tail = raw[whole:]
            if tail.strip():
                with contextlib.suppress(json.JSONDecodeError):  # torn: left out
                    out.append(json.loads(tail))
            return out

    def _forget(self, inode: int | None) -> None:
        self._inode, self._offset, self._lines, self._events = inode, 0, 0, []

@dataclass
class StepProgress:
    """What the journal says of one step."""

    id: str
    kind: str = "action"
    #: pending | started | completed | failed | continued (failed, recipe said go on) |
    #: accepted (in doubt, accepted as it stands by an operator)
    state: str = "pending"
    attempts: int = 0
    started: str | None = None
    ended: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Replay:
    """A run's progress rebuilt from its journal."""

    run_id: str | None = None
    state: str = "idle"
    steps: dict[str, StepProgress] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    finished: dict[str, Any] | None = None
    events: int = 0

    def _step(self, sid: str, kind: str | None = None) -> StepProgress:
        if sid not in self.steps:
            self.steps[sid] = StepProgress(id=sid, kind=kind or "action")
            self.order.append(sid)
        elif kind:
            self.steps[sid].kind = kind
        return self.steps[sid]

    @property
    def completed(self) -> list[str]:
        """Leaf steps done (or accepted as done by an operator)."""
        return [s for s in self.order
                if self.steps[s].state in ("completed", "accepted", "continued")
                and self.steps[s].kind in LEAF_KINDS]

    @property
    def in_doubt(self) -> list[str]:
        """Leaf steps started and not finished — a crash hit them mid-action, or they failed
        and stopped the run: what they did to the world is not known."""
        return [s for s in self.order
                if self.steps[s].state in ("started", "failed")
                and self.steps[s].kind in LEAF_KINDS]


def replay(events: list[dict[str, Any]]) -> Replay:
    """Fold the journal into per-step progress (completed, in doubt, failed)."""
    r = Replay(events=len(events))
    for ev in events:
        kind = ev.get("event")
        if kind == "run_created":
            r.run_id = ev.get("run_id")
        elif kind == "transition":
            r.state = str(ev.get("dest", r.state))
        elif kind == "step_started":
            s = r._step(str(ev["step"]), ev.get("kind"))
            s.state = "started"
            s.attempts = max(s.attempts, int(ev.get("attempt", 1)))
            s.started = s.started or ev.get("t")
            s.error = None
        elif kind == "step_finished":
            s = r._step(str(ev["step"]), ev.get("kind"))
            s.state = "completed"
            s.ended = ev.get("t")
            s.result = ev.get("result")
        elif kind == "step_failed":
            s = r._step(str(ev["step"]), ev.get("kind"))
            s.state = "continued" if ev.get("continued") else "failed"
            s.ended = ev.get("t")
            s.error = ev.get("error")
            r.errors.append({"step": s.id, "error": s.error, "device": ev.get("device")})
        elif kind == "decision":
            r.decisions.append(ev)
            if ev.get("decision") == "accept":
                r._step(str(ev["step"])).state = "accepted"
        elif kind == "run_finished":
            r.finished = ev
    return r
