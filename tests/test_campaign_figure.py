"""The closed loop's campaign summary figure: the figure of merit against each varied
parameter (failed runs shown), and the best value so far."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from labctl.campaign import summary_figure

ROOT = Path(__file__).resolve().parent.parent


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("closed_loop_fig",
                                                  ROOT / "examples" / "closed_loop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_closed_loop_writes_the_campaign_figure(tmp_path: Path) -> None:
    cl = _example()
    history = [cl.Iteration(1, 0.5, 0.3, 0.8, "r1", "completed"),
               cl.Iteration(2, 1.2, 0.5, 1.1, "r2", "completed"),
               cl.Iteration(3, 1.9, 0.8, None, "r3", "failed"),
               cl.Iteration(4, 1.0, 0.45, 1.15, "r4", "completed")]
    args = cl.parser().parse_args(["--figure", str(tmp_path / "loop.png")])
    drawn = cl.summary(history, args)
    png, svg = tmp_path / "loop.png", tmp_path / "loop.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in svg.read_text(encoding="utf-8")[:500]
    assert drawn["points"] == {"salt_molality": 3, "ec_fraction": 3, "best_so_far": 4}
    assert drawn["failed"] == 1
    assert drawn["best"]["sigma"] == pytest.approx(11.5)  # mS/cm
    text = svg.read_text(encoding="utf-8")
    assert "salt_molality" in text and "ec_fraction" in text  # an axis per parameter


def test_campaign_figure_needs_a_parameter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="varied parameter"):
        summary_figure([{"m": 1.0}], "m", [], tmp_path / "x.png")
