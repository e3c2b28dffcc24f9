"""`labctl run` and `labctl runs` as a user meets them: invalid input runs nothing (exit 2),
SIGINT/SIGTERM abort safely (exit 3), and the records are listed, shown and exported."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from labctl.store import read_journal

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "configs" / "exec_bench.toml"
RECIPE = ROOT / "tests" / "recipes" / "exec_fill.json"
LABCTL = [sys.executable, "-m", "labctl"]
pytestmark = pytest.mark.timeout(180)


def labctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_invalid_parameter_exits_2_and_creates_no_run(tmp_path: Path) -> None:
    data = tmp_path / "runs"
    out = labctl("run", str(RECIPE), "--config", str(CONFIG), "--data-dir", str(data),
                 "--param", "dmc_volume=500 mL", "--json")
    assert out.returncode == 2
    errors = json.loads(out.stdout)["errors"]
    assert any("dmc_volume" in e["path"] for e in errors)
    assert not data.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_aborts_the_run_safely(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "runs"
    proc = subprocess.Popen([*LABCTL, "run", str(RECIPE), "--config", str(CONFIG),
                             "--data-dir", str(data), "--time-scale", "100", "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        journal = None
        while time.monotonic() < deadline:
            dirs = list(data.glob("*/events.jsonl")) if data.exists() else []
            if dirs and any(e["event"] == "step_started" and e.get("step") == "mix"
                            for e in read_journal(dirs[0])):
                journal = dirs[0]
                break
            time.sleep(0.01)
        assert journal is not None, "the stirring step never started"
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 3
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["status"] == "aborted"
    events = read_journal(journal)
    kinds = [e["event"] for e in events]
    assert "safe_state" in kinds and kinds[-1] == "run_finished"
    assert not any(e["event"] == "step_started" and e.get("step") == "rest" for e in events)


def test_runs_list_show_export(tmp_path: Path) -> None:
    data = tmp_path / "runs"
    out = labctl("run", str(RECIPE), "--config", str(CONFIG), "--data-dir", str(data),
                 "--time-scale", "1000", "--param", "mix_time=1 min", "--param", "rest=1 min",
                 "--operator", "dana", "--json")
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
    rows = json.loads(labctl("runs", "list", "--data-dir", str(data), "--json").stdout)
    assert [(r["run_id"], r["status"], r["instigator"]) for r in rows] == [
        (run_id, "completed", "operator:dana")]
    shown = json.loads(labctl("runs", "show", run_id, "--data-dir", str(data), "--json").stdout)
    assert shown["result"]["status"] == "completed"
    assert [s["id"] for s in shown["metadata"]["steps"]][-1] == "rest"
    zpath = tmp_path / "export.zip"
    out = labctl("runs", "export", run_id, "--data-dir", str(data), "--output", str(zpath))
    assert out.returncode == 0 and out.stdout.strip() == str(zpath)
    with zipfile.ZipFile(zpath) as z:
        assert "ro-crate-metadata.json" in z.namelist()
    missing = labctl("runs", "show", "20250101T000000Z-none-000000", "--data-dir", str(data))
    assert missing.returncode == 2
