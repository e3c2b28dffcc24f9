"""One process per bench: an flock'd lock file in the data dir, and who holds it.

Two processes driving one bench undo each other: the second applies every safe state at
start-up (stopping the first's pumps mid-transfer) and closes the first's running run as
"interrupted". Every adapter that opens the bench (`labctl run`, `resume`, `serve`, `tui`
local) therefore takes `<data-dir>/bench.lock` first, through `Bench.start()`.

The lock is `flock(LOCK_EX | LOCK_NB)` on the file: the kernel drops it when the holder's
descriptor closes, whatever ends the process (SIGKILL included), so a stale file never
blocks the next run. The file records pid, host, command and start time so a refusal can
name the holder; the contents are informative only, the flock is the lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from labctl.errors import LabctlError

LOCK_NAME = "bench.lock"


class BenchInUse(LabctlError):
    """Another process holds this bench (its data dir or one of its device ports): nothing
    was touched. The CLI maps it to exit 2."""


class BenchLocked(BenchInUse):
    """The data dir's bench lock is held by another process; `holder` is what it recorded
    (pid, host, command, started), or {} when it had not written it yet."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path = path
        self.holder = holder
        super().__init__(f"{path.parent}: the bench is in use by {describe_holder(holder)} "
                         f"(lock {path}); wait for it to end or stop it first")


def describe_holder(holder: dict[str, Any]) -> str:
    """`pid 123 on host lab1 (labctl run x.json) since 2026-01-01T10:00:00Z`."""
    if not holder:
        return "another process"
    text = f"pid {holder.get('pid', '?')}"
    if holder.get("host"):
        text += f" on host {holder['host']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    if holder.get("started"):
        text += f" since {holder['started']}"
    return text


def current_command() -> str:
    """This process's command line as a user typed it (`labctl run x.json`)."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name in ("labctl", "__main__.py")):
        argv[0] = "labctl"
    return " ".join(argv)[:300]


def read_holder(path: Path) -> dict[str, Any]:
    """What the holder wrote in the lock file ({} if nothing readable)."""
    for _ in range(10):  # the holder truncates, then writes: give it a moment
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text()
            if text.strip():
                data = json.loads(text)
                if isinstance(data, dict):
                    return data
        time.sleep(0.02)
    return {}


class BenchLock:
    """`lock = BenchLock(data_dir); lock.acquire()` ... `lock.release()`; also a context
    manager. Raises BenchLocked when another process (or another BenchLock of this one)
    holds it."""

    def __init__(self, data_dir: str | Path, *, command: str | None = None):
        self.path = Path(data_dir) / LOCK_NAME
        self.command = command if command is not None else current_command()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> BenchLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BenchLocked(self.path, read_holder(self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the file (no stale holder shown) and drop the flock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> BenchLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
