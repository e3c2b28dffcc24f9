"""docs/recipes.md: its catalogue section is the generated one (it cannot drift from the
code), and its first recipe is valid on the simulated bench."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from labctl import catalogue_doc as catalogue
from labctl.config import load_config
from labctl.recipe import build_plan

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "recipes.md"


def test_catalogue_section_equals_the_generated_one() -> None:
    doc = GUIDE.read_text(encoding="utf-8")
    assert doc.count(catalogue.BEGIN) == 1 and doc.count(catalogue.END) == 1
    out = subprocess.run([sys.executable, "-m", "labctl", "actions", "--markdown"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert catalogue.splice(doc, out.stdout) == doc, (
        "docs/recipes.md is stale: regenerate its section with `labctl actions --markdown`")


def test_catalogue_names_every_action_and_analysis_with_units() -> None:
    """Every action and analysis labctl registers in its own pyproject is in the guide."""
    from importlib.metadata import distribution

    from labctl.actions import ACTIONS

    doc = GUIDE.read_text(encoding="utf-8")
    own = distribution("labctl").entry_points
    capabilities = [ep.name for ep in own.select(group="labctl.actions")]
    assert "potentiostat" in capabilities
    for capability in capabilities:
        assert f"### Capability `{capability}`" in doc
        for name in ACTIONS[capability]:
            assert f"#### `{name}`" in doc
    for ep in own.select(group="labctl.analyses"):
        assert f"#### `{ep.name}`" in doc
    assert "| `volume` | quantity | mL, µL | yes |" in doc
    assert "| `c_rate` | quantity | C (C-rate) | no |" in doc


def test_actions_json_lists_the_catalogue() -> None:
    out = subprocess.run([sys.executable, "-m", "labctl", "actions", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    data = json.loads(out.stdout)
    stir = next(a for a in data["actions"] if (a["capability"], a["action"])
                == ("stirrer", "stir"))
    assert {g["name"]: g["unit"] for g in stir["args"]}["speed"] == "rpm"
    assert any(a["analysis"] == "ionic_conductivity" for a in data["analyses"])


def test_the_guides_first_recipe_is_valid(tmp_path: Path) -> None:
    doc = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"```json recipe\n(.*?)```", doc, re.S)
    assert len(blocks) == 1
    recipe = tmp_path / "first_mix.json"
    recipe.write_text(blocks[0], encoding="utf-8")
    cfg = load_config(ROOT / "config" / "sim.toml")
    plan = build_plan(recipe, {}, cfg)
    assert sum(1 for _ in plan.leaves()) == 7
    plan = build_plan(recipe, {"volume": "3 mL", "temperature": "40 °C"}, cfg)
    assert plan.estimated_s > 0
