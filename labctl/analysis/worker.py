"""Installed analyses run in a process of their own, one per bench.

Why a process: an analysis is numpy and scipy work (an equivalent-circuit fit, the Lin-KK
test) that belongs on the other core, not on the interpreter that drives the devices. Its
imports (scipy and impedance.py, 0.3 s here) happen there too, started as soon as a run with
analysis steps is known (`prepare`), so they are done by the time its spectrum is measured. A
whole simulated demo run took 1.43 s with them in-process, 1.06-1.17 s with this process
(docs/performance.md). Where no process can be started, analyses run in the bench's process.

The process is `python -m labctl.analysis.worker FD`, talking over one socket pair: pickled
requests in, pickled replies out, one at a time. Not `multiprocessing`: its `spawn` re-imports
the parent's `__main__` script in the child, which breaks or re-runs any program that embeds
a bench without a main guard (a notebook, a script piped to python). The process starts with
the first run that has analysis steps. When it dies (a crash inside a fit, the OOM killer),
the analysis waiting for it fails with `AnalysisProcessLost` and the next one starts a new
process. When the bench's process dies, the worker reads end-of-file and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Collection, Mapping
from multiprocessing.connection import Connection
from typing import Any

from labctl.errors import LabctlError

log = logging.getLogger(__name__)


class AnalysisProcessLost(LabctlError):
    """The analysis process died (or could not start) while an analysis waited for it."""


class CannotStartProcess(AnalysisProcessLost):
    """No analysis process can be started here (no interpreter to run, no processes left):
    analyses then run in the bench's own process, in a thread, as they did before."""


class AnalysisWorker:
    """Runs installed analyses (`labctl.analysis.ANALYSES`) by name in one worker process.
    Thread-safe: analyses of several runs take turns; `prepare` and `close` never wait for
    an analysis in progress (they are called on the event loop)."""

    def __init__(self) -> None:
        #: the process, its connection and what it prepared; held only briefly
        self._lock = threading.Lock()
        #: one analysis at a time: a request and its reply
        self._turn = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._prepared: set[str] = set()
        self._closed = False

    def _connection(self) -> Connection:
        """The worker's connection, starting the process when there is none (lock held)."""
        if self._conn is not None and self._proc is not None and self._proc.poll() is None:
            return self._conn
        self._drop()
        if self._closed:
            raise AnalysisProcessLost("the bench is closed: no analysis process")
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "labctl.analysis.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            ours.close()
            raise CannotStartProcess(f"the analysis process could not start: {exc}") from exc
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._prepared = set()
        # what it prints (warnings, a traceback) goes to this process's log: written to the
        # terminal it would land in `labctl run --json`'s output or across the TUI's screen
        threading.Thread(target=_relay_output, args=(self._proc,), daemon=True,
                         name="analysis-process-output").start()
        # the parent's import path (plugins found through it), as multiprocessing does
        self._conn.send(("path", list(sys.path)))
        return self._conn

    def _drop(self) -> None:
        """Forget the process: close its connection (it reads end-of-file and exits)."""
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            conn.close()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0)  # end-of-file: it exits
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def prepare(self, names: Collection[str]) -> None:
        """Start the process (if it is not running) and have it import what these analyses
        need, while the run goes on. Returns at once; a failure shows when the analysis
        runs."""
        with self._lock:
            new = sorted(set(names) - self._prepared)
            if not new or self._closed:
                return
            try:
                self._connection().send(("prepare", new))
            except (OSError, AnalysisProcessLost) as exc:
                log.warning("analysis process: could not prepare %s: %s", new, exc)
                self._drop()
                return
            self._prepared.update(new)

    def call(self, name: str, files: Mapping[str, Any], args: Mapping[str, Any]) -> Any:
        """`ANALYSES[name](files, **args)` in the worker process (blocking)."""
        with self._turn:
            try:
                with self._lock:
                    conn, proc = self._connection(), self._proc
            except CannotStartProcess as exc:  # not holding the lock: prepare goes on
                log.warning("analysis %s runs in the bench's process: %s", name, exc)
                return _run_here(name, files, args)
            with self._lock:
                try:
                    conn.send(("run", name, dict(files), dict(args)))
                    sent = True
                except OSError:
                    sent = False
            try:
                if not sent:
                    raise EOFError
                reply = conn.recv()  # without the lock: prepare and close go on meanwhile
            except (EOFError, OSError) as exc:
                code = proc.poll() if proc is not None else None
                with self._lock:
                    if self._proc is proc:
                        self._drop()
                raise AnalysisProcessLost(
                    f"analysis {name!r}: the analysis process died while it ran "
                    f"(exit code {code}; {type(exc).__name__})") from None
        if reply[0] == "error":
            failure: Exception = reply[1]
            failure.add_note(f"in the analysis process:\n{reply[2]}")
            raise failure
        return reply[1]

    async def run(self, name: str, files: Mapping[str, Any], args: Mapping[str, Any]) -> Any:
        """`call` without holding up the event loop."""
        return await asyncio.to_thread(self.call, name, files, args)

    def close(self) -> None:
        """Stop the process, whatever it is doing (an analysis still waiting for it fails
        with AnalysisProcessLost: its run is being stopped with the bench)."""
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        with self._lock:
            self._drop()


def _relay_output(proc: subprocess.Popen[bytes]) -> None:
    """Log each line the analysis process prints, until it exits."""
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                log.warning("analysis process %d: %s", proc.pid, text)


def _run_here(name: str, files: Mapping[str, Any], args: Mapping[str, Any]) -> Any:
    from labctl.analysis import ANALYSES

    return ANALYSES[name](dict(files), **args)


# -- in the worker process -------------------------------------------------------------------

def _prepare(names: list[str]) -> None:
    from labctl.analysis import ANALYSES

    for name in names:
        spec = ANALYSES.get(name)
        if spec is not None and spec.prepare is not None:
            spec.prepare()


def _run(name: str, files: dict[str, Any], args: dict[str, Any]) -> tuple[Any, ...]:
    from labctl.analysis import ANALYSES

    try:
        return ("ok", ANALYSES[name](files, **args))
    except Exception as exc:
        text = traceback.format_exc()
        sent: Exception = exc
        try:  # a plugin's exception that cannot cross the process boundary: its text does
            pickle.loads(pickle.dumps(exc))
        except Exception:
            sent = RuntimeError(f"{type(exc).__name__}: {exc}")
        return ("error", sent, text)


def serve(fd: int) -> None:
    """The worker's loop: requests until end-of-file (the bench closed or died)."""
    # Ctrl-C in a terminal goes to the whole process group: the bench decides what stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        kind = request[0]
        if kind == "path":
            sys.path[:] = request[1]
        elif kind == "prepare":
            try:
                _prepare(request[1])
            except Exception as exc:  # the analysis itself will fail and say why
                log.warning("analysis process: preparing %s failed: %s", request[1], exc)
        elif kind == "run":
            reply = _run(*request[1:])
            try:
                conn.send(reply)
            except OSError:  # the bench went away
                return


if __name__ == "__main__":
    serve(int(sys.argv[1]))
