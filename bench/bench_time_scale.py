"""Highest time scale at which every shipped recipe completes on the simulated bench (prints
figures, asserts nothing).

Runs `labctl run recipes/<x>.json --time-scale S --json` for each shipped recipe at rising
scales, each in a fresh data dir, and prints a table of how each run ended plus the highest
scale at which all of them completed. Recipes are run in separate processes (exactly what a
user types), one at a time, so the figure is not skewed by this script hogging the cores.

    .venv/bin/python bench/bench_time_scale.py [--scales 1000,3000,10000,30000,100000]
                                               [--repeat 1] [--recipes a.json,b.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCALES = "1000,3000,10000,30000,100000,300000"


def run_once(recipe: Path, scale: float, timeout_s: float) -> tuple[str, float, str]:
    """How one run ended (status or exit code), its wall time and its first error line."""
    with tempfile.TemporaryDirectory(prefix="labctl-ts-") as data_dir:
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "labctl", "run", str(recipe), "--time-scale", str(scale),
                 "--data-dir", data_dir, "--json"],
                cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return "hung", time.monotonic() - t0, f"no end within {timeout_s:g} s"
        wall = time.monotonic() - t0
        status = f"exit {proc.returncode}"
        error = ""
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            status = str(out.get("status", status))
            errors = out.get("errors") or []
            error = str(out.get("error") or (errors[0].get("message") if errors else ""))
        except (json.JSONDecodeError, IndexError):
            error = (proc.stderr.strip().splitlines() or [""])[-1]
        if proc.returncode == 2 and not error:
            error = (proc.stderr.strip().splitlines() or [""])[-1]
        return status, wall, error[:110]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scales", default=DEFAULT_SCALES)
    ap.add_argument("--repeat", type=int, default=1, help="runs per recipe and scale")
    ap.add_argument("--recipes", default="", help="comma-separated file names (default: all)")
    ap.add_argument("--timeout", type=float, default=300.0, help="wall seconds per run")
    args = ap.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    names = [n for n in args.recipes.split(",") if n]
    recipes = [ROOT / "recipes" / n for n in names] if names else sorted(
        (ROOT / "recipes").glob("*.json"))
    all_ok_up_to: float | None = None
    contiguous = True
    for scale in scales:
        every_completed = True
        for recipe in recipes:
            for _ in range(args.repeat):
                status, wall, error = run_once(recipe, scale, args.timeout)
                every_completed &= status == "completed"
                print(f"x{scale:<9g} {recipe.name:34s} {status:10s} {wall:6.1f} s  {error}",
                      flush=True)
        contiguous &= every_completed
        if contiguous:
            all_ok_up_to = scale
    print(f"highest scale at which every recipe completed (contiguous from "
          f"{scales[0]:g}): {all_ok_up_to if all_ok_up_to is not None else 'none'}")


if __name__ == "__main__":
    main()
