"""`labctl run RECIPE --params-csv FILE`: one run per row, units in the header or the
cells, every row validated before anything starts, the runs at once as the bench allows,
a result line per row and the campaign's exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labctl.cli.params_csv import CsvError, exit_code, read_rows

ROOT = Path(__file__).resolve().parent.parent
WAIT_RECIPE = ROOT / "tests" / "mqtt_recipes" / "mqtt_wait.json"
pytestmark = pytest.mark.timeout(180)


def labctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labctl", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=150)


def run_csv(tmp_path: Path, csv_text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`labctl run` of the wait recipe with `csv_text` as its --params-csv, records in
    tmp_path/runs."""
    (tmp_path / "p.csv").write_text(csv_text)
    return labctl("run", str(WAIT_RECIPE), "--config", str(ROOT / "config" / "sim.toml"),
                  "--params-csv", "p.csv", "--data-dir", "runs", *extra, cwd=tmp_path)


def no_run_started(tmp_path: Path) -> bool:
    runs = tmp_path / "runs"
    return not runs.exists() or not any(p.is_dir() for p in runs.iterdir())


def test_units_from_the_header_or_the_cell_and_defaults_for_empty_cells(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("salt_molality [mol/kg],temperature,ec_fraction\n"
                 "0.8,25 degC,0.5\n"
                 "1.2 mol/kg,,\n"
                 "\n")
    assert read_rows(f) == [
        {"salt_molality": "0.8 mol/kg", "temperature": "25 degC", "ec_fraction": "0.5"},
        {"salt_molality": "1.2 mol/kg"},
    ]


@pytest.mark.parametrize(("text", "where"), [
    ("a,a\n1,2\n", "line 1, column 2: parameter 'a' twice"),
    ("a,[s]\n1,2\n", "line 1, column 2"),
    ("a\n1,2\n", "line 2: 2 cells, the header has 1"),
    ("a\n", "no rows"),
    ("", "empty file"),
])
def test_a_malformed_file_is_refused_naming_where(tmp_path: Path, text: str,
                                                   where: str) -> None:
    f = tmp_path / "p.csv"
    f.write_text(text)
    with pytest.raises(CsvError, match=where.replace("(", r"\(").replace(")", r"\)")):
        read_rows(f)


def test_exit_code_of_a_campaign() -> None:
    assert exit_code([{"status": "completed"}] * 2) == 0
    assert exit_code([{"status": "completed"}, {"status": "aborted"}]) == 3
    assert exit_code([{"status": "failed"}, {"status": "aborted"}]) == 1


def test_an_invalid_row_starts_nothing(tmp_path: Path) -> None:
    out = run_csv(tmp_path, "duration [s]\n5\n3 kg\n")
    assert out.returncode == 2, out.stderr
    assert "row 2 (duration=3 kg)" in out.stderr and "parameters.duration" in out.stderr
    assert no_run_started(tmp_path)


def test_rows_run_at_once_with_a_result_line_each(tmp_path: Path) -> None:
    out = run_csv(tmp_path, "duration [min]\n20\n10\n",
                  "--time-scale", "200", "--concurrency", "2", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    started = lines[0]
    assert started["event"] == "started" and started["concurrency"] == 2
    results = {r["row"]: r for r in lines[1:]}
    assert sorted(results) == [1, 2]
    assert all(r["status"] == "completed" for r in results.values())
    assert results[1]["row_values"] == {"duration": "20 min"}
    assert results[2]["parameters"]["duration"]["text"] == "10 min"
    # the second row's run started before the first ended (a wait needs no device)
    def events(rid: str) -> list[dict]:
        path = tmp_path / "runs" / rid / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()]

    def first(rid: str, what: str) -> float:
        return next(float(e["ts"]) for e in events(rid) if e.get("event") == what
                    and e.get("kind") == "wait")

    r1, r2 = started["run_ids"]
    end1 = max(float(e["ts"]) for e in events(r1) if e.get("event") == "step_finished")
    assert first(r2, "step_started") < end1


def test_a_priority_column_orders_the_rows_in_the_queue(tmp_path: Path) -> None:
    """One run at a time: rows start by their `priority` cell (higher first, ties and
    empty cells, 0, in row order), not in file order; the column is not a parameter."""
    out = run_csv(tmp_path, "duration [s],priority\n5,\n5,3\n5,-1\n5,3\n",
                  "--time-scale", "200", "--concurrency", "1", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    run_ids = lines[0]["run_ids"]
    results = {r["row"]: r for r in lines[1:]}
    assert all("priority" not in r["parameters"] for r in results.values())
    by_start = sorted(range(1, 5), key=lambda row: results[row]["started"])
    assert by_start == [2, 4, 1, 3], [(r, results[r]["started"]) for r in by_start]
    assert len(set(run_ids)) == 4


def test_a_priority_that_is_not_an_integer_starts_nothing(tmp_path: Path) -> None:
    out = run_csv(tmp_path, "duration [s],priority\n5,1\n5,urgent\n")
    assert out.returncode == 2, out.stderr
    assert "row 2: priority 'urgent' is not an integer from -1000 to 1000" in out.stderr
    assert no_run_started(tmp_path)
