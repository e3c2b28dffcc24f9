"""`labctl schema`, `labctl validate` and `labctl plan`: exit codes, JSON output, files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from labctl.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"

runner = CliRunner()


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """config/sim.toml with every device enabled (as it is once every driver has landed)."""
    text = (ROOT / "config" / "sim.toml").read_text().replace("enabled = false",
                                                               "enabled = true")
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_a_valid_recipe_exits_0(bench: Path) -> None:
    code, out, _ = run("validate", str(RECIPES / "electrolyte_conductivity.json"),
                       "--config", str(bench), "--param", "ec_fraction=0.7")
    assert code == 0, out
    assert "valid" in out


def test_validate_json_output(bench: Path) -> None:
    code, out, _ = run("validate", str(RECIPES / "stability_window.json"), "--config",
                       str(bench), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True and doc["errors"] == []


def test_validate_invalid_exits_2_with_every_error(bench: Path) -> None:
    code, out, _ = run("validate", str(RECIPES / "electrolyte_conductivity.json"),
                       "--config", str(bench), "--param", "ec_fraction=1.5",
                       "--param", "temperature=5 s", "--param", "colour=red", "--json")
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False
    paths = [e["path"] for e in doc["errors"]]
    assert paths == ["parameters.colour", "parameters.ec_fraction", "parameters.temperature"]
    assert all(set(e) == {"path", "message"} for e in doc["errors"])


def test_validate_invalid_text_names_paths(bench: Path, tmp_path: Path) -> None:
    bad = json.loads((RECIPES / "rinse.json").read_text())
    bad["steps"][2]["device"] = "pump_x"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    code, _out, err = run("validate", str(path), "--config", str(bench))
    assert code == 2
    assert "steps[2].device: unknown device 'pump_x'" in err


def test_validate_syntax_error_gives_line_and_column(bench: Path, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "schema": "labctl.recipe/1",\n  "name": "x",,\n}')
    code, out, _ = run("validate", str(path), "--config", str(bench), "--json")
    assert code == 2
    assert "line 3, column 15" in json.loads(out)["errors"][0]["message"]


def test_bad_param_syntax_and_bad_config_exit_2(bench: Path, tmp_path: Path) -> None:
    code, _, _ = run("validate", str(RECIPES / "rinse.json"), "--config", str(bench),
                     "--param", "novalue")
    assert code == 2
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[bench\n")
    code, _, _ = run("validate", str(RECIPES / "rinse.json"), "--config", str(cfg))
    assert code == 2


def test_missing_recipe_file_exits_2(bench: Path, tmp_path: Path) -> None:
    code, out, _ = run("validate", str(tmp_path / "none.json"), "--config", str(bench),
                       "--json")
    assert code == 2
    assert "cannot read" in json.loads(out)["errors"][0]["message"]


def test_plan_prints_steps_and_total_and_writes_sop_and_materials(bench: Path,
                                                                  tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    code, out, _ = run("plan", str(RECIPES / "coating_synthesis.json"), "--config", str(bench),
                       "--out", str(out_dir), "--runs", "2")
    assert code == 0, out
    assert "schedule[2].hold" in out and "Total estimated time" in out
    with (out_dir / "coating_synthesis.materials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["material"] for r in rows] == ["EtOH", "TEOS"]
    teos = rows[1]
    assert (teos["unit"], teos["where from"]) == ("mL", "res_teos")
    assert float(teos["per run"]) == pytest.approx(2.0) and float(teos["amount"]) == 4.0
    sop = (out_dir / "coating_synthesis.sop.md").read_text()
    assert sop.startswith("# SOP: coating_synthesis") and "## Procedure" in sop


def test_plan_json(bench: Path) -> None:
    code, out, _ = run("plan", str(RECIPES / "galvanostatic_cycling.json"), "--config",
                       str(bench), "--json", "--param", "n_cycles=2")
    assert code == 0
    doc = json.loads(out)
    ids = []

    def walk(steps: list[dict]) -> None:
        for s in steps:
            ids.append(s["id"])
            walk(s["children"])

    walk(doc["plan"]["steps"])
    assert "cycling" in ids and "rinse.out" in ids
    assert doc["plan"]["parameters"]["n_cycles"] == 2


def test_plan_of_invalid_recipe_exits_2(bench: Path) -> None:
    code, _, _ = run("plan", str(RECIPES / "coating_synthesis.json"), "--config", str(bench),
                     "--param", "cure_temperature=300 degC")
    assert code == 2


def test_schema_is_draft_2020_12_and_accepts_the_examples() -> None:
    code, out, _ = run("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for path in sorted(RECIPES.glob("*.json")):
        errors = list(validator.iter_errors(json.loads(path.read_text())))
        assert not errors, (path.name, [e.message for e in errors[:3]])


def test_schema_rejects_what_the_models_reject() -> None:
    schema = json.loads(run("schema")[1])
    validator = jsonschema.Draft202012Validator(schema)
    good = json.loads((RECIPES / "rinse.json").read_text())
    for breakage in ({"schema": "other"}, {"steps": []}, {"surprise": 1}):
        assert list(validator.iter_errors({**good, **breakage})), breakage
    bad_step = {**good, "steps": [{"id": "a.b", "wait": "1 s"}]}
    assert list(validator.iter_errors(bad_step))


def test_real_process_exit_codes(bench: Path) -> None:
    """The installed entry point, end to end."""
    ok = subprocess.run([sys.executable, "-m", "labctl", "validate",
                         str(RECIPES / "rinse.json"), "--config", str(bench)],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "labctl", "validate",
                          str(RECIPES / "rinse.json"), "--config", str(bench),
                          "--param", "rinse_volume=50 mL"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2
    assert "parameters.rinse_volume" in bad.stderr
