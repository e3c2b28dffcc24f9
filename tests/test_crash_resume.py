"""SIGKILL of a real `labctl run` at random moments: the record stays readable (every journal
line parses), completed steps are known, and `labctl resume` finishes the run without
repeating them — asking for a decision on an in-doubt step that moves material.

The instruments must outlive the crash of the control software, as hardware does: they are
served by `labctl sim serve` in a process of their own (time scale 1000), and `labctl run`
reaches them through a bench config that names their pseudo-terminals (simulate = false).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl.store import read_journal, replay

ROOT = Path(__file__).resolve().parent.parent
SIM_CONFIG = ROOT / "tests" / "configs" / "exec_bench.toml"
RECIPE = ROOT / "tests" / "recipes" / "exec_fill.json"
LABCTL = [sys.executable, "-m", "labctl"]
#: a short run: ~1-3 s of wall time (stirring and rest are real seconds on a hardware bench)
QUICK = ("mix_time=1 s", "rest=1 s")
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Serve the bench's instruments in their own process (shared by this module's tests,
    as one bench serves many runs); a config that reaches them."""
    server = subprocess.Popen([*LABCTL, "sim", "serve", "--config", str(SIM_CONFIG),
                               "--time-scale", "1000"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        endpoints = {}
        for _ in range(3):
            line = json.loads(server.stdout.readline())
            endpoints[line["name"]] = line["endpoint"]
        text = SIM_CONFIG.read_text().replace("simulate = true", "simulate = false")
        # the host's clock is real here while the instruments run 1000x faster: a watchdog
        # fed every 6 real minutes would trip after 1.5 wall seconds, so none is armed
        text = text.replace('watchdog = "1500 s"\n', "")
        for name, placeholder in (("pump_a", "/dev/ttyUSB0"), ("pump_b", "/dev/ttyUSB1"),
                                  ("hotplate", "/dev/ttyUSB5")):
            text = text.replace(f'endpoint = "{placeholder}"', f'endpoint = "{endpoints[name]}"')
        path = tmp_path_factory.mktemp("bench") / "bench.toml"
        path.write_text(text)
        yield path
    finally:
        server.terminate()
        server.wait(30)


def start_run(config: Path, data: Path, *params: str) -> subprocess.Popen[bytes]:
    args = [*LABCTL, "run", str(RECIPE), "--config", str(config), "--data-dir", str(data),
            "--operator", "crash-test", "--json"]
    for p in (*QUICK, *params):
        args += ["--param", p]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def resume(config: Path, data: Path, run_id: str,
           *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, "resume", run_id, "--config", str(config), "--data-dir",
                           str(data), "--operator", "carol", "--json", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def last_json(stdout: str) -> dict[str, Any]:
    """--json output is JSON Lines; the last line is the result (or the error)."""
    doc: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return doc


def run_dirs(data: Path) -> list[Path]:
    return [p for p in data.iterdir() if p.is_dir()] if data.exists() else []


def check_journal_whole(path: Path) -> list[dict[str, Any]]:
    """Every line of the file is complete JSON, seq strictly increasing."""
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "the journal ends mid-line"
    events = [json.loads(line) for line in raw.splitlines()]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    return events


def test_kill_during_a_material_move_then_resume_asks_and_records_the_decision(
        tmp_path: Path, config: Path) -> None:
    data = tmp_path / "runs"
    # 2 mL at 0.5 mL/min: 0.24 s of wall time, and a redo fits the 5 mL syringe whatever
    # the interrupted stroke left in it
    proc = start_run(config, data, "dmc_volume=2 mL", "flow=0.5 mL/min")
    journal: Path | None = None
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            dirs = run_dirs(data)
            if dirs and (dirs[0] / "events.jsonl").exists():
                journal = dirs[0] / "events.jsonl"
                evs = read_journal(journal)
                if any(e["event"] == "step_started" and e.get("step") == "dmc" for e in evs):
                    break
            time.sleep(0.002)
        else:
            pytest.fail("the transfer never started")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert journal is not None
    events = check_journal_whole(journal)
    r = replay(events)
    assert set(r.completed) >= {"init.init_a", "init.init_b"}
    assert r.in_doubt == ["dmc"]
    run_id = journal.parent.name
    # without a decision: exit 2, the message names the step and the two ways on
    out = resume(config, data, run_id)
    assert out.returncode == 2
    msg = last_json(out.stdout)["error"]
    assert "dmc" in msg and "--accept-in-doubt dmc" in msg and "--redo dmc" in msg
    # redo it: the transfer runs again, the initialisations do not
    out = resume(config, data, run_id, "--redo", "dmc")
    assert out.returncode == 0, out.stdout + out.stderr
    events = check_journal_whole(journal)
    i_res = max(i for i, e in enumerate(events) if e["event"] == "resumed")
    again = [e["step"] for e in events[i_res:] if e["event"] == "step_started"]
    assert again[0] == "dmc" and not {"init.init_a", "init.init_b"} & set(again)
    [decision] = [e for e in events if e["event"] == "decision"]
    assert decision["step"] == "dmc" and decision["decision"] == "redo"
    assert decision["operator"] == "carol"
    result = json.loads((journal.parent / "result.json").read_text())
    assert result["status"] == "completed"


def test_an_idempotent_flag_put_on_an_in_doubt_transfer_by_hand_is_refused(
        tmp_path: Path, config: Path) -> None:
    """Issue 12 item 7: a recorded recipe edited by hand to call the interrupted transfer
    idempotent (its hash recomputed to match) must not make `labctl resume` repeat the
    transfer without asking: it is refused, naming the JSON path and why, and nothing runs."""
    from labctl.recipe.validate import canonical_sha256

    data = tmp_path / "runs"
    proc = start_run(config, data, "dmc_volume=2 mL", "flow=0.5 mL/min")
    journal: Path | None = None
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            dirs = run_dirs(data)
            if dirs and (dirs[0] / "events.jsonl").exists():
                journal = dirs[0] / "events.jsonl"
                if any(e["event"] == "step_started" and e.get("step") == "dmc"
                       for e in read_journal(journal)):
                    break
            time.sleep(0.002)
        else:
            pytest.fail("the transfer never started")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert journal is not None
    assert replay(check_journal_whole(journal)).in_doubt == ["dmc"]
    doc_path = journal.parent / "recipe.json"
    doc = json.loads(doc_path.read_text())
    [raw] = [s for s in doc["recipe"]["steps"] if s.get("id") == "dmc"]
    raw["idempotent"] = True
    for s in doc["steps"]:
        if s["id"] == "dmc":
            s["idempotent"] = True
    doc["sha256"] = canonical_sha256(doc["recipe"])
    doc_path.write_text(json.dumps(doc))
    n_before = len(check_journal_whole(journal))
    out = resume(config, data, journal.parent.name)
    assert out.returncode == 2, out.stdout + out.stderr
    message = out.stdout + out.stderr
    assert "steps[1].idempotent" in message and "moves material" in message, message
    after = check_journal_whole(journal)[n_before:]
    assert not [e for e in after if e["event"] == "step_started"], after


def kill_at(proc: subprocess.Popen[bytes], delay: float) -> None:
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_sigkill_at_random_moments_across_sessions(tmp_path: Path, config: Path) -> None:
    """Kill the run, then each resumed session, at random instants; after every kill the
    journal is whole and what it says is consistent; the last resume completes the run
    without repeating a step that had completed."""
    rng = random.Random(20251126)
    data = tmp_path / "runs"
    proc = start_run(config, data)
    deadline = time.monotonic() + 90
    while not run_dirs(data) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    # the run's first instant, then two in resumed sessions (which spend ~1-3 s starting up)
    kills = [rng.uniform(0.0, 3.0), rng.uniform(1.0, 4.5), rng.uniform(1.0, 4.5)]
    kill_at(proc, kills[0])
    [folder] = run_dirs(data)
    run_id = folder.name
    journal = folder / "events.jsonl"
    done_before: set[str] = set()
    for session, delay in enumerate([*kills[1:], None]):
        events = check_journal_whole(journal)
        where = f"session {session}, kill delays {kills}"
        assert events[0]["event"] == "run_created", where
        r = replay(events)
        finished = {e["step"] for e in events if e["event"] == "step_finished"}
        assert set(r.completed) <= finished | {d["step"] for d in r.decisions}, where
        assert done_before <= set(r.completed), where  # nothing completed is forgotten
        done_before = set(r.completed)
        if r.finished is not None and r.finished["status"] == "completed":
            out = resume(config, data, run_id)
            assert out.returncode == 2 and "nothing to resume" in out.stdout, where
            return
        decisions = [x for s in r.in_doubt if s in ("dmc", "ec")
                     for x in ("--accept-in-doubt", s)]
        args = [*LABCTL, "resume", run_id, "--config", str(config), "--data-dir", str(data),
                "--operator", "carol", "--json", *decisions]
        n_before = len(events)
        if delay is not None:
            kill_at(subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL), delay)
            continue
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr + where
        assert last_json(out.stdout)["status"] == "completed"
        events = check_journal_whole(journal)
        i_res = max(i for i, e in enumerate(events) if e["event"] == "resumed")
        assert i_res >= n_before
        again = {e["step"] for e in events[i_res:] if e["event"] == "step_started"}
        assert not again & done_before, "completed steps were repeated"
        accepted = [e["step"] for e in events if e["event"] == "decision"
                    and e["decision"] == "accept"]
        meta = json.loads((folder / "metadata.json").read_text())
        assert [d["step"] for d in meta["outcome"]["decisions"]
                if d["decision"] == "accept"] == accepted
        kinds = [x["kind"] for x in meta["sessions"]]
        assert kinds[0] == "run" and kinds[-1] == "resume"


def test_resume_of_an_unknown_run_is_invalid_input(tmp_path: Path) -> None:
    out = resume(SIM_CONFIG, tmp_path / "runs", "20250101T000000Z-nothing-000000")
    assert out.returncode == 2
    assert "no run" in last_json(out.stdout)["error"]
