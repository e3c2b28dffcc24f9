"""Installed analyses run in the bench's analysis process (labctl.analysis.worker): the same
figures as in-process, refusals with their failed figures, a dead process named and replaced,
no process left behind when the bench or its process goes away."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from labctl.analysis import ANALYSES
from labctl.analysis.registry import AnalysisRefused
from labctl.analysis.worker import AnalysisProcessLost, AnalysisWorker
from labctl.techniques import PEIS
from tests.test_analysis import electrolyte_world, empty_vial_world, start

ROOT = Path(__file__).resolve().parent.parent
SPECTRUM = PEIS(amplitude_v=0.01, f_start_hz=1e5, f_end_hz=0.1, n_frequencies=31)


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as f:  # a zombie of ours has exited too
            if f.read().split(")")[-1].split()[0] == "Z":
                return True
        time.sleep(0.05)
    return False


@pytest.fixture
async def record(tmp_path: Path) -> AsyncIterator[Any]:
    """record(world, name): a PEIS spectrum of that world's cell vial, as a BDF file
    measured by the EmStat driver from its simulator over a pty."""
    opened: list[Any] = []

    async def measure(world: Any, name: str, **options: Any) -> Path:
        b = await start(world, **options)
        opened.append(b)
        return await b.record(SPECTRUM, tmp_path / f"{name}.bdf.csv")

    yield measure
    for b in opened:
        await b.dev.open_link().close()
        await b.served.close()


@pytest.fixture
def worker() -> Any:
    w = AnalysisWorker()
    yield w
    w.close()


async def test_the_figures_are_those_computed_in_process(record: Any,
                                                         worker: AnalysisWorker) -> None:
    path = await record(electrolyte_world(5.0, 5.0, 1.5191, 25.0), "eis",
                        redox_concentration=0)
    args = {"cell_constant": "1.0 /cm", "temperature": "25 degC"}
    worker.prepare(["ionic_conductivity"])
    assert worker._proc is not None and worker._proc.pid != os.getpid()
    there = await worker.run("ionic_conductivity", {"eis": path}, args)
    here = ANALYSES["ionic_conductivity"]({"eis": path}, **args)
    assert there == here
    assert there["ionic_conductivity"]["value"] > 0


async def test_a_refusal_crosses_with_its_failed_figures(record: Any,
                                                         worker: AnalysisWorker) -> None:
    path = await record(empty_vial_world(), "dry")
    with pytest.raises(AnalysisRefused, match="open circuit") as info:
        await worker.run("ionic_conductivity", {"dry": path}, {"cell_constant": "1.0 /cm"})
    assert info.value.analysis == "ionic_conductivity"
    assert {f["name"] for f in info.value.failed_figures} == {
        "ionic_conductivity", "ionic_conductivity_mS_cm"}
    assert all(f["value"] is None and f["status"] == "failed"
               for f in info.value.failed_figures)


async def test_bad_arguments_fail_with_the_analysis_own_error(worker: AnalysisWorker,
                                                              tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="method must be 'fit' or 'intercept'"):
        await worker.run("ionic_conductivity", {"eis": tmp_path / "x.bdf.csv"},
                         {"method": "guess"})


async def test_a_process_that_dies_mid_analysis_is_named_and_replaced(
        record: Any, tmp_path: Path, worker: AnalysisWorker) -> None:
    # the analysis blocks reading a FIFO nobody writes, until its process is killed
    fifo = tmp_path / "stuck.bdf.csv"
    os.mkfifo(fifo)
    waiting = asyncio.ensure_future(
        worker.run("ionic_conductivity", {"stuck": fifo}, {}))
    deadline = time.monotonic() + 30
    while True:  # a writer can open the FIFO once the analysis has opened it for reading
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline, "the analysis never opened its data file"
            await asyncio.sleep(0.02)
    # held open and silent: the analysis waits in its read (closing it would be an EOF)
    # prepare is called on the event loop: it must not wait for the analysis in progress
    preparing = threading.Thread(target=worker.prepare, args=(["stability_window"],))
    preparing.start()
    preparing.join(timeout=20)
    assert not preparing.is_alive(), "prepare waited for the analysis in progress"
    assert not waiting.done()
    assert worker._proc is not None
    dead = worker._proc.pid
    os.kill(dead, signal.SIGKILL)
    with pytest.raises(AnalysisProcessLost, match="died while it ran"):
        await waiting
    os.close(writer)
    # the next analysis gets a new process
    path = await record(electrolyte_world(5.0, 5.0, 1.5191, 25.0), "eis",
                        redox_concentration=0)
    out = await worker.run("ionic_conductivity", {"eis": path}, {"cell_constant": "1.0 /cm"})
    assert out["ionic_conductivity"]["value"] > 0
    assert worker._proc is not None and worker._proc.pid != dead


def test_close_stops_the_process_even_while_it_imports() -> None:
    w = AnalysisWorker()
    w.prepare(["ionic_conductivity"])
    assert w._proc is not None
    pid = w._proc.pid
    w.close()
    assert _gone(pid)
    w.prepare(["ionic_conductivity"])  # a closed bench starts no process
    assert w._proc is None


def test_the_process_exits_when_the_bench_process_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from labctl.analysis.worker import AnalysisWorker
        w = AnalysisWorker()
        w.prepare(["ionic_conductivity"])
        print(w._proc.pid, flush=True)
        time.sleep(60)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        assert _gone(child, within_s=20)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path) -> None:
    """The process is not multiprocessing's spawn, which imports the parent's __main__
    script again in the child (and ran this one twice)."""
    script = tmp_path / "embed.py"
    marker = tmp_path / "ran.txt"
    script.write_text(textwrap.dedent(f"""
        import json
        from labctl.analysis.worker import AnalysisWorker
        with open({str(marker)!r}, "a") as f:
            f.write("ran\\n")
        w = AnalysisWorker()
        try:
            w.call("ionic_conductivity", {{}}, {{"method": "guess"}})
        except ValueError as exc:
            print(json.dumps(str(exc)))
        w.close()
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "method must be" in json.loads(done.stdout.splitlines()[-1])
    assert marker.read_text() == "ran\n"


def test_what_the_process_prints_goes_to_the_log(worker: AnalysisWorker,
                                                 caplog: pytest.LogCaptureFixture,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    """Not to the terminal: there it would land in `labctl run --json`'s output or across
    the TUI's screen."""
    caplog.set_level("WARNING", logger="labctl.analysis.worker")
    with worker._lock:
        worker._connection().send(("prepare", 5))  # the process logs that it cannot
    deadline = time.monotonic() + 30
    while not any("preparing 5 failed" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "nothing relayed from the analysis process"
        time.sleep(0.05)
    out, err = capfd.readouterr()
    assert "preparing 5 failed" not in out + err


async def test_without_a_process_the_analysis_runs_in_the_bench_process(
        record: Any, worker: AnalysisWorker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An interpreter that cannot start another one (embedded, no executable, no processes
    left) still gets its figures, as before the analysis process existed."""
    path = await record(electrolyte_world(5.0, 5.0, 1.5191, 25.0), "eis",
                        redox_concentration=0)
    monkeypatch.setattr(sys, "executable", str(ROOT / "no-such-python"))
    worker.prepare(["ionic_conductivity"])  # logs that it cannot, raises nothing
    out = await worker.run("ionic_conductivity", {"eis": path}, {"cell_constant": "1.0 /cm"})
    assert worker._proc is None
    assert out == ANALYSES["ionic_conductivity"]({"eis": path}, cell_constant="1.0 /cm")
    assert any("runs in the bench's process" in r.getMessage() for r in caplog.records)
