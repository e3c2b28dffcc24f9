"""One process per bench (issue 12, item 6): a second `labctl run` on a bench in use is
refused (exit 2, naming who holds it) and the first completes untouched.

The instruments are served by `labctl sim serve` in a process of their own, as hardware
would be; two real `labctl run` processes reach them through a bench config naming their
pseudo-terminals. Same data dir: the data dir's lock refuses the second. Another data dir
on the same instruments: the exclusive open of the serial lines refuses it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl.bench_lock import BenchLock, BenchLocked
from labctl.store import read_journal

ROOT = Path(__file__).resolve().parent.parent
SIM_CONFIG = ROOT / "tests" / "configs" / "exec_bench.toml"
RECIPE = ROOT / "tests" / "recipes" / "exec_fill.json"
LABCTL = [sys.executable, "-m", "labctl"]
#: slow transfers (the simulators run only 20x) and a long stir: the first run is still
#: going, mid-transfer when the intruders start, while both are refused
FIRST_RUN = ("dmc_volume=6 mL", "flow=5 mL/min", "mix_time=20 s", "rest=0 s")
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The bench's instruments in their own process; a config that reaches them, and their
    pseudo-terminals by device name."""
    server = subprocess.Popen([*LABCTL, "sim", "serve", "--config", str(SIM_CONFIG),
                               "--time-scale", "20"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        endpoints: dict[str, str] = {}
        for _ in range(3):
            line = json.loads(server.stdout.readline())
            endpoints[line["name"]] = line["endpoint"]
        text = SIM_CONFIG.read_text().replace("simulate = true", "simulate = false")
        # the host's clock is real while the instruments run 20x faster: no watchdog
        text = text.replace('watchdog = "1500 s"\n', "")
        for name, placeholder in (("pump_a", "/dev/ttyUSB0"), ("pump_b", "/dev/ttyUSB1"),
                                  ("hotplate", "/dev/ttyUSB5")):
            text = text.replace(f'endpoint = "{placeholder}"', f'endpoint = "{endpoints[name]}"')
        path = tmp_path_factory.mktemp("bench") / "bench.toml"
        path.write_text(text)
        yield path, endpoints
    finally:
        server.terminate()
        server.wait(30)


def start_run(config: Path, data: Path, *params: str) -> subprocess.Popen[str]:
    args = [*LABCTL, "run", str(RECIPE), "--config", str(config), "--data-dir", str(data),
            "--operator", "first", "--json"]
    for p in params:
        args += ["--param", p]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_step(data: Path, step: str, proc: subprocess.Popen[str]) -> Path:
    """Block until the run in `data` has journaled the start of `step`; its journal."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the first run ended early: {proc.communicate()}"
        for journal in data.glob("*/events.jsonl"):
            if any(e.get("event") == "step_started" and e.get("step") == step
                   for e in read_journal(journal)):
                return journal
        time.sleep(0.05)
    raise AssertionError(f"step {step} never started")


def device_states(config: Path) -> dict[str, str]:
    out = subprocess.run([*LABCTL, "devices", "--config", str(config), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return {d["name"]: d["status"]["state"] for d in json.loads(out.stdout)["devices"]}


def last_json(stdout: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return doc


def test_a_second_run_is_refused_and_the_first_completes_untouched(
    tmp_path: Path, served: tuple[Path, dict[str, str]]
) -> None:
    config, endpoints = served
    data = tmp_path / "runs"
    first = start_run(config, data, *FIRST_RUN)
    journal = wait_for_step(data, "dmc", first)  # pump_a is moving DMC now
    intruder_args = ["run", str(RECIPE), "--config", str(config), "--json",
                     "--operator", "intruder", "--param", "mix_time=1 s", "--param", "rest=0 s"]
    same_dir = subprocess.Popen([*LABCTL, *intruder_args, "--data-dir", str(data)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other_dir = subprocess.Popen([*LABCTL, *intruder_args, "--data-dir",
                                  str(tmp_path / "other")], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    survey = subprocess.Popen([*LABCTL, "devices", "--config", str(config), "--json"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    same_out, _ = same_dir.communicate(timeout=120)
    other_out, _ = other_dir.communicate(timeout=120)
    survey_out, _ = survey.communicate(timeout=120)
    assert first.poll() is None, "both intruders must have been turned away during the run"

    # same data dir: the lock names its holder (the first run's pid and command)
    assert same_dir.returncode == 2, same_out
    refusal = last_json(same_out)["error"]
    assert f"pid {first.pid}" in refusal and "labctl run" in refusal and "since" in refusal
    # another data dir, same instruments: the exclusive open names the device and its line
    assert other_dir.returncode == 2, other_out
    refusal = last_json(other_out)["error"]
    assert "in use by" in refusal and f"pid {first.pid}" in refusal
    assert any(f"{name}: {path}" in refusal for name, path in endpoints.items()), refusal
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").glob("*/"))
    # `labctl devices` takes no data-dir lock but opens the lines exclusively too
    assert survey.returncode == 2, survey_out
    rows = json.loads(survey_out)["devices"]
    assert all(r["in_use"] and f"pid {first.pid}" in r["error"] for r in rows), rows

    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, out + err
    result = last_json(out)
    assert result["status"] == "completed"
    assert not result.get("in_doubt")
    events = read_journal(journal)
    finished = [e["step"] for e in events if e.get("event") == "step_finished"]
    assert {"dmc", "ec", "mix", "rest"} <= set(finished)
    assert not [e for e in events if e.get("event") == "step_failed"]
    assert len(list(data.glob("*/events.jsonl"))) == 1  # the intruder created no run
    assert device_states(config) == {"pump_a": "idle", "pump_b": "idle", "hotplate": "idle"}


def test_a_lock_left_by_a_sigkilled_run_does_not_block_the_next(
    tmp_path: Path, served: tuple[Path, dict[str, str]]
) -> None:
    config, _ = served
    data = tmp_path / "runs"
    first = start_run(config, data, "mix_time=60 s", "rest=0 s")
    wait_for_step(data, "mix", first)
    holder = json.loads((data / "bench.lock").read_text())
    assert holder["pid"] == first.pid and holder["command"].startswith("labctl run")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    # the file still names the dead holder, but the kernel dropped its flock
    assert json.loads((data / "bench.lock").read_text())["pid"] == first.pid
    [killed] = [p.name for p in data.iterdir() if p.is_dir()]
    # `labctl resume` takes the lock too: refused while someone else holds it
    with BenchLock(data, command="labctl serve held-by-the-test"):
        refused = subprocess.run([*LABCTL, "resume", killed, "--config", str(config),
                                  "--data-dir", str(data), "--json"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "labctl serve held-by-the-test" in last_json(refused.stdout)["error"]

    second = start_run(config, data, "dmc_volume=1 mL", "ec_volume=1 mL", "mix_time=1 s",
                       "rest=0 s")
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, out + err
    assert last_json(out)["status"] == "completed"
    assert (data / "bench.lock").read_text() == ""  # released on the way out
    assert device_states(config) == {"pump_a": "idle", "pump_b": "idle", "hotplate": "idle"}


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    with BenchLock(tmp_path, command="labctl serve --broker mqtt://x") as lock:
        assert lock.held
        with pytest.raises(BenchLocked) as refused:
            BenchLock(tmp_path).acquire()
        assert refused.value.holder["pid"] == os.getpid()
        assert "labctl serve --broker mqtt://x" in str(refused.value)
        assert str(tmp_path / "bench.lock") in str(refused.value)
    BenchLock(tmp_path).acquire().release()  # free again once released


@pytest.mark.parametrize("command", [
    ["serve", "--broker", "mqtt://127.0.0.1:1"],  # the lock is checked before the broker
    ["tui"],
])
def test_serve_and_tui_refuse_a_data_dir_in_use(tmp_path: Path, command: list[str]) -> None:
    """Every adapter that opens the bench takes the lock: `labctl serve` and a local
    `labctl tui` on a data dir another process holds exit 2 naming the holder."""
    with BenchLock(tmp_path, command="labctl run held-by-the-test"):
        out = subprocess.run([*LABCTL, *command, "--data-dir", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"pid {os.getpid()}" in out.stderr and "labctl run held-by-the-test" in out.stderr
